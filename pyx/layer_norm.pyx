"""Row kernels: LayerNorm and RMSNorm over the trailing L elements of G rows.

Python (normrt.api.layer_norm) checks every argument; these kernels trust them.
Optional buffers are passed as length-0 arrays.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport sqrt

from moments cimport (real, Moments, CHUNK, team_size, ACT_NONE, chunk_moments, chunk_sumsq,
                      moments_merge, moments_empty, moments_var, n_chunks, activate)


cdef inline void add_residual(const real* x, const real* r, real* h, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        h[i] = x[i] + r[i]


cdef inline void write_layer_norm(const real* h, real* y, Py_ssize_t n, Py_ssize_t offset,
                                  double mean, double rstd, const real* scale, const real* bias,
                                  bint has_scale, bint has_bias, int act) noexcept nogil:
    """y[i] = act((h[i] - mean) * rstd * scale[offset+i] + bias[offset+i]).

    float32 works in float32 with the mean split in two floats: h - mean_hi is
    exact when h is near the mean (Sterbenz), so large offsets cost no digits.
    """
    cdef Py_ssize_t i
    cdef double v
    cdef float mh = <float>mean
    cdef float ml = <float>(mean - <double>mh)
    cdef float fr = <float>rstd
    if real is float:
        if has_scale and has_bias and act == ACT_NONE:
            for i in range(n):
                y[i] = ((h[i] - mh) - ml) * fr * scale[offset + i] + bias[offset + i]
            return
        if has_scale and act == ACT_NONE:
            for i in range(n):
                y[i] = ((h[i] - mh) - ml) * fr * scale[offset + i]
            return
        if not has_scale and not has_bias and act == ACT_NONE:
            for i in range(n):
                y[i] = ((h[i] - mh) - ml) * fr
            return
    else:
        if has_scale and has_bias and act == ACT_NONE:
            for i in range(n):
                y[i] = (h[i] - mean) * rstd * scale[offset + i] + bias[offset + i]
            return
    for i in range(n):
        v = (<double>h[i] - mean) * rstd
        if has_scale:
            v = v * <double>scale[offset + i]
        if has_bias:
            v = v + <double>bias[offset + i]
        y[i] = <real>activate(v, act)


cdef inline void write_rms_norm(const real* h, real* y, Py_ssize_t n, Py_ssize_t offset,
                                double rinv, const real* scale, bint has_scale, int act) noexcept nogil:
    cdef Py_ssize_t i
    cdef double v
    cdef float fr = <float>rinv
    if act == ACT_NONE:
        if real is float:
            if has_scale:
                for i in range(n):
                    y[i] = h[i] * fr * scale[offset + i]
            else:
                for i in range(n):
                    y[i] = h[i] * fr
            return
        if has_scale:
            for i in range(n):
                y[i] = h[i] * rinv * scale[offset + i]
            return
    for i in range(n):
        v = <double>h[i] * rinv
        if has_scale:
            v = v * <double>scale[offset + i]
        y[i] = <real>activate(v, act)


def layer_norm(const real[:, ::1] x,          # IN  (G, L) rows to normalize
               const real[:, ::1] residual,   # IN  (G, L) added to x first, or (0, 0)
               const real[::1] scale,         # IN  (L,) or (0,)
               const real[::1] bias,          # IN  (L,) or (0,)
               real[:, ::1] out,              # OUT (G, L); may alias x
               real[:, ::1] sum_out,          # OUT (G, L) x + residual, or (0, 0)
               double[::1] mean_out,          # OUT (G,) or (0,)
               double[::1] rstd_out,          # OUT (G,) or (0,)
               double eps, int act, int n_threads):
    cdef Py_ssize_t G = x.shape[0], L = x.shape[1]
    cdef Py_ssize_t nch = n_chunks(L), g, c, item, start, n
    cdef bint has_res = residual.shape[0] != 0, has_sum = sum_out.shape[0] != 0
    cdef bint has_scale = scale.shape[0] != 0, has_bias = bias.shape[0] != 0
    cdef bint keep_stats = mean_out.shape[0] != 0
    cdef Moments m
    cdef Moments* parts
    cdef double rstd
    cdef const real* h
    cdef real* hw
    if G == 0 or L == 0:
        return
    n_threads = team_size(G * L, n_threads)

    if G >= n_threads or nch == 1:
        # one thread owns a whole row: statistics and output while it is cache-hot
        for g in prange(G, nogil=True, schedule="static", num_threads=n_threads):
            h = &x[g, 0]
            if has_res:
                hw = &sum_out[g, 0] if has_sum else &out[g, 0]
                add_residual(&x[g, 0], &residual[g, 0], hw, L)
                h = hw
            m = moments_empty()
            for c in range(nch):
                start = c * CHUNK
                moments_merge(&m, chunk_moments(h + start, min(<Py_ssize_t>CHUNK, L - start)))
            rstd = 1.0 / sqrt(moments_var(m) + eps)
            if keep_stats:
                mean_out[g] = m.mean
                rstd_out[g] = rstd
            write_layer_norm(h, &out[g, 0], L, 0, m.mean, rstd, &scale[0] if has_scale else NULL,
                             &bias[0] if has_bias else NULL, has_scale, has_bias, act)
        return

    # fewer rows than threads: every chunk of every row is a work item
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
                if has_res:
                    hw = &sum_out[g, start] if has_sum else &out[g, start]
                    add_residual(&x[g, start], &residual[g, start], hw, n)
                    h = hw
                parts[item] = chunk_moments(h, n)
            for g in range(G):
                m = moments_empty()
                for c in range(nch):
                    moments_merge(&m, parts[g * nch + c])
                means[g] = m.mean
                rstds[g] = 1.0 / sqrt(moments_var(m) + eps)
                if keep_stats:
                    mean_out[g] = means[g]
                    rstd_out[g] = rstds[g]
            for item in prange(G * nch, schedule="static", num_threads=n_threads):
                g = item // nch
                start = (item % nch) * CHUNK
                n = min(<Py_ssize_t>CHUNK, L - start)
                if has_res:
                    h = &sum_out[g, start] if has_sum else &out[g, start]
                else:
                    h = &x[g, start]
                write_layer_norm(h, &out[g, start], n, start, means[g], rstds[g],
                                 &scale[0] if has_scale else NULL, &bias[0] if has_bias else NULL,
                                 has_scale, has_bias, act)
    finally:
        free(parts)


def rms_norm(const real[:, ::1] x,          # IN  (G, L)
             const real[:, ::1] residual,   # IN  (G, L) or (0, 0)
             const real[::1] scale,         # IN  (L,) or (0,)
             real[:, ::1] out,              # OUT (G, L); may alias x
             real[:, ::1] sum_out,          # OUT (G, L) x + residual, or (0, 0)
             double eps, int act, int n_threads):
    cdef Py_ssize_t G = x.shape[0], L = x.shape[1]
    cdef Py_ssize_t nch = n_chunks(L), g, c, item, start, n
    cdef bint has_res = residual.shape[0] != 0, has_sum = sum_out.shape[0] != 0
    cdef bint has_scale = scale.shape[0] != 0
    cdef double ss, rinv
    cdef double* parts
    cdef const real* h
    cdef real* hw
    if G == 0 or L == 0:
        return
    n_threads = team_size(G * L, n_threads)

    if G >= n_threads or nch == 1:
        for g in prange(G, nogil=True, schedule="static", num_threads=n_threads):
            h = &x[g, 0]
            if has_res:
                hw = &sum_out[g, 0] if has_sum else &out[g, 0]
                add_residual(&x[g, 0], &residual[g, 0], hw, L)
                h = hw
            ss = 0.0
            for c in range(nch):
                start = c * CHUNK
                ss = ss + chunk_sumsq(h + start, min(<Py_ssize_t>CHUNK, L - start))
            rinv = 1.0 / sqrt(ss / L + eps)
            write_rms_norm(h, &out[g, 0], L, 0, rinv, &scale[0] if has_scale else NULL, has_scale, act)
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
                if has_res:
                    hw = &sum_out[g, start] if has_sum else &out[g, start]
                    add_residual(&x[g, start], &residual[g, start], hw, n)
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
                if has_res:
                    h = &sum_out[g, start] if has_sum else &out[g, start]
                else:
                    h = &x[g, start]
                write_rms_norm(h, &out[g, start], n, start, rinvs[g],
                               &scale[0] if has_scale else NULL, has_scale, act)
    finally:
        free(parts)
