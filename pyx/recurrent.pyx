"""Recurrent kernels: the time loop of ONNX LSTM, GRU and RNN.

Python (normrt.onnx.ops.recurrent) computes every time step's input projection at once
(X W^T plus the biases that add to it, one GEMM on normrt's kernel), so a step here is
only the recurrent product R h_{t-1} (one fixed-order dot product per gate row and batch
row, recurrent_kernel.h) and the gate arithmetic, a vectorizable loop per gate, in the
input's type.
Gate order and formulas are the ONNX spec's:

  LSTM  (i, o, f, c)  i = f(xi + Ri h + Pi c),  f = f(xf + Rf h + Pf c)  (1 - i: input_forget),
                      g = g(xc + Rc h),  c' = f c + i g,  o = f(xo + Ro h + Po c'),  h' = o h(c')
  GRU   (z, r, h)     z = f(xz + Rz h),  r = f(xr + Rr h),
                      n = g(xh + Rh (r h) + Rbh)   (linear_before_reset = 0)
                      n = g(xh + r (Rh h + Rbh))   (linear_before_reset = 1)
                      h' = (1 - z) n + z h
  RNN                 h' = f(xi + Ri h)

`clip` > 0 clamps every gate's pre-activation to [-clip, clip] first (as onnxruntime).
Batch rows have their own lengths (sequence_lens): a row past its length keeps its state,
and its outputs there stay as the caller set them (zeros); the reverse direction runs from
the row's last valid step down to 0.

The directions of a bidirectional node are independent: they run on up to two threads
(prange over directions), each computed by the same arithmetic whatever the thread count.
"""
from cython.parallel cimport prange
from libc.math cimport tanh, exp
from libc.stdlib cimport malloc, free

from moments cimport sigmoid_f, tanh_f

cdef extern from "recurrent_kernel.h":
    void gemv_f "nrt_gemv_f"(const float* r, Py_ssize_t rows, Py_ssize_t n, const float* h,
                             const float* add, float* out) noexcept nogil
    void gemv_d "nrt_gemv_d"(const double* r, Py_ssize_t rows, Py_ssize_t n, const double* h,
                             const double* add, double* out) noexcept nogil

ctypedef fused real:
    float
    double

cdef enum:
    ACT_SIGMOID = 0
    ACT_TANH = 1
    ACT_RELU = 2
    CELL_LSTM = 0
    CELL_GRU = 1
    CELL_RNN = 2

# for Python: the activation codes (the ONNX activations normrt runs here; Python refuses
# the others) and the cells
SIGMOID = ACT_SIGMOID
TANH = ACT_TANH
RELU = ACT_RELU
LSTM = CELL_LSTM
GRU = CELL_GRU
RNN = CELL_RNN


cdef inline void activate_span(real* v, Py_ssize_t n, int code) noexcept nogil:
    """v[k] = act(v[k]), k < n: one vectorizable loop per activation (float32's sigmoid and tanh
    are moments.pxd's branch-free ones, float64 libm's)."""
    cdef Py_ssize_t k
    if code == ACT_SIGMOID:
        if real is float:
            for k in range(n):
                v[k] = sigmoid_f(v[k])
        else:
            for k in range(n):
                v[k] = 1.0 / (1.0 + exp(-v[k]))
    elif code == ACT_TANH:
        if real is float:
            for k in range(n):
                v[k] = tanh_f(v[k])
        else:
            for k in range(n):
                v[k] = tanh(v[k])
    else:
        for k in range(n):
            v[k] = v[k] if v[k] > 0 else <real>0.0


cdef inline void clamp_span(real* v, Py_ssize_t n, real clip) noexcept nogil:
    """v[k] clamped to [-clip, clip] (clip > 0; 0 means no clip)."""
    cdef Py_ssize_t k
    if clip > 0:
        for k in range(n):
            v[k] = clip if v[k] > clip else (-clip if v[k] < -clip else v[k])


cdef inline void gemv(const real* r, Py_ssize_t rows, Py_ssize_t n, const real* h, const real* add,
                      real* out) noexcept nogil:
    """out[j] = add[j] + R_j . h (add NULL: 0), each row in the fixed order of recurrent_kernel.h."""
    if real is float:
        gemv_f(r, rows, n, h, add, out)
    else:
        gemv_d(r, rows, n, h, add, out)


cdef inline Py_ssize_t step_time(Py_ssize_t step, Py_ssize_t length, bint reverse) noexcept nogil:
    """The time index a batch row processes at `step`, or -1 once past its length."""
    if step >= length:
        return -1
    return length - 1 - step if reverse else step


cdef int run_direction(int cell, const real* xw, const real* r, const real* p, const real* rbh,
                       real* h, real* c, real* y, const int* lens,
                       Py_ssize_t S, Py_ssize_t B, Py_ssize_t H, Py_ssize_t G, bint reverse,
                       real clip, int fa, int ga, int ha, bint input_forget,
                       bint linear_before_reset) noexcept nogil:
    """One direction over the whole sequence. xw (S, B, G*H), r (G*H, H), p (3H) or NULL,
    rbh (H) GRU's recurrent candidate bias, h / c (B, H) in and out, y (S, B, H) out.
    Returns -1 when its scratch cannot be allocated."""
    cdef Py_ssize_t GH = G * H, step, b, k, t
    cdef real* g = <real*>malloc((GH + 2 * H) * sizeof(real))
    cdef real* u
    cdef real* v
    cdef real* hb
    cdef real* cb
    cdef real* yt
    cdef const real* x
    if g == NULL:
        return -1
    u = g + GH
    v = u + H
    for step in range(S):
        for b in range(B):
            t = step_time(step, lens[b], reverse)
            if t < 0:
                continue
            x = xw + (t * B + b) * GH
            hb = h + b * H
            yt = y + (t * B + b) * H
            if cell == CELL_LSTM:
                # gates i, o, f, c = x + R h
                gemv(r, GH, H, hb, x, g)
                cb = c + b * H
                if p != NULL:
                    for k in range(H):
                        g[k] = g[k] + p[k] * cb[k]
                        g[2 * H + k] = g[2 * H + k] + p[2 * H + k] * cb[k]
                clamp_span(g, H, clip)
                activate_span(g, H, fa)                          # i
                if input_forget:
                    for k in range(H):
                        g[2 * H + k] = 1 - g[k]
                else:
                    clamp_span(g + 2 * H, H, clip)
                    activate_span(g + 2 * H, H, fa)              # f
                clamp_span(g + 3 * H, H, clip)
                activate_span(g + 3 * H, H, ga)                  # c~
                for k in range(H):
                    cb[k] = g[2 * H + k] * cb[k] + g[k] * g[3 * H + k]
                    u[k] = cb[k]
                if p != NULL:
                    for k in range(H):
                        g[H + k] = g[H + k] + p[H + k] * cb[k]
                clamp_span(g + H, H, clip)
                activate_span(g + H, H, fa)                      # o
                activate_span(u, H, ha)
                for k in range(H):
                    hb[k] = g[H + k] * u[k]
                    yt[k] = hb[k]
            elif cell == CELL_GRU:
                # z, r = x + R h; the candidate's R h alone (linear_before_reset) or R (r h) below
                gemv(r, 2 * H, H, hb, x, g)
                if linear_before_reset:
                    gemv(r + 2 * H * H, H, H, hb, NULL, g + 2 * H)
                clamp_span(g, 2 * H, clip)
                activate_span(g, 2 * H, fa)
                if linear_before_reset:
                    for k in range(H):
                        u[k] = x[2 * H + k] + g[H + k] * (g[2 * H + k] + rbh[k])
                else:
                    for k in range(H):
                        v[k] = g[H + k] * hb[k]
                    gemv(r + 2 * H * H, H, H, v, rbh, u)
                    for k in range(H):
                        u[k] = x[2 * H + k] + u[k]
                clamp_span(u, H, clip)
                activate_span(u, H, ga)
                for k in range(H):
                    hb[k] = (1 - g[k]) * u[k] + g[k] * hb[k]
                    yt[k] = hb[k]
            else:
                gemv(r, H, H, hb, x, g)
                clamp_span(g, H, clip)
                activate_span(g, H, fa)
                for k in range(H):
                    hb[k] = g[k]
                    yt[k] = g[k]
    free(g)
    return 0


def run(int cell,
        const real[:, :, :, ::1] xw,        # IN  (D, S, B, G*H) input projections + biases
        const real[:, :, ::1] r,            # IN  (D, G*H, H) recurrent weights
        const real[:, ::1] p,               # IN  (D, 3H) LSTM peepholes, or (D, 0): none
        const real[:, ::1] rbh,             # IN  (D, H) GRU's recurrent candidate bias, or (D, 0)
        real[:, :, ::1] h,                  # IN/OUT (D, B, H) initial -> final hidden state
        real[:, :, ::1] c,                  # IN/OUT (D, B, H) LSTM cell state, or (D, 0, 0)
        real[:, :, :, ::1] y,               # OUT (D, S, B, H) every step's hidden state (zeros in)
        const int[::1] lens,                # IN  (B,) valid steps of each batch row, 0..S
        bint reverse_first,                 # direction 0 runs backwards (direction "reverse")
        real clip, int fa, int ga, int ha, bint input_forget, bint linear_before_reset,
        int n_threads):
    cdef Py_ssize_t D = xw.shape[0], S = xw.shape[1], B = xw.shape[2], H = r.shape[2]
    cdef Py_ssize_t G = {CELL_LSTM: 4, CELL_GRU: 3, CELL_RNN: 1}[cell]
    cdef Py_ssize_t d, b
    cdef int failed = 0, rc = 0
    cdef bint has_p = p.shape[1] != 0
    if xw.shape[3] != G * H or r.shape[0] != D or r.shape[1] != G * H:
        raise ValueError("xw must be (D, S, B, G*H) and r (D, G*H, H)")
    if h.shape[0] != D or h.shape[1] != B or h.shape[2] != H:
        raise ValueError("h must be (D, B, H)")
    if y.shape[0] != D or y.shape[1] != S or y.shape[2] != B or y.shape[3] != H:
        raise ValueError("y must be (D, S, B, H)")
    if lens.shape[0] != B:
        raise ValueError("lens must have one length per batch row")
    for b in range(B):
        if lens[b] < 0 or lens[b] > S:
            raise ValueError(f"sequence length {lens[b]} of batch row {b} is outside 0..{S}")
    if cell == CELL_LSTM and (c.shape[0] != D or c.shape[1] != B or c.shape[2] != H):
        raise ValueError("c must be (D, B, H)")
    if cell == CELL_LSTM and has_p and (p.shape[0] != D or p.shape[1] != 3 * H):
        raise ValueError("p must be (D, 3H)")
    if cell == CELL_GRU and (rbh.shape[0] != D or rbh.shape[1] != H):
        raise ValueError("rbh must be (D, H)")
    if D == 0 or S == 0 or B == 0 or H == 0:
        return
    for d in prange(D, nogil=True, schedule="static", num_threads=max(1, min(n_threads, D))):
        rc = run_direction(cell, &xw[d, 0, 0, 0], &r[d, 0, 0], &p[d, 0] if has_p else NULL,
                           &rbh[d, 0] if cell == CELL_GRU else NULL, &h[d, 0, 0],
                           &c[d, 0, 0] if cell == CELL_LSTM else NULL, &y[d, 0, 0, 0], &lens[0],
                           S, B, H, G, (d == 0) == reverse_first, clip, fa, ga, ha, input_forget,
                           linear_before_reset)
        failed += rc != 0
    if failed:
        raise MemoryError()
