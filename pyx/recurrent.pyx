"""Recurrent kernels: the time loop of ONNX LSTM, GRU and RNN.

Python (normrt.onnx.ops.recurrent) computes every time step's input projection at once
(X W^T plus the biases that add to it, one GEMM on normrt's kernel), so a step here is
only the recurrent product R h_{t-1} (one fixed-order dot product per gate row and batch
row, recurrent_kernel.h, every batch row of the step in one pass over R) and the gate
arithmetic, a vectorizable loop per gate, in the input's type.
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
rows, for every batch row) in chunks over the threads instead, one parallel region per step,
the new states written to second buffers until the step's last unit has read the old ones.
Each unit of each batch row is computed by the same arithmetic whatever the thread count, the
batch size and the other rows' lengths.
"""
from cython.parallel cimport parallel, prange
from libc.math cimport tanh, exp
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

from moments cimport sigmoid_f, tanh_f
from omp cimport omp_get_thread_num

cdef extern from "recurrent_kernel.h":
    void gemm_rows_f "nrt_gemm_rows_f"(const float* r, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t nb,
                                       const float* const* h, const float* const* add, Py_ssize_t add_off,
                                       float* const* out, Py_ssize_t out_off) noexcept nogil
    void gemm_rows_d "nrt_gemm_rows_d"(const double* r, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t nb,
                                       const double* const* h, const double* const* add, Py_ssize_t add_off,
                                       double* const* out, Py_ssize_t out_off) noexcept nogil
    const int RPANEL "NRT_RPANEL"
    void panel_rows_f "nrt_panel_rows_f"(const float* p, Py_ssize_t G, Py_ssize_t n, Py_ssize_t g0,
                                         Py_ssize_t g1, Py_ssize_t units, Py_ssize_t H, Py_ssize_t nb,
                                         const float* const* h, const float* const* add, Py_ssize_t add_off,
                                         float* const* out, Py_ssize_t out_off) noexcept nogil
    void pack_r_f "nrt_pack_r_f"(const float* r, Py_ssize_t G, Py_ssize_t H, Py_ssize_t n, float* p) noexcept nogil

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


cdef inline void gemm_rows(const real* r, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t nb, real** h,
                           const real** add, Py_ssize_t add_off, real** out, Py_ssize_t out_off) noexcept nogil:
    """out[q][out_off + j] = add[q][add_off + j] + R_j . h[q] for j < rows, q < nb (add NULL: 0), each
    product in the fixed order of recurrent_kernel.h (the same bits whatever nb and the rows)."""
    if real is float:
        gemm_rows_f(r, rows, n, nb, <const float* const*>h, <const float* const*>add, add_off, out, out_off)
    else:
        gemm_rows_d(r, rows, n, nb, <const double* const*>h, <const double* const*>add, add_off, out, out_off)


cdef inline void gate_rows(const real* r, const float* rp, Py_ssize_t G, Py_ssize_t g0, Py_ssize_t g1,
                           Py_ssize_t k0, Py_ssize_t k1, Py_ssize_t H, Py_ssize_t nb, real** h,
                           const real** add, Py_ssize_t add_off, real** out, Py_ssize_t out_off) noexcept nogil:
    """Gates [g0, g1) of units [k0, k1): out[q][out_off + (g - g0)*H + k] = add[q][add_off + (g - g0)*H + k]
    + R_{g*H + k} . h[q] (add NULL: 0). float32 from the packed R rp when there is one (outer
    products, recurrent_kernel.h; k0 a multiple of its 32-unit chunks), else each gate's rows in
    the dot-product form."""
    cdef Py_ssize_t g, c0
    if real is float:
        if rp != NULL:
            c0 = k0
            while c0 < k1:
                panel_rows_f(rp + (c0 // RPANEL) * H * G * RPANEL, G, H, g0, g1, min(<Py_ssize_t>RPANEL, k1 - c0),
                             H, nb, <const float* const*>h, <const float* const*>add, add_off + c0, out,
                             out_off + c0)
                c0 += RPANEL
            return
    for g in range(g0, g1):
        gemm_rows(r + (g * H + k0) * H, k1 - k0, H, nb, h, add, add_off + (g - g0) * H + k0, out,
                  out_off + (g - g0) * H + k0)


cdef inline Py_ssize_t step_time(Py_ssize_t step, Py_ssize_t length, bint reverse) noexcept nogil:
    """The time index a batch row processes at `step`, or -1 once past its length."""
    if step >= length:
        return -1
    return length - 1 - step if reverse else step


cdef enum:
    KCHUNK = 32         # hidden units per work item of a step (all gates' rows for those units)

cdef enum:
    # a step's pointer block: ROWS arrays of B pointers, entry q of each for the q-th active
    # batch row: its x, Rbh (the same for every row), h, c, y, then its scratch rows: gates g,
    # u, v and the new h
    ROW_X = 0
    ROW_RBH = 1
    ROW_H = 2
    ROW_C = 3
    ROW_Y = 4
    ROW_G = 5
    ROW_U = 6
    ROW_V = 7
    ROW_HN = 8
    ROWS = 9


cdef void update_chunk(int cell, Py_ssize_t na, void** blk, Py_ssize_t B, const real* r, const float* rp,
                       const real* p, const real* rbh, Py_ssize_t k0, Py_ssize_t k1, Py_ssize_t H, real clip,
                       int fa, int ga, int ha, bint input_forget, bint linear_before_reset) noexcept nogil:
    """Hidden units k0..k1-1 of one step for the na active batch rows: first every gate's product
    (x + R h) for those units and all the rows at once (each block of the packed R loaded once
    for the rows, recurrent_kernel.h), then each row's gate arithmetic, writing hnp[q] (its new hidden
    state), cp[q] (LSTM cell state) and yp[q]; gp[q] and up[q] are the row's gate and scratch rows
    (each unit's own columns). GRU with linear_before_reset=0 does its z / r part here and the
    candidate in `gru_candidate`, once every r * h of the row is known. The rows' pointers are
    blk's (ROW_*, B entries each)."""
    cdef Py_ssize_t n = k1 - k0, k, q
    cdef const real** xp = <const real**>(blk + ROW_X * B)
    cdef real** hp = <real**>(blk + ROW_H * B)
    cdef real** cp = <real**>(blk + ROW_C * B)
    cdef real** yp = <real**>(blk + ROW_Y * B)
    cdef real** gp = <real**>(blk + ROW_G * B)
    cdef real** up = <real**>(blk + ROW_U * B)
    cdef real** hnp = <real**>(blk + ROW_HN * B)
    cdef real* g
    cdef real* u
    cdef real* cb
    cdef real* hn
    cdef real* yt
    cdef const real* x
    cdef const real* hb
    if cell == CELL_LSTM:
        gate_rows(r, rp, 4, 0, 4, k0, k1, H, na, hp, xp, 0, gp, 0)     # gates i, o, f, c
        for q in range(na):
            g = gp[q]
            u = up[q]
            cb = cp[q]
            hn = hnp[q]
            yt = yp[q]
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
        gate_rows(r, rp, 3, 0, 2, k0, k1, H, na, hp, xp, 0, gp, 0)     # z, r
        if linear_before_reset:
            # the candidate's R h alone (no x: it goes outside r * (R h + Rbh))
            gate_rows(r, rp, 3, 2, 3, k0, k1, H, na, hp, NULL, 0, gp, 2 * H)
        for q in range(na):
            g = gp[q]
            u = up[q]
            x = xp[q]
            hb = hp[q]
            clamp_span(g + k0, n, clip)
            activate_span(g + k0, n, fa)
            clamp_span(g + H + k0, n, clip)
            activate_span(g + H + k0, n, fa)
            if linear_before_reset:
                for k in range(k0, k1):
                    u[k] = x[2 * H + k] + g[H + k] * (g[2 * H + k] + rbh[k])
                gru_finish(u, g, hb, hnp[q], yp[q], k0, k1, clip, ga)
            else:
                for k in range(k0, k1):
                    u[k] = g[H + k] * hb[k]          # r * h, read whole by gru_candidate
    else:
        gate_rows(r, rp, 1, 0, 1, k0, k1, H, na, hp, xp, 0, gp, 0)
        for q in range(na):
            g = gp[q]
            hn = hnp[q]
            yt = yp[q]
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


cdef void gru_candidate(Py_ssize_t na, void** blk, Py_ssize_t B, const real* r, const float* rp, Py_ssize_t k0,
                        Py_ssize_t k1, Py_ssize_t H, real clip, int ga) noexcept nogil:
    """GRU, linear_before_reset=0, units k0..k1-1 of the na active rows of blk: x + R (r * h) + Rbh
    (the ROW_U row holds all of row q's r * h), then the update into the ROW_V row (the candidate)."""
    cdef Py_ssize_t k, q
    cdef const real** xp = <const real**>(blk + ROW_X * B)
    cdef const real** rbp = <const real**>(blk + ROW_RBH * B)
    cdef real** hp = <real**>(blk + ROW_H * B)
    cdef real** yp = <real**>(blk + ROW_Y * B)
    cdef real** gp = <real**>(blk + ROW_G * B)
    cdef real** up = <real**>(blk + ROW_U * B)
    cdef real** vp = <real**>(blk + ROW_V * B)
    cdef real** hnp = <real**>(blk + ROW_HN * B)
    cdef real* v
    cdef const real* x
    gate_rows(r, rp, 3, 2, 3, k0, k1, H, na, up, rbp, 0, vp, 0)
    for q in range(na):
        v = vp[q]
        x = xp[q]
        for k in range(k0, k1):
            v[k] = x[2 * H + k] + v[k]
        gru_finish(v, gp[q], hp[q], hnp[q], yp[q], k0, k1, clip, ga)


cdef Py_ssize_t step_rows(Py_ssize_t step, const real* xw, Py_ssize_t xrow, real* h, real* c, real* y,
                          const int* lens, Py_ssize_t B, Py_ssize_t H, bint reverse, void** blk) noexcept nogil:
    """The rows active at `step` (each at its own time index; past its length: skipped, its state
    stays) into blk's ROW_X, ROW_H, ROW_C and ROW_Y arrays, in batch order. Returns their count."""
    cdef Py_ssize_t na = 0, b, t
    for b in range(B):
        t = step_time(step, lens[b], reverse)
        if t < 0:
            continue
        blk[ROW_X * B + na] = <void*>(xw + (t * B + b) * xrow)
        blk[ROW_H * B + na] = <void*>(h + b * H)
        blk[ROW_C * B + na] = <void*>(c + b * H) if c != NULL else NULL
        blk[ROW_Y * B + na] = <void*>(y + (t * B + b) * H)
        na += 1
    return na


cdef int run_direction(int cell, const real* xw, Py_ssize_t xrow, const real* r, const float* rp, const real* p,
                       const real* rbh, real* h, real* c, real* y, const int* lens,
                       Py_ssize_t S, Py_ssize_t B, Py_ssize_t H, Py_ssize_t G, bint reverse,
                       real clip, int fa, int ga, int ha, bint input_forget,
                       bint linear_before_reset, int n_threads) noexcept nogil:
    """One direction over the whole sequence. xw (S, B, G*H) with rows xrow apart, r (G*H, H), p (3H) or NULL,
    rbh (H) GRU's recurrent candidate bias, h / c (B, H) in and out, y (S, B, H) out.
    A step computes all its active batch rows together (rows are at their own time index, or
    past their length and skipped: their state stays), so R is read once per step, not once per
    row (float32; float64 still reads it per row, recurrent_kernel.h); rp: float32's packed R, or
    NULL (the dot-product form). Split over threads, the sequence is one parallel region. Its
    hidden units split in chunks of KCHUNK over n_threads, each
    chunk every active row's units (each unit's rows and arithmetic the same whoever computes
    them, and whatever rows are active); the new states go to second buffers until every unit
    has read the old ones. Returns -1 when its scratch cannot be allocated."""
    cdef Py_ssize_t GH = G * H, step, ch, q, na
    cdef Py_ssize_t nch = (H + KCHUNK - 1) // KCHUNK
    cdef Py_ssize_t ws = GH + 3 * H         # a batch row's scratch: gates g, then u, v, hn
    cdef bint two_phase = cell == CELL_GRU and not linear_before_reset
    cdef bint split = n_threads > 1 and nch > 1
    # one row of scratch per batch row, and a pointer block (ROW_*) per thread (split: every
    # thread finds the step's rows itself, the same ones)
    cdef int nt = n_threads if split else 1
    cdef real* scratch = <real*>malloc(B * ws * sizeof(real))
    cdef void** ptrs = <void**>malloc(nt * ROWS * B * sizeof(void*))
    cdef void** blk
    cdef Py_ssize_t tb
    if scratch == NULL or ptrs == NULL:
        free(scratch)
        free(ptrs)
        return -1
    for tb in range(nt):
        blk = ptrs + tb * ROWS * B
        for q in range(B):
            blk[ROW_RBH * B + q] = <void*>rbh
            blk[ROW_G * B + q] = <void*>(scratch + q * ws)
            blk[ROW_U * B + q] = <void*>(scratch + q * ws + GH)
            blk[ROW_V * B + q] = <void*>(scratch + q * ws + GH + H)
            blk[ROW_HN * B + q] = <void*>(scratch + q * ws + GH + 2 * H)
    if split:
        # one parallel region for the whole sequence, not one per step (its fork and join were ~4
        # us a step: an LSTM of 128 units, batch 8, 2 threads, 692 us over 50 steps, 991 on one):
        # each step's chunks, then the new states' copies, are worksharing loops whose barriers
        # order the steps
        with parallel(num_threads=n_threads):
            blk = ptrs + omp_get_thread_num() * ROWS * B
            for step in range(S):
                na = step_rows(step, xw, xrow, h, c, y, lens, B, H, reverse, blk)
                if na == 0:
                    continue
                for ch in prange(nch, schedule="static"):
                    update_chunk(cell, na, blk, B, r, rp, p, rbh, ch * KCHUNK, min(ch * KCHUNK + KCHUNK, H), H,
                                 clip, fa, ga, ha, input_forget, linear_before_reset)
                if two_phase:
                    for ch in prange(nch, schedule="static"):
                        gru_candidate(na, blk, B, r, rp, ch * KCHUNK, min(ch * KCHUNK + KCHUNK, H), H, clip, ga)
                for q in prange(na, schedule="static"):
                    memcpy(blk[ROW_H * B + q], blk[ROW_HN * B + q], H * sizeof(real))
    else:
        # one thread (or inside the two directions' region, or one chunk): the whole step as one
        # chunk - the same units' rows and arithmetic, so the same bits
        blk = ptrs
        for step in range(S):
            na = step_rows(step, xw, xrow, h, c, y, lens, B, H, reverse, blk)
            if na == 0:
                continue
            update_chunk(cell, na, blk, B, r, rp, p, rbh, 0, H, H, clip, fa, ga, ha, input_forget,
                         linear_before_reset)
            if two_phase:
                gru_candidate(na, blk, B, r, rp, 0, H, H, clip, ga)
            for q in range(na):
                memcpy(blk[ROW_H * B + q], blk[ROW_HN * B + q], H * sizeof(real))
    free(scratch)
    free(ptrs)
    return 0


def packed_r_size(Py_ssize_t G, Py_ssize_t H):
    """Floats of one direction's packed R (pack_r): ceil(H / 32) chunks of H rows of G*32."""
    return (H + RPANEL - 1) // RPANEL * H * G * RPANEL


def pack_r(const float[:, :, ::1] r,        # IN  (D, G*H, H) recurrent weights
           float[:, ::1] out):              # OUT (D, packed_r_size(G, H))
    """R of every direction in the packed form of run's float32 products (recurrent_kernel.h)."""
    cdef Py_ssize_t D = r.shape[0], H = r.shape[2], d, G
    if H == 0 or r.shape[1] % H:
        raise ValueError("r must be (D, G*H, H) with H > 0")
    G = r.shape[1] // H
    if out.shape[0] != D or out.shape[1] != packed_r_size(G, H):
        raise ValueError("out must be (D, packed_r_size(G, H))")
    with nogil:
        for d in range(D):
            pack_r_f(&r[d, 0, 0], G, H, H, &out[d, 0])


def run(int cell,
        const real[:, :, :, ::1] xw,        # IN  (S, B, D, G*H) input projections + biases
        const real[:, :, ::1] r,            # IN  (D, G*H, H) recurrent weights
        const float[:, ::1] rp,             # IN  float32: (D, packed_r_size(G, H)), pack_r(r) (the
                                            #     outer-product form), or (0, 0): the dot-product form
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
    if rp.shape[0] != 0 and (real is double or rp.shape[0] != D or rp.shape[1] != packed_r_size(G, H)):
        raise ValueError("rp must be pack_r(r) (float32) or (0, 0)")
    if D == 0 or S == 0 or B == 0 or H == 0:
        return
    if D == 1:
        # one direction: its steps' hidden units over the threads
        with nogil:
            failed = run_direction(cell, &xw[0, 0, 0, 0], D * G * H, &r[0, 0, 0], &rp[0, 0] if rp.shape[0] else NULL,
                                   &p[0, 0] if has_p else NULL,
                                   &rbh[0, 0] if cell == CELL_GRU else NULL, &h[0, 0, 0],
                                   &c[0, 0, 0] if cell == CELL_LSTM else NULL, &y[0, 0, 0, 0], &lens[0],
                                   S, B, H, G, reverse_first, clip, fa, ga, ha, input_forget,
                                   linear_before_reset, max(1, n_threads)) != 0
    else:
        # two directions: one per thread (each then runs its steps alone)
        for d in prange(D, nogil=True, schedule="static", num_threads=max(1, min(n_threads, D))):
            rc = run_direction(cell, &xw[0, 0, d, 0], D * G * H, &r[d, 0, 0], &rp[d, 0] if rp.shape[0] else NULL,
                               &p[d, 0] if has_p else NULL,
                               &rbh[d, 0] if cell == CELL_GRU else NULL, &h[d, 0, 0],
                               &c[d, 0, 0] if cell == CELL_LSTM else NULL, &y[d, 0, 0, 0], &lens[0],
                               S, B, H, G, (d == 0) == reverse_first, clip, fa, ga, ha, input_forget,
                               linear_before_reset, 1)
            failed += rc != 0
    if failed:
        raise MemoryError()
