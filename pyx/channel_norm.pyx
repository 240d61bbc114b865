"""Channels-first kernels: LayerNorm and RMSNorm over axis 1 of an (N, C, S) view.

The statistics of position (n, s) run over x[n, :, s], C values S elements
apart (ConvNeXt/SAM "LayerNorm2d", StyleGAN PixelNorm). A row kernel would
need a transposed copy; these read x where it lies: a work item is one sample
n and a block of BW consecutive positions, and every loop runs along the
positions, so the vector lanes are BW independent statistics and each x[n, c,
block] is one contiguous span.

Numerics: float64 accumulators (float32 input widens exactly). LayerNorm sums
the deviations from a shift, the position's first channel, and their squares
in one pass (the bound on cancellation is in layer_norm_block): a constant
position gives deviations of exactly 0 (the output is exactly the bias), and
offsets of 1e7 cost no digits. float32 output is computed in float32 with
the mean split in two floats (as the row kernels do), in float64 where the
spread exceeds ~1e30. Each position's sums run over c in order,
whichever item or thread holds it, so results are bitwise identical for any
thread count.

Python (normrt.api.channel_norm) checks every argument; these kernels check
only the buffer shapes they are given and raise ValueError before computing.
"""
from cython.parallel cimport prange
from libc.math cimport sqrt

from moments cimport real, activate_span


cdef enum:
    # most positions per work item (the size of the per-position arrays)
    BW = 256
    # bytes of x a work item spans, so that its (C, width) block is still in
    # cache when the output pass reads it again
    BLOCK_BYTES = 262144


cdef void layer_norm_block(const real* x, real* y, Py_ssize_t C, Py_ssize_t S, Py_ssize_t w,
                           const real* scale, const real* bias, double eps, int act) noexcept nogil:
    """Positions [0, w) of one sample: x and y point at x[n, 0, s0], stride S between channels.

    Statistics from sums shifted by the first channel's value (exact in
    float64 for float32 input). Since the shift is one of the C values,
    (shift - mean)^2 <= C * var: the variance loses at most log10(C + 1)
    decimal digits of float64 to cancellation, whatever the offset, and a
    constant position gives deviations of exactly 0.
    """
    cdef double shift[BW]
    cdef double s1[BW]
    cdef double rstd[BW]
    cdef float mh[BW]
    cdef float ml[BW]
    cdef float rf[BW]
    cdef double d, d1, d2, d3, a, b, m
    cdef float af, bf
    cdef bint wide = False       # float32: some positions need their output in float64
    cdef Py_ssize_t c, j
    cdef const real* xc
    cdef real* yc
    for j in range(w):
        shift[j] = x[j]
        s1[j] = 0.0
        rstd[j] = 0.0
    c = 1
    while c + 4 <= C:
        # four channels per sweep: the sums are loaded and stored once for four
        # additions (still in channel order, so the result is the plain loop's)
        xc = x + c * S
        for j in range(w):
            d = <double>xc[j] - shift[j]
            d1 = <double>xc[j + S] - shift[j]
            d2 = <double>xc[j + 2 * S] - shift[j]
            d3 = <double>xc[j + 3 * S] - shift[j]
            s1[j] = (((s1[j] + d) + d1) + d2) + d3
            rstd[j] = (((rstd[j] + d * d) + d1 * d1) + d2 * d2) + d3 * d3
        c += 4
    while c < C:
        xc = x + c * S
        for j in range(w):
            d = <double>xc[j] - shift[j]
            s1[j] += d
            rstd[j] += d * d
        c += 1
    for j in range(w):
        m = s1[j] / C                       # mean - shift
        d = rstd[j] / C - m * m             # variance
        rstd[j] = 1.0 / sqrt((0.0 if d < 0.0 else d) + eps)   # (NaN, from an inf, stays NaN)
        s1[j] = m
        if real is float:
            # float32 output arithmetic with the mean split in two floats: x - mh is
            # exact near the mean (Sterbenz), so large offsets cost no digits
            m = shift[j] + m
            mh[j] = <float>m
            ml[j] = <float>(m - <double>mh[j])
            rf[j] = <float>rstd[j]
            wide = wide or not rstd[j] >= 7.888609052210118e-31   # std above ~1e30: rstd may be subnormal
    # output, one channel span at a time (per-channel scale and bias are scalars here)
    for c in range(C):
        xc = x + c * S
        yc = y + c * S
        a = scale[c] if scale != NULL else 1.0
        b = bias[c] if bias != NULL else 0.0
        if real is float:
            af = <float>a
            bf = <float>b
            for j in range(w):
                yc[j] = <real>(((xc[j] - mh[j]) - ml[j]) * rf[j] * af + bf)
        else:
            for j in range(w):
                yc[j] = <real>(((<double>xc[j] - shift[j]) - s1[j]) * rstd[j] * a + b)
        activate_span(yc, w, act)
    if wide:
        # the float32 positions of extreme spread again, in float64 (kept out of the hot loop,
        # so each position's result never depends on its neighbours)
        for c in range(C):
            xc = x + c * S
            yc = y + c * S
            a = scale[c] if scale != NULL else 1.0
            b = bias[c] if bias != NULL else 0.0
            for j in range(w):
                if not rstd[j] >= 7.888609052210118e-31:
                    yc[j] = <real>(((<double>xc[j] - shift[j]) - s1[j]) * rstd[j] * a + b)
                    activate_span(yc + j, 1, act)


cdef void rms_norm_block(const real* x, real* y, Py_ssize_t C, Py_ssize_t S, Py_ssize_t w,
                         const real* scale, const real* bias, double eps, int act) noexcept nogil:
    """RMSNorm of positions [0, w) of one sample (no centring: PixelNorm)."""
    cdef double rinv[BW]
    cdef float rf[BW]
    cdef double v, v1, v2, v3, a, b
    cdef bint wide = False       # float32: some positions need their output in float64
    cdef Py_ssize_t c, j
    cdef const real* xc
    cdef real* yc
    for j in range(w):
        rinv[j] = 0.0
    c = 0
    while c + 4 <= C:
        xc = x + c * S
        for j in range(w):
            v = xc[j]
            v1 = xc[j + S]
            v2 = xc[j + 2 * S]
            v3 = xc[j + 3 * S]
            rinv[j] = (((rinv[j] + v * v) + v1 * v1) + v2 * v2) + v3 * v3
        c += 4
    while c < C:
        xc = x + c * S
        for j in range(w):
            v = xc[j]
            rinv[j] += v * v
        c += 1
    for j in range(w):
        rinv[j] = 1.0 / sqrt(rinv[j] / C + eps)
        if real is float:
            rf[j] = <float>rinv[j]
            wide = wide or not rinv[j] >= 7.888609052210118e-31   # root mean square above ~1e30
    for c in range(C):
        xc = x + c * S
        yc = y + c * S
        a = scale[c] if scale != NULL else 1.0
        b = bias[c] if bias != NULL else 0.0
        if real is float:
            for j in range(w):
                yc[j] = <real>(xc[j] * rf[j] * <float>a + <float>b)
        else:
            for j in range(w):
                yc[j] = <real>(<double>xc[j] * rinv[j] * a + b)
        activate_span(yc, w, act)
    if wide:
        for c in range(C):
            xc = x + c * S
            yc = y + c * S
            a = scale[c] if scale != NULL else 1.0
            b = bias[c] if bias != NULL else 0.0
            for j in range(w):
                if not rinv[j] >= 7.888609052210118e-31:
                    yc[j] = <real>(<double>xc[j] * rinv[j] * a + b)
                    activate_span(yc + j, 1, act)


def channel_norm(const real[:, :, ::1] x,   # IN  (N, C, S) statistics over C per (n, s)
                 real[:, :, ::1] out,       # OUT (N, C, S); may be x itself
                 scale=None,                # IN  (C,) x.dtype, or None
                 bias=None,                 # IN  (C,) x.dtype, or None
                 double eps=1e-6, int act=0, bint rms=False, int n_threads=1):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    # positions per item: any width gives the same bits (positions are independent)
    cdef Py_ssize_t bw = max(64, min(<Py_ssize_t>BW, BLOCK_BYTES // max(1, C * <Py_ssize_t>sizeof(real)) // 16 * 16))
    cdef Py_ssize_t nb = (S + bw - 1) // bw, item, n, s0, w
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
    # one item = (sample, block of positions); items never share an output element
    for item in prange(N * nb, nogil=True, schedule="static", num_threads=n_threads):
        n = item // nb
        s0 = (item % nb) * bw
        w = min(bw, S - s0)
        if rms:
            rms_norm_block(&x[n, 0, s0], &out[n, 0, s0], C, S, w, scale_p, bias_p, eps, act)
        else:
            layer_norm_block(&x[n, 0, s0], &out[n, 0, s0], C, S, w, scale_p, bias_p, eps, act)
