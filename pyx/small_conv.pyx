"""Depthwise 2-D convolution: one input channel per group, `mult` output channels per input channel.

The convs of ConvNeXt, EfficientNet and MobileViT (3x3 to 7x7, stride 1 or 2)
have K = kh * kw taps per output: far too little work for a packed GEMM. Each
output row accumulates tap by tap into y itself (the bias first): for one tap
the row is a strided slice of one input row times a scalar, a loop over the
output columns the compiler vectorizes at stride 1. Taps that fall into the
padding are skipped by clamping the column range per tap, so no padded copy of
x is made. Work items are (image, output channel) pairs, statically split
over the threads; every output is summed by one thread in the fixed tap order,
so results do not depend on the thread count.
"""
import numpy as np

from cython.parallel cimport prange, threadid

cdef extern from "small_kernels.h" nogil:
    void nrt_depthwise_plane(float* y, const float* x, const float* w, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh,
                             Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, float b)
    Py_ssize_t nrt_depthwise_s1_scratch(Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                                        Py_ssize_t dh, Py_ssize_t dw)
    void nrt_depthwise_plane_s1(float* y, const float* x, const float* w, float* scratch, Py_ssize_t H,
                                Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                                Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, float b)


def depthwise_conv2d(const float[:, :, :, ::1] x,   # IN  (N, C, H, W)
                     const float[:, :, ::1] w,       # IN  (C * mult, kh, kw)
                     const float[::1] bias,          # IN  (C * mult,) or empty: no bias
                     float[:, :, :, ::1] y,          # OUT (N, C * mult, OH, OW)
                     Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                     Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t mult, int n_threads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t M = y.shape[1], OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t KH = w.shape[1], KW = w.shape[2]
    if mult < 1 or M != C * mult or w.shape[0] != M or y.shape[0] != N:
        raise ValueError(f"depthwise_conv2d: x ({N}, {C}, {H}, {W}), w ({w.shape[0]}, {KH}, {KW}), "
                         f"y ({y.shape[0]}, {M}, {OH}, {OW}), mult {mult} do not fit")
    if bias.shape[0] not in (0, M):
        raise ValueError(f"depthwise_conv2d: bias must have 0 or {M} elements, got {bias.shape[0]}")
    if sh < 1 or sw < 1 or dh < 1 or dw < 1 or n_threads < 1:
        raise ValueError("depthwise_conv2d: strides, dilations and n_threads must be >= 1")
    cdef bint has_bias = bias.shape[0] != 0
    if N == 0 or M == 0 or OH == 0 or OW == 0:
        return
    cdef Py_ssize_t job, n, m
    cdef float bv
    cdef bint wide = sh == 1 and sw == 1 and pt >= 0 and pl >= 0
    cdef Py_ssize_t per = nrt_depthwise_s1_scratch(OH, OW, KH, KW, dh, dw) if wide else 1
    cdef float[::1] scratch = np.empty(per * n_threads, np.float32)     # one plane's worth per thread
    with nogil:
        for job in prange(N * M, schedule="static", num_threads=n_threads):
            n = job // M
            m = job - n * M
            bv = bias[m] if has_bias else 0.0
            if wide:
                nrt_depthwise_plane_s1(&y[n, m, 0, 0], &x[n, m // mult, 0, 0], &w[m, 0, 0],
                                       &scratch[threadid() * per], H, W, OH, OW, KH, KW, pt, pl, dh, dw, bv)
            else:
                nrt_depthwise_plane(&y[n, m, 0, 0], &x[n, m // mult, 0, 0], &w[m, 0, 0], H, W, OH, OW, KH, KW,
                                    sh, sw, pt, pl, dh, dw, bv)
