/* Fused attention's inner loops (attention.pyx's C side): the portable key-block products and
 * the AVX-512 work item with its query rows in the vector lanes. See attention.pyx's docstring. */
#ifndef NRT_ATTENTION_KERNEL_H
#define NRT_ATTENTION_KERNEL_H

#include <stddef.h>
#include <math.h>
#define NRT_KB 64   /* keys per block */
/* query rows per work item (4 AVX-512 vectors): the (QB, KB) block of scores
   and QB rows of q and of the output stay in L1 while K and V stream from L2 */
#define NRT_QB 64

#if defined(__FMA__) || defined(__AVX512F__)
#define NRT_FMA(a, b, c) fmaf((a), (b), (c))
#else
#define NRT_FMA(a, b, c) ((a) * (b) + (c))
#endif

/* ---- portable: keys in the vector lanes, loops over contiguous columns
   that compilers vectorize (the online softmax is attention.pyx's online_softmax_rows) */

static void nrt_qk_block(const float* q, ptrdiff_t D, ptrdiff_t nr,
                         const float* kt, ptrdiff_t ldk, ptrdiff_t nk, float* s) {
    ptrdiff_t r, c, d;
    for (r = 0; r < nr; r++) {
        float* s0 = s + r * NRT_KB;
        for (c = 0; c < NRT_KB; c++)
            s0[c] = 0.0f;
        for (d = 0; d < D; d++) {
            const float* kd = kt + d * ldk;
            float b = q[r * D + d];
            for (c = 0; c < nk; c++)
                s0[c] = NRT_FMA(b, kd[c], s0[c]);
        }
    }
}

static void nrt_pv_block(const float* p, ptrdiff_t nr, ptrdiff_t nk,
                         const float* v, ptrdiff_t ldv, ptrdiff_t Dv, float* o) {
    ptrdiff_t r, c, e;
    for (r = 0; r < nr; r++) {
        float* o0 = o + r * Dv;
        for (c = 0; c < nk; c++) {
            const float* vc = v + c * ldv;
            float b = p[r * NRT_KB + c];
            for (e = 0; e < Dv; e++)
                o0[e] = NRT_FMA(b, vc[e], o0[e]);
        }
    }
}
/* ---- AVX-512: one work item with its query rows in the vector lanes */
#ifdef __AVX512F__
#include <immintrin.h>
#define NRT_HAVE_AVX512 1

static inline __mmask16 nrt_tail_mask(ptrdiff_t rem) {
    return rem >= 16 ? (__mmask16)0xFFFF : rem <= 0 ? (__mmask16)0
         : (__mmask16)((1u << rem) - 1u);
}

/* 2**x, 16 lanes: x = n + f with n = round(x), |f| <= 1/2, 2**f by a
   degree-6 polynomial fitted for least relative error on [-1/2, 1/2] (8e-8
   evaluated in float32, as good as the degree-7 Taylor series it replaced:
   with head dims of 8 the exp's FMAs are a quarter of the kernel's, and each
   one saved is ~4%), 2**n by vscalefps. 2**(x < -126) = 0 (so 2**-inf = 0); NaN stays NaN (vmaxps
   returns its second operand, x, when it is NaN). The scores are kept in
   log2 units (the queries carry scale * log2(e)), so this is the exp. */
static inline __m512 nrt_exp2_512(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-126.0f);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    __m512 xc = _mm512_max_ps(lo, x);
    __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(xc, n);
    __m512 p = _mm512_set1_ps(1.5345805149991065e-04f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3399930903688073e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618489071726799e-03f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550328642129898e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022646248340607e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471824645996e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps((__mmask16)~under, p, n);
}

/* sT[c][r] = sum_d k[c*ks + d*kd] * qT[d][r] for keys c < nk, the first 16 RV rows:
   four keys x RV row vectors of accumulators, d in order. */
static inline __attribute__((always_inline)) void
nrt_qk_t_rv(const float* qT, const float* k, ptrdiff_t ks, ptrdiff_t kd,
            ptrdiff_t D, ptrdiff_t nk, float* sT, const int RV) {
    ptrdiff_t c = 0, d;
    int kk, rv;
    for (; c + 4 <= nk; c += 4) {
        __m512 acc[4][4];
        for (kk = 0; kk < 4; kk++)
            for (rv = 0; rv < RV; rv++)
                acc[kk][rv] = _mm512_setzero_ps();
        for (d = 0; d < D; d++) {
            __m512 qv[4];
            for (rv = 0; rv < RV; rv++)
                qv[rv] = _mm512_loadu_ps(qT + d * NRT_QB + 16 * rv);
#if defined(__GNUC__)
            /* keep the query vectors in registers: folded into each FMA as a memory
               operand they cost 16 loads per 16 FMAs instead of 4 (load-bound) */
            if (RV == 4)
                __asm__("" : "+v"(qv[0]), "+v"(qv[1]), "+v"(qv[2]), "+v"(qv[3]));
#endif
            #pragma GCC unroll 4
            for (kk = 0; kk < 4; kk++) {
                __m512 b = _mm512_set1_ps(k[(c + kk) * ks + d * kd]);
                #pragma GCC unroll 4
                for (rv = 0; rv < RV; rv++)
                    acc[kk][rv] = _mm512_fmadd_ps(b, qv[rv], acc[kk][rv]);
            }
        }
        for (kk = 0; kk < 4; kk++)
            for (rv = 0; rv < RV; rv++)
                _mm512_storeu_ps(sT + (c + kk) * NRT_QB + 16 * rv, acc[kk][rv]);
    }
    for (; c < nk; c++) {
        __m512 acc[4];
        for (rv = 0; rv < RV; rv++)
            acc[rv] = _mm512_setzero_ps();
        for (d = 0; d < D; d++) {
            __m512 b = _mm512_set1_ps(k[c * ks + d * kd]);
            for (rv = 0; rv < RV; rv++)
                acc[rv] = _mm512_fmadd_ps(b, _mm512_loadu_ps(qT + d * NRT_QB + 16 * rv), acc[rv]);
        }
        for (rv = 0; rv < RV; rv++)
            _mm512_storeu_ps(sT + c * NRT_QB + 16 * rv, acc[rv]);
    }
}

/* oT[e][r] = oT[e][r] * alpha[r] + sum_{c < nk} v[c*vs + e] * pT[c][r], for
   the value columns [e0, e0 + NE) and the NV (1 or 2) row vectors from row
   16 * v0: NE x NV vectors of accumulators, c in order. */
static inline __attribute__((always_inline)) void
nrt_pv_t_cols(const float* pT, const float* v, ptrdiff_t vs, ptrdiff_t nk, const float* alpha,
              float* oT, ptrdiff_t e0, int v0, const int NE, const int NV) {
    __m512 acc[8][2], a[2];
    ptrdiff_t c;
    int ee, j;
    for (j = 0; j < NV; j++)
        a[j] = _mm512_loadu_ps(alpha + 16 * (v0 + j));
    for (ee = 0; ee < NE; ee++)
        for (j = 0; j < NV; j++)
            acc[ee][j] = _mm512_mul_ps(_mm512_loadu_ps(oT + (e0 + ee) * NRT_QB + 16 * (v0 + j)), a[j]);
    for (c = 0; c < nk; c++) {
        __m512 p[2];
        for (j = 0; j < NV; j++)
            p[j] = _mm512_loadu_ps(pT + c * NRT_QB + 16 * (v0 + j));
        const float* vc = v + c * vs + e0;
        #pragma GCC unroll 8
        for (ee = 0; ee < NE; ee++) {
            __m512 b = _mm512_set1_ps(vc[ee]);
            for (j = 0; j < NV; j++)
                acc[ee][j] = _mm512_fmadd_ps(b, p[j], acc[ee][j]);
        }
    }
    for (ee = 0; ee < NE; ee++)
        for (j = 0; j < NV; j++)
            _mm512_storeu_ps(oT + (e0 + ee) * NRT_QB + 16 * (v0 + j), acc[ee][j]);
}

/* the value columns of one key block for row vectors [v0, v0 + NV) */
static inline __attribute__((always_inline)) void
nrt_pv_t(const float* pT, const float* v, ptrdiff_t vs, ptrdiff_t nk, const float* alpha,
         float* oT, ptrdiff_t Dv, int v0, const int NV) {
    ptrdiff_t e = 0;
    for (; e + 8 <= Dv; e += 8)
        nrt_pv_t_cols(pT, v, vs, nk, alpha, oT, e, v0, 8, NV);
    for (; e < Dv; e++)
        nrt_pv_t_cols(pT, v, vs, nk, alpha, oT, e, v0, 1, NV);
}

/* the 16x16 block t[0..15] (rows) transposed in registers: t[k] becomes column k */
static inline __attribute__((always_inline)) void nrt_transpose16(__m512* t) {
    __m512 u[16];
    int i;
    for (i = 0; i < 16; i += 2) {           /* interleave pairs of rows */
        u[i] = _mm512_unpacklo_ps(t[i], t[i + 1]);
        u[i + 1] = _mm512_unpackhi_ps(t[i], t[i + 1]);
    }
    for (i = 0; i < 16; i += 4) {           /* then pairs of pairs: 4x4 blocks per 128-bit lane */
        t[i] = _mm512_shuffle_ps(u[i], u[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        t[i + 1] = _mm512_shuffle_ps(u[i], u[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        t[i + 2] = _mm512_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        t[i + 3] = _mm512_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (i = 0; i < 4; i++) {               /* then the 128-bit lanes of rows i, i+4, i+8, i+12 */
        __m512 a = _mm512_shuffle_f32x4(t[i], t[i + 4], 0x88);
        __m512 b = _mm512_shuffle_f32x4(t[i], t[i + 4], 0xdd);
        __m512 c = _mm512_shuffle_f32x4(t[i + 8], t[i + 12], 0x88);
        __m512 d = _mm512_shuffle_f32x4(t[i + 8], t[i + 12], 0xdd);
        u[i] = _mm512_shuffle_f32x4(a, c, 0x88);
        u[i + 4] = _mm512_shuffle_f32x4(b, d, 0x88);
        u[i + 8] = _mm512_shuffle_f32x4(a, c, 0xdd);
        u[i + 12] = _mm512_shuffle_f32x4(b, d, 0xdd);
    }
    for (i = 0; i < 16; i++)
        t[i] = u[i];
}

/* Whether the bias hides every key of a block from every row of the item (-inf throughout:
   the padded keys of a batch's shorter sequences, a window's far keys). Such a block adds
   nothing to any row (its weights are exp(-inf) = 0, its max never wins), so it is skipped:
   no products. (So a NaN in the value of a key hidden with its whole block stays out of the
   output, where a partly hidden block's 0 * NaN lets it in, as the dense formula does.) */
static inline int nrt_bias_block_hidden(const float* bias, ptrdiff_t brs, ptrdiff_t nr, ptrdiff_t nk) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    ptrdiff_t r, c;
    for (r = 0; r < (brs ? nr : 1); r++)
        for (c = 0; c < nk; c += 16) {
            __mmask16 m = nrt_tail_mask(nk - c);
            __m512 b = _mm512_maskz_loadu_ps(m, bias + r * brs + c);
            if (_mm512_mask_cmp_ps_mask(m, b, ninf, _CMP_NEQ_UQ))
                return 0;
        }
    return 1;
}

/* bias * log2(e), the bias in the scores' log2 units, saturated: a finite bias whose product
   overflows (torch's finfo.min masks, -3.4e38 * 1.44) gives -FLT_MAX, not -inf, so a row every
   key of which such a mask hides keeps equal weights on its keys, as softmax(S + finfo.min) does
   (S is absorbed: S + min == min) and as the portable path (natural units) does; -inf stays
   -inf (a hidden key), NaN stays NaN. */
static inline __m512 nrt_bias_log2(__m512 b) {
    const __m512 p = _mm512_mul_ps(b, _mm512_set1_ps(1.4426950408889634f));
    return _mm512_mask_max_ps(p, _mm512_cmp_ps_mask(b, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ), p,
                              _mm512_set1_ps(-3.4028234663852886e38f));
}

/* sT[c][r] += bias[r * brs + c] * log2(e) for keys c < nk, rows r < nr (lanes past nr keep
   their scores: they are never written out). Each element rounds the product, then the sum
   (no contraction), as the scalar loop this replaced, whichever branch runs. brs == 0 (one
   bias row for every query: a padding mask) broadcasts each key's value; otherwise 16x16
   tiles of bias rows are transposed in registers so the rows land in the lanes, where the
   scores hold them (a scalar loop over rows reads the bias with a stride of a row: ~10% of
   BERT-sized attention, 50% at head dim 32). */
static inline __attribute__((always_inline)) void
nrt_add_bias_t(float* sT, const float* bias, ptrdiff_t brs, ptrdiff_t nr, ptrdiff_t nk, const int RV) {
    ptrdiff_t c, c0;
    int rv, kk, r;
    if (brs == 0) {
        for (c = 0; c < nk; c++) {
            __m512 b = nrt_bias_log2(_mm512_set1_ps(bias[c]));
            for (rv = 0; rv < RV; rv++) {
                float* sp = sT + c * NRT_QB + 16 * rv;
                _mm512_storeu_ps(sp, _mm512_add_ps(_mm512_loadu_ps(sp), b));
            }
        }
        return;
    }
    for (rv = 0; rv < RV && 16 * rv < nr; rv++) {
        ptrdiff_t rows = nr - 16 * rv < 16 ? nr - 16 * rv : 16;
        __mmask16 live = nrt_tail_mask(rows);
        for (c0 = 0; c0 < nk; c0 += 16) {
            __m512 t[16];
            __mmask16 keys = nrt_tail_mask(nk - c0);
            int n = nk - c0 < 16 ? (int)(nk - c0) : 16;
            for (r = 0; r < 16; r++)
                t[r] = r < rows ? _mm512_maskz_loadu_ps(keys, bias + (16 * rv + r) * brs + c0)
                                : _mm512_setzero_ps();
            nrt_transpose16(t);
            for (kk = 0; kk < n; kk++) {
                float* sp = sT + (c0 + kk) * NRT_QB + 16 * rv;
                __m512 s = _mm512_loadu_ps(sp);
                _mm512_storeu_ps(sp, _mm512_mask_add_ps(s, live, s, nrt_bias_log2(t[kk])));
            }
        }
    }
}

/* One work item: out rows [i0, i0 + nr) (nr <= QB) of one head.
   q: (nr, D) rows qs apart; k: (Skv, D), key j's element d at k[j*ks + d*kd];
   v: (Skv, Dv) rows vs apart (of the kv head); bias: the (row i0, key 0)
   entry of the head's bias rows (NULL: none), rows bias_row_stride apart;
   out: (nr, Dv) rows os apart. Strides in floats; the rows of q, v, out are
   contiguous. work: QB*(D + KB + Dv + 3) floats.
   Lanes past nr hold zero queries and are never written out. */
static inline __attribute__((always_inline)) void
nrt_attention_rows_rv(const float* q, ptrdiff_t qs, const float* k, ptrdiff_t ks,
                      ptrdiff_t kd, const float* v, ptrdiff_t vs,
                      const float* bias, ptrdiff_t bias_row_stride, float* out, ptrdiff_t os,
                      ptrdiff_t nr, ptrdiff_t D, ptrdiff_t Skv, ptrdiff_t Dv,
                      float scale, int causal, ptrdiff_t i0, float* work, const int RV) {
    float* qT = work;                       /* (D, QB) scaled queries */
    float* sT = qT + D * NRT_QB;            /* (KB, QB) scores, then probabilities */
    float* oT = sT + NRT_KB * NRT_QB;       /* (Dv, QB) unnormalized output */
    float* mrow = oT + Dv * NRT_QB;         /* (QB) running max */
    float* lrow = mrow + NRT_QB;            /* (QB) running sum */
    float* alpha = lrow + NRT_QB;           /* (QB) this block's rescaling */
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const float log2e = 1.4426950408889634f;
    const float scale2 = scale * log2e;     /* scores in log2 units: exp(s) = 2**(s log2 e) */
    ptrdiff_t r, d, e, c, j0, jend, nk;
    int rv;
    for (d = 0; d < D; d++)
        for (r = 0; r < 16 * RV; r++)       /* only the lanes of the RV row vectors are read */
            qT[d * NRT_QB + r] = r < nr ? q[r * qs + d] * scale2 : 0.0f;
    for (r = 0; r < NRT_QB; r++) {
        mrow[r] = -INFINITY;
        lrow[r] = 0.0f;
    }
    for (e = 0; e < Dv * NRT_QB; e++)
        oT[e] = 0.0f;
    jend = Skv;
    if (causal && i0 + nr < jend)
        jend = i0 + nr;                     /* later keys are masked for every row here */
    for (j0 = 0; j0 < jend; j0 += NRT_KB) {
        nk = jend - j0 < NRT_KB ? jend - j0 : NRT_KB;
        if (bias && nrt_bias_block_hidden(bias + j0, bias_row_stride, nr, nk))
            continue;
        nrt_qk_t_rv(qT, k + j0 * ks, ks, kd, D, nk, sT, RV);
        if (bias)
            nrt_add_bias_t(sT, bias + j0, bias_row_stride, nr, nk, RV);
        if (causal && j0 + nk - 1 > i0) {
            /* key j0 + c is visible to row i0 + r iff j0 + c <= i0 + r */
            for (c = 0; c < nk; c++)
                for (rv = 0; rv < RV; rv++) {
                    ptrdiff_t first = j0 + c - i0 - 16 * rv;   /* first visible lane */
                    if (first <= 0)
                        continue;
                    __mmask16 hidden = nrt_tail_mask(first);
                    float* sp = sT + c * NRT_QB + 16 * rv;
                    _mm512_storeu_ps(sp, _mm512_mask_mov_ps(_mm512_loadu_ps(sp), hidden, ninf));
                }
        }
        for (rv = 0; rv < RV; rv++) {
            /* the block's max per row (vmaxps(s, mx) keeps mx over a NaN s: the
               NaN then poisons the row through exp), the new running max */
            __m512 mx = _mm512_loadu_ps(mrow + 16 * rv);
            for (c = 0; c < nk; c++)
                mx = _mm512_max_ps(_mm512_loadu_ps(sT + c * NRT_QB + 16 * rv), mx);
            __m512 mold = _mm512_loadu_ps(mrow + 16 * rv);
            /* rows that saw no key yet shift by 0: exp(-inf - 0) = 0 */
            __m512 shift = _mm512_mask_mov_ps(mx, _mm512_cmp_ps_mask(mx, ninf, _CMP_EQ_OQ),
                                              _mm512_setzero_ps());
            __m512 sum = _mm512_setzero_ps();
            for (c = 0; c < nk; c++) {
                float* sp = sT + c * NRT_QB + 16 * rv;
                __m512 p = nrt_exp2_512(_mm512_sub_ps(_mm512_loadu_ps(sp), shift));
                _mm512_storeu_ps(sp, p);
                sum = _mm512_add_ps(sum, p);
            }
            __m512 a = nrt_exp2_512(_mm512_sub_ps(mold, shift));   /* 0 while mold = -inf */
            _mm512_storeu_ps(alpha + 16 * rv, a);
            _mm512_storeu_ps(lrow + 16 * rv, _mm512_fmadd_ps(_mm512_loadu_ps(lrow + 16 * rv), a, sum));
            _mm512_storeu_ps(mrow + 16 * rv, mx);
        }
        nrt_pv_t(sT, v + j0 * vs, vs, nk, alpha, oT, Dv, 0, RV < 2 ? RV : 2);
        if (RV > 2)
            nrt_pv_t(sT, v + j0 * vs, vs, nk, alpha, oT, Dv, 2, RV - 2);
    }
    for (r = 0; r < nr; r++) {
        /* a row that saw no key (fully masked) attends to nothing: zeros */
        float inv = lrow[r] != 0.0f ? 1.0f / lrow[r] : 0.0f;
        for (e = 0; e < Dv; e++)
            out[r * os + e] = oT[e * NRT_QB + r] * inv;
    }
}

/* One work item: as many row vectors as its rows need (a short sequence, or the
   last item of one, e.g. row 65 of ViT's 65, would otherwise compute all 64 lanes).
   Each lane's arithmetic is the same whatever the vector count. */
static void nrt_attention_rows(const float* q, ptrdiff_t qs, const float* k, ptrdiff_t ks,
                               ptrdiff_t kd, const float* v, ptrdiff_t vs,
                               const float* bias, ptrdiff_t bias_row_stride, float* out, ptrdiff_t os,
                               ptrdiff_t nr, ptrdiff_t D, ptrdiff_t Skv, ptrdiff_t Dv,
                               float scale, int causal, ptrdiff_t i0, float* work) {
    if (nr <= 16)
        nrt_attention_rows_rv(q, qs, k, ks, kd, v, vs, bias, bias_row_stride, out, os, nr, D, Skv, Dv,
                              scale, causal, i0, work, 1);
    else if (nr <= 32)
        nrt_attention_rows_rv(q, qs, k, ks, kd, v, vs, bias, bias_row_stride, out, os, nr, D, Skv, Dv,
                              scale, causal, i0, work, 2);
    else if (nr <= 48)
        nrt_attention_rows_rv(q, qs, k, ks, kd, v, vs, bias, bias_row_stride, out, os, nr, D, Skv, Dv,
                              scale, causal, i0, work, 3);
    else
        nrt_attention_rows_rv(q, qs, k, ks, kd, v, vs, bias, bias_row_stride, out, os, nr, D, Skv, Dv,
                              scale, causal, i0, work, 4);
}

/* ---- AVX-512, a few query rows (a decode step: one new token per head, or a KV head's query
   heads as its rows): the keys in the vector lanes. With the rows in the lanes (above) such an
   item fills 1 to 4 lanes of 16 and does the work of 16 rows: a (1, 16, 1, 64) decode step
   against 1024 cached keys took 1.1 ms. Here each block of 16 keys costs, per row, D/16 FMAs a
   key for the scores (16 dot products whose partial vectors nrt_hsum16 folds into one vector of
   16 scores), one exp vector, and Dv/16 FMAs a key for the output. The arithmetic of a row is
   fixed by D, Dv and the keys, never by the thread that runs it. */
#define NRT_FEW_ROWS 4

/* lane c = the sum of a[c]'s 16 lanes, c < 16, in a fixed tree (a is overwritten) */
static inline __m512 nrt_hsum16(__m512* a) {
    int i;
    /* pairs interleaved: per 128-bit lane (x0 + x2, y0 + y2, x1 + x3, y1 + y3) */
    for (i = 0; i < 8; i++)
        a[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    /* fours: per 128-bit lane the lane's sum of each of 4 vectors */
    for (i = 0; i < 4; i++)
        a[i] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* the four 128-bit lanes summed: block g of the result holds vectors 4g .. 4g + 3 */
    __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(a[0], a[1], _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(a[0], a[1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(a[2], a[3], _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(a[2], a[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w01, w23, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* One work item of NR <= NRT_FEW_ROWS rows, arguments as nrt_attention_rows'. work:
   NR * (D16 + Dv16 + 16) + 16 * D16 floats (D16, Dv16: D, Dv rounded up to 16). Keys whose
   elements are not contiguous (kd != 1: K^T's view) are copied a block at a time into the last
   16 * D16 floats first, so every layout runs the very same arithmetic.
   NR and the 16 keys of a block are constants of the loops, so the accumulators stay in
   registers; a block's keys past nk are read as zeros through the load masks. */
static inline __attribute__((always_inline)) void
nrt_attention_few_rows_nr(const float* q, ptrdiff_t qs, const float* k, ptrdiff_t ks, ptrdiff_t kd,
                          const float* v, ptrdiff_t vs, const float* bias, ptrdiff_t bias_row_stride,
                          float* out, ptrdiff_t os, ptrdiff_t D, ptrdiff_t Skv, ptrdiff_t Dv,
                          float scale, int causal, ptrdiff_t i0, float* work, const int NR) {
    const ptrdiff_t D16 = (D + 15) & ~(ptrdiff_t)15, V16 = (Dv + 15) & ~(ptrdiff_t)15;
    float* qw = work;                   /* (NR, D16) scaled queries, zero past D */
    float* ow = qw + NR * D16;          /* (NR, V16) unnormalized output */
    float* pw = ow + NR * V16;          /* (NR, 16) this block's probabilities */
    float* kw = pw + NR * 16;           /* (16, D16) a block of K^T's keys as rows */
    float mrow[NRT_FEW_ROWS], lrow[NRT_FEW_ROWS], alpha[NRT_FEW_ROWS];
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const float scale2 = scale * 1.4426950408889634f;    /* scores in log2 units, as above */
    ptrdiff_t d, e, j0, jend, nk;
    int r, c;
    for (r = 0; r < NR; r++) {
        for (d = 0; d < D16; d++)
            qw[r * D16 + d] = d < D ? q[r * qs + d] * scale2 : 0.0f;
        for (e = 0; e < V16; e++)
            ow[r * V16 + e] = 0.0f;
        mrow[r] = -INFINITY;
        lrow[r] = 0.0f;
    }
    jend = Skv;
    if (causal && i0 + NR < jend)
        jend = i0 + NR;                 /* later keys are masked for every row here */
    for (j0 = 0; j0 < jend; j0 += 16) {
        nk = jend - j0 < 16 ? jend - j0 : 16;
        const __mmask16 keys = nrt_tail_mask(nk);
        if (bias && nrt_bias_block_hidden(bias + j0, bias_row_stride, NR, nk))
            continue;
        const float* kb = k + j0 * ks;
        ptrdiff_t kbs = ks;
        if (kd != 1 && D > 1) {
            for (c = 0; c < nk; c++)
                for (d = 0; d < D; d++)
                    kw[c * D16 + d] = kb[c * ks + d * kd];
            kb = kw;
            kbs = D16;
        }
        for (r = 0; r < NR; r++) {
            __m512 acc[16];
            for (c = 0; c < 16; c++)
                acc[c] = _mm512_setzero_ps();
            for (d = 0; d < D16; d += 16) {
                const __mmask16 dm = nrt_tail_mask(D - d);
                const __m512 qv = _mm512_loadu_ps(qw + r * D16 + d);
                for (c = 0; c < 16; c++)
                    acc[c] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(c < nk ? dm : 0, kb + c * kbs + d), acc[c]);
            }
            __m512 sc = nrt_hsum16(acc);
            if (bias)
                sc = _mm512_add_ps(sc, nrt_bias_log2(_mm512_maskz_loadu_ps(
                    keys, bias + (bias_row_stride ? r * bias_row_stride : 0) + j0)));
            __mmask16 seen = keys;
            if (causal && j0 + nk - 1 > i0 + r)     /* key j0 + c is seen by row i0 + r iff j0 + c <= i0 + r */
                seen &= nrt_tail_mask(i0 + r - j0 + 1);
            sc = _mm512_mask_mov_ps(ninf, seen, sc);
            /* the running max: a NaN score poisons the row through exp, as above */
            float mx = _mm512_reduce_max_ps(sc);
            float mold = mrow[r];
            float mnew = mx > mold ? mx : mold;
            float shift = mnew == -INFINITY ? 0.0f : mnew;   /* no key seen yet: exp(-inf) = 0 */
            __m512 p = nrt_exp2_512(_mm512_sub_ps(sc, _mm512_set1_ps(shift)));
            _mm512_storeu_ps(pw + r * 16, p);
            float a = _mm512_cvtss_f32(nrt_exp2_512(_mm512_set1_ps(mold - shift)));
            alpha[r] = a;
            lrow[r] = lrow[r] * a + _mm512_reduce_add_ps(p);
            mrow[r] = mnew;
        }
        for (e = 0; e < V16; e += 16) {
            const __mmask16 em = nrt_tail_mask(Dv - e);
            __m512 o[NRT_FEW_ROWS];
            for (r = 0; r < NR; r++)
                o[r] = _mm512_mul_ps(_mm512_loadu_ps(ow + r * V16 + e), _mm512_set1_ps(alpha[r]));
            for (c = 0; c < 16; c++) {
                const __m512 vv = _mm512_maskz_loadu_ps(c < nk ? em : 0, v + (j0 + c) * vs + e);
                for (r = 0; r < NR; r++)
                    o[r] = _mm512_fmadd_ps(_mm512_set1_ps(pw[r * 16 + c]), vv, o[r]);
            }
            for (r = 0; r < NR; r++)
                _mm512_storeu_ps(ow + r * V16 + e, o[r]);
        }
    }
    for (r = 0; r < NR; r++) {
        /* a row that saw no key (fully masked) attends to nothing: zeros */
        const __m512 inv = _mm512_set1_ps(lrow[r] != 0.0f ? 1.0f / lrow[r] : 0.0f);
        for (e = 0; e < Dv; e += 16)
            _mm512_mask_storeu_ps(out + r * os + e, nrt_tail_mask(Dv - e),
                                  _mm512_mul_ps(_mm512_loadu_ps(ow + r * V16 + e), inv));
    }
}

static void nrt_attention_few_rows(const float* q, ptrdiff_t qs, const float* k, ptrdiff_t ks, ptrdiff_t kd,
                                   const float* v, ptrdiff_t vs, const float* bias, ptrdiff_t bias_row_stride,
                                   float* out, ptrdiff_t os, ptrdiff_t nr, ptrdiff_t D, ptrdiff_t Skv,
                                   ptrdiff_t Dv, float scale, int causal, ptrdiff_t i0, float* work) {
    switch (nr) {
    case 1: nrt_attention_few_rows_nr(q, qs, k, ks, kd, v, vs, bias, bias_row_stride, out, os, D, Skv, Dv,
                                      scale, causal, i0, work, 1); break;
    case 2: nrt_attention_few_rows_nr(q, qs, k, ks, kd, v, vs, bias, bias_row_stride, out, os, D, Skv, Dv,
                                      scale, causal, i0, work, 2); break;
    case 3: nrt_attention_few_rows_nr(q, qs, k, ks, kd, v, vs, bias, bias_row_stride, out, os, D, Skv, Dv,
                                      scale, causal, i0, work, 3); break;
    default: nrt_attention_few_rows_nr(q, qs, k, ks, kd, v, vs, bias, bias_row_stride, out, os, D, Skv, Dv,
                                       scale, causal, i0, work, 4); break;
    }
}
#else
#define NRT_HAVE_AVX512 0
static void nrt_attention_rows(const float* q, ptrdiff_t qs, const float* k, ptrdiff_t ks,
                               ptrdiff_t kd, const float* v, ptrdiff_t vs,
                               const float* bias, ptrdiff_t bias_row_stride, float* out, ptrdiff_t os,
                               ptrdiff_t nr, ptrdiff_t D, ptrdiff_t Skv, ptrdiff_t Dv,
                               float scale, int causal, ptrdiff_t i0, float* work) { }  /* never called */
#define NRT_FEW_ROWS 0
static void nrt_attention_few_rows(const float* q, ptrdiff_t qs, const float* k, ptrdiff_t ks, ptrdiff_t kd,
                                   const float* v, ptrdiff_t vs, const float* bias, ptrdiff_t bias_row_stride,
                                   float* out, ptrdiff_t os, ptrdiff_t nr, ptrdiff_t D, ptrdiff_t Skv,
                                   ptrdiff_t Dv, float scale, int causal, ptrdiff_t i0, float* work) { }  /* never called */
#endif

#endif
