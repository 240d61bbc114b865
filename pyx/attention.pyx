"""Fused float32 attention: out = softmax(Q K^T * scale + bias) V, flash-attention style.

One work item is (batch, query head, block of QB query rows). It walks the
keys in blocks of KB with an online softmax (running max m and sum l per row;
when the max grows, the partial sum and output are rescaled by exp(m_old - m)),
so the scores never exist beyond one (QB, KB) block per thread.

With AVX-512 (nrt_attention_rows, attention_kernel.h) the block is held transposed: the
QB query rows sit in the vector lanes, so the small head dims of UNet/VAE
attention (8-64) still fill every lane, the row max and sum are plain
vector max/add over the keys (no horizontal reductions), and both products
are register-blocked outer products (broadcast one key's / one value's
element, FMA into row vectors). Elsewhere a portable path keeps the keys in
the lanes, with loops the compiler vectorizes.

A call of at most FEW_ROWS query rows (a decode step of an LLM: one new token per head, or a
KV head's query heads as its rows) fills 1 to 4 of those 16 lanes and would pay for 16 rows;
with AVX-512 its items keep the keys in the lanes instead (nrt_attention_few_rows: 16 dot
products a block, folded into one vector of scores). A (1, 16, 1, 64) step against 1025 cached
keys, grouped 4 rows a KV head: 432 -> 94 us on one thread. The path is chosen by Sq alone.

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

cdef extern from "attention_kernel.h":
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
    enum: FEW_ROWS "NRT_FEW_ROWS"
    void attention_few_rows "nrt_attention_few_rows"(const float* q, Py_ssize_t qs, const float* k,
                                                     Py_ssize_t ks, Py_ssize_t kd, const float* v, Py_ssize_t vs,
                                                     const float* bias, Py_ssize_t bias_row_stride,
                                                     float* out, Py_ssize_t os, Py_ssize_t nr, Py_ssize_t D,
                                                     Py_ssize_t Skv, Py_ssize_t Dv, float scale, bint causal,
                                                     Py_ssize_t i0, float* work) noexcept nogil
    void qk_block "nrt_qk_block"(const float* q, Py_ssize_t D, Py_ssize_t nr, const float* kt,
                                 Py_ssize_t ldk, Py_ssize_t nk, float* s) noexcept nogil
    void pv_block "nrt_pv_block"(const float* p, Py_ssize_t nr, Py_ssize_t nk, const float* v,
                                 Py_ssize_t ldv, Py_ssize_t Dv, float* o) noexcept nogil

# the most query rows a call may have for the keys-in-lanes items (0 where they are not built):
# callers that choose how to lay out their rows read it
FEW_QUERY_ROWS = FEW_ROWS

cdef enum:
    SUM_LANES = 16      # one vector of independent partial sums (KB is a multiple)


cdef inline bint bias_block_hidden(const float* bias, Py_ssize_t brs, Py_ssize_t nr,
                                   Py_ssize_t nk) noexcept nogil:
    """attention_kernel.h's nrt_bias_block_hidden, portable: -inf for every row and key."""
    cdef Py_ssize_t r, c
    for r in range(nr if brs else 1):
        for c in range(nk):
            if bias[r * brs + c] != -INFINITY:
                return False
    return True


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
    cdef bint few
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
    # a few query rows (a decode step): the keys in the lanes (attention_kernel.h), for the whole
    # call; which path runs depends on Sq only, never on the threads or the layout
    few = HAVE_AVX512 and Sq <= FEW_ROWS
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
            if few:
                attention_few_rows(&q[b, h, i0, 0], q_rs, &k[b, hk, 0, 0], k_rs, k_ds, &v[b, hk, 0, 0], v_rs,
                                   bias0, bias_row_stride, &out[b, h, i0, 0], o_rs, nr, D, Skv, Dv,
                                   scale, causal, i0, work + t * per_thread)
            elif HAVE_AVX512:
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
                    if bias0 != NULL and bias_block_hidden(bias0 + j0, bias_row_stride, nr, nk):
                        j0 = j0 + KB                # every key hidden from every row: skipped
                        continue
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
