"""Lp normalization kernels (ONNX LpNormalization): y = x / ||x||_p, p = 1 or 2.

The caller views x as (K1, L, K2) with the norm taken over L:
  lp_rows  K2 == 1: K1 contiguous rows of length L;
  lp_cols  K2 > 1:  for each k1, K2 interleaved vectors summed column-wise over L
                    (every step reads COLS contiguous values, never a strided walk).
Python (normrt.api.lp_norm) checks every argument; these kernels trust them.

Determinism: a vector's sum is always cut into the same pieces (CHUNK elements
of a row, LCHUNK rows of a column) that are added in the same order, starting
from 0.0, whichever thread computed them and whichever path ran, so outputs are
bitwise identical for any thread count.

With eps > 0 the divisor is max(norm, eps) (torch's F.normalize); with eps = 0
a zero norm gives 0, not NaN: the denominator of a zero vector is +inf, so the
write loop stays branch-free (x / inf == 0 for every finite x). NaN stays NaN.
With nan_on_zero the denominator of a zero vector is 0 instead, so each of its
elements is 0 / 0 = NaN: the plain division x / ||x|| a model writes (CLIP's
h / h.norm(), or F.normalize in float16, whose eps of 1e-12 rounds to 0).
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport sqrt, fabs, frexp, ldexp, INFINITY
from libc.float cimport DBL_MAX

from moments cimport real, CHUNK, chunk_sumsq, n_chunks

cdef enum:
    # columns per block of the (K1, L, K2) path: accumulators stay in L1
    COLS = 128
    # rows of L per partial column sum (fixed: it decides the summation order)
    LCHUNK = 256



cdef struct Chunk:
    # one work item of the (K1, L, K2) split: slab k, rows [r0, r0 + rows), columns [j0, j0 + cols)
    Py_ssize_t k, j0, r0, rows, cols


cdef inline Chunk chunk_of(Py_ssize_t t, Py_ssize_t nlc, Py_ssize_t nb, Py_ssize_t L, Py_ssize_t K2) noexcept nogil:
    """Work item t: column block t // nlc (of nb per slab), row chunk t % nlc (of nlc per column)."""
    cdef Chunk c
    cdef Py_ssize_t item = t // nlc
    c.k = item // nb
    c.j0 = (item % nb) * COLS
    c.r0 = (t % nlc) * LCHUNK
    c.rows = min(<Py_ssize_t>LCHUNK, L - c.r0)
    c.cols = min(<Py_ssize_t>COLS, K2 - c.j0)
    return c


# below this a float64 sum of squares may have lost digits to underflow
cdef double TINY_SUMSQ = 1e-280


cdef inline double chunk_sumabs(const real* x, Py_ssize_t n) noexcept nogil:
    """Sum of |x| of one chunk in float64 (the L1 norm's chunk_sumsq)."""
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    cdef Py_ssize_t i, n4 = n - n % 4
    for i in range(0, n4, 4):
        s0 += fabs(<double>x[i])
        s1 += fabs(<double>x[i + 1])
        s2 += fabs(<double>x[i + 2])
        s3 += fabs(<double>x[i + 3])
    for i in range(n4, n):
        s0 += fabs(<double>x[i])
    return (s0 + s1) + (s2 + s3)


cdef inline double chunk_sum_p(const real* x, Py_ssize_t n, int p) noexcept nogil:
    if p == 1:
        return chunk_sumabs(x, n)
    return chunk_sumsq(x, n)


cdef inline double prescaled_l2(const real* x, Py_ssize_t n, Py_ssize_t stride,
                               double* pre) noexcept nogil:
    """||x * pre||_2 with pre a power of two that brings max|x| near 1: immune to over-
    and underflow. Returns the scaled norm (0 or inf where max|x| is) and sets *pre.

    The output is then (x * pre) / norm: x / (norm / pre) would round twice where
    norm / pre is subnormal ([5e-324, 5e-324] gave [1, 1]) or overflow to inf.
    Only float64 inputs need it (float32 squares cannot leave float64's range).
    """
    cdef double amax = 0.0, s = 0.0, v
    cdef Py_ssize_t i
    cdef int e
    for i in range(n):
        v = fabs(<double>x[i * stride])
        if v > amax:
            amax = v
    if amax == 0.0 or amax > DBL_MAX:
        pre[0] = 1.0
        return amax
    frexp(amax, &e)
    # 2^-e itself must be a normal, finite double
    pre[0] = ldexp(1.0, -min(max(e, -1022), 1022))
    for i in range(n):
        v = <double>x[i * stride] * pre[0]
        s += v * v
    return sqrt(s)


cdef inline double zero_norm(double norm, bint nan_on_zero) noexcept nogil:
    """The divisor for a norm: itself, except 0 -> +inf (zeros out) or, nan_on_zero, 0."""
    if norm != 0.0 or nan_on_zero:
        return norm
    return INFINITY


cdef inline double denominator(const real* x, Py_ssize_t n, Py_ssize_t stride,
                               double s, int p, double eps, bint nan_on_zero, double* pre) noexcept nogil:
    """The divisor d and factor *pre of a vector whose accumulated sum is s: the output
    is (x * pre) / d with d / pre = max(norm, eps), or for a zero norm d = +inf (zeros
    out), with nan_on_zero d = 0 (NaN out).

    eps > 0 is torch's F.normalize (x / max(||x||, eps)); a NaN norm stays NaN.
    pre is 1 (exact) except for float64 sums of squares out of range.
    """
    cdef double norm
    pre[0] = 1.0
    if p == 1:
        norm = s
    else:
        norm = sqrt(s)
        if real is double:
            # a float64 sum of squares overflowed or underflowed: recompute scaled
            if s > DBL_MAX or s < TINY_SUMSQ:
                norm = prescaled_l2(x, n, stride, pre)
                if norm / pre[0] < eps:
                    pre[0] = 1.0
                    norm = eps
                return zero_norm(norm, nan_on_zero)
    if norm < eps:
        norm = eps
    return zero_norm(norm, nan_on_zero)


cdef inline void write_row(const real* x, real* y, Py_ssize_t n, double pre, double d) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = <real>((<double>x[i] * pre) / d)


def lp_rows(const real[:, ::1] x,   # IN  (K1, L) rows to normalize
            real[:, ::1] out,       # OUT (K1, L); may alias x
            int p, double eps, int n_threads, bint nan_on_zero=False):
    cdef Py_ssize_t G = x.shape[0], L = x.shape[1]
    cdef Py_ssize_t nch = n_chunks(L), g, c, item, start, n
    cdef double s, d, pre
    cdef double* parts
    if G == 0 or L == 0:
        return

    if G >= n_threads or nch == 1:
        # one thread owns a whole row: its norm, then its output while cache-hot
        for g in prange(G, nogil=True, schedule="static", num_threads=n_threads):
            s = 0.0
            for c in range(nch):
                start = c * CHUNK
                s = s + chunk_sum_p(&x[g, start], min(<Py_ssize_t>CHUNK, L - start), p)
            d = denominator(&x[g, 0], L, 1, s, p, eps, nan_on_zero, &pre)
            write_row(&x[g, 0], &out[g, 0], L, pre, d)
        return

    # fewer rows than threads: every chunk of every row is a work item
    parts = <double*>malloc((G * nch + 2 * G) * sizeof(double))
    if parts == NULL:
        raise MemoryError()
    cdef double* dens = parts + G * nch
    cdef double* pres = dens + G
    try:
        with nogil:
            for item in prange(G * nch, schedule="static", num_threads=n_threads):
                start = (item % nch) * CHUNK
                parts[item] = chunk_sum_p(&x[item // nch, start],
                                          min(<Py_ssize_t>CHUNK, L - start), p)
            for g in prange(G, schedule="static", num_threads=n_threads):
                s = 0.0
                for c in range(nch):
                    s = s + parts[g * nch + c]
                dens[g] = denominator(&x[g, 0], L, 1, s, p, eps, nan_on_zero, &pres[g])
            for item in prange(G * nch, schedule="static", num_threads=n_threads):
                g = item // nch
                start = (item % nch) * CHUNK
                n = min(<Py_ssize_t>CHUNK, L - start)
                write_row(&x[g, start], &out[g, start], n, pres[g], dens[g])
    finally:
        free(parts)


cdef inline void col_chunk_sum(const real* x, Py_ssize_t K2, Py_ssize_t nrows, Py_ssize_t ncols,
                               int p, double* part) noexcept nogil:
    """part[j] = sum of |x[l, j]|^p over rows l < nrows (row stride K2), rows in order."""
    cdef Py_ssize_t l, j
    cdef const real* r
    for j in range(ncols):
        part[j] = 0.0
    if p == 1:
        for l in range(nrows):
            r = x + l * K2
            for j in range(ncols):
                part[j] += fabs(<double>r[j])
    else:
        for l in range(nrows):
            r = x + l * K2
            for j in range(ncols):
                part[j] += <double>r[j] * <double>r[j]


cdef inline void col_denominators(const real* x, Py_ssize_t L, Py_ssize_t K2, Py_ssize_t ncols,
                                  int p, double eps, bint nan_on_zero, double* acc, double* pre) noexcept nogil:
    """acc[j]: the accumulated sum of column j in, its divisor out (pre[j]: its factor)."""
    cdef Py_ssize_t j
    for j in range(ncols):
        acc[j] = denominator(x + j, L, K2, acc[j], p, eps, nan_on_zero, &pre[j])


cdef inline void col_write(const real* x, real* y, Py_ssize_t K2, Py_ssize_t nrows,
                           Py_ssize_t ncols, const double* pre, const double* dens) noexcept nogil:
    cdef Py_ssize_t l, j
    cdef const real* r
    cdef real* w
    for l in range(nrows):
        r = x + l * K2
        w = y + l * K2
        for j in range(ncols):
            w[j] = <real>((<double>r[j] * pre[j]) / dens[j])


cdef inline void col_block(const real* x, real* y, Py_ssize_t L, Py_ssize_t K2,
                           Py_ssize_t ncols, int p, double eps, bint nan_on_zero) noexcept nogil:
    """Normalize ncols <= COLS adjacent columns of one (L, K2) slab, all by one thread."""
    cdef double acc[COLS]
    cdef double part[COLS]
    cdef double pre[COLS]
    cdef Py_ssize_t j, r0
    for j in range(ncols):
        acc[j] = 0.0
    r0 = 0
    while r0 < L:
        col_chunk_sum(x + r0 * K2, K2, min(<Py_ssize_t>LCHUNK, L - r0), ncols, p, part)
        for j in range(ncols):
            acc[j] = acc[j] + part[j]
        r0 += LCHUNK
    col_denominators(x, L, K2, ncols, p, eps, nan_on_zero, acc, pre)
    col_write(x, y, K2, L, ncols, pre, acc)


def lp_cols(const real[:, :, ::1] x,   # IN  (K1, L, K2): norms over L for each (k1, k2)
            real[:, :, ::1] out,       # OUT (K1, L, K2); may alias x
            int p, double eps, int n_threads, bint nan_on_zero=False):
    cdef Py_ssize_t K1 = x.shape[0], L = x.shape[1], K2 = x.shape[2]
    cdef Py_ssize_t nb = (K2 + COLS - 1) // COLS          # column blocks per slab
    cdef Py_ssize_t nlc = (L + LCHUNK - 1) // LCHUNK      # row chunks per column
    cdef Py_ssize_t items = K1 * nb, item, t, k, j0, nc, lc, j
    cdef Chunk ch
    cdef double* parts
    cdef double* acc
    if K1 == 0 or L == 0 or K2 == 0:
        return

    if items >= n_threads or nlc == 1:
        # a work item is one column block of one slab: sums, then output
        for item in prange(items, nogil=True, schedule="static", num_threads=n_threads):
            k = item // nb
            j0 = (item % nb) * COLS
            col_block(&x[k, 0, j0], &out[k, 0, j0], L, K2, min(<Py_ssize_t>COLS, K2 - j0), p, eps,
                      nan_on_zero)
        return

    # few column blocks, long columns: each row chunk of each block is a work item;
    # the partial sums are merged in chunk order (the same additions as col_block)
    parts = <double*>malloc((items * nlc + 2 * items) * COLS * sizeof(double))
    if parts == NULL:
        raise MemoryError()
    cdef double* dens = parts + items * nlc * COLS
    cdef double* pres = dens + items * COLS
    try:
        with nogil:
            for t in prange(items * nlc, schedule="static", num_threads=n_threads):
                ch = chunk_of(t, nlc, nb, L, K2)
                col_chunk_sum(&x[ch.k, ch.r0, ch.j0], K2, ch.rows, ch.cols, p, parts + t * COLS)
            for item in prange(items, schedule="static", num_threads=n_threads):
                k = item // nb
                j0 = (item % nb) * COLS
                nc = min(<Py_ssize_t>COLS, K2 - j0)
                acc = dens + item * COLS
                for j in range(nc):
                    acc[j] = 0.0
                for lc in range(nlc):
                    for j in range(nc):
                        acc[j] = acc[j] + parts[(item * nlc + lc) * COLS + j]
                col_denominators(&x[k, 0, j0], L, K2, nc, p, eps, nan_on_zero, acc, pres + item * COLS)
            for t in prange(items * nlc, schedule="static", num_threads=n_threads):
                ch = chunk_of(t, nlc, nb, L, K2)
                col_write(&x[ch.k, ch.r0, ch.j0], &out[ch.k, ch.r0, ch.j0], K2, ch.rows, ch.cols,
                          pres + (t // nlc) * COLS, dens + (t // nlc) * COLS)
    finally:
        free(parts)


cdef inline void grn_write(const float* x, float* y, Py_ssize_t K2, Py_ssize_t nrows, Py_ssize_t ncols,
                           const double* a, const float* beta) noexcept nogil:
    """y = x * a + beta (+ x folded into a: a = gamma * Nx + 1), in float64, rounded once."""
    cdef Py_ssize_t l, j
    cdef const float* r
    cdef float* w
    for l in range(nrows):
        r = x + l * K2
        w = y + l * K2
        for j in range(ncols):
            w[j] = <float>(<double>r[j] * a[j] + <double>beta[j])


def grn(const float[:, :, ::1] x,       # IN  (N, L, C): channels last, L the spatial positions
        const float[::1] gamma,         # IN  (C,)
        const float[::1] beta,          # IN  (C,)
        double eps,
        float[:, :, ::1] out,           # OUT (N, L, C); may alias x
        int n_threads):
    """Global response normalization (ConvNeXt V2): G[n, c] = ||x[n, :, c]||_2 over the positions,
    Nx = G / (mean_c G[n, c] + eps), y = gamma * (x * Nx) + beta + x.

    The column sums of squares are lp_cols' (float64, LCHUNK rows a part, merged in order), the
    mean over C a float64 sum in channel order, so the result does not depend on the threads.
    A NaN spreads to its whole sample (through the mean over C), as the formula does."""
    cdef Py_ssize_t N = x.shape[0], L = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t nb = (C + COLS - 1) // COLS
    cdef Py_ssize_t nlc = (L + LCHUNK - 1) // LCHUNK
    cdef Py_ssize_t items = N * nb, t, item, j0, nc, lc, j, n
    cdef Chunk ch
    cdef double s
    cdef double* parts
    cdef double* a
    if gamma.shape[0] != C or beta.shape[0] != C or out.shape[0] != N or out.shape[1] != L or out.shape[2] != C:
        raise ValueError("gamma, beta must be (C,) and out (N, L, C)")
    if N == 0 or L == 0 or C == 0:
        return
    parts = <double*>malloc((items * nlc * COLS + N * C) * sizeof(double))
    if parts == NULL:
        raise MemoryError()
    a = parts + items * nlc * COLS          # (N, C): the norms, then gamma * Nx + 1
    try:
        with nogil:
            for t in prange(items * nlc, schedule="static", num_threads=n_threads):
                ch = chunk_of(t, nlc, nb, L, C)
                col_chunk_sum(&x[ch.k, ch.r0, ch.j0], C, ch.rows, ch.cols, 2, parts + t * COLS)
            for n in prange(N, schedule="static", num_threads=n_threads):
                for item in range(n * nb, (n + 1) * nb):
                    j0 = (item % nb) * COLS
                    nc = min(<Py_ssize_t>COLS, C - j0)
                    for j in range(nc):
                        s = 0.0
                        for lc in range(nlc):
                            s = s + parts[(item * nlc + lc) * COLS + j]
                        a[n * C + j0 + j] = sqrt(s)
                s = 0.0
                for j in range(C):
                    s = s + a[n * C + j]
                s = s / C + eps
                for j in range(C):
                    a[n * C + j] = <double>gamma[j] * (a[n * C + j] / s) + 1.0
            for t in prange(items * nlc, schedule="static", num_threads=n_threads):
                ch = chunk_of(t, nlc, nb, L, C)
                grn_write(&x[ch.k, ch.r0, ch.j0], &out[ch.k, ch.r0, ch.j0], C, ch.rows, ch.cols,
                          a + ch.k * C + ch.j0, &beta[ch.j0])
    finally:
        free(parts)
