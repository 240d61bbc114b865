"""Channel-group kernels: GroupNorm, InstanceNorm (plain and conditional) and AdaIN.

Every statistics group is one contiguous row of x viewed as (R, L):
  group norm     R = N * G, L = (C / G) * S  (a row holds C/G channels of S elements)
  instance norm  R = N * C, L = S
A row is cut into `nseg` segments of L / nseg elements (one per channel); segment
s of row r takes scale/bias entry (r * nseg + s) % period, where period is the
parameter's length: C for per-channel parameters, N * C for per-sample ones.

Outputs are computed in float64 as (x - mean) * (inv_std * scale) + bias, so a
constant row (x - mean == 0 exactly) gives exactly bias.

GroupNorm and InstanceNorm run one driver (run_groups) for every storage type,
float64, float32, float16 and bfloat16 (half.pxd's `elem`): half storage is
converted LANES elements at a time where the float32 code reads it and
rounded back where it writes, so a row is read once for its statistics and
once for its output, as in float32.

Python (normrt.api.group_norm) checks every argument; the entry points still
refuse arrays of the wrong dtype, shape or layout (kernel_args.pxd).
Optional parameters are None or length-0 arrays.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport sqrt, NAN
cimport numpy as cnp

from moments cimport (real, Moments, CHUNK, ACT_NONE, chunk_moments, group_moments,
                      moments_merge, moments_empty, moments_var, n_chunks, write_affine, parts_buffer)
from half cimport elem, f16_t, bf16_t, HALF_BF16
from kernel_args cimport array_ptr, param_vector, storage_type

cnp.import_array()


cdef inline void write_segments(const elem* x, elem* y, Py_ssize_t start, Py_ssize_t stop,
                                Py_ssize_t row, Py_ssize_t nseg, Py_ssize_t seg_len,
                                double mean, double inv_std,
                                const void* scale, Py_ssize_t scale_period,
                                const void* bias, Py_ssize_t bias_period, int act) noexcept nogil:
    """Elements [start, stop) of row `row` (x, y point at the row), segment by segment.

    The per-segment factor inv_std * scale depends only on (row, segment), so a
    chunk that cuts a segment computes exactly what the whole-row path does.
    scale/bias are float64 for float64 storage, float32 otherwise.
    """
    cdef Py_ssize_t s = start // seg_len, pos = start, end, k
    cdef double a, b
    while pos < stop:
        end = min((s + 1) * seg_len, stop)
        k = row * nseg + s
        a = inv_std
        b = 0.0
        if elem is double:
            if scale != NULL:
                a = inv_std * (<const double*>scale)[k % scale_period]
            if bias != NULL:
                b = (<const double*>bias)[k % bias_period]
        else:
            if scale != NULL:
                a = inv_std * <double>(<const float*>scale)[k % scale_period]
            if bias != NULL:
                b = <double>(<const float*>bias)[k % bias_period]
        write_affine(x + pos, y + pos, end - pos, mean, a, b, act)
        pos = end
        s += 1


cdef int run_groups(const elem* x, elem* y, Py_ssize_t R, Py_ssize_t L, Py_ssize_t nseg,
                    const void* scale, Py_ssize_t sp, const void* bias, Py_ssize_t bp,
                    double eps, int act, int n_threads) noexcept nogil:
    """Normalize R rows of L, one statistics group per row; -1 when out of memory."""
    cdef Py_ssize_t nch = n_chunks(L), seg_len = L // nseg, r, c, item, start, n
    cdef Moments m
    cdef Moments* parts
    cdef double* means
    cdef double* inv_stds
    cdef double inv_std
    if R >= n_threads or nch == 1:
        # one thread owns a whole row: statistics and output while it is cache-hot
        for r in prange(R, schedule="static", num_threads=n_threads):
            m = group_moments(x + r * L, L)
            inv_std = 1.0 / sqrt(moments_var(m) + eps)
            write_segments(x + r * L, y + r * L, 0, L, r, nseg, seg_len, m.mean, inv_std,
                           scale, sp, bias, bp, act)
        return 0

    # fewer rows than threads: every chunk of every row is a work item; the
    # per-chunk moments are merged in chunk order, exactly as group_moments does
    parts = parts_buffer(R * nch, R, &means, &inv_stds)
    if parts == NULL:
        return -1
    for item in prange(R * nch, schedule="static", num_threads=n_threads):
        r = item // nch
        start = (item % nch) * CHUNK
        parts[item] = chunk_moments(x + r * L + start, min(<Py_ssize_t>CHUNK, L - start))
    for r in range(R):
        m = moments_empty()
        for c in range(nch):
            moments_merge(&m, parts[r * nch + c])
        means[r] = m.mean
        inv_stds[r] = 1.0 / sqrt(moments_var(m) + eps)
    for item in prange(R * nch, schedule="static", num_threads=n_threads):
        r = item // nch
        start = (item % nch) * CHUNK
        n = min(<Py_ssize_t>CHUNK, L - start)
        write_segments(x + r * L, y + r * L, start, start + n, r, nseg, seg_len,
                       means[r], inv_stds[r], scale, sp, bias, bp, act)
    free(parts)
    return 0


def group_norm(x,                  # IN  (R, L) one statistics group per row: float32, float64 or half words
               scale,              # IN  (period,) per-segment scale (float64 for float64 x, else float32), None or (0,)
               bias,               # IN  (period,) per-segment bias, like scale
               out,                # OUT (R, L) x's dtype; may alias x
               Py_ssize_t nseg,    # segments (channels) per row; divides L
               double eps, int act, int n_threads,
               int kind=0):        # for uint16 x: half.h's NRT_F16 (0) or NRT_BF16 (1)
    cdef int pn
    cdef int tn = storage_type(x, 2, &pn)
    cdef Py_ssize_t R = cnp.PyArray_DIMS(<cnp.ndarray>x)[0], L = cnp.PyArray_DIMS(<cnp.ndarray>x)[1]
    cdef Py_ssize_t sp, bp
    cdef const void* xp = array_ptr(x, tn, R, L, False, "x")
    cdef void* yp = array_ptr(out, tn, R, L, True, "out")
    cdef const void* scale_p = param_vector(scale, pn, &sp, "scale")
    cdef const void* bias_p = param_vector(bias, pn, &bp, "bias")
    cdef int rc
    if R == 0 or L == 0:
        return
    if nseg < 1 or L % nseg:
        raise ValueError("nseg must divide L")
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            rc = run_groups(<const float*>xp, <float*>yp, R, L, nseg, scale_p, sp, bias_p, bp, eps, act, n_threads)
        elif tn == cnp.NPY_FLOAT64:
            rc = run_groups(<const double*>xp, <double*>yp, R, L, nseg, scale_p, sp, bias_p, bp, eps, act, n_threads)
        elif kind == HALF_BF16:
            rc = run_groups(<const bf16_t*>xp, <bf16_t*>yp, R, L, nseg, scale_p, sp, bias_p, bp, eps, act, n_threads)
        else:
            rc = run_groups(<const f16_t*>xp, <f16_t*>yp, R, L, nseg, scale_p, sp, bias_p, bp, eps, act, n_threads)
    if rc != 0:
        raise MemoryError()


cdef inline double adain_var(Moments m, bint unbiased) noexcept nogil:
    """Population variance m2/n, or with `unbiased` Bessel's m2/(n-1) (NaN for n <= 1, like torch)."""
    cdef double v
    if not unbiased:
        return moments_var(m)
    if m.count <= 1.0:
        return NAN
    v = m.m2 / (m.count - 1.0)
    return 0.0 if v < 0.0 else v


def adain(const real[:, ::1] content,    # IN  (R, L) one (n, c) per row
          const real[:, ::1] style,      # IN  (R, Ls) same rows, any spatial size
          real[:, ::1] out,              # OUT (R, L); may alias content
          double eps, bint unbiased, int n_threads):
    """out = (content - mean_c) * (inv_std_c * std_s) + mean_s per row, std = sqrt(var + eps).

    var is the population variance, or the unbiased one (m2 / (n - 1)) when `unbiased`.
    """
    cdef Py_ssize_t R = content.shape[0], L = content.shape[1], Ls = style.shape[1]
    cdef Py_ssize_t nch = n_chunks(L), nchs = n_chunks(Ls), r, c, item, start
    cdef Py_ssize_t n_style_items = R * nchs
    cdef Moments mc, ms
    cdef Moments* parts
    cdef double a
    if R == 0 or L == 0:
        return

    if R >= n_threads or (nch == 1 and nchs <= 1):
        for r in prange(R, nogil=True, schedule="static", num_threads=n_threads):
            # an empty style row has no element 0 to point at (NaN statistics follow)
            ms = group_moments(&style[r, 0] if Ls else <const real*>NULL, Ls)
            mc = group_moments(&content[r, 0], L)
            a = (1.0 / sqrt(adain_var(mc, unbiased) + eps)) * sqrt(adain_var(ms, unbiased) + eps)
            write_affine(&content[r, 0], &out[r, 0], L, mc.mean, a, ms.mean, ACT_NONE)
        return

    # items [0, R*nchs) are style chunks, the rest content chunks
    parts = <Moments*>malloc((n_style_items + R * nch) * sizeof(Moments) + 3 * R * sizeof(double))
    if parts == NULL:
        raise MemoryError()
    cdef Moments* cparts = parts + n_style_items
    cdef double* means = <double*>(cparts + R * nch)
    cdef double* factors = means + R
    cdef double* shifts = factors + R
    try:
        with nogil:
            for item in prange(n_style_items + R * nch, schedule="static", num_threads=n_threads):
                if item < n_style_items:
                    r = item // nchs
                    start = (item % nchs) * CHUNK
                    parts[item] = chunk_moments(&style[r, start], min(<Py_ssize_t>CHUNK, Ls - start))
                else:
                    r = (item - n_style_items) // nch
                    start = ((item - n_style_items) % nch) * CHUNK
                    parts[item] = chunk_moments(&content[r, start], min(<Py_ssize_t>CHUNK, L - start))
            for r in range(R):
                ms = moments_empty()
                for c in range(nchs):
                    moments_merge(&ms, parts[r * nchs + c])
                mc = moments_empty()
                for c in range(nch):
                    moments_merge(&mc, cparts[r * nch + c])
                means[r] = mc.mean
                factors[r] = (1.0 / sqrt(adain_var(mc, unbiased) + eps)) * sqrt(adain_var(ms, unbiased) + eps)
                shifts[r] = ms.mean
            for item in prange(R * nch, schedule="static", num_threads=n_threads):
                r = item // nch
                start = (item % nch) * CHUNK
                write_affine(&content[r, start], &out[r, start], min(<Py_ssize_t>CHUNK, L - start),
                             means[r], factors[r], shifts[r], ACT_NONE)
    finally:
        free(parts)
