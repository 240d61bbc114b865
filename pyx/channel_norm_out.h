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

static inline void nrt_channel_affine_f32(const float* x, float* y, ptrdiff_t c0, ptrdiff_t c1,
                                          ptrdiff_t S, ptrdiff_t w, const float* mh, const float* rf,
                                          const float* nml, const float* scale, const float* bias) {
    ptrdiff_t c = c0, j;
    for (; c + 4 <= c1; c += 4) {
        const float a0 = scale ? scale[c] : 1.0f, a1 = scale ? scale[c + 1] : 1.0f;
        const float a2 = scale ? scale[c + 2] : 1.0f, a3 = scale ? scale[c + 3] : 1.0f;
        const float b0 = bias ? bias[c] : 0.0f, b1 = bias ? bias[c + 1] : 0.0f;
        const float b2 = bias ? bias[c + 2] : 0.0f, b3 = bias ? bias[c + 3] : 0.0f;
        const float* x0 = x + c * S;
        float* y0 = y + c * S;
        NRT_IVDEP
        for (j = 0; j < w; j++) {
            const float m = mh[j], r = rf[j], q = nml[j];
            const float v0 = x0[j], v1 = x0[j + S], v2 = x0[j + 2 * S], v3 = x0[j + 3 * S];
            y0[j] = nrt_mul_add(nrt_mul_add(v0 - m, r, q), a0, b0);
            y0[j + S] = nrt_mul_add(nrt_mul_add(v1 - m, r, q), a1, b1);
            y0[j + 2 * S] = nrt_mul_add(nrt_mul_add(v2 - m, r, q), a2, b2);
            y0[j + 3 * S] = nrt_mul_add(nrt_mul_add(v3 - m, r, q), a3, b3);
        }
    }
    for (; c < c1; c++) {
        const float a = scale ? scale[c] : 1.0f, b = bias ? bias[c] : 0.0f;
        const float* xc = x + c * S;
        float* yc = y + c * S;
        NRT_IVDEP
        for (j = 0; j < w; j++)
            yc[j] = nrt_mul_add(nrt_mul_add(xc[j] - mh[j], rf[j], nml[j]), a, b);
    }
}

/* float64: rounded twice per multiply-add (-ffp-contract=off keeps it so at every level) */
static inline void nrt_channel_affine_f64(const double* x, double* y, ptrdiff_t c0, ptrdiff_t c1,
                                          ptrdiff_t S, ptrdiff_t w, const double* mh, const double* rf,
                                          const double* nml, const double* scale, const double* bias) {
    ptrdiff_t c = c0, j;
    for (; c + 4 <= c1; c += 4) {
        const double a0 = scale ? scale[c] : 1.0, a1 = scale ? scale[c + 1] : 1.0;
        const double a2 = scale ? scale[c + 2] : 1.0, a3 = scale ? scale[c + 3] : 1.0;
        const double b0 = bias ? bias[c] : 0.0, b1 = bias ? bias[c + 1] : 0.0;
        const double b2 = bias ? bias[c + 2] : 0.0, b3 = bias ? bias[c + 3] : 0.0;
        const double* x0 = x + c * S;
        double* y0 = y + c * S;
        NRT_IVDEP
        for (j = 0; j < w; j++) {
            const double m = mh[j], r = rf[j], q = nml[j];
            const double v0 = x0[j], v1 = x0[j + S], v2 = x0[j + 2 * S], v3 = x0[j + 3 * S];
            y0[j] = ((v0 - m) * r + q) * a0 + b0;
            y0[j + S] = ((v1 - m) * r + q) * a1 + b1;
            y0[j + 2 * S] = ((v2 - m) * r + q) * a2 + b2;
            y0[j + 3 * S] = ((v3 - m) * r + q) * a3 + b3;
        }
    }
    for (; c < c1; c++) {
        const double a = scale ? scale[c] : 1.0, b = bias ? bias[c] : 0.0;
        const double* xc = x + c * S;
        double* yc = y + c * S;
        NRT_IVDEP
        for (j = 0; j < w; j++)
            yc[j] = ((xc[j] - mh[j]) * rf[j] + nml[j]) * a + b;
    }
}

#endif
