"""Channel-group kernels: GroupNorm, InstanceNorm (plain and conditional) and AdaIN.

Every statistics group is one contiguous row of x viewed as (R, L):
  group norm     R = N * G, L = (C / G) * S  (a row holds C/G channels of S elements)
  instance norm  R = N * C, L = S
A row is cut into `nseg` segments of L / nseg elements (one per channel); segment
s of row r takes scale/bias entry (r * nseg + s) % period, where period is the
parameter's length: C for per-channel parameters, N * C for per-sample ones.

Outputs are computed in float64 as (x - mean) * (inv_std * scale) + bias, so a
constant row (x - mean == 0 exactly) gives exactly bias.

Python (normrt.api.group_norm) checks every argument; these kernels trust them.
Optional buffers are passed as length-0 arrays.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport sqrt, NAN

from moments cimport (real, Moments, CHUNK, ACT_NONE, chunk_moments, group_moments,
                      moments_merge, moments_empty, moments_var, n_chunks,
                      activate_span)
from half cimport half_t, half_load, half_store


cdef inline void write_affine(const real* x, real* y, Py_ssize_t n, double mean, double a,
                              double b, int act) noexcept nogil:
    """y[i] = act((x[i] - mean) * a + b), a = inv_std * scale, b = bias, in x's precision.

    float32 splits the mean in two floats (x - mean_hi is exact near the
    mean), so large offsets cost no digits; a constant group gives exactly b.
    """
    cdef Py_ssize_t i
    cdef real mh = <real>mean
    cdef real ml = <real>(mean - <double>mh)   # 0 for float64
    cdef real fa = <real>a
    cdef real fb = <real>b
    for i in range(n):
        y[i] = ((x[i] - mh) - ml) * fa + fb
    activate_span(y, n, act)


cdef inline void write_segments(const real* x, real* y, Py_ssize_t start, Py_ssize_t stop,
                                Py_ssize_t row, Py_ssize_t nseg, Py_ssize_t seg_len,
                                double mean, double inv_std,
                                const real* scale, Py_ssize_t scale_period,
                                const real* bias, Py_ssize_t bias_period, int act) noexcept nogil:
    """Elements [start, stop) of row `row` (x, y point at the row), segment by segment.

    The per-segment factor inv_std * scale depends only on (row, segment), so a
    chunk that cuts a segment computes exactly what the whole-row path does.
    """
    cdef Py_ssize_t s = start // seg_len, pos = start, end, k
    cdef double a, b
    while pos < stop:
        end = min((s + 1) * seg_len, stop)
        k = row * nseg + s
        a = inv_std
        if scale != NULL:
            a = inv_std * <double>scale[k % scale_period]
        b = 0.0
        if bias != NULL:
            b = <double>bias[k % bias_period]
        write_affine(x + pos, y + pos, end - pos, mean, a, b, act)
        pos = end
        s += 1


def group_norm(const real[:, ::1] x,      # IN  (R, L) one statistics group per row
               const real[::1] scale,     # IN  (period,) per-segment scale, or (0,)
               const real[::1] bias,      # IN  (period,) per-segment bias, or (0,)
               real[:, ::1] out,          # OUT (R, L); may alias x
               Py_ssize_t nseg,           # segments (channels) per row; divides L
               double eps, int act, int n_threads):
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1]
    cdef Py_ssize_t nch = n_chunks(L), seg_len, r, c, item, start, n
    cdef bint has_scale = scale.shape[0] != 0, has_bias = bias.shape[0] != 0
    cdef Py_ssize_t sp = scale.shape[0], bp = bias.shape[0]
    cdef const real* scale_p = &scale[0] if has_scale else NULL
    cdef const real* bias_p = &bias[0] if has_bias else NULL
    cdef Moments m
    cdef Moments* parts
    cdef double inv_std
    if R == 0 or L == 0:
        return
    seg_len = L // nseg

    if R >= n_threads or nch == 1:
        # one thread owns a whole row: statistics and output while it is cache-hot
        for r in prange(R, nogil=True, schedule="static", num_threads=n_threads):
            m = group_moments(&x[r, 0], L)
            inv_std = 1.0 / sqrt(moments_var(m) + eps)
            write_segments(&x[r, 0], &out[r, 0], 0, L, r, nseg, seg_len, m.mean, inv_std,
                           scale_p, sp, bias_p, bp, act)
        return

    # fewer rows than threads: every chunk of every row is a work item; the
    # per-chunk moments are merged in chunk order, exactly as group_moments does
    parts = <Moments*>malloc(R * nch * sizeof(Moments) + 2 * R * sizeof(double))
    if parts == NULL:
        raise MemoryError()
    cdef double* means = <double*>(parts + R * nch)
    cdef double* inv_stds = means + R
    try:
        with nogil:
            for item in prange(R * nch, schedule="static", num_threads=n_threads):
                r = item // nch
                start = (item % nch) * CHUNK
                parts[item] = chunk_moments(&x[r, start], min(<Py_ssize_t>CHUNK, L - start))
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
                write_segments(&x[r, 0], &out[r, 0], start, start + n, r, nseg, seg_len,
                               means[r], inv_stds[r], scale_p, sp, bias_p, bp, act)
    finally:
        free(parts)


cdef inline double adain_var(Moments m, bint unbiased) noexcept nogil:
    """Population variance m2/n, or with `unbiased` Bessel's m2/(n-1) (NaN for n <= 1, like torch)."""
    cdef double v
    if not unbiased:
        return moments_var(m)
    if m.count <= 1.0:
        return NAN
    v = m.m2 / (m.count - 1.0)
    return 0.0 if v < 0.0 else v


# ---------------------------------------------------------------- float16 / bfloat16
# x and out hold the 16-bit words of a float16 (kind HALF_F16) or bfloat16
# (HALF_BF16) array; scale and bias are float32. Each CHUNK of a row is
# converted into a float32 stack buffer, where the float32 code above computes
# its moments and then its output, which is rounded back (nearest even). The
# chunks and their merge order are those of the float32 kernel: bitwise
# identical results for any thread count.


cdef void write_chunk_half(const half_t* x, half_t* y, float* buf, bint loaded, Py_ssize_t start,
                           Py_ssize_t stop, Py_ssize_t row, Py_ssize_t nseg, Py_ssize_t seg_len,
                           double mean, double inv_std, const float* scale, Py_ssize_t sp,
                           const float* bias, Py_ssize_t bp, int act, int kind) noexcept nogil:
    """Elements [start, stop) of a row (x, y point at the row) through buf, which
    already holds them as float32 when `loaded`; write_segments' arithmetic."""
    cdef Py_ssize_t s = start // seg_len, pos = start, end, k
    cdef double a, b
    if not loaded:
        half_load(kind, x + start, buf, stop - start)
    while pos < stop:
        end = min((s + 1) * seg_len, stop)
        k = row * nseg + s
        a = inv_std
        if scale != NULL:
            a = inv_std * <double>scale[k % sp]
        b = 0.0
        if bias != NULL:
            b = <double>bias[k % bp]
        write_affine(<const float*>(buf + (pos - start)), buf + (pos - start), end - pos, mean, a, b, act)
        pos = end
        s += 1
    half_store(kind, buf, y + start, stop - start)


cdef void group_norm_row_half(const half_t* x, half_t* y, Py_ssize_t L, Py_ssize_t row,
                              Py_ssize_t nseg, Py_ssize_t seg_len, double eps,
                              const float* scale, Py_ssize_t sp, const float* bias, Py_ssize_t bp,
                              int act, int kind) noexcept nogil:
    """One whole row; a row of one CHUNK is converted once."""
    cdef float buf[CHUNK]
    cdef Moments m = moments_empty()
    cdef Py_ssize_t start = 0, n
    cdef double inv_std
    while start < L:
        n = min(<Py_ssize_t>CHUNK, L - start)
        half_load(kind, x + start, buf, n)
        moments_merge(&m, chunk_moments(<const float*>buf, n))
        start += CHUNK
    inv_std = 1.0 / sqrt(moments_var(m) + eps)
    start = 0
    while start < L:
        n = min(<Py_ssize_t>CHUNK, L - start)
        write_chunk_half(x, y, buf, L <= CHUNK, start, start + n, row, nseg, seg_len, m.mean, inv_std,
                         scale, sp, bias, bp, act, kind)
        start += CHUNK


cdef Moments chunk_moments_half(const half_t* x, Py_ssize_t n, int kind) noexcept nogil:
    cdef float buf[CHUNK]
    half_load(kind, x, buf, n)
    return chunk_moments(<const float*>buf, n)


cdef void write_item_half(const half_t* x, half_t* y, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t row,
                          Py_ssize_t nseg, Py_ssize_t seg_len, double mean, double inv_std,
                          const float* scale, Py_ssize_t sp, const float* bias, Py_ssize_t bp,
                          int act, int kind) noexcept nogil:
    cdef float buf[CHUNK]
    write_chunk_half(x, y, buf, False, start, stop, row, nseg, seg_len, mean, inv_std,
                     scale, sp, bias, bp, act, kind)


def group_norm_half(const half_t[:, ::1] x,    # IN  (R, L) float16/bfloat16 bits, one group per row
                    const float[::1] scale,    # IN  (period,) per-segment scale, or (0,)
                    const float[::1] bias,     # IN  (period,) per-segment bias, or (0,)
                    half_t[:, ::1] out,        # OUT (R, L) x's dtype; may alias x
                    Py_ssize_t nseg,           # segments (channels) per row; divides L
                    double eps, int act, int n_threads, int kind):
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1]
    cdef Py_ssize_t nch = n_chunks(L), seg_len, r, c, item, start, n
    cdef Py_ssize_t sp = scale.shape[0], bp = bias.shape[0]
    cdef const float* scale_p = &scale[0] if sp else NULL
    cdef const float* bias_p = &bias[0] if bp else NULL
    cdef Moments m
    cdef Moments* parts
    if R == 0 or L == 0:
        return
    seg_len = L // nseg

    if R >= n_threads or nch == 1:
        for r in prange(R, nogil=True, schedule="static", num_threads=n_threads):
            group_norm_row_half(&x[r, 0], &out[r, 0], L, r, nseg, seg_len, eps,
                                scale_p, sp, bias_p, bp, act, kind)
        return

    parts = <Moments*>malloc(R * nch * sizeof(Moments) + 2 * R * sizeof(double))
    if parts == NULL:
        raise MemoryError()
    cdef double* means = <double*>(parts + R * nch)
    cdef double* inv_stds = means + R
    try:
        with nogil:
            for item in prange(R * nch, schedule="static", num_threads=n_threads):
                r = item // nch
                start = (item % nch) * CHUNK
                parts[item] = chunk_moments_half(&x[r, start], min(<Py_ssize_t>CHUNK, L - start), kind)
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
                write_item_half(&x[r, 0], &out[r, 0], start, start + n, r, nseg, seg_len,
                                means[r], inv_stds[r], scale_p, sp, bias_p, bp, act, kind)
    finally:
        free(parts)


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
