"""GatherElements: out[o, b, i] = x[o, idx[o, b, i], i] over the (outer, axis, inner) view.

DeBERTa's disentangled attention (and SEW-D's, its speech sibling) gathers each query's
relative-position scores with torch.gather, exported as GatherElements: (heads, seq, seq)
values picked from (heads, seq, 2 * span). numpy's take_along_axis builds a fancy index (an
intp copy of the indices, a mask of the negative ones, then its map iterator): ~200 us for
(4, 79, 79) of (4, 79, 512), 13% of a small SEW-D's run. Here one pass reads each index once,
wraps a negative one, checks its range and copies the element: the bits of x, for elements
of 1, 2, 4 or 8 bytes. Outer indices o are split statically; every output is written once, so
the result does not depend on the thread count.
"""
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cnp.import_array()


ctypedef fused word:
    uint8_t
    uint16_t
    uint32_t
    uint64_t


def gather_elements(x, idx, out, int n_threads):
    """out[o, b, i] = x[o, idx[o, b, i] (+ A if negative), i] for x (O, A, I), idx (O, B, I) int64
    and out (O, B, I), all C-contiguous, x and out of one itemsize (1, 2, 4 or 8). Raises
    IndexError naming the first index outside [-A, A). Returns out."""
    cdef int size
    if type(x) is not cnp.ndarray or type(idx) is not cnp.ndarray or type(out) is not cnp.ndarray:
        raise ValueError("gather_elements: x, idx and out must be numpy arrays")
    if cnp.PyArray_NDIM(<cnp.ndarray>x) != 3 or cnp.PyArray_NDIM(<cnp.ndarray>idx) != 3 \
            or cnp.PyArray_NDIM(<cnp.ndarray>out) != 3:
        raise ValueError("gather_elements: x, idx and out must be 3-D (outer, axis, inner)")
    size = cnp.PyArray_ITEMSIZE(<cnp.ndarray>x)
    if not (cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x) and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>idx)
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out) and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)) \
            or cnp.PyArray_TYPE(<cnp.ndarray>idx) != cnp.NPY_INT64 or size not in (1, 2, 4, 8) \
            or cnp.PyArray_ITEMSIZE(<cnp.ndarray>out) != size:
        raise ValueError("gather_elements: C-contiguous x and out of one itemsize (1, 2, 4 or 8), out "
                         "writeable, and int64 idx expected")
    cdef Py_ssize_t O = x.shape[0], A = x.shape[1], I = x.shape[2], B = idx.shape[1]
    if idx.shape[0] != O or idx.shape[2] != I or tuple(out.shape) != tuple(idx.shape):
        raise ValueError(f"gather_elements: idx {idx.shape} and out {out.shape} must be (O, B, I) for x "
                         f"{x.shape}")
    if out.size == 0:
        return out
    if A == 0:
        raise IndexError("GatherElements: indices into an empty axis")
    cdef const int64_t* ip = <const int64_t*>cnp.PyArray_DATA(<cnp.ndarray>idx)
    cdef const void* xp = cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef void* op = cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef Py_ssize_t bad
    with nogil:
        if size == 4:
            bad = run(<const uint32_t*>xp, ip, <uint32_t*>op, O, A, B, I, n_threads)
        elif size == 2:
            bad = run(<const uint16_t*>xp, ip, <uint16_t*>op, O, A, B, I, n_threads)
        elif size == 8:
            bad = run(<const uint64_t*>xp, ip, <uint64_t*>op, O, A, B, I, n_threads)
        else:
            bad = run(<const uint8_t*>xp, ip, <uint8_t*>op, O, A, B, I, n_threads)
    if bad >= 0:
        raise IndexError(f"GatherElements: index {ip[bad]} is out of range for an axis of size {A} "
                         f"(indices must be in [-{A}, {A - 1}])")
    return out


cdef Py_ssize_t run(const word* x, const int64_t* idx, word* out, Py_ssize_t O, Py_ssize_t A, Py_ssize_t B,
                    Py_ssize_t I, int n_threads) noexcept nogil:
    """The copy; the flat position of the first bad index, or -1."""
    cdef Py_ssize_t o, n_bad = 0
    if n_threads > 1:
        for o in prange(O, schedule="static", num_threads=n_threads):
            if one_outer(x, idx, out, o, A, B, I) >= 0:
                n_bad += 1                          # (a reduction; the serial pass below finds the first)
        if n_bad == 0:
            return -1
    for o in range(O):
        n_bad = one_outer(x, idx, out, o, A, B, I)
        if n_bad >= 0:
            return n_bad
    return -1


cdef inline Py_ssize_t one_outer(const word* x, const int64_t* idx, word* out, Py_ssize_t o, Py_ssize_t A,
                                 Py_ssize_t B, Py_ssize_t I) noexcept nogil:
    """The B * I outputs of outer index o. The flat position of its first bad index, or -1."""
    cdef Py_ssize_t j, base = o * B * I, n = B * I
    cdef const word* xo = x + o * A * I
    cdef int64_t k
    if I == 1:                                      # (the axis innermost: DeBERTa's gathers)
        for j in range(n):
            k = idx[base + j]
            k = k + A * (k < 0)                     # (no branch: a mix of signs would mispredict)
            if <uint64_t>k >= <uint64_t>A:
                return base + j
            out[base + j] = xo[k]
        return -1
    for j in range(n):
        k = idx[base + j]
        k = k + A * (k < 0)
        if <uint64_t>k >= <uint64_t>A:
            return base + j
        out[base + j] = xo[k * I + j % I]
    return -1
