"""Elementwise activation kernels: erf, and the activations the norms fuse.

For model graphs whose activations stand alone (e.g. an Erf-GELU after a
MatMul). float32 uses the vectorizable polynomials of moments.pxd, float64
libm. Fixed pieces, so results never depend on the thread count.
"""
from cython.parallel cimport prange
from libc.math cimport erf as erf_d

from moments cimport real, erf_f, gelu_f, activate_span, ACT_GELU

cdef enum:
    PIECE = 16384            # elements per work item


def erf(const real[::1] x,     # IN  (n,)
        real[::1] out,         # OUT (n,); may alias x
        int n_threads):
    cdef Py_ssize_t n = x.shape[0], p, i, start, stop
    if out.shape[0] != n:
        raise ValueError("out must have x's length")
    for p in prange((n + PIECE - 1) // PIECE, nogil=True, schedule="static", num_threads=n_threads):
        start = p * PIECE
        stop = min(start + PIECE, n)
        if real is float:
            for i in range(start, stop):
                out[i] = erf_f(x[i])
        else:
            for i in range(start, stop):
                out[i] = erf_d(x[i])


def activation(const real[::1] x,     # IN  (n,)
               real[::1] out,         # OUT (n,); may alias x
               int act, int n_threads):
    cdef Py_ssize_t n = x.shape[0], p, i, start, stop
    if out.shape[0] != n:
        raise ValueError("out must have x's length")
    for p in prange((n + PIECE - 1) // PIECE, nogil=True, schedule="static", num_threads=n_threads):
        start = p * PIECE
        stop = min(start + PIECE, n)
        if real is float:
            if act == ACT_GELU:
                # straight from x: no copy pass (same per-element code as activate_span)
                for i in range(start, stop):
                    out[i] = gelu_f(x[i])
                continue
        if &out[0] != &x[0]:
            for i in range(start, stop):
                out[i] = x[i]
        activate_span(&out[start], stop - start, act)
