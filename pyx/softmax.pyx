"""Row softmax: y = exp(x - max) / sum(exp(x - max)) over the last axis.

One row per work item, three passes over the row while it sits in cache (max,
exp and sum, scale), with the vectorizable exp of moments.pxd for float32 (softmax_kernel.h's
AVX-512 row where compiled in).
A NaN stays inside its row; a row of -inf gives NaN, or zeros with
`empty_rows_zero` (attention with a fully masked query).
"""
from cython.parallel cimport prange
from libc.math cimport exp as exp_d, INFINITY

from moments cimport real, LANES, BLOCK, exp_f, lane_total

cdef extern from "softmax_kernel.h" nogil:
    bint vec_softmax_row "nrt_softmax_row_f32"(const float* x, float* y, Py_ssize_t n,
                                               bint empty_rows_zero) noexcept


cdef inline void softmax_row(const real* x, real* y, Py_ssize_t n, bint empty_rows_zero) noexcept nogil:
    cdef real mx[LANES]
    cdef real blk[LANES]
    cdef double acc[LANES]
    cdef real m, v
    cdef double s
    cdef Py_ssize_t i = 0, j, k
    if real is float:
        if vec_softmax_row(x, y, n, empty_rows_zero):
            return
    for j in range(LANES):
        mx[j] = -INFINITY
        acc[j] = 0.0
    while i + LANES <= n:
        for j in range(LANES):
            v = x[i + j]
            mx[j] = v if v > mx[j] else mx[j]
        i += LANES
    m = -INFINITY
    for j in range(LANES):
        m = mx[j] if mx[j] > m else m
    while i < n:
        m = x[i] if x[i] > m else m
        i += 1
    if m == -INFINITY:
        m = 0          # an all -inf row: exp gives zeros, not (-inf) - (-inf)
    i = 0
    while i + BLOCK <= n:
        # partial sums in x's precision over BLOCK elements, then float64 lanes
        for j in range(LANES):
            blk[j] = 0
        for k in range(BLOCK // LANES):
            for j in range(LANES):
                if real is float:
                    v = exp_f(x[i + k * LANES + j] - m)
                else:
                    v = exp_d(x[i + k * LANES + j] - m)
                y[i + k * LANES + j] = v
                blk[j] += v
        for j in range(LANES):
            acc[j] += blk[j]
        i += BLOCK
    while i < n:
        if real is float:
            v = exp_f(x[i] - m)
        else:
            v = exp_d(x[i] - m)
        y[i] = v
        acc[0] += v
        i += 1
    s = lane_total(acc)
    if s == 0.0 and empty_rows_zero:
        return         # y is all zeros already
    v = <real>(1.0 / s)
    for i in range(n):
        y[i] = y[i] * v


def softmax_rows(const real[:, ::1] x,    # IN  (R, n)
                 real[:, ::1] out,        # OUT (R, n); may alias x
                 bint empty_rows_zero, int n_threads):
    cdef Py_ssize_t R = x.shape[0], n = x.shape[1], r
    if out.shape[0] != R or out.shape[1] != n:
        raise ValueError("out must have x's shape")
    if R == 0 or n == 0:
        return
    if n_threads == 1:
        with nogil:
            for r in range(R):
                softmax_row(&x[r, 0], &out[r, 0], n, empty_rows_zero)
        return
    for r in prange(R, nogil=True, schedule="static", num_threads=n_threads):
        softmax_row(&x[r, 0], &out[r, 0], n, empty_rows_zero)
