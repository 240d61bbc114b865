"""The 4-bit product of onnxruntime's MatMulNBits: float32 rows times a weight kept in its 4-bit
codes, a float32 scale and zero point per block of K (pyx/nbits_gemm.h).

The codes are packed once (pack_codes) into tiles of 32 columns, the scales and zero points into
the same tiles (pack_blocks); matmul_nbits then streams half a byte per weight. Work items are
the tiles, split statically over the threads; each y element is computed within one item in a
fixed order, so the result is the same for any thread count.
"""
import numpy as np
from cython.parallel cimport prange
from libc.stdint cimport uint8_t
from libc.stdlib cimport malloc, free

from omp cimport omp_get_thread_num

cdef extern from "nbits_gemm.h" nogil:
    enum: NRT_NB_NR
    ctypedef struct nrt_nb_problem:
        const float* a
        Py_ssize_t lda
        const uint8_t* codes
        const float* scale
        const float* zero
        float zero_default
        const float* bias
        const float* asum
        float* y
        Py_ssize_t M, K, N, block, kblocks
    Py_ssize_t nrt_nb_tiles(Py_ssize_t N)
    Py_ssize_t nrt_nb_packed_size(Py_ssize_t K, Py_ssize_t N)
    Py_ssize_t nrt_nb_scratch_size(Py_ssize_t K)
    void nrt_nb_pack_codes(const uint8_t* b, Py_ssize_t row_bytes, Py_ssize_t N, Py_ssize_t K, uint8_t* out)
    void nrt_nb_block_sums(const nrt_nb_problem* p, Py_ssize_t r0, Py_ssize_t r1, float* asum)
    void nrt_nb_direct_tile(const nrt_nb_problem* p, Py_ssize_t t)
    void nrt_nb_scratch_tile(const nrt_nb_problem* p, Py_ssize_t t, float* w)

# Rows up to which the codes are read directly (the decode step, 4 rows a pass); more rows (a
# prompt) first dequantize each tile into a per-thread float32 buffer, read once per 6 rows.
# Where the two cross (one thread, 1024 x 2816, us direct / scratch): M=4 296 / 391, 6 483 /
# 481, 8 579 / 641, 10 774 / 695, 16 1149 / 1014.
DIRECT_MAX_ROWS = 8

TILE = NRT_NB_NR


def packed_size(Py_ssize_t K, Py_ssize_t N):
    """Bytes of pack_codes' output for a (K, N) weight."""
    return nrt_nb_packed_size(K, N)


def pack_codes(const uint8_t[:, ::1] b,     # IN  (N, row_bytes) MatMulNBits' B, 4-bit codes in K order
               Py_ssize_t K):
    """B's codes in the kernel's tiles: uint8 [tiles, ceil(K / 2), 32] (flat)."""
    cdef Py_ssize_t N = b.shape[0], row_bytes = b.shape[1]
    if K <= 0 or N == 0:
        raise ValueError(f"K = {K}, N = {N}: an empty weight")
    if row_bytes * 2 < K:
        raise ValueError(f"B rows of {row_bytes} bytes hold {row_bytes * 2} 4-bit codes, fewer than K = {K}")
    out = np.empty(nrt_nb_packed_size(K, N), np.uint8)
    cdef uint8_t[::1] o = out
    with nogil:
        nrt_nb_pack_codes(&b[0, 0], row_bytes, N, K, &o[0])
    return out


def pack_blocks(values, Py_ssize_t N, Py_ssize_t kblocks):
    """Per-block values (scales or zero points) [N, kblocks] in the kernel's tiles: float32
    [tiles, kblocks, 32], the padding columns 0."""
    v = np.asarray(values, np.float32).reshape(N, kblocks)
    tiles = nrt_nb_tiles(N)
    out = np.zeros((tiles * NRT_NB_NR, kblocks), np.float32)
    out[:N] = v
    return np.ascontiguousarray(out.reshape(tiles, NRT_NB_NR, kblocks).transpose(0, 2, 1))


def matmul_nbits(const float[:, ::1] a,          # IN  (M, K)
                 const uint8_t[::1] codes,       # IN  pack_codes(B, K)
                 const float[:, :, ::1] scale,   # IN  pack_blocks(scales): (tiles, kblocks, 32)
                 const float[:, :, ::1] zero,    # IN  pack_blocks(zero points), or None: zero_default
                 float zero_default,
                 Py_ssize_t block,               # block_size: K rows per scale
                 const float[::1] bias,          # IN  (N,) or None
                 float[:, ::1] y,                # OUT (M, N)
                 int n_threads):
    """y = a @ w + bias, w[k, n] = (code[n, k] - zero[n, k // block]) * scale[n, k // block]."""
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = y.shape[1]
    cdef Py_ssize_t kb = (K + block - 1) // block if block > 0 else 0
    cdef Py_ssize_t tiles = nrt_nb_tiles(N), t, scratch
    cdef nrt_nb_problem p
    cdef float* asum = NULL
    cdef float* work = NULL
    cdef int direct = M <= DIRECT_MAX_ROWS, nt
    if block < 16 or block & (block - 1):
        raise ValueError(f"block = {block}: not a power of two >= 16")
    if y.shape[0] != M:
        raise ValueError(f"y must have a's {M} rows, got {y.shape[0]}")
    if codes.shape[0] != nrt_nb_packed_size(K, N):
        raise ValueError(f"codes of {codes.shape[0]} bytes do not fit a ({K}, {N}) weight")
    if scale.shape[0] != tiles or scale.shape[1] != kb or scale.shape[2] != NRT_NB_NR:
        raise ValueError(f"scale must be ({tiles}, {kb}, {NRT_NB_NR}), got {tuple(scale.shape)}")
    if zero is not None and tuple(zero.shape) != tuple(scale.shape):
        raise ValueError(f"zero must be {tuple(scale.shape)}, got {tuple(zero.shape)}")
    if bias is not None and bias.shape[0] != N:
        raise ValueError(f"bias must have {N} values, got {bias.shape[0]}")
    if M == 0 or N == 0:
        return
    nt = max(1, min(n_threads, tiles))
    p.a = &a[0, 0]
    p.lda = K
    p.codes = &codes[0]
    p.scale = &scale[0, 0, 0]
    p.zero = &zero[0, 0, 0] if zero is not None else NULL
    p.zero_default = zero_default
    p.bias = &bias[0] if bias is not None else NULL
    p.y = &y[0, 0]
    p.M = M
    p.K = K
    p.N = N
    p.block = block
    p.kblocks = kb
    scratch = nrt_nb_scratch_size(K)
    if direct:
        asum = <float*>malloc(M * kb * sizeof(float))
    else:
        work = <float*>malloc(nt * scratch * sizeof(float))
    if asum == NULL and work == NULL:
        raise MemoryError()
    p.asum = asum
    try:
        with nogil:
            if direct:
                nrt_nb_block_sums(&p, 0, M, asum)
                for t in prange(tiles, schedule="static", num_threads=nt):
                    nrt_nb_direct_tile(&p, t)
            else:
                for t in prange(tiles, schedule="static", num_threads=nt):
                    nrt_nb_scratch_tile(&p, t, work + omp_get_thread_num() * scratch)
    finally:
        free(asum)
        free(work)
