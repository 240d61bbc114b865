"""Row kernels: LayerNorm and RMSNorm over the trailing L elements of G rows.

One driver (run_rows) for every storage type: float64, float32, float16 and
bfloat16 (half.pxd's `elem`). float32 and half storage compute alike in
float32 with float64 statistics; a half row is converted LANES / OUT_BLOCK
elements at a time right where the float32 code reads it and rounded back
where it writes, so it is read once for its statistics and once for its
output, like a float32 row.

Python (normrt.api.layer_norm) checks every argument; the entry points still
refuse an array of the wrong dtype, shape or layout (kernel_args.pxd) before
computing anything.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport sqrt, fabs
cimport numpy as cnp

from moments cimport (Moments, Sums, CHUNK, LANES, parts_buffer, chunk_moments, chunk_shift, chunk_finish,
                      sums_dev, chunk_sumsq, mul_add,
                      moments_merge, moments_empty, moments_var, n_chunks, group_moments,
                      activate_span, vec_layer_norm_out, vec_rms_norm_out, vec_add)
from half cimport (elem, f16_t, bf16_t, HALF_BF16, as_f32, as_f32_padded, out_f32, flush_f32, store_f32,
                   value, put, storage_kind)
from kernel_args cimport array_ptr, optional_ptr, storage_type

cnp.import_array()


cdef enum:
    # elements per block of the output pass: converted in, computed, activated
    # and converted out while the block sits in L1
    OUT_BLOCK = 256


cdef inline void add_residual(const elem* x, const elem* r, elem* h, Py_ssize_t n) noexcept nogil:
    """h = x + r in x's type (half storage: the sum rounded, as ONNX's Add gives it)."""
    cdef float bx[OUT_BLOCK]
    cdef float br[OUT_BLOCK]
    cdef const float* px
    cdef const float* pr
    cdef float* q
    cdef Py_ssize_t i = 0, j, m
    if elem is double:
        for j in range(n):
            h[j] = x[j] + r[j]
        return
    if vec_add(storage_kind(x), x, r, h, n):
        return
    while i < n:
        m = min(<Py_ssize_t>OUT_BLOCK, n - i)
        px = as_f32(x + i, bx, m)
        pr = as_f32(r + i, br, m)
        q = out_f32(h + i, bx)
        for j in range(m):
            q[j] = px[j] + pr[j]
        flush_f32(q, h + i, m)
        i += m


cdef void write_layer_norm_scaled(const elem* h, elem* y, Py_ssize_t n, Py_ssize_t offset,
                                  double mean, double rstd, const float* scale, const float* bias,
                                  int act) noexcept nogil:
    """write_layer_norm for float32/half rows whose standard deviation exceeds ~1e30:
    x - mean may overflow float32 and rstd be subnormal, so work on x scaled by
    the exact 2^-64."""
    cdef Py_ssize_t i
    cdef float k = <float>5.421010862427522e-20
    cdef double ms = mean * 5.421010862427522e-20
    cdef float mh = <float>ms
    cdef float ml = <float>(ms - <double>mh)
    cdef float fr = <float>(rstd * 1.8446744073709552e19)
    cdef float v
    cdef float one[1]
    for i in range(n):
        v = ((<float>value(h[i]) * k - mh) - ml) * fr
        if scale != NULL:
            v = v * scale[offset + i]
        if bias != NULL:
            v = v + bias[offset + i]
        one[0] = v
        activate_span(one, 1, act)
        put(y + i, one[0])


cdef inline void layer_norm_lanes(const float* p, float* q, const float* sc, const float* bi,
                                  float mh, float ml, float fr) noexcept nogil:
    """q[j] = ((p[j] - mh) - ml) * fr * sc[j] + bi[j] for one block of LANES (sc, bi may be NULL)."""
    cdef Py_ssize_t j
    if sc != NULL and bi != NULL:
        if ml == 0.0:
            for j in range(LANES):
                q[j] = mul_add((p[j] - mh) * fr, sc[j], bi[j])
        else:
            for j in range(LANES):
                q[j] = mul_add(((p[j] - mh) - ml) * fr, sc[j], bi[j])
    elif sc != NULL:
        for j in range(LANES):
            q[j] = ((p[j] - mh) - ml) * fr * sc[j]
    elif bi != NULL:
        for j in range(LANES):
            q[j] = mul_add((p[j] - mh) - ml, fr, bi[j])
    else:
        for j in range(LANES):
            q[j] = ((p[j] - mh) - ml) * fr


cdef inline const float* padded(const float* a, float* buf, Py_ssize_t m) noexcept nogil:
    return as_f32_padded(a, buf, m, LANES) if a != NULL else NULL


cdef inline void norm_span(const elem* h, elem* y, Py_ssize_t m, const float* sc, const float* bi,
                           float mh, float ml, float fr, float k, int act, bint rms) noexcept nogil:
    """m <= LANES elements of write_layer_norm (rms False) or write_rms_norm (sc, bi
    at the first one, or NULL). A whole block keeps half conversions in vector
    registers; a shorter tail is computed as one padded block (the padding is
    never stored)."""
    cdef float buf[LANES]
    cdef float sbuf[LANES]
    cdef float bbuf[LANES]
    cdef const float* p
    cdef float* q
    if m == LANES:
        p = as_f32(h, buf, LANES)
        q = out_f32(y, buf)
    else:
        p = as_f32_padded(h, buf, m, LANES)
        q = buf
        sc = padded(sc, sbuf, m)
        bi = padded(bi, bbuf, m)
    if rms:
        rms_norm_lanes(p, q, sc, k, fr)
    else:
        layer_norm_lanes(p, q, sc, bi, mh, ml, fr)
    if act:
        activate_span(q, LANES, act)
    if m == LANES:
        flush_f32(q, y, LANES)
    else:
        store_f32(buf, y, m)


cdef inline void write_layer_norm(const elem* h, elem* y, Py_ssize_t n, Py_ssize_t offset,
                                  double mean, double rstd, const void* scale_v, const void* bias_v,
                                  int act) noexcept nogil:
    """y[i] = act((h[i] - mean) * rstd * scale[offset+i] + bias[offset+i]).

    float32 and half storage split the mean in two floats: h - mean_hi is
    exact when h is near the mean (Sterbenz), so large offsets cost no digits.
    scale/bias are float64 for float64 storage, float32 otherwise (or NULL).
    """
    cdef Py_ssize_t i = 0
    cdef const float* sc = <const float*>scale_v
    cdef const float* bi = <const float*>bias_v
    cdef const double* dsc = <const double*>scale_v
    cdef const double* dbi = <const double*>bias_v
    cdef float mh = <float>mean
    cdef float ml = <float>(mean - <double>mh)
    cdef float fr = <float>rstd
    cdef double d
    if elem is double:
        for i in range(n):
            d = (h[i] - mean) * rstd
            if dsc != NULL:
                d = d * dsc[offset + i]
            if dbi != NULL:
                d = d + dbi[offset + i]
            y[i] = d
        activate_span(<double*>y, n, act)
        return
    if rstd < 7.888609052210118e-31:
        write_layer_norm_scaled(h, y, n, offset, mean, rstd, sc, bi, act)
        return
    if fabs(<double>ml * rstd) < 1e-9:
        ml = 0.0    # the low part of the mean moves no output by more than 1e-9
    if sc != NULL:
        sc = sc + offset
    if bi != NULL:
        bi = bi + offset
    if not act and vec_layer_norm_out(storage_kind(h), h, y, n, sc, bi, mh, ml, fr):
        return
    while i + LANES <= n:
        norm_span(h + i, y + i, LANES, (sc + i) if sc != NULL else NULL,
                  (bi + i) if bi != NULL else NULL, mh, ml, fr, 1.0, act, False)
        i += LANES
    if i < n:
        norm_span(h + i, y + i, n - i, (sc + i) if sc != NULL else NULL,
                  (bi + i) if bi != NULL else NULL, mh, ml, fr, 1.0, act, False)


cdef inline void rms_norm_lanes(const float* p, float* q, const float* sc, float k, float fr) noexcept nogil:
    cdef Py_ssize_t j
    if k != 1.0:
        for j in range(LANES):
            q[j] = (p[j] * k) * fr * (sc[j] if sc != NULL else <float>1.0)
    elif sc != NULL:
        for j in range(LANES):
            q[j] = p[j] * fr * sc[j]
    else:
        for j in range(LANES):
            q[j] = p[j] * fr


cdef inline void write_rms_norm(const elem* h, elem* y, Py_ssize_t n, Py_ssize_t offset,
                                double rinv, const void* scale_v, int act) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef const float* sc = <const float*>scale_v
    cdef const double* dsc = <const double*>scale_v
    cdef float fr = <float>rinv
    cdef float k = 1.0
    if elem is double:
        for i in range(n):
            y[i] = h[i] * rinv * (dsc[offset + i] if dsc != NULL else 1.0)
        activate_span(<double*>y, n, act)
        return
    if rinv < 7.888609052210118e-31:
        # root mean square above ~1e30: rinv may be subnormal in float32
        fr = <float>(rinv * 1.8446744073709552e19)
        k = <float>5.421010862427522e-20
    if sc != NULL:
        sc = sc + offset
    if not act and vec_rms_norm_out(storage_kind(h), h, y, n, sc, k, fr):
        return
    while i + LANES <= n:
        norm_span(h + i, y + i, LANES, (sc + i) if sc != NULL else NULL, NULL, 0.0, 0.0, fr, k, act, True)
        i += LANES
    if i < n:
        norm_span(h + i, y + i, n - i, (sc + i) if sc != NULL else NULL, NULL, 0.0, 0.0, fr, k, act, True)


cdef inline void norm_row(const elem* x, const elem* r, elem* h_buf, elem* y, Py_ssize_t L,
                          const void* scale, const void* bias, double eps, int act, bint rms,
                          double* mean_out, double* rstd_out) noexcept nogil:
    """One whole row: (x + r into h_buf), statistics, output, while it is cache-hot."""
    cdef const elem* h = x
    cdef Moments m
    cdef double rstd, ss = 0.0
    cdef Py_ssize_t start = 0
    if r != NULL:
        add_residual(x, r, h_buf, L)
        h = h_buf
    if rms:
        while start < L:
            ss += chunk_sumsq(h + start, min(<Py_ssize_t>CHUNK, L - start))
            start += CHUNK
        write_rms_norm(h, y, L, 0, 1.0 / sqrt(ss / L + eps), scale, act)
        return
    m = group_moments(h, L)
    rstd = 1.0 / sqrt(moments_var(m) + eps)
    if mean_out != NULL:
        mean_out[0] = m.mean
        rstd_out[0] = rstd
    write_layer_norm(h, y, L, 0, m.mean, rstd, scale, bias, act)


cdef enum:
    # rows up to BLOCK_MAX long (one statistics chunk, CHUNK) are normalized a
    # block of rows at a time (norm_row_block), up to BLOCK_ROWS rows and BLOCK_ELEMS elements
    BLOCK_MAX = 1024
    BLOCK_ROWS = 8
    BLOCK_ELEMS = 4096


cdef inline Py_ssize_t block_rows(Py_ssize_t L, bint rms) noexcept nogil:
    """Rows norm_rows_from takes at a time: a block of short rows (whose outputs are
    written while the block is still in L1), else one."""
    if L > BLOCK_MAX:
        return 1
    return max(2, min(<Py_ssize_t>BLOCK_ROWS, BLOCK_ELEMS // L))


cdef inline void norm_row_block(const elem* x, const elem* r, elem* h_buf, elem* y, Py_ssize_t L,
                                Py_ssize_t rows, const void* scale, const void* bias, double eps, int act,
                                bint rms, double* mean_out, double* rstd_out) noexcept nogil:
    """norm_row's LayerNorm on `rows` (<= BLOCK_ROWS) consecutive rows of L (<= CHUNK), each
    row by the very same operations (chunk_moments' three steps, then the output), taken
    step by step across the block: all shifts, all sums, all statistics, all outputs. A
    short row's chain of dependent scalar operations (the shift's sum, two divisions, a
    square root, ~100 cycles) then overlaps the other rows' instead of following its own
    row's vector work. One thread, (256, 16) float32: 58 -> 28 ns a row; two rows at a
    time, as before: (6144, 128) 411 -> 370 us. RMSNorm (rms) likewise: its sum of squares,
    a division and a square root. mean_out/rstd_out[k]: row k's statistics (NULL: not
    wanted)."""
    cdef const elem* h = x
    cdef double shift[BLOCK_ROWS]
    cdef double mean[BLOCK_ROWS]
    cdef double rstd[BLOCK_ROWS]
    cdef Sums s[BLOCK_ROWS]
    cdef Moments m
    cdef Py_ssize_t k
    if r != NULL:
        for k in range(rows):
            add_residual(x + k * L, r + k * L, h_buf + k * L, L)
        h = h_buf
    if rms:
        for k in range(rows):
            rstd[k] = 0.0 + chunk_sumsq(h + k * L, L)       # (norm_row's sum over one chunk)
        for k in range(rows):
            rstd[k] = 1.0 / sqrt(rstd[k] / L + eps)
        for k in range(rows):
            write_rms_norm(h + k * L, y + k * L, L, 0, rstd[k], scale, act)
        return
    for k in range(rows):
        shift[k] = chunk_shift(h + k * L, L)
    for k in range(rows):
        s[k] = sums_dev(h + k * L, L, shift[k])
    for k in range(rows):
        m = chunk_finish(h + k * L, L, shift[k], s[k])
        mean[k] = m.mean
        rstd[k] = 1.0 / sqrt(moments_var(m) + eps)
    if mean_out != NULL:
        for k in range(rows):
            mean_out[k] = mean[k]
            rstd_out[k] = rstd[k]
    for k in range(rows):
        write_layer_norm(h + k * L, y + k * L, L, 0, mean[k], rstd[k], scale, bias, act)


cdef inline void norm_rows_from(const elem* x, const elem* res, elem* sums, elem* y, Py_ssize_t G,
                                Py_ssize_t L, const void* scale, const void* bias, double* stats, double eps,
                                int act, bint rms, Py_ssize_t g, Py_ssize_t rows) noexcept nogil:
    """Rows [g, g + rows) of run_rows' G rows (rows > 1: a block, L <= BLOCK_MAX)."""
    if rows > 1:
        norm_row_block(x + g * L, (res + g * L) if res != NULL else NULL, sums + g * L, y + g * L, L, rows,
                       scale, bias, eps, act, rms, (stats + g) if stats != NULL else NULL,
                       (stats + G + g) if stats != NULL else NULL)
    else:
        norm_row(x + g * L, (res + g * L) if res != NULL else NULL, sums + g * L, y + g * L, L,
                 scale, bias, eps, act, rms, (stats + g) if stats != NULL else NULL,
                 (stats + G + g) if stats != NULL else NULL)


cdef int run_rows(const elem* x, const elem* res, elem* sums, elem* y, Py_ssize_t G, Py_ssize_t L,
                  const void* scale, const void* bias, double* stats, double eps, int act, bint rms,
                  int n_threads) noexcept nogil:
    """LayerNorm (rms False) or RMSNorm of G rows of L; returns -1 when out of memory.

    res: the residual or NULL; sums: where x + res goes (sum_out, else y);
    stats: (2, G) mean and inv_std_dev, or NULL.
    """
    cdef Py_ssize_t nch = n_chunks(L), g, c, item, start, n
    cdef Moments m
    cdef Moments* parts
    cdef double* centers
    cdef double* rstds
    cdef double ss
    cdef const elem* h
    cdef Py_ssize_t step = block_rows(L, rms), p
    if n_threads == 1:
        for p in range((G + step - 1) // step):
            norm_rows_from(x, res, sums, y, G, L, scale, bias, stats, eps, act, rms, p * step,
                           min(step, G - p * step))
        return 0
    if G >= n_threads or nch == 1:
        # blocks that leave no thread idle (a row's result does not depend on its block)
        step = max(1, min(step, G // (2 * n_threads)))
        for p in prange((G + step - 1) // step, schedule="static", num_threads=n_threads):
            norm_rows_from(x, res, sums, y, G, L, scale, bias, stats, eps, act, rms, p * step,
                           min(step, G - p * step))
        return 0

    # fewer rows than threads: every chunk of every row is a work item, merged
    # in chunk order exactly as norm_row merges them (the same bits)
    parts = parts_buffer(G * nch, G, &centers, &rstds)
    if parts == NULL:
        return -1
    for item in prange(G * nch, schedule="static", num_threads=n_threads):
        g = item // nch
        start = (item % nch) * CHUNK
        n = min(<Py_ssize_t>CHUNK, L - start)
        h = x + g * L + start
        if res != NULL:
            add_residual(h, res + g * L + start, sums + g * L + start, n)
            h = sums + g * L + start
        if rms:
            parts[item].m2 = chunk_sumsq(h, n)
        else:
            parts[item] = chunk_moments(h, n)
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
            if stats != NULL:
                stats[g] = centers[g]
                stats[G + g] = rstds[g]
    for item in prange(G * nch, schedule="static", num_threads=n_threads):
        g = item // nch
        start = (item % nch) * CHUNK
        n = min(<Py_ssize_t>CHUNK, L - start)
        h = ((sums if res != NULL else x) + g * L + start)
        if rms:
            write_rms_norm(h, y + g * L + start, n, start, rstds[g], scale, act)
        else:
            write_layer_norm(h, y + g * L + start, n, start, centers[g], rstds[g], scale, bias, act)
    free(parts)
    return 0


cdef object rows(object x, object out, object scale, object bias, object residual, object sum_out,
                 object stats_out, double eps, int act, int n_threads, int kind, bint rms):
    """Check the arrays (kernel_args.pxd), then run_rows for x's storage type."""
    cdef int tn, pn
    cdef Py_ssize_t G, L
    cdef void* xp
    cdef void* yp
    cdef void* rp
    cdef void* sp
    cdef const void* scale_p
    cdef const void* bias_p
    cdef double* stats_p
    cdef int rc
    tn = storage_type(x, 2, &pn)
    G = cnp.PyArray_DIMS(<cnp.ndarray>x)[0]
    L = cnp.PyArray_DIMS(<cnp.ndarray>x)[1]
    xp = array_ptr(x, tn, G, L, False, "x")
    yp = array_ptr(out, tn, G, L, True, "out")
    if G == 0 or L == 0:
        return
    scale_p = optional_ptr(scale, pn, L, -1, False, "scale")
    bias_p = optional_ptr(bias, pn, L, -1, False, "bias")
    rp = optional_ptr(residual, tn, G, L, False, "residual")
    sp = optional_ptr(sum_out, tn, G, L, True, "sum_out")
    stats_p = <double*>optional_ptr(stats_out, cnp.NPY_FLOAT64, 2, G, True, "stats_out")
    if sp == NULL:
        sp = yp
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            rc = run_rows(<const float*>xp, <const float*>rp, <float*>sp, <float*>yp, G, L,
                          scale_p, bias_p, stats_p, eps, act, rms, n_threads)
        elif tn == cnp.NPY_FLOAT64:
            rc = run_rows(<const double*>xp, <const double*>rp, <double*>sp, <double*>yp, G, L,
                          scale_p, bias_p, stats_p, eps, act, rms, n_threads)
        elif kind == HALF_BF16:
            rc = run_rows(<const bf16_t*>xp, <const bf16_t*>rp, <bf16_t*>sp, <bf16_t*>yp, G, L,
                          scale_p, bias_p, stats_p, eps, act, rms, n_threads)
        else:
            rc = run_rows(<const f16_t*>xp, <const f16_t*>rp, <f16_t*>sp, <f16_t*>yp, G, L,
                          scale_p, bias_p, stats_p, eps, act, rms, n_threads)
    if rc != 0:
        raise MemoryError()


def layer_norm(x,                   # IN  (G, L) rows to normalize: float32, float64 or half words
               out,                 # OUT (G, L) x's dtype; may alias x
               scale=None,          # IN  (L,) float64 for float64 x, else float32; or None
               bias=None,           # IN  (L,) like scale, or None
               residual=None,       # IN  (G, L) x's dtype, added to x first, or None
               sum_out=None,        # OUT (G, L) x's dtype, receives x + residual, or None
               stats_out=None,      # OUT (2, G) float64: mean, inv_std_dev; or None
               double eps=1e-5, int act=0, int n_threads=1,
               int kind=0):         # for uint16 x: half.h's NRT_F16 (0) or NRT_BF16 (1)
    rows(x, out, scale, bias, residual, sum_out, stats_out, eps, act, n_threads, kind, False)


def rms_norm(x,                     # IN  (G, L), as layer_norm's
             out,                   # OUT (G, L) x's dtype; may alias x
             scale=None,            # IN  (L,) as layer_norm's, or None
             residual=None,         # IN  (G, L) x's dtype, or None
             sum_out=None,          # OUT (G, L) x's dtype, receives x + residual, or None
             double eps=1e-5, int act=0, int n_threads=1, int kind=0):
    rows(x, out, scale, None, residual, sum_out, None, eps, act, n_threads, kind, True)


cdef inline bint small_param(object p, int typenum, Py_ssize_t L) noexcept:
    """p is None, or a C-contiguous 1-D ndarray of dtype `typenum` and length L."""
    if p is None:
        return True
    if type(p) is not cnp.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>p
    return (cnp.PyArray_TYPE(a) == typenum and cnp.PyArray_NDIM(a) == 1 and cnp.PyArray_DIMS(a)[0] == L
            and cnp.PyArray_ISBEHAVED_RO(a) and cnp.PyArray_IS_C_CONTIGUOUS(a))


def small_call(x, scale, bias, residual, eps, out, bint rms, Py_ssize_t max_elements):
    """normrt.layer_norm / rms_norm's fast path for a small call, every check in C: y, or
    None where it does not apply (the API's Python paths then run, and name what is wrong).

    Applies to: x a C-contiguous float32/float64/float16 ndarray of rank >= 1 with fewer than
    `max_elements` elements (the thread policy's split: such a call runs on one thread), the
    last axis normalized, eps a float >= 0, scale/bias None or 1-D of x's last length in
    float32 (float64 for float64 x), residual None or like x, out None or an ndarray of x's
    dtype and shape, C-contiguous, writeable, and x itself or - with x - owning its memory
    (two such arrays cannot overlap); out and residual not both given. A (1, 768) LayerNorm
    computes in ~0.3 us, and the Python checks around it took ~1 us."""
    cdef cnp.ndarray xa, ya, ra
    cdef int tn, pn
    cdef Py_ssize_t size, L, G
    cdef double e
    cdef int rc
    cdef void* yp
    cdef const void* rp = NULL
    cdef const void* sp
    cdef const void* bp
    if type(x) is not cnp.ndarray or type(eps) is not float:
        return None
    e = eps
    if not e >= 0.0:
        return None
    xa = <cnp.ndarray>x
    tn = cnp.PyArray_TYPE(xa)
    if tn == cnp.NPY_FLOAT32 or tn == cnp.NPY_FLOAT16:
        pn = cnp.NPY_FLOAT32
    elif tn == cnp.NPY_FLOAT64:
        pn = cnp.NPY_FLOAT64
    else:
        return None
    size = cnp.PyArray_SIZE(xa)
    if cnp.PyArray_NDIM(xa) < 1 or size == 0 or size >= max_elements \
            or not cnp.PyArray_ISBEHAVED_RO(xa) or not cnp.PyArray_IS_C_CONTIGUOUS(xa):
        return None
    L = cnp.PyArray_DIMS(xa)[cnp.PyArray_NDIM(xa) - 1]
    G = size // L
    if not small_param(scale, pn, L) or not small_param(bias, pn, L):
        return None
    if residual is not None:
        if out is not None or type(residual) is not cnp.ndarray:
            return None
        ra = <cnp.ndarray>residual
        if cnp.PyArray_TYPE(ra) != tn or not cnp.PyArray_SAMESHAPE(ra, xa) or not cnp.PyArray_ISBEHAVED_RO(ra) \
                or not cnp.PyArray_IS_C_CONTIGUOUS(ra):
            return None
        rp = cnp.PyArray_DATA(ra)
    if out is None:
        ya = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(xa), cnp.PyArray_DIMS(xa), tn, 0)
    else:
        if type(out) is not cnp.ndarray:
            return None
        ya = <cnp.ndarray>out
        if cnp.PyArray_TYPE(ya) != tn or not cnp.PyArray_SAMESHAPE(ya, xa) or not cnp.PyArray_ISBEHAVED(ya) \
                or not cnp.PyArray_IS_C_CONTIGUOUS(ya):
            return None
        if ya is not xa and (cnp.PyArray_BASE(ya) != NULL or cnp.PyArray_BASE(xa) != NULL):
            return None         # views may overlap partially: the Python path checks
    yp = cnp.PyArray_DATA(ya)
    sp = cnp.PyArray_DATA(<cnp.ndarray>scale) if scale is not None else NULL
    bp = cnp.PyArray_DATA(<cnp.ndarray>bias) if bias is not None and not rms else NULL
    with nogil:
        if tn == cnp.NPY_FLOAT32:
            rc = run_rows(<const float*>cnp.PyArray_DATA(xa), <const float*>rp, <float*>yp, <float*>yp, G, L,
                          sp, bp, NULL, e, 0, rms, 1)
        elif tn == cnp.NPY_FLOAT64:
            rc = run_rows(<const double*>cnp.PyArray_DATA(xa), <const double*>rp, <double*>yp, <double*>yp, G, L,
                          sp, bp, NULL, e, 0, rms, 1)
        else:
            rc = run_rows(<const f16_t*>cnp.PyArray_DATA(xa), <const f16_t*>rp, <f16_t*>yp, <f16_t*>yp, G, L,
                          sp, bp, NULL, e, 0, rms, 1)
    if rc != 0:
        raise MemoryError()
    return ya
