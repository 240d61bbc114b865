"""The 4-bit product of onnxruntime's MatMulNBits: float32 rows times a weight kept in its 4-bit
codes, a float32 scale and zero point per block of K (pyx/nbits_gemm.h).

The codes are packed once (pack_codes) into tiles of 32 columns, the scales and zero points into
the same tiles (pack_blocks); matmul_nbits then streams half a byte per weight. Work items are
the tiles, split statically over the threads; each y element is computed within one item in a
fixed order, so the result is the same for any thread count.
"""
import numpy as np
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, uint8_t
from libc.stdlib cimport malloc, free

from omp cimport omp_get_thread_num

cdef extern from "nbits_gemm.h" nogil:
    enum: NRT_NB_NR
    enum: NRT_NB_DIRECT_MR
    ctypedef struct nrt_nb_problem:
        const float* a
        Py_ssize_t lda
        const uint8_t* codes
        const float* scale
        const float* zero
        float zero_default
        const float* bias
        const float* asum
        const int8_t* aq
        Py_ssize_t ldq
        const float* ascale
        const int32_t* qsum
        float* y
        Py_ssize_t M, K, N, block, kblocks
    Py_ssize_t nrt_nb_tiles(Py_ssize_t N)
    Py_ssize_t nrt_nb_packed_size(Py_ssize_t K, Py_ssize_t N)
    Py_ssize_t nrt_nb_scratch_size(Py_ssize_t K)
    void nrt_nb_pack_codes(const uint8_t* b, Py_ssize_t row_bytes, Py_ssize_t N, Py_ssize_t K, uint8_t* out)
    void nrt_nb_block_sums(const nrt_nb_problem* p, Py_ssize_t r0, Py_ssize_t r1, float* asum)
    void nrt_nb_direct_tile(const nrt_nb_problem* p, Py_ssize_t t)
    void nrt_nb_scratch_tile(const nrt_nb_problem* p, Py_ssize_t t, float* w)
    void nrt_nb_quantize_rows(const nrt_nb_problem* p, Py_ssize_t r0, Py_ssize_t r1, int8_t* aq, float* ascale,
                              int32_t* qsum)
    void nrt_nb_int8_tile(const nrt_nb_problem* p, Py_ssize_t t)
    int nrt_nb_int8_on
    int nrt_nb_int8_available()

# Rows up to which the codes are read directly (the decode step, 4 rows a pass); more rows (a
# prompt) first dequantize each tile into a per-thread float32 buffer, read once per 6 rows.
# Where the two cross (one thread, 1024 x 2816, us direct / scratch): M=4 296 / 391, 6 483 /
# 481, 8 579 / 641, 10 774 / 695, 16 1149 / 1014.
DIRECT_MAX_ROWS = 8

TILE = NRT_NB_NR

# Block sizes the integer path takes: onnxruntime's CompInt8 kernels take 16 .. 256 (and its
# int32 block sums are exact up to there); a larger block keeps the float path.
# The integer path serves every row count: with 4 rows a pass over the codes it stays ~3x faster
# than the float paths, a prompt's scratch GEMM too (one thread, 1024 x 2816, us float / int):
# M=8 579 / 157, 9 821 / 198, 16 989 / 316, 32 1944 / 605, 128 6823 / 2586, 512 26651 / 10267.
INT8_MAX_BLOCK = 256


def int8_dot():
    """The path of int8_a products: "avx512_vnni" (vpdpbusd, this CPU's when it has VNNI and VBMI)
    or "float" (the float path, A kept in float32)."""
    return "avx512_vnni" if nrt_nb_int8_on else "float"


def set_int8_dot(str path):
    """Run int8_a products on `path` ("float", or "avx512_vnni" where the CPU has it) from now on;
    returns the previous path (tests compare the two)."""
    global nrt_nb_int8_on
    if path not in ("float", "avx512_vnni"):
        raise ValueError(f"path must be 'float' or 'avx512_vnni', got {path!r}")
    if path == "avx512_vnni" and not nrt_nb_int8_available():
        raise ValueError("this CPU (or build) has no avx512_vnni + avx512vbmi")
    previous = int8_dot()
    nrt_nb_int8_on = path == "avx512_vnni"
    return previous


def int8_path(Py_ssize_t block):
    """True when matmul_nbits(..., int8_a=True) runs the integer path (any number of rows)."""
    return bool(nrt_nb_int8_on) and 16 <= block <= INT8_MAX_BLOCK


def quantize_rows(const float[:, ::1] a, Py_ssize_t block):
    """A's rows quantized as the integer path does (onnxruntime's CompInt8): (codes int8 (M,
    kblocks * block), zeros past K; scales float32 (M, kblocks); code sums int32 (M, kblocks))."""
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1]
    cdef Py_ssize_t kb = (K + block - 1) // block if block > 0 else 0
    cdef nrt_nb_problem p
    if block < 1 or K == 0:
        raise ValueError(f"block = {block}, K = {K}")
    codes = np.empty((M, kb * block), np.int8)
    scales = np.empty((M, kb), np.float32)
    sums = np.empty((M, kb), np.int32)
    if M == 0:
        return codes, scales, sums
    cdef int8_t[:, ::1] q = codes
    cdef float[:, ::1] s = scales
    cdef int32_t[:, ::1] u = sums
    p.a = &a[0, 0]
    p.lda = K
    p.M = M
    p.K = K
    p.block = block
    p.kblocks = kb
    p.ldq = kb * block
    with nogil:
        nrt_nb_quantize_rows(&p, 0, M, &q[0, 0], &s[0, 0], &u[0, 0])
    return codes, scales, sums


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
                 int n_threads,
                 bint int8_a=False):
    """y = a @ w + bias, w[k, n] = (code[n, k] - zero[n, k // block]) * scale[n, k // block].

    int8_a (MatMulNBits' accuracy_level 4): where int8_path(block), A is quantized to int8 per
    row and block as onnxruntime does and the sums are integer (pyx/nbits_gemm.h); else, and
    without int8_a, the float path."""
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = y.shape[1]
    cdef Py_ssize_t kb = (K + block - 1) // block if block > 0 else 0
    cdef Py_ssize_t tiles = nrt_nb_tiles(N), t, scratch
    cdef nrt_nb_problem p
    cdef float* asum = NULL
    cdef float* work = NULL
    cdef int8_t* aq = NULL
    cdef float* ascale = NULL
    cdef int32_t* qsum = NULL
    cdef int direct = M <= DIRECT_MAX_ROWS, nt
    cdef int integer = int8_a and int8_path(block)
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
    p.ldq = kb * block
    scratch = nrt_nb_scratch_size(K)
    if integer:
        aq = <int8_t*>malloc(M * p.ldq * sizeof(int8_t))
        ascale = <float*>malloc(M * kb * sizeof(float))
        qsum = <int32_t*>malloc(M * kb * sizeof(int32_t))
        if aq == NULL or ascale == NULL or qsum == NULL:
            free(aq)
            free(ascale)
            free(qsum)
            raise MemoryError()
    elif direct:
        asum = <float*>malloc(M * kb * sizeof(float))
        if asum == NULL:
            raise MemoryError()
    else:
        work = <float*>malloc(nt * scratch * sizeof(float))
        if work == NULL:
            raise MemoryError()
    p.asum = asum
    p.aq = aq
    p.ascale = ascale
    p.qsum = qsum
    try:
        with nogil:
            if integer:
                if M <= NRT_NB_DIRECT_MR:
                    nrt_nb_quantize_rows(&p, 0, M, aq, ascale, qsum)
                else:
                    for t in prange(M, schedule="static", num_threads=nt):
                        nrt_nb_quantize_rows(&p, t, t + 1, aq, ascale, qsum)
                for t in prange(tiles, schedule="static", num_threads=nt):
                    nrt_nb_int8_tile(&p, t)
            elif direct:
                nrt_nb_block_sums(&p, 0, M, asum)
                for t in prange(tiles, schedule="static", num_threads=nt):
                    nrt_nb_direct_tile(&p, t)
            else:
                for t in prange(tiles, schedule="static", num_threads=nt):
                    nrt_nb_scratch_tile(&p, t, work + omp_get_thread_num() * scratch)
    finally:
        free(asum)
        free(work)
        free(aq)
        free(ascale)
        free(qsum)
