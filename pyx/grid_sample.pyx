"""Grid-sample kernel: each output point a weighted sum of taps gathered from its image plane.

Python (normrt.onnx.ops.sampling) turns every GridSample mode (nearest, linear, cubic),
padding mode (zeros, border, reflection) and align_corners into tap tables: for each output
point q of image n, TY row taps (row index, weight) and TX column taps (column index,
weight), an index of -1 meaning "outside, reads 0". The kernel only gathers:

    h_i     = sum_j wx[n, q, j] * x[n, c, ry[n, q, i], cx[n, q, j]]     (j = 0 .. TX-1)
    y[n,c,q] = sum_i wy[n, q, i] * h_i                                 (i = 0 .. TY-1)

columns first, then rows, each sum in tap order, as the ONNX reference interpolates (along
the last axis, then the next). A 1-D sample is a 2-D one with one row tap of weight 1.

Work items are (image, channel, block of output points), split statically: every output is
computed by the same arithmetic whatever the thread count.
"""
from cython.parallel cimport prange

ctypedef fused real:
    float
    double

cdef enum:
    POINTS = 512        # output points per work item


def gather(const real[:, :, :, ::1] x,      # IN  (N, C, H, W) images
           real[:, :, ::1] y,               # OUT (N, C, Q) samples; must not overlap x
           const Py_ssize_t[:, :, ::1] ry,  # IN  (N, Q, TY) row of each row tap, -1: outside
           const real[:, :, ::1] wy,        # IN  (N, Q, TY) weight of each row tap
           const Py_ssize_t[:, :, ::1] cx,  # IN  (N, Q, TX) column of each column tap, -1: outside
           const real[:, :, ::1] wx,        # IN  (N, Q, TX) weight of each column tap
           int n_threads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Q = y.shape[2], TY = ry.shape[2], TX = cx.shape[2]
    cdef Py_ssize_t nb, item, n, c, q, q0, q1, i, j, r, col
    cdef const real* plane
    cdef real acc, h
    if y.shape[0] != N or y.shape[1] != C:
        raise ValueError("y must be (N, C, Q) with x's N and C")
    if (ry.shape[0] != N or ry.shape[1] != Q or wy.shape[0] != N or wy.shape[1] != Q or wy.shape[2] != TY
            or cx.shape[0] != N or cx.shape[1] != Q or wx.shape[0] != N or wx.shape[1] != Q
            or wx.shape[2] != TX):
        raise ValueError("the tap tables must be (N, Q, taps) with y's N and Q, indices and weights alike")
    if N == 0 or C == 0 or Q == 0:
        return
    for n in range(N):                  # one pass over the tables: no gather reads outside x
        for q in range(Q):
            for i in range(TY):
                if ry[n, q, i] < -1 or ry[n, q, i] >= H:
                    raise ValueError("ry must hold row indices of x, or -1")
            for j in range(TX):
                if cx[n, q, j] < -1 or cx[n, q, j] >= W:
                    raise ValueError("cx must hold column indices of x, or -1")
    nb = (Q + POINTS - 1) // POINTS
    for item in prange(N * C * nb, nogil=True, schedule="static", num_threads=max(1, n_threads)):
        n = item // (C * nb)
        c = (item // nb) % C
        q0 = (item % nb) * POINTS
        q1 = min(q0 + POINTS, Q)
        plane = &x[n, c, 0, 0]
        for q in range(q0, q1):
            acc = 0
            for i in range(TY):
                r = ry[n, q, i]
                if r < 0:
                    continue
                h = 0
                for j in range(TX):
                    col = cx[n, q, j]
                    if col >= 0:
                        h = h + wx[n, q, j] * plane[r * W + col]
                acc = acc + wy[n, q, i] * h
            y[n, c, q] = acc
