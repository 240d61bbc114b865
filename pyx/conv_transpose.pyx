"""Transposed convolution's second half: the columns scattered onto the output (col2im).

ConvTranspose (a vocoder's or a UNet's upsampling, a GAN generator's) is the adjoint of a
conv: every input pixel spreads its channels, times the kernel, over a window of the output.
normrt computes it as a GEMM, cols = W^T x (onnx/ops/conv.py: a 1x1 conv on the GEMM kernel,
the weight packed once), then this kernel adds each column row into the output at the
positions its tap reaches: y[m, ih * sh + kh * dh - pt, iw * sw + kw * dw - pl] +=
cols[m * KH * KW + kh * KW + kw, ih, iw]. The numpy form (a slice add per tap over the whole
output) took 3-5x onnxruntime's time.

Work items are output planes (image, channel), statically split: each plane is written by
one thread, as the bias and then the taps in row-major order, so every output's sum is the
same whatever the thread count.
"""
from cython.parallel cimport prange


cdef extern from "col2im_row.h" nogil:
    void nrt_col2im_row(float* y, const float* r, Py_ssize_t n, Py_ssize_t stride)


def col2im(const float[:, :, ::1] cols,     # IN  (N, M * KH * KW, IH * IW): the GEMM's columns
           const float[::1] bias,           # IN  (M,) or empty: no bias
           float[:, :, ::1] y,              # OUT (N, M, OH * OW); must not overlap cols
           Py_ssize_t IH, Py_ssize_t IW, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t pt, Py_ssize_t pl,
           int n_threads):
    """y[n, m] = bias[m] + the taps' column rows of cols[n] added where they land (pads pt, pl
    at the top and left: output (oh, ow) is position (oh + pt, ow + pl) of the full transposed
    conv; positions outside [0, OH) x [0, OW) are cropped)."""
    cdef Py_ssize_t N = y.shape[0], M = y.shape[1], KK = KH * KW
    if cols.shape[0] != N or cols.shape[1] != M * KK or cols.shape[2] != IH * IW or y.shape[2] != OH * OW:
        raise ValueError(f"col2im: cols ({cols.shape[0]}, {cols.shape[1]}, {cols.shape[2]}) and y ({N}, {M}, "
                         f"{y.shape[2]}) do not fit "
                         f"M={M}, {KH}x{KW} taps, a {IH}x{IW} input and a {OH}x{OW} output")
    if bias.shape[0] not in (0, M):
        raise ValueError(f"col2im: bias must have 0 or {M} elements, got {bias.shape[0]}")
    if min(sh, sw, dh, dw) < 1 or min(IH, IW, OH, OW, KH, KW) < 0 or n_threads < 1:
        raise ValueError("col2im: strides, dilations and n_threads must be >= 1, sizes >= 0")
    if N == 0 or M == 0 or OH * OW == 0:
        return
    cdef Py_ssize_t item
    cdef bint has_bias = bias.shape[0] != 0
    with nogil:
        for item in prange(N * M, schedule="static", num_threads=n_threads):
            _plane(&cols[item // M, (item % M) * KK, 0], bias[item % M] if has_bias else 0.0,
                   &y[item // M, item % M, 0], IH, IW, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl)


cdef inline Py_ssize_t _first(Py_ssize_t off, Py_ssize_t s) noexcept nogil:
    """The first i >= 0 with i * s + off >= 0."""
    return 0 if off >= 0 else (-off + s - 1) // s


cdef void _plane(const float* c,            # IN  the plane's KH * KW column rows of IH * IW
                 float b, float* y,         # OUT one (OH, OW) plane
                 Py_ssize_t IH, Py_ssize_t IW, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                 Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t pt,
                 Py_ssize_t pl) noexcept nogil:
    cdef Py_ssize_t i, kh, kw, ih, ih0, ih1, iw0, iw1, oh0, ow0
    cdef const float* row
    cdef float* yr
    b = b + 0.0                             # (0 + bias, as the convs start: a bias of -0.0 gives +0.0)
    for i in range(OH * OW):
        y[i] = b
    for kh in range(KH):
        oh0 = kh * dh - pt                  # output row of input row 0
        ih0 = _first(oh0, sh)
        ih1 = min(IH, (OH - 1 - oh0) // sh + 1) if OH - 1 - oh0 >= 0 else 0
        for kw in range(KW):
            ow0 = kw * dw - pl
            iw0 = _first(ow0, sw)
            iw1 = min(IW, (OW - 1 - ow0) // sw + 1) if OW - 1 - ow0 >= 0 else 0
            if iw0 >= iw1:
                continue
            for ih in range(ih0, ih1):
                row = c + (kh * KW + kw) * IH * IW + ih * IW
                yr = y + (ih * sh + oh0) * OW       # (ih >= ih0: a row of the plane)
                nrt_col2im_row(yr + iw0 * sw + ow0, row + iw0, iw1 - iw0, sw)
