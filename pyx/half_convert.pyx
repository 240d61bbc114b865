"""float16 / bfloat16 <-> float32 conversion (half.h's vectorized loops).

The API uses it where a half-precision tensor meets code that wants float32
(parameters, the kernels without a native half path) and the tests use the
`portable` switch to check the scalar code a build without F16C/AVX would run.
"""
from cython.parallel cimport prange

from half cimport half_t, half_load, half_store, half_load_portable, half_store_portable, half_isa


cdef enum:
    PIECE = 65536   # elements per work item


def to_float32(const half_t[::1] src,   # IN  (n,) float16/bfloat16 bits
               float[::1] dst,          # OUT (n,)
               int kind, int n_threads, bint portable=False):
    cdef Py_ssize_t n = src.shape[0], p, start
    if dst.shape[0] != n:
        raise ValueError("dst must have src's length")
    if n == 0:
        return
    if portable:
        with nogil:
            half_load_portable(kind, &src[0], &dst[0], n)
        return
    if n < 4 * PIECE:
        n_threads = 1
    for p in prange((n + PIECE - 1) // PIECE, nogil=True, schedule="static", num_threads=n_threads):
        start = p * PIECE
        half_load(kind, &src[start], &dst[start], min(<Py_ssize_t>PIECE, n - start))


def from_float32(const float[::1] src,  # IN  (n,)
                 half_t[::1] dst,       # OUT (n,) float16/bfloat16 bits, rounded to nearest even
                 int kind, int n_threads, bint portable=False):
    cdef Py_ssize_t n = src.shape[0], p, start
    if dst.shape[0] != n:
        raise ValueError("dst must have src's length")
    if n == 0:
        return
    if portable:
        with nogil:
            half_store_portable(kind, &src[0], &dst[0], n)
        return
    if n < 4 * PIECE:
        n_threads = 1
    for p in prange((n + PIECE - 1) // PIECE, nogil=True, schedule="static", num_threads=n_threads):
        start = p * PIECE
        half_store(kind, &src[start], &dst[start], min(<Py_ssize_t>PIECE, n - start))


def isa():
    """The conversion instructions this build uses ("avx512f", "f16c+avx2", ..., "portable")."""
    return half_isa().decode()
