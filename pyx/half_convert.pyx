"""float16 / bfloat16 <-> float32 conversion (half.h's vectorized loops).

The API uses it where a half-precision tensor meets code that wants float32
(parameters, the kernels without a native half path) and the tests use the
`portable` switch to check the scalar code a build without F16C/AVX would run.
How many threads a conversion gets is the caller's (normrt._thread_policy).
"""
cimport numpy as cnp
from cython.parallel cimport prange

from half cimport (half_t, half_load, half_store, half_load_portable, half_store_portable, half_isa,
                   bf16_store_path, bf16_instructions_available, bf16_store_name)

cnp.import_array()


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
    """The conversion instructions this module uses ("avx512bf16", "avx512f", "f16c+avx2", ..., "portable")."""
    return half_isa().decode()


def bf16_store():
    """How this module rounds float32 to bfloat16: "avx512_bf16" (vcvtneps2bf16, chosen when it
    loaded from the CPU and NORMRT_BF16_INSTRUCTIONS) or "integer" (round to nearest even)."""
    return bf16_store_name().decode()


def bf16_instructions():
    """Whether this CPU and this build can round by vcvtneps2bf16 (whatever the environment says)."""
    return bool(bf16_instructions_available())


# the bfloat16 roundings by name, for tests and scripts/bf16_sweep.py
BF16_PATHS = {"portable": 0, "integer": 1, "instruction": 2}


def bf16_round(const float[::1] src,    # IN  (n,)
               half_t[::1] dst,         # OUT (n,) bfloat16 bits
               str path):
    """dst = src rounded to bfloat16 by one named path, whatever this module chose: "portable"
    (the scalar C code), "integer" (this level's vector integer rounding) or "instruction"
    (vcvtneps2bf16 with its NaN/subnormal fix-up; ValueError where the CPU or build lacks it)."""
    cdef Py_ssize_t n = src.shape[0]
    cdef int p, rc = 0
    if path not in BF16_PATHS:
        raise ValueError(f"path must be one of {', '.join(BF16_PATHS)}, got {path!r}")
    if dst.shape[0] != n:
        raise ValueError("dst must have src's length")
    p = BF16_PATHS[path]
    if p == 2 and not bf16_instructions_available():
        raise ValueError("path 'instruction': this CPU or build has no AVX-512 BF16")
    if n:
        with nogil:
            rc = bf16_store_path(p, &src[0], &dst[0], n)
    if rc != 0:
        raise ValueError(f"path {path!r} is not available in this build")


# ------------------------------------------------------------ a plan's per-run conversions
# A specialized plan converts a half-precision step's operands and result on every run
# (normrt.onnx.half_steps): arrays it allocated itself, of shapes it checked when it was
# built. These take the ndarrays as they are, reading their data pointers through the numpy C
# API (no typed-memoryview acquisition, ~1 us each), and run one thread without a parallel
# region: a small model's steps are a few thousand elements.

cdef inline bint _c_array(object a, int type_num, Py_ssize_t n, bint writeable):
    if type(a) is not cnp.ndarray:
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == type_num and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_SIZE(arr) == n
            and (not writeable or cnp.PyArray_ISWRITEABLE(arr)))


cdef inline void _run(const void* src, void* dst, Py_ssize_t n, int kind, bint to_half, int n_threads) noexcept:
    """convert(); one thread calls the loop directly (no parallel region to enter)."""
    with nogil:
        if n_threads > 1:
            convert(src, dst, n, kind, to_half, False, n_threads)
        elif to_half:
            half_store(kind, <const float*>src, <half_t*>dst, n)
        else:
            half_load(kind, <const half_t*>src, <float*>dst, n)


cdef inline object _half_words(object x, Py_ssize_t n):
    """x (a float16/bfloat16 ndarray of n elements, any layout) as C-contiguous uint16 words."""
    import numpy as np
    x = np.ascontiguousarray(x).view(np.uint16)
    if cnp.PyArray_SIZE(<cnp.ndarray>x) != n:
        raise ValueError(f"expected {n} elements, got {cnp.PyArray_SIZE(<cnp.ndarray>x)}")
    return x


def widen_into(x, out, int kind, int n_threads):
    """out[...] = x widened to float32 and returned: x a float16/bfloat16 ndarray (kind HALF_F16/BF16)
    of out's size, out a writeable C-contiguous float32 ndarray."""
    cdef Py_ssize_t n
    if not _c_array(out, cnp.NPY_FLOAT32, cnp.PyArray_SIZE(<cnp.ndarray>out) if type(out) is cnp.ndarray else -1,
                    True):
        raise ValueError("widen_into: out must be a writeable C-contiguous float32 array")
    n = cnp.PyArray_SIZE(<cnp.ndarray>out)
    if type(x) is not cnp.ndarray or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x) \
            or cnp.PyArray_ITEMSIZE(<cnp.ndarray>x) != 2 or cnp.PyArray_SIZE(<cnp.ndarray>x) != n:
        x = _half_words(x, n)
    _run(cnp.PyArray_DATA(<cnp.ndarray>x), cnp.PyArray_DATA(<cnp.ndarray>out), n, kind, False, n_threads)
    return out


def narrow_into(f, y, int kind, int n_threads):
    """y[...] = float32 `f` rounded to y's half type (nearest even) and returned: y a writeable
    C-contiguous float16/bfloat16 ndarray (kind HALF_F16/BF16), f a float32 ndarray of y's size."""
    import numpy as np
    cdef Py_ssize_t n
    if type(y) is not cnp.ndarray or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>y) \
            or cnp.PyArray_ITEMSIZE(<cnp.ndarray>y) != 2 or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>y):
        raise ValueError("narrow_into: y must be a writeable C-contiguous float16/bfloat16 array")
    n = cnp.PyArray_SIZE(<cnp.ndarray>y)
    if not _c_array(f, cnp.NPY_FLOAT32, n, False):
        f = np.ascontiguousarray(f, np.float32)
        if cnp.PyArray_SIZE(<cnp.ndarray>f) != n:
            raise ValueError(f"narrow_into: f must have {n} elements")
    _run(cnp.PyArray_DATA(<cnp.ndarray>f), cnp.PyArray_DATA(<cnp.ndarray>y), n, kind, True, n_threads)
    return y
