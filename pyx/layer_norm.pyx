"""Row kernels: LayerNorm and RMSNorm over the trailing L elements of G rows.

Python (normrt.api.layer_norm) checks every argument; these kernels trust them.
Optional buffers are None or arrays of x's dtype and the documented shape.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport sqrt, fabs

from moments cimport (real, Moments, CHUNK, chunk_moments, chunk_sumsq,
                      moments_merge, moments_empty, moments_var, n_chunks, group_moments,
                      activate_span)
from half cimport half_t, half_load, half_store, half_add


cdef inline void add_residual(const real* x, const real* r, real* h, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        h[i] = x[i] + r[i]


cdef void write_layer_norm_scaled(const float* h, float* y, Py_ssize_t n, Py_ssize_t offset,
                                  double mean, double rstd, const float* scale, const float* bias,
                                  bint has_scale, bint has_bias) noexcept nogil:
    """write_layer_norm for float32 rows whose standard deviation exceeds ~1e30."""
    cdef Py_ssize_t i
    cdef float k = <float>5.421010862427522e-20          # 2^-64: exact scaling
    cdef double ms = mean * 5.421010862427522e-20
    cdef float mh = <float>ms
    cdef float ml = <float>(ms - <double>mh)
    cdef float fr = <float>(rstd * 1.8446744073709552e19)
    cdef float v
    for i in range(n):
        v = ((h[i] * k - mh) - ml) * fr
        if has_scale:
            v = v * scale[offset + i]
        if has_bias:
            v = v + bias[offset + i]
        y[i] = v


cdef inline void write_layer_norm(const real* h, real* y, Py_ssize_t n, Py_ssize_t offset,
                                  double mean, double rstd, const real* scale, const real* bias,
                                  bint has_scale, bint has_bias, int act) noexcept nogil:
    """y[i] = act((h[i] - mean) * rstd * scale[offset+i] + bias[offset+i]).

    Works in x's precision. float32 splits the mean in two floats: h - mean_hi
    is exact when h is near the mean (Sterbenz), so large offsets cost no digits.
    """
    cdef Py_ssize_t i
    cdef real mh = <real>mean
    cdef real ml = <real>(mean - <double>mh)   # 0 for float64
    cdef real fr = <real>rstd
    if real is float:
        if rstd < 7.888609052210118e-31:
            # standard deviation above ~1e30: x - mean may overflow float32 and
            # rstd be subnormal, so work on x scaled by the exact 2^-64
            write_layer_norm_scaled(h, y, n, offset, mean, rstd, scale, bias, has_scale, has_bias)
            activate_span(y, n, act)
            return
    if has_scale and has_bias and fabs(<double>ml * rstd) < 1e-9:
        # the low part of the mean moves no output by more than 1e-9: skip it
        for i in range(n):
            y[i] = (h[i] - mh) * fr * scale[offset + i] + bias[offset + i]
    elif has_scale and has_bias:
        for i in range(n):
            y[i] = ((h[i] - mh) - ml) * fr * scale[offset + i] + bias[offset + i]
    elif has_scale:
        for i in range(n):
            y[i] = ((h[i] - mh) - ml) * fr * scale[offset + i]
    elif has_bias:
        for i in range(n):
            y[i] = ((h[i] - mh) - ml) * fr + bias[offset + i]
    else:
        for i in range(n):
            y[i] = ((h[i] - mh) - ml) * fr
    activate_span(y, n, act)


cdef inline void write_rms_norm(const real* h, real* y, Py_ssize_t n, Py_ssize_t offset,
                                double rinv, const real* scale, bint has_scale, int act) noexcept nogil:
    cdef Py_ssize_t i
    cdef real fr = <real>rinv
    if real is float:
        if rinv < 7.888609052210118e-31:
            # root mean square above ~1e30: rinv may be subnormal in float32
            fr = <float>(rinv * 1.8446744073709552e19)
            for i in range(n):
                y[i] = (h[i] * <float>5.421010862427522e-20) * fr * (scale[offset + i] if has_scale else <float>1.0)
            activate_span(y, n, act)
            return
    if has_scale:
        for i in range(n):
            y[i] = h[i] * fr * scale[offset + i]
    else:
        for i in range(n):
            y[i] = h[i] * fr
    activate_span(y, n, act)


cdef inline void layer_norm_row(const real* x, const real* r, real* h_buf, real* y, Py_ssize_t L,
                                const real* scale, const real* bias, double eps, int act,
                                double* mean_out, double* rstd_out) noexcept nogil:
    """One whole row: (x + r into h_buf), statistics, output."""
    cdef const real* h = x
    cdef Moments m
    cdef double rstd
    if r != NULL:
        add_residual(x, r, h_buf, L)
        h = h_buf
    m = group_moments(h, L)
    rstd = 1.0 / sqrt(moments_var(m) + eps)
    if mean_out != NULL:
        mean_out[0] = m.mean
        rstd_out[0] = rstd
    write_layer_norm(h, y, L, 0, m.mean, rstd, scale, bias, scale != NULL, bias != NULL, act)


cdef inline void rms_norm_row(const real* x, const real* r, real* h_buf, real* y, Py_ssize_t L,
                              const real* scale, double eps, int act) noexcept nogil:
    cdef const real* h = x
    cdef double ss = 0.0
    cdef Py_ssize_t start = 0
    if r != NULL:
        add_residual(x, r, h_buf, L)
        h = h_buf
    while start < L:
        ss += chunk_sumsq(h + start, min(<Py_ssize_t>CHUNK, L - start))
        start += CHUNK
    write_rms_norm(h, y, L, 0, 1.0 / sqrt(ss / L + eps), scale, scale != NULL, act)


def layer_norm(const real[:, ::1] x,      # IN  (G, L) rows to normalize
               real[:, ::1] out,          # OUT (G, L); may alias x
               scale=None,                # IN  (L,) x.dtype, or None
               bias=None,                 # IN  (L,) x.dtype, or None
               residual=None,             # IN  (G, L) x.dtype, added to x first, or None
               sum_out=None,              # OUT (G, L) x.dtype, receives x + residual, or None
               stats_out=None,            # OUT (2, G) float64: mean, inv_std_dev; or None
               double eps=1e-5, int act=0, int n_threads=1):
    # Optional buffers are plain objects, turned into views only when present:
    # a small call then pays for two buffer acquisitions, not seven.
    cdef Py_ssize_t G = x.shape[0], L = x.shape[1]
    cdef Py_ssize_t nch = n_chunks(L), g, c, item, start, n
    cdef const real[::1] scale_v, bias_v
    cdef const real[:, ::1] res_v
    cdef real[:, ::1] sum_v
    cdef double[:, ::1] stats_v
    cdef const real* scale_p = NULL
    cdef const real* bias_p = NULL
    cdef const real* res_p = NULL
    cdef real* sum_p = &out[0, 0] if G and L else NULL
    cdef double* stats_p = NULL
    cdef Moments m
    cdef Moments* parts
    cdef double rstd
    cdef const real* h
    cdef real* hw
    if out.shape[0] != G or out.shape[1] != L:
        raise ValueError("out must have x's shape")
    if G == 0 or L == 0:
        return
    if scale is not None:
        scale_v = scale
        if scale_v.shape[0] != L:
            raise ValueError("scale must have L elements")
        scale_p = &scale_v[0]
    if bias is not None:
        bias_v = bias
        if bias_v.shape[0] != L:
            raise ValueError("bias must have L elements")
        bias_p = &bias_v[0]
    if residual is not None:
        res_v = residual
        if res_v.shape[0] != G or res_v.shape[1] != L:
            raise ValueError("residual must have x's shape")
        res_p = &res_v[0, 0]
    if sum_out is not None:
        sum_v = sum_out
        if sum_v.shape[0] != G or sum_v.shape[1] != L:
            raise ValueError("sum_out must have x's shape")
        sum_p = &sum_v[0, 0]
    if stats_out is not None:
        stats_v = stats_out
        if stats_v.shape[0] != 2 or stats_v.shape[1] != G:
            raise ValueError("stats_out must have shape (2, G)")
        stats_p = &stats_v[0, 0]

    if n_threads == 1:
        with nogil:
            for g in range(G):
                layer_norm_row(&x[g, 0], (res_p + g * L) if res_p != NULL else NULL, sum_p + g * L,
                               &out[g, 0], L, scale_p, bias_p, eps, act,
                               (stats_p + g) if stats_p != NULL else NULL,
                               (stats_p + G + g) if stats_p != NULL else NULL)
        return
    if G >= n_threads or nch == 1:
        # one thread owns a whole row: statistics and output while it is cache-hot
        for g in prange(G, nogil=True, schedule="static", num_threads=n_threads):
            layer_norm_row(&x[g, 0], (res_p + g * L) if res_p != NULL else NULL, sum_p + g * L,
                           &out[g, 0], L, scale_p, bias_p, eps, act,
                           (stats_p + g) if stats_p != NULL else NULL,
                           (stats_p + G + g) if stats_p != NULL else NULL)
        return

    # fewer rows than threads: every chunk of every row is a work item, merged
    # in chunk order exactly as group_moments does
    parts = <Moments*>malloc(G * nch * sizeof(Moments) + 2 * G * sizeof(double))
    if parts == NULL:
        raise MemoryError()
    cdef double* means = <double*>(parts + G * nch)
    cdef double* rstds = means + G
    try:
        with nogil:
            for item in prange(G * nch, schedule="static", num_threads=n_threads):
                g = item // nch
                start = (item % nch) * CHUNK
                n = min(<Py_ssize_t>CHUNK, L - start)
                h = &x[g, start]
                if res_p != NULL:
                    hw = sum_p + g * L + start
                    add_residual(&x[g, start], res_p + g * L + start, hw, n)
                    h = hw
                parts[item] = chunk_moments(h, n)
            for g in range(G):
                m = moments_empty()
                for c in range(nch):
                    moments_merge(&m, parts[g * nch + c])
                means[g] = m.mean
                rstds[g] = 1.0 / sqrt(moments_var(m) + eps)
                if stats_p != NULL:
                    stats_p[g] = means[g]
                    stats_p[G + g] = rstds[g]
            for item in prange(G * nch, schedule="static", num_threads=n_threads):
                g = item // nch
                start = (item % nch) * CHUNK
                n = min(<Py_ssize_t>CHUNK, L - start)
                h = (sum_p + g * L + start) if res_p != NULL else &x[g, start]
                write_layer_norm(h, &out[g, start], n, start, means[g], rstds[g],
                                 scale_p, bias_p, scale_p != NULL, bias_p != NULL, act)
    finally:
        free(parts)


def rms_norm(const real[:, ::1] x,      # IN  (G, L)
             real[:, ::1] out,          # OUT (G, L); may alias x
             scale=None,                # IN  (L,) x.dtype, or None
             residual=None,             # IN  (G, L) x.dtype, or None
             sum_out=None,              # OUT (G, L) x.dtype, receives x + residual, or None
             double eps=1e-5, int act=0, int n_threads=1):
    cdef Py_ssize_t G = x.shape[0], L = x.shape[1]
    cdef Py_ssize_t nch = n_chunks(L), g, c, item, start, n
    cdef const real[::1] scale_v
    cdef const real[:, ::1] res_v
    cdef real[:, ::1] sum_v
    cdef const real* scale_p = NULL
    cdef const real* res_p = NULL
    cdef real* sum_p = &out[0, 0] if G and L else NULL
    cdef double ss, rinv
    cdef double* parts
    cdef const real* h
    cdef real* hw
    if out.shape[0] != G or out.shape[1] != L:
        raise ValueError("out must have x's shape")
    if G == 0 or L == 0:
        return
    if scale is not None:
        scale_v = scale
        if scale_v.shape[0] != L:
            raise ValueError("scale must have L elements")
        scale_p = &scale_v[0]
    if residual is not None:
        res_v = residual
        if res_v.shape[0] != G or res_v.shape[1] != L:
            raise ValueError("residual must have x's shape")
        res_p = &res_v[0, 0]
    if sum_out is not None:
        sum_v = sum_out
        if sum_v.shape[0] != G or sum_v.shape[1] != L:
            raise ValueError("sum_out must have x's shape")
        sum_p = &sum_v[0, 0]

    if n_threads == 1:
        with nogil:
            for g in range(G):
                rms_norm_row(&x[g, 0], (res_p + g * L) if res_p != NULL else NULL, sum_p + g * L,
                             &out[g, 0], L, scale_p, eps, act)
        return
    if G >= n_threads or nch == 1:
        for g in prange(G, nogil=True, schedule="static", num_threads=n_threads):
            rms_norm_row(&x[g, 0], (res_p + g * L) if res_p != NULL else NULL, sum_p + g * L,
                         &out[g, 0], L, scale_p, eps, act)
        return

    parts = <double*>malloc((G * nch + G) * sizeof(double))
    if parts == NULL:
        raise MemoryError()
    cdef double* rinvs = parts + G * nch
    try:
        with nogil:
            for item in prange(G * nch, schedule="static", num_threads=n_threads):
                g = item // nch
                start = (item % nch) * CHUNK
                n = min(<Py_ssize_t>CHUNK, L - start)
                h = &x[g, start]
                if res_p != NULL:
                    hw = sum_p + g * L + start
                    add_residual(&x[g, start], res_p + g * L + start, hw, n)
                    h = hw
                parts[item] = chunk_sumsq(h, n)
            for g in range(G):
                ss = 0.0
                for c in range(nch):
                    ss = ss + parts[g * nch + c]
                rinvs[g] = 1.0 / sqrt(ss / L + eps)
            for item in prange(G * nch, schedule="static", num_threads=n_threads):
                g = item // nch
                start = (item % nch) * CHUNK
                n = min(<Py_ssize_t>CHUNK, L - start)
                h = (sum_p + g * L + start) if res_p != NULL else &x[g, start]
                write_rms_norm(h, &out[g, start], n, start, rinvs[g], scale_p, scale_p != NULL, act)
    finally:
        free(parts)


# ---------------------------------------------------------------- float16 / bfloat16
# x, out, residual and sum_out hold the 16-bit words of a float16 (kind
# HALF_F16) or bfloat16 (HALF_BF16) array; scale and bias are float32. Each
# CHUNK of a row is converted into a float32 stack buffer, where the float32
# code above computes its moments and then its output, which is rounded back
# (nearest even). A residual is added in x's dtype first (as ONNX's Add
# would), and that rounded sum is what gets normalized and stored in sum_out.
# The chunks and their merge order are those of the float32 kernel, so the
# results are bitwise identical for any thread count.


cdef inline void load_half_chunk(const half_t* x, const half_t* r, half_t* hsum, float* buf,
                                 Py_ssize_t n, int kind) noexcept nogil:
    if r != NULL:
        half_add(kind, x, r, hsum, buf, n)
    else:
        half_load(kind, x, buf, n)


cdef void layer_norm_row_half(const half_t* x, const half_t* r, half_t* hsum, half_t* y, Py_ssize_t L,
                              const float* scale, const float* bias, double eps, int act,
                              double* mean_out, double* rstd_out, int kind) noexcept nogil:
    """One whole row; a row of one CHUNK is converted once."""
    cdef float buf[CHUNK]
    cdef Moments m = moments_empty()
    cdef Py_ssize_t start = 0, n
    cdef const half_t* h = hsum if r != NULL else x
    cdef double rstd
    while start < L:
        n = min(<Py_ssize_t>CHUNK, L - start)
        load_half_chunk(x + start, (r + start) if r != NULL else NULL, hsum + start, buf, n, kind)
        moments_merge(&m, chunk_moments(<const float*>buf, n))
        start += CHUNK
    rstd = 1.0 / sqrt(moments_var(m) + eps)
    if mean_out != NULL:
        mean_out[0] = m.mean
        rstd_out[0] = rstd
    start = 0
    while start < L:
        n = min(<Py_ssize_t>CHUNK, L - start)
        if L > CHUNK:
            half_load(kind, h + start, buf, n)
        write_layer_norm(<const float*>buf, buf, n, start, m.mean, rstd, scale, bias,
                         scale != NULL, bias != NULL, act)
        half_store(kind, buf, y + start, n)
        start += CHUNK


cdef void rms_norm_row_half(const half_t* x, const half_t* r, half_t* hsum, half_t* y, Py_ssize_t L,
                            const float* scale, double eps, int act, int kind) noexcept nogil:
    cdef float buf[CHUNK]
    cdef double ss = 0.0, rinv
    cdef Py_ssize_t start = 0, n
    cdef const half_t* h = hsum if r != NULL else x
    while start < L:
        n = min(<Py_ssize_t>CHUNK, L - start)
        load_half_chunk(x + start, (r + start) if r != NULL else NULL, hsum + start, buf, n, kind)
        ss += chunk_sumsq(<const float*>buf, n)
        start += CHUNK
    rinv = 1.0 / sqrt(ss / L + eps)
    start = 0
    while start < L:
        n = min(<Py_ssize_t>CHUNK, L - start)
        if L > CHUNK:
            half_load(kind, h + start, buf, n)
        write_rms_norm(<const float*>buf, buf, n, start, rinv, scale, scale != NULL, act)
        half_store(kind, buf, y + start, n)
        start += CHUNK


cdef Moments chunk_moments_half(const half_t* x, const half_t* r, half_t* hsum, Py_ssize_t n,
                                int kind) noexcept nogil:
    cdef float buf[CHUNK]
    load_half_chunk(x, r, hsum, buf, n, kind)
    return chunk_moments(<const float*>buf, n)


cdef double chunk_sumsq_half(const half_t* x, const half_t* r, half_t* hsum, Py_ssize_t n,
                             int kind) noexcept nogil:
    cdef float buf[CHUNK]
    load_half_chunk(x, r, hsum, buf, n, kind)
    return chunk_sumsq(<const float*>buf, n)


cdef void write_chunk_half(const half_t* h, half_t* y, Py_ssize_t n, Py_ssize_t offset, double center,
                           double rstd, const float* scale, const float* bias, int act, bint rms,
                           int kind) noexcept nogil:
    cdef float buf[CHUNK]
    half_load(kind, h, buf, n)
    if rms:
        write_rms_norm(<const float*>buf, buf, n, offset, rstd, scale, scale != NULL, act)
    else:
        write_layer_norm(<const float*>buf, buf, n, offset, center, rstd, scale, bias,
                         scale != NULL, bias != NULL, act)
    half_store(kind, buf, y, n)


cdef inline const float* f32_ptr(object a, Py_ssize_t L, str name) except? NULL:
    cdef const float[::1] v
    if a is None:
        return NULL
    v = a
    if v.shape[0] != L:
        raise ValueError(f"{name} must have L elements")
    return &v[0]


def norm_rows_half(const half_t[:, ::1] x,   # IN  (G, L) float16/bfloat16 bits
                   half_t[:, ::1] out,       # OUT (G, L) same dtype; may alias x
                   scale=None,               # IN  (L,) float32, or None
                   bias=None,                # IN  (L,) float32, or None (LayerNorm only)
                   residual=None,            # IN  (G, L) x's dtype, added to x first, or None
                   sum_out=None,             # OUT (G, L) x's dtype, receives x + residual, or None
                   stats_out=None,           # OUT (2, G) float64: mean, inv_std_dev (LayerNorm); or None
                   double eps=1e-5, int act=0, int n_threads=1, int kind=0, bint rms=False):
    """LayerNorm (rms=False) or RMSNorm (rms=True) of half-precision rows."""
    cdef Py_ssize_t G = x.shape[0], L = x.shape[1]
    cdef Py_ssize_t nch = n_chunks(L), g, c, item, start, n
    cdef const half_t[:, ::1] res_v
    cdef half_t[:, ::1] sum_v
    cdef double[:, ::1] stats_v
    cdef const float* scale_p
    cdef const float* bias_p
    cdef const half_t* res_p = NULL
    cdef half_t* sum_p = &out[0, 0] if G and L else NULL
    cdef double* stats_p = NULL
    cdef Moments m
    cdef Moments* parts
    cdef double ss
    if out.shape[0] != G or out.shape[1] != L:
        raise ValueError("out must have x's shape")
    if G == 0 or L == 0:
        return
    scale_p = f32_ptr(scale, L, "scale")
    bias_p = f32_ptr(bias, L, "bias")
    if residual is not None:
        res_v = residual
        if res_v.shape[0] != G or res_v.shape[1] != L:
            raise ValueError("residual must have x's shape")
        res_p = &res_v[0, 0]
    if sum_out is not None:
        sum_v = sum_out
        if sum_v.shape[0] != G or sum_v.shape[1] != L:
            raise ValueError("sum_out must have x's shape")
        sum_p = &sum_v[0, 0]
    if stats_out is not None:
        stats_v = stats_out
        if stats_v.shape[0] != 2 or stats_v.shape[1] != G:
            raise ValueError("stats_out must have shape (2, G)")
        stats_p = &stats_v[0, 0]

    if n_threads == 1:
        with nogil:
            for g in range(G):
                if rms:
                    rms_norm_row_half(&x[g, 0], (res_p + g * L) if res_p != NULL else NULL, sum_p + g * L,
                                      &out[g, 0], L, scale_p, eps, act, kind)
                else:
                    layer_norm_row_half(&x[g, 0], (res_p + g * L) if res_p != NULL else NULL, sum_p + g * L,
                                        &out[g, 0], L, scale_p, bias_p, eps, act,
                                        (stats_p + g) if stats_p != NULL else NULL,
                                        (stats_p + G + g) if stats_p != NULL else NULL, kind)
        return
    if G >= n_threads or nch == 1:
        for g in prange(G, nogil=True, schedule="static", num_threads=n_threads):
            if rms:
                rms_norm_row_half(&x[g, 0], (res_p + g * L) if res_p != NULL else NULL, sum_p + g * L,
                                  &out[g, 0], L, scale_p, eps, act, kind)
            else:
                layer_norm_row_half(&x[g, 0], (res_p + g * L) if res_p != NULL else NULL, sum_p + g * L,
                                    &out[g, 0], L, scale_p, bias_p, eps, act,
                                    (stats_p + g) if stats_p != NULL else NULL,
                                    (stats_p + G + g) if stats_p != NULL else NULL, kind)
        return

    # fewer rows than threads: every chunk of every row is a work item, merged
    # in chunk order exactly as the whole-row path merges them
    parts = <Moments*>malloc(G * nch * sizeof(Moments) + 2 * G * sizeof(double))
    if parts == NULL:
        raise MemoryError()
    cdef double* centers = <double*>(parts + G * nch)
    cdef double* rstds = centers + G
    try:
        with nogil:
            for item in prange(G * nch, schedule="static", num_threads=n_threads):
                g = item // nch
                start = (item % nch) * CHUNK
                n = min(<Py_ssize_t>CHUNK, L - start)
                if rms:
                    parts[item].m2 = chunk_sumsq_half(&x[g, start], (res_p + g * L + start) if res_p != NULL else NULL,
                                                      sum_p + g * L + start, n, kind)
                else:
                    parts[item] = chunk_moments_half(&x[g, start], (res_p + g * L + start) if res_p != NULL else NULL,
                                                     sum_p + g * L + start, n, kind)
            for g in range(G):
                if rms:
                    ss = 0.0
                    for c in range(nch):
                        ss = ss + parts[g * nch + c].m2
                    centers[g] = 0.0
                    rstds[g] = 1.0 / sqrt(ss / L + eps)
                else:
                    m = moments_empty()
                    for c in range(nch):
                        moments_merge(&m, parts[g * nch + c])
                    centers[g] = m.mean
                    rstds[g] = 1.0 / sqrt(moments_var(m) + eps)
                    if stats_p != NULL:
                        stats_p[g] = centers[g]
                        stats_p[G + g] = rstds[g]
            for item in prange(G * nch, schedule="static", num_threads=n_threads):
                g = item // nch
                start = (item % nch) * CHUNK
                n = min(<Py_ssize_t>CHUNK, L - start)
                write_chunk_half(((sum_p if res_p != NULL else &x[0, 0]) + g * L + start), &out[g, start], n, start,
                                 centers[g], rstds[g], scale_p, bias_p, act, rms, kind)
    finally:
        free(parts)
