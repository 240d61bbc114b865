"""2-D pooling over NCHW planes: MaxPool, AveragePool, GlobalAveragePool.

One plane (n, c) per work item. The window is separable: for each output
row the kernel rows inside the input are reduced (max or sum) into a row
buffer whose padding columns hold the neutral value (-inf for max, 0 for a
sum), then the kernel columns are reduced over that buffer, so no loop needs
a bounds test. Left padding, right padding and ceil_mode's overhang are all
just fill. float32 with AVX-512 runs both passes on register accumulators
(masked tails, paired loads + a permute for stride 2, a gather for larger
strides), the vertical passes of 8 output rows before their horizontal ones;
elsewhere plain loops the compiler vectorizes.

Taps are combined in a fixed order (kernel rows, then kernel columns) and
each output is computed by one thread: bitwise identical for any thread count.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport INFINITY, NAN

from moments cimport real, sums_dev
from omp cimport omp_get_thread_num

cdef extern from "pool_kernel.h":
    const bint HAVE_AVX512 "NRT_POOL_HAVE_AVX512"
    bint small_sum_f32 "nrt_small_sum_f32"(const float* x, Py_ssize_t n, double* sum) noexcept nogil
    bint maxpool_3s2p1 "nrt_maxpool_3s2p1"(const float* x, Py_ssize_t H, Py_ssize_t W, float* y,
                                           Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph) noexcept nogil
    bint pool_2x2 "nrt_pool_2x2"(const float* x, Py_ssize_t W, float* y, Py_ssize_t OH, Py_ssize_t OW,
                                 bint is_max, const float* x_end) noexcept nogil
    bint pool_rows_v "nrt_pool_rows_v"(const float* x, Py_ssize_t W, const Py_ssize_t* hs, int nh,
                                       float* row, bint is_max) noexcept nogil
    bint pool_rows_h "nrt_pool_rows_h"(const float* buf, float* yr, Py_ssize_t OW, Py_ssize_t kw,
                                       Py_ssize_t sw, Py_ssize_t dw, bint is_max, float rc,
                                       const float* colf) noexcept nogil


cdef enum:
    # output rows whose vertical passes run before their horizontal ones (AVX-512)
    ROW_GROUP = 8

cdef enum:
    # planes shorter than this are summed by four plain float64 chains (the
    # vector lanes' set-up and merge would cost more than the sum)
    SMALL_PLANE = 256


cdef inline void combine(real* acc, const real* src, Py_ssize_t sw, Py_ssize_t n,
                         bint is_max) noexcept nogil:
    """acc[t] = max(acc[t], src[t*sw]) or acc[t] + src[t*sw], for t < n."""
    cdef Py_ssize_t t
    cdef real v, m
    if is_max:
        for t in range(n):
            v = src[t * sw]
            m = acc[t]
            # keeps a NaN either side (like np.maximum); | not `or`: no branch, so it vectorizes
            acc[t] = m if ((v <= m) | (m != m)) else v
    else:
        for t in range(n):
            acc[t] = acc[t] + src[t * sw]


cdef inline void pool_plane(const real* x, Py_ssize_t H, Py_ssize_t W, real* y,
                            Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw,
                            Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                            Py_ssize_t dh, Py_ssize_t dw, bint is_max,
                            const long long* row_count, const long long* col_count,
                            const float* colf, real* buf, Py_ssize_t L, Py_ssize_t* hs) noexcept nogil:
    """Separable: the kernel rows reduced into a padded row buffer (contiguous,
    full width), then the kernel columns over it (strided), one output row at a time."""
    cdef Py_ssize_t oh, ow, i, j, h, t
    cdef int nh
    cdef real fill = -INFINITY if is_max else 0
    cdef real* row = buf + pw
    cdef real* yr
    cdef Py_ssize_t g0, g1
    if real is float:
        if (is_max and kh == 3 and kw == 3 and sh == 2 and sw == 2 and dh == 1 and dw == 1 and pw == 1
                and maxpool_3s2p1(x, H, W, y, OH, OW, ph)):
            return
        if HAVE_AVX512:
            # ROW_GROUP padded rows: all vertical passes of a group, then its horizontal ones
            for t in range(ROW_GROUP * L):
                buf[t] = fill   # the padding columns are never written again
            g0 = 0
            while g0 < OH:
                g1 = min(OH, g0 + ROW_GROUP)
                for oh in range(g0, g1):
                    nh = 0
                    for i in range(kh):
                        h = oh * sh - ph + i * dh
                        if 0 <= h < H:
                            hs[nh] = h
                            nh = nh + 1
                    pool_rows_v(x, W, hs, nh, buf + (oh - g0) * L + pw, is_max)
                for oh in range(g0, g1):
                    pool_rows_h(buf + (oh - g0) * L, y + oh * OW, OW, kw, sw, dw, is_max,
                                <float>(row_count[oh] if not is_max else 1), colf)
                g0 = g1
            return
    for t in range(L):
        buf[t] = fill           # the padding columns are never written again
    for oh in range(OH):
        # start from the neutral value, not a copy of the first tap: the copies
        # would be strided scalar loops, combine() has a vector path
        for t in range(W):
            row[t] = fill
        for i in range(kh):
            h = oh * sh - ph + i * dh
            if h < 0 or h >= H:
                continue        # a padded row: neutral for both reductions
            combine(row, x + h * W, 1, W, is_max)
        yr = y + oh * OW
        for ow in range(OW):
            yr[ow] = fill
        for j in range(kw):
            # constant strides for the common 1 and 2: contiguous or paired loads
            if sw == 1:
                combine(yr, buf + j * dw, 1, OW, is_max)
            elif sw == 2:
                combine(yr, buf + j * dw, 2, OW, is_max)
            else:
                combine(yr, buf + j * dw, sw, OW, is_max)
        if not is_max:
            for ow in range(OW):
                yr[ow] = yr[ow] / <real>(row_count[oh] * col_count[ow])


cdef inline real max_keep_nan(real m, real v) noexcept nogil:
    """max(m, v) keeping a NaN either side, as combine() takes v into m."""
    return m if ((v <= m) | (m != m)) else v


cdef inline void pool_2x2_plane(const real* x, Py_ssize_t W, real* y, Py_ssize_t OH,
                                Py_ssize_t OW, bint is_max, const real* x_end) noexcept nogil:
    """2x2 windows, stride 2, no padding: pool_plane's combination order
    (the kernel rows, then the kernel columns) without its row buffer.
    x_end: the end of the whole input (loads may run past the plane, not past it)."""
    cdef Py_ssize_t r, o
    cdef const real* x0
    cdef const real* x1
    cdef real* yr
    if real is float:
        if pool_2x2(x, W, y, OH, OW, is_max, x_end):
            return
    for r in range(OH):
        x0 = x + 2 * r * W
        x1 = x0 + W
        yr = y + r * OW
        if is_max:
            for o in range(OW):
                yr[o] = max_keep_nan(max_keep_nan(x0[2 * o], x1[2 * o]),
                                     max_keep_nan(x0[2 * o + 1], x1[2 * o + 1]))
        else:
            for o in range(OW):
                yr[o] = ((x0[2 * o] + x1[2 * o]) + (x0[2 * o + 1] + x1[2 * o + 1])) / <real>4


cdef bint counts_all(const long long[::1] counts, long long value) noexcept:
    cdef Py_ssize_t i
    for i in range(counts.shape[0]):
        if counts[i] != value:
            return False
    return True


def pool2d(const real[:, :, ::1] x,            # IN  (planes, H, W)
           real[:, :, ::1] out,                # OUT (planes, OH, OW)
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
           bint is_max,
           const long long[::1] row_count,     # IN  (OH,) taps counted per output row (average)
           const long long[::1] col_count,     # IN  (OW,) ... per output column
           int n_threads):
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t OH = out.shape[1], OW = out.shape[2], p, L, per_thread, ow
    cdef char* work
    cdef real* buf
    cdef float* colf = NULL
    if out.shape[0] != P:
        raise ValueError("out must have x's number of planes")
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or dh < 1 or dw < 1 or ph < 0 or pw < 0:
        raise ValueError("kernel, strides and dilations must be >= 1, pads >= 0")
    if not is_max and (row_count.shape[0] != OH or col_count.shape[0] != OW):
        raise ValueError("row_count / col_count must have OH / OW entries")
    if P == 0 or OH == 0 or OW == 0:
        return
    L = (OW - 1) * sw + (kw - 1) * dw + 1       # padded row length the windows read
    if L < pw + W:
        L = pw + W                              # ... and room for the whole input row
    if n_threads > P:
        n_threads = <int>P
    if (kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0 and dh == 1 and dw == 1
            and 2 * OH <= H and 2 * OW <= W and (is_max or counts_all(row_count, 2) and counts_all(col_count, 2))):
        for p in prange(P, nogil=True, schedule="static", num_threads=n_threads):
            pool_2x2_plane(&x[p, 0, 0], W, &out[p, 0, 0], OH, OW, is_max, &x[0, 0, 0] + P * H * W)
        return
    # per thread: the padded row, then the list of kernel rows inside the input
    per_thread = ((ROW_GROUP * L * sizeof(real) + 63) // 64) * 64 + kh * sizeof(Py_ssize_t)
    work = <char*>malloc(n_threads * per_thread + OW * sizeof(float))
    if work == NULL:
        raise MemoryError()
    try:
        if not is_max:
            colf = <float*>(work + n_threads * per_thread)
            for ow in range(OW):
                colf[ow] = <float>col_count[ow]     # small counts: exact as floats
        for p in prange(P, nogil=True, schedule="dynamic", num_threads=n_threads):
            buf = <real*>(work + omp_get_thread_num() * per_thread)
            pool_plane(&x[p, 0, 0], H, W, &out[p, 0, 0], OH, OW, kh, kw, sh, sw, ph, pw,
                       dh, dw, is_max, &row_count[0] if not is_max else NULL,
                       &col_count[0] if not is_max else NULL, colf, buf, L,
                       <Py_ssize_t*>(<char*>buf + ((ROW_GROUP * L * sizeof(real) + 63) // 64) * 64))
    finally:
        free(work)


cdef inline double small_sum(const real* x, Py_ssize_t n) noexcept nogil:
    """sum(x) for a short run (ResNet's 7x7 planes): float64 vector lanes (float32, AVX-512)
    or four float64 chains, no chunk set-up."""
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0
    cdef Py_ssize_t i = 0
    if real is float:
        if small_sum_f32(x, n, &a0):
            return a0
    while i + 4 <= n:
        a0 += x[i]
        a1 += x[i + 1]
        a2 += x[i + 2]
        a3 += x[i + 3]
        i += 4
    while i < n:
        a0 += x[i]
        i += 1
    return (a0 + a1) + (a2 + a3)


def global_average(const real[:, ::1] x,       # IN  (planes, H*W)
                   real[::1] out,              # OUT (planes,)
                   int n_threads):
    """Mean of each plane, accumulated in float64 lanes."""
    cdef Py_ssize_t P = x.shape[0], n = x.shape[1], p
    if out.shape[0] != P:
        raise ValueError("out must have one entry per plane")
    if P == 0:
        return
    if n == 0:
        for p in range(P):
            out[p] = NAN                 # the mean of nothing
        return
    if n < SMALL_PLANE:
        for p in prange(P, nogil=True, schedule="static", num_threads=n_threads):
            out[p] = <real>(small_sum(&x[p, 0], n) / n)
        return
    for p in prange(P, nogil=True, schedule="static", num_threads=n_threads):
        out[p] = <real>(sums_dev(&x[p, 0], n, 0.0).s1 / n)
