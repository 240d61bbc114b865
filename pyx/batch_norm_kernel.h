/* BatchNorm's vector inner loop (batch_norm.pyx's C side). */
#ifndef NRT_BATCH_NORM_KERNEL_H
#define NRT_BATCH_NORM_KERNEL_H

#include <stddef.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
/* One float32 channel run, y = (x - mh) * a + b (moments.pxd's
   write_affine: b has the low part of the mean folded in), then relu if
   asked, in one pass with masked tails (DenseNet's runs are 49 to 3136
   long: a scalar epilogue and a second pass over y would cost as much as
   the run). Relu as max(0, v): vmaxps returns its second operand v when
   either is NaN or both are zero, which is `0 if v < 0 else v` bit for bit.
   The multiply-add is fused, as nrt_mul_add is on this level.
   Returns 0 without AVX-512 (the caller loops). */
static int nrt_affine_run_f32(const float* x, float* y, ptrdiff_t n, float mh,
                              float a, float b, int relu) {
#ifdef __AVX512F__
    const __m512 vmh = _mm512_set1_ps(mh);
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), zero = _mm512_setzero_ps();
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmh), va, vb);
        _mm512_storeu_ps(y + i, relu ? _mm512_max_ps(zero, v) : v);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        __m512 v = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmh), va, vb);
        _mm512_mask_storeu_ps(y + i, m, relu ? _mm512_max_ps(zero, v) : v);
    }
    return 1;
#else
    (void)x; (void)y; (void)n; (void)mh; (void)a; (void)b; (void)relu;
    return 0;
#endif
}

#endif
