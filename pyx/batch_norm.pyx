"""Channel-strided kernels: BatchNorm, batch statistics, moments, MVN and SPADE.

x is viewed as (R1, K, R2): K "channels", R1 outer repetitions, R2 contiguous
inner elements. Channel k owns the R1 strided runs x[r1, k, :].

strided_moments  per-channel mean and population variance over (R1, R2)
channel_affine   y = act((x - center[k]) * scale[k] + shift[k]), optionally
                 SPADE-modulated: y = that * (1 + gamma) + beta (full tensors)
batch_norm       channel_affine from BatchNorm's running statistics (folded here)

Determinism: the statistics are cut into work items fixed by the shape alone
(never by the thread count); each item's Moments land in its own slot of a
buffer and are merged per channel in a fixed order (r1 ascending, then chunk
ascending), so results are bitwise identical for any number of threads. The
elementwise pass computes each element from its own inputs only.

Python (normrt.api.batch_norm, normrt.api.moments) checks every argument; these
kernels trust them. Optional buffers are passed as length-0 arrays.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport sqrt

cdef extern from "batch_norm_kernel.h":
    bint affine_run_f32 "nrt_affine_run_f32"(const float* x, float* y, Py_ssize_t n, float mh,
                                             float a, float b, bint relu) noexcept nogil

from moments cimport (real, Moments, CHUNK, LANES, ACT_NONE, ACT_RELU, chunk_moments,
                      moments_merge, moments_empty, moments_var, n_chunks, activate,
                      activate_span, write_affine)
from half cimport elem, f16_t, bf16_t, HALF_BF16, as_f32, out_f32, flush_f32, value, put
from kernel_args cimport array_ptr, array3_ptr, storage_type
cimport numpy as cnp

cnp.import_array()


cdef enum:
    # inner lengths below this take the column-wise path (runs too short for chunk_moments)
    SMALL_R2 = 64
    # (channel, inner) columns one column-wise item accumulates side by side
    COL_MAX = 128
    # elements per column-wise sub-block: both of its passes stay in L2
    SUB_ELEMS = 16384
    # sub-blocks per column-wise work item
    ITEM_SUBS = 4
    # elements per elementwise work item
    PIECE = 16384


# ---------------------------------------------------------------- statistics

cdef inline Moments rows_moments(const real* x, Py_ssize_t stride, Py_ssize_t nrows,
                                 Py_ssize_t n) noexcept nogil:
    """nrows runs of n contiguous elements, `stride` apart, merged in row order."""
    cdef Moments acc = moments_empty()
    cdef Py_ssize_t r
    for r in range(nrows):
        moments_merge(&acc, chunk_moments(x + r * stride, n))
    return acc


cdef void column_moments(const real* x, Py_ssize_t stride, Py_ssize_t R2, Py_ssize_t nrows,
                         Py_ssize_t nk, Py_ssize_t sub_rows, Moments* dest) noexcept nogil:
    """Moments of nk adjacent channels over nrows rows (x points at x[r0, k0, 0]).

    A row holds the nk * R2 <= COL_MAX columns side by side, so both passes run
    along contiguous memory. Rows are taken in sub-blocks of sub_rows; each
    sub-block is a two-pass chunk per channel (sums of deviations from the
    channel's first element, then of squared deviations from the mean, as
    chunk_moments does), merged into dest[kk] in row order.
    """
    cdef double shift[COL_MAX]
    cdef double center[COL_MAX]
    cdef double acc[COL_MAX]
    cdef Py_ssize_t nq = nk * R2, q, r, kk, j, r0 = 0, nr
    cdef const real* row
    cdef double s, d, n
    cdef Moments m
    for kk in range(nk):
        dest[kk] = moments_empty()
    while r0 < nrows:
        nr = min(sub_rows, nrows - r0)
        n = <double>(nr * R2)
        row = x + r0 * stride
        for kk in range(nk):
            s = <double>row[kk * R2]
            for j in range(R2):
                shift[kk * R2 + j] = s
        for q in range(nq):
            acc[q] = 0.0
        for r in range(nr):
            row = x + (r0 + r) * stride
            for q in range(nq):
                acc[q] += <double>row[q] - shift[q]
        for kk in range(nk):
            s = 0.0
            for j in range(R2):
                s += acc[kk * R2 + j]
            s = shift[kk * R2] + s / n
            for j in range(R2):
                center[kk * R2 + j] = s
        for q in range(nq):
            acc[q] = 0.0
        for r in range(nr):
            row = x + (r0 + r) * stride
            for q in range(nq):
                d = <double>row[q] - center[q]
                acc[q] += d * d
        for kk in range(nk):
            s = 0.0
            for j in range(R2):
                s += acc[kk * R2 + j]
            m.count = n
            m.mean = center[kk * R2]
            m.m2 = s
            moments_merge(&dest[kk], m)
        r0 += nr


def strided_moments(const real[:, :, ::1] x,   # IN  (R1, K, R2)
                    double[::1] mean_out,      # OUT (K,) mean over (R1, R2)
                    double[::1] var_out,       # OUT (K,) population variance over (R1, R2)
                    int n_threads):
    """Per-channel mean and variance; R1 * R2 > 0 (the caller handles empty reductions)."""
    cdef Py_ssize_t R1 = x.shape[0], K = x.shape[1], R2 = x.shape[2]
    cdef Py_ssize_t stride, rows_per, n_items, n_slots, item, g, k, c, rem, r0, k0
    cdef Py_ssize_t nch = 0, ngroups = 0, per_group = 0, kt_width = 0, nkt = 0, sub_rows = 0, nrb = 0
    cdef bint columns
    cdef Moments m
    cdef Moments* parts
    if R1 == 0 or K == 0 or R2 == 0:
        return
    cdef const real* base = &x[0, 0, 0]
    if K == 1:
        # one channel: the whole tensor is one contiguous run
        R2 = R1 * R2
        R1 = 1
    stride = K * R2
    columns = R2 < SMALL_R2

    if columns:
        # items (row block rb, channel tile kt), row-block major (memory order)
        kt_width = min(K, COL_MAX // R2)
        nkt = (K + kt_width - 1) // kt_width
        sub_rows = max(1, SUB_ELEMS // (kt_width * R2))
        rows_per = sub_rows * ITEM_SUBS
        nrb = (R1 + rows_per - 1) // rows_per
        n_items = nrb * nkt
        n_slots = nrb * K
    else:
        # items (row group g, channel k, chunk c): a group holds as many rows as fit
        # in one CHUNK (one row when R2 >= CHUNK, then cut into chunks)
        nch = n_chunks(R2)
        rows_per = max(1, CHUNK // R2)
        ngroups = (R1 + rows_per - 1) // rows_per
        per_group = K * nch
        n_items = ngroups * per_group
        n_slots = n_items

    parts = <Moments*>malloc(n_slots * sizeof(Moments))
    if parts == NULL:
        raise MemoryError()
    try:
        with nogil:
            if columns:
                for item in prange(n_items, schedule="static", num_threads=n_threads):
                    g = item // nkt
                    k0 = (item % nkt) * kt_width
                    r0 = g * rows_per
                    column_moments(base + r0 * stride + k0 * R2, stride, R2,
                                   min(rows_per, R1 - r0), min(kt_width, K - k0), sub_rows,
                                   parts + g * K + k0)
                for k in prange(K, schedule="static", num_threads=n_threads):
                    m = moments_empty()
                    for g in range(nrb):
                        moments_merge(&m, parts[g * K + k])
                    mean_out[k] = m.mean
                    var_out[k] = moments_var(m)
            else:
                for item in prange(n_items, schedule="static", num_threads=n_threads):
                    g = item // per_group
                    rem = item % per_group
                    k = rem // nch
                    c = (rem % nch) * CHUNK
                    r0 = g * rows_per
                    parts[item] = rows_moments(base + r0 * stride + k * R2 + c, stride,
                                               min(rows_per, R1 - r0),
                                               min(<Py_ssize_t>CHUNK, R2 - c))
                for k in prange(K, schedule="static", num_threads=n_threads):
                    m = moments_empty()
                    for g in range(ngroups):
                        for c in range(nch):
                            moments_merge(&m, parts[g * per_group + k * nch + c])
                    mean_out[k] = m.mean
                    var_out[k] = moments_var(m)
    finally:
        free(parts)


# ---------------------------------------------------------------- elementwise

cdef inline void affine_run(const elem* x, elem* y, Py_ssize_t n, double m, double a, double b,
                            int act) noexcept nogil:
    """One channel's run: y[i] = act((x[i] - m) * a + b) (moments.pxd's write_affine:
    large offsets cost no digits, a constant channel gives exactly b)."""
    cdef float mh
    if elem is float:
        if act == ACT_NONE or act == ACT_RELU:
            mh = <float>m
            if affine_run_f32(x, y, n, mh, <float>a, <float>(b - (m - <double>mh) * a) if m != <double>mh
                              else <float>b, act == ACT_RELU):
                return
    write_affine(x, y, n, m, a, b, act)


cdef inline void affine_cols(const elem* x, elem* y, Py_ssize_t n, const double* m,
                             const double* a, const double* b, int act) noexcept nogil:
    """R2 == 1: element i belongs to channel i (m, a, b point at the first one);
    computed in float64, rounded once to x's type (half: through float32)."""
    cdef Py_ssize_t i
    if act == ACT_NONE:
        for i in range(n):
            put(y + i, (value(x[i]) - m[i]) * a[i] + b[i])
        return
    for i in range(n):
        put(y + i, activate((value(x[i]) - m[i]) * a[i] + b[i], act))


cdef inline void spade_run(const elem* x, const elem* gamma, const elem* beta, elem* y,
                           Py_ssize_t n, double m, double a, double b, int act) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        put(y + i, activate(((value(x[i]) - m) * a + b) * (1.0 + value(gamma[i])) + value(beta[i]), act))


cdef inline void spade_cols(const elem* x, const elem* gamma, const elem* beta, elem* y,
                            Py_ssize_t n, const double* m, const double* a, const double* b,
                            int act) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        put(y + i, activate(((value(x[i]) - m[i]) * a[i] + b[i]) * (1.0 + value(gamma[i]))
                            + value(beta[i]), act))


cdef void affine_piece(const elem* x, const elem* gamma, const elem* beta, elem* y,
                       Py_ssize_t start, Py_ssize_t stop, Py_ssize_t K, Py_ssize_t R2,
                       const double* m, const double* a, const double* b, int act) noexcept nogil:
    """Flat elements [start, stop) of the (R1, K, R2) tensor, run by run of one channel."""
    cdef Py_ssize_t i = start, q = start // R2, j = start - q * R2, k = q % K, n
    cdef bint spade = gamma != NULL
    while i < stop:
        if R2 == 1:
            n = min(K - k, stop - i)
            if spade:
                spade_cols(x + i, gamma + i, beta + i, y + i, n, m + k, a + k, b + k, act)
            else:
                affine_cols(x + i, y + i, n, m + k, a + k, b + k, act)
            k = 0
        else:
            n = min(R2 - j, stop - i)
            if spade:
                spade_run(x + i, gamma + i, beta + i, y + i, n, m[k], a[k], b[k], act)
            else:
                affine_run(x + i, y + i, n, m[k], a[k], b[k], act)
            j = 0
            k += 1
            if k == K:
                k = 0
        i += n


def channel_affine(const real[:, :, ::1] x,    # IN  (R1, K, R2)
                   const double[::1] center,   # IN  (K,) subtracted from x
                   const double[::1] scale,    # IN  (K,) multiplies x - center
                   const double[::1] shift,    # IN  (K,) added after scaling
                   const real[::1] gamma,      # IN  (R1*K*R2,) SPADE modulation, or (0,)
                   const real[::1] beta,       # IN  (R1*K*R2,) SPADE shift, or (0,) (with gamma)
                   real[:, :, ::1] out,        # OUT (R1, K, R2); may alias x
                   int act, int n_threads):
    """out = act(((x - center[k]) * scale[k] + shift[k]) [* (1 + gamma) + beta])."""
    cdef Py_ssize_t R1 = x.shape[0], K = x.shape[1], R2 = x.shape[2]
    cdef bint spade = gamma.shape[0] != 0
    if R1 * K * R2 == 0:
        return
    with nogil:
        affine_all(&x[0, 0, 0], &gamma[0] if spade else NULL, &beta[0] if spade else NULL, &out[0, 0, 0],
                   R1, K, R2, &center[0], &scale[0], &shift[0], act, n_threads)


cdef void affine_all(const elem* xp, const elem* gp, const elem* bp, elem* yp,
                     Py_ssize_t R1, Py_ssize_t K, Py_ssize_t R2, const double* m, const double* a,
                     const double* b, int act, int n_threads) noexcept nogil:
    """The elementwise pass in fixed PIECEs (each element from its own inputs only)."""
    cdef Py_ssize_t total = R1 * K * R2, npieces, p, start, piece
    if K == 1:
        R2 = total
    piece = piece_size(total, n_threads)
    npieces = (total + piece - 1) // piece
    if npieces == 1 or n_threads <= 1:
        # (no parallel region for one thread: entering one costs ~1 us, a small tensor's whole time)
        affine_piece(xp, gp, bp, yp, 0, total, K, R2, m, a, b, act)
        return
    for p in prange(npieces, schedule="static", num_threads=n_threads):
        start = p * piece
        affine_piece(xp, gp, bp, yp, start, min(start + piece, total), K, R2, m, a, b, act)


cdef inline Py_ssize_t piece_size(Py_ssize_t total, int n_threads) noexcept nogil:
    """Elements per elementwise work item: PIECE, or less so that a small tensor
    still gives every thread two items (3 pieces on 2 threads would leave one
    thread twice the work). Each element depends on its own inputs only, so
    the pieces, unlike the statistics chunks, may depend on the thread count."""
    cdef Py_ssize_t piece
    if n_threads <= 1:
        return PIECE
    piece = (total + 2 * n_threads - 1) // (2 * n_threads)
    piece = (piece + 63) // 64 * 64
    return max(<Py_ssize_t>2048, min(<Py_ssize_t>PIECE, piece))


cdef inline double param_at(const void* p, bint f64, Py_ssize_t k) noexcept nogil:
    return (<const double*>p)[k] if f64 else <double>(<const float*>p)[k]


def batch_norm(x,                   # IN  (R1, K, R2) float32, float64 or float16/bfloat16 words
               scale,               # IN  (K,) float32 or float64 (all four alike)
               bias,                # IN  (K,)
               mean,                # IN  (K,) running mean
               var,                 # IN  (K,) running variance
               double eps,
               out,                 # OUT (R1, K, R2) x's dtype; may alias x
               int act, int n_threads,
               int kind=0):         # for uint16 x: half.h's NRT_F16 (0) or NRT_BF16 (1)
    """channel_affine with the statistics folded here, in float64:
    out = act((x - mean[k]) * (scale[k] / sqrt(var[k] + eps)) + bias[k]).
    (The same float64 operations as numpy's fold, without its temporaries.)"""
    cdef int pn
    cdef int tn = storage_type(x, 3, &pn)
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(<cnp.ndarray>x)
    cdef Py_ssize_t R1 = dims[0], K = dims[1], R2 = dims[2], k
    cdef const void* xp
    cdef void* yp
    cdef const void* ps
    cdef const void* pb
    cdef const void* pm
    cdef const void* pv
    cdef bint f64
    cdef double* folded
    if type(scale) is not cnp.ndarray:
        raise ValueError("scale must be a numpy.ndarray")
    pn = cnp.PyArray_TYPE(<cnp.ndarray>scale)
    if pn != cnp.NPY_FLOAT32 and pn != cnp.NPY_FLOAT64:
        raise ValueError("scale, bias, mean and var must all be float32 or all float64")
    f64 = pn == cnp.NPY_FLOAT64
    ps = array_ptr(scale, pn, K, -1, False, "scale")
    pb = array_ptr(bias, pn, K, -1, False, "bias")
    pm = array_ptr(mean, pn, K, -1, False, "mean")
    pv = array_ptr(var, pn, K, -1, False, "var")
    xp = array3_ptr(x, tn, R1, K, R2, False, "x")
    yp = array3_ptr(out, tn, R1, K, R2, True, "out")
    if R1 * K * R2 == 0:
        return
    folded = <double*>malloc(3 * K * sizeof(double))
    if folded == NULL:
        raise MemoryError()
    with nogil:
        for k in range(K):
            folded[k] = param_at(pm, f64, k)
            folded[K + k] = param_at(ps, f64, k) / sqrt(param_at(pv, f64, k) + eps)
            folded[2 * K + k] = param_at(pb, f64, k)
        if tn == cnp.NPY_FLOAT32:
            affine_all(<const float*>xp, NULL, NULL, <float*>yp, R1, K, R2,
                       folded, folded + K, folded + 2 * K, act, n_threads)
        elif tn == cnp.NPY_FLOAT64:
            affine_all(<const double*>xp, NULL, NULL, <double*>yp, R1, K, R2,
                       folded, folded + K, folded + 2 * K, act, n_threads)
        elif kind == HALF_BF16:
            affine_all(<const bf16_t*>xp, NULL, NULL, <bf16_t*>yp, R1, K, R2,
                       folded, folded + K, folded + 2 * K, act, n_threads)
        else:
            affine_all(<const f16_t*>xp, NULL, NULL, <f16_t*>yp, R1, K, R2,
                       folded, folded + K, folded + 2 * K, act, n_threads)
    free(folded)
