/* The output pass of the channels-first norms (channel_norm.pyx), four channels per sweep.

   y[c, j] = ((x[c, j] - mh[j]) * rf[j] + nml[j]) * scale[c] + bias[c]
   for channels c0 <= c < c1 and positions 0 <= j < w, rows S elements apart;
   mh is the (high part of the) mean, rf the reciprocal std and nml the
   correction -(mean's low part) * rf, per position (0, rstd, 0 for RMSNorm);
   scale/bias may be NULL (1, 0).

   Why C: the sweep loads each position's mh, rf, nml once for four channels
   instead of once per channel, and writes four output rows per iteration.
   The compiler cannot prove that the y rows do not overlap the x rows (the
   output may be x itself), and Cython has no way to say so; `#pragma GCC
   ivdep` states what holds: iteration j reads and writes column j only (in
   place, each element is read before it is written), so no iteration depends
   on another and the loop may be vectorized.

   Every element is computed with the same operations in the same order
   whichever sweep or tail covers it: results do not depend on the block
   width or the thread count. */
#ifndef NRT_CHANNEL_NORM_OUT_H
#define NRT_CHANNEL_NORM_OUT_H

#include <stddef.h>
#include "fused_ops.h"

#if defined(__GNUC__) && !defined(__clang__)
#define NRT_IVDEP _Pragma("GCC ivdep")
#elif defined(__clang__)
#define NRT_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define NRT_IVDEP
#endif

/* One definition for both types: NAME, the element type T and MUL_ADD(a, b, c), a * b + c
   (float32: nrt_mul_add, fused where the ISA has FMA; float64: rounded twice, which
   -ffp-contract=off keeps so at every level). */
#define NRT_DEFINE_CHANNEL_AFFINE(NAME, T, MUL_ADD)                                              \
static inline void NAME(const T* x, T* y, ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t S, ptrdiff_t w,   \
                        const T* mh, const T* rf, const T* nml, const T* scale, const T* bias) { \
    ptrdiff_t c = c0, j;                                                                         \
    for (; c + 4 <= c1; c += 4) {                                                                \
        const T a0 = scale ? scale[c] : (T)1, a1 = scale ? scale[c + 1] : (T)1;                  \
        const T a2 = scale ? scale[c + 2] : (T)1, a3 = scale ? scale[c + 3] : (T)1;              \
        const T b0 = bias ? bias[c] : (T)0, b1 = bias ? bias[c + 1] : (T)0;                      \
        const T b2 = bias ? bias[c + 2] : (T)0, b3 = bias ? bias[c + 3] : (T)0;                  \
        const T* x0 = x + c * S;                                                                 \
        T* y0 = y + c * S;                                                                       \
        NRT_IVDEP                                                                                \
        for (j = 0; j < w; j++) {                                                                \
            const T m = mh[j], r = rf[j], q = nml[j];                                            \
            const T v0 = x0[j], v1 = x0[j + S], v2 = x0[j + 2 * S], v3 = x0[j + 3 * S];          \
            y0[j] = MUL_ADD(MUL_ADD(v0 - m, r, q), a0, b0);                                      \
            y0[j + S] = MUL_ADD(MUL_ADD(v1 - m, r, q), a1, b1);                                  \
            y0[j + 2 * S] = MUL_ADD(MUL_ADD(v2 - m, r, q), a2, b2);                              \
            y0[j + 3 * S] = MUL_ADD(MUL_ADD(v3 - m, r, q), a3, b3);                              \
        }                                                                                        \
    }                                                                                            \
    for (; c < c1; c++) {                                                                        \
        const T a = scale ? scale[c] : (T)1, b = bias ? bias[c] : (T)0;                          \
        const T* xc = x + c * S;                                                                 \
        T* yc = y + c * S;                                                                       \
        NRT_IVDEP                                                                                \
        for (j = 0; j < w; j++)                                                                  \
            yc[j] = MUL_ADD(MUL_ADD(xc[j] - mh[j], rf[j], nml[j]), a, b);                        \
    }                                                                                            \
}

#define NRT_MUL_ADD_F64(a, b, c) ((a) * (b) + (c))

NRT_DEFINE_CHANNEL_AFFINE(nrt_channel_affine_f32, float, nrt_mul_add)
NRT_DEFINE_CHANNEL_AFFINE(nrt_channel_affine_f64, double, NRT_MUL_ADD_F64)

#endif
