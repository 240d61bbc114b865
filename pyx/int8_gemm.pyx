"""The 8-bit product of static QDQ models: float32 activations on a quantization grid times int8
weights, summed exactly in int32 (pyx/int8_gemm.h).

A static QDQ model's MatMul reads values that are on their grid (a FakeQuant's outputs) and
weights that are DequantizeLinear(int8, scale): what it computes is (q - z) w summed, times the
two scales. Here the activations' codes are recovered (exactly: they are on the grid) and the
integer sums made by AVX-512 VNNI's vpdpbusd where the CPU has it: four times the multiply-adds
of a float32 FMA per instruction. Work items are (row block, column panel) pairs, split
statically; every sum is exact, so the result is the same for any thread count.
"""
import numpy as np
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, uint8_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from moments cimport activate_span

cdef extern from "int8_gemm.h" nogil:
    enum: NRT_Q_MR
    enum: NRT_Q_NR
    enum: NRT_Q_TILES
    ctypedef struct nrt_q_problem:
        const uint8_t* u
        Py_ssize_t K4
        const int8_t* bp
        Py_ssize_t kg
        const int32_t* colsum
        const float* cs
        const float* bias
        int32_t zu
        const unsigned char* nan
        const int32_t* rowterm
        const unsigned char* colnan
        float* y
        Py_ssize_t M, N
    Py_ssize_t nrt_q_kgroups(Py_ssize_t K)
    Py_ssize_t nrt_q_panels(Py_ssize_t N)
    Py_ssize_t nrt_q_packed_size(Py_ssize_t K, Py_ssize_t N)
    Py_ssize_t nrt_q_row_blocks(Py_ssize_t M)
    void nrt_q_pack_b(const int8_t* w, Py_ssize_t K, Py_ssize_t N, int8_t* out, int32_t* colsum)
    void nrt_q_quantize_rows(const float* x, Py_ssize_t ldx, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K,
                             Py_ssize_t K4, float scale, float zero, float lo, float hi, uint8_t* u,
                             unsigned char* nan, int32_t* rowsum)
    void nrt_q_pack_b_codes(const float* b, Py_ssize_t ldb, Py_ssize_t K, Py_ssize_t N, float scale, float zero,
                            float lo, float hi, int8_t* out, int32_t* colsum, unsigned char* nan, uint8_t* tmp)
    void nrt_q_job(const nrt_q_problem* q, Py_ssize_t job)
    void nrt_q_dynamic_grid(const float* x, Py_ssize_t n, float* scale, float* zero)
    int nrt_q_vnni_on
    int nrt_q_vnni_available()

cdef enum:
    QUANT_ROWS = 64          # rows per quantization work item


cdef tuple _grid(grid, str name):
    """(scale, zero, lo, hi) as floats, checked: an 8-bit grid."""
    cdef float scale, zero, lo, hi
    scale, zero, lo, hi = grid
    if not (scale > 0 and lo <= zero <= hi and 0 <= hi - lo <= 255 and lo == <int>lo and zero == <int>zero
            and hi == <int>hi):
        raise ValueError(f"bad {name} grid: scale {scale}, zero {zero}, range [{lo}, {hi}]")
    return scale, zero, lo, hi


def int8_dot():
    """The path the products take: "avx512_vnni" or "portable" (this CPU's best unless set_int8_dot)."""
    return "avx512_vnni" if nrt_q_vnni_on else "portable"


def set_int8_dot(str path):
    """Run the products on `path` ("portable", or "avx512_vnni" where the CPU has it) from now on;
    returns the previous path (the tests' and benchmarks' switch: both give the same bits)."""
    global nrt_q_vnni_on
    if path not in ("portable", "avx512_vnni"):
        raise ValueError(f"path must be 'portable' or 'avx512_vnni', got {path!r}")
    if path == "avx512_vnni" and not nrt_q_vnni_available():
        raise ValueError("this CPU (or this build) has no AVX-512 VNNI")
    previous = int8_dot()
    nrt_q_vnni_on = path == "avx512_vnni"
    return previous


def pack_weight(const int8_t[:, ::1] w):     # IN  (K, N) int8 weights
    """(packed, colsum): w in the kernel's panels (int8, nrt_q_packed_size(K, N) bytes) and its
    column sums (int32, N)."""
    cdef Py_ssize_t K = w.shape[0], N = w.shape[1]
    if K == 0 or N == 0:
        raise ValueError("w must not be empty")
    if K >= 65536:
        raise ValueError(f"w has K = {K} rows; int32 sums are exact below 65536")
    packed = np.empty(nrt_q_packed_size(K, N), np.int8)
    colsum = np.empty(N, np.int32)
    cdef int8_t[::1] p = packed
    cdef int32_t[::1] c = colsum
    with nogil:
        nrt_q_pack_b(&w[0, 0], K, N, &p[0], &c[0])
    return packed, colsum


def qmatmul(const float[:, ::1] x,            # IN  (M, K) activations
            const int8_t[::1] packed,         # IN  pack_weight(w)[0]
            const int32_t[::1] colsum,        # IN  pack_weight(w)[1]
            Py_ssize_t w_rows,                # w's K (x's columns)
            grid,                             # (scale, zero, lo, hi) of x's codes (hi - lo <= 255),
                                              # or None: DynamicQuantizeLinear's grid of x's range
            const float[::1] w_scale,         # IN  (N,) each column's weight scale
            const float[::1] bias,            # IN  (N,) or empty
            float[:, ::1] y,                  # OUT (M, N)
            int act,                          # moments.pxd's ACT_*: the activation epilogue
            int n_threads):
    """y = act((codes(x) - zero) @ w * (scale * w_scale) + bias): codes(x) = clamp(round(x / scale)
    + zero, lo, hi), QuantizeLinear's integers (x's own values when x is on that grid). Returns
    the grid used, or None (y untouched) when grid is None and x's range is too narrow for one
    (a scale below float32's normal range)."""
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], N = y.shape[1]
    cdef Py_ssize_t kg = nrt_q_kgroups(K), K4 = kg * 4, rows = (M + NRT_Q_MR - 1) // NRT_Q_MR * NRT_Q_MR
    cdef Py_ssize_t item, r0, r, jobs, job, nrb, c0, nc
    cdef float a_scale, a_zero, a_lo = 0.0, a_hi = 255.0
    cdef nrt_q_problem q
    if w_rows != K:
        raise ValueError(f"x has {K} columns, the weight {w_rows} rows")
    if y.shape[0] != M:
        raise ValueError(f"y must have x's {M} rows, got {y.shape[0]}")
    if packed.shape[0] != nrt_q_packed_size(K, N) or colsum.shape[0] != N or w_scale.shape[0] != N:
        raise ValueError(f"packed / colsum / w_scale do not fit a ({K}, {N}) weight")
    if bias.shape[0] not in (0, N):
        raise ValueError(f"bias must have 0 or {N} values, got {bias.shape[0]}")
    if grid is None:
        with nogil:
            nrt_q_dynamic_grid(&x[0, 0] if M * K else NULL, M * K, &a_scale, &a_zero)
        if not (1.1754944e-38 <= a_scale <= 3.4028235e38):
            return None       # a range of subnormal width: no 8-bit grid (the caller's float path)
    else:
        a_scale, a_zero, a_lo, a_hi = grid
    a_scale, a_zero, a_lo, a_hi = _grid((a_scale, a_zero, a_lo, a_hi), "activation")
    if M == 0 or N == 0:
        return (a_scale, a_zero, a_lo, a_hi)
    cdef Py_ssize_t cs_at = (rows * K4 + rows + 63) // 64 * 64      # the scales after the codes, aligned
    cdef uint8_t* u = <uint8_t*>malloc(cs_at + N * sizeof(float))
    if u == NULL:
        raise MemoryError()
    cdef unsigned char* nan = u + rows * K4
    cdef float* cs = <float*>(u + cs_at)
    try:
        with nogil:
            for c0 in range(N):
                cs[c0] = a_scale * w_scale[c0]
            memset(u + M * K4, 0, (rows - M) * K4)     # whole micro-tiles: the spare rows are zeros
            memset(nan + M, 0, rows - M)
            for item in prange((M + QUANT_ROWS - 1) // QUANT_ROWS, schedule="static",
                               num_threads=max(1, min(n_threads, (M + QUANT_ROWS - 1) // QUANT_ROWS))):
                r0 = item * QUANT_ROWS
                nrt_q_quantize_rows(&x[0, 0], K, r0, min(r0 + QUANT_ROWS, M), K, K4, a_scale, a_zero, a_lo,
                                    a_hi, u, nan, NULL)
            q.u = u
            q.K4 = K4
            q.bp = &packed[0]
            q.kg = kg
            q.colsum = &colsum[0]
            q.cs = cs
            q.bias = &bias[0] if bias.shape[0] else NULL
            q.zu = <int32_t>(a_zero - a_lo)
            q.nan = nan
            q.rowterm = NULL
            q.colnan = NULL
            q.y = &y[0, 0]
            q.M = M
            q.N = N
            jobs = nrt_q_row_blocks(M) * nrt_q_panels(N)
            nrb = nrt_q_row_blocks(M)
            for job in prange(jobs, schedule="static", num_threads=max(1, min(n_threads, jobs))):
                nrt_q_job(&q, job)
                if act != 0:
                    # the job's block (nrt_q_job: row block job % nrb, panel job // nrb), still in cache
                    c0 = (job // nrb) * NRT_Q_NR
                    nc = min(<Py_ssize_t>NRT_Q_NR, N - c0)
                    r0 = (job % nrb) * NRT_Q_MR * NRT_Q_TILES
                    for r in range(r0, min(r0 + NRT_Q_MR * NRT_Q_TILES, M)):
                        activate_span(&y[r, c0], nc, act)
    finally:
        free(u)
    return (a_scale, a_zero, a_lo, a_hi)


def qmatmul_batched(const float[:, :, ::1] a,   # IN  (batch, M, K) on grid_a
                    const float[:, :, ::1] b,   # IN  (batch, K, N) on grid_b
                    grid_a, grid_b,             # (scale, zero, lo, hi) each, 8-bit
                    float[:, :, ::1] y,         # OUT (batch, M, N)
                    int n_threads):
    """y[i] = (codes(a[i]) - za) @ (codes(b[i]) - zb) * (scale_a * scale_b): both operands
    activations quantized per call (a static QDQ model's attention products), the sums exact."""
    cdef Py_ssize_t nb = a.shape[0], M = a.shape[1], K = a.shape[2], N = b.shape[2]
    cdef float sa, za, la, ha, sb, zb, lb, hb
    sa, za, la, ha = _grid(grid_a, "a")
    sb, zb, lb, hb = _grid(grid_b, "b")
    if b.shape[0] != nb or b.shape[1] != K or y.shape[0] != nb or y.shape[1] != M or y.shape[2] != N:
        raise ValueError(f"a {tuple(a.shape)}, b {tuple(b.shape)} and y {tuple(y.shape)} do not fit")
    if K > 32767:
        raise ValueError(f"K = {K}: the sums of two activations' codes are exact up to 32767")
    if nb == 0 or M == 0 or N == 0:
        return
    cdef Py_ssize_t kg = nrt_q_kgroups(K), K4 = kg * 4, rows = (M + NRT_Q_MR - 1) // NRT_Q_MR * NRT_Q_MR
    cdef Py_ssize_t psize = nrt_q_packed_size(K, N), per = nrt_q_row_blocks(M) * nrt_q_panels(N)
    cdef Py_ssize_t i, r, job, c
    cdef int32_t zu = <int32_t>(za - la), cb = <int32_t>(128 - (zb - lb))
    # one block: codes, row sums and terms, NaN flags per row and column, packed B, column sums
    cdef Py_ssize_t at_rowsum = (nb * rows * K4 + 63) // 64 * 64
    cdef Py_ssize_t at_rowterm = at_rowsum + nb * rows * 4
    cdef Py_ssize_t at_colsum = at_rowterm + nb * rows * 4
    cdef Py_ssize_t at_cs = at_colsum + nb * N * 4
    cdef Py_ssize_t at_packed = (at_cs + N * 4 + 63) // 64 * 64
    cdef Py_ssize_t at_nan = at_packed + nb * psize
    cdef Py_ssize_t at_tmp = at_nan + nb * rows + nb * N
    cdef Py_ssize_t total = at_tmp + nb * K * N
    cdef uint8_t* block = <uint8_t*>malloc(total)
    cdef nrt_q_problem* qs = <nrt_q_problem*>malloc(nb * sizeof(nrt_q_problem))
    if block == NULL or qs == NULL:
        free(block)
        free(qs)
        raise MemoryError()
    cdef uint8_t* u = block
    cdef int32_t* rowsum = <int32_t*>(block + at_rowsum)
    cdef int32_t* rowterm = <int32_t*>(block + at_rowterm)
    cdef int32_t* colsum = <int32_t*>(block + at_colsum)
    cdef float* cs = <float*>(block + at_cs)
    cdef int8_t* packed = <int8_t*>(block + at_packed)
    cdef unsigned char* rownan = block + at_nan
    cdef unsigned char* colnan = rownan + nb * rows
    try:
        with nogil:
            for c in range(N):
                cs[c] = sa * sb
            for i in prange(nb, schedule="static", num_threads=max(1, min(n_threads, nb))):
                memset(u + (i * rows + M) * K4, 0, (rows - M) * K4)
                memset(rownan + i * rows + M, 0, rows - M)
                nrt_q_quantize_rows(&a[i, 0, 0], K, 0, M, K, K4, sa, za, la, ha, u + i * rows * K4,
                                    rownan + i * rows, rowsum + i * rows)
                for r in range(M):
                    rowterm[i * rows + r] = cb * (rowsum[i * rows + r] - zu * <int32_t>K)
                nrt_q_pack_b_codes(&b[i, 0, 0], N, K, N, sb, zb, lb, hb, packed + i * psize, colsum + i * N,
                                   colnan + i * N, block + at_tmp + i * K * N)
                qs[i].u = u + i * rows * K4
                qs[i].K4 = K4
                qs[i].bp = packed + i * psize
                qs[i].kg = kg
                qs[i].colsum = colsum + i * N
                qs[i].cs = cs
                qs[i].bias = NULL
                qs[i].zu = zu
                qs[i].nan = rownan + i * rows
                qs[i].rowterm = rowterm + i * rows
                qs[i].colnan = colnan + i * N
                qs[i].y = &y[i, 0, 0]
                qs[i].M = M
                qs[i].N = N
            for job in prange(nb * per, schedule="static", num_threads=max(1, min(n_threads, nb * per))):
                nrt_q_job(&qs[job // per], job % per)
    finally:
        free(block)
        free(qs)
