"""Channels-first kernels: LayerNorm and RMSNorm over axis 1 of an (N, C, S) view.

The statistics of position (n, s) run over x[n, :, s], C values S elements
apart (ConvNeXt/SAM "LayerNorm2d", StyleGAN PixelNorm). A row kernel would
need a transposed copy; these read x where it lies: a work item is one sample
n and a block of BW consecutive positions, and every loop runs along the
positions, so the vector lanes are BW independent statistics and each x[n, c,
block] is one contiguous span.

Numerics (one block routine for both norms, `rms` selecting the centring):
LayerNorm takes the mean from the deviations from a shift (the position's
first channel value), then sums the squared deviations from that mean: two
passes, each summing CB = 8 channels in x's precision before the sum meets a
float64 accumulator. The second pass sees the deviations from the computed
mean (split in two floats, so x - mean is exact near it), so an error of the
mean enters the variance squared, and offsets of 1e7 cost no digits. A
constant position gives deviations of exactly 0, and the output is exactly
the bias. RMSNorm runs the second pass alone, about 0. float32 positions
whose squares left float32's range (a mean square below 1e-24 or above
float32's maximum) or that hold NaN/inf are recomputed in float64; float32
output is computed in float32, in float64 where the spread exceeds ~1e30.
Each position's sums run over c in order, whichever item or thread holds it,
and depend on its own values only, so results are bitwise identical for any
thread count and any item width.

Python (normrt.api.channel_norm) checks every argument; these kernels check
only the buffer shapes they are given and raise ValueError before computing.
"""
from cython.parallel cimport prange
from libc.math cimport sqrt

from moments cimport real, activate_span, mul_add


cdef extern from "channel_norm_out.h":
    # the output pass over channels [c0, c1): ((x - mh) * rf + nml) * scale + bias
    void channel_affine_f32 "nrt_channel_affine_f32"(
        const float* x, float* y, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t S, Py_ssize_t w,
        const float* mh, const float* rf, const float* nml, const float* scale, const float* bias) noexcept nogil
    void channel_affine_f64 "nrt_channel_affine_f64"(
        const double* x, double* y, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t S, Py_ssize_t w,
        const double* mh, const double* rf, const double* nml, const double* scale,
        const double* bias) noexcept nogil


cdef enum:
    # most positions per work item (the size of the per-position arrays)
    BW = 512
    # fewest positions per work item: whole vectors, and rows long enough for the prefetcher
    BW_MIN = 64
    # bytes of x a work item spans: its (C, width) block is read three times
    # (two statistics passes and the output pass), so it should stay in L1
    BLOCK_BYTES = 524288
    # channels summed in x's precision before the sum meets the float64 accumulator
    CB = 8
    # output rows written (and activated) per call of the output pass
    OUT_GROUP = 16

# float32 sums of squares are trusted only where no square can have been
# subnormal (a mean square of at least 1e-24: a square below FLT_MIN is then
# < 1e-14 of the sum) and none overflowed (the sum is finite); other positions
# are recomputed in float64
cdef double F32_MEAN_SQUARE_MIN = 1e-24


cdef inline real mul_add_r(real a, real b, real c) noexcept nogil:
    """a * b + c: fused where float32 has FMA (moments.mul_add), rounded twice in float64."""
    if real is float:
        return mul_add(a, b, c)
    else:
        return a * b + c


cdef inline void channel_sums(const real* x, Py_ssize_t C, Py_ssize_t S, Py_ssize_t w, const real* mh,
                              const real* ml, bint squares, double* out) noexcept nogil:
    """out[j] = sum over c of (x[c, j] - mh[j]), or with `squares` of ((x[c, j] - mh[j]) - ml[j])^2,
    in blocks of CB channels summed in x's precision, the blocks in float64.

    x - mh is exact near mh (Sterbenz), so the deviations carry x's precision
    relative to themselves, not to the offset."""
    cdef real e, q
    cdef real part[BW]
    cdef Py_ssize_t c = 0, j, k
    cdef const real* xc
    for j in range(w):
        out[j] = 0.0
    while c + CB <= C:
        xc = x + c * S
        if squares:
            for j in range(w):
                e = (xc[j] - mh[j]) - ml[j]
                q = e * e
                for k in range(1, CB):         # (unrolled by the compiler: CB is a constant)
                    e = (xc[j + k * S] - mh[j]) - ml[j]
                    q = mul_add_r(e, e, q)
                out[j] += <double>q
        else:
            for j in range(w):
                q = xc[j] - mh[j]
                for k in range(1, CB):
                    q = q + (xc[j + k * S] - mh[j])
                out[j] += <double>q
        c += CB
    if c < C:
        for j in range(w):
            part[j] = 0
        for k in range(c, C):
            xc = x + k * S
            for j in range(w):
                e = xc[j] - mh[j]
                part[j] = mul_add_r(e - ml[j], e - ml[j], part[j]) if squares else part[j] + e
        for j in range(w):
            out[j] += <double>part[j]


cdef void position_in_float64(const real* x, Py_ssize_t C, Py_ssize_t S, bint rms,
                              double* mean, double* m2) noexcept nogil:
    """Mean (0 for RMSNorm) and sum of squared deviations of one position, two passes in float64:
    for float32 positions whose squares left float32's range (or hold NaN/inf)."""
    cdef double m = 0.0, q = 0.0, d
    cdef Py_ssize_t c
    if not rms:
        for c in range(C):
            m += <double>x[c * S]
        m = m / C
    for c in range(C):
        d = <double>x[c * S] - m
        q += d * d
    mean[0] = m
    m2[0] = q


cdef void channel_norm_block(const real* x, real* y, Py_ssize_t C, Py_ssize_t S, Py_ssize_t w,
                             const real* scale, const real* bias, double eps, int act,
                             bint rms) noexcept nogil:
    """Positions [0, w) of one sample: x and y point at x[n, 0, s0], stride S between channels.

    LayerNorm: mean from the deviations from a shift (the position's first
    channel value, so constant positions give deviations of exactly 0), then
    the sum of squared deviations from that mean: two passes, each summing CB
    channels in x's precision and the blocks in float64. The second pass sees
    the deviations from the computed mean, so an error of the mean enters the
    variance squared. RMSNorm: the second pass alone, about 0.
    """
    cdef double s1[BW]
    cdef double s2[BW]
    cdef real shift[BW]
    cdef real mh[BW]
    cdef real ml[BW]
    cdef real rf[BW]
    cdef double m, a, b
    cdef bint wide = False       # float32: some positions need their output in float64
    cdef bint redo
    cdef Py_ssize_t c, j
    if rms:
        for j in range(w):
            mh[j] = 0
            ml[j] = 0
            s1[j] = 0.0
    else:
        for j in range(w):
            shift[j] = x[j]
        channel_sums(x, C, S, w, shift, shift, False, s1)
        for j in range(w):
            m = s1[j] / C                           # mean - shift
            s1[j] = <double>shift[j] + m
            if real is float:
                # the mean in two floats: x - mh is exact near the mean (Sterbenz)
                mh[j] = <real>s1[j]
                ml[j] = <real>(s1[j] - <double>mh[j])
            else:
                # float64: deviations from the shift, then from the mean's small offset to it
                # (the mean itself would round at the offset's magnitude)
                mh[j] = shift[j]
                ml[j] = m
    channel_sums(x, C, S, w, mh, ml, True, s2)
    if real is float:
        # (separate loops, so the common case stays vectorized)
        redo = False
        for j in range(w):
            redo = redo | (not (s2[j] >= F32_MEAN_SQUARE_MIN * C and s2[j] < 1e300))
        if redo:
            for j in range(w):
                if not (s2[j] >= F32_MEAN_SQUARE_MIN * C and s2[j] < 1e300):
                    # squares out of float32's range, or NaN/inf in x: this position in float64
                    position_in_float64(x + j, C, S, rms, &s1[j], &s2[j])
                    mh[j] = <real>s1[j]
                    ml[j] = <real>(s1[j] - <double>mh[j])
    for j in range(w):
        s2[j] = 1.0 / sqrt(s2[j] / C + eps)        # rstd (NaN, from a NaN or inf, stays NaN)
        rf[j] = <real>s2[j]
        ml[j] = -(ml[j] * rf[j])                    # from here on: -ml * rstd
    if real is float:
        for j in range(w):
            wide = wide | (not s2[j] >= 7.888609052210118e-31)   # std above ~1e30: rstd may be subnormal
    if not wide:
        output_span(x, y, C, S, 0, w, mh, rf, ml, scale, bias, act)
        return
    # float32 positions of extreme spread (rstd maybe subnormal) in float64, one column at a
    # time, each element read before it is written (out may be x); the runs of positions
    # between them as usual, so no position's result depends on its neighbours
    j = 0
    while j < w:
        if not s2[j] >= 7.888609052210118e-31:
            for c in range(C):
                a = scale[c] if scale != NULL else 1.0
                b = bias[c] if bias != NULL else 0.0
                y[c * S + j] = <real>((<double>x[c * S + j] - s1[j]) * s2[j] * a + b)
                activate_span(y + c * S + j, 1, act)
            j += 1
        else:
            c = j
            while j < w and s2[j] >= 7.888609052210118e-31:
                j += 1
            output_span(x + c, y + c, C, S, 0, j - c, mh + c, rf + c, ml + c, scale, bias, act)


cdef inline void output_span(const real* x, real* y, Py_ssize_t C, Py_ssize_t S, Py_ssize_t j0,
                             Py_ssize_t j1, const real* mh, const real* rf, const real* nml,
                             const real* scale, const real* bias, int act) noexcept nogil:
    """y = act(((x - mh) * rf + nml) * scale[c] + bias[c]) at positions [j0, j1) of every channel:
    four channels per sweep (channel_norm_out.h), each group of rows activated while in L1."""
    cdef Py_ssize_t c = 0, c1, k
    while c < C:
        c1 = min(c + <Py_ssize_t>OUT_GROUP, C)
        if real is float:
            channel_affine_f32(x + j0, y + j0, c, c1, S, j1 - j0, mh + j0, rf + j0, nml + j0, scale, bias)
        else:
            channel_affine_f64(x + j0, y + j0, c, c1, S, j1 - j0, mh + j0, rf + j0, nml + j0, scale, bias)
        if act:
            for k in range(c, c1):
                activate_span(y + k * S + j0, j1 - j0, act)
        c = c1


def channel_norm(const real[:, :, ::1] x,   # IN  (N, C, S) statistics over C per (n, s)
                 real[:, :, ::1] out,       # OUT (N, C, S); may be x itself
                 scale=None,                # IN  (C,) x.dtype, or None
                 bias=None,                 # IN  (C,) x.dtype, or None
                 double eps=1e-6, int act=0, bint rms=False, int n_threads=1):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    # positions per item: any width gives the same bits (positions are independent), so the
    # width may follow the thread count: enough items for every thread to get about as many
    cdef Py_ssize_t bw = min(<Py_ssize_t>BW, BLOCK_BYTES // max(1, C * <Py_ssize_t>sizeof(real)) // 16 * 16)
    cdef Py_ssize_t nb, item, n, s0, w
    if n_threads > 1:
        bw = min(bw, (N * S + 8 * n_threads - 1) // (8 * n_threads) // 16 * 16)
    bw = max(<Py_ssize_t>BW_MIN, bw)
    nb = (S + bw - 1) // bw
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
        channel_norm_block(&x[n, 0, s0], &out[n, 0, s0], C, S, w, scale_p, bias_p, eps, act, rms)
