/* Register-blocked grouped convolution with few input channels per group (small_conv.pyx):
 * depthwise 2-D convs (ConvNeXt's 7x7, EfficientNet's and MobileViT's 3x3/5x5, strides 1
 * and 2) and 1-D convs seen as 2-D with one row (wav2vec2's first feature conv: one input
 * channel, kernel 10, stride 5).
 *
 * Why this shape: such a conv has only cg * kh * kw taps per output, far too little work
 * for a packed GEMM, and the tap-by-tap loop that accumulated into y in memory spent its
 * time storing and reloading y (one load + one store per multiply-add, ~5 GMAC/s). Here
 * a block of outputs (4 rows x 1 vector, or 1 row x 4 vectors) stays in vector registers
 * across all its taps: one load and one FMA per tap and vector, four independent
 * accumulator chains to cover the FMA latency, one store at the end.
 *
 * The loads must be contiguous whatever the stride and padding, so each group's input
 * planes are first copied into per-thread scratch, zero-padded and split by column phase
 * (polyphase): phase p holds padded columns p, p + sw, p + 2 sw, ...; output column ow
 * at tap column j reads padded column ow * sw + j * dw, which is element ow + q of phase
 * p with q = (j * dw) / sw, p = (j * dw) % sw. Rows are rows of the scratch (row stride
 * sh). The scratch rows are wide enough (output width rounded up to the vector width,
 * plus the taps' reach) that no load leaves them; lanes past the output width are
 * computed on zeros and never stored.
 *
 * Vectors are GCC vector extensions, so each ISA level's build gets its own width
 * (16 floats with AVX-512, 8 with AVX, 4 with SSE2) from the same source.
 *
 * Determinism: every output is summed by one thread in one fixed order (the bias,
 * then input channel, tap row, tap column ascending) whatever the thread count.
 */
#ifndef NORMRT_GROUPED_CONV_H
#define NORMRT_GROUPED_CONV_H

#include <stddef.h>
#include <string.h>

#if defined(__AVX512F__)
#define NRT_GC_VL 16
#elif defined(__AVX__)
#define NRT_GC_VL 8
#else
#define NRT_GC_VL 4
#endif

typedef float nrt_gc_v __attribute__((vector_size(4 * NRT_GC_VL)));
/* the same vector at any float alignment: scratch rows start at arbitrary offsets */
typedef float nrt_gc_vu __attribute__((vector_size(4 * NRT_GC_VL), aligned(4)));

/* acc + a * b: one fused instruction where the level has FMA (the build sets
 * -ffp-contract=off, so `acc += a * b` would stay a multiply and an add) */
#if defined(__AVX512F__)
#include <immintrin.h>
#define NRT_GC_FMA(a, b, acc) ((nrt_gc_v)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(acc)))
#elif defined(__AVX__) && defined(__FMA__)
#include <immintrin.h>
#define NRT_GC_FMA(a, b, acc) ((nrt_gc_v)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(acc)))
#else
#define NRT_GC_FMA(a, b, acc) ((acc) + (a) * (b))
#endif

/* Geometry of one call, fixed for all its work items. */
typedef struct {
    ptrdiff_t H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw;
    ptrdiff_t cg, mg;          /* input channels and output channels per group */
    ptrdiff_t Hp, Wq, OWv;     /* scratch rows per phase, floats per scratch row, OW rounded up */
} nrt_gc_geom;

static inline ptrdiff_t nrt_gc_ceil_div(ptrdiff_t a, ptrdiff_t b) {
    /* b > 0; rounds toward +inf for negative a too */
    return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

/* Fill in the derived sizes; returns the scratch floats one work item needs. */
static inline ptrdiff_t nrt_gc_setup(nrt_gc_geom *g) {
    g->OWv = nrt_gc_ceil_div(g->OW, NRT_GC_VL) * NRT_GC_VL;
    g->Hp = (g->OH - 1) * g->sh + (g->KH - 1) * g->dh + 1;
    g->Wq = g->OWv + ((g->KW - 1) * g->dw) / g->sw;
    return g->cg * g->sw * g->Hp * g->Wq;
}

/* The group's cg input planes (H, W) -> zero-padded polyphase scratch:
 * scratch[((ci * sw + p) * Hp + r) * Wq + c] = x[ci][r - pt][c * sw + p - pl] (0 outside).
 * Plain loops, kept inline (no memset/memcpy calls): the rows are a few dozen floats,
 * where a library call per row segment cost more than the copy (~50 cycles a row). */
#if defined(__AVX512F__)
/* lanes t of a 16-lane load at input column `col` that lie in [0, W) */
static inline __mmask16 nrt_gc_cols(ptrdiff_t col, ptrdiff_t W) {
    ptrdiff_t lo = col < 0 ? -col : 0, hi = W - col;
    if (hi > 16) hi = 16;
    if (lo > 16) lo = 16;
    if (hi <= lo) return 0;
    return (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

/* nrt_gc_fill for sw = 1 and 2 with AVX-512: each scratch row written as whole vectors, its
   input read by masked loads (lanes outside the image are zeros; a masked-off lane never
   faults, so the load may start before the row). Stride 2 reads 32 input columns and
   splits them into both phases' 16 (vpermt2ps), where the scalar loop gathered every other
   float once per phase: 55% of a 48-channel 32x32 3x3 stride-2 depthwise conv. A copy:
   the same scratch, the same results. */
static void nrt_gc_fill_v(const nrt_gc_geom *g, const float *restrict x, float *restrict s) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const ptrdiff_t sw = g->sw, Wq = g->Wq, W = g->W;
    for (ptrdiff_t ci = 0; ci < g->cg; ci++) {
        const float *xc = x + ci * g->H * W;
        for (ptrdiff_t r = 0; r < g->Hp; r++) {
            ptrdiff_t ih = r - g->pt;
            int inside = ih >= 0 && ih < g->H;
            const float *xr = xc + (inside ? ih : 0) * W;
            float *row0 = s + ((ci * sw) * g->Hp + r) * Wq;
            float *row1 = row0 + g->Hp * Wq;          /* phase 1 (sw = 2) */
            for (ptrdiff_t c = 0; c < Wq; c += 16) {
                __mmask16 keep = c + 16 <= Wq ? (__mmask16)0xFFFF : (__mmask16)((1u << (Wq - c)) - 1u);
                if (sw == 1) {
                    ptrdiff_t col = c - g->pl;        /* input column of lane 0 */
                    __mmask16 m = inside ? nrt_gc_cols(col, W) : 0;
                    _mm512_mask_storeu_ps(row0 + c, keep, _mm512_maskz_loadu_ps(m, xr + col));
                } else {
                    ptrdiff_t col = 2 * c - g->pl;    /* phase 0 lane t: column col + 2t; phase 1: + 1 */
                    __mmask16 m0 = inside ? nrt_gc_cols(col, W) : 0;
                    __mmask16 m1 = inside ? nrt_gc_cols(col + 16, W) : 0;
                    __m512 a = _mm512_maskz_loadu_ps(m0, xr + col), b = _mm512_maskz_loadu_ps(m1, xr + col + 16);
                    _mm512_mask_storeu_ps(row0 + c, keep, _mm512_permutex2var_ps(a, even, b));
                    _mm512_mask_storeu_ps(row1 + c, keep, _mm512_permutex2var_ps(a, odd, b));
                }
            }
        }
    }
}
#endif

static __attribute__((noinline, optimize("no-tree-loop-distribute-patterns"))) void
nrt_gc_fill(const nrt_gc_geom *g, const float *restrict x, float *restrict s) {
#if defined(__AVX512F__)
    if (g->sw <= 2) {
        nrt_gc_fill_v(g, x, s);
        return;
    }
#endif
    for (ptrdiff_t ci = 0; ci < g->cg; ci++) {
        const float *restrict xc = x + ci * g->H * g->W;
        for (ptrdiff_t p = 0; p < g->sw; p++) {
            /* phase columns whose input column c * sw + p - pl lies in [0, W) */
            ptrdiff_t c0 = nrt_gc_ceil_div(g->pl - p, g->sw), c1 = nrt_gc_ceil_div(g->W + g->pl - p, g->sw);
            if (c0 < 0) c0 = 0;
            if (c1 > g->Wq) c1 = g->Wq;
            if (c1 < c0) c1 = c0;
            for (ptrdiff_t r = 0; r < g->Hp; r++) {
                float *restrict row = s + ((ci * g->sw + p) * g->Hp + r) * g->Wq;
                ptrdiff_t ih = r - g->pt;
                if (ih < 0 || ih >= g->H) {
                    for (ptrdiff_t c = 0; c < g->Wq; c++)
                        row[c] = 0.0f;
                    continue;
                }
                const float *restrict xr = xc + ih * g->W + p - g->pl;
                for (ptrdiff_t c = 0; c < c0; c++)
                    row[c] = 0.0f;
                if (g->sw == 1)
                    for (ptrdiff_t c = c0; c < c1; c++)
                        row[c] = xr[c];
                else
                    for (ptrdiff_t c = c0; c < c1; c++)
                        row[c] = xr[c * g->sw];
                for (ptrdiff_t c = c1; c < g->Wq; c++)
                    row[c] = 0.0f;
            }
        }
    }
}

/* The first n (< NRT_GC_VL) lanes of v to y: a masked store with AVX-512; elsewhere a loop
 * (a memcpy of a run-time length was a library call per row: 8x8 maps stored 8 rows a plane
 * that way, ~15 cycles each). */
static inline __attribute__((always_inline)) void nrt_gc_store_head(float *restrict y, nrt_gc_v v, ptrdiff_t n) {
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(y, (__mmask16)((1u << n) - 1u), (__m512)v);
#else
    for (ptrdiff_t i = 0; i < n; i++)
        y[i] = v[i];
#endif
}

/* One block of RB output rows x CB vectors of output `wm`'s plane, at (oh0, c0):
 * accumulated in registers over all taps, then stored (the lanes past OW dropped). */
static inline __attribute__((always_inline)) void
nrt_gc_block(const nrt_gc_geom *g, const float *restrict s, const float *restrict wm, float b,
             float *restrict y, ptrdiff_t oh0, ptrdiff_t c0, const int RB, const int CB) {
    nrt_gc_v acc[4][4];
    for (int r = 0; r < RB; r++)
        for (int v = 0; v < CB; v++)
            acc[r][v] = (nrt_gc_v){0} + b;
    const ptrdiff_t rstep = g->sh * g->Wq;
    const ptrdiff_t phase_step = g->Hp * g->Wq;
    for (ptrdiff_t ci = 0; ci < g->cg; ci++)
        for (ptrdiff_t i = 0; i < g->KH; i++) {
            const float *restrict rows = s + (ci * g->sw * g->Hp + oh0 * g->sh + i * g->dh) * g->Wq + c0;
            const float *restrict wrow = wm + (ci * g->KH + i) * g->KW;
            /* tap column j reads phase p = (j dw) % sw at offset q = (j dw) / sw, stepped
               without a division per tap (an integer division costs more than the FMAs) */
            ptrdiff_t p = 0, q = 0;
            for (ptrdiff_t j = 0; j < g->KW; j++) {
                const float *restrict base = rows + p * phase_step + q;
                nrt_gc_v wv = (nrt_gc_v){0} + wrow[j];
                #pragma GCC unroll 4
                for (int r = 0; r < RB; r++)
                    #pragma GCC unroll 4
                    for (int v = 0; v < CB; v++)
                        acc[r][v] = NRT_GC_FMA(*(const nrt_gc_vu *)(base + r * rstep + v * NRT_GC_VL), wv,
                                               acc[r][v]);
                p += g->dw;
                while (p >= g->sw) {
                    p -= g->sw;
                    q++;
                }
            }
        }
    for (int r = 0; r < RB; r++) {
        float *restrict yr = y + (oh0 + r) * g->OW;
        for (int v = 0; v < CB; v++) {
            ptrdiff_t c = c0 + v * NRT_GC_VL;
            if (c + NRT_GC_VL <= g->OW)
                *(nrt_gc_vu *)(yr + c) = acc[r][v];
            else
                nrt_gc_store_head(yr + c, acc[r][v], g->OW - c);
        }
    }
}

/* One output plane (OH, OW) of output channel m from the filled scratch: wm its
 * (cg, KH, KW) weights, b its bias. Blocks of 4 rows x 1 vector while 4 rows remain,
 * then single rows in blocks of 4 vectors (1-D convs: one long row). */
static __attribute__((noinline)) void
nrt_gc_plane(const nrt_gc_geom *g, const float *restrict s, const float *restrict wm, float b,
             float *restrict y) {
    ptrdiff_t oh = 0;
    for (; oh + 4 <= g->OH; oh += 4)
        for (ptrdiff_t c0 = 0; c0 < g->OWv; c0 += NRT_GC_VL)
            nrt_gc_block(g, s, wm, b, y, oh, c0, 4, 1);
    for (; oh < g->OH; oh++) {
        ptrdiff_t c0 = 0;
        for (; c0 + 4 * NRT_GC_VL <= g->OWv; c0 += 4 * NRT_GC_VL)
            nrt_gc_block(g, s, wm, b, y, oh, c0, 1, 4);
        for (; c0 < g->OWv; c0 += NRT_GC_VL)
            nrt_gc_block(g, s, wm, b, y, oh, c0, 1, 1);
    }
}

/* Small depthwise planes (one input and one output channel per group, one vector per
 * output row): a block of RB rows of one plane has only RB accumulator chains, each as
 * long as the taps (49 dependent FMAs for a 7x7), with few lanes in use on a 4x4 or 2x2
 * plane: the FMA latency, not the arithmetic, set the time. So NG such groups (channels)
 * run side by side, NG x RB chains in flight; each output's sum is the one nrt_gc_block
 * makes (bias, then the taps in row-major order), so the results are the same bits. */
#define NRT_GC_NG 4

static inline int nrt_gc_interleaved(const nrt_gc_geom *g) {
    return g->cg == 1 && g->mg == 1 && g->OWv == NRT_GC_VL;
}

static inline __attribute__((always_inline)) void
nrt_gc_block_ng(const nrt_gc_geom *g, const float *restrict s, ptrdiff_t per, const float *restrict w,
                const float *restrict bias, float *restrict y, ptrdiff_t oh0, const int NG, const int RB) {
    nrt_gc_v acc[NRT_GC_NG][4];
    const ptrdiff_t rstep = g->sh * g->Wq, phase_step = g->Hp * g->Wq, taps = g->KH * g->KW;
    for (int k = 0; k < NG; k++)
        for (int r = 0; r < RB; r++)
            acc[k][r] = (nrt_gc_v){0} + (bias ? bias[k] : 0.0f);
    for (ptrdiff_t i = 0; i < g->KH; i++) {
        const float *restrict rows = s + (oh0 * g->sh + i * g->dh) * g->Wq;
        ptrdiff_t p = 0, q = 0;
        for (ptrdiff_t j = 0; j < g->KW; j++) {
            const float *restrict base = rows + p * phase_step + q;
            #pragma GCC unroll 4
            for (int k = 0; k < NG; k++) {
                nrt_gc_v wv = (nrt_gc_v){0} + w[k * taps + i * g->KW + j];
                #pragma GCC unroll 4
                for (int r = 0; r < RB; r++)
                    acc[k][r] = NRT_GC_FMA(*(const nrt_gc_vu *)(base + k * per + r * rstep), wv, acc[k][r]);
            }
            p += g->dw;
            while (p >= g->sw) {
                p -= g->sw;
                q++;
            }
        }
    }
    for (int k = 0; k < NG; k++)
        for (int r = 0; r < RB; r++) {
            float *restrict yr = y + k * g->OH * g->OW + (oh0 + r) * g->OW;
            if (g->OW == NRT_GC_VL)
                *(nrt_gc_vu *)yr = acc[k][r];
            else
                nrt_gc_store_head(yr, acc[k][r], g->OW);
        }
}

static __attribute__((noinline)) void
nrt_gc_planes_ng(const nrt_gc_geom *g, const float *restrict s, ptrdiff_t per, const float *restrict w,
                 const float *restrict bias, float *restrict y, const int NG) {
    ptrdiff_t oh = 0;
    for (; oh + 4 <= g->OH; oh += 4)
        nrt_gc_block_ng(g, s, per, w, bias, y, oh, NG, 4);
    switch (g->OH - oh) {
    case 3: nrt_gc_block_ng(g, s, per, w, bias, y, oh, NG, 3); break;
    case 2: nrt_gc_block_ng(g, s, per, w, bias, y, oh, NG, 2); break;
    case 1: nrt_gc_block_ng(g, s, per, w, bias, y, oh, NG, 1); break;
    default: break;
    }
}

#if defined(__AVX512F__)
/* The interleaved form at column stride 1 or 2 without the scratch: a row's taps are masked
 * loads of the input rows themselves (lanes outside the image read as zeros, a masked-off lane
 * never faults; stride 2: the even lanes of 32 loaded columns, one permute), so nothing is
 * copied; 16x16 maps spent a third of their time in nrt_gc_fill. The
 * same products in the same order as nrt_gc_block_ng on the filled scratch: the same bits. */
static inline __attribute__((always_inline)) void
nrt_gc_block_ng_direct(const nrt_gc_geom *g, const float *restrict x, const float *restrict w,
                       const float *restrict bias, float *restrict y, ptrdiff_t oh0, const int NG, const int RB,
                       const int SW) {
    __m512 acc[NRT_GC_NG][4];
    const ptrdiff_t HW = g->H * g->W, taps = g->KH * g->KW;
    for (int k = 0; k < NG; k++)
        for (int r = 0; r < RB; r++)
            acc[k][r] = _mm512_add_ps(_mm512_setzero_ps(), _mm512_set1_ps(bias ? bias[k] : 0.0f));   /* 0 + b */
    for (ptrdiff_t i = 0; i < g->KH; i++) {
        __mmask16 rows_in[4];
        ptrdiff_t ih[4];
        for (int r = 0; r < RB; r++) {
            ih[r] = (oh0 + r) * g->sh + i * g->dh - g->pt;
            rows_in[r] = ih[r] >= 0 && ih[r] < g->H ? (__mmask16)0xFFFF : 0;
            if (!rows_in[r])
                ih[r] = 0;
        }
        for (ptrdiff_t j = 0; j < g->KW; j++) {
            ptrdiff_t col = j * g->dw - g->pl;            /* input column of lane 0 */
            __mmask16 cols = nrt_gc_cols(col, g->W);
            if (SW == 1) {
                #pragma GCC unroll 4
                for (int k = 0; k < NG; k++) {
                    __m512 wv = _mm512_set1_ps(w[k * taps + i * g->KW + j]);
                    #pragma GCC unroll 4
                    for (int r = 0; r < RB; r++)
                        acc[k][r] = _mm512_fmadd_ps(
                            _mm512_maskz_loadu_ps(cols & rows_in[r], x + k * HW + ih[r] * g->W + col), wv, acc[k][r]);
                }
            } else {
                /* lane t reads column 2 t: the even lanes of 32 loaded columns */
                const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                __mmask16 cols_hi = nrt_gc_cols(col + 16, g->W);
                #pragma GCC unroll 4
                for (int k = 0; k < NG; k++) {
                    __m512 wv = _mm512_set1_ps(w[k * taps + i * g->KW + j]);
                    #pragma GCC unroll 4
                    for (int r = 0; r < RB; r++) {
                        const float *p = x + k * HW + ih[r] * g->W + col;
                        __m512 v = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(cols & rows_in[r], p), even,
                                                          _mm512_maskz_loadu_ps(cols_hi & rows_in[r], p + 16));
                        acc[k][r] = _mm512_fmadd_ps(v, wv, acc[k][r]);
                    }
                }
            }
        }
    }
    for (int k = 0; k < NG; k++)
        for (int r = 0; r < RB; r++)
            _mm512_mask_storeu_ps(y + k * g->OH * g->OW + (oh0 + r) * g->OW, (__mmask16)((1u << g->OW) - 1u),
                                  acc[k][r]);
}

static inline __attribute__((always_inline)) void
nrt_gc_planes_ng_direct_s(const nrt_gc_geom *g, const float *restrict x, const float *restrict w,
                          const float *restrict bias, float *restrict y, const int NG, const int SW) {
    ptrdiff_t oh = 0;
    for (; oh + 4 <= g->OH; oh += 4)
        nrt_gc_block_ng_direct(g, x, w, bias, y, oh, NG, 4, SW);
    switch (g->OH - oh) {
    case 3: nrt_gc_block_ng_direct(g, x, w, bias, y, oh, NG, 3, SW); break;
    case 2: nrt_gc_block_ng_direct(g, x, w, bias, y, oh, NG, 2, SW); break;
    case 1: nrt_gc_block_ng_direct(g, x, w, bias, y, oh, NG, 1, SW); break;
    default: break;
    }
}

/* one function per column stride and group count, so each has its constants (a function
   taking NG at run time, left to GCC's cloning, ran 16x16 stride-1 maps 35% slower once a
   second stride was added) */
#define NRT_GC_NG_DIRECT(SW, NG)                                                                   \
    static __attribute__((noinline)) void                                                          \
    nrt_gc_planes_ng_direct_##SW##_##NG(const nrt_gc_geom *g, const float *restrict x,              \
                                        const float *restrict w, const float *restrict bias,        \
                                        float *restrict y) {                                         \
        nrt_gc_planes_ng_direct_s(g, x, w, bias, y, NG, SW);                                       \
    }
NRT_GC_NG_DIRECT(1, 1) NRT_GC_NG_DIRECT(1, 2) NRT_GC_NG_DIRECT(1, 3) NRT_GC_NG_DIRECT(1, 4)
NRT_GC_NG_DIRECT(2, 1) NRT_GC_NG_DIRECT(2, 2) NRT_GC_NG_DIRECT(2, 3) NRT_GC_NG_DIRECT(2, 4)
#endif

#define NRT_GC_DIRECT_KW 64      /* tap columns nrt_gc_plane_direct keeps masks for */

#if defined(__AVX512F__)
/* A depthwise plane wider than one vector at column stride 1 or 2, without the scratch (the
 * MobileNet / EfficientNet / MobileViT 3x3 on 16x16 to 112x112 maps): blocks of 4 output rows
 * x 1 vector in registers, each tap a masked load of an input row itself (lanes outside the
 * image read as zeros; a masked-off lane never faults). At column stride 2 a tap's 16 lanes
 * are the even lanes of 32 loaded columns (one permute). The filled scratch and the runtime
 * block loop cost 0.72 ns an output on a 96 x 56 x 56 3x3 (the copy alone 28%). The same
 * products in the same order as nrt_gc_block (0 + bias, then the taps row-major, padding
 * taps adding 0 * w): the same bits. */
static inline __attribute__((always_inline)) void
nrt_gc_block_direct(const float *restrict x, ptrdiff_t H, ptrdiff_t W, const float *restrict w, __m512 b0,
                    float *restrict y, ptrdiff_t OW, ptrdiff_t oh0, ptrdiff_t c0, const __mmask16 *cols,
                    __mmask16 keep, ptrdiff_t sh, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t pt, ptrdiff_t pl,
                    const int KH, const int KW, const int RB, const int SW) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    __m512 acc[4];
    for (int r = 0; r < RB; r++)
        acc[r] = b0;
    #pragma GCC unroll 7
    for (int i = 0; i < KH; i++) {
        const float *rp[4];
        __mmask16 rin[4];
        for (int r = 0; r < RB; r++) {
            ptrdiff_t ih = (oh0 + r) * sh + i * dh - pt;
            int in = ih >= 0 && ih < H;
            rin[r] = in ? (__mmask16)0xFFFF : 0;
            rp[r] = x + (in ? ih : 0) * W + SW * c0 - pl;     /* lane 0 of tap column 0 */
        }
        #pragma GCC unroll 7
        for (int j = 0; j < KW; j++) {
            __m512 wv = _mm512_set1_ps(w[i * KW + j]);
            #pragma GCC unroll 4
            for (int r = 0; r < RB; r++) {
                __m512 v;
                if (SW == 1) {
                    v = _mm512_maskz_loadu_ps(cols[j] & rin[r], rp[r] + j * dw);
                } else {
                    /* lane t reads column 2 t: the even lanes of 32 loaded columns */
                    v = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(cols[2 * j] & rin[r], rp[r] + j * dw), even,
                                               _mm512_maskz_loadu_ps(cols[2 * j + 1] & rin[r], rp[r] + j * dw + 16));
                }
                acc[r] = _mm512_fmadd_ps(v, wv, acc[r]);
            }
        }
    }
    for (int r = 0; r < RB; r++)
        _mm512_mask_storeu_ps(y + (oh0 + r) * OW + c0, keep, acc[r]);
}

/* nrt_gc_block_direct at row stride and dilation 1 (a compile-time KH): the block's RB + KH - 1
 * input rows are each loaded once per tap column and feed every output row they reach (a 3x3
 * block of 4 rows: 18 loads and masks instead of 36). Each output's sum is the same: t, the
 * input row, ascends, so tap row i = t - r does, and tap columns ascend within it. */
static inline __attribute__((always_inline)) void
nrt_gc_block_direct_rows(const float *restrict x, ptrdiff_t H, ptrdiff_t W, const float *restrict w, __m512 b0,
                         float *restrict y, ptrdiff_t OW, ptrdiff_t oh0, ptrdiff_t c0, const __mmask16 *cols,
                         __mmask16 keep, ptrdiff_t dw, ptrdiff_t pt, ptrdiff_t pl, const int KH, const int KW,
                         const int RB) {
    __m512 acc[4];
    for (int r = 0; r < RB; r++)
        acc[r] = b0;
    #pragma GCC unroll 10
    for (int t = 0; t < RB + KH - 1; t++) {
        ptrdiff_t ih = oh0 + t - pt;
        int in = ih >= 0 && ih < H;
        __mmask16 rin = in ? (__mmask16)0xFFFF : 0;
        const float *rp = x + (in ? ih : 0) * W + c0 - pl;
        #pragma GCC unroll 7
        for (int j = 0; j < KW; j++) {
            __m512 v = _mm512_maskz_loadu_ps(cols[j] & rin, rp + j * dw);
            #pragma GCC unroll 4
            for (int r = 0; r < RB; r++) {
                const int i = t - r;
                if (i >= 0 && i < KH)
                    acc[r] = _mm512_fmadd_ps(v, _mm512_set1_ps(w[i * KW + j]), acc[r]);
            }
        }
    }
    for (int r = 0; r < RB; r++)
        _mm512_mask_storeu_ps(y + (oh0 + r) * OW + c0, keep, acc[r]);
}

static inline __attribute__((always_inline)) void
nrt_gc_plane_direct_k(const nrt_gc_geom *g, const float *restrict x, const float *restrict w, float b,
                      float *restrict y, const int KH, const int KW, const int SW, const int shared_rows) {
    const ptrdiff_t H = g->H, W = g->W, OH = g->OH, OW = g->OW, sh = g->sh, dh = g->dh, dw = g->dw;
    const ptrdiff_t pt = g->pt, pl = g->pl;
    const __m512 b0 = _mm512_add_ps(_mm512_setzero_ps(), _mm512_set1_ps(b));     /* 0 + b */
    __mmask16 cols[2 * NRT_GC_DIRECT_KW];
    for (ptrdiff_t c0 = 0; c0 < OW; c0 += 16) {
        /* the input columns each tap column's loads may read (stride 2: two loads of 16) */
        for (int j = 0; j < KW; j++) {
            ptrdiff_t col = SW * c0 + j * dw - pl;
            if (SW == 1) {
                cols[j] = nrt_gc_cols(col, W);
            } else {
                cols[2 * j] = nrt_gc_cols(col, W);
                cols[2 * j + 1] = nrt_gc_cols(col + 16, W);
            }
        }
        __mmask16 keep = OW - c0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (OW - c0)) - 1u);
        ptrdiff_t oh = 0;
        if (SW == 1 && shared_rows && sh == 1 && dh == 1) {
            for (; oh + 4 <= OH; oh += 4)
                nrt_gc_block_direct_rows(x, H, W, w, b0, y, OW, oh, c0, cols, keep, dw, pt, pl, KH, KW, 4);
        }
        for (; oh + 4 <= OH; oh += 4)
            nrt_gc_block_direct(x, H, W, w, b0, y, OW, oh, c0, cols, keep, sh, dh, dw, pt, pl, KH, KW, 4, SW);
        switch (OH - oh) {
        case 3: nrt_gc_block_direct(x, H, W, w, b0, y, OW, oh, c0, cols, keep, sh, dh, dw, pt, pl, KH, KW, 3, SW); break;
        case 2: nrt_gc_block_direct(x, H, W, w, b0, y, OW, oh, c0, cols, keep, sh, dh, dw, pt, pl, KH, KW, 2, SW); break;
        case 1: nrt_gc_block_direct(x, H, W, w, b0, y, OW, oh, c0, cols, keep, sh, dh, dw, pt, pl, KH, KW, 1, SW); break;
        default: break;
        }
    }
}

/* Output plane of one depthwise channel (x its input plane, w its KH x KW taps, b its bias),
 * the common kernel sizes unrolled. */
static __attribute__((noinline)) void
nrt_gc_plane_direct(const nrt_gc_geom *g, const float *restrict x, const float *restrict w, float b,
                    float *restrict y) {
    if (g->sw == 2) {
        if (g->KH == 3 && g->KW == 3)
            nrt_gc_plane_direct_k(g, x, w, b, y, 3, 3, 2, 0);
        else if (g->KH == 5 && g->KW == 5)
            nrt_gc_plane_direct_k(g, x, w, b, y, 5, 5, 2, 0);
        else
            nrt_gc_plane_direct_k(g, x, w, b, y, (int)g->KH, (int)g->KW, 2, 0);
    } else if (g->KH == 3 && g->KW == 3)
        nrt_gc_plane_direct_k(g, x, w, b, y, 3, 3, 1, 1);
    else if (g->KH == 5 && g->KW == 5)
        nrt_gc_plane_direct_k(g, x, w, b, y, 5, 5, 1, 1);
    else if (g->KH == 7 && g->KW == 7)
        nrt_gc_plane_direct_k(g, x, w, b, y, 7, 7, 1, 1);
    else
        nrt_gc_plane_direct_k(g, x, w, b, y, (int)g->KH, (int)g->KW, 1, 0);
}
#endif

/* Whether nrt_gc_group computes group by group without the scratch (nrt_gc_plane_direct):
 * depthwise, column stride 1 or 2, AVX-512. */
static inline int nrt_gc_direct(const nrt_gc_geom *g) {
#if defined(__AVX512F__)
    return g->cg == 1 && g->mg == 1 && (g->sw == 1 || g->sw == 2) && g->KW <= NRT_GC_DIRECT_KW;
#else
    (void)g;
    return 0;
#endif
}

/* One work item of the interleaved form: groups [grp0, grp0 + ng) (ng <= NRT_GC_NG) of
 * one image; scratch: NRT_GC_NG * nrt_gc_setup(g) floats. */
static void nrt_gc_groups_ng(const nrt_gc_geom *g, const float *x, const float *w, const float *bias,
                             float *y, ptrdiff_t grp0, ptrdiff_t ng, float *scratch) {
#if defined(__AVX512F__)
    if (g->sw == 1 || g->sw == 2) {
        const float *xk = x + grp0 * g->H * g->W, *wk = w + grp0 * g->KH * g->KW;
        const float *bk = bias ? bias + grp0 : NULL;
        float *yk = y + grp0 * g->OH * g->OW;
        if (g->sw == 2) {
            switch (ng) {
            case 4: nrt_gc_planes_ng_direct_2_4(g, xk, wk, bk, yk); break;
            case 3: nrt_gc_planes_ng_direct_2_3(g, xk, wk, bk, yk); break;
            case 2: nrt_gc_planes_ng_direct_2_2(g, xk, wk, bk, yk); break;
            default: nrt_gc_planes_ng_direct_2_1(g, xk, wk, bk, yk); break;
            }
        } else {
            switch (ng) {
            case 4: nrt_gc_planes_ng_direct_1_4(g, xk, wk, bk, yk); break;
            case 3: nrt_gc_planes_ng_direct_1_3(g, xk, wk, bk, yk); break;
            case 2: nrt_gc_planes_ng_direct_1_2(g, xk, wk, bk, yk); break;
            default: nrt_gc_planes_ng_direct_1_1(g, xk, wk, bk, yk); break;
            }
        }
        return;
    }
#endif
    ptrdiff_t per = g->sw * g->Hp * g->Wq;
    for (ptrdiff_t k = 0; k < ng; k++)
        nrt_gc_fill(g, x + (grp0 + k) * g->H * g->W, scratch + k * per);
    const float *wk = w + grp0 * g->KH * g->KW;
    const float *bk = bias ? bias + grp0 : NULL;
    float *yk = y + grp0 * g->OH * g->OW;
    switch (ng) {
    case 4: nrt_gc_planes_ng(g, scratch, per, wk, bk, yk, 4); break;
    case 3: nrt_gc_planes_ng(g, scratch, per, wk, bk, yk, 3); break;
    case 2: nrt_gc_planes_ng(g, scratch, per, wk, bk, yk, 2); break;
    default: nrt_gc_planes_ng(g, scratch, per, wk, bk, yk, 1); break;
    }
}

/* One work item: group `grp` of one image. x: the image's (C, H, W); w: (M, cg, KH, KW);
 * bias: (M,) or NULL; y: the image's (M, OH, OW); scratch: nrt_gc_setup(g) floats. */
static void nrt_gc_group(const nrt_gc_geom *g, const float *x, const float *w, const float *bias,
                         float *y, ptrdiff_t grp, float *scratch) {
#if defined(__AVX512F__)
    if (nrt_gc_direct(g)) {
        nrt_gc_plane_direct(g, x + grp * g->H * g->W, w + grp * g->KH * g->KW, bias ? bias[grp] : 0.0f,
                            y + grp * g->OH * g->OW);
        return;
    }
#endif
    nrt_gc_fill(g, x + grp * g->cg * g->H * g->W, scratch);
    for (ptrdiff_t k = 0; k < g->mg; k++) {
        ptrdiff_t m = grp * g->mg + k;
        nrt_gc_plane(g, scratch, w + m * g->cg * g->KH * g->KW, bias ? bias[m] : 0.0f,
                     y + m * g->OH * g->OW);
    }
}

#endif
