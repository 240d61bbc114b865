"""float16 / bfloat16 <-> float32 conversion (half.h's vectorized loops).

The API uses it where a half-precision tensor meets code that wants float32
(parameters, the kernels without a native half path) and the tests use the
`portable` switch to check the scalar code a build without F16C/AVX would run.
How many threads a conversion gets is the caller's (normrt._thread_policy).
"""
from cython.parallel cimport prange

from half cimport half_t, half_load, half_store, half_load_portable, half_store_portable, half_isa


cdef enum:
    PIECE = 65536   # elements per work item (fixed: the result never depends on the threads)


cdef void convert(const void* src, void* dst, Py_ssize_t n, int kind, bint to_half, bint portable,
                  int n_threads) noexcept nogil:
    """dst[i] = src[i] converted, float32 -> half words (to_half) or back, PIECE by PIECE."""
    cdef Py_ssize_t p, start, m
    for p in prange((n + PIECE - 1) // PIECE, schedule="static", num_threads=n_threads):
        start = p * PIECE
        m = min(<Py_ssize_t>PIECE, n - start)
        if to_half and portable:
            half_store_portable(kind, <const float*>src + start, <half_t*>dst + start, m)
        elif to_half:
            half_store(kind, <const float*>src + start, <half_t*>dst + start, m)
        elif portable:
            half_load_portable(kind, <const half_t*>src + start, <float*>dst + start, m)
        else:
            half_load(kind, <const half_t*>src + start, <float*>dst + start, m)


def to_float32(const half_t[::1] src,   # IN  (n,) float16/bfloat16 bits
               float[::1] dst,          # OUT (n,)
               int kind, int n_threads, bint portable=False):
    cdef Py_ssize_t n = src.shape[0]
    if dst.shape[0] != n:
        raise ValueError("dst must have src's length")
    if n:
        with nogil:
            convert(&src[0], &dst[0], n, kind, False, portable, n_threads)


def from_float32(const float[::1] src,  # IN  (n,)
                 half_t[::1] dst,       # OUT (n,) float16/bfloat16 bits, rounded to nearest even
                 int kind, int n_threads, bint portable=False):
    cdef Py_ssize_t n = src.shape[0]
    if dst.shape[0] != n:
        raise ValueError("dst must have src's length")
    if n:
        with nogil:
            convert(&src[0], &dst[0], n, kind, True, portable, n_threads)


def isa():
    """The conversion instructions this build uses ("avx512f", "f16c+avx2", ..., "portable")."""
    return half_isa().decode()
