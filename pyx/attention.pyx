"""Fused float32 attention: out = softmax(Q K^T * scale + bias) V, flash-attention style.

One work item is (batch, query head, block of QB query rows). It walks the
keys in blocks of KB with an online softmax (running max m and sum l per row;
when the max grows, the partial sum and output are rescaled by exp(m_old - m)),
so the scores never exist beyond one (QB, KB) block per thread.

With AVX-512 (nrt_attention_rows, C below) the block is held transposed: the
QB query rows sit in the vector lanes, so the small head dims of UNet/VAE
attention (8-64) still fill every lane, the row max and sum are plain
vector max/add over the keys (no horizontal reductions), and both products
are register-blocked outer products (broadcast one key's / one value's
element, FMA into row vectors). Elsewhere a portable path keeps the keys in
the lanes, with loops the compiler vectorizes.

Determinism: the blocking is fixed (QB, KB constants, not derived from the
thread count), each output row is computed by one thread, key blocks are
visited in order and every sum runs in a fixed order: results are bitwise
identical for any thread count.

Layouts: Q, K, V and the output are read and written through their strides
(row strides of the sequence axis, head and batch strides; K's head-dim axis
may be strided too, so K^T (B, H, D, S) is read in place), so the (B, S, H, D)
"heads interleaved" layout exporters produce is a strided view and costs no
copy. Only addresses depend on the strides, never the order of the arithmetic:
the results are bitwise the same whatever the layout.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport INFINITY

from moments cimport exp_f
from omp cimport omp_get_thread_num

cdef extern from *:
    """
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
       that compilers vectorize (the online softmax is online_softmax_rows below) */

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
            nrt_qk_t_rv(qT, k + j0 * ks, ks, kd, D, nk, sT, RV);
            if (bias)
                for (c = 0; c < nk; c++)
                    for (r = 0; r < nr; r++)
                        sT[c * NRT_QB + r] += bias[r * bias_row_stride + j0 + c] * log2e;
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
    #else
    #define NRT_HAVE_AVX512 0
    static void nrt_attention_rows(const float* q, ptrdiff_t qs, const float* k, ptrdiff_t ks,
                                   ptrdiff_t kd, const float* v, ptrdiff_t vs,
                                   const float* bias, ptrdiff_t bias_row_stride, float* out, ptrdiff_t os,
                                   ptrdiff_t nr, ptrdiff_t D, ptrdiff_t Skv, ptrdiff_t Dv,
                                   float scale, int causal, ptrdiff_t i0, float* work) { }  /* never called */
    #endif
    """
    enum: KB "NRT_KB"
    enum: QB "NRT_QB"
    const bint HAVE_AVX512 "NRT_HAVE_AVX512"
    void attention_rows "nrt_attention_rows"(const float* q, Py_ssize_t qs, const float* k, Py_ssize_t ks,
                                             Py_ssize_t kd, const float* v, Py_ssize_t vs,
                                             const float* bias, Py_ssize_t bias_row_stride,
                                             float* out, Py_ssize_t os,
                                             Py_ssize_t nr, Py_ssize_t D, Py_ssize_t Skv, Py_ssize_t Dv,
                                             float scale, bint causal, Py_ssize_t i0,
                                             float* work) noexcept nogil
    void qk_block "nrt_qk_block"(const float* q, Py_ssize_t D, Py_ssize_t nr, const float* kt,
                                 Py_ssize_t ldk, Py_ssize_t nk, float* s) noexcept nogil
    void pv_block "nrt_pv_block"(const float* p, Py_ssize_t nr, Py_ssize_t nk, const float* v,
                                 Py_ssize_t ldv, Py_ssize_t Dv, float* o) noexcept nogil

cdef enum:
    SUM_LANES = 16      # one vector of independent partial sums (KB is a multiple)


cdef inline void online_softmax_rows(float* s, Py_ssize_t nr, Py_ssize_t nk,
                                     Py_ssize_t i0, Py_ssize_t j0, bint causal,
                                     const float* bias0, Py_ssize_t bias_row_stride,
                                     float* m, float* l, float* o, Py_ssize_t Dv) noexcept nogil:
    """Scores of one (rows, keys) block -> probabilities relative to the running max.

    Adds the bias, masks keys past nk (and past the diagonal when causal) to
    -inf, updates m/l, rescales the rows' output and leaves exp(s - m) in s.
    """
    cdef float lanes[SUM_LANES]
    cdef Py_ssize_t r, c, j, limit
    cdef float mx, mnew, alpha, total, v
    cdef float* row
    cdef const float* brow
    for r in range(nr):
        row = s + r * KB
        if bias0 != NULL:
            brow = bias0 + r * bias_row_stride
            for c in range(nk):
                row[c] = row[c] + brow[c]
        limit = nk
        if causal and i0 + r - j0 + 1 < limit:
            limit = i0 + r - j0 + 1       # key j0 + c is visible to row i0 + r iff c <= i0 + r - j0
            if limit < 0:
                limit = 0
        for c in range(limit, KB):
            row[c] = -INFINITY
        for j in range(SUM_LANES):
            lanes[j] = -INFINITY
        c = 0
        while c < KB:
            for j in range(SUM_LANES):
                v = row[c + j]
                lanes[j] = v if v > lanes[j] else lanes[j]
            c += SUM_LANES
        mx = m[r]
        for j in range(SUM_LANES):
            mx = lanes[j] if lanes[j] > mx else mx
        if mx == -INFINITY:
            # nothing visible yet in this row: no weight from this block; a NaN
            # score (not seen by the max) still poisons the row, as in softmax
            for c in range(nk):
                if row[c] != row[c]:
                    l[r] = row[c]
            for c in range(KB):
                row[c] = 0
            continue
        alpha = exp_f(m[r] - mx)          # 0 on the first visible block (m = -inf)
        for j in range(SUM_LANES):
            lanes[j] = 0
        c = 0
        while c < KB:
            for j in range(SUM_LANES):
                v = exp_f(row[c + j] - mx)
                row[c + j] = v
                lanes[j] += v
            c += SUM_LANES
        for j in range(SUM_LANES // 2):
            lanes[j] = lanes[j] + lanes[j + SUM_LANES // 2]
        for j in range(SUM_LANES // 4):
            lanes[j] = lanes[j] + lanes[j + SUM_LANES // 4]
        total = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])
        l[r] = l[r] * alpha + total
        m[r] = mx
        if alpha != 1:
            for c in range(Dv):
                o[r * Dv + c] = o[r * Dv + c] * alpha


def attention_fwd(const float[:, :, :, :] q,        # IN  (B, Hq, Sq, D), any strides but D's unit
                  const float[:, :, :, :] k,        # IN  (B, Hkv, Skv, D), any strides (K^T's view too)
                  const float[:, :, :, :] v,        # IN  (B, Hkv, Skv, Dv), any strides but Dv's unit
                  const float[:, :, :, ::1] bias,   # IN  (1|B, 1|Hq, 1|Sq, Skv), broadcast over the
                                                    #     axes of size 1; shape (0, 0, 0, 0): none
                  float[:, :, :, :] out,            # OUT (B, Hq, Sq, Dv), any strides but Dv's unit;
                                                    #     its elements must not overlap
                  float scale, bint causal, int n_threads):
    cdef Py_ssize_t B = q.shape[0], Hq = q.shape[1], Sq = q.shape[2], D = q.shape[3]
    cdef Py_ssize_t Hkv = k.shape[1], Skv = k.shape[2], Dv = v.shape[3]
    cdef Py_ssize_t nqb, n_items, item, bh, b, h, hk, i0, nr, j0, jend, nk, r, c, t, rep
    cdef Py_ssize_t per_thread, bias_row_stride = 0
    # row strides (and K's head-dim stride) in floats: the C kernel walks pointers
    cdef Py_ssize_t q_rs = q.strides[2] // <Py_ssize_t>sizeof(float)
    cdef Py_ssize_t k_rs = k.strides[2] // <Py_ssize_t>sizeof(float)
    cdef Py_ssize_t k_ds = k.strides[3] // <Py_ssize_t>sizeof(float)
    cdef Py_ssize_t v_rs = v.strides[2] // <Py_ssize_t>sizeof(float)
    cdef Py_ssize_t o_rs = out.strides[2] // <Py_ssize_t>sizeof(float)
    cdef bint has_bias = bias.shape[0] != 0
    cdef float* work
    cdef float* qs
    cdef float* s
    cdef float* o
    cdef float* m
    cdef float* l
    cdef float* ktb
    cdef const float* bias0
    cdef const float* bias_blk
    cdef float inv
    if (k.shape[0] != B or k.shape[3] != D or v.shape[0] != B or v.shape[1] != Hkv
            or v.shape[2] != Skv or Hkv == 0 or Hq % Hkv != 0):
        raise ValueError("q, k, v shapes do not agree")
    if out.shape[0] != B or out.shape[1] != Hq or out.shape[2] != Sq or out.shape[3] != Dv:
        raise ValueError("out must have shape (B, Hq, Sq, Dv)")
    if has_bias and (bias.shape[0] not in (1, B) or bias.shape[1] not in (1, Hq)
                     or bias.shape[2] not in (1, Sq) or bias.shape[3] != Skv):
        raise ValueError("bias must have shape (1|B, 1|Hq, 1|Sq, Skv)")
    if ((D > 1 and q.strides[3] != sizeof(float)) or (Dv > 1 and v.strides[3] != sizeof(float))
            or (Dv > 1 and out.strides[3] != sizeof(float))):
        raise ValueError("the last axis of q, v and out must be contiguous (the kernel reads rows)")
    if ((Sq > 1 and q.strides[2] % <Py_ssize_t>sizeof(float)) or (Skv > 1 and k.strides[2] % <Py_ssize_t>sizeof(float))
            or (D > 1 and k.strides[3] % <Py_ssize_t>sizeof(float)) or (Skv > 1 and v.strides[2] % <Py_ssize_t>sizeof(float))
            or (Sq > 1 and out.strides[2] % <Py_ssize_t>sizeof(float))):
        raise ValueError("q, k, v and out must have strides that are multiples of 4 bytes")
    if B == 0 or Hq == 0 or Sq == 0 or Dv == 0:
        return
    rep = Hq // Hkv
    if has_bias and bias.shape[2] > 1:
        bias_row_stride = Skv
    nqb = (Sq + QB - 1) // QB
    n_items = B * Hq * nqb
    if n_threads > n_items:
        n_threads = <int>n_items
    if n_threads < 1:
        n_threads = 1
    # per thread: scaled q rows, one score block, output rows, running max and sum (and the
    # AVX-512 path's block rescaling); the portable path's transposed key block
    per_thread = QB * D + QB * KB + QB * Dv + 3 * QB + D * KB + 16
    work = <float*>malloc(n_threads * per_thread * sizeof(float))
    if work == NULL:
        raise MemoryError()
    try:
        # dynamic: when the other core is busy (another process, a GEMM's spinning
        # threads) the thread that runs takes the items the stalled one would have held;
        # which thread computes an item does not change its result
        for item in prange(n_items, nogil=True, schedule="dynamic", num_threads=n_threads):
            t = omp_get_thread_num()
            bh = item // nqb
            i0 = (item % nqb) * QB
            nr = min(QB, Sq - i0)
            b = bh // Hq
            h = bh % Hq
            hk = h // rep
            bias0 = NULL
            if has_bias:
                bias0 = &bias[b if bias.shape[0] > 1 else 0, h if bias.shape[1] > 1 else 0,
                              i0 if bias.shape[2] > 1 else 0, 0]
            if HAVE_AVX512:
                attention_rows(&q[b, h, i0, 0], q_rs, &k[b, hk, 0, 0], k_rs, k_ds, &v[b, hk, 0, 0], v_rs,
                               bias0, bias_row_stride, &out[b, h, i0, 0], o_rs, nr, D, Skv, Dv,
                               scale, causal, i0, work + t * per_thread)
            else:
                qs = work + t * per_thread
                s = qs + QB * D
                o = s + QB * KB
                m = o + QB * Dv
                l = m + QB
                ktb = l + QB
                for r in range(nr):
                    for c in range(D):
                        qs[r * D + c] = q[b, h, i0 + r, c] * scale
                    m[r] = -INFINITY
                    l[r] = 0
                for c in range(nr * Dv):
                    o[c] = 0
                jend = Skv
                if causal and i0 + nr < jend:
                    jend = i0 + nr                  # later keys are masked for every row here
                j0 = 0
                while j0 < jend:
                    nk = min(<Py_ssize_t>KB, jend - j0)
                    for c in range(nk):             # the key block transposed: keys in the lanes
                        for r in range(D):
                            ktb[r * KB + c] = k[b, hk, j0 + c, r]
                    qk_block(qs, D, nr, ktb, KB, nk, s)
                    bias_blk = NULL
                    if bias0 != NULL:
                        bias_blk = bias0 + j0
                    online_softmax_rows(s, nr, nk, i0, j0, causal, bias_blk, bias_row_stride, m, l, o, Dv)
                    pv_block(s, nr, nk, &v[b, hk, j0, 0], v_rs, Dv, o)
                    j0 = j0 + KB
                for r in range(nr):
                    # a row that saw no key (fully masked) attends to nothing: zeros
                    inv = 1 / l[r] if l[r] != 0 else 0
                    for c in range(Dv):
                        out[b, h, i0 + r, c] = o[r * Dv + c] * inv
    finally:
        free(work)
