/* 8-bit grids shared by the kernels that quantize: the FakeQuant kernels (elementwise.pyx) and
   the 8-bit products (int8_gemm.h). */
#ifndef NORMRT_QUANT_GRID_H
#define NORMRT_QUANT_GRID_H

#include <math.h>
#include <stddef.h>
#include <string.h>

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

/* d[j] = table[code of a[j]]: code = min(max(round(a / scale) + zero, lo), hi) - lo, the FakeQuant
   kernels' arithmetic (an IEEE division, rounding half to even, then exact steps), and a NaN,
   which FakeQuant passes through, reads the entry after the last code. block = (scale, zero, lo,
   hi, table[hi - lo + 1], NaN's entry), hi - lo < 256 (elementwise.pyx checks it).

   AVX-512: 16 codes per step. roundscale with _MM_FROUND_TO_NEAREST_INT is the scalar rounding
   exactly (NaN, infinities and -0.0 alike), and max/min with the value second keep a NaN as the
   scalar selects do. The table (256 entries, padded) sits in 16 registers and each step looks
   its codes up with eight two-register permutes (32 entries each, by the code's low 5 bits) and
   a blend tree on bits 5, 6 and 7: ~18 instructions, where a gather from memory took ~27 cycles
   per 16 codes on Zen 4. */
static void nrt_q_grid_table(float* d, const float* a, const float* block, ptrdiff_t n)
{
    const float scale = block[0], zero = block[1], lo = block[2], hi = block[3];
    const float* table = block + 4;
    const int codes = (int)(hi - lo) + 1;
    ptrdiff_t j = 0;
#if defined(__AVX512F__)
    if (n >= 16) {
        float padded[256];
        const float* t = table;
        __m512 T[16];
        if (codes < 256) {              /* entries past the last code are never read */
            memset(padded, 0, sizeof padded);
            memcpy(padded, table, (size_t)codes * sizeof(float));
            t = padded;
        }
        for (int r = 0; r < 16; r++)
            T[r] = _mm512_loadu_ps(t + 16 * r);
        const __m512 vs = _mm512_set1_ps(scale), vz = _mm512_set1_ps(zero), vlo = _mm512_set1_ps(lo);
        const __m512 vhi = _mm512_set1_ps(hi), vnan = _mm512_set1_ps(table[codes]);
        const __m512i b5 = _mm512_set1_epi32(32), b6 = _mm512_set1_epi32(64), b7 = _mm512_set1_epi32(128);
        for (; j + 16 <= n; j += 16) {
            __m512 v = _mm512_div_ps(_mm512_loadu_ps(a + j), vs);
            v = _mm512_add_ps(_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vz);
            v = _mm512_min_ps(vhi, _mm512_max_ps(vlo, v));
            __mmask16 ok = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
            /* a NaN lane converts to some index; its value is replaced below */
            __m512i c = _mm512_maskz_cvttps_epi32(ok, _mm512_sub_ps(v, vlo));
            __mmask16 m5 = _mm512_test_epi32_mask(c, b5), m6 = _mm512_test_epi32_mask(c, b6);
            __mmask16 m7 = _mm512_test_epi32_mask(c, b7);
            __m512 q0 = _mm512_mask_blend_ps(m5, _mm512_permutex2var_ps(T[0], c, T[1]),
                                             _mm512_permutex2var_ps(T[2], c, T[3]));
            __m512 q1 = _mm512_mask_blend_ps(m5, _mm512_permutex2var_ps(T[4], c, T[5]),
                                             _mm512_permutex2var_ps(T[6], c, T[7]));
            __m512 q2 = _mm512_mask_blend_ps(m5, _mm512_permutex2var_ps(T[8], c, T[9]),
                                             _mm512_permutex2var_ps(T[10], c, T[11]));
            __m512 q3 = _mm512_mask_blend_ps(m5, _mm512_permutex2var_ps(T[12], c, T[13]),
                                             _mm512_permutex2var_ps(T[14], c, T[15]));
            __m512 h0 = _mm512_mask_blend_ps(m6, q0, q1), h1 = _mm512_mask_blend_ps(m6, q2, q3);
            __m512 r = _mm512_mask_blend_ps(m7, h0, h1);
            _mm512_storeu_ps(d + j, _mm512_mask_blend_ps(ok, vnan, r));
        }
    }
#endif
    for (; j < n; j++) {
        float v = nrt_q_round(a[j] / scale) + zero;
        v = v < lo ? lo : v;
        v = v > hi ? hi : v;
        d[j] = table[v == v ? (int)(v - lo) : codes];
    }
}

#endif
