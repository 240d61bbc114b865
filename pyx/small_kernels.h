/* Inner loops of the small convolution and product kernels (small_conv.pyx, small_gemm.pyx).
 *
 * Kept in C so the pointers can be declared restrict: the loops along a row
 * then vectorize (inside Cython's OpenMP-outlined loops GCC could not prove
 * that y and x never overlap, and ran them scalar at ~0.5 GMAC/s). Every output
 * is summed in a fixed order (taps in (i, j) order, k ascending), the same
 * whichever thread runs it.
 */
#ifndef NORMRT_SMALL_KERNELS_H
#define NORMRT_SMALL_KERNELS_H

#include <stddef.h>
#include <string.h>

static inline ptrdiff_t nrt_ceil_div(ptrdiff_t a, ptrdiff_t b) {
    /* b > 0; rounds toward +inf for negative a too */
    return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

/* One channel of a depthwise conv: y (OH, OW) = b + sum over taps of x (H, W) * w (KH, KW).
 * Taps in the padding are skipped: the output columns each tap column j reaches inside
 * the input, [lo_j, hi_j), are computed once per plane (no integer division per row). */
static __attribute__((noinline)) void nrt_depthwise_plane(float *restrict y, const float *restrict x, const float *restrict w,
                                       ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t KH,
                                       ptrdiff_t KW, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl,
                                       ptrdiff_t dh, ptrdiff_t dw, float b) {
    ptrdiff_t lo[KW], hi[KW];
    for (ptrdiff_t j = 0; j < KW; j++) {
        ptrdiff_t off = j * dw - pl;
        /* output columns whose input column ow * sw + off lies in [0, W) */
        lo[j] = nrt_ceil_div(-off, sw);
        hi[j] = nrt_ceil_div(W - off, sw);
        if (lo[j] < 0) lo[j] = 0;
        if (hi[j] > OW) hi[j] = OW;
    }
    for (ptrdiff_t oh = 0; oh < OH; oh++) {
        float *restrict yrow = y + oh * OW;
        for (ptrdiff_t ow = 0; ow < OW; ow++)
            yrow[ow] = b;
        for (ptrdiff_t i = 0; i < KH; i++) {
            ptrdiff_t ih = oh * sh - pt + i * dh;
            if (ih < 0 || ih >= H)
                continue;
            const float *restrict xrow = x + ih * W;
            for (ptrdiff_t j = 0; j < KW; j++) {
                ptrdiff_t off = j * dw - pl;
                float wt = w[i * KW + j];
                if (sw == 1) {
                    const float *restrict xs = xrow + off;
                    for (ptrdiff_t ow = lo[j]; ow < hi[j]; ow++)
                        yrow[ow] += xs[ow] * wt;
                } else {
                    for (ptrdiff_t ow = lo[j]; ow < hi[j]; ow++)
                        yrow[ow] += xrow[ow * sw + off] * wt;
                }
            }
        }
    }
}

/* Stride-1 depthwise conv of one channel through a zero-padded copy: with the padded
 * input xp of row length Wp = OW + (KW - 1) * dw, every tap (i, j) is one long loop over
 * the "wide" output (OH rows of Wp, the last Wp - OW columns of each row junk):
 *     yw[t] += xp[t + i * dh * Wp + j * dw] * w[i, j],   t in [0, OH * Wp)
 * which vectorizes without per-row setup (the row-wise version spends most of its time
 * there on 8-32 wide planes). Taps in (i, j) order after the bias, as nrt_depthwise_plane;
 * padding taps add x = 0. `scratch` holds nrt_depthwise_s1_scratch(...) floats (allocated
 * once per call by the caller: a malloc/free per plane made glibc trim and regrow the heap,
 * ~1 us a plane). */
static inline ptrdiff_t nrt_depthwise_s1_scratch(ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t KH, ptrdiff_t KW,
                                                 ptrdiff_t dh, ptrdiff_t dw) {
    ptrdiff_t Wp = OW + (KW - 1) * dw, Hp = OH + (KH - 1) * dh;
    return Hp * Wp + (KW - 1) * dw + OH * Wp;
}

static __attribute__((noinline)) void nrt_depthwise_plane_s1(float *restrict y, const float *restrict x,
                                         const float *restrict w, float *restrict scratch,
                                         ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t KH,
                                         ptrdiff_t KW, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t dh, ptrdiff_t dw,
                                         float b) {
    ptrdiff_t Wp = OW + (KW - 1) * dw, Hp = OH + (KH - 1) * dh;
    ptrdiff_t n_xp = Hp * Wp + (KW - 1) * dw, n_yw = OH * Wp;
    float *restrict xp = scratch;
    float *restrict yw = scratch + n_xp;
    memset(xp, 0, sizeof(float) * (size_t)n_xp);
    for (ptrdiff_t r = 0; r < Hp; r++) {
        ptrdiff_t ih = r - pt;
        if (ih < 0 || ih >= H)
            continue;
        ptrdiff_t c0 = pl < 0 ? -pl : 0, c1 = W + pl < Wp ? W : Wp - pl;   /* input columns kept */
        if (c1 > c0)
            memcpy(xp + r * Wp + pl + c0, x + ih * W + c0, sizeof(float) * (size_t)(c1 - c0));
    }
    for (ptrdiff_t t = 0; t < n_yw; t++)
        yw[t] = b;
    for (ptrdiff_t i = 0; i < KH; i++)
        for (ptrdiff_t j = 0; j < KW; j++) {
            const float *restrict xs = xp + i * dh * Wp + j * dw;
            float wt = w[i * KW + j];
            for (ptrdiff_t t = 0; t < n_yw; t++)
                yw[t] += xs[t] * wt;
        }
    for (ptrdiff_t oh = 0; oh < OH; oh++)
        memcpy(y + oh * OW, yw + oh * Wp, sizeof(float) * (size_t)OW);
}

/* y (M, N) = a (M, K) @ b (K, N), all row-major and contiguous: row by row, k ascending. */
static __attribute__((noinline)) void nrt_small_matmul(float *restrict y, const float *restrict a, const float *restrict b,
                                    ptrdiff_t M, ptrdiff_t K, ptrdiff_t N) {
    for (ptrdiff_t i = 0; i < M; i++) {
        float *restrict yrow = y + i * N;
        for (ptrdiff_t j = 0; j < N; j++)
            yrow[j] = 0.0f;
        for (ptrdiff_t k = 0; k < K; k++) {
            float av = a[i * K + k];
            const float *restrict brow = b + k * N;
            for (ptrdiff_t j = 0; j < N; j++)
                yrow[j] += av * brow[j];
        }
    }
}

#endif
