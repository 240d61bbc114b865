"""Grouped convolution with few input channels per group: depthwise 2-D convs and 1-D convs.

The depthwise convs of ConvNeXt, EfficientNet and MobileViT (3x3 to 7x7, stride
1 or 2, one input channel per group, `M / group` outputs per group) and 1-D
convs with few input channels per group (wav2vec2's first feature conv: one
channel, kernel 10, stride 5; run as 2-D with one row) have cg * kh * kw taps
per output: far too little work for a packed GEMM. The inner loops are in
grouped_conv.h (register-blocked over a polyphase, zero-padded copy of each
group's input planes, so no load depends on the stride or the padding).

Work items are (image, group) pairs, statically split over the threads; each
item fills its thread's scratch once and computes the group's output channels.
Depthwise convs whose output rows fit one vector (ConvNeXt's 7x7 on 16x16 to
2x2 maps) take four groups per item instead, their planes computed side by
side so more accumulator chains are in flight (the same sums, the same bits).
Every output is summed by one thread in a fixed tap order, so results do not
depend on the thread count.
"""
cimport numpy as cnp
from kernel_args cimport is_f32_c
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free

import numpy as np

from omp cimport omp_get_thread_num
from moments cimport activate_span

cnp.import_array()

cdef extern from "grouped_conv.h" nogil:
    ctypedef struct nrt_gc_geom:
        Py_ssize_t H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, cg, mg, Hp, Wq, OWv
    Py_ssize_t nrt_gc_setup(nrt_gc_geom* g)
    void nrt_gc_group(const nrt_gc_geom* g, const float* x, const float* w, const float* bias, float* y,
                      Py_ssize_t grp, float* scratch)
    int nrt_gc_interleaved(const nrt_gc_geom* g)
    void nrt_gc_groups_ng(const nrt_gc_geom* g, const float* x, const float* w, const float* bias, float* y,
                          Py_ssize_t grp0, Py_ssize_t ng, float* scratch)
    enum: NRT_GC_NG

cdef extern from "depthwise_in_registers.h" nogil:
    ctypedef struct nrt_dwr_tap:
        pass
    enum: NRT_DWR_AVAILABLE
    enum: NRT_DWR_NC
    int nrt_dwr_fits(const nrt_gc_geom* g)
    nrt_dwr_tap* nrt_dwr_setup(const nrt_gc_geom* g, int* refused)
    void nrt_dwr_planes(const nrt_gc_geom* g, const nrt_dwr_tap* taps, const float* x, const float* w,
                        const float* bias, float* y, Py_ssize_t m0, Py_ssize_t nc)


def grouped_conv2d(const float[:, :, :, ::1] x,   # IN  (N, C, H, W)
                   const float[:, :, :, ::1] w,   # IN  (M, C / group, kh, kw)
                   const float[::1] bias,         # IN  (M,) or empty: no bias
                   float[:, :, :, ::1] y,         # OUT (N, M, OH, OW); must not overlap x
                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                   Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t group, int n_threads,
                   int act=0):                    # moments.pxd's ACT_*: the activation epilogue
    """y = act(conv(x, w) + bias) with `group` groups, pads (pt, pl) at the top/left (the
    bottom/right padding is what the output size implies). The activation runs on each item's
    output planes as soon as they are written (still in cache): activate_span, as everywhere."""
    cdef nrt_gc_geom g
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], M = y.shape[1]
    g.H, g.W, g.OH, g.OW = x.shape[2], x.shape[3], y.shape[2], y.shape[3]
    g.KH, g.KW, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw = w.shape[2], w.shape[3], sh, sw, pt, pl, dh, dw
    if group < 1 or C % group or M % group or w.shape[0] != M or w.shape[1] * group != C or y.shape[0] != N:
        raise ValueError(f"grouped_conv2d: x ({N}, {C}, {g.H}, {g.W}), w ({w.shape[0]}, {w.shape[1]}, {g.KH}, "
                         f"{g.KW}), y ({y.shape[0]}, {M}, {g.OH}, {g.OW}) and group {group} do not fit")
    if bias.shape[0] not in (0, M):
        raise ValueError(f"grouped_conv2d: bias must have 0 or {M} elements, got {bias.shape[0]}")
    if sh < 1 or sw < 1 or dh < 1 or dw < 1 or n_threads < 1:
        raise ValueError("grouped_conv2d: strides, dilations and n_threads must be >= 1")
    if pt < 0 or pl < 0:
        raise ValueError(f"grouped_conv2d: pads must be >= 0, got ({pt}, {pl})")
    if N == 0 or M == 0 or g.OH == 0 or g.OW == 0:
        return
    if g.KH == 0 or g.KW == 0:
        raise ValueError("grouped_conv2d: the kernel must not be empty")
    g.cg = C // group
    g.mg = M // group
    nrt_gc_setup(&g)
    cdef nrt_dwr_tap* taps = NULL
    cdef int refused = 0
    if NRT_DWR_AVAILABLE and nrt_dwr_fits(&g):
        taps = nrt_dwr_setup(&g, &refused)
        if taps == NULL and not refused:
            raise MemoryError()
    try:
        _run(&g, taps, &x[0, 0, 0, 0], &w[0, 0, 0, 0], &bias[0] if bias.shape[0] else NULL, &y[0, 0, 0, 0],
             N, C, M, group, n_threads, act)
    finally:
        free(taps)


cdef int _run(const nrt_gc_geom* g, const nrt_dwr_tap* taps, const float* x, const float* w, const float* bp,
              float* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M, Py_ssize_t group, int n_threads,
              int act) except -1:
    """The conv on checked arguments (g after nrt_gc_setup): on depthwise_in_registers.h when
    `taps` (its nrt_dwr_setup) is given, else on grouped_conv.h's scratch."""
    if taps != NULL:
        return _planes_in_registers(g, taps, x, w, bp, y, N, C, M, n_threads, act)
    cdef Py_ssize_t per = g.cg * g.sw * g.Hp * g.Wq        # nrt_gc_setup's scratch floats per item
    # small depthwise planes: NRT_GC_NG groups per item, side by side (grouped_conv.h)
    cdef Py_ssize_t ng = NRT_GC_NG if nrt_gc_interleaved(g) else 1
    cdef Py_ssize_t per_image = (group + ng - 1) // ng
    cdef Py_ssize_t items = N * per_image, item, n, k, plane = g.OH * g.OW
    cdef Py_ssize_t x_image = C * g.H * g.W, y_image = M * plane
    if n_threads > items:
        n_threads = <int>items
    cdef float* scratch = <float*>malloc(n_threads * ng * per * sizeof(float))   # an item's planes per thread
    if scratch == NULL:
        raise MemoryError()
    try:
        for item in prange(items, nogil=True, schedule="static", num_threads=n_threads):
            n = item // per_image
            k = (item - n * per_image) * ng
            if ng > 1:
                nrt_gc_groups_ng(g, x + n * x_image, w, bp, y + n * y_image, k, min(ng, group - k),
                                 scratch + omp_get_thread_num() * ng * per)
            else:
                nrt_gc_group(g, x + n * x_image, w, bp, y + n * y_image, k, scratch + omp_get_thread_num() * per)
            if act != 0:
                activate_span(y + n * y_image + k * g.mg * plane, min(ng, group - k) * g.mg * plane, act)
    finally:
        free(scratch)
    return 0


cdef int _planes_in_registers(const nrt_gc_geom* g, const nrt_dwr_tap* taps, const float* x, const float* w,
                              const float* bp, float* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t M, int n_threads,
                              int act) except -1:
    """The conv on depthwise_in_registers.h: work items of NRT_DWR_NC output planes of one
    image, statically split; the taps' permutes computed once, read by every thread."""
    cdef Py_ssize_t per_image = (M + NRT_DWR_NC - 1) // NRT_DWR_NC, items = N * per_image, item, n, m0
    cdef Py_ssize_t x_image = C * g.H * g.W, plane = g.OH * g.OW, y_image = M * plane
    if n_threads > items:
        n_threads = <int>items
    for item in prange(items, nogil=True, schedule="static", num_threads=n_threads):
        n = item // per_image
        m0 = (item - n * per_image) * NRT_DWR_NC
        nrt_dwr_planes(g, taps, x + n * x_image, w, bp, y + n * y_image, m0, min(NRT_DWR_NC, M - m0))
        if act != 0:
            activate_span(y + n * y_image + m0 * plane, min(NRT_DWR_NC, M - m0) * plane, act)
    return 0


cdef class PreparedGroupedConv:
    """PreparedGroupedConv(w, bias, x_shape, y_shape, sh, sw, pt, pl, dh, dw, group, n_threads, act=0):
    grouped_conv2d bound to its weight, bias, shapes, thread count and activation, checked once
    (and the register path's taps computed once); then `prepared(x, y)` computes y (float32,
    C-contiguous, y_shape's size) from x (x_shape's size; copied if not C-contiguous float32)
    and returns y. A specialized plan's depthwise conv: grouped_conv2d's four buffer
    acquisitions, checks and tap setup cost ~1.5 us a call, as much as a 2x2 map's arithmetic.
    The same kernels on the same geometry: bitwise grouped_conv2d's result."""
    cdef nrt_gc_geom g
    cdef nrt_dwr_tap* taps
    cdef Py_ssize_t N, C, M, group, x_size, y_size
    cdef int nt, act
    cdef object w, bias          # the arrays wp / bp point into, kept alive
    cdef const float* wp
    cdef const float* bp

    def __cinit__(self):
        self.taps = NULL

    def __init__(self, cnp.ndarray w, bias, x_shape, y_shape, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                 Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t group, int n_threads, int act=0):
        cdef Py_ssize_t N, C, H, W, M, OH, OW
        cdef nrt_gc_geom* g = &self.g
        N, C, H, W = (int(d) for d in x_shape)
        M, OH, OW = int(y_shape[1]), int(y_shape[2]), int(y_shape[3])
        if w.ndim != 4 or not is_f32_c(w, cnp.PyArray_SIZE(w)):
            raise ValueError("PreparedGroupedConv: w must be a C-contiguous float32 (M, C / group, kh, kw) array")
        if bias is not None and not is_f32_c(bias, M):
            raise ValueError(f"PreparedGroupedConv: bias must be a contiguous float32 array of {M} elements or None")
        # grouped_conv2d's checks, on empty arrays of the call's shapes
        grouped_conv2d(np.empty((0, C, H, W), np.float32), w, np.empty(0 if bias is None else M, np.float32),
                       np.empty((0, M, OH, OW), np.float32), sh, sw, pt, pl, dh, dw, group, n_threads, act)
        if int(y_shape[0]) != N or N == 0 or M == 0 or OH == 0 or OW == 0:
            raise ValueError(f"PreparedGroupedConv: y {tuple(y_shape)} for x {tuple(x_shape)}: nothing to compute")
        if w.shape[2] == 0 or w.shape[3] == 0:
            raise ValueError("PreparedGroupedConv: the kernel must not be empty")
        g.H, g.W, g.OH, g.OW, g.KH, g.KW = H, W, OH, OW, w.shape[2], w.shape[3]
        g.sh, g.sw, g.pt, g.pl, g.dh, g.dw = sh, sw, pt, pl, dh, dw
        g.cg, g.mg = C // group, M // group
        nrt_gc_setup(g)
        cdef int refused = 0
        if NRT_DWR_AVAILABLE and nrt_dwr_fits(g):
            self.taps = nrt_dwr_setup(g, &refused)
            if self.taps == NULL and not refused:
                raise MemoryError()
        self.N, self.C, self.M, self.group = N, C, M, group
        self.x_size, self.y_size = N * C * H * W, N * M * OH * OW
        self.nt, self.act = n_threads, act
        self.w, self.bias = w, bias
        self.wp = <const float*>cnp.PyArray_DATA(w)
        self.bp = NULL if bias is None else <const float*>cnp.PyArray_DATA(<cnp.ndarray>bias)

    def __dealloc__(self):
        free(self.taps)

    def __call__(self, x, y):
        if not is_f32_c(x, self.x_size):
            x = np.ascontiguousarray(x, dtype=np.float32)
            if x.size != self.x_size:
                raise ValueError(f"PreparedGroupedConv: x must have {self.x_size} elements, got {x.size}")
        if not is_f32_c(y, self.y_size) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>y):
            raise ValueError(f"PreparedGroupedConv: y must be a writeable C-contiguous float32 array of "
                             f"{self.y_size} elements")
        _run(&self.g, self.taps, <const float*>cnp.PyArray_DATA(<cnp.ndarray>x), self.wp, self.bp,
             <float*>cnp.PyArray_DATA(<cnp.ndarray>y), self.N, self.C, self.M, self.group, self.nt, self.act)
        return y
