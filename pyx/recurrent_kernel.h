/* The recurrent kernels' products (recurrent.pyx's C side). */
#ifndef NRT_RECURRENT_KERNEL_H
#define NRT_RECURRENT_KERNEL_H

#include <stddef.h>

/* Every row's dot product sum_i a[i] * h[i] is summed in one fixed order: 16 running sums
   (lane k takes i = k mod 16, which the compiler keeps in vector registers), a fixed tree,
   then the tail. nrt_gemv_* computes four rows at a time (each h vector loaded once for
   four rows) in exactly that order, so a row's bits do not depend on its neighbours, and
   never on the thread count. (A different ISA level may round differently, FMA contraction,
   as every kernel of a level build may.) */
#define NRT_DOT_LANES 16

#define NRT_DOT_FINISH(T, s, t, a, h, i, n)                                 \
    for (int k = 0; k < 8; k++) s[k] += s[k + 8];                           \
    for (int k = 0; k < 4; k++) s[k] += s[k + 4];                           \
    T t = (s[0] + s[2]) + (s[1] + s[3]);                                    \
    for (ptrdiff_t q = i; q < n; q++) t += a[q] * h[q];

#define NRT_DOT_DEFINE(NAME, T)                                             \
static inline T NAME(const T* a, const T* h, ptrdiff_t n) {                 \
    T s[NRT_DOT_LANES] = {0};                                               \
    ptrdiff_t i = 0;                                                        \
    for (; i + NRT_DOT_LANES <= n; i += NRT_DOT_LANES)                      \
        for (int k = 0; k < NRT_DOT_LANES; k++)                             \
            s[k] += a[i + k] * h[i + k];                                    \
    NRT_DOT_FINISH(T, s, t, a, h, i, n)                                     \
    return t;                                                               \
}

NRT_DOT_DEFINE(nrt_dot_f, float)
NRT_DOT_DEFINE(nrt_dot_d, double)

/* out[j] = add[j] + dot(r + j * n, h, n) for j < rows (add may be NULL: 0) */
#define NRT_GEMV_DEFINE(NAME, DOT, T)                                       \
static inline void NAME(const T* r, ptrdiff_t rows, ptrdiff_t n, const T* h, \
                        const T* add, T* out) {                            \
    ptrdiff_t j = 0;                                                        \
    for (; j + 4 <= rows; j += 4) {                                         \
        const T* a0 = r + j * n; const T* a1 = a0 + n;                      \
        const T* a2 = a1 + n; const T* a3 = a2 + n;                         \
        T s0[NRT_DOT_LANES] = {0}, s1[NRT_DOT_LANES] = {0};                 \
        T s2[NRT_DOT_LANES] = {0}, s3[NRT_DOT_LANES] = {0};                 \
        ptrdiff_t i = 0;                                                    \
        for (; i + NRT_DOT_LANES <= n; i += NRT_DOT_LANES)                  \
            for (int k = 0; k < NRT_DOT_LANES; k++) {                       \
                T v = h[i + k];                                             \
                s0[k] += a0[i + k] * v; s1[k] += a1[i + k] * v;             \
                s2[k] += a2[i + k] * v; s3[k] += a3[i + k] * v;             \
            }                                                               \
        { NRT_DOT_FINISH(T, s0, t0, a0, h, i, n) out[j] = (add ? add[j] : 0) + t0; } \
        { NRT_DOT_FINISH(T, s1, t1, a1, h, i, n) out[j + 1] = (add ? add[j + 1] : 0) + t1; } \
        { NRT_DOT_FINISH(T, s2, t2, a2, h, i, n) out[j + 2] = (add ? add[j + 2] : 0) + t2; } \
        { NRT_DOT_FINISH(T, s3, t3, a3, h, i, n) out[j + 3] = (add ? add[j + 3] : 0) + t3; } \
    }                                                                       \
    for (; j < rows; j++)                                                   \
        out[j] = (add ? add[j] : 0) + DOT(r + j * n, h, n);                 \
}

#if defined(__GNUC__)
/* float32 with GCC/Clang vector types: the 16 running sums of each row are one vector value
   (a register at every ISA level: one zmm, two ymm or four xmm), which the plain loop's arrays
   were not (they lived on the stack: 5 us instead of 2 us per step of a 512 x 128 product).
   Lane k still takes i = k mod 16, then the same tree: the plain loop's bits. */
typedef float nrt_v16f __attribute__((vector_size(64)));

static inline nrt_v16f nrt_load16(const float* p) {
    nrt_v16f v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline float nrt_row_total(nrt_v16f s, const float* a, const float* h, ptrdiff_t i, ptrdiff_t n) {
    float l[NRT_DOT_LANES];
    __builtin_memcpy(l, &s, sizeof l);
    NRT_DOT_FINISH(float, l, t, a, h, i, n)
    return t;
}

#if defined(__clang__) || __GNUC__ >= 12
/* The four rows' trees at once (__builtin_shufflevector: GCC 12+, clang): each 16-lane sum is
   folded as NRT_DOT_FINISH folds it (lane k += lane k + 8, then k += k + 4), the four rows'
   4-lane remainders are transposed so that column c holds every row's lane c, and
   (c0 + c2) + (c1 + c3) gives each row's (s0 + s2) + (s1 + s3): the same additions in the
   same order as the scalar tree, so the same bits, for a fraction of its cost (the scalar
   tree went through memory, ~15 cycles per row: most of a step at hidden size 32-128). */
#define NRT_GEMV_FOLD4 1
typedef float nrt_v8f __attribute__((vector_size(32)));
typedef float nrt_v4f __attribute__((vector_size(16)));

static inline nrt_v4f nrt_fold16(nrt_v16f s) {
    nrt_v8f e = __builtin_shufflevector(s, s, 0, 1, 2, 3, 4, 5, 6, 7)
              + __builtin_shufflevector(s, s, 8, 9, 10, 11, 12, 13, 14, 15);
    return __builtin_shufflevector(e, e, 0, 1, 2, 3) + __builtin_shufflevector(e, e, 4, 5, 6, 7);
}

static inline nrt_v4f nrt_totals4(nrt_v16f s0, nrt_v16f s1, nrt_v16f s2, nrt_v16f s3) {
    nrt_v4f f0 = nrt_fold16(s0), f1 = nrt_fold16(s1), f2 = nrt_fold16(s2), f3 = nrt_fold16(s3);
    nrt_v4f lo01 = __builtin_shufflevector(f0, f1, 0, 4, 1, 5), lo23 = __builtin_shufflevector(f2, f3, 0, 4, 1, 5);
    nrt_v4f hi01 = __builtin_shufflevector(f0, f1, 2, 6, 3, 7), hi23 = __builtin_shufflevector(f2, f3, 2, 6, 3, 7);
    nrt_v4f c0 = __builtin_shufflevector(lo01, lo23, 0, 1, 4, 5), c1 = __builtin_shufflevector(lo01, lo23, 2, 3, 6, 7);
    nrt_v4f c2 = __builtin_shufflevector(hi01, hi23, 0, 1, 4, 5), c3 = __builtin_shufflevector(hi01, hi23, 2, 3, 6, 7);
    return (c0 + c2) + (c1 + c3);
}
#else
#define NRT_GEMV_FOLD4 0
#endif

static inline void nrt_gemv_f(const float* r, ptrdiff_t rows, ptrdiff_t n, const float* h,
                              const float* add, float* out) {
    ptrdiff_t j = 0;
    for (; j + 4 <= rows; j += 4) {
        const float* a0 = r + j * n; const float* a1 = a0 + n;
        const float* a2 = a1 + n; const float* a3 = a2 + n;
        nrt_v16f s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        ptrdiff_t i = 0;
        for (; i + NRT_DOT_LANES <= n; i += NRT_DOT_LANES) {
            nrt_v16f v = nrt_load16(h + i);
            s0 += nrt_load16(a0 + i) * v;
            s1 += nrt_load16(a1 + i) * v;
            s2 += nrt_load16(a2 + i) * v;
            s3 += nrt_load16(a3 + i) * v;
        }
#if NRT_GEMV_FOLD4
        if (i == n) {          /* no tail (n a multiple of 16): the four trees as one */
            nrt_v4f t = nrt_totals4(s0, s1, s2, s3);
            float tt[4];
            __builtin_memcpy(tt, &t, sizeof tt);
            for (int q = 0; q < 4; q++)
                out[j + q] = (add ? add[j + q] : 0) + tt[q];
            continue;
        }
#endif
        out[j] = (add ? add[j] : 0) + nrt_row_total(s0, a0, h, i, n);
        out[j + 1] = (add ? add[j + 1] : 0) + nrt_row_total(s1, a1, h, i, n);
        out[j + 2] = (add ? add[j + 2] : 0) + nrt_row_total(s2, a2, h, i, n);
        out[j + 3] = (add ? add[j + 3] : 0) + nrt_row_total(s3, a3, h, i, n);
    }
    for (; j < rows; j++)
        out[j] = (add ? add[j] : 0) + nrt_dot_f(r + j * n, h, n);
}
#else
NRT_GEMV_DEFINE(nrt_gemv_f, nrt_dot_f, float)
#endif
NRT_GEMV_DEFINE(nrt_gemv_d, nrt_dot_d, double)

#endif
