"""Channels-first kernels: LayerNorm and RMSNorm over axis 1 of an (N, C, S) view.

The statistics of position (n, s) run over x[n, :, s], C values S elements
apart (ConvNeXt/SAM "LayerNorm2d", StyleGAN PixelNorm). A row kernel would
need a transposed copy; these read x where it lies: a work item is one sample
n and a block of BW consecutive positions, and every loop runs along the
positions, so the vector lanes are BW independent statistics and each x[n, c,
block] is one contiguous span.

Numerics: float64 lane accumulators (float32 input widens exactly). LayerNorm
is two-pass over deviations from a shift, the position's first channel: a
constant position gives deviations of exactly 0 (the output is exactly the
bias), and offsets of 1e7 cost no digits. Each position's sums run over c in
order, whichever item or thread holds it, so results are bitwise identical
for any thread count and any block width.

Python (normrt.api.channel_norm) checks every argument; these kernels check
only the buffer shapes they are given and raise ValueError before computing.
"""
from cython.parallel cimport prange
from libc.math cimport sqrt

from moments cimport real, team_size, activate_span


cdef enum:
    # positions per work item: 3 double arrays of BW fit in a few vector
    # registers' worth of L1, and a (C, BW) block of x stays in L2 between the
    # passes for C up to a few thousand
    BW = 64


cdef void layer_norm_block(const real* x, real* y, Py_ssize_t C, Py_ssize_t S, Py_ssize_t w,
                           const real* scale, const real* bias, double eps, int act) noexcept nogil:
    """Positions [0, w) of one sample: x and y point at x[n, 0, s0], stride S between channels."""
    cdef double shift[BW]
    cdef double mean[BW]    # mean of x - shift
    cdef double acc[BW]
    cdef double d, a, b
    cdef Py_ssize_t c, j
    cdef const real* xc
    cdef real* yc
    for j in range(w):
        shift[j] = x[j]
        acc[j] = 0.0
    # pass 1: sum of deviations from the shift
    for c in range(1, C):
        xc = x + c * S
        for j in range(w):
            acc[j] += <double>xc[j] - shift[j]
    for j in range(w):
        mean[j] = acc[j] / C
        acc[j] = 0.0
    # pass 2: sum of squared deviations from the mean (exact two-pass variance)
    for c in range(C):
        xc = x + c * S
        for j in range(w):
            d = (<double>xc[j] - shift[j]) - mean[j]
            acc[j] += d * d
    for j in range(w):
        acc[j] = 1.0 / sqrt(acc[j] / C + eps)    # now the inverse standard deviation
    # pass 3: output, one channel span at a time (per-channel scale and bias are scalars here)
    for c in range(C):
        xc = x + c * S
        yc = y + c * S
        a = scale[c] if scale != NULL else 1.0
        b = bias[c] if bias != NULL else 0.0
        for j in range(w):
            yc[j] = <real>(((<double>xc[j] - shift[j]) - mean[j]) * acc[j] * a + b)
        activate_span(yc, w, act)


cdef void rms_norm_block(const real* x, real* y, Py_ssize_t C, Py_ssize_t S, Py_ssize_t w,
                         const real* scale, const real* bias, double eps, int act) noexcept nogil:
    """RMSNorm of positions [0, w) of one sample (no centring: PixelNorm)."""
    cdef double acc[BW]
    cdef double v, a, b
    cdef Py_ssize_t c, j
    cdef const real* xc
    cdef real* yc
    for j in range(w):
        acc[j] = 0.0
    for c in range(C):
        xc = x + c * S
        for j in range(w):
            v = xc[j]
            acc[j] += v * v
    for j in range(w):
        acc[j] = 1.0 / sqrt(acc[j] / C + eps)
    for c in range(C):
        xc = x + c * S
        yc = y + c * S
        a = scale[c] if scale != NULL else 1.0
        b = bias[c] if bias != NULL else 0.0
        for j in range(w):
            yc[j] = <real>(<double>xc[j] * acc[j] * a + b)
        activate_span(yc, w, act)


def channel_norm(const real[:, :, ::1] x,   # IN  (N, C, S) statistics over C per (n, s)
                 real[:, :, ::1] out,       # OUT (N, C, S); may be x itself
                 scale=None,                # IN  (C,) x.dtype, or None
                 bias=None,                 # IN  (C,) x.dtype, or None
                 double eps=1e-6, int act=0, bint rms=False, int n_threads=1):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t nb = (S + BW - 1) // BW, item, n, s0, w
    cdef const real[::1] scale_v, bias_v
    cdef const real* scale_p = NULL
    cdef const real* bias_p = NULL
    if out.shape[0] != N or out.shape[1] != C or out.shape[2] != S:
        raise ValueError("out must have x's shape")
    if scale is not None:
        scale_v = scale
        if scale_v.shape[0] != C:
            raise ValueError("scale must have C elements")
        if C:
            scale_p = &scale_v[0]
    if bias is not None:
        bias_v = bias
        if bias_v.shape[0] != C:
            raise ValueError("bias must have C elements")
        if C:
            bias_p = &bias_v[0]
    if N == 0 or C == 0 or S == 0:
        return
    n_threads = team_size(N * C * S, n_threads)
    # one item = (sample, block of positions); items never share an output element
    for item in prange(N * nb, nogil=True, schedule="static", num_threads=n_threads):
        n = item // nb
        s0 = (item % nb) * BW
        w = min(<Py_ssize_t>BW, S - s0)
        if rms:
            rms_norm_block(&x[n, 0, s0], &out[n, 0, s0], C, S, w, scale_p, bias_p, eps, act)
        else:
            layer_norm_block(&x[n, 0, s0], &out[n, 0, s0], C, S, w, scale_p, bias_p, eps, act)
