# Shared nogil building blocks of every statistics kernel: chunked moments,
# Chan merges and the activation epilogue. Inline, so each kernel family
# compiles them into its own loops.
#
# Determinism: a group is always cut into the same CHUNK-sized pieces and the
# pieces are always merged in the same order, whichever thread computed them,
# so results are bitwise identical for any thread count.

from libc.math cimport sqrt, exp, erf, fabs

ctypedef fused real:
    float
    double

cdef enum:
    # elements per statistics chunk: small enough that its second pass hits L1
    CHUNK = 2048

cdef enum:
    # below this many elements a parallel region costs more than it saves
    PARALLEL_MIN = 32768

cdef enum:
    ACT_NONE = 0
    ACT_RELU = 1
    ACT_SILU = 2
    ACT_GELU = 3
    ACT_SIGMOID = 4

cdef struct Moments:
    double count
    double mean
    double m2   # sum of squared deviations from mean


cdef inline Moments chunk_moments(const real* x, Py_ssize_t n) noexcept nogil:
    """Two passes over one chunk, float64 accumulators.

    The first pass sums deviations from x[0], so a constant chunk has a mean of
    exactly x[0] and an m2 of exactly 0 (a constant group returns the bias).
    """
    cdef Moments m
    cdef double shift = x[0]
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0, d0, d1, d2, d3, mean
    cdef Py_ssize_t i, n4 = n - n % 4
    for i in range(0, n4, 4):
        s0 += <double>x[i] - shift
        s1 += <double>x[i + 1] - shift
        s2 += <double>x[i + 2] - shift
        s3 += <double>x[i + 3] - shift
    for i in range(n4, n):
        s0 += <double>x[i] - shift
    mean = shift + ((s0 + s1) + (s2 + s3)) / n
    s0 = 0.0; s1 = 0.0; s2 = 0.0; s3 = 0.0
    for i in range(0, n4, 4):
        d0 = <double>x[i] - mean
        d1 = <double>x[i + 1] - mean
        d2 = <double>x[i + 2] - mean
        d3 = <double>x[i + 3] - mean
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
    for i in range(n4, n):
        d0 = <double>x[i] - mean
        s0 += d0 * d0
    m.count = <double>n
    m.mean = mean
    m.m2 = (s0 + s1) + (s2 + s3)
    return m


cdef inline double chunk_sumsq(const real* x, Py_ssize_t n) noexcept nogil:
    """Sum of squares of one chunk in float64 (RMSNorm, L2 norms)."""
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0, v
    cdef Py_ssize_t i, n4 = n - n % 4
    for i in range(0, n4, 4):
        s0 += <double>x[i] * <double>x[i]
        s1 += <double>x[i + 1] * <double>x[i + 1]
        s2 += <double>x[i + 2] * <double>x[i + 2]
        s3 += <double>x[i + 3] * <double>x[i + 3]
    for i in range(n4, n):
        s0 += <double>x[i] * <double>x[i]
    return (s0 + s1) + (s2 + s3)


cdef inline void moments_merge(Moments* acc, Moments b) noexcept nogil:
    """Chan et al.'s pairwise update: acc <- acc (+) b."""
    cdef double n, delta
    if b.count == 0:
        return
    if acc.count == 0:
        acc[0] = b
        return
    n = acc.count + b.count
    delta = b.mean - acc.mean
    acc.mean = acc.mean + delta * (b.count / n)
    acc.m2 = acc.m2 + b.m2 + delta * delta * (acc.count * (b.count / n))
    acc.count = n


cdef inline Moments moments_empty() noexcept nogil:
    cdef Moments m
    m.count = 0.0
    m.mean = 0.0
    m.m2 = 0.0
    return m


cdef inline Moments group_moments(const real* x, Py_ssize_t n) noexcept nogil:
    """Moments of a contiguous group: CHUNK pieces merged in order."""
    cdef Moments acc = moments_empty()
    cdef Py_ssize_t start = 0
    while start < n:
        moments_merge(&acc, chunk_moments(x + start, min(<Py_ssize_t>CHUNK, n - start)))
        start += CHUNK
    return acc


cdef inline double moments_var(Moments m) noexcept nogil:
    """Population variance, clamped at 0 (NaN passes through)."""
    cdef double v = m.m2 / m.count
    return 0.0 if v < 0.0 else v


cdef inline Py_ssize_t n_chunks(Py_ssize_t n) noexcept nogil:
    return (n + CHUNK - 1) // CHUNK


cdef inline double activate(double v, int act) noexcept nogil:
    # NaN must stay NaN: test "v < 0", never "v > 0"
    if act == ACT_RELU:
        return 0.0 if v < 0.0 else v
    if act == ACT_SILU:
        return v / (1.0 + exp(-v))
    if act == ACT_GELU:
        return 0.5 * v * (1.0 + erf(v * 0.7071067811865476))
    if act == ACT_SIGMOID:
        return 1.0 / (1.0 + exp(-v))
    return v


cdef inline int team_size(Py_ssize_t work, int n_threads) noexcept nogil:
    """Threads worth waking for `work` elements (results never depend on it)."""
    return 1 if work < PARALLEL_MIN else n_threads
