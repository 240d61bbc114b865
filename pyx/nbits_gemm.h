/* The 4-bit block-quantized product of onnxruntime's MatMulNBits (normrt._kernels.nbits_gemm).

   y[m, n] = bias[n] + sum over K blocks b of  sum_{k in b} a[m, k] * w[k, n],
   w[k, n] = (code[n, k] - zero[n, b]) * scale[n, b],   codes 0..15, zero 8 when absent.

   The weight stays in its 4-bit codes: a decode step (M = 1) streams half a byte per weight
   instead of the 4 bytes of a dequantized float32 weight, and the product is bound by those
   bytes. Three paths over the same packed codes:

   direct (few rows: the decode step): per block, acc = sum a[m, k] * code[n, k] and
       y += scale * (acc - zero * asum[m, b]),   asum[m, b] = sum_{k in b} a[m, k]
     (the zero point comes out of the sum: one FMA per code and row, two per block);
   scratch (a prompt): a tile of w dequantized once into a per-thread float32 buffer ((code -
     zero) * scale, the bits passes/matmul_nbits.dequantize gives), then a register-blocked
     float micro-kernel over the rows, as the float GEMM.

   Layout (nrt_nb_pack_codes, once at load): the columns in tiles of NRT_NB_NR = 32; for a tile,
   32 bytes per pair of k steps (k, k + 1), byte j holding code[n0 + j, k] in its low nibble and
   code[n0 + j, k + 1] in its high nibble. That pairing is MatMulNBits' own byte (row n's codes
   in K order, low nibble first): packing only transposes bytes. Scales and zero points are
   float32 in tiles too, [tile][block][32] (the padding columns' scale 0). Past N and past K the
   codes are 0.

   integer (accuracy_level 4, any number of rows, where the CPU has VNNI): A quantized to int8 per
     row and block as onnxruntime's CompInt8, vpdpbusd over the same packed codes (see the
     section at the end of this file).

   Every y element is computed by one call of one job (a tile), in a fixed order: the result
   does not depend on the thread count. The path (direct or scratch) depends on M only.

   The AVX-512 path (x86-64-v4) holds 16 columns per vector: a pair step of a tile is two
   vpmovzxbd, two shifts, four ands, four int->float conversions and 4 FMAs per row; on Zen 4
   (512-bit operations on two 256-bit halves) those ~10 cycles bound a one-row product, not the
   memory: 130 us for a 1024 x 2816 weight on one core, against 145 us for its float32 weight
   read from L3. The portable path (every
   other level) is plain C over the same layout, written for the compiler to vectorize. */
#ifndef NORMRT_NBITS_GEMM_H
#define NORMRT_NBITS_GEMM_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cpu/cpu_features.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
/* The integer path (accuracy_level 4) needs vpdpbusd (VNNI) and vpermb (VBMI): compiled into the
   AVX-512 build with a function target attribute, run where the CPU has both (nrt_nb_int8_on). */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define NRT_NB_HAVE_INT8 1
#define NRT_NB_INT8_TARGET __attribute__((target("avx512vnni,avx512vbmi")))
#else
#define NRT_NB_HAVE_INT8 0
#endif

#define NRT_NB_NR 32          /* columns per tile */
#define NRT_NB_MR 6           /* rows per micro-tile of the scratch path (12 accumulators) */
#define NRT_NB_DIRECT_MR 4    /* rows sharing one pass over a tile's codes on the direct path (more: several passes) */

typedef struct {
    const float* a;           /* A (M, K), rows lda apart */
    ptrdiff_t lda;
    const uint8_t* codes;     /* [tiles][K2][32], K2 = ceil(K / 2) */
    const float* scale;       /* [tiles][kblocks][32] */
    const float* zero;        /* [tiles][kblocks][32], or NULL: zero_default */
    float zero_default;
    const float* bias;        /* [N] or NULL */
    const float* asum;        /* [M][kblocks] block sums of A's rows (direct path) */
    const int8_t* aq;         /* integer path: A's int8 codes [M][ldq], zeros past K */
    ptrdiff_t ldq;            /* kblocks * block */
    const float* ascale;      /* [M][kblocks] the codes' scales */
    const int32_t* qsum;      /* [M][kblocks] the codes' block sums */
    float* y;                 /* (M, N) */
    ptrdiff_t M, K, N, block, kblocks;
} nrt_nb_problem;

static inline ptrdiff_t nrt_nb_tiles(ptrdiff_t N) { return (N + NRT_NB_NR - 1) / NRT_NB_NR; }
static inline ptrdiff_t nrt_nb_pairs(ptrdiff_t K) { return (K + 1) / 2; }
static inline ptrdiff_t nrt_nb_packed_size(ptrdiff_t K, ptrdiff_t N)
{
    return nrt_nb_tiles(N) * nrt_nb_pairs(K) * NRT_NB_NR;
}
/* floats of one thread's scratch tile (one row past an odd K: a pair is written whole) */
static inline ptrdiff_t nrt_nb_scratch_size(ptrdiff_t K) { return 2 * nrt_nb_pairs(K) * NRT_NB_NR; }

/* b: MatMulNBits' B as [N][row_bytes] (row n's codes in K order, two a byte, the row's last
   block padded) -> out [tiles][K2][32]. Columns past N and the padding code past an odd K are
   zeroed: the kernels multiply them by nothing, but a zero keeps 0 * code finite. */
static void nrt_nb_pack_codes(const uint8_t* b, ptrdiff_t row_bytes, ptrdiff_t N, ptrdiff_t K, uint8_t* out)
{
    ptrdiff_t K2 = nrt_nb_pairs(K), tiles = nrt_nb_tiles(N), t, j, q;
    for (t = 0; t < tiles; t++) {
        uint8_t* o = out + t * K2 * NRT_NB_NR;
        for (j = 0; j < NRT_NB_NR; j++) {
            ptrdiff_t n = t * NRT_NB_NR + j;
            if (n >= N) {
                for (q = 0; q < K2; q++)
                    o[q * NRT_NB_NR + j] = 0;
                continue;
            }
            const uint8_t* row = b + n * row_bytes;
            for (q = 0; q < K2; q++)
                o[q * NRT_NB_NR + j] = row[q];
            if (K & 1)
                o[(K2 - 1) * NRT_NB_NR + j] &= 0x0F;
        }
    }
}

/* the block sums asum[m][b] of rows r0..r1 (the direct path's zero point term) */
static void nrt_nb_block_sums(const nrt_nb_problem* p, ptrdiff_t r0, ptrdiff_t r1, float* asum)
{
    ptrdiff_t m, b, k;
    for (m = r0; m < r1; m++) {
        const float* a = p->a + m * p->lda;
        for (b = 0; b < p->kblocks; b++) {
            ptrdiff_t k1 = (b + 1) * p->block < p->K ? (b + 1) * p->block : p->K;
            float s = 0.0f;
            for (k = b * p->block; k < k1; k++)
                s += a[k];
            asum[m * p->kblocks + b] = s;
        }
    }
}

/* ---------------- AVX-512 ---------------- */
#if defined(__AVX512F__)

#define NRT_NB_INLINE static inline __attribute__((always_inline))

NRT_NB_INLINE __mmask16 nrt_nb_mask(ptrdiff_t valid)
{
    return valid >= 16 ? (__mmask16)0xFFFF : valid <= 0 ? (__mmask16)0 : (__mmask16)((1u << valid) - 1u);
}


/* the low 4 bits of each int32 lane as a float. (vpermps from a table of 0.0 .. 15.0 would mask
   and convert in one instruction, but measured no faster on Zen 4: 130 us either way for a
   1024 x 2816 decode product on one thread) */
NRT_NB_INLINE __m512 nrt_nb_low4(__m512i v)
{
    return _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)));
}

/* rows m0 .. m0 + R of tile t, direct path. R a constant at each call: the accumulators stay in
   registers. One row alone sums even and odd k apart (four FMA chains, not two). */
NRT_NB_INLINE void nrt_nb_direct_avx512(const nrt_nb_problem* p, ptrdiff_t t, ptrdiff_t m0, const int R)
{
    const int P = R == 1 ? 2 : 1;
    const ptrdiff_t K = p->K, K2 = nrt_nb_pairs(K), kb = p->kblocks, n0 = t * NRT_NB_NR;
    const uint8_t* codes = p->codes + t * K2 * NRT_NB_NR;
    const float* sc = p->scale + t * kb * NRT_NB_NR;
    const float* zc = p->zero ? p->zero + t * kb * NRT_NB_NR : NULL;
    const __mmask16 m_lo = nrt_nb_mask(p->N - n0), m_hi = nrt_nb_mask(p->N - n0 - 16);
    const float* a[NRT_NB_DIRECT_MR];
    __m512 y[NRT_NB_DIRECT_MR][2];
    __m512 b_lo = p->bias ? _mm512_maskz_loadu_ps(m_lo, p->bias + n0) : _mm512_setzero_ps();
    __m512 b_hi = p->bias ? _mm512_maskz_loadu_ps(m_hi, p->bias + n0 + 16) : _mm512_setzero_ps();
    int r, h, e;
    ptrdiff_t b, q;
    for (r = 0; r < R; r++) {
        a[r] = p->a + (m0 + r) * p->lda;
        y[r][0] = b_lo;
        y[r][1] = b_hi;
    }
    for (b = 0; b < kb; b++) {
        ptrdiff_t k0 = b * p->block, k1 = k0 + p->block < K ? k0 + p->block : K;
        ptrdiff_t q0 = k0 / 2, q1 = k1 / 2;          /* whole pairs; an odd K's last k after */
        __m512 acc[NRT_NB_DIRECT_MR][2][2];
        for (r = 0; r < R; r++)
            for (h = 0; h < 2; h++)
                for (e = 0; e < P; e++)
                    acc[r][h][e] = _mm512_setzero_ps();
        for (q = q0; q < q1; q++) {
            const uint8_t* c = codes + q * NRT_NB_NR;
            __m512i w0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)c));
            __m512i w1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(c + 16)));
            __m512 lo0 = nrt_nb_low4(w0), hi0 = nrt_nb_low4(_mm512_srli_epi32(w0, 4));
            __m512 lo1 = nrt_nb_low4(w1), hi1 = nrt_nb_low4(_mm512_srli_epi32(w1, 4));
            for (r = 0; r < R; r++) {
                __m512 ae = _mm512_set1_ps(a[r][2 * q]), ao = _mm512_set1_ps(a[r][2 * q + 1]);
                acc[r][0][0] = _mm512_fmadd_ps(lo0, ae, acc[r][0][0]);
                acc[r][1][0] = _mm512_fmadd_ps(lo1, ae, acc[r][1][0]);
                acc[r][0][P - 1] = _mm512_fmadd_ps(hi0, ao, acc[r][0][P - 1]);
                acc[r][1][P - 1] = _mm512_fmadd_ps(hi1, ao, acc[r][1][P - 1]);
            }
        }
        if (k1 & 1) {           /* K odd, its last block: k1 - 1 alone, in a low nibble */
            const uint8_t* c = codes + q1 * NRT_NB_NR;
            __m512 lo0 = nrt_nb_low4(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)c)));
            __m512 lo1 = nrt_nb_low4(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(c + 16))));
            for (r = 0; r < R; r++) {
                __m512 ae = _mm512_set1_ps(a[r][k1 - 1]);
                acc[r][0][0] = _mm512_fmadd_ps(lo0, ae, acc[r][0][0]);
                acc[r][1][0] = _mm512_fmadd_ps(lo1, ae, acc[r][1][0]);
            }
        }
        {
            __m512 s0 = _mm512_loadu_ps(sc + b * NRT_NB_NR), s1 = _mm512_loadu_ps(sc + b * NRT_NB_NR + 16);
            __m512 z0 = zc ? _mm512_loadu_ps(zc + b * NRT_NB_NR) : _mm512_set1_ps(p->zero_default);
            __m512 z1 = zc ? _mm512_loadu_ps(zc + b * NRT_NB_NR + 16) : z0;
            for (r = 0; r < R; r++) {
                __m512 as = _mm512_set1_ps(p->asum[(m0 + r) * kb + b]);
                __m512 t0 = P == 2 ? _mm512_add_ps(acc[r][0][0], acc[r][0][P - 1]) : acc[r][0][0];
                __m512 t1 = P == 2 ? _mm512_add_ps(acc[r][1][0], acc[r][1][P - 1]) : acc[r][1][0];
                y[r][0] = _mm512_fmadd_ps(s0, _mm512_fnmadd_ps(z0, as, t0), y[r][0]);
                y[r][1] = _mm512_fmadd_ps(s1, _mm512_fnmadd_ps(z1, as, t1), y[r][1]);
            }
        }
    }
    for (r = 0; r < R; r++) {
        float* yr = p->y + (m0 + r) * p->N + n0;
        _mm512_mask_storeu_ps(yr, m_lo, y[r][0]);
        _mm512_mask_storeu_ps(yr + 16, m_hi, y[r][1]);
    }
}

/* tile t's weight (code - zero) * scale into w [K (even)][32] */
static void nrt_nb_dequantize_tile(const nrt_nb_problem* p, ptrdiff_t t, float* w)
{
    const ptrdiff_t K2 = nrt_nb_pairs(p->K), kb = p->kblocks;
    const uint8_t* codes = p->codes + t * K2 * NRT_NB_NR;
    const float* sc = p->scale + t * kb * NRT_NB_NR;
    const float* zc = p->zero ? p->zero + t * kb * NRT_NB_NR : NULL;
    ptrdiff_t b, q;
    for (b = 0; b < kb; b++) {
        ptrdiff_t q0 = b * p->block / 2, q1 = (b + 1) * p->block / 2 < K2 ? (b + 1) * p->block / 2 : K2;
        __m512 s0 = _mm512_loadu_ps(sc + b * NRT_NB_NR), s1 = _mm512_loadu_ps(sc + b * NRT_NB_NR + 16);
        __m512 z0 = zc ? _mm512_loadu_ps(zc + b * NRT_NB_NR) : _mm512_set1_ps(p->zero_default);
        __m512 z1 = zc ? _mm512_loadu_ps(zc + b * NRT_NB_NR + 16) : z0;
        for (q = q0; q < q1; q++) {
            const uint8_t* c = codes + q * NRT_NB_NR;
            float* o = w + 2 * q * NRT_NB_NR;
            __m512i w0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)c));
            __m512i w1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(c + 16)));
            _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_sub_ps(nrt_nb_low4(w0), z0), s0));
            _mm512_storeu_ps(o + 16, _mm512_mul_ps(_mm512_sub_ps(nrt_nb_low4(w1), z1), s1));
            _mm512_storeu_ps(o + 32, _mm512_mul_ps(
                _mm512_sub_ps(nrt_nb_low4(_mm512_srli_epi32(w0, 4)), z0), s0));
            _mm512_storeu_ps(o + 48, _mm512_mul_ps(
                _mm512_sub_ps(nrt_nb_low4(_mm512_srli_epi32(w1, 4)), z1), s1));
        }
    }
}

/* rows m0 .. m0 + R of tile t from its dequantized weight w [K][32] */
NRT_NB_INLINE void nrt_nb_rows_avx512(const nrt_nb_problem* p, ptrdiff_t t, const float* w, ptrdiff_t m0, const int R)
{
    const ptrdiff_t K = p->K, n0 = t * NRT_NB_NR;
    const __mmask16 m_lo = nrt_nb_mask(p->N - n0), m_hi = nrt_nb_mask(p->N - n0 - 16);
    const float* a = p->a + m0 * p->lda;
    const ptrdiff_t lda = p->lda;
    __m512 acc[NRT_NB_MR][2];
    int r;
    ptrdiff_t k;
    for (r = 0; r < R; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (k = 0; k < K; k++) {
        __m512 w0 = _mm512_loadu_ps(w + k * NRT_NB_NR), w1 = _mm512_loadu_ps(w + k * NRT_NB_NR + 16);
        for (r = 0; r < R; r++) {
            __m512 av = _mm512_set1_ps(a[r * lda + k]);
            acc[r][0] = _mm512_fmadd_ps(w0, av, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(w1, av, acc[r][1]);
        }
    }
    {
        __m512 b_lo = p->bias ? _mm512_maskz_loadu_ps(m_lo, p->bias + n0) : _mm512_setzero_ps();
        __m512 b_hi = p->bias ? _mm512_maskz_loadu_ps(m_hi, p->bias + n0 + 16) : _mm512_setzero_ps();
        for (r = 0; r < R; r++) {
            float* yr = p->y + (m0 + r) * p->N + n0;
            _mm512_mask_storeu_ps(yr, m_lo, _mm512_add_ps(acc[r][0], b_lo));
            _mm512_mask_storeu_ps(yr + 16, m_hi, _mm512_add_ps(acc[r][1], b_hi));
        }
    }
}

static void nrt_nb_direct_tile(const nrt_nb_problem* p, ptrdiff_t t)
{
    ptrdiff_t m0 = 0;
    for (; m0 + 4 <= p->M; m0 += 4)
        nrt_nb_direct_avx512(p, t, m0, 4);
    switch (p->M - m0) {
    case 3: nrt_nb_direct_avx512(p, t, m0, 3); break;
    case 2: nrt_nb_direct_avx512(p, t, m0, 2); break;
    case 1: nrt_nb_direct_avx512(p, t, m0, 1); break;
    default: break;
    }
}

static void nrt_nb_scratch_tile(const nrt_nb_problem* p, ptrdiff_t t, float* w)
{
    ptrdiff_t m0 = 0;
    nrt_nb_dequantize_tile(p, t, w);
    for (; m0 + NRT_NB_MR <= p->M; m0 += NRT_NB_MR)
        nrt_nb_rows_avx512(p, t, w, m0, NRT_NB_MR);
    switch (p->M - m0) {
    case 5: nrt_nb_rows_avx512(p, t, w, m0, 5); break;
    case 4: nrt_nb_rows_avx512(p, t, w, m0, 4); break;
    case 3: nrt_nb_rows_avx512(p, t, w, m0, 3); break;
    case 2: nrt_nb_rows_avx512(p, t, w, m0, 2); break;
    case 1: nrt_nb_rows_avx512(p, t, w, m0, 1); break;
    default: break;
    }
}

/* ---------------- portable C ---------------- */
#else

static void nrt_nb_direct_tile(const nrt_nb_problem* p, ptrdiff_t t)
{
    const ptrdiff_t K = p->K, K2 = nrt_nb_pairs(K), kb = p->kblocks, n0 = t * NRT_NB_NR;
    const ptrdiff_t nv = p->N - n0 < NRT_NB_NR ? p->N - n0 : NRT_NB_NR;
    const uint8_t* codes = p->codes + t * K2 * NRT_NB_NR;
    const float* sc = p->scale + t * kb * NRT_NB_NR;
    const float* zc = p->zero ? p->zero + t * kb * NRT_NB_NR : NULL;
    float y[NRT_NB_NR], acc[NRT_NB_NR], lo[NRT_NB_NR], hi[NRT_NB_NR];
    ptrdiff_t m, b, q, j;
    for (m = 0; m < p->M; m++) {
        const float* a = p->a + m * p->lda;
        for (j = 0; j < NRT_NB_NR; j++)
            y[j] = p->bias && j < nv ? p->bias[n0 + j] : 0.0f;
        for (b = 0; b < kb; b++) {
            ptrdiff_t k0 = b * p->block, k1 = k0 + p->block < K ? k0 + p->block : K;
            float as = p->asum[m * kb + b];
            for (j = 0; j < NRT_NB_NR; j++)
                acc[j] = 0.0f;
            for (q = k0 / 2; q < k1 / 2; q++) {
                const uint8_t* c = codes + q * NRT_NB_NR;
                float ae = a[2 * q], ao = a[2 * q + 1];
                for (j = 0; j < NRT_NB_NR; j++) {
                    lo[j] = (float)(c[j] & 15);
                    hi[j] = (float)(c[j] >> 4);
                }
                for (j = 0; j < NRT_NB_NR; j++)
                    acc[j] = acc[j] + lo[j] * ae + hi[j] * ao;
            }
            if (k1 & 1) {
                const uint8_t* c = codes + (k1 / 2) * NRT_NB_NR;
                float ae = a[k1 - 1];
                for (j = 0; j < NRT_NB_NR; j++)
                    acc[j] = acc[j] + (float)(c[j] & 15) * ae;
            }
            for (j = 0; j < NRT_NB_NR; j++) {
                float z = zc ? zc[b * NRT_NB_NR + j] : p->zero_default;
                y[j] = y[j] + sc[b * NRT_NB_NR + j] * (acc[j] - z * as);
            }
        }
        memcpy(p->y + m * p->N + n0, y, nv * sizeof(float));
    }
}

static void nrt_nb_scratch_tile(const nrt_nb_problem* p, ptrdiff_t t, float* w)
{
    const ptrdiff_t K = p->K, K2 = nrt_nb_pairs(K), kb = p->kblocks, n0 = t * NRT_NB_NR;
    const ptrdiff_t nv = p->N - n0 < NRT_NB_NR ? p->N - n0 : NRT_NB_NR;
    const uint8_t* codes = p->codes + t * K2 * NRT_NB_NR;
    const float* sc = p->scale + t * kb * NRT_NB_NR;
    const float* zc = p->zero ? p->zero + t * kb * NRT_NB_NR : NULL;
    float acc[4][NRT_NB_NR];
    ptrdiff_t m, m1, r, b, q, j, k;
    for (b = 0; b < kb; b++) {
        ptrdiff_t q1 = (b + 1) * p->block / 2 < K2 ? (b + 1) * p->block / 2 : K2;
        const float* s = sc + b * NRT_NB_NR;
        float z[NRT_NB_NR];
        for (j = 0; j < NRT_NB_NR; j++)
            z[j] = zc ? zc[b * NRT_NB_NR + j] : p->zero_default;
        for (q = b * p->block / 2; q < q1; q++) {
            const uint8_t* c = codes + q * NRT_NB_NR;
            float* o = w + 2 * q * NRT_NB_NR;
            for (j = 0; j < NRT_NB_NR; j++) {
                o[j] = ((float)(c[j] & 15) - z[j]) * s[j];
                o[NRT_NB_NR + j] = ((float)(c[j] >> 4) - z[j]) * s[j];
            }
        }
    }
    /* four rows at a time: each weight row loaded once for them */
    for (m = 0; m < p->M; m = m1) {
        m1 = m + 4 < p->M ? m + 4 : p->M;
        for (r = 0; r < m1 - m; r++)
            for (j = 0; j < NRT_NB_NR; j++)
                acc[r][j] = 0.0f;
        for (k = 0; k < K; k++) {
            const float* wk = w + k * NRT_NB_NR;
            for (r = 0; r < m1 - m; r++) {
                float av = p->a[(m + r) * p->lda + k];
                for (j = 0; j < NRT_NB_NR; j++)
                    acc[r][j] = acc[r][j] + wk[j] * av;
            }
        }
        for (r = 0; r < m1 - m; r++) {
            float* yr = p->y + (m + r) * p->N + n0;
            for (j = 0; j < nv; j++)
                yr[j] = acc[r][j] + (p->bias ? p->bias[n0 + j] : 0.0f);
        }
    }
}

#endif

/* ---------------- the integer path (accuracy_level 4) ----------------

   onnxruntime's CompInt8 arithmetic (MLAS sqnbitgemm, QuantizeARow_CompInt8): each row of A is
   quantized per block of K, symmetric, amax = max |a| over the block,
       ascale = amax / 127,   code = round_half_even(a * (127 / amax))   (0 when amax is 0),
   with 127 / amax computed as one division, as MLAS does (1 / ascale can differ by an ulp and
   move a code at a half). Then per block
       y += (ascale * scale) * (sum_k code_a * code_w - zero * sum_k code_a),
   the two sums exact in int32 (|code_a * code_w| <= 127 * 15, block <= 256), and their difference
   exact in float32 for an integer zero point (|.| < 2^24): the result depends on no summation
   order, so not on the thread count. A row holding a NaN gets a NaN scale and zero codes: NaN in
   every column of its row, no other row touched (MLAS's own max drops or keeps a NaN depending
   on its lane; its codes for a NaN are 0 too).

   vpdpbusd multiplies 4 consecutive k of 16 columns (one int32 lane each: unsigned weight codes
   times signed A codes). The packed tile holds, per pair q, one byte per column: pairs q and
   q + 1 (64 contiguous bytes) are 4 consecutive k of 32 columns. A vpermb interleaves them into
   one 16-bit word per column (pair q's byte, then pair q + 1's), the nibbles split with a shift and
   two ands, and vpunpck{l,h}bw of (low nibbles, high nibbles) makes each column's word
   k, k+1, k+2, k+3 - the vpdpbusd layout, from the float path's own codes: one layout for both
   paths (prompts keep the float path) and nothing repacked at load. */

static void nrt_nb_quantize_rows(const nrt_nb_problem* p, ptrdiff_t r0, ptrdiff_t r1, int8_t* aq, float* ascale,
                                 int32_t* qsum)
{
    ptrdiff_t m, b, k;
    for (m = r0; m < r1; m++) {
        const float* a = p->a + m * p->lda;
        int8_t* q = aq + m * p->ldq;
        for (b = 0; b < p->kblocks; b++) {
            ptrdiff_t k0 = b * p->block, k1 = k0 + p->block < p->K ? k0 + p->block : p->K;
            float amax = 0.0f, inv;
            int nan = 0;
            int32_t sum = 0;
            for (k = k0; k < k1; k++) {
                float v = fabsf(a[k]);
                nan |= v != v;
                amax = v > amax ? v : amax;
            }
            if (nan)
                amax = NAN;
            inv = amax != 0.0f && !nan ? 127.0f / amax : 0.0f;
            for (k = k0; k < k1; k++) {
                float v = nearbyintf(a[k] * inv);
                /* a NaN (or an inf, times 0) codes as 0; |a * inv| <= 127 otherwise */
                int32_t c = v == v && v <= 127.0f && v >= -127.0f ? (int32_t)v : 0;
                q[k] = (int8_t)c;
                sum += c;
            }
            for (; k < k0 + p->block; k++)
                q[k] = 0;
            ascale[m * p->kblocks + b] = amax / 127.0f;
            qsum[m * p->kblocks + b] = sum;
        }
    }
}

#if NRT_NB_HAVE_INT8

#define NRT_NB_INT8_INLINE static inline __attribute__((always_inline)) NRT_NB_INT8_TARGET

/* vpermb's index: destination lane L (16 bytes) = the words (pair q byte, pair q + 1 byte) of
   columns 4L .. 4L + 3 then of 16 + 4L .. 16 + 4L + 3, so that vpunpcklbw gives columns 0..15 and
   vpunpckhbw 16..31, in order */
NRT_NB_INT8_INLINE __m512i nrt_nb_int8_perm(void)
{
    uint8_t idx[64];
    int d;
    for (d = 0; d < 64; d++) {
        int lane = d / 16, i = d % 16, col = (i / 8) * 16 + 4 * lane + (i % 8) / 2;
        idx[d] = (uint8_t)(i % 2 ? 32 + col : col);
    }
    return _mm512_loadu_si512((const void*)idx);
}

/* rows m0 .. m0 + R of tile t, integer path. R a constant at each call. */
NRT_NB_INT8_INLINE void nrt_nb_int8_rows(const nrt_nb_problem* p, ptrdiff_t t, ptrdiff_t m0, const int R)
{
    const ptrdiff_t K = p->K, K2 = nrt_nb_pairs(K), kb = p->kblocks, n0 = t * NRT_NB_NR;
    const uint8_t* codes = p->codes + t * K2 * NRT_NB_NR;
    const float* sc = p->scale + t * kb * NRT_NB_NR;
    const float* zc = p->zero ? p->zero + t * kb * NRT_NB_NR : NULL;
    const __mmask16 m_lo = nrt_nb_mask(p->N - n0), m_hi = nrt_nb_mask(p->N - n0 - 16);
    const __m512i perm = nrt_nb_int8_perm(), nib = _mm512_set1_epi8(15);
    const int8_t* a[NRT_NB_DIRECT_MR];
    __m512 y[NRT_NB_DIRECT_MR][2];
    __m512 b_lo = p->bias ? _mm512_maskz_loadu_ps(m_lo, p->bias + n0) : _mm512_setzero_ps();
    __m512 b_hi = p->bias ? _mm512_maskz_loadu_ps(m_hi, p->bias + n0 + 16) : _mm512_setzero_ps();
    int r;
    ptrdiff_t b, g;
    for (r = 0; r < R; r++) {
        a[r] = p->aq + (m0 + r) * p->ldq;
        y[r][0] = b_lo;
        y[r][1] = b_hi;
    }
    for (b = 0; b < kb; b++) {
        ptrdiff_t k0 = b * p->block, k1 = k0 + p->block < K ? k0 + p->block : K;
        __m512i acc[NRT_NB_DIRECT_MR][2];
        for (r = 0; r < R; r++)
            acc[r][0] = acc[r][1] = _mm512_setzero_si512();
        /* groups of 4 k; the last may run past K (A's codes are 0 there). Its second pair
           exists unless K2 is odd: then only pair q is loaded (the tile's end, or the buffer's) */
        for (g = k0 / 4; g < (k1 + 3) / 4; g++) {
            const uint8_t* c = codes + 2 * g * NRT_NB_NR;
            __m512i x = 2 * g + 1 < K2 ? _mm512_loadu_si512((const void*)c)
                                       : _mm512_maskz_loadu_epi8((__mmask64)0xFFFFFFFFull, c);
            __m512i lo, hi, w0, w1;
            x = _mm512_permutexvar_epi8(perm, x);
            lo = _mm512_and_si512(x, nib);
            hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), nib);
            w0 = _mm512_unpacklo_epi8(lo, hi);
            w1 = _mm512_unpackhi_epi8(lo, hi);
            for (r = 0; r < R; r++) {
                int32_t word;
                __m512i av;
                memcpy(&word, a[r] + 4 * g, 4);
                av = _mm512_set1_epi32(word);
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w0, av);
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], w1, av);
            }
        }
        {
            __m512 s0 = _mm512_loadu_ps(sc + b * NRT_NB_NR), s1 = _mm512_loadu_ps(sc + b * NRT_NB_NR + 16);
            __m512 z0 = zc ? _mm512_loadu_ps(zc + b * NRT_NB_NR) : _mm512_set1_ps(p->zero_default);
            __m512 z1 = zc ? _mm512_loadu_ps(zc + b * NRT_NB_NR + 16) : z0;
            for (r = 0; r < R; r++) {
                ptrdiff_t i = (m0 + r) * kb + b;
                __m512 as = _mm512_set1_ps(p->ascale[i]), qs = _mm512_set1_ps((float)p->qsum[i]);
                __m512 t0 = _mm512_fnmadd_ps(z0, qs, _mm512_cvtepi32_ps(acc[r][0]));
                __m512 t1 = _mm512_fnmadd_ps(z1, qs, _mm512_cvtepi32_ps(acc[r][1]));
                y[r][0] = _mm512_fmadd_ps(_mm512_mul_ps(as, s0), t0, y[r][0]);
                y[r][1] = _mm512_fmadd_ps(_mm512_mul_ps(as, s1), t1, y[r][1]);
            }
        }
    }
    for (r = 0; r < R; r++) {
        float* yr = p->y + (m0 + r) * p->N + n0;
        _mm512_mask_storeu_ps(yr, m_lo, y[r][0]);
        _mm512_mask_storeu_ps(yr + 16, m_hi, y[r][1]);
    }
}

static NRT_NB_INT8_TARGET void nrt_nb_int8_tile(const nrt_nb_problem* p, ptrdiff_t t)
{
    ptrdiff_t m0 = 0;
    for (; m0 + 4 <= p->M; m0 += 4)
        nrt_nb_int8_rows(p, t, m0, 4);
    switch (p->M - m0) {
    case 3: nrt_nb_int8_rows(p, t, m0, 3); break;
    case 2: nrt_nb_int8_rows(p, t, m0, 2); break;
    case 1: nrt_nb_int8_rows(p, t, m0, 1); break;
    default: break;
    }
}

#else

static void nrt_nb_int8_tile(const nrt_nb_problem* p, ptrdiff_t t) { (void)p; (void)t; }

#endif

/* 1 when this build and this CPU run the integer path (vpdpbusd and vpermb, the OS saving the
   AVX-512 state) */
static inline int nrt_nb_int8_available(void)
{
#if NRT_NB_HAVE_INT8
    unsigned char has[NRT_CPU_NFEATURES];
    int i, vnni = 0, vbmi = 0;
    nrt_cpu_detect(has);
    for (i = 0; i < NRT_CPU_NFEATURES; i++) {
        if (strcmp(nrt_cpu_feature_name(i), "avx512_vnni") == 0)
            vnni = has[i];
        if (strcmp(nrt_cpu_feature_name(i), "avx512vbmi") == 0)
            vbmi = has[i];
    }
    return vnni && vbmi;
#else
    return 0;
#endif
}

/* set once when the module loads (before any kernel runs or thread starts) */
static int nrt_nb_int8_on = 0;

__attribute__((constructor)) static void nrt_nb_int8_init(void) { nrt_nb_int8_on = nrt_nb_int8_available(); }

#endif
