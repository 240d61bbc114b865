/* The GEMM's register-blocked micro-kernels (normrt._kernels.gemm / .conv via gemm_core.pxd).

   Register block and vector type per target. Every path runs the same
   instruction sequence for a given element whatever the thread count. */
#ifndef NORMRT_GEMM_MICROKERNEL_H
#define NORMRT_GEMM_MICROKERNEL_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
  #include <immintrin.h>
  #define NRT_VW 16
  #define NRT_MR 8
  typedef float nrt_v __attribute__((vector_size(64)));
  typedef float nrt_vu __attribute__((vector_size(64), aligned(4)));
  #define NRT_FMA(a, b, c) ((nrt_v)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
  #define NRT_BCAST(s) ((nrt_v)_mm512_set1_ps(s))
  #define NRT_ISA "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
  #include <immintrin.h>
  #define NRT_VW 8
  #define NRT_MR 6
  typedef float nrt_v __attribute__((vector_size(32)));
  typedef float nrt_vu __attribute__((vector_size(32), aligned(4)));
  #define NRT_FMA(a, b, c) ((nrt_v)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
  #define NRT_BCAST(s) ((nrt_v)_mm256_set1_ps(s))
  #define NRT_ISA "avx2"
#else
  /* generic: plain multiply and add (no contraction: -ffp-contract=off) */
  #define NRT_VW 4
  #define NRT_MR 6
  typedef float nrt_v __attribute__((vector_size(16)));
  typedef float nrt_vu __attribute__((vector_size(16), aligned(4)));
  #define NRT_FMA(a, b, c) ((a) * (b) + (c))
  #define NRT_BCAST(s) ((nrt_v){(s), (s), (s), (s)})
  #define NRT_ISA "generic"
#endif
#define NRT_NR (2 * NRT_VW)

/* d[0:NR] = s[0:NR], two vector moves (packing hot loop: no memcpy call) */
static inline void nrt_copy_nr(float* restrict d, const float* restrict s)
{
    *(nrt_vu*)d = *(const nrt_vu*)s;
    *(nrt_vu*)(d + NRT_VW) = *(const nrt_vu*)(s + NRT_VW);
}

/* d[0:n] = s[0:n] as whole unaligned vectors, the last one moved back to end
   at n (it rewrites a few floats already written: the same values); rows
   shorter than a vector float by float. */
static inline void nrt_copy_run(float* restrict d, const float* restrict s, Py_ssize_t n)
{
    Py_ssize_t j;
    if (n < NRT_VW) {
        for (j = 0; j < n; j++)
            d[j] = s[j];
        return;
    }
    for (j = 0; j + NRT_VW < n; j += NRT_VW)
        *(nrt_vu*)(d + j) = *(const nrt_vu*)(s + j);
    *(nrt_vu*)(d + n - NRT_VW) = *(const nrt_vu*)(s + n - NRT_VW);
}

/* d[0:n] = 0, the same way */
static inline void nrt_zero_run(float* d, Py_ssize_t n)
{
    const nrt_v zero = {0};
    Py_ssize_t j;
    if (n < NRT_VW) {
        for (j = 0; j < n; j++)
            d[j] = 0.0f;
        return;
    }
    for (j = 0; j + NRT_VW < n; j += NRT_VW)
        *(nrt_vu*)(d + j) = zero;
    *(nrt_vu*)(d + n - NRT_VW) = zero;
}

/* Rows [y0, y1) of plane p of xp (hp, wp): plane p of x (h, w) shifted by (pt,
   pl), zeros around - a band of a conv's zero-padded input. The padding rows
   above and below the image are contiguous: one zero run each; an image row is
   a short vector copy (7..58 floats) between its one-or-two-float side pads.
   Plain unaligned vector moves throughout: the earlier version wrote every
   padded row as whole vectors from masked loads and masked stores, which on
   Zen 4 ran at a third to a half of this speed (one thread: 128 planes of
   32x32 34 -> 14 us, 256 of 14x14 18 -> 8 us, 32 of 64x64 22 -> 13 us). Kept
   from GCC's rewrite of the side-pad loops into memset calls (two calls per
   row). */
__attribute__((optimize("no-tree-loop-distribute-patterns"), unused)) static void
nrt_pad_rows(const float* restrict x, float* restrict xp, Py_ssize_t p, Py_ssize_t y0, Py_ssize_t y1,
             Py_ssize_t h, Py_ssize_t w, Py_ssize_t hp, Py_ssize_t wp, Py_ssize_t pt, Py_ssize_t pl)
{
    Py_ssize_t lead = pl < wp ? pl : wp;
    Py_ssize_t ncopy = w < wp - lead ? w : wp - lead;
    Py_ssize_t top = pt < hp ? pt : hp;                    /* image rows: [top, bottom) */
    Py_ssize_t bottom = pt + h < hp ? pt + h : hp;
    const float* src = x + p * h * w;
    float* plane = xp + p * hp * wp;
    Py_ssize_t a = y0, b, yy, j;
    if (bottom < top)
        bottom = top;
    b = y1 < top ? y1 : top;
    if (b > a) {
        nrt_zero_run(plane + a * wp, (b - a) * wp);
        a = b;
    }
    b = y1 < bottom ? y1 : bottom;
    for (yy = a; yy < b; yy++) {
        float* row = plane + yy * wp;
        for (j = 0; j < lead; j++)
            row[j] = 0.0f;
        nrt_copy_run(row + lead, src + (yy - pt) * w, ncopy);
        for (j = lead + ncopy; j < wp; j++)
            row[j] = 0.0f;
    }
    if (y1 > yy)                                           /* (yy: the first row not yet written) */
        nrt_zero_run(plane + yy * wp, (y1 - yy) * wp);
}

/* Planes [p0, p1) whole (nrt_pad_rows over all hp rows of each) */
__attribute__((unused)) static void
nrt_pad_planes(const float* restrict x, float* restrict xp, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t h,
               Py_ssize_t w, Py_ssize_t hp, Py_ssize_t wp, Py_ssize_t pt, Py_ssize_t pl)
{
    for (Py_ssize_t p = p0; p < p1; p++)
        nrt_pad_rows(x, xp, p, 0, hp, h, w, hp, wp, pt, pl);
}

/* conv.pyx's pad_phases on AVX-512 (returns 0 elsewhere: the caller's scalar loop): planes [p0, p1) of x (h, w), zero-padded by (pt, pl), split by stride
   phase, xp[p, a, b, i, j] = xpad[p, i*sh + a, j*sw + b] (each phase hq x wq). Every phase row
   is written as whole vectors from masked loads of its image row (zeros outside it); stride 2
   reads 32 image columns once and splits them into both column phases (vpermt2ps), larger
   strides gather each phase row's columns. The
   scalar loop read every other float once per phase, a column at a time: as much time as the
   product itself for a 3-channel stride-2 stem on a 64 x 64 image. The same copy. */
__attribute__((unused)) static int
nrt_pad_phases(const float* restrict x, float* restrict xp, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t h,
               Py_ssize_t w, Py_ssize_t hq, Py_ssize_t wq, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t sh,
               Py_ssize_t sw)
{
#if defined(__AVX512F__)
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    if (sw > 2) {
        /* a gather per phase row: lane t is image column (j + t) * sw + b - pl */
        const __m512i step = _mm512_mullo_epi32(iota, _mm512_set1_epi32((int)sw));
        for (Py_ssize_t p = p0; p < p1; p++)
            for (Py_ssize_t a = 0; a < sh; a++)
                for (Py_ssize_t b = 0; b < sw; b++)
                    for (Py_ssize_t i = 0; i < hq; i++) {
                        Py_ssize_t sy = i * sh + a - pt;
                        int inside = sy >= 0 && sy < h;
                        const float* srow = x + (p * h + (inside ? sy : 0)) * w;
                        float* row = xp + (((p * sh + a) * sw + b) * hq + i) * wq;
                        for (Py_ssize_t j = 0; j < wq; j += 16) {
                            __mmask16 keep = j + 16 <= wq ? (__mmask16)0xFFFF : (__mmask16)((1u << (wq - j)) - 1u);
                            __m512i col = _mm512_add_epi32(step, _mm512_set1_epi32((int)(j * sw + b - pl)));
                            __mmask16 m = inside ? (__mmask16)(_mm512_cmpge_epi32_mask(col, _mm512_setzero_si512())
                                                               & _mm512_cmplt_epi32_mask(col, _mm512_set1_epi32((int)w))
                                                               & keep) : 0;
                            __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, col, srow, 4);
                            _mm512_mask_storeu_ps(row + j, keep, v);
                        }
                    }
        return 1;
    }
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (Py_ssize_t p = p0; p < p1; p++) {
        for (Py_ssize_t a = 0; a < sh; a++) {
            for (Py_ssize_t i = 0; i < hq; i++) {
                Py_ssize_t sy = i * sh + a - pt;
                int inside = sy >= 0 && sy < h;
                const float* srow = x + (p * h + (inside ? sy : 0)) * w;
                float* row0 = xp + (((p * sh + a) * sw) * hq + i) * wq;    /* column phase 0 */
                float* row1 = row0 + hq * wq;                              /* column phase 1 */
                for (Py_ssize_t j = 0; j < wq; j += 16) {
                    __mmask16 keep = j + 16 <= wq ? (__mmask16)0xFFFF : (__mmask16)((1u << (wq - j)) - 1u);
                    /* lane t of a load at image column c0 is column c0 + t; lanes outside [0, w) are zeros */
                    Py_ssize_t c0 = sw * j - pl;
                    __mmask16 m0 = 0, m1 = 0;
                    if (inside) {
                        Py_ssize_t lo = -c0, hi = w - c0;
                        lo = lo < 0 ? 0 : lo;
                        hi = hi > 16 ? 16 : hi;
                        if (hi > lo)
                            m0 = (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
                        lo = -(c0 + 16);
                        hi = w - (c0 + 16);
                        lo = lo < 0 ? 0 : lo;
                        hi = hi > 16 ? 16 : hi;
                        if (sw == 2 && hi > lo)
                            m1 = (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
                    }
                    __m512 v0 = _mm512_maskz_loadu_ps(m0, (const void*)((uintptr_t)srow + c0 * 4));
                    if (sw == 1) {
                        _mm512_mask_storeu_ps(row0 + j, keep, v0);
                    } else {
                        __m512 v1 = _mm512_maskz_loadu_ps(m1, (const void*)((uintptr_t)srow + (c0 + 16) * 4));
                        _mm512_mask_storeu_ps(row0 + j, keep, _mm512_permutex2var_ps(v0, even, v1));
                        _mm512_mask_storeu_ps(row1 + j, keep, _mm512_permutex2var_ps(v0, odd, v1));
                    }
                }
            }
        }
    }
    return 1;
#else
    (void)x; (void)xp; (void)p0; (void)p1; (void)h; (void)w; (void)hq; (void)wq; (void)pt; (void)pl;
    (void)sh; (void)sw;
    return 0;
#endif
}

/* Padding modes of a conv's padded copy besides zeros (ONNX Pad's modes, fused by the
   pad_into_conv pass): reflect (torch's ReflectionPad: -1 -> 1, n -> n - 2) and edge
   (ReplicationPad: the border value repeated). */
#define NRT_PAD_REFLECT 1
#define NRT_PAD_EDGE 2

/* The source index of offset s along an axis of n values padded by `lead` before and `trail`
   after it, or -1 for a zero: positions past the pads (a wide conv's spill rows and columns,
   which only thrown-away outputs read) stay zeros. Reflect needs lead, trail < n (checked by
   normrt.conv2d). */
static inline Py_ssize_t
nrt_pad_source(Py_ssize_t s, Py_ssize_t n, Py_ssize_t lead, Py_ssize_t trail, int mode)
{
    if (s >= 0 && s < n)
        return s;
    if (s < -lead || s >= n + trail)
        return -1;
    if (mode == NRT_PAD_REFLECT)
        return s < 0 ? -s : 2 * (n - 1) - s;
    return s < 0 ? 0 : n - 1;
}

/* nrt_pad_rows / nrt_pad_planes / nrt_pad_phases for the reflect and edge modes: rows [y0, y1)
   of every stride phase of planes [p0, p1), xp[p, a, b, i, j] = the padded image at (i*sh + a -
   pt, j*sw + b - pl) (sh = sw = 1: the plain padded plane, hq x wq). A row's image part is one
   copy (stride 1) or a strided read, its pads element by element: the copy of a conv's input it
   replaces a whole Pad node's pass with. */
__attribute__((unused)) static void
nrt_pad_mirror(const float* restrict x, float* restrict xp, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t y0,
               Py_ssize_t y1, Py_ssize_t h, Py_ssize_t w, Py_ssize_t hq, Py_ssize_t wq, Py_ssize_t pt,
               Py_ssize_t pl, Py_ssize_t pb, Py_ssize_t pr, Py_ssize_t sh, Py_ssize_t sw, int mode)
{
    for (Py_ssize_t p = p0; p < p1; p++)
        for (Py_ssize_t a = 0; a < sh; a++)
            for (Py_ssize_t b = 0; b < sw; b++)
                for (Py_ssize_t i = y0; i < y1; i++) {
                    float* row = xp + (((p * sh + a) * sw + b) * hq + i) * wq;
                    Py_ssize_t sy = nrt_pad_source(i * sh + a - pt, h, pt, pb, mode);
                    if (sy < 0) {
                        memset(row, 0, (size_t)wq * sizeof(float));
                        continue;
                    }
                    const float* src = x + (p * h + sy) * w;
                    Py_ssize_t j = 0;
                    /* columns left of the image, then the image (j*sw + b - pl in [0, w)), then right */
                    for (; j < wq && j * sw + b - pl < 0; j++) {
                        Py_ssize_t sx = nrt_pad_source(j * sw + b - pl, w, pl, pr, mode);
                        row[j] = sx < 0 ? 0.0f : src[sx];
                    }
                    if (sw == 1) {
                        Py_ssize_t n = w - (j + b - pl);
                        if (n > wq - j)
                            n = wq - j;
                        if (n > 0) {
                            memcpy(row + j, src + j + b - pl, (size_t)n * sizeof(float));
                            j += n;
                        }
                    } else {
                        for (; j < wq && j * sw + b - pl < w; j++)
                            row[j] = src[j * sw + b - pl];
                    }
                    for (; j < wq; j++) {
                        Py_ssize_t sx = nrt_pad_source(j * sw + b - pl, w, pl, pr, mode);
                        row[j] = sx < 0 ? 0.0f : src[sx];
                    }
                }
}

/* B panels per nrt_gemv_panels call (gemm_core.pxd's GEMV_JOB_PANELS) */
#define NRT_GEMV_PANELS 8

/* Rows r0 .. r0 + R - 1 (R <= 4) of a product with few rows against a prepacked B, panels
   [jp0, jp1) (at most NRT_GEMV_PANELS): nrt_kernel's arithmetic for each output (per K block of kcb, a fused
   multiply-add chain from 0 over k ascending; the blocks' sums added to C in order; then
   + bias_row, + bias_col, + res, ReLU), so the same bits as the packed GEMM, without its
   MR-row A panels: a batch-1 classifier head (1 x 1024 @ 1024 x 1000) computed 8 rows for 1
   and ran at a quarter of the weight's streaming speed. a: row-major, row stride lda. */
static inline __attribute__((always_inline)) void
nrt_gemv_rows(const int R, long r0, long k, long n, long kcb, const float* restrict a, long lda,
              const float* restrict bpk, long jp0, long jp1, float* restrict c, long ldc,
              const float* restrict bias_row, const float* restrict bias_col, const float* restrict res,
              int relu)
{
    /* K blocks outer, the job's panels inner: a K block's panels are adjacent in the packed B,
       so B streams through memory in runs of (jp1 - jp0) panels. 1 x 1024 @ 1024 x 1000, one
       thread: 51-57 us with the weight in L3 (numpy's sgemv 34-45 us), 180-195 us from memory
       (numpy 74-145 us: this VM's memory bandwidth swings; the packed GEMM took ~330 us) */
    const long np = (n + NRT_NR - 1) / NRT_NR;
    float cs[NRT_GEMV_PANELS][4][NRT_NR] __attribute__((aligned(64)));
    for (long pc = 0; pc < k; pc += kcb) {
        const long kc = k - pc < kcb ? k - pc : kcb;
        /* PB panels side by side: R * PB * 2 independent multiply-add chains (one panel's two
           were latency-bound: 4 cycles per k), each output's own chain unchanged */
        const int PB = R <= 2 ? 4 : 2;
        for (long jq = jp0; jq < jp1; jq += PB) {
            const int pb = jp1 - jq < PB ? (int)(jp1 - jq) : PB;
            const float* bp = bpk + pc * np * NRT_NR + jq * NRT_NR * kc;
            nrt_v acc[4][4][2];
            for (int q = 0; q < PB; q++)
                for (int i = 0; i < R; i++)
                    acc[q][i][0] = acc[q][i][1] = NRT_BCAST(0.0f);
            for (long p = 0; p < kc; p++) {
                nrt_v ai[4];
                for (int i = 0; i < R; i++)
                    ai[i] = NRT_BCAST(a[(r0 + i) * lda + pc + p]);
                for (int q = 0; q < PB; q++) {
                    if (q >= pb)
                        break;
                    const float* bq = bp + q * NRT_NR * kc + p * NRT_NR;
                    nrt_v b0 = *(const nrt_vu*)bq;
                    nrt_v b1 = *(const nrt_vu*)(bq + NRT_VW);
                    for (int i = 0; i < R; i++) {
                        acc[q][i][0] = NRT_FMA(ai[i], b0, acc[q][i][0]);
                        acc[q][i][1] = NRT_FMA(ai[i], b1, acc[q][i][1]);
                    }
                }
            }
            for (int q = 0; q < pb; q++)
                for (int i = 0; i < R; i++) {
                    float* t = cs[jq + q - jp0][i];
                    if (pc == 0) {
                        *(nrt_vu*)t = acc[q][i][0];
                        *(nrt_vu*)(t + NRT_VW) = acc[q][i][1];
                    } else {
                        *(nrt_vu*)t = *(nrt_vu*)t + acc[q][i][0];
                        *(nrt_vu*)(t + NRT_VW) = *(nrt_vu*)(t + NRT_VW) + acc[q][i][1];
                    }
                }
        }
    }
    for (long jp = jp0; jp < jp1; jp++) {
        const long c0 = jp * NRT_NR, w = n - c0 < NRT_NR ? n - c0 : NRT_NR;
        for (int i = 0; i < R; i++) {
            const float* t = cs[jp - jp0][i];
            float* crow = c + (r0 + i) * ldc + c0;
            for (long j = 0; j < w; j++) {
                float v = t[j];
                if (bias_row)
                    v = v + bias_row[r0 + i];
                if (bias_col)
                    v = v + bias_col[c0 + j];
                if (res)
                    v = v + res[(r0 + i) * ldc + c0 + j];
                if (relu && v < 0.0f)
                    v = 0.0f;     /* nrt_relu: v < 0 gives +0; NaN and -0 stay */
                crow[j] = v;
            }
        }
    }
}

/* nrt_gemv_rows over all m rows, four at a time */
__attribute__((unused)) static void
nrt_gemv_panels(long m, long k, long n, long kcb, const float* restrict a, long lda, const float* restrict bpk,
                long jp0, long jp1, float* restrict c, long ldc, const float* restrict bias_row,
                const float* restrict bias_col, const float* restrict res, int relu)
{
    long r0 = 0;
    for (; r0 + 4 <= m; r0 += 4)
        nrt_gemv_rows(4, r0, k, n, kcb, a, lda, bpk, jp0, jp1, c, ldc, bias_row, bias_col, res, relu);
    switch (m - r0) {
    case 3: nrt_gemv_rows(3, r0, k, n, kcb, a, lda, bpk, jp0, jp1, c, ldc, bias_row, bias_col, res, relu); break;
    case 2: nrt_gemv_rows(2, r0, k, n, kcb, a, lda, bpk, jp0, jp1, c, ldc, bias_row, bias_col, res, relu); break;
    case 1: nrt_gemv_rows(1, r0, k, n, kcb, a, lda, bpk, jp0, jp1, c, ldc, bias_row, bias_col, res, relu); break;
    default: break;
    }
}

#define NRT_FIRST 1
#define NRT_LAST 2
/* with NRT_LAST: ReLU on the stored tile (moments.pxd's activate_span, same
   result: v < 0 gives +0, NaN and -0 stay), so a ReLU epilogue costs no second
   pass over C (a 1x1 conv of K = 64 spent 6% of its time re-reading its tiles) */
#define NRT_RELU 4

/* v < 0 ? +0 : v per lane: the comparison's all-ones lanes clear v's bits */
static inline __attribute__((always_inline)) nrt_v nrt_relu(nrt_v v)
{
    typedef int nrt_vi __attribute__((vector_size(sizeof(nrt_v))));
    return (nrt_v)((nrt_vi)v & ~(nrt_vi)(v < NRT_BCAST(0.0f)));
}

/* c[MR, NR] (row stride ldc) = (first ? 0 : c) + a_panel @ b_panel, then on
   the last K block + bias_row[i] + bias_col[j] + res[i, j] (each optional).
   a: kc x MR (k-major); b: kc x NR (k-major), or with boff its row p is
   the NR floats at b + boff[p] (a stride-1 conv's B read straight from the
   padded image: no packed copy). Same arithmetic either way. */
static inline __attribute__((always_inline)) void
nrt_kernel_body(long kc, const float* restrict a, const float* restrict b,
                const Py_ssize_t* restrict boff, float* restrict c, long ldc, int flags,
                const float* restrict bias_row, const float* restrict bias_col,
                const float* restrict res, long ldr)
{
    nrt_v acc[NRT_MR][2];
    int i;
    long p;
    for (i = 0; i < NRT_MR; i++) {
        acc[i][0] = NRT_BCAST(0.0f);
        acc[i][1] = NRT_BCAST(0.0f);
    }
    #pragma GCC unroll 2
    for (p = 0; p < kc; p++) {
        const float* bp = boff ? b + boff[p] : b + p * NRT_NR;
        nrt_v b0 = *(const nrt_vu*)bp;
        nrt_v b1 = *(const nrt_vu*)(bp + NRT_VW);
        #pragma GCC unroll 16
        for (i = 0; i < NRT_MR; i++) {
            nrt_v ai = NRT_BCAST(a[p * NRT_MR + i]);
            acc[i][0] = NRT_FMA(ai, b0, acc[i][0]);
            acc[i][1] = NRT_FMA(ai, b1, acc[i][1]);
        }
    }
    #pragma GCC unroll 16
    for (i = 0; i < NRT_MR; i++) {
        nrt_v v0 = acc[i][0], v1 = acc[i][1];
        float* cp = c + i * ldc;
        if (!(flags & NRT_FIRST)) {
            v0 = *(nrt_vu*)cp + v0;
            v1 = *(nrt_vu*)(cp + NRT_VW) + v1;
        }
        if (flags & NRT_LAST) {
            if (bias_row) {
                nrt_v s = NRT_BCAST(bias_row[i]);
                v0 = v0 + s;
                v1 = v1 + s;
            }
            if (bias_col) {
                v0 = v0 + *(const nrt_vu*)bias_col;
                v1 = v1 + *(const nrt_vu*)(bias_col + NRT_VW);
            }
            if (res) {
                v0 = v0 + *(const nrt_vu*)(res + i * ldr);
                v1 = v1 + *(const nrt_vu*)(res + i * ldr + NRT_VW);
            }
            if (flags & NRT_RELU) {
                v0 = nrt_relu(v0);
                v1 = nrt_relu(v1);
            }
        }
        *(nrt_vu*)cp = v0;
        *(nrt_vu*)(cp + NRT_VW) = v1;
    }
}

static void nrt_kernel(long kc, const float* restrict a, const float* restrict b,
                       float* restrict c, long ldc, int flags,
                       const float* restrict bias_row, const float* restrict bias_col,
                       const float* restrict res, long ldr)
{
    nrt_kernel_body(kc, a, b, NULL, c, ldc, flags, bias_row, bias_col, res, ldr);
}

/* The transposed conv's tile: c[MR, NR] = (first ? 0 : c) + A @ b_panel (+
   bias_col on the last K block) with A read in place: A[i, p] = x[koff[p] +
   off[i]] (pixel i's offset, tap/channel p's offset), b as in nrt_kernel.
   Each lane's K sum runs in the same order as nrt_kernel's. */
static inline __attribute__((always_inline)) void
nrt_kernel_t_body(const int rows, const int contiguous, long kc, const float* restrict x,
                  const Py_ssize_t* restrict koff, const Py_ssize_t* restrict off,
                  const float* restrict b, float* restrict c, long ldc, int flags,
                  const float* restrict bias_col)
{
    nrt_v acc[NRT_MR][2];
    Py_ssize_t o[NRT_MR];
    int i;
    long p;
    for (i = 0; i < rows; i++) {
        o[i] = off[i];
        acc[i][0] = NRT_BCAST(0.0f);
        acc[i][1] = NRT_BCAST(0.0f);
    }
    #pragma GCC unroll 2
    for (p = 0; p < kc; p++) {
        const float* xp = x + koff[p] + (contiguous ? o[0] : 0);
        nrt_v b0 = *(const nrt_vu*)(b + p * NRT_NR);
        nrt_v b1 = *(const nrt_vu*)(b + p * NRT_NR + NRT_VW);
        #pragma GCC unroll 16
        for (i = 0; i < rows; i++) {
            nrt_v ai = NRT_BCAST(contiguous ? xp[i] : xp[o[i]]);
            acc[i][0] = NRT_FMA(ai, b0, acc[i][0]);
            acc[i][1] = NRT_FMA(ai, b1, acc[i][1]);
        }
    }
    #pragma GCC unroll 16
    for (i = 0; i < rows; i++) {
        nrt_v v0 = acc[i][0], v1 = acc[i][1];
        float* cp = c + i * ldc;
        if (!(flags & NRT_FIRST)) {
            v0 = *(nrt_vu*)cp + v0;
            v1 = *(nrt_vu*)(cp + NRT_VW) + v1;
        }
        if ((flags & NRT_LAST) && bias_col) {
            v0 = v0 + *(const nrt_vu*)bias_col;
            v1 = v1 + *(const nrt_vu*)(bias_col + NRT_VW);
        }
        *(nrt_vu*)cp = v0;
        *(nrt_vu*)(cp + NRT_VW) = v1;
    }
}

/* one copy per row count (noinline: inlined, GCC spills its 15 live pointers);
   MR - 1 rows for pixel counts it divides better (7x7 = 49: 7 rows of 7) */
__attribute__((noinline)) static void
nrt_kernel_t(long kc, const float* restrict x, const Py_ssize_t* restrict koff,
             const Py_ssize_t* restrict off, const float* restrict b, float* restrict c,
             long ldc, int flags, const float* restrict bias_col)
{
    nrt_kernel_t_body(NRT_MR, 0, kc, x, koff, off, b, c, ldc, flags, bias_col);
}

__attribute__((noinline)) static void
nrt_kernel_t1(long kc, const float* restrict x, const Py_ssize_t* restrict koff,
              const Py_ssize_t* restrict off, const float* restrict b, float* restrict c,
              long ldc, int flags, const float* restrict bias_col)
{
    nrt_kernel_t_body(NRT_MR - 1, 0, kc, x, koff, off, b, c, ldc, flags, bias_col);
}

/* 1, 2 or 4 pixel rows: a map of at most 4 pixels (a late stage's 2 x 2, a squeeze-excite's
   1 x 1), whose MR-row tile would compute its last pixel again 4-7 times (MobileNetV2's last
   1x1 conv, 112 -> 1280 on a 2 x 2 map: 26 us, most of them for repeated rows) */
__attribute__((noinline)) static void
nrt_kernel_t_few(int rows, long kc, const float* restrict x, const Py_ssize_t* restrict koff,
                 const Py_ssize_t* restrict off, const float* restrict b, float* restrict c,
                 long ldc, int flags, const float* restrict bias_col)
{
    if (rows == 1)
        nrt_kernel_t_body(1, 0, kc, x, koff, off, b, c, ldc, flags, bias_col);
    else if (rows == 2)
        nrt_kernel_t_body(2, 0, kc, x, koff, off, b, c, ldc, flags, bias_col);
    else
        nrt_kernel_t_body(4, 0, kc, x, koff, off, b, c, ldc, flags, bias_col);
}

/* pixels off[0] + i (a 1x1 conv's whole panel): fixed displacements, no
   offset registers */
__attribute__((noinline)) static void
nrt_kernel_tc(long kc, const float* restrict x, const Py_ssize_t* restrict koff,
              const Py_ssize_t* restrict off, const float* restrict b, float* restrict c,
              long ldc, int flags, const float* restrict bias_col)
{
    nrt_kernel_t_body(NRT_MR, 1, kc, x, koff, off, b, c, ldc, flags, bias_col);
}

__attribute__((noinline)) static void
nrt_kernel_tc1(long kc, const float* restrict x, const Py_ssize_t* restrict koff,
               const Py_ssize_t* restrict off, const float* restrict b, float* restrict c,
               long ldc, int flags, const float* restrict bias_col)
{
    nrt_kernel_t_body(NRT_MR - 1, 1, kc, x, koff, off, b, c, ldc, flags, bias_col);
}

/* d[j * ldd + i] = s[i * lds + j] (+ res[j * ldd + i]) for i, j < NRT_TT: the
   transposed conv's output tile (pixels x channels) written as channel rows,
   NRT_TT rows of NRT_TT floats in registers (a scalar transpose was ~6% of a
   ResNet-50 run on one thread: strided single-float loads). With res (NULL:
   none) the residual is added as each row is stored, and with relu ReLU
   follows: one pass over y, and each residual row is read before its y row is
   written, so res may be d itself (y written into the residual's buffer). */
#define NRT_TT_STORE(row, v) do {                                               \
        nrt_v v_ = (nrt_v)(v);                                                  \
        if (res) v_ = v_ + *(const nrt_vu*)(res + (row) * ldd);                \
        if (relu) v_ = nrt_relu(v_);                                            \
        *(nrt_vu*)(d + (row) * ldd) = v_;                                      \
    } while (0)
#if defined(__AVX512F__)
  #define NRT_TT 16
static inline void nrt_transpose_tile(const float* restrict s, long lds, float* d, long ldd,
                                      const float* res, int relu)
{
    __m512 r[16], t[16];
    int i, k;
    for (i = 0; i < 16; i++)
        r[i] = _mm512_loadu_ps(s + i * lds);
    /* rows 2i, 2i+1 interleaved by float, then rows 4i..4i+3 by pairs: t[4i + k]'s
       128-bit lane L holds column 4L + k of rows 4i..4i+3 */
    for (i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d c = _mm512_castps_pd(t[4 * i + 2]), e = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
    }
    /* column 4L + k = lane L of r[k], r[4 + k], r[8 + k], r[12 + k] */
    for (k = 0; k < 4; k++) {
        __m512 v0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x44);
        __m512 v1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xEE);
        __m512 v2 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x44);
        __m512 v3 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xEE);
        NRT_TT_STORE(k, _mm512_shuffle_f32x4(v0, v2, 0x88));
        NRT_TT_STORE(4 + k, _mm512_shuffle_f32x4(v0, v2, 0xDD));
        NRT_TT_STORE(8 + k, _mm512_shuffle_f32x4(v1, v3, 0x88));
        NRT_TT_STORE(12 + k, _mm512_shuffle_f32x4(v1, v3, 0xDD));
    }
}
#elif defined(__AVX2__) && defined(__FMA__)   /* (as NRT_VW: nrt_v is 8 floats) */
  #define NRT_TT 8
static inline void nrt_transpose_tile(const float* restrict s, long lds, float* d, long ldd,
                                      const float* res, int relu)
{
    __m256 r[8], t[8];
    int i, k;
    for (i = 0; i < 8; i++)
        r[i] = _mm256_loadu_ps(s + i * lds);
    for (i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* r[4i + k]'s 128-bit lane L: column 4L + k of rows 4i..4i+3 */
    for (i = 0; i < 2; i++) {
        r[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (k = 0; k < 4; k++) {
        NRT_TT_STORE(k, _mm256_permute2f128_ps(r[k], r[4 + k], 0x20));
        NRT_TT_STORE(4 + k, _mm256_permute2f128_ps(r[k], r[4 + k], 0x31));
    }
}
#else
  #include <xmmintrin.h>
  #define NRT_TT 4
static inline void nrt_transpose_tile(const float* restrict s, long lds, float* d, long ldd,
                                      const float* res, int relu)
{
    __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + lds);
    __m128 r2 = _mm_loadu_ps(s + 2 * lds), r3 = _mm_loadu_ps(s + 3 * lds);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    NRT_TT_STORE(0, r0);
    NRT_TT_STORE(1, r1);
    NRT_TT_STORE(2, r2);
    NRT_TT_STORE(3, r3);
}
#endif

static void nrt_kernel_off(long kc, const float* restrict a, const float* restrict b,
                           const Py_ssize_t* restrict boff, float* restrict c, long ldc,
                           int flags, const float* restrict bias_row)
{
    nrt_kernel_body(kc, a, b, boff, c, ldc, flags, bias_row, NULL, NULL, 0);
}

#endif /* NORMRT_GEMM_MICROKERNEL_H */
