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
(prange over directions). A single direction splits each step's hidden units (all their gate
rows) in chunks over the threads instead, the new state written to a second buffer until the
step's last unit has read the old one. Each unit is computed by the same arithmetic whatever
the thread count.
"""
from cython.parallel cimport prange
from libc.math cimport tanh, exp
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

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


cdef enum:
    KCHUNK = 32         # hidden units per work item of a step (all gates' rows for those units)


cdef void update_chunk(int cell, const real* x, const real* r, const real* p, const real* rbh,
                       const real* hb, real* hn, real* cb, real* yt, real* g, real* u,
                       Py_ssize_t k0, Py_ssize_t k1, Py_ssize_t H, real clip, int fa, int ga, int ha,
                       bint input_forget, bint linear_before_reset) noexcept nogil:
    """Hidden units k0..k1-1 of one step: their rows of every gate's product (x + R h) and the
    gate arithmetic, writing hn (the new hidden state), cb (LSTM cell state) and yt; g and u are
    this step's gate and scratch rows (each unit's own columns). GRU with linear_before_reset=0
    does its z / r part here and the candidate in `gru_candidate`, once every r * h is known."""
    cdef Py_ssize_t n = k1 - k0, k
    cdef Py_ssize_t gi
    if cell == CELL_LSTM:
        for gi in range(4):             # gates i, o, f, c of these units
            gemv(r + (gi * H + k0) * H, n, H, hb, x + gi * H + k0, g + gi * H + k0)
        if p != NULL:
            for k in range(k0, k1):
                g[k] = g[k] + p[k] * cb[k]
                g[2 * H + k] = g[2 * H + k] + p[2 * H + k] * cb[k]
        clamp_span(g + k0, n, clip)
        activate_span(g + k0, n, fa)                          # i
        if input_forget:
            for k in range(k0, k1):
                g[2 * H + k] = 1 - g[k]
        else:
            clamp_span(g + 2 * H + k0, n, clip)
            activate_span(g + 2 * H + k0, n, fa)              # f
        clamp_span(g + 3 * H + k0, n, clip)
        activate_span(g + 3 * H + k0, n, ga)                  # c~
        for k in range(k0, k1):
            cb[k] = g[2 * H + k] * cb[k] + g[k] * g[3 * H + k]
            u[k] = cb[k]
        if p != NULL:
            for k in range(k0, k1):
                g[H + k] = g[H + k] + p[H + k] * cb[k]
        clamp_span(g + H + k0, n, clip)
        activate_span(g + H + k0, n, fa)                      # o
        activate_span(u + k0, n, ha)
        for k in range(k0, k1):
            hn[k] = g[H + k] * u[k]
            yt[k] = hn[k]
    elif cell == CELL_GRU:
        for gi in range(2):             # z, r
            gemv(r + (gi * H + k0) * H, n, H, hb, x + gi * H + k0, g + gi * H + k0)
        clamp_span(g + k0, n, clip)
        activate_span(g + k0, n, fa)
        clamp_span(g + H + k0, n, clip)
        activate_span(g + H + k0, n, fa)
        if linear_before_reset:
            # the candidate's R h alone, then r * (R h + Rbh)
            gemv(r + (2 * H + k0) * H, n, H, hb, NULL, g + 2 * H + k0)
            for k in range(k0, k1):
                u[k] = x[2 * H + k] + g[H + k] * (g[2 * H + k] + rbh[k])
            gru_finish(u, g, hb, hn, yt, k0, k1, clip, ga)
        else:
            for k in range(k0, k1):
                u[k] = g[H + k] * hb[k]          # r * h, read whole by gru_candidate
    else:
        gemv(r + k0 * H, n, H, hb, x + k0, g + k0)
        clamp_span(g + k0, n, clip)
        activate_span(g + k0, n, fa)
        for k in range(k0, k1):
            hn[k] = g[k]
            yt[k] = g[k]


cdef inline void gru_finish(real* u, const real* g, const real* hb, real* hn, real* yt,
                            Py_ssize_t k0, Py_ssize_t k1, real clip, int ga) noexcept nogil:
    """n = g(u) for the candidate pre-activation u, then h' = (1 - z) n + z h."""
    cdef Py_ssize_t k
    clamp_span(u + k0, k1 - k0, clip)
    activate_span(u + k0, k1 - k0, ga)
    for k in range(k0, k1):
        hn[k] = (1 - g[k]) * u[k] + g[k] * hb[k]
        yt[k] = hn[k]


cdef void gru_candidate(const real* x, const real* r, const real* rbh, const real* hb, real* hn,
                        real* yt, const real* g, real* u, real* v, Py_ssize_t k0, Py_ssize_t k1,
                        Py_ssize_t H, real clip, int ga) noexcept nogil:
    """GRU, linear_before_reset=0, units k0..k1-1: x + R (r * h) + Rbh (u holds every r * h), then
    the update; v is this step's candidate rows."""
    cdef Py_ssize_t k
    gemv(r + (2 * H + k0) * H, k1 - k0, H, u, rbh + k0, v + k0)
    for k in range(k0, k1):
        v[k] = x[2 * H + k] + v[k]
    gru_finish(v, g, hb, hn, yt, k0, k1, clip, ga)


cdef int run_direction(int cell, const real* xw, Py_ssize_t xrow, const real* r, const real* p,
                       const real* rbh, real* h, real* c, real* y, const int* lens,
                       Py_ssize_t S, Py_ssize_t B, Py_ssize_t H, Py_ssize_t G, bint reverse,
                       real clip, int fa, int ga, int ha, bint input_forget,
                       bint linear_before_reset, int n_threads) noexcept nogil:
    """One direction over the whole sequence. xw (S, B, G*H) with rows xrow apart, r (G*H, H), p (3H) or NULL,
    rbh (H) GRU's recurrent candidate bias, h / c (B, H) in and out, y (S, B, H) out.
    Each step's hidden units split in chunks of KCHUNK over n_threads (each unit's rows and
    arithmetic the same whoever computes them); the new state goes to a second buffer until
    every unit has read the old one. Returns -1 when its scratch cannot be allocated."""
    cdef Py_ssize_t GH = G * H, step, b, t, ch
    cdef Py_ssize_t nch = (H + KCHUNK - 1) // KCHUNK
    cdef real* g = <real*>malloc((GH + 3 * H) * sizeof(real))
    cdef real* u
    cdef real* v
    cdef real* hn
    cdef const real* x
    cdef bint two_phase = cell == CELL_GRU and not linear_before_reset
    if g == NULL:
        return -1
    u = g + GH
    v = u + H
    hn = v + H
    for step in range(S):
        for b in range(B):
            t = step_time(step, lens[b], reverse)
            if t < 0:
                continue
            x = xw + (t * B + b) * xrow
            if n_threads > 1:
                for ch in prange(nch, schedule="static", num_threads=n_threads):
                    update_chunk(cell, x, r, p, rbh, h + b * H, hn, c + b * H if c != NULL else NULL,
                                 y + (t * B + b) * H, g, u, ch * KCHUNK, min(ch * KCHUNK + KCHUNK, H), H,
                                 clip, fa, ga, ha, input_forget, linear_before_reset)
                if two_phase:
                    for ch in prange(nch, schedule="static", num_threads=n_threads):
                        gru_candidate(x, r, rbh, h + b * H, hn, y + (t * B + b) * H, g, u, v, ch * KCHUNK,
                                      min(ch * KCHUNK + KCHUNK, H), H, clip, ga)
            else:
                # one thread (or inside the two directions' region): the whole step as one chunk,
                # no region per step - the same units' rows and arithmetic, so the same bits
                update_chunk(cell, x, r, p, rbh, h + b * H, hn, c + b * H if c != NULL else NULL,
                             y + (t * B + b) * H, g, u, 0, H, H, clip, fa, ga, ha, input_forget,
                             linear_before_reset)
                if two_phase:
                    gru_candidate(x, r, rbh, h + b * H, hn, y + (t * B + b) * H, g, u, v, 0, H, H, clip, ga)
            memcpy(h + b * H, hn, H * sizeof(real))
    free(g)
    return 0


def run(int cell,
        const real[:, :, :, ::1] xw,        # IN  (S, B, D, G*H) input projections + biases
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
    cdef Py_ssize_t S = xw.shape[0], B = xw.shape[1], D = xw.shape[2], H = r.shape[2]
    cdef Py_ssize_t G = {CELL_LSTM: 4, CELL_GRU: 3, CELL_RNN: 1}[cell]
    cdef Py_ssize_t d, b
    cdef int failed = 0, rc = 0
    cdef bint has_p = p.shape[1] != 0
    if xw.shape[3] != G * H or r.shape[0] != D or r.shape[1] != G * H:
        raise ValueError("xw must be (S, B, D, G*H) and r (D, G*H, H)")
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
    if D == 1:
        # one direction: its steps' hidden units over the threads
        with nogil:
            failed = run_direction(cell, &xw[0, 0, 0, 0], D * G * H, &r[0, 0, 0], &p[0, 0] if has_p else NULL,
                                   &rbh[0, 0] if cell == CELL_GRU else NULL, &h[0, 0, 0],
                                   &c[0, 0, 0] if cell == CELL_LSTM else NULL, &y[0, 0, 0, 0], &lens[0],
                                   S, B, H, G, reverse_first, clip, fa, ga, ha, input_forget,
                                   linear_before_reset, max(1, n_threads)) != 0
    else:
        # two directions: one per thread (each then runs its steps alone)
        for d in prange(D, nogil=True, schedule="static", num_threads=max(1, min(n_threads, D))):
            rc = run_direction(cell, &xw[0, 0, d, 0], D * G * H, &r[d, 0, 0], &p[d, 0] if has_p else NULL,
                               &rbh[d, 0] if cell == CELL_GRU else NULL, &h[d, 0, 0],
                               &c[d, 0, 0] if cell == CELL_LSTM else NULL, &y[d, 0, 0, 0], &lens[0],
                               S, B, H, G, (d == 0) == reverse_first, clip, fa, ga, ha, input_forget,
                               linear_before_reset, 1)
            failed += rc != 0
    if failed:
        raise MemoryError()
