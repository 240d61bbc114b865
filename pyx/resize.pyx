"""Resize kernels: nearest and (bi)linear resampling of the last two axes.

The input is viewed as P planes (P = the product of the leading axes), each
(H, W) -> (OH, OW). Python (normrt.onnx.ops.resize) turns every ONNX
coordinate transformation and nearest mode into index tables (and, for
linear, weights), so these kernels only gather:

* nearest: y[p, i, j] = x[p, rows[i], cols[j]]. The index maps are monotone,
  so output rows with the same source row are neighbours: the first is
  gathered, the others copied from it. An integer column factor f
  (cols[j] == j // f) repeats each source value f times without a table
  (f = 2 is its own loop: the compiler vectorizes it).
* linear: separable, columns first: each source row a work item needs is
  resampled along its columns once, h = x[r, c0] + (x[r, c1] - x[r, c0]) * wc
  (kept while consecutive output rows use it: an upsampling reads each twice),
  then y = h[r0] + (h[r1] - h[r0]) * wr, a contiguous lerp - in the input's
  dtype (onnx.reference interpolates in float64: within rounding of it).

Work items are (plane, block of output rows), split statically: every output
element is computed by the same arithmetic whatever the thread count.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

from omp cimport omp_get_thread_num

ctypedef fused real:
    float
    double

cdef enum:
    ROWS = 8            # output rows per work item


cdef inline void gather_row(const real* src, real* dst, const Py_ssize_t* cols, Py_ssize_t ow,
                            Py_ssize_t w, Py_ssize_t fx) noexcept nogil:
    """dst[j] = src[cols[j]], j < ow (fx > 0: cols[j] == j // fx for every j)."""
    cdef Py_ssize_t i, j, t
    cdef real v
    if fx == 1:
        memcpy(dst, src, ow * sizeof(real))
    elif fx == 2:
        for i in range(ow // 2):
            dst[2 * i] = src[i]
            dst[2 * i + 1] = src[i]
        if ow & 1:
            dst[ow - 1] = src[ow // 2]
    elif fx > 2:
        for i in range(ow // fx):
            v = src[i]
            for t in range(fx):
                dst[i * fx + t] = v
        for j in range(ow // fx * fx, ow):
            dst[j] = src[j // fx]
    else:
        for j in range(ow):
            dst[j] = src[cols[j]]


def nearest(const real[:, :, ::1] x,        # IN  (P, H, W)
            real[:, :, ::1] y,              # OUT (P, OH, OW); must not overlap x
            const Py_ssize_t[::1] rows,     # IN  (OH,) source row of each output row, nondecreasing
            const Py_ssize_t[::1] cols,     # IN  (OW,) source column of each output column
            Py_ssize_t fx,                  # f > 0 when cols[j] == j // f for every j, else 0
            int n_threads):
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t OH = y.shape[1], OW = y.shape[2]
    cdef Py_ssize_t nb, item, p, i0, i1, i
    if y.shape[0] != P or rows.shape[0] != OH or cols.shape[0] != OW:
        raise ValueError("y, rows and cols must match x's planes and y's size")
    if P == 0 or OH == 0 or OW == 0:
        return
    if H == 0 or W == 0:
        raise ValueError("x must not be empty when y is not")
    for i in range(OH):
        if rows[i] < 0 or rows[i] >= H or (i and rows[i] < rows[i - 1]):
            raise ValueError("rows must be nondecreasing indices into x's rows")
    for i in range(OW):
        if cols[i] < 0 or cols[i] >= W:
            raise ValueError("cols must index x's columns")
        if fx > 0 and cols[i] != i // fx:
            raise ValueError("cols is not j // fx")
    nb = (OH + ROWS - 1) // ROWS
    for item in prange(P * nb, nogil=True, schedule="static", num_threads=n_threads):
        p = item // nb
        i0 = (item % nb) * ROWS
        i1 = min(i0 + ROWS, OH)
        for i in range(i0, i1):
            if i > i0 and rows[i] == rows[i - 1]:
                memcpy(&y[p, i, 0], &y[p, i - 1, 0], OW * sizeof(real))
            else:
                gather_row(&x[p, rows[i], 0], &y[p, i, 0], &cols[0], OW, W, fx)


cdef inline void lerp_cols(const real* t, real* dst, const Py_ssize_t* c0, const Py_ssize_t* c1,
                           const real* wc, Py_ssize_t ow) noexcept nogil:
    """dst[j] = t[c0[j]] + (t[c1[j]] - t[c0[j]]) * wc[j]."""
    cdef Py_ssize_t j
    cdef real a
    for j in range(ow):
        a = t[c0[j]]
        dst[j] = a + (t[c1[j]] - a) * wc[j]


cdef inline void source_row(const real* src, real* h, const Py_ssize_t* c0, const Py_ssize_t* c1,
                            const real* wc, Py_ssize_t ow, bint lerp) noexcept nogil:
    """h = the source row resampled along its columns (a copy when they are not resized)."""
    if lerp:
        lerp_cols(src, h, c0, c1, wc, ow)
    else:
        memcpy(h, src, ow * sizeof(real))


def linear(const real[:, :, ::1] x,         # IN  (P, H, W)
           real[:, :, ::1] y,               # OUT (P, OH, OW); must not overlap x
           const Py_ssize_t[::1] r0,        # IN  (OH,) lower source row of each output row
           const Py_ssize_t[::1] r1,        # IN  (OH,) upper source row
           const real[::1] wr,              # IN  (OH,) weight of the upper row
           bint lerp_rows,                  # False: rows are not resized (y row i is x row r0[i])
           const Py_ssize_t[::1] c0,        # IN  (OW,) lower source column of each output column
           const Py_ssize_t[::1] c1,        # IN  (OW,) upper source column
           const real[::1] wc,              # IN  (OW,) weight of the upper column
           bint lerp_cols_,                 # False: columns are not resized (c0 is the identity)
           int n_threads):
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t OH = y.shape[1], OW = y.shape[2]
    cdef Py_ssize_t nb, item, p, i0, i1, i, j, tid, lo_src, hi_src, ra, rb
    cdef real* buf
    cdef real* lo
    cdef real* hi
    cdef real* sw
    cdef real* dst
    cdef real w
    if (y.shape[0] != P or r0.shape[0] != OH or r1.shape[0] != OH or wr.shape[0] != OH
            or c0.shape[0] != OW or c1.shape[0] != OW or wc.shape[0] != OW):
        raise ValueError("y and the row / column tables must match x's planes and y's size")
    if P == 0 or OH == 0 or OW == 0:
        return
    if H == 0 or W == 0:
        raise ValueError("x must not be empty when y is not")
    if not lerp_cols_ and OW != W:
        raise ValueError("columns not resized: y must have x's width")
    for i in range(OH):
        if not (0 <= r0[i] < H and 0 <= r1[i] < H):
            raise ValueError("r0 / r1 must index x's rows")
    for j in range(OW):
        if not (0 <= c0[j] < W and 0 <= c1[j] < W):
            raise ValueError("c0 / c1 must index x's columns")
    nb = (OH + ROWS - 1) // ROWS
    n_threads = max(1, n_threads)
    buf = <real*>malloc(n_threads * 2 * OW * sizeof(real))     # two resampled source rows per thread
    if buf == NULL:
        raise MemoryError()
    try:
        for item in prange(P * nb, nogil=True, schedule="static", num_threads=n_threads):
            tid = omp_get_thread_num()
            lo = buf + tid * 2 * OW
            hi = lo + OW
            lo_src = -1
            hi_src = -1
            p = item // nb
            i0 = (item % nb) * ROWS
            i1 = min(i0 + ROWS, OH)
            for i in range(i0, i1):
                ra = r0[i]
                rb = r1[i] if lerp_rows else ra
                if ra != lo_src:
                    if ra == hi_src:            # moving down: the upper row becomes the lower
                        sw = lo
                        lo = hi
                        hi = sw
                        hi_src = lo_src
                    else:
                        source_row(&x[p, ra, 0], lo, &c0[0], &c1[0], &wc[0], OW, lerp_cols_)
                    lo_src = ra
                dst = &y[p, i, 0]
                if not lerp_rows:
                    memcpy(dst, lo, OW * sizeof(real))
                    continue
                if rb != hi_src:
                    source_row(&x[p, rb, 0], hi, &c0[0], &c1[0], &wc[0], OW, lerp_cols_)
                    hi_src = rb
                w = wr[i]
                for j in range(OW):
                    dst[j] = lo[j] + (hi[j] - lo[j]) * w
    finally:
        free(buf)
