"""Fold kernel (ONNX Col2Im, torch's F.fold): sliding blocks summed back into an image.

Each column block of x (N, C, kh, kw, L0, L1) holds, for every block position (l0, l1), the
values of a kh x kw window whose tap (i, j) lands on image pixel (l0 * sh - pt + i * dh,
l1 * sw - pl + j * dw); taps outside the image are dropped, overlapping ones summed. numpy
did this as one strided add per tap offset, ~7x onnxruntime's time on MobileViT-v2's 2x2 folds
(the innermost stride-2 writes); here each (n, c) plane is one work item, its taps added in a
fixed order (i, j, l0, l1), so every pixel's sum is the same for any thread count.
"""
from cython.parallel cimport prange
from libc.string cimport memset

ctypedef fused real:
    float
    double


def col2im(const real[:, :, :, :, :, ::1] x,   # IN  (N, C, kh, kw, L0, L1) the column blocks
           real[:, :, :, ::1] y,               # OUT (N, C, H, W) the image; must not overlap x
           Py_ssize_t sh, Py_ssize_t sw,       # strides
           Py_ssize_t dh, Py_ssize_t dw,       # dilations
           Py_ssize_t pt, Py_ssize_t pl,       # padding before the first row and column
           int n_threads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], KH = x.shape[2], KW = x.shape[3]
    cdef Py_ssize_t L0 = x.shape[4], L1 = x.shape[5], H = y.shape[2], W = y.shape[3]
    cdef Py_ssize_t item, n, c, i, j, a, b, r, off, b0, b1
    cdef real* plane
    cdef real* dst
    cdef const real* src
    if y.shape[0] != N or y.shape[1] != C:
        raise ValueError("y must be (N, C, H, W) with x's N and C")
    if sh < 1 or sw < 1 or dh < 1 or dw < 1 or pt < 0 or pl < 0:
        raise ValueError("strides and dilations must be >= 1, pads >= 0")
    if N * C == 0 or H == 0 or W == 0:
        return
    for item in prange(N * C, nogil=True, schedule="static", num_threads=max(1, n_threads)):
        n = item // C
        c = item % C
        plane = &y[n, c, 0, 0]
        memset(plane, 0, H * W * sizeof(real))
        for i in range(KH):
            for j in range(KW):
                # the block positions b whose tap column b * sw - pl + j * dw is inside the image
                off = j * dw - pl
                b0 = 0 if off >= 0 else (-off + sw - 1) // sw
                b1 = 0 if W - off <= 0 else min(L1, (W - off + sw - 1) // sw)
                for a in range(L0):
                    r = a * sh - pt + i * dh
                    if r < 0 or r >= H:
                        continue
                    dst = plane + r * W + off
                    src = &x[n, c, i, j, a, 0]
                    for b in range(b0, b1):
                        dst[b * sw] += src[b]
