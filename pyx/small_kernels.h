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

/* y (M, N) = a (M, K) @ b (K, N), all row-major and contiguous: row by row, k ascending. */
static __attribute__((noinline)) void nrt_small_matmul(float *restrict y, const float *restrict a, const float *restrict b,
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
