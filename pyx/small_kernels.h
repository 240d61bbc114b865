/* Inner loop of the small product kernel (small_gemm.pyx).
 *
 * Kept in C so the pointers can be declared restrict: the loops along a row
 * then vectorize (inside Cython's OpenMP-outlined loops GCC could not prove
 * that y and a never overlap, and ran them scalar at ~0.5 GMAC/s). Every output
 * is summed in a fixed order (k ascending), the same whichever thread runs it.
 */
#ifndef NORMRT_SMALL_KERNELS_H
#define NORMRT_SMALL_KERNELS_H

#include <stddef.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
/* rows i0..i0+R-1 (R = 1 or 2), columns j0..j0+nj-1 (nj <= 16 * NV) of y: their outputs in registers for the
   whole K loop (stored once), b's rows as masked vectors. Each output is still
   y = (((0 + a0 b0) + a1 b1) + ...): a product rounded, then added (no fused multiply-add),
   the scalar loop's very operations, so the same bits. */
static inline __attribute__((always_inline)) void
nrt_small_rows(float *restrict y, const float *restrict a, const float *restrict b, ptrdiff_t i0,
               ptrdiff_t K, ptrdiff_t N, ptrdiff_t j0, ptrdiff_t nj, const int R, const int NV) {
    __m512 acc[2][4];
    __mmask16 m[4];
    for (int u = 0; u < NV; u++) {
        ptrdiff_t rem = nj - 16 * u;
        m[u] = rem >= 16 ? (__mmask16)0xFFFF : rem <= 0 ? (__mmask16)0 : (__mmask16)((1u << rem) - 1u);
        for (int r = 0; r < R; r++)
            acc[r][u] = _mm512_setzero_ps();
    }
    for (ptrdiff_t k = 0; k < K; k++) {
        __m512 bv[4];
        for (int u = 0; u < NV; u++)
            bv[u] = _mm512_maskz_loadu_ps(m[u], b + k * N + j0 + 16 * u);
        for (int r = 0; r < R; r++) {
            __m512 av = _mm512_set1_ps(a[(i0 + r) * K + k]);
            for (int u = 0; u < NV; u++)
                acc[r][u] = _mm512_add_ps(acc[r][u], _mm512_mul_ps(av, bv[u]));
        }
    }
    for (int r = 0; r < R; r++)
        for (int u = 0; u < NV; u++)
            _mm512_mask_storeu_ps(y + (i0 + r) * N + j0 + 16 * u, m[u], acc[r][u]);
}

/* columns j0 .. j0 + nj - 1 of every row, two rows at a time */
#define NRT_SMALL_ROWS_NV(j0, nj, NV) do { \
        ptrdiff_t i_ = 0; \
        for (; i_ + 2 <= M; i_ += 2) nrt_small_rows(y, a, b, i_, K, N, j0, nj, 2, NV); \
        if (i_ < M) nrt_small_rows(y, a, b, i_, K, N, j0, nj, 1, NV); \
    } while (0)
#endif

/* y (M, N) = a (M, K) @ b (K, N), all row-major and contiguous: row by row, k ascending.
   (AVX-512: in panels of 64 columns - attention heads' score and value products - the rows'
   outputs stay in registers across K instead of a load and store of the row per k, ~3x
   faster at 24 x 16 x 24.) */
static __attribute__((noinline)) void nrt_small_matmul(float *restrict y, const float *restrict a, const float *restrict b,
                                    ptrdiff_t M, ptrdiff_t K, ptrdiff_t N) {
#if defined(__AVX512F__)
    ptrdiff_t j0 = 0;
    for (; j0 + 64 <= N; j0 += 64)
        NRT_SMALL_ROWS_NV(j0, 64, 4);
    ptrdiff_t nj = N - j0;
    if (nj > 48) NRT_SMALL_ROWS_NV(j0, nj, 4);
    else if (nj > 32) NRT_SMALL_ROWS_NV(j0, nj, 3);
    else if (nj > 16) NRT_SMALL_ROWS_NV(j0, nj, 2);
    else if (nj > 0) NRT_SMALL_ROWS_NV(j0, nj, 1);
    return;
#endif
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
