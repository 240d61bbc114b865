/* Pooling's inner loops (pool.pyx's C side). */
#ifndef NRT_POOL_KERNEL_H
#define NRT_POOL_KERNEL_H

#include <stddef.h>
#include <math.h>
#ifdef __AVX512F__
#include <immintrin.h>
static inline __mmask16 nrt_pool_mask(ptrdiff_t rem) {
    return rem >= 16 ? (__mmask16)0xFFFF : rem <= 0 ? (__mmask16)0
         : (__mmask16)((1u << rem) - 1u);
}
/* max that keeps a NaN from either side (like np.maximum): vmaxps returns
   its second operand when either is NaN, then a NaN in v is put back */
static inline __m512 nrt_max_nan(__m512 v, __m512 m) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_max_ps(v, m), v);
}
#endif

/* A float32 plane's rows on AVX-512, in two passes per group of output rows
   (a horizontal load right after the vertical pass's stores to the same
   row, at another offset, would stall on store forwarding):
   nrt_pool_rows_v: the kernel rows `hs` (nh of them, inside the input) of
   one output row reduced into `row` (the padded row buffer + pw);
   nrt_pool_rows_h: the kernel columns over a padded row into yr; an
   average divides by rc * colf[ow] (tap counts).
   NG vectors of columns at a time, one accumulator register each: the taps
   of one vector depend on each other (latency), NG vectors do not.
   Both return 0 without AVX-512 (the caller loops). */
#define NRT_POOL_NG 8
#ifdef __AVX512F__
#define NRT_POOL_HAVE_AVX512 1
#else
#define NRT_POOL_HAVE_AVX512 0
#endif
#ifdef __AVX512F__
static inline __attribute__((always_inline)) void
nrt_pool_rows_v_impl(const float* x, ptrdiff_t W, const ptrdiff_t* hs, int nh, float* row,
                     const int is_max, const int NG) {
    /* NG (1, 2, 4 or NRT_POOL_NG) a constant of each inlined copy: the accumulators stay in
       registers (a loop to a run-time count spilled them, which cost a 32-wide row more than
       its taps); vectors past the row have an empty mask */
    const __m512 fill = _mm512_set1_ps(is_max ? -INFINITY : 0.0f);
    ptrdiff_t t0;
    int i, u;
    for (t0 = 0; t0 < W; t0 += 16 * NG) {
        __m512 acc[NRT_POOL_NG];
        __mmask16 mk[NRT_POOL_NG];
        for (u = 0; u < NG; u++) {
            acc[u] = fill;
            mk[u] = nrt_pool_mask(W - t0 - 16 * u);
        }
        for (i = 0; i < nh; i++) {
            const float* xr = x + hs[i] * W + t0;
            #pragma GCC unroll 8
            for (u = 0; u < NG; u++) {
                __m512 v = _mm512_maskz_loadu_ps(mk[u], xr + 16 * u);
                acc[u] = is_max ? nrt_max_nan(v, acc[u]) : _mm512_add_ps(acc[u], v);
            }
        }
        #pragma GCC unroll 8
        for (u = 0; u < NG; u++)
            _mm512_mask_storeu_ps(row + t0 + 16 * u, mk[u], acc[u]);
    }
}

/* the accumulator count for n outputs of a row: its vectors, up to NRT_POOL_NG */
#define NRT_POOL_BY_WIDTH(n, CALL) \
    do { ptrdiff_t nv_ = ((n) + 15) / 16; \
         if (nv_ <= 1) CALL(1); else if (nv_ <= 2) CALL(2); else if (nv_ <= 4) CALL(4); else CALL(NRT_POOL_NG); \
    } while (0)
#endif

static int nrt_pool_rows_v(const float* x, ptrdiff_t W, const ptrdiff_t* hs, int nh, float* row,
                           int is_max) {
#ifdef __AVX512F__
    /* constant is_max: no per-vector choice in the loops */
#define NRT_POOL_V_MAX(ng) nrt_pool_rows_v_impl(x, W, hs, nh, row, 1, ng)
#define NRT_POOL_V_SUM(ng) nrt_pool_rows_v_impl(x, W, hs, nh, row, 0, ng)
    if (is_max)
        NRT_POOL_BY_WIDTH(W, NRT_POOL_V_MAX);
    else
        NRT_POOL_BY_WIDTH(W, NRT_POOL_V_SUM);
#undef NRT_POOL_V_MAX
#undef NRT_POOL_V_SUM
    return 1;
#else
    return 0;
#endif
}

#ifdef __AVX512F__
static inline __attribute__((always_inline)) void
nrt_pool_rows_h_impl(const float* buf, float* yr, ptrdiff_t OW, ptrdiff_t kw, const ptrdiff_t sw,
                     ptrdiff_t dw, const int is_max, float rc, const float* colf, const int NG) {
    /* NG: as nrt_pool_rows_v_impl's */
    const __m512 fill = _mm512_set1_ps(is_max ? -INFINITY : 0.0f);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    ptrdiff_t o0, j;
    int u;
    for (o0 = 0; o0 < OW; o0 += 16 * NG) {
        __m512 acc[NRT_POOL_NG];
        __mmask16 mk[NRT_POOL_NG], mlo[NRT_POOL_NG], mhi[NRT_POOL_NG];
        for (u = 0; u < NG; u++) {
            ptrdiff_t rem = OW - o0 - 16 * u;
            acc[u] = fill;
            mk[u] = nrt_pool_mask(rem);
            mlo[u] = nrt_pool_mask(2 * rem - 1);   /* stride 2: the last odd element is never needed */
            mhi[u] = nrt_pool_mask(2 * rem - 17);
        }
        for (j = 0; j < kw; j++) {
            const float* src = buf + j * dw + o0 * sw;
            #pragma GCC unroll 8
            for (u = 0; u < NG; u++) {
                const float* su = src + 16 * u * sw;
                __m512 v;
                if (sw == 1) {
                    v = _mm512_maskz_loadu_ps(mk[u], su);
                } else if (sw == 2) {
                    __m512 lo = _mm512_maskz_loadu_ps(mlo[u], su);
                    __m512 hi = _mm512_maskz_loadu_ps(mhi[u], su + 16);
                    v = _mm512_permutex2var_ps(lo, even, hi);
                } else {
                    v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk[u],
                                                 _mm512_mullo_epi32(iota, _mm512_set1_epi32((int)sw)), su, 4);
                }
                acc[u] = is_max ? nrt_max_nan(v, acc[u]) : _mm512_add_ps(acc[u], v);
            }
        }
        #pragma GCC unroll 8
        for (u = 0; u < NG; u++) {
            __m512 a = acc[u];
            if (!is_max)
                a = _mm512_div_ps(a, _mm512_mul_ps(_mm512_set1_ps(rc),
                                                   _mm512_maskz_loadu_ps(mk[u], colf + o0 + 16 * u)));
            _mm512_mask_storeu_ps(yr + o0 + 16 * u, mk[u], a);
        }
    }
}
#endif

static int nrt_pool_rows_h(const float* buf, float* yr, ptrdiff_t OW, ptrdiff_t kw, ptrdiff_t sw,
                           ptrdiff_t dw, int is_max, float rc, const float* colf) {
#ifdef __AVX512F__
    /* constant is_max and the common strides: no per-vector choices in the loops */
#define NRT_POOL_H1(ng) nrt_pool_rows_h_impl(buf, yr, OW, kw, 1, dw, is_max_, rc, colf, ng)
#define NRT_POOL_H2(ng) nrt_pool_rows_h_impl(buf, yr, OW, kw, 2, dw, is_max_, rc, colf, ng)
#define NRT_POOL_HS(ng) nrt_pool_rows_h_impl(buf, yr, OW, kw, sw, dw, is_max_, rc, colf, ng)
    if (is_max) {
        const int is_max_ = 1;
        if (sw == 2) NRT_POOL_BY_WIDTH(OW, NRT_POOL_H2);
        else if (sw == 1) NRT_POOL_BY_WIDTH(OW, NRT_POOL_H1);
        else NRT_POOL_BY_WIDTH(OW, NRT_POOL_HS);
    } else {
        const int is_max_ = 0;
        if (sw == 2) NRT_POOL_BY_WIDTH(OW, NRT_POOL_H2);
        else if (sw == 1) NRT_POOL_BY_WIDTH(OW, NRT_POOL_H1);
        else NRT_POOL_BY_WIDTH(OW, NRT_POOL_HS);
    }
#undef NRT_POOL_H1
#undef NRT_POOL_H2
#undef NRT_POOL_HS
    return 1;
#else
    return 0;
#endif
}

/* 2x2 windows, stride 2, no padding/dilation/overhang (DenseNet's
   transitions, the 2x downsamplings of UNets): output row r from input
   rows 2r and 2r+1, both pairs of columns added (or maxed) vertically
   first, then the even and odd columns; a mean is that sum * 0.25
   (the same rounding as / 4). One streaming pass, no row buffer. */
#ifdef __AVX512F__
static inline __attribute__((always_inline)) void
nrt_pool_2x2_impl(const float* x, ptrdiff_t W, float* y, ptrdiff_t OH, ptrdiff_t OW, const int is_max,
                  const float* x_end) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512 quarter = _mm512_set1_ps(0.25f);
    ptrdiff_t r, o0;
    for (r = 0; r < OH; r++) {
        const float* x0 = x + 2 * r * W;
        const float* x1 = x0 + W;
        float* yr = y + r * OW;
        for (o0 = 0; o0 < OW; o0 += 16) {
            ptrdiff_t rem = OW - o0;
            __mmask16 mk = nrt_pool_mask(rem);
            __mmask16 mlo = nrt_pool_mask(2 * rem), mhi = nrt_pool_mask(2 * rem - 16);
            __m512 a0, b0, a1, b1, a, b, v;
            /* plain loads (masked ones cost more) wherever 32 floats are there to read: the
               lanes past the row (the next row's) only reach outputs the masked store drops */
            if (rem >= 16 || x1 + 2 * o0 + 32 <= x_end) {
                a0 = _mm512_loadu_ps(x0 + 2 * o0);
                b0 = _mm512_loadu_ps(x0 + 2 * o0 + 16);
                a1 = _mm512_loadu_ps(x1 + 2 * o0);
                b1 = _mm512_loadu_ps(x1 + 2 * o0 + 16);
            } else {
                a0 = _mm512_maskz_loadu_ps(mlo, x0 + 2 * o0);
                b0 = _mm512_maskz_loadu_ps(mhi, x0 + 2 * o0 + 16);
                a1 = _mm512_maskz_loadu_ps(mlo, x1 + 2 * o0);
                b1 = _mm512_maskz_loadu_ps(mhi, x1 + 2 * o0 + 16);
            }
            if (is_max) {
                a = nrt_max_nan(a1, a0);
                b = nrt_max_nan(b1, b0);
                v = nrt_max_nan(_mm512_permutex2var_ps(a, odd, b), _mm512_permutex2var_ps(a, even, b));
            } else {
                a = _mm512_add_ps(a0, a1);
                b = _mm512_add_ps(b0, b1);
                v = _mm512_mul_ps(_mm512_add_ps(_mm512_permutex2var_ps(a, even, b),
                                                _mm512_permutex2var_ps(a, odd, b)), quarter);
            }
            _mm512_mask_storeu_ps(yr + o0, mk, v);
        }
    }
}
#endif

static int nrt_pool_2x2(const float* x, ptrdiff_t W, float* y, ptrdiff_t OH, ptrdiff_t OW, int is_max,
                        const float* x_end) {
#ifdef __AVX512F__
    if (is_max)
        nrt_pool_2x2_impl(x, W, y, OH, OW, 1, x_end);
    else
        nrt_pool_2x2_impl(x, W, y, OH, OW, 0, x_end);
    return 1;
#else
    (void)x; (void)W; (void)y; (void)OH; (void)OW; (void)is_max; (void)x_end;
    return 0;
#endif
}

/* MaxPool 3x3, stride 2, left padding 1 (the ResNet / DenseNet stem pool):
   per output row, the vertical max of its (up to 3) input rows over 32
   columns in two registers, split into even columns E (2o) and odd O
   (2o+1); column 2o-1 is O moved up one lane with the previous chunk's
   last odd column (-inf, the padding, at the start). Columns past W load
   as -inf (right padding, ceil_mode's overhang). Taps are combined in
   pool_plane's order (rows, then columns 2o-1, 2o, 2o+1). */
static int nrt_maxpool_3s2p1(const float* x, ptrdiff_t H, ptrdiff_t W, float* y, ptrdiff_t OH,
                             ptrdiff_t OW, ptrdiff_t ph) {
#ifdef __AVX512F__
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    ptrdiff_t oh, o0, hs[3];
    int i, nh;
    for (oh = 0; oh < OH; oh++) {
        nh = 0;
        for (i = 0; i < 3; i++) {
            ptrdiff_t h = 2 * oh - ph + i;
            if (h >= 0 && h < H)
                hs[nh++] = h;
        }
        float* yr = y + oh * OW;
        __m512 prev_odd = ninf;
        for (o0 = 0; o0 < OW; o0 += 16) {
            ptrdiff_t c0 = 2 * o0;
            __mmask16 mlo = nrt_pool_mask(W - c0), mhi = nrt_pool_mask(W - c0 - 16);
            __m512 lo = ninf, hi = ninf;
            if (c0 + 32 <= W) {            /* whole chunk inside the row: plain loads (masked ones,
                                              filling -inf, cost more: 101 -> 73 us at 64x112x112) */
                for (i = 0; i < nh; i++) {
                    const float* xr = x + hs[i] * W + c0;
                    lo = nrt_max_nan(_mm512_loadu_ps(xr), lo);
                    hi = nrt_max_nan(_mm512_loadu_ps(xr + 16), hi);
                }
            } else {
                for (i = 0; i < nh; i++) {
                    const float* xr = x + hs[i] * W + c0;
                    lo = nrt_max_nan(_mm512_mask_loadu_ps(ninf, mlo, xr), lo);
                    hi = nrt_max_nan(_mm512_mask_loadu_ps(ninf, mhi, xr + 16), hi);
                }
            }
            __m512 e = _mm512_permutex2var_ps(lo, even, hi);
            __m512 o = _mm512_permutex2var_ps(lo, odd, hi);
            __m512 left = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(o),
                                                                  _mm512_castps_si512(prev_odd), 15));
            _mm512_mask_storeu_ps(yr + o0, nrt_pool_mask(OW - o0), nrt_max_nan(o, nrt_max_nan(e, left)));
            prev_odd = o;
        }
    }
    return 1;
#else
    (void)x; (void)H; (void)W; (void)y; (void)OH; (void)OW; (void)ph;
    return 0;
#endif
}

/* Sum of a short float32 run (a 7x7 plane) in float64 lanes: 8 floats
   widened per step into two alternating accumulators, a masked tail, then
   the lanes in a fixed order. Returns 0 without AVX-512 (the caller loops). */
static int nrt_small_sum_f32(const float* x, ptrdiff_t n, double* sum) {
#ifdef __AVX512F__
    __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm256_loadu_ps(x + i)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8)));
    }
    if (i + 8 <= n) {
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm256_loadu_ps(x + i)));
        i += 8;
    }
    if (i < n)
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_maskz_loadu_ps((__mmask8)((1u << (n - i)) - 1u), x + i)));
    *sum = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    return 1;
#else
    (void)x; (void)n; (void)sum;
    return 0;
#endif
}

#endif
