/* The recurrent kernels' products (recurrent.pyx's C side). */
#ifndef NRT_RECURRENT_KERNEL_H
#define NRT_RECURRENT_KERNEL_H

#include <stddef.h>

/* Every row's dot product sum_i a[i] * h[i] is summed in one fixed order: 16 running sums
   (lane k takes i = k mod 16, which the compiler keeps in vector registers), a fixed tree,
   then the tail. nrt_gemm_rows_* computes several rows of R against several batch rows' h at a
   time (each piece of R and of h loaded once for the block) in exactly that order, so a
   product's bits do not depend on its neighbours, on the batch or on the blocking, and never
   on the thread count. (A different ISA level may round differently, FMA contraction, as every
   kernel of a level build may.) */
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
/* float32 with GCC/Clang vector types: each product's 16 running sums are vector values in
   registers, which the plain loop's arrays were not (they lived on the stack: 5 us instead of
   2 us per step of a 512 x 128 product). Lane k still takes i = k mod 16, then the same tree: the
   plain loop's bits. */
typedef float nrt_v16f __attribute__((vector_size(64)));

static inline float nrt_row_total(nrt_v16f s, const float* a, const float* h, ptrdiff_t i, ptrdiff_t n) {
    float l[NRT_DOT_LANES];
    __builtin_memcpy(l, &s, sizeof l);
    NRT_DOT_FINISH(float, l, t, a, h, i, n)
    return t;
}

#if defined(__clang__) || __GNUC__ >= 12
/* Four sums' trees at once (__builtin_shufflevector: GCC 12+, clang): each 16-lane sum is
   folded as NRT_DOT_FINISH folds it (lane k += lane k + 8, then k += k + 4), the four sums'
   4-lane remainders are transposed so that column c holds every sum's lane c, and
   (c0 + c2) + (c1 + c3) gives each sum's (s0 + s2) + (s1 + s3): the same additions in the
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
#define NRT_TOTALS4(dst, a, b, c, d)                                        \
    do { nrt_v4f t4 = nrt_totals4(a, b, c, d); __builtin_memcpy(dst, &t4, sizeof t4); } while (0)
#else
#define NRT_GEMV_FOLD4 0
#define NRT_TOTALS4(dst, a, b, c, d) do { } while (0)
#endif

/* The running sums are held as 16 / NRT_VW vectors of the ISA's width (one zmm, two ymm, four
   xmm) in arrays indexed by constants only, which GCC keeps in registers. (An array of the
   64-byte nrt_v16f stays in registers only where that is one register, AVX-512; with AVX2 it
   went to the stack, and so did the four nrt_v16f sums of the former one-batch-row kernel:
   16 us per 512 x 128 product against 3 with AVX-512, 3.6 now; figures below.) */
#if defined(__AVX512F__)
#define NRT_VW 16
#elif defined(__AVX__)
#define NRT_VW 8
#else
#define NRT_VW 4
#endif
#define NRT_VL (NRT_DOT_LANES / NRT_VW)
typedef float nrt_vwf __attribute__((vector_size(NRT_VW * 4)));

/* a sum's 16 lanes as one nrt_v16f, from its NRT_VL pieces x[0..] (by value, so that the pieces
   stay in registers: the memcpy of the whole array put it on the stack) */
#if NRT_VW == 16
#define NRT_JOIN(x) ((x)[0])
#elif NRT_GEMV_FOLD4 && NRT_VW == 8
#define NRT_JOIN(x) __builtin_shufflevector((x)[0], (x)[1], 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#elif NRT_GEMV_FOLD4 && NRT_VW == 4
#define NRT_JOIN(x) __builtin_shufflevector(__builtin_shufflevector((x)[0], (x)[1], 0, 1, 2, 3, 4, 5, 6, 7), \
                                            __builtin_shufflevector((x)[2], (x)[3], 0, 1, 2, 3, 4, 5, 6, 7), \
                                            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#else
static inline nrt_v16f nrt_join(const nrt_vwf* x) {
    nrt_v16f f;
    __builtin_memcpy(&f, x, sizeof f);
    return f;
}
#define NRT_JOIN(x) nrt_join(x)
#endif

/* v is kept in a register here: GCC may no longer fold its load into each use (see below) */
#if defined(__AVX512F__)
#define NRT_KEEP(v) __asm__("" : "+v"(v))
#else
#define NRT_KEEP(v) __asm__("" : "+x"(v))
#endif

static inline nrt_vwf nrt_loadw(const float* p) {
    nrt_vwf v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

/* A block: NR rows of R (from row j) against NB batch rows' h vectors, so each piece of R loaded
   feeds NB products and each piece of h NR, and the NB * NR running sums are independent chains
   that hide the add latency. Each sum is still one (R row, batch row) pair's 16 lanes, folded by
   the same tree, its tail added in order.
   out[q][out_off + j + m] = add[q][add_off + j + m] + dot(r + (j + m) * n, h[q], n), m < NR, q < NB
   (add may be NULL: 0, added as nrt_dot's callers always did: 0 + dot). */
#define NRT_GEMM_BLOCK_DEFINE(NAME, NB, NR)                                                 \
static inline __attribute__((always_inline)) void NAME(const float* r, ptrdiff_t j, ptrdiff_t n, \
        const float* const* h, const float* const* add, ptrdiff_t add_off, float* const* out,   \
        ptrdiff_t out_off) {                                                                \
    nrt_vwf s[NB][NR][NRT_VL];          /* R row j + m against batch row q, lanes by piece */ \
    _Pragma("GCC unroll 64")                                                                \
    for (int p = 0; p < NB * NR * NRT_VL; p++)                                              \
        s[p / (NR * NRT_VL)][p / NRT_VL % NR][p % NRT_VL] = (nrt_vwf){0};                   \
    ptrdiff_t i = 0;                                                                        \
    for (; i + NRT_DOT_LANES <= n; i += NRT_DOT_LANES) {                                    \
        _Pragma("GCC unroll 8")                                                             \
        for (int l = 0; l < NRT_VL; l++) {                                                  \
            /* a piece used by several products is loaded once into a register (GCC would   \
               fold it into every multiply as a memory operand instead: NB or NR loads of   \
               it, and the loads, not the arithmetic, bounded the loop); one used once stays \
               a memory operand (a separate load would be one more instruction) */          \
            nrt_vwf v[NB];                                                                  \
            _Pragma("GCC unroll 8")                                                         \
            for (int q = 0; q < NB; q++) {                                                  \
                v[q] = nrt_loadw(h[q] + i + l * NRT_VW);                                    \
                if (NR > 1) NRT_KEEP(v[q]);                                                 \
            }                                                                               \
            _Pragma("GCC unroll 8")                                                         \
            for (int m = 0; m < NR; m++) {                                                  \
                nrt_vwf w = nrt_loadw(r + (j + m) * n + i + l * NRT_VW);                    \
                if (NB > 1) NRT_KEEP(w);                                                    \
                _Pragma("GCC unroll 8")                                                     \
                for (int q = 0; q < NB; q++)                                                \
                    s[q][m][l] += w * v[q];                                                 \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    float tot[NB * NR];                                                                     \
    nrt_v16f f[NB * NR];                                                                    \
    _Pragma("GCC unroll 64")                                                                \
    for (int p = 0; p < NB * NR; p++)                                                       \
        f[p] = NRT_JOIN(s[p / NR][p % NR]);                                                 \
    if (NRT_GEMV_FOLD4 && (NB * NR) % 4 == 0 && i == n) {                                   \
        /* no tail (n a multiple of 16): four sums' trees at once */                        \
        _Pragma("GCC unroll 16")                                                            \
        for (int p = 0; p + 4 <= NB * NR; p += 4)                                           \
            NRT_TOTALS4(tot + p, f[p], f[p + 1], f[p + 2], f[p + 3]);                       \
    } else {                                                                                \
        _Pragma("GCC unroll 64")                                                            \
        for (int p = 0; p < NB * NR; p++)                                                   \
            tot[p] = nrt_row_total(f[p], r + (j + p % NR) * n, h[p / NR], i, n);            \
    }                                                                                       \
    _Pragma("GCC unroll 8")                                                                 \
    for (int q = 0; q < NB; q++) {                                                          \
        const float* ad = add ? add[q] + add_off : NULL;                                    \
        float* o = out[q] + out_off;                                                        \
        _Pragma("GCC unroll 8")                                                             \
        for (int m = 0; m < NR; m++)                                                        \
            o[j + m] = (ad ? ad[j + m] : 0) + tot[q * NR + m];                              \
    }                                                                                       \
}

/* Blocks of NRT_GEMM_NB batch rows by 4 rows of R (then 2 batch rows, then 1), and single rows of
   R for the last rows % 4. 4 x 4 holds 16 sums + 4 h + 1 R piece in registers: 21 of AVX-512's
   32 zmm; AVX2 and SSE2 (16 registers, 2 or 4 per sum) stop at 2 x 4, which already spills a
   little. Measured (gcc 12, one thread, a 512 x 128 float32 product, this 2-core EPYC, us for
   1 / 2 / 4 / 8 batch rows), the former kernel (nrt_gemv_f once per batch row) -> this one:
   AVX-512 2.9 / 5.9 / 11.8 / 23.7 -> 2.9 / 4.3 / 8.2 / 16.0, AVX2 16.2 / 32.4 / 65 / 130 ->
   3.6 / 5.4 / 10.2 / 20.1, SSE2 10.1 / 20.3 / 40.6 / 81 -> 4.7 / 8.1 / 15.8 / 31.8. (With
   AVX-512, 2 x 4 blocks took 16.9 at 8 rows and the multiplies are then the bound: without FMA
   contraction, one zmm multiply and one add per cycle.) */
#if defined(__AVX512F__)
#define NRT_GEMM_NB 4
NRT_GEMM_BLOCK_DEFINE(nrt_gemm_block4x4_f, 4, 4)
#else
#define NRT_GEMM_NB 2
#endif
NRT_GEMM_BLOCK_DEFINE(nrt_gemm_block2x4_f, 2, 4)
NRT_GEMM_BLOCK_DEFINE(nrt_gemm_block1x4_f, 1, 4)
NRT_GEMM_BLOCK_DEFINE(nrt_gemm_block1x1_f, 1, 1)

/* One batch row (the common case): out[j] = add[j] + dot(r + j * n, h, n), j < rows (add may be
   NULL: 0). A function of its own: inside nrt_gemm_rows_f's batch loops GCC ran short of
   registers and reloaded R's row pointers from the stack every 16 columns (20% slower than the
   former one-row kernel). */
static __attribute__((noinline)) void nrt_gemv_f(const float* r, ptrdiff_t rows, ptrdiff_t n,
                                                 const float* h, const float* add, float* out) {
    ptrdiff_t j = 0;
    for (; j + 4 <= rows; j += 4)
        nrt_gemm_block1x4_f(r, j, n, &h, add ? &add : NULL, 0, &out, 0);
    for (; j < rows; j++)
        nrt_gemm_block1x1_f(r, j, n, &h, add ? &add : NULL, 0, &out, 0);
}

/* out[q][out_off + j] = add[q][add_off + j] + dot(r + j * n, h[q], n) for j < rows, q < nb (add
   may be NULL: 0). Rows of R in the outer loop: a block's 4 rows stay in L1 for every batch row,
   so R is read from L2 once per call, not once per batch row. */
static __attribute__((noinline)) void nrt_gemm_rows_f(const float* r, ptrdiff_t rows, ptrdiff_t n,
                                                      ptrdiff_t nb, const float* const* h,
                                                      const float* const* add, ptrdiff_t add_off,
                                                      float* const* out, ptrdiff_t out_off) {
    ptrdiff_t j = 0, q;
    if (nb == 1) {
        nrt_gemv_f(r, rows, n, h[0], add ? add[0] + add_off : NULL, out[0] + out_off);
        return;
    }
    for (; j + 4 <= rows; j += 4) {
        q = 0;
#if NRT_GEMM_NB == 4
        for (; q + 4 <= nb; q += 4)
            nrt_gemm_block4x4_f(r, j, n, h + q, add ? add + q : NULL, add_off, out + q, out_off);
#endif
        for (; q + 2 <= nb; q += 2)
            nrt_gemm_block2x4_f(r, j, n, h + q, add ? add + q : NULL, add_off, out + q, out_off);
        if (q < nb)
            nrt_gemm_block1x4_f(r, j, n, h + q, add ? add + q : NULL, add_off, out + q, out_off);
    }
    for (; j < rows; j++)
        for (q = 0; q < nb; q++)
            nrt_gemm_block1x1_f(r, j, n, h + q, add ? add + q : NULL, add_off, out + q, out_off);
}
/* ---- float32 from the packed R: outer products, no reduction trees ----

   The dot-product form above ends every (R row, batch row) sum with a tree of shuffles: at hidden
   size 128 a 4 x 4 block runs 8 iterations of its loop, then folds 16 sums, as much work as the
   loop (one thread, batch 8, a 512 x 128 product: 16 us, twice the multiply-add bound). Packed,
   R's rows come NRT_RPANEL hidden units at a time, transposed, a panel per gate:

     p[((ch * G + g) * n + i) * 32 + u] = R[g*H + ch*32 + u][i]   (zeros past H),

   so a product's lanes are its outputs: for every i, broadcast h[q][i], multiply the panels' row
   i and add, one running sum per output lane, i = 0..n-1 in order, then out = add + sum. The
   multiply-add is fused where the level has FMA (AVX2, AVX-512: one batch of 8, hidden 128,
   1 thread, 1.09 -> 0.98 ms a 50-step LSTM; Zen 4 runs a separate multiply and add at the same
   rate, but they are twice the instructions), a multiply then an add below that (the build
   never contracts them itself). Each output's arithmetic is the same whatever the block, the
   batch or the thread, so a batch row's bits are those of the row run alone; another ISA level
   may round differently (not the dot-product form's bits either, which float64 keeps). */
#define NRT_RPANEL 32

#if NRT_VW == 16
#include <immintrin.h>
#define NRT_PMADD(s, w, b) ((s) = (nrt_vwf)_mm512_fmadd_ps((__m512)(w), _mm512_set1_ps(b), (__m512)(s)))
#elif NRT_VW == 8 && defined(__FMA__)
#include <immintrin.h>
#define NRT_PMADD(s, w, b) ((s) = (nrt_vwf)_mm256_fmadd_ps((__m256)(w), _mm256_set1_ps(b), (__m256)(s)))
#else
#define NRT_PMADD(s, w, b) ((s) += (w) * (b))
#endif

/* NB batch rows x NV vectors: columns [c, c + NV*NRT_VW) of the call's gates (column c: gate
   c / 32 of them, unit c % 32; base points at the first gate's panel, each n rows of 32), stored
   to out[q][out_off + gate*H + unit] (+ add[q][add_off + ...]) for units < units. */
#define NRT_PANEL_BLOCK_DEFINE(NAME, NB, NV)                                                  \
static inline __attribute__((always_inline)) void NAME(const float* base, ptrdiff_t n,       \
        ptrdiff_t c, ptrdiff_t units, ptrdiff_t H, const float* const* h, const float* const* add, \
        ptrdiff_t add_off, float* const* out, ptrdiff_t out_off) {                            \
    nrt_vwf s[NB][NV];                                                                        \
    const float* pv[NV];                                                                      \
    _Pragma("GCC unroll 16")                                                                  \
    for (int v = 0; v < NV; v++) {                                                            \
        ptrdiff_t col = c + v * NRT_VW;                                                       \
        pv[v] = base + col / NRT_RPANEL * n * NRT_RPANEL + col % NRT_RPANEL;                  \
    }                                                                                         \
    _Pragma("GCC unroll 64")                                                                  \
    for (int t = 0; t < NB * NV; t++)                                                         \
        s[t / NV][t % NV] = (nrt_vwf){0};                                                     \
    for (ptrdiff_t i = 0; i < n; i++) {                                                       \
        nrt_vwf w[NV];                                                                        \
        _Pragma("GCC unroll 16")                                                              \
        for (int v = 0; v < NV; v++) {                                                        \
            w[v] = nrt_loadw(pv[v] + i * NRT_RPANEL);                                         \
            if (NB > 1) NRT_KEEP(w[v]);                                                       \
        }                                                                                     \
        _Pragma("GCC unroll 16")                                                              \
        for (int q = 0; q < NB; q++) {                                                        \
            const float b = h[q][i];                                                          \
            _Pragma("GCC unroll 16")                                                          \
            for (int v = 0; v < NV; v++)                                                      \
                NRT_PMADD(s[q][v], w[v], b);                                                  \
        }                                                                                     \
    }                                                                                         \
    _Pragma("GCC unroll 16")                                                                  \
    for (int q = 0; q < NB; q++) {                                                            \
        _Pragma("GCC unroll 16")                                                              \
        for (int v = 0; v < NV; v++) {                                                        \
            ptrdiff_t col = c + v * NRT_VW, u = col % NRT_RPANEL;                             \
            ptrdiff_t at = col / NRT_RPANEL * H + u;                                          \
            float* o = out[q] + out_off + at;                                                 \
            const float* a = add ? add[q] + add_off + at : NULL;                              \
            if (u + NRT_VW <= units) {                                                        \
                nrt_vwf r = (a ? nrt_loadw(a) : (nrt_vwf){0}) + s[q][v];                      \
                __builtin_memcpy(o, &r, sizeof r);                                            \
            } else {                                                                          \
                float l[NRT_VW];                                                              \
                __builtin_memcpy(l, &s[q][v], sizeof l);                                      \
                for (ptrdiff_t e = 0; e < NRT_VW && u + e < units; e++)                       \
                    o[e] = (a ? a[e] : 0) + l[e];                                             \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
}

/* Blocks of 8 (AVX, SSE) to 16 (AVX-512) accumulator registers. Batch rows go four at a time
   over two gates (the multiply-adds bound them); the last one to three rows take every gate at
   once, so that each panel row is read from memory once per step (one batch row is bound by R's
   bytes: four gates in two passes had read an LSTM's 1 MB R twice at hidden size 256). */
#if NRT_VW == 16
NRT_PANEL_BLOCK_DEFINE(nrt_panel4x4_f, 4, 4)
NRT_PANEL_BLOCK_DEFINE(nrt_panel8x2_f, 8, 2)
NRT_PANEL_BLOCK_DEFINE(nrt_panel4x2_f, 4, 2)
NRT_PANEL_BLOCK_DEFINE(nrt_panel2x8_f, 2, 8)
NRT_PANEL_BLOCK_DEFINE(nrt_panel2x4_f, 2, 4)
NRT_PANEL_BLOCK_DEFINE(nrt_panel2x2_f, 2, 2)
NRT_PANEL_BLOCK_DEFINE(nrt_panel1x8_f, 1, 8)
NRT_PANEL_BLOCK_DEFINE(nrt_panel1x4_f, 1, 4)
NRT_PANEL_BLOCK_DEFINE(nrt_panel1x2_f, 1, 2)
#elif NRT_VW == 8
NRT_PANEL_BLOCK_DEFINE(nrt_panel2x4_f, 2, 4)
NRT_PANEL_BLOCK_DEFINE(nrt_panel1x8_f, 1, 8)
NRT_PANEL_BLOCK_DEFINE(nrt_panel1x4_f, 1, 4)
#else
NRT_PANEL_BLOCK_DEFINE(nrt_panel1x8_f, 1, 8)
#endif

/* Gates [g0, g1) of units [0, units) of one chunk from its packed panels p (G gates of n rows):
   out[q][out_off + (g - g0)*H + u] = add[q][add_off + (g - g0)*H + u] + sum_i h[q][i] R[g*H + u][i]
   for the nb batch rows (add may be NULL: 0). */
static __attribute__((noinline)) void nrt_panel_rows_f(const float* p, ptrdiff_t G, ptrdiff_t n,
        ptrdiff_t g0, ptrdiff_t g1, ptrdiff_t units, ptrdiff_t H, ptrdiff_t nb, const float* const* h,
        const float* const* add, ptrdiff_t add_off, float* const* out, ptrdiff_t out_off) {
    const ptrdiff_t c1 = (g1 - g0) * NRT_RPANEL;
    const float* base = p + g0 * n * NRT_RPANEL;
    ptrdiff_t c, q = 0;
    (void)G;
#define NRT_PANEL_CALL(NAME, NB, W)                                                           \
    NAME(base, n, c, units, H, h + q, add ? add + q : NULL, add_off, out + q, out_off);         \
    c += W
#if NRT_VW == 16
    for (; nb - q >= 4; q += 4)
        for (c = 0; c < c1;) {
            if (c1 - c >= 64) { NRT_PANEL_CALL(nrt_panel4x4_f, 4, 64); }
            else if (nb - q >= 8) { NRT_PANEL_CALL(nrt_panel8x2_f, 8, 32); }
            else { NRT_PANEL_CALL(nrt_panel4x2_f, 4, 32); }
        }
    /* (a single gate, 8 rows at a time: the 4-row pass above left it to them) */
    for (; nb - q >= 2; q += 2)
        for (c = 0; c < c1;) {
            if (c1 - c >= 128) { NRT_PANEL_CALL(nrt_panel2x8_f, 2, 128); }
            else if (c1 - c >= 64) { NRT_PANEL_CALL(nrt_panel2x4_f, 2, 64); }
            else { NRT_PANEL_CALL(nrt_panel2x2_f, 2, 32); }
        }
    for (; q < nb; q++)
        for (c = 0; c < c1;) {
            if (c1 - c >= 128) { NRT_PANEL_CALL(nrt_panel1x8_f, 1, 128); }
            else if (c1 - c >= 64) { NRT_PANEL_CALL(nrt_panel1x4_f, 1, 64); }
            else { NRT_PANEL_CALL(nrt_panel1x2_f, 1, 32); }
        }
#elif NRT_VW == 8
    for (; nb - q >= 2; q += 2)
        for (c = 0; c < c1;) { NRT_PANEL_CALL(nrt_panel2x4_f, 2, 32); }
    for (; q < nb; q++)
        for (c = 0; c < c1;) {
            if (c1 - c >= 64) { NRT_PANEL_CALL(nrt_panel1x8_f, 1, 64); }
            else { NRT_PANEL_CALL(nrt_panel1x4_f, 1, 32); }
        }
#else
    for (; q < nb; q++)
        for (c = 0; c < c1;) { NRT_PANEL_CALL(nrt_panel1x8_f, 1, 32); }
#endif
#undef NRT_PANEL_CALL
}
#endif

/* The batch rows one after another (float64; float32 without GCC vector types), each row's
   products four rows of R at a time: the same bits, R read once per batch row. */
#define NRT_GEMM_ROWS_DEFINE(NAME, GEMV, T)                                 \
static inline void NAME(const T* r, ptrdiff_t rows, ptrdiff_t n, ptrdiff_t nb, \
                        const T* const* h, const T* const* add, ptrdiff_t add_off, \
                        T* const* out, ptrdiff_t out_off) {                 \
    for (ptrdiff_t q = 0; q < nb; q++)                                      \
        GEMV(r, rows, n, h[q], add ? add[q] + add_off : NULL, out[q] + out_off); \
}

#if !defined(__GNUC__)
NRT_GEMV_DEFINE(nrt_gemv_f, nrt_dot_f, float)
NRT_GEMM_ROWS_DEFINE(nrt_gemm_rows_f, nrt_gemv_f, float)
#define NRT_RPANEL 32

/* nrt_panel_rows_f without GCC vector types: the same sums, lane by lane */
static void nrt_panel_rows_f(const float* p, ptrdiff_t G, ptrdiff_t n, ptrdiff_t g0, ptrdiff_t g1,
        ptrdiff_t units, ptrdiff_t H, ptrdiff_t nb, const float* const* h, const float* const* add,
        ptrdiff_t add_off, float* const* out, ptrdiff_t out_off) {
    (void)G;
    for (ptrdiff_t q = 0; q < nb; q++)
        for (ptrdiff_t g = g0; g < g1; g++)
            for (ptrdiff_t u = 0; u < units; u++) {
                const float* col = p + g * n * NRT_RPANEL + u;
                float s = 0;
                for (ptrdiff_t i = 0; i < n; i++)
                    s += col[i * NRT_RPANEL] * h[q][i];
                ptrdiff_t at = (g - g0) * H + u;
                out[q][out_off + at] = (add ? add[q][add_off + at] : 0) + s;
            }
}
#endif

/* R (G*H, n) of one direction into the packed panels above (nch = ceil(H / 32) chunks of G
   panels, each n rows of 32 floats) */
static void nrt_pack_r_f(const float* r, ptrdiff_t G, ptrdiff_t H, ptrdiff_t n, float* p) {
    const ptrdiff_t nch = (H + NRT_RPANEL - 1) / NRT_RPANEL;
    for (ptrdiff_t ch = 0; ch < nch; ch++)
        for (ptrdiff_t g = 0; g < G; g++)
            for (ptrdiff_t i = 0; i < n; i++) {
                float* row = p + ((ch * G + g) * n + i) * NRT_RPANEL;
                for (ptrdiff_t u = 0; u < NRT_RPANEL; u++) {
                    ptrdiff_t k = ch * NRT_RPANEL + u;
                    row[u] = k < H ? r[(g * H + k) * n + i] : 0.0f;
                }
            }
}

NRT_GEMV_DEFINE(nrt_gemv_d, nrt_dot_d, double)
NRT_GEMM_ROWS_DEFINE(nrt_gemm_rows_d, nrt_gemv_d, double)

#endif
