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

static inline ptrdiff_t nrt_ceil_div(ptrdiff_t a, ptrdiff_t b) {
    /* b > 0; rounds toward +inf for negative a too */
    return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

/* One output row (oh) of one channel of a depthwise conv: y[ow] = b + sum over taps of x * w.
 * x: the channel's (H, W) plane; w: its (KH, KW) taps. Taps in the padding are skipped. */
static inline void nrt_depthwise_row(float *restrict y, const float *restrict x, const float *restrict w,
                                     ptrdiff_t H, ptrdiff_t W, ptrdiff_t OW, ptrdiff_t KH, ptrdiff_t KW,
                                     ptrdiff_t oh, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl,
                                     ptrdiff_t dh, ptrdiff_t dw, float b) {
    for (ptrdiff_t ow = 0; ow < OW; ow++)
        y[ow] = b;
    for (ptrdiff_t i = 0; i < KH; i++) {
        ptrdiff_t ih = oh * sh - pt + i * dh;
        if (ih < 0 || ih >= H)
            continue;
        const float *restrict xrow = x + ih * W;
        for (ptrdiff_t j = 0; j < KW; j++) {
            ptrdiff_t off = j * dw - pl;
            /* output columns whose input column ow * sw + off lies in [0, W) */
            ptrdiff_t lo = nrt_ceil_div(-off, sw), hi = nrt_ceil_div(W - off, sw);
            if (lo < 0) lo = 0;
            if (hi > OW) hi = OW;
            float wt = w[i * KW + j];
            if (sw == 1) {
                const float *restrict xs = xrow + off;
                for (ptrdiff_t ow = lo; ow < hi; ow++)
                    y[ow] += xs[ow] * wt;
            } else {
                for (ptrdiff_t ow = lo; ow < hi; ow++)
                    y[ow] += xrow[ow * sw + off] * wt;
            }
        }
    }
}

/* y (M, N) = a (M, K) @ b (K, N), all row-major and contiguous: row by row, k ascending. */
static inline void nrt_small_matmul(float *restrict y, const float *restrict a, const float *restrict b,
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
