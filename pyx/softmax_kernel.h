/* softmax.pyx's row softmax on AVX-512 vectors for float32 (0 elsewhere: the
 * caller runs its own loop).
 *
 * Why: an attention that stays written out (BLOOM's ALiBi scores, DeBERTa's
 * disentangled ones) calls Softmax on many short rows (24 keys); the Cython
 * loop's short-row tail is scalar exp_f calls, ~130 ns a row of 24. Here a row
 * is a few vectors, its tail one masked vector.
 *
 * Per row, the same passes as the Cython loop: the max (a NaN never wins it,
 * as there), exp(x - max) stored and summed (float32 vector lanes over blocks
 * of 256 elements, then float64 lanes), y scaled by 1 / sum. The exp is
 * norm_vec.h's nrt_exp_f (within an ulp of exp_f) and the lanes add in another
 * order than the Cython loop's: results are within rounding of it, not its
 * bits, and as every row is one thread's, the same bits for any thread count.
 */
#ifndef NRT_SOFTMAX_KERNEL_H
#define NRT_SOFTMAX_KERNEL_H

#include <math.h>
#include <stddef.h>
#include "norm_vec.h"

#if NRT_HAVE_NORM_VEC
static inline int nrt_softmax_row_f32(const float* x, float* y, ptrdiff_t n, int empty_rows_zero) {
    __m512 vm = _mm512_set1_ps(-INFINITY);
    ptrdiff_t i, b;
    for (i = 0; i + 16 <= n; i += 16)
        vm = _mm512_max_ps(_mm512_loadu_ps(x + i), vm);      /* NaN in x: vm kept */
    if (i < n) {
        __mmask16 t = (__mmask16)((1u << (n - i)) - 1u);
        vm = _mm512_max_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), t, x + i), vm);
    }
    float m = _mm512_reduce_max_ps(vm);
    if (m == -INFINITY)
        m = 0.0f;          /* an all -inf row: exp gives zeros, not (-inf) - (-inf) */
    const __m512 vmax = _mm512_set1_ps(m);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (b = 0; b < n; b += 256) {
        ptrdiff_t end = b + 256 < n ? b + 256 : n;
        __m512 acc = _mm512_setzero_ps();
        for (i = b; i + 16 <= end; i += 16) {
            __m512 e = nrt_exp_f(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmax));
            _mm512_storeu_ps(y + i, e);
            acc = _mm512_add_ps(acc, e);
        }
        if (i < end) {
            __mmask16 t = (__mmask16)((1u << (end - i)) - 1u);
            __m512 e = _mm512_maskz_mov_ps(t, nrt_exp_f(_mm512_sub_ps(_mm512_maskz_loadu_ps(t, x + i), vmax)));
            _mm512_mask_storeu_ps(y + i, t, e);
            acc = _mm512_add_ps(acc, e);
        }
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(acc)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1))));
    }
    double s = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    if (s == 0.0 && empty_rows_zero)
        return 1;          /* y is all zeros already */
    const __m512 inv = _mm512_set1_ps((float)(1.0 / s));
    for (i = 0; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), inv));
    if (i < n) {
        __mmask16 t = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, t, _mm512_mul_ps(_mm512_maskz_loadu_ps(t, y + i), inv));
    }
    return 1;
}
#else
static inline int nrt_softmax_row_f32(const float* x, float* y, ptrdiff_t n, int empty_rows_zero) {
    (void)x; (void)y; (void)n; (void)empty_rows_zero;
    return 0;
}
#endif

#endif
