"""2-D pooling over NCHW planes: MaxPool, AveragePool, GlobalAveragePool.

One plane (n, c) per work item. The window is separable: for each output
row the kernel rows inside the input are reduced (max or sum) into a row
buffer whose padding columns hold the neutral value (-inf for max, 0 for a
sum), then the kernel columns are reduced over that buffer, so no loop needs
a bounds test. Left padding, right padding and ceil_mode's overhang are all
just fill. float32 with AVX-512 runs both passes on register accumulators
(masked tails, paired loads + a permute for stride 2, a gather for larger
strides), the vertical passes of 8 output rows before their horizontal ones;
elsewhere plain loops the compiler vectorizes.

Taps are combined in a fixed order (kernel rows, then kernel columns) and
each output is computed by one thread: bitwise identical for any thread count.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport INFINITY, NAN

from moments cimport real, sums_dev
from omp cimport omp_get_thread_num

cdef extern from *:
    """
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
                         const int is_max) {
        const __m512 fill = _mm512_set1_ps(is_max ? -INFINITY : 0.0f);
        ptrdiff_t t0;
        int i, u;
        for (t0 = 0; t0 < W; t0 += 16 * NRT_POOL_NG) {
            __m512 acc[NRT_POOL_NG];
            __mmask16 mk[NRT_POOL_NG];
            int nv = (int)((W - t0 + 15) / 16);         /* vectors with any column */
            for (u = 0; u < NRT_POOL_NG; u++) {
                acc[u] = fill;
                mk[u] = nrt_pool_mask(W - t0 - 16 * u);
            }
            for (i = 0; i < nh; i++) {
                const float* xr = x + hs[i] * W + t0;
                #pragma GCC unroll 8
                for (u = 0; u < NRT_POOL_NG; u++) {
                    if (u >= nv)
                        break;
                    __m512 v = _mm512_maskz_loadu_ps(mk[u], xr + 16 * u);
                    acc[u] = is_max ? nrt_max_nan(v, acc[u]) : _mm512_add_ps(acc[u], v);
                }
            }
            for (u = 0; u < nv && u < NRT_POOL_NG; u++)
                _mm512_mask_storeu_ps(row + t0 + 16 * u, mk[u], acc[u]);
        }
    }
    #endif

    static int nrt_pool_rows_v(const float* x, ptrdiff_t W, const ptrdiff_t* hs, int nh, float* row,
                               int is_max) {
    #ifdef __AVX512F__
        /* constant is_max: no per-vector choice in the loops */
        if (is_max)
            nrt_pool_rows_v_impl(x, W, hs, nh, row, 1);
        else
            nrt_pool_rows_v_impl(x, W, hs, nh, row, 0);
        return 1;
    #else
        return 0;
    #endif
    }

    #ifdef __AVX512F__
    static inline __attribute__((always_inline)) void
    nrt_pool_rows_h_impl(const float* buf, float* yr, ptrdiff_t OW, ptrdiff_t kw, const ptrdiff_t sw,
                         ptrdiff_t dw, const int is_max, float rc, const float* colf) {
        const __m512 fill = _mm512_set1_ps(is_max ? -INFINITY : 0.0f);
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        ptrdiff_t o0, j;
        int u;
        for (o0 = 0; o0 < OW; o0 += 16 * NRT_POOL_NG) {
            __m512 acc[NRT_POOL_NG];
            __mmask16 mk[NRT_POOL_NG], mlo[NRT_POOL_NG], mhi[NRT_POOL_NG];
            int nv = (int)((OW - o0 + 15) / 16);        /* vectors with any output */
            for (u = 0; u < NRT_POOL_NG; u++) {
                ptrdiff_t rem = OW - o0 - 16 * u;
                acc[u] = fill;
                mk[u] = nrt_pool_mask(rem);
                mlo[u] = nrt_pool_mask(2 * rem - 1);   /* stride 2: the last odd element is never needed */
                mhi[u] = nrt_pool_mask(2 * rem - 17);
            }
            for (j = 0; j < kw; j++) {
                const float* src = buf + j * dw + o0 * sw;
                #pragma GCC unroll 8
                for (u = 0; u < NRT_POOL_NG; u++) {
                    if (u >= nv)
                        break;
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
            for (u = 0; u < nv && u < NRT_POOL_NG; u++) {
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
        if (is_max && sw == 2)
            nrt_pool_rows_h_impl(buf, yr, OW, kw, 2, dw, 1, rc, colf);
        else if (is_max && sw == 1)
            nrt_pool_rows_h_impl(buf, yr, OW, kw, 1, dw, 1, rc, colf);
        else if (is_max)
            nrt_pool_rows_h_impl(buf, yr, OW, kw, sw, dw, 1, rc, colf);
        else if (sw == 2)
            nrt_pool_rows_h_impl(buf, yr, OW, kw, 2, dw, 0, rc, colf);
        else if (sw == 1)
            nrt_pool_rows_h_impl(buf, yr, OW, kw, 1, dw, 0, rc, colf);
        else
            nrt_pool_rows_h_impl(buf, yr, OW, kw, sw, dw, 0, rc, colf);
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
    """
    const bint HAVE_AVX512 "NRT_POOL_HAVE_AVX512"
    bint small_sum_f32 "nrt_small_sum_f32"(const float* x, Py_ssize_t n, double* sum) noexcept nogil
    bint maxpool_3s2p1 "nrt_maxpool_3s2p1"(const float* x, Py_ssize_t H, Py_ssize_t W, float* y,
                                           Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph) noexcept nogil
    bint pool_2x2 "nrt_pool_2x2"(const float* x, Py_ssize_t W, float* y, Py_ssize_t OH, Py_ssize_t OW,
                                 bint is_max, const float* x_end) noexcept nogil
    bint pool_rows_v "nrt_pool_rows_v"(const float* x, Py_ssize_t W, const Py_ssize_t* hs, int nh,
                                       float* row, bint is_max) noexcept nogil
    bint pool_rows_h "nrt_pool_rows_h"(const float* buf, float* yr, Py_ssize_t OW, Py_ssize_t kw,
                                       Py_ssize_t sw, Py_ssize_t dw, bint is_max, float rc,
                                       const float* colf) noexcept nogil


cdef enum:
    # output rows whose vertical passes run before their horizontal ones (AVX-512)
    ROW_GROUP = 8

cdef enum:
    # planes shorter than this are summed by four plain float64 chains (the
    # vector lanes' set-up and merge would cost more than the sum)
    SMALL_PLANE = 256


cdef inline void combine(real* acc, const real* src, Py_ssize_t sw, Py_ssize_t n,
                         bint is_max) noexcept nogil:
    """acc[t] = max(acc[t], src[t*sw]) or acc[t] + src[t*sw], for t < n."""
    cdef Py_ssize_t t
    cdef real v, m
    if is_max:
        for t in range(n):
            v = src[t * sw]
            m = acc[t]
            # keeps a NaN either side (like np.maximum); | not `or`: no branch, so it vectorizes
            acc[t] = m if ((v <= m) | (m != m)) else v
    else:
        for t in range(n):
            acc[t] = acc[t] + src[t * sw]


cdef inline void pool_plane(const real* x, Py_ssize_t H, Py_ssize_t W, real* y,
                            Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw,
                            Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                            Py_ssize_t dh, Py_ssize_t dw, bint is_max,
                            const long long* row_count, const long long* col_count,
                            const float* colf, real* buf, Py_ssize_t L, Py_ssize_t* hs) noexcept nogil:
    """Separable: the kernel rows reduced into a padded row buffer (contiguous,
    full width), then the kernel columns over it (strided), one output row at a time."""
    cdef Py_ssize_t oh, ow, i, j, h, t
    cdef int nh
    cdef real fill = -INFINITY if is_max else 0
    cdef real* row = buf + pw
    cdef real* yr
    cdef Py_ssize_t g0, g1
    if real is float:
        if (is_max and kh == 3 and kw == 3 and sh == 2 and sw == 2 and dh == 1 and dw == 1 and pw == 1
                and maxpool_3s2p1(x, H, W, y, OH, OW, ph)):
            return
        if HAVE_AVX512:
            # ROW_GROUP padded rows: all vertical passes of a group, then its horizontal ones
            for t in range(ROW_GROUP * L):
                buf[t] = fill   # the padding columns are never written again
            g0 = 0
            while g0 < OH:
                g1 = min(OH, g0 + ROW_GROUP)
                for oh in range(g0, g1):
                    nh = 0
                    for i in range(kh):
                        h = oh * sh - ph + i * dh
                        if 0 <= h < H:
                            hs[nh] = h
                            nh = nh + 1
                    pool_rows_v(x, W, hs, nh, buf + (oh - g0) * L + pw, is_max)
                for oh in range(g0, g1):
                    pool_rows_h(buf + (oh - g0) * L, y + oh * OW, OW, kw, sw, dw, is_max,
                                <float>(row_count[oh] if not is_max else 1), colf)
                g0 = g1
            return
    for t in range(L):
        buf[t] = fill           # the padding columns are never written again
    for oh in range(OH):
        # start from the neutral value, not a copy of the first tap: the copies
        # would be strided scalar loops, combine() has a vector path
        for t in range(W):
            row[t] = fill
        for i in range(kh):
            h = oh * sh - ph + i * dh
            if h < 0 or h >= H:
                continue        # a padded row: neutral for both reductions
            combine(row, x + h * W, 1, W, is_max)
        yr = y + oh * OW
        for ow in range(OW):
            yr[ow] = fill
        for j in range(kw):
            # constant strides for the common 1 and 2: contiguous or paired loads
            if sw == 1:
                combine(yr, buf + j * dw, 1, OW, is_max)
            elif sw == 2:
                combine(yr, buf + j * dw, 2, OW, is_max)
            else:
                combine(yr, buf + j * dw, sw, OW, is_max)
        if not is_max:
            for ow in range(OW):
                yr[ow] = yr[ow] / <real>(row_count[oh] * col_count[ow])


cdef inline real max_keep_nan(real m, real v) noexcept nogil:
    """max(m, v) keeping a NaN either side, as combine() takes v into m."""
    return m if ((v <= m) | (m != m)) else v


cdef inline void pool_2x2_plane(const real* x, Py_ssize_t W, real* y, Py_ssize_t OH,
                                Py_ssize_t OW, bint is_max, const real* x_end) noexcept nogil:
    """2x2 windows, stride 2, no padding: pool_plane's combination order
    (the kernel rows, then the kernel columns) without its row buffer.
    x_end: the end of the whole input (loads may run past the plane, not past it)."""
    cdef Py_ssize_t r, o
    cdef const real* x0
    cdef const real* x1
    cdef real* yr
    if real is float:
        if pool_2x2(x, W, y, OH, OW, is_max, x_end):
            return
    for r in range(OH):
        x0 = x + 2 * r * W
        x1 = x0 + W
        yr = y + r * OW
        if is_max:
            for o in range(OW):
                yr[o] = max_keep_nan(max_keep_nan(x0[2 * o], x1[2 * o]),
                                     max_keep_nan(x0[2 * o + 1], x1[2 * o + 1]))
        else:
            for o in range(OW):
                yr[o] = ((x0[2 * o] + x1[2 * o]) + (x0[2 * o + 1] + x1[2 * o + 1])) / <real>4


cdef bint counts_all(const long long[::1] counts, long long value) noexcept:
    cdef Py_ssize_t i
    for i in range(counts.shape[0]):
        if counts[i] != value:
            return False
    return True


def pool2d(const real[:, :, ::1] x,            # IN  (planes, H, W)
           real[:, :, ::1] out,                # OUT (planes, OH, OW)
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
           bint is_max,
           const long long[::1] row_count,     # IN  (OH,) taps counted per output row (average)
           const long long[::1] col_count,     # IN  (OW,) ... per output column
           int n_threads):
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t OH = out.shape[1], OW = out.shape[2], p, L, per_thread, ow
    cdef char* work
    cdef real* buf
    cdef float* colf = NULL
    if out.shape[0] != P:
        raise ValueError("out must have x's number of planes")
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or dh < 1 or dw < 1 or ph < 0 or pw < 0:
        raise ValueError("kernel, strides and dilations must be >= 1, pads >= 0")
    if not is_max and (row_count.shape[0] != OH or col_count.shape[0] != OW):
        raise ValueError("row_count / col_count must have OH / OW entries")
    if P == 0 or OH == 0 or OW == 0:
        return
    L = (OW - 1) * sw + (kw - 1) * dw + 1       # padded row length the windows read
    if L < pw + W:
        L = pw + W                              # ... and room for the whole input row
    if n_threads > P:
        n_threads = <int>P
    if (kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and dh == 1 and dw == 1
            and 2 * OH <= H and 2 * OW <= W and (is_max or counts_all(row_count, 2) and counts_all(col_count, 2))):
        for p in prange(P, nogil=True, schedule="static", num_threads=n_threads):
            pool_2x2_plane(&x[p, 0, 0], W, &out[p, 0, 0], OH, OW, is_max, &x[0, 0, 0] + P * H * W)
        return
    # per thread: the padded row, then the list of kernel rows inside the input
    per_thread = ((ROW_GROUP * L * sizeof(real) + 63) // 64) * 64 + kh * sizeof(Py_ssize_t)
    work = <char*>malloc(n_threads * per_thread + OW * sizeof(float))
    if work == NULL:
        raise MemoryError()
    try:
        if not is_max:
            colf = <float*>(work + n_threads * per_thread)
            for ow in range(OW):
                colf[ow] = <float>col_count[ow]     # small counts: exact as floats
        for p in prange(P, nogil=True, schedule="dynamic", num_threads=n_threads):
            buf = <real*>(work + omp_get_thread_num() * per_thread)
            pool_plane(&x[p, 0, 0], H, W, &out[p, 0, 0], OH, OW, kh, kw, sh, sw, ph, pw,
                       dh, dw, is_max, &row_count[0] if not is_max else NULL,
                       &col_count[0] if not is_max else NULL, colf, buf, L,
                       <Py_ssize_t*>(<char*>buf + ((ROW_GROUP * L * sizeof(real) + 63) // 64) * 64))
    finally:
        free(work)


cdef inline double small_sum(const real* x, Py_ssize_t n) noexcept nogil:
    """sum(x) for a short run (ResNet's 7x7 planes): float64 vector lanes (float32, AVX-512)
    or four float64 chains, no chunk set-up."""
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0
    cdef Py_ssize_t i = 0
    if real is float:
        if small_sum_f32(x, n, &a0):
            return a0
    while i + 4 <= n:
        a0 += x[i]
        a1 += x[i + 1]
        a2 += x[i + 2]
        a3 += x[i + 3]
        i += 4
    while i < n:
        a0 += x[i]
        i += 1
    return (a0 + a1) + (a2 + a3)


def global_average(const real[:, ::1] x,       # IN  (planes, H*W)
                   real[::1] out,              # OUT (planes,)
                   int n_threads):
    """Mean of each plane, accumulated in float64 lanes."""
    cdef Py_ssize_t P = x.shape[0], n = x.shape[1], p
    if out.shape[0] != P:
        raise ValueError("out must have one entry per plane")
    if P == 0:
        return
    if n == 0:
        for p in range(P):
            out[p] = NAN                 # the mean of nothing
        return
    if n < SMALL_PLANE:
        for p in prange(P, nogil=True, schedule="static", num_threads=n_threads):
            out[p] = <real>(small_sum(&x[p, 0], n) / n)
        return
    for p in prange(P, nogil=True, schedule="static", num_threads=n_threads):
        out[p] = <real>(sums_dev(&x[p, 0], n, 0.0).s1 / n)
