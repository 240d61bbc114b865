/* The GEMM's A-operand packing (gemm_core.pxd's pack_a_panels): MR rows of a
   row-major matrix into one k-major panel, d[kk * MR + i] = a[i, kk], the
   layout the micro-kernel broadcasts from.

   Why register transposes: element by element, each float is one load and one
   store MR floats away from the last, so the pack ran at about a float a cycle;
   on a transformer's products (128 rows, K 256..1024) A is packed on every call
   (it is the activation) and that showed in 1-thread profiles. With AVX2 an
   8 x 8 block (8 rows x 8 columns) is 8 row loads, 24 shuffles and 8 panel
   stores. Packing only moves floats: every path gives the same bits. */
#ifndef NORMRT_GEMM_PACK_A_H
#define NORMRT_GEMM_PACK_A_H

#include "gemm_microkernel.h"

#if defined(__AVX2__)
#include <immintrin.h>

/* r[0..7] (rows of 8 floats) become the columns: r[j][i] = old r[i][j]. */
static inline __attribute__((always_inline)) void nrt_transpose8(__m256 r[8])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    /* s_c: columns c (low half) and c + 4 (high half) of rows 0-3 / 4-7 */
    __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

/* Rows [0, rows) of a (row stride lda; rows <= MR, rows past them zeros),
   columns [0, kc), into the panel d (kc * MR floats). */
static inline void nrt_pack_a_panel(const float* restrict a, Py_ssize_t lda, Py_ssize_t rows, Py_ssize_t kc,
                                    float* restrict d)
{
    Py_ssize_t kk = 0, i;
#if defined(__AVX2__) && (NRT_MR == 8 || NRT_MR == 6)
    for (; kk + 8 <= kc; kk += 8) {
        __m256 r[8];
        for (i = 0; i < 8; i++)
            r[i] = i < rows ? _mm256_loadu_ps(a + i * lda + kk) : _mm256_setzero_ps();
        nrt_transpose8(r);
  #if NRT_MR == 8
        for (i = 0; i < 8; i++)
            _mm256_storeu_ps(d + (kk + i) * 8, r[i]);
  #else
        /* 6 of each column's 8 lanes: whole stores that the next one partly
           overwrites, the last one masked (it would spill past the block) */
        for (i = 0; i < 7; i++)
            _mm256_storeu_ps(d + (kk + i) * 6, r[i]);
        _mm256_maskstore_ps(d + (kk + 7) * 6, _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0), r[7]);
  #endif
    }
#endif
    /* the portable path, and the last kc % 8 columns */
    for (i = 0; i < NRT_MR; i++) {
        const float* src = a + i * lda;
        Py_ssize_t q;
        if (i < rows)
            for (q = kk; q < kc; q++)
                d[q * NRT_MR + i] = src[q];
        else
            for (q = kk; q < kc; q++)
                d[q * NRT_MR + i] = 0.0f;
    }
}

#endif
