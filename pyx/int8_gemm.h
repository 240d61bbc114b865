/* The 8-bit product of static QDQ models (normrt._kernels.int8_gemm).

   y[i, j] = (acc[i, j] - zu * colsum[j]) * cs[j] + bias[j],   acc = sum_k u[i, k] w[k, j]

   u: the activations' unsigned 8-bit codes (q - lo of their grid: QuantizeLinear's integers,
      shifted into 0..255; zu is the zero point shifted alike), quantized from float32 rows here;
   w: the int8 weights (symmetric: zero point 0), packed once in panels of NRT_Q_NR columns,
      4 consecutive k of a column in one 32-bit word (what vpdpbusd multiplies and sums);
   cs: activation scale times each column's weight scale.

   Every sum is exact in int32 (|u w| <= 255 * 128, K < 2^16), so the result does not depend on
   the order of the additions: any thread count, any path gives the same bits. The paths: AVX-512
   VNNI's vpdpbusd (64 multiply-adds per instruction, compiled with a function target attribute
   and used when the CPU has it: nrt_q_vnni_on), else plain C loops over the same layout.

   A row holding a NaN (a NaN passes through FakeQuant) gives NaN in every column, as the
   float product of that row would; no integer code stands for it.

   A runtime B (both operands activations: attention's Q K^T and P V in a static QDQ model) is
   quantized per call to its codes ub, stored as sb = ub - 128 (int8, what vpdpbusd takes), so
   with c = 128 - zb (B's zero point in code space):
       sum (ua - za)(ub - zb) = sum ua sb - za colsum(sb)[j] + c (rowsum(ua)[i] - za K),
   the last term one int32 per row (rowterm): exact while 255 * 255 * K < 2^31 (K <= 32767). */
#ifndef NORMRT_INT8_GEMM_H
#define NORMRT_INT8_GEMM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cpu/cpu_features.h"
#include "quant_grid.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define NRT_Q_HAVE_VNNI 1
#define NRT_Q_VNNI_TARGET __attribute__((target("avx512vnni")))
#else
#define NRT_Q_HAVE_VNNI 0
#endif

#define NRT_Q_NR 32        /* columns per B panel: two 16-lane int32 vectors */
#define NRT_Q_MR 8         /* rows per micro-tile (16 accumulators) */
#define NRT_Q_KG 4         /* k per packed word */
#define NRT_Q_TILES 8      /* micro-tiles per job: a job's rows share its B panel in cache */

static inline ptrdiff_t nrt_q_kgroups(ptrdiff_t K) { return (K + NRT_Q_KG - 1) / NRT_Q_KG; }
static inline ptrdiff_t nrt_q_panels(ptrdiff_t N) { return (N + NRT_Q_NR - 1) / NRT_Q_NR; }
static inline ptrdiff_t nrt_q_packed_size(ptrdiff_t K, ptrdiff_t N)
{
    return nrt_q_panels(N) * nrt_q_kgroups(K) * NRT_Q_NR * NRT_Q_KG;
}

/* w (K, N) row-major -> out[panel][k group][column][4] (zeros past K and N), colsum[N] */
static void nrt_q_pack_b(const int8_t* w, ptrdiff_t K, ptrdiff_t N, int8_t* out, int32_t* colsum)
{
    ptrdiff_t kg = nrt_q_kgroups(K), np = nrt_q_panels(N), p, g, j, t, k, c;
    for (p = 0; p < np; p++)
        for (g = 0; g < kg; g++)
            for (j = 0; j < NRT_Q_NR; j++)
                for (t = 0; t < NRT_Q_KG; t++) {
                    k = g * NRT_Q_KG + t;
                    c = p * NRT_Q_NR + j;
                    out[((p * kg + g) * NRT_Q_NR + j) * NRT_Q_KG + t] = (k < K && c < N) ? w[k * N + c] : 0;
                }
    for (c = 0; c < N; c++) {
        int32_t s = 0;
        for (k = 0; k < K; k++)
            s += w[k * N + c];
        colsum[c] = s;
    }
}

/* Rows [r0, r1) of x (rows of K floats, stride ldx) -> their codes in u (rows of K4 bytes, zeros
   from K on): clamp(round(x / scale) + zero, lo, hi) - lo, QuantizeLinear's integer shifted by
   -lo. nan[r] = 1 for a row holding a NaN. */
static void nrt_q_quantize_rows(const float* x, ptrdiff_t ldx, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K,
                                ptrdiff_t K4, float scale, float zero, float lo, float hi, uint8_t* u,
                                unsigned char* nan, int32_t* rowsum)
{
    ptrdiff_t r, k;
    for (r = r0; r < r1; r++) {
        const float* xr = x + r * ldx;
        uint8_t* ur = u + r * K4;
        int bad = 0;
        int32_t sum = 0;
        for (k = 0; k < K; k++) {
            float v = nrt_q_round(xr[k] / scale) + zero;
            bad |= v != v;
            v = v < lo ? lo : v;
            v = v > hi ? hi : v;
            ur[k] = (uint8_t)(int32_t)(v == v ? v - lo : 0.0f);
            sum += ur[k];
        }
        for (; k < K4; k++)
            ur[k] = 0;
        nan[r] = (unsigned char)bad;
        if (rowsum)
            rowsum[r] = sum;
    }
}

/* A runtime B (K, N) on grid (scale, zero, lo, hi) -> its codes minus 128 as int8, packed as
   nrt_q_pack_b packs weights, with their column sums; nan[c] = 1 for a column holding a NaN.
   The row stride of b is ldb floats (its columns contiguous). Portable path: rows are quantized
   first, in order (contiguous, vectorizable), into `tmp` (K * N bytes), then shuffled into the
   panels; the AVX-512 path writes the panels' words directly (one thread, 4 heads of 128 x 64
   x 128 in qmatmul_batched: 64 -> 52 us). */
static void nrt_q_pack_b_codes(const float* b, ptrdiff_t ldb, ptrdiff_t K, ptrdiff_t N, float scale, float zero,
                               float lo, float hi, int8_t* out, int32_t* colsum, unsigned char* nan,
                               uint8_t* tmp)
{
    ptrdiff_t kg = nrt_q_kgroups(K), np = nrt_q_panels(N), p, g, j, t, k, c;
#if defined(__AVX512F__)
    /* 16 columns at a time, straight into the panels: a packed word is 4 consecutive k of one
       column, so the codes of rows 4g..4g+3 (one vector each) shifted into bytes 0..3 are 16
       columns' words. The scalar path's arithmetic lane by lane (roundscale is its rounding;
       a NaN clamps to itself and codes 0; columns past N and rows past K are 0 bytes). */
    (void)tmp; (void)j;
    {
        const __m512 vs = _mm512_set1_ps(scale), vz = _mm512_set1_ps(zero), vlo = _mm512_set1_ps(lo);
        const __m512 vhi = _mm512_set1_ps(hi);
        const __m512i flip = _mm512_set1_epi32(0x80), bias = _mm512_set1_epi32(128);
        for (p = 0; p < np; p++)
            for (int half = 0; half < NRT_Q_NR / 16; half++) {
                ptrdiff_t c0 = p * NRT_Q_NR + half * 16;
                __mmask16 cols = c0 >= N ? 0 : (c0 + 16 <= N ? 0xFFFF : (__mmask16)((1u << (N - c0)) - 1));
                __m512i sum = _mm512_setzero_si512();
                __mmask16 bad = 0;
                for (g = 0; g < kg; g++) {
                    __m512i word = _mm512_setzero_si512();
                    for (t = 0; t < NRT_Q_KG; t++) {
                        k = g * NRT_Q_KG + t;
                        if (k >= K || !cols)
                            break;
                        __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(cols, b + k * ldb + c0), vs);
                        v = _mm512_add_ps(_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vz);
                        __mmask16 ok = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
                        bad |= (__mmask16)(~ok & cols);
                        v = _mm512_min_ps(vhi, _mm512_max_ps(vlo, v));
                        __m512i code = _mm512_maskz_cvttps_epi32(ok & cols, _mm512_sub_ps(v, vlo));
                        __m512i byte = _mm512_maskz_xor_epi32(cols, code, flip);     /* code - 128 as int8 bits */
                        sum = _mm512_mask_add_epi32(sum, cols, sum, _mm512_sub_epi32(code, bias));
                        word = _mm512_or_si512(word, _mm512_slli_epi32(byte, 8 * (unsigned)t));
                    }
                    _mm512_storeu_si512((void*)(out + ((p * kg + g) * NRT_Q_NR + half * 16) * NRT_Q_KG), word);
                }
                int32_t lanes[16];
                _mm512_storeu_si512((void*)lanes, sum);
                for (c = c0; c < N && c < c0 + 16; c++) {
                    colsum[c] = lanes[c - c0];
                    nan[c] = (unsigned char)((bad >> (c - c0)) & 1);
                }
            }
        return;
    }
#endif
    for (c = 0; c < N; c++) {
        colsum[c] = 0;
        nan[c] = 0;
    }
    for (k = 0; k < K; k++) {
        const float* br = b + k * ldb;
        uint8_t* tr = tmp + k * N;
        for (c = 0; c < N; c++) {
            float v = nrt_q_round(br[c] / scale) + zero;
            nan[c] |= v != v;
            v = v < lo ? lo : v;
            v = v > hi ? hi : v;
            tr[c] = (uint8_t)((int32_t)(v == v ? v - lo : 0.0f) ^ 0x80);     /* code - 128, as int8 bits */
            colsum[c] += (int8_t)tr[c];
        }
    }
    for (p = 0; p < np; p++)
        for (g = 0; g < kg; g++)
            for (j = 0; j < NRT_Q_NR; j++) {
                int8_t* d = out + ((p * kg + g) * NRT_Q_NR + j) * NRT_Q_KG;
                c = p * NRT_Q_NR + j;
                for (t = 0; t < NRT_Q_KG; t++) {
                    k = g * NRT_Q_KG + t;
                    d[t] = (k < K && c < N) ? (int8_t)tmp[k * N + c] : 0;
                }
            }
}

/* acc[MR][NR] = u rows (MR of them, stride lda bytes) times one packed panel, over kg groups */
static void nrt_q_tile_plain(const uint8_t* u, ptrdiff_t lda, const int8_t* bp, ptrdiff_t kg,
                             int32_t acc[NRT_Q_MR][NRT_Q_NR])
{
    ptrdiff_t g;
    int i, j;
    memset(acc, 0, sizeof(int32_t) * NRT_Q_MR * NRT_Q_NR);
    for (g = 0; g < kg; g++) {
        const int8_t* b = bp + g * NRT_Q_NR * NRT_Q_KG;
        for (i = 0; i < NRT_Q_MR; i++) {
            const uint8_t* a = u + i * lda + g * NRT_Q_KG;
            int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
            for (j = 0; j < NRT_Q_NR; j++)
                acc[i][j] += a0 * b[4 * j] + a1 * b[4 * j + 1] + a2 * b[4 * j + 2] + a3 * b[4 * j + 3];
        }
    }
}

#if NRT_Q_HAVE_VNNI
/* the same sums by vpdpbusd: per k group, each row's 4 codes broadcast against the panel's two
   vectors of 16 columns x 4 weights */
static NRT_Q_VNNI_TARGET void nrt_q_tile_vnni(const uint8_t* u, ptrdiff_t lda, const int8_t* bp, ptrdiff_t kg,
                                              int32_t acc[NRT_Q_MR][NRT_Q_NR])
{
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00;
    __m512i c70 = c00, c71 = c00;
    ptrdiff_t g;
    for (g = 0; g < kg; g++) {
        const int8_t* b = bp + g * NRT_Q_NR * NRT_Q_KG;
        const uint8_t* a = u + g * NRT_Q_KG;
        __m512i b0 = _mm512_loadu_si512((const void*)b), b1 = _mm512_loadu_si512((const void*)(b + 64));
        int32_t w;
        __m512i av;
#define NRT_Q_ROW(i, x0, x1)                                  \
        memcpy(&w, a + (i) * lda, 4);                         \
        av = _mm512_set1_epi32(w);                            \
        x0 = _mm512_dpbusd_epi32(x0, av, b0);                 \
        x1 = _mm512_dpbusd_epi32(x1, av, b1);
        NRT_Q_ROW(0, c00, c01) NRT_Q_ROW(1, c10, c11) NRT_Q_ROW(2, c20, c21) NRT_Q_ROW(3, c30, c31)
        NRT_Q_ROW(4, c40, c41) NRT_Q_ROW(5, c50, c51) NRT_Q_ROW(6, c60, c61) NRT_Q_ROW(7, c70, c71)
#undef NRT_Q_ROW
    }
    _mm512_storeu_si512((void*)acc[0], c00); _mm512_storeu_si512((void*)(acc[0] + 16), c01);
    _mm512_storeu_si512((void*)acc[1], c10); _mm512_storeu_si512((void*)(acc[1] + 16), c11);
    _mm512_storeu_si512((void*)acc[2], c20); _mm512_storeu_si512((void*)(acc[2] + 16), c21);
    _mm512_storeu_si512((void*)acc[3], c30); _mm512_storeu_si512((void*)(acc[3] + 16), c31);
    _mm512_storeu_si512((void*)acc[4], c40); _mm512_storeu_si512((void*)(acc[4] + 16), c41);
    _mm512_storeu_si512((void*)acc[5], c50); _mm512_storeu_si512((void*)(acc[5] + 16), c51);
    _mm512_storeu_si512((void*)acc[6], c60); _mm512_storeu_si512((void*)(acc[6] + 16), c61);
    _mm512_storeu_si512((void*)acc[7], c70); _mm512_storeu_si512((void*)(acc[7] + 16), c71);
}
#endif

/* 1 when this CPU runs vpdpbusd (cpuid avx512_vnni, the OS saving the AVX-512 state) and this
   build can use it */
static inline int nrt_q_vnni_available(void)
{
#if NRT_Q_HAVE_VNNI
    unsigned char has[NRT_CPU_NFEATURES];
    int i;
    nrt_cpu_detect(has);
    for (i = 0; i < NRT_CPU_NFEATURES; i++)
        if (strcmp(nrt_cpu_feature_name(i), "avx512_vnni") == 0)
            return has[i];
#endif
    return 0;
}

/* set once when the module loads (before any kernel runs or thread starts) */
static int nrt_q_vnni_on = 0;

__attribute__((constructor)) static void nrt_q_vnni_init(void) { nrt_q_vnni_on = nrt_q_vnni_available(); }

typedef struct {
    const uint8_t* u;          /* codes: rows padded to whole micro-tiles, K4 bytes each */
    ptrdiff_t K4;
    const int8_t* bp;          /* packed weights */
    ptrdiff_t kg;
    const int32_t* colsum;
    const float* cs;           /* N scales (activation scale x column weight scale) */
    const float* bias;         /* N values or NULL */
    int32_t zu;                /* the activations' zero point in code space */
    const unsigned char* nan;  /* per row */
    const int32_t* rowterm;    /* per row, added to every sum, or NULL (a runtime B: see nrt_q_job) */
    const unsigned char* colnan;   /* per column (a runtime B's NaN), or NULL */
    float* y;                  /* (M, N) row-major */
    ptrdiff_t M, N;
} nrt_q_problem;

static inline ptrdiff_t nrt_q_row_blocks(ptrdiff_t M)
{
    return (M + NRT_Q_MR * NRT_Q_TILES - 1) / (NRT_Q_MR * NRT_Q_TILES);
}

/* job j of nrt_q_row_blocks(M) * nrt_q_panels(N): up to NRT_Q_TILES micro-tiles of one panel.
   Row blocks vary fastest, so a static split gives each thread whole panels: each weight panel
   is read from memory once, the (smaller) codes stay in L2. */
static void nrt_q_job(const nrt_q_problem* q, ptrdiff_t job)
{
    int32_t acc[NRT_Q_MR][NRT_Q_NR];
    ptrdiff_t nrb = nrt_q_row_blocks(q->M), p = job / nrb, rb = job % nrb;
    ptrdiff_t c0 = p * NRT_Q_NR, nc = q->N - c0 < NRT_Q_NR ? q->N - c0 : NRT_Q_NR;
    ptrdiff_t r, r_end = (rb + 1) * NRT_Q_MR * NRT_Q_TILES;
    const int8_t* panel = q->bp + p * q->kg * NRT_Q_NR * NRT_Q_KG;
    int i, j;
    if (r_end > q->M)
        r_end = q->M;
    for (r = rb * NRT_Q_MR * NRT_Q_TILES; r < r_end; r += NRT_Q_MR) {
#if NRT_Q_HAVE_VNNI
        if (nrt_q_vnni_on)
            nrt_q_tile_vnni(q->u + r * q->K4, q->K4, panel, q->kg, acc);
        else
#endif
            nrt_q_tile_plain(q->u + r * q->K4, q->K4, panel, q->kg, acc);
        for (i = 0; i < NRT_Q_MR && r + i < q->M; i++) {
            float* yr = q->y + (r + i) * q->N + c0;
            if (q->nan[r + i]) {
                for (j = 0; j < nc; j++)
                    yr[j] = NAN;
                continue;
            }
            int32_t extra = q->rowterm ? q->rowterm[r + i] : 0;
            for (j = 0; j < nc; j++) {
                float v = (float)(acc[i][j] - q->zu * q->colsum[c0 + j] + extra) * q->cs[c0 + j];
                yr[j] = q->bias ? v + q->bias[c0 + j] : v;
            }
            if (q->colnan)
                for (j = 0; j < nc; j++)
                    if (q->colnan[c0 + j])
                        yr[j] = NAN;
        }
    }
}

#endif
