"""Fused float32 attention: out = softmax(Q K^T * scale + bias) V, flash-attention style.

One work item is (batch, query head, block of QB query rows). It walks the
keys in blocks of KB with an online softmax (running max m and sum l per row;
when the max grows, the partial sum and output are rescaled by exp(m_old - m)),
so the scores never exist beyond one (QB, KB) block per thread.

The two products are register-blocked micro-kernels in C: S = Q K^T reads K
transposed (D, Skv), so a key block is a row of vectors and the small head
dims (8-64) do not starve the vector lanes; O += P V vectorizes over the value
dim. With AVX-512 both use explicit FMA intrinsics and masked loads for the
tails; elsewhere plain loops the compiler vectorizes.

Determinism: the blocking is fixed (QB, KB constants, not derived from the
thread count), each output row is computed by one thread, key blocks are
visited in order, and the row sums use fixed lanes: results are bitwise
identical for any thread count.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport INFINITY

from moments cimport exp_f
from omp cimport omp_get_thread_num

cdef extern from *:
    """
    #include <stddef.h>
    #define NRT_KB 64   /* keys per block: 4 AVX-512 vectors of scores per row */

    #if defined(__FMA__) || defined(__AVX512F__)
    #include <math.h>
    #define NRT_FMA(a, b, c) fmaf((a), (b), (c))
    #else
    #define NRT_FMA(a, b, c) ((a) * (b) + (c))
    #endif

    #ifdef __AVX512F__
    #include <immintrin.h>

    static inline __mmask16 nrt_tail_mask(ptrdiff_t rem) {
        return rem >= 16 ? (__mmask16)0xFFFF : rem <= 0 ? (__mmask16)0
             : (__mmask16)((1u << rem) - 1u);
    }

    /* s[r*KB + c] = sum_d q[r*D + d] * kt[d*ldk + c] for r < nr, c < KB
       (columns c >= nk read nothing and give 0). Four rows x 64 keys share
       16 accumulators; the sum over d runs in order for every element. */
    static void nrt_qk_block(const float* q, ptrdiff_t D, ptrdiff_t nr,
                             const float* kt, ptrdiff_t ldk, ptrdiff_t nk, float* s) {
        __mmask16 m0 = nrt_tail_mask(nk), m1 = nrt_tail_mask(nk - 16),
                  m2 = nrt_tail_mask(nk - 32), m3 = nrt_tail_mask(nk - 48);
        ptrdiff_t r = 0, d;
        for (; r + 4 <= nr; r += 4) {
            const float* q0 = q + r * D;
            __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
            __m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00;
            __m512 a30 = a00, a31 = a00, a32 = a00, a33 = a00;
            for (d = 0; d < D; d++) {
                const float* kd = kt + d * ldk;
                __m512 k0 = _mm512_maskz_loadu_ps(m0, kd);
                __m512 k1 = _mm512_maskz_loadu_ps(m1, kd + 16);
                __m512 k2 = _mm512_maskz_loadu_ps(m2, kd + 32);
                __m512 k3 = _mm512_maskz_loadu_ps(m3, kd + 48);
                __m512 b;
                b = _mm512_set1_ps(q0[d]);
                a00 = _mm512_fmadd_ps(b, k0, a00); a01 = _mm512_fmadd_ps(b, k1, a01);
                a02 = _mm512_fmadd_ps(b, k2, a02); a03 = _mm512_fmadd_ps(b, k3, a03);
                b = _mm512_set1_ps(q0[D + d]);
                a10 = _mm512_fmadd_ps(b, k0, a10); a11 = _mm512_fmadd_ps(b, k1, a11);
                a12 = _mm512_fmadd_ps(b, k2, a12); a13 = _mm512_fmadd_ps(b, k3, a13);
                b = _mm512_set1_ps(q0[2 * D + d]);
                a20 = _mm512_fmadd_ps(b, k0, a20); a21 = _mm512_fmadd_ps(b, k1, a21);
                a22 = _mm512_fmadd_ps(b, k2, a22); a23 = _mm512_fmadd_ps(b, k3, a23);
                b = _mm512_set1_ps(q0[3 * D + d]);
                a30 = _mm512_fmadd_ps(b, k0, a30); a31 = _mm512_fmadd_ps(b, k1, a31);
                a32 = _mm512_fmadd_ps(b, k2, a32); a33 = _mm512_fmadd_ps(b, k3, a33);
            }
            float* s0 = s + r * NRT_KB;
            _mm512_storeu_ps(s0, a00); _mm512_storeu_ps(s0 + 16, a01);
            _mm512_storeu_ps(s0 + 32, a02); _mm512_storeu_ps(s0 + 48, a03);
            s0 += NRT_KB;
            _mm512_storeu_ps(s0, a10); _mm512_storeu_ps(s0 + 16, a11);
            _mm512_storeu_ps(s0 + 32, a12); _mm512_storeu_ps(s0 + 48, a13);
            s0 += NRT_KB;
            _mm512_storeu_ps(s0, a20); _mm512_storeu_ps(s0 + 16, a21);
            _mm512_storeu_ps(s0 + 32, a22); _mm512_storeu_ps(s0 + 48, a23);
            s0 += NRT_KB;
            _mm512_storeu_ps(s0, a30); _mm512_storeu_ps(s0 + 16, a31);
            _mm512_storeu_ps(s0 + 32, a32); _mm512_storeu_ps(s0 + 48, a33);
        }
        for (; r < nr; r++) {
            const float* q0 = q + r * D;
            __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
            for (d = 0; d < D; d++) {
                const float* kd = kt + d * ldk;
                __m512 b = _mm512_set1_ps(q0[d]);
                a00 = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(m0, kd), a00);
                a01 = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(m1, kd + 16), a01);
                a02 = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(m2, kd + 32), a02);
                a03 = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(m3, kd + 48), a03);
            }
            float* s0 = s + r * NRT_KB;
            _mm512_storeu_ps(s0, a00); _mm512_storeu_ps(s0 + 16, a01);
            _mm512_storeu_ps(s0 + 32, a02); _mm512_storeu_ps(s0 + 48, a03);
        }
    }

    /* o[r*Dv + e] += sum_{c < nk} p[r*KB + c] * v[c*Dv + e], for the value
       columns [e0, e0 + 16*NV): eight rows x NV vectors of accumulators. */
    static inline __attribute__((always_inline)) void
    nrt_pv_cols(const float* p, ptrdiff_t nr, ptrdiff_t nk, const float* v, ptrdiff_t Dv,
                float* o, ptrdiff_t e0, const int NV) {
        __mmask16 m0 = nrt_tail_mask(Dv - e0), m1 = nrt_tail_mask(Dv - e0 - 16);
        ptrdiff_t r = 0, c, i;
        for (; r + 8 <= nr; r += 8) {
            __m512 acc0[8], acc1[8];
            float* o0 = o + r * Dv + e0;
            for (i = 0; i < 8; i++) {
                acc0[i] = _mm512_maskz_loadu_ps(m0, o0 + i * Dv);
                if (NV == 2) acc1[i] = _mm512_maskz_loadu_ps(m1, o0 + i * Dv + 16);
            }
            const float* p0 = p + r * NRT_KB;
            for (c = 0; c < nk; c++) {
                const float* vc = v + c * Dv + e0;
                __m512 v0 = _mm512_maskz_loadu_ps(m0, vc);
                __m512 v1 = NV == 2 ? _mm512_maskz_loadu_ps(m1, vc + 16) : v0;
                #pragma GCC unroll 8
                for (i = 0; i < 8; i++) {
                    __m512 b = _mm512_set1_ps(p0[i * NRT_KB + c]);
                    acc0[i] = _mm512_fmadd_ps(b, v0, acc0[i]);
                    if (NV == 2) acc1[i] = _mm512_fmadd_ps(b, v1, acc1[i]);
                }
            }
            for (i = 0; i < 8; i++) {
                _mm512_mask_storeu_ps(o0 + i * Dv, m0, acc0[i]);
                if (NV == 2) _mm512_mask_storeu_ps(o0 + i * Dv + 16, m1, acc1[i]);
            }
        }
        for (; r < nr; r++) {
            float* o0 = o + r * Dv + e0;
            const float* p0 = p + r * NRT_KB;
            __m512 a0 = _mm512_maskz_loadu_ps(m0, o0);
            __m512 a1 = NV == 2 ? _mm512_maskz_loadu_ps(m1, o0 + 16) : a0;
            for (c = 0; c < nk; c++) {
                const float* vc = v + c * Dv + e0;
                __m512 b = _mm512_set1_ps(p0[c]);
                a0 = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(m0, vc), a0);
                if (NV == 2) a1 = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(m1, vc + 16), a1);
            }
            _mm512_mask_storeu_ps(o0, m0, a0);
            if (NV == 2) _mm512_mask_storeu_ps(o0 + 16, m1, a1);
        }
    }

    static void nrt_pv_block(const float* p, ptrdiff_t nr, ptrdiff_t nk,
                             const float* v, ptrdiff_t Dv, float* o) {
        ptrdiff_t e0 = 0;
        for (; e0 + 16 < Dv; e0 += 32)
            nrt_pv_cols(p, nr, nk, v, Dv, o, e0, 2);
        if (e0 < Dv)
            nrt_pv_cols(p, nr, nk, v, Dv, o, e0, 1);
    }

    #else  /* portable: loops over contiguous columns that compilers vectorize */

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
                             const float* v, ptrdiff_t Dv, float* o) {
        ptrdiff_t r, c, e;
        for (r = 0; r < nr; r++) {
            float* o0 = o + r * Dv;
            for (c = 0; c < nk; c++) {
                const float* vc = v + c * Dv;
                float b = p[r * NRT_KB + c];
                for (e = 0; e < Dv; e++)
                    o0[e] = NRT_FMA(b, vc[e], o0[e]);
            }
        }
    }
    #endif
    """
    enum: KB "NRT_KB"
    void qk_block "nrt_qk_block"(const float* q, Py_ssize_t D, Py_ssize_t nr, const float* kt,
                                 Py_ssize_t ldk, Py_ssize_t nk, float* s) noexcept nogil
    void pv_block "nrt_pv_block"(const float* p, Py_ssize_t nr, Py_ssize_t nk, const float* v,
                                 Py_ssize_t Dv, float* o) noexcept nogil

cdef enum:
    # query rows per work item: (QB, KB) scores + QB rows of q and of the
    # output stay in L1 while K and V stream from L2
    QB = 64
    SUM_LANES = 16      # one vector of independent partial sums (KB is a multiple)
    # below this many multiply-adds a second thread costs more than it saves
    PARALLEL_MIN = 1 << 20


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


def attention_fwd(const float[:, :, :, ::1] q,      # IN  (B, Hq, Sq, D)
                  const float[:, :, :, ::1] kt,     # IN  (B, Hkv, D, Skv): K transposed
                  const float[:, :, :, ::1] v,      # IN  (B, Hkv, Skv, Dv)
                  const float[:, :, :, ::1] bias,   # IN  (1|B, 1|Hq, 1|Sq, Skv), broadcast over the
                                                    #     axes of size 1; shape (0, 0, 0, 0): none
                  float[:, :, :, ::1] out,          # OUT (B, Hq, Sq, Dv)
                  float scale, bint causal, int n_threads):
    cdef Py_ssize_t B = q.shape[0], Hq = q.shape[1], Sq = q.shape[2], D = q.shape[3]
    cdef Py_ssize_t Hkv = kt.shape[1], Skv = kt.shape[3], Dv = v.shape[3]
    cdef Py_ssize_t nqb, n_items, item, bh, b, h, hk, i0, nr, j0, jend, nk, r, c, t, rep
    cdef Py_ssize_t per_thread, bias_row_stride = 0
    cdef bint has_bias = bias.shape[0] != 0
    cdef float* work
    cdef float* qs
    cdef float* s
    cdef float* o
    cdef float* m
    cdef float* l
    cdef const float* bias0
    cdef float inv
    if (kt.shape[0] != B or kt.shape[2] != D or v.shape[0] != B or v.shape[1] != Hkv
            or v.shape[2] != Skv or Hkv == 0 or Hq % Hkv != 0):
        raise ValueError("q, kt, v shapes do not agree")
    if out.shape[0] != B or out.shape[1] != Hq or out.shape[2] != Sq or out.shape[3] != Dv:
        raise ValueError("out must have shape (B, Hq, Sq, Dv)")
    if has_bias and (bias.shape[0] not in (1, B) or bias.shape[1] not in (1, Hq)
                     or bias.shape[2] not in (1, Sq) or bias.shape[3] != Skv):
        raise ValueError("bias must have shape (1|B, 1|Hq, 1|Sq, Skv)")
    if B == 0 or Hq == 0 or Sq == 0 or Dv == 0:
        return
    rep = Hq // Hkv
    if has_bias and bias.shape[2] > 1:
        bias_row_stride = Skv
    nqb = (Sq + QB - 1) // QB
    n_items = B * Hq * nqb
    if B * Hq * Sq * Skv * (D + Dv) < PARALLEL_MIN:
        n_threads = 1
    if n_threads > n_items:
        n_threads = <int>n_items
    if n_threads < 1:
        n_threads = 1
    # per thread: scaled q rows, one score block, output rows, running max and sum
    per_thread = QB * D + QB * KB + QB * Dv + 2 * QB + 16
    work = <float*>malloc(n_threads * per_thread * sizeof(float))
    if work == NULL:
        raise MemoryError()
    try:
        for item in prange(n_items, nogil=True, schedule="static", num_threads=n_threads):
            t = omp_get_thread_num()
            qs = work + t * per_thread
            s = qs + QB * D
            o = s + QB * KB
            m = o + QB * Dv
            l = m + QB
            bh = item // nqb
            i0 = (item % nqb) * QB
            nr = min(QB, Sq - i0)
            b = bh // Hq
            h = bh % Hq
            hk = h // rep
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
            bias0 = NULL
            j0 = 0
            while j0 < jend:
                nk = min(<Py_ssize_t>KB, jend - j0)
                if has_bias:
                    bias0 = &bias[b if bias.shape[0] > 1 else 0, h if bias.shape[1] > 1 else 0,
                                  i0 if bias.shape[2] > 1 else 0, j0]
                qk_block(qs, D, nr, &kt[b, hk, 0, j0], Skv, nk, s)
                online_softmax_rows(s, nr, nk, i0, j0, causal, bias0, bias_row_stride, m, l, o, Dv)
                pv_block(s, nr, nk, &v[b, hk, j0, 0], Dv, o)
                j0 = j0 + KB
            for r in range(nr):
                # a row that saw no key (fully masked) attends to nothing: zeros
                inv = 1 / l[r] if l[r] != 0 else 0
                for c in range(Dv):
                    out[b, h, i0 + r, c] = o[r * Dv + c] * inv
    finally:
        free(work)
