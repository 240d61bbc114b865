/* 8-bit grids shared by the kernels that quantize: the FakeQuant kernels (elementwise.pyx) and
   the 8-bit products (int8_gemm.h). */
#ifndef NORMRT_QUANT_GRID_H
#define NORMRT_QUANT_GRID_H

#include <math.h>
#include <stddef.h>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* x rounded to the nearest integer, ties to even (the FakeQuant kernel's rounding, elementwise.pyx) */
static inline float nrt_q_round(float x)
{
    float a = fabsf(x);
    float r = copysignf((a + 8388608.0f) - 8388608.0f, x);
    return a < 8388608.0f ? r : x;
}

/* DynamicQuantizeLinear's uint8 grid of x (n floats): the range [min(x, 0), max(x, 0)] onto
   0..255, in float32 as the spec writes it (scale 1/255 when the range is empty), the zero point
   rounded half to even - ops.quantize.dynamic_range's arithmetic, which a NaN anywhere leaves
   at the empty range (Python's max(0.0, nan) is 0.0). */
static void nrt_q_dynamic_grid(const float* x, ptrdiff_t n, float* scale, float* zero)
{
    float lo = 0.0f, hi = 0.0f, d, z;
    int nan = 0;
    ptrdiff_t i = 0;
    /* vector min/max keep their accumulator (second operand) for a NaN or an equal value, as the
       scalar selects below: no -0.0 enters, so the lanes' order does not matter */
#if defined(__AVX512F__)
    {
        __m512 vlo = _mm512_setzero_ps(), vhi = vlo;
        __mmask16 bad = 0;
        for (; i + 16 <= n; i += 16) {
            __m512 v = _mm512_loadu_ps(x + i);
            bad |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            vlo = _mm512_min_ps(v, vlo);
            vhi = _mm512_max_ps(v, vhi);
        }
        lo = _mm512_reduce_min_ps(vlo);
        hi = _mm512_reduce_max_ps(vhi);
        nan = bad != 0;
    }
#elif defined(__AVX2__)
    {
        __m256 vlo = _mm256_setzero_ps(), vhi = vlo, bad = vlo;
        float l[8], h[8];
        int j;
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            vlo = _mm256_min_ps(v, vlo);
            vhi = _mm256_max_ps(v, vhi);
        }
        _mm256_storeu_ps(l, vlo);
        _mm256_storeu_ps(h, vhi);
        for (j = 0; j < 8; j++) {
            lo = l[j] < lo ? l[j] : lo;
            hi = h[j] > hi ? h[j] : hi;
        }
        nan = _mm256_movemask_ps(bad) != 0;
    }
#endif
    for (; i < n; i++) {
        float v = x[i];
        nan |= v != v;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    if (nan)
        lo = hi = 0.0f;
    d = hi == lo ? 1.0f : hi - lo;
    *scale = d / 255.0f;
    z = -(lo / *scale);
    /* a range narrower than the subnormals rounds the scale to 0: -lo / 0 is +inf (255) or, lo
       = 0, NaN, which the spec's cast to uint8 makes 0 (dynamic_range likewise) */
    z = z != z ? 0.0f : z;
    z = z < 0.0f ? 0.0f : (z > 255.0f ? 255.0f : z);
    *zero = nrt_q_round(z);
}

#endif
