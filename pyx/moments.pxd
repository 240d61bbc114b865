# Shared nogil building blocks of every statistics kernel: chunked moments,
# Chan merges and the activation epilogue. Inline, so each kernel family
# compiles them into its own loops.
#
# Determinism: a group is always cut into the same CHUNK-sized pieces and the
# pieces are always merged in the same order, whichever thread computed them,
# so results are bitwise identical for any thread count.

from libc.math cimport sqrt, exp, expm1, erf, tanh, fabs, fabsf, copysignf
from libc.stdlib cimport malloc

from half cimport (elem, f16_t, bf16_t, as_f32, as_f32_padded, out_f32, flush_f32, store_f32, value,
                   storage_kind)

cdef extern from "norm_vec.h" nogil:
    # AVX-512 forms of the loops below for float32 / half storage, the same
    # bits; each returns 0 when not compiled in (or not covered): then the
    # Cython loop runs
    bint vec_sums_dev "nrt_vec_sums_dev"(int kind, const void* x, Py_ssize_t n, float shift,
                                         double* s1, double* s2) noexcept
    bint vec_sum_sq_dev "nrt_vec_sum_sq_dev"(int kind, const void* x, Py_ssize_t n, float mh, float ml,
                                             double* s) noexcept
    bint vec_head "nrt_vec_head"(int kind, const void* x, Py_ssize_t count, float* dst) noexcept
    bint vec_affine "nrt_vec_affine"(int kind, int act, const void* x, void* y, Py_ssize_t n, float mh,
                                     float a, float b) noexcept
    bint vec_layer_norm_out "nrt_vec_layer_norm_out"(int kind, const void* x, void* y, Py_ssize_t n,
                                                     const float* sc, const float* bi, float mh, float ml,
                                                     float fr) noexcept
    bint vec_rms_norm_out "nrt_vec_rms_norm_out"(int kind, const void* x, void* y, Py_ssize_t n,
                                                 const float* sc, float k, float fr) noexcept
    bint vec_add "nrt_vec_add"(int kind, const void* x, const void* r, void* h, Py_ssize_t n) noexcept
    bint vec_activate "nrt_vec_activate"(float* y, Py_ssize_t n, int act) noexcept

cdef extern from "fused_ops.h":
    # fused multiply-add where the ISA has FMA, multiply then add below it
    # (fmaf would be a software-emulated libm call there: see the header)
    float mul_add "nrt_mul_add"(float a, float b, float c) noexcept nogil
    # x * x - xh exactly (the rounding error of the square xh = x * x)
    float square_err "nrt_square_err"(float x, float xh) noexcept nogil

ctypedef fused real:
    float
    double

cdef enum:
    # elements per statistics chunk: small enough that its second pass hits L1
    CHUNK = 2048

cdef enum:
    ACT_NONE = 0
    ACT_RELU = 1
    ACT_SILU = 2
    ACT_GELU = 3
    ACT_SIGMOID = 4
    ACT_RELU6 = 5        # min(max(v, 0), 6): torch's ReLU6 (ONNX Clip(0, 6))
    ACT_HARDSIGMOID = 6  # min(max(v / 6 + 1/2, 0), 1): torch's hardsigmoid (ONNX HardSigmoid(1/6, 1/2))
    ACT_HARDSWISH = 7    # v * hardsigmoid(v): ONNX HardSwish
    ACT_GELU_TANH = 8    # GELU's tanh approximation (GPT-2's, BLOOM's gelu_new)
    ACT_ELU = 9          # v if v >= 0 else e**v - 1: ELU with alpha 1 (torch's nn.ELU default)

cdef struct Moments:
    double count
    double mean
    double m2   # sum of squared deviations from mean


cdef enum:
    # Independent accumulator lanes, enough to fill several vector registers
    # so the additions do not wait on each other's latency. float32 partial
    # sums run over blocks of BLOCK elements (8 values per lane, exact to a few
    # ulps) before they meet the float64 lanes.
    LANES = 32      # lane_total is written for exactly 32
    BLOCK = 256


cdef inline double lane_total(double* acc) noexcept nogil:
    """Sum of the 32 float64 lanes in a fixed pairwise order (overwrites acc).

    Constant loop bounds let the compiler keep every step in vector registers.
    """
    cdef Py_ssize_t j
    for j in range(16):
        acc[j] = acc[j] + acc[j + 16]
    for j in range(8):
        acc[j] = acc[j] + acc[j + 8]
    for j in range(4):
        acc[j] = acc[j] + acc[j + 4]
    return (acc[0] + acc[2]) + (acc[1] + acc[3])


cdef inline double sum_sq_dev(const elem* x, Py_ssize_t n, double mean) noexcept nogil:
    """sum((x - mean)^2) with float64 lanes (float32 and half storage: the mean
    split in two floats, float32 blocks of LANES converted as they are read).

    Independent lanes in a fixed order let the compiler vectorize without
    reassociating anything, so the result never depends on the code path.
    """
    cdef double acc[LANES]
    cdef float blk[LANES]
    cdef float cvt[LANES]
    cdef const float* p
    cdef float mh = <float>mean
    cdef float ml = <float>(mean - <double>mh)
    cdef float fd
    cdef double d, s
    cdef Py_ssize_t i = 0, j, k
    if elem is not double:
        if vec_sum_sq_dev(storage_kind(x), x, n, mh, ml, &s):
            return s
    for j in range(LANES):
        acc[j] = 0.0
    if elem is double:
        while i + LANES <= n:
            for j in range(LANES):
                d = x[i + j] - mean
                acc[j] += d * d
            i += LANES
    else:
        while i + BLOCK <= n:
            for j in range(LANES):
                blk[j] = 0.0
            for k in range(BLOCK // LANES):
                p = as_f32(x + i + k * LANES, cvt, LANES)
                for j in range(LANES):
                    fd = (p[j] - mh) - ml
                    blk[j] = mul_add(fd, fd, blk[j])
            for j in range(LANES):
                acc[j] += blk[j]
            i += BLOCK
        for j in range(LANES):
            blk[j] = 0.0
        while i + LANES <= n:
            p = as_f32(x + i, cvt, LANES)
            for j in range(LANES):
                fd = (p[j] - mh) - ml
                blk[j] = mul_add(fd, fd, blk[j])
            i += LANES
        if i < n:
            # the tail as one masked block (a scalar loop would cost as much as the chunk)
            p = as_f32_padded(x + i, cvt, n - i, LANES)
            for j in range(LANES):
                fd = ((p[j] - mh) - ml) if j < n - i else <float>0.0
                blk[j] = mul_add(fd, fd, blk[j])
            i = n
        for j in range(LANES):
            acc[j] += blk[j]
    while i < n:
        d = value(x[i]) - mean
        acc[0] += d * d
        i += 1
    return lane_total(acc)


cdef struct Sums:
    double s1   # sum(x - shift)
    double s2   # sum((x - shift)^2)


cdef inline Sums sums_dev(const elem* x, Py_ssize_t n, double shift) noexcept nogil:
    """Both shifted sums in one pass (float32 and half storage: float32 lanes
    per block, each LANES block converted as it is read: one read of x)."""
    cdef double a1[LANES]
    cdef double a2[LANES]
    cdef float b1[LANES]
    cdef float b2[LANES]
    cdef float cvt[LANES]
    cdef const float* p
    cdef float fshift = <float>shift
    cdef float fd
    cdef double d
    cdef Py_ssize_t i = 0, j, k
    cdef Sums r
    if elem is not double:
        if vec_sums_dev(storage_kind(x), x, n, fshift, &r.s1, &r.s2):
            return r
    for j in range(LANES):
        a1[j] = 0.0
        a2[j] = 0.0
    if elem is double:
        while i + LANES <= n:
            for j in range(LANES):
                d = x[i + j] - shift
                a1[j] += d
                a2[j] += d * d
            i += LANES
    else:
        while i + BLOCK <= n:
            for j in range(LANES):
                b1[j] = 0.0
                b2[j] = 0.0
            for k in range(BLOCK // LANES):
                p = as_f32(x + i + k * LANES, cvt, LANES)
                for j in range(LANES):
                    fd = p[j] - fshift
                    b1[j] += fd
                    b2[j] = mul_add(fd, fd, b2[j])
            for j in range(LANES):
                a1[j] += b1[j]
                a2[j] += b2[j]
            i += BLOCK
        for j in range(LANES):
            b1[j] = 0.0
            b2[j] = 0.0
        while i + LANES <= n:
            p = as_f32(x + i, cvt, LANES)
            for j in range(LANES):
                fd = p[j] - fshift
                b1[j] += fd
                b2[j] = mul_add(fd, fd, b2[j])
            i += LANES
        if i < n:
            p = as_f32_padded(x + i, cvt, n - i, LANES)
            for j in range(LANES):
                fd = (p[j] - fshift) if j < n - i else <float>0.0
                b1[j] += fd
                b2[j] = mul_add(fd, fd, b2[j])
            i = n
        for j in range(LANES):
            a1[j] += b1[j]
            a2[j] += b2[j]
    while i < n:
        d = value(x[i]) - shift
        a1[0] += d
        a2[0] += d * d
        i += 1
    r.s1 = lane_total(a1)
    r.s2 = lane_total(a2)
    return r


# float32 block sums of squares below 2^-60 (8.7e-19) may hide squares that underflowed
# (|x - shift| < 1e-19); above FLT_MAX they overflowed (|x| > 1e19). Either way
# the chunk is summed again in float64 (chunk_moments_wide); a constant chunk
# takes that path too and gives the same result there.


cdef inline Moments chunk_moments_wide(const elem* x, Py_ssize_t n) noexcept nogil:
    """chunk_moments computed in float64 throughout (any finite x: no square
    overflows or underflows in float64 when x is float32 or half)."""
    cdef double a1[LANES]
    cdef double a2[LANES]
    cdef double shift = 0.0, d, s1, s2, dm
    cdef Py_ssize_t i = 0, j
    cdef Moments m
    for i in range(min(n, <Py_ssize_t>LANES)):
        shift += value(x[i])
    shift = shift / min(n, <Py_ssize_t>LANES)
    for j in range(LANES):
        a1[j] = 0.0
        a2[j] = 0.0
    i = 0
    while i + LANES <= n:
        for j in range(LANES):
            d = value(x[i + j]) - shift
            a1[j] += d
            a2[j] += d * d
        i += LANES
    while i < n:
        d = value(x[i]) - shift
        a1[0] += d
        a2[0] += d * d
        i += 1
    s1 = lane_total(a1)
    s2 = lane_total(a2)
    dm = s1 / n
    m.count = <double>n
    m.mean = shift + dm
    if 2.0 * dm * dm * n <= s2:
        m.m2 = s2 - s1 * dm
        if m.m2 < 0.0:
            m.m2 = 0.0
        return m
    # second pass about the mean
    for j in range(LANES):
        a2[j] = 0.0
    i = 0
    while i + LANES <= n:
        for j in range(LANES):
            d = value(x[i + j]) - m.mean
            a2[j] += d * d
        i += LANES
    while i < n:
        d = value(x[i]) - m.mean
        a2[0] += d * d
        i += 1
    m.m2 = lane_total(a2)
    return m


cdef inline Moments chunk_moments(const elem* x, Py_ssize_t n) noexcept nogil:
    """Moments of one chunk, float64 accumulators, no cancellation.

    One pass sums x - shift and its square, the shift being the mean of the
    chunk's first LANES elements, so it sits within a fraction of a standard
    deviation of the mean and s2 - s1^2/n loses at most one bit. When it does
    not (an outlier among the first elements, |mean - shift| above sigma),
    a second pass over the L1-resident chunk computes m2 about the mean
    exactly. A constant chunk gets a mean of exactly its value and m2 = 0.
    In three steps (chunk_shift, sums_dev, chunk_finish) that a caller with
    several short rows runs row by row each, so the rows' dependent chains
    (a sum, divisions) overlap.
    """
    cdef double shift = chunk_shift(x, n)
    return chunk_finish(x, n, shift, sums_dev(x, n, shift))


cdef inline double chunk_shift(const elem* x, Py_ssize_t n) noexcept nogil:
    """chunk_moments' shift: the mean of the first min(n, LANES) elements (for
    float32 and half storage rounded to float32, so x - shift is exact near it)."""
    cdef Py_ssize_t i
    cdef double shift = 0.0
    cdef double sample[LANES]
    cdef float head[LANES]
    if n >= LANES:
        # a pairwise tree, not a serial chain: this runs once per chunk
        if elem is not double and vec_head(storage_kind(x), x, LANES, head):
            for i in range(LANES):
                sample[i] = head[i]
        else:
            for i in range(LANES):
                sample[i] = value(x[i])
        shift = lane_total(sample) / LANES
    else:
        for i in range(n):
            shift += value(x[i])
        shift = shift / n
    if elem is double:
        return shift
    else:
        return <float>shift   # representable, so x - shift is exact near it


cdef inline Moments chunk_finish(const elem* x, Py_ssize_t n, double shift, Sums s) noexcept nogil:
    """chunk_moments from the chunk's shift and sums_dev(x, n, shift)."""
    cdef Moments m
    cdef double d
    if elem is not double:
        # (NaN input also lands here, and stays NaN)
        if not (s.s2 >= 8.673617379884035e-19 and s.s2 < 1e300):
            return chunk_moments_wide(x, n)
    d = s.s1 / n
    m.count = <double>n
    m.mean = shift + d
    # s2 / n = var + d^2, so d^2 <= var (s2 - s1 d then loses at most one bit
    # of s2) reads d^2 <= s2 / (2 n)
    if 2.0 * d * d * n <= s.s2:
        m.m2 = s.s2 - s.s1 * d
        if m.m2 < 0.0:
            m.m2 = 0.0
    else:
        m.m2 = sum_sq_dev(x, n, m.mean)
    return m


cdef inline double chunk_sumsq(const elem* x, Py_ssize_t n) noexcept nogil:
    """Sum of squares of one chunk in float64 (RMSNorm, L2 norms)."""
    cdef double s = sum_sq_dev(x, n, 0.0)
    cdef double acc[LANES]
    cdef double d
    cdef Py_ssize_t i = 0, j
    if elem is not double:
        if not (s >= 8.673617379884035e-19 and s < 1e300):
            # float32 squares over- or underflowed (or an all-zero chunk): again in float64
            for j in range(LANES):
                acc[j] = 0.0
            while i + LANES <= n:
                for j in range(LANES):
                    d = value(x[i + j])
                    acc[j] += d * d
                i += LANES
            while i < n:
                d = value(x[i])
                acc[0] += d * d
                i += 1
            s = lane_total(acc)
    return s


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


cdef inline Moments group_moments(const elem* x, Py_ssize_t n) noexcept nogil:
    """Moments of a contiguous group: CHUNK pieces merged in order."""
    cdef Moments acc = moments_empty()
    cdef Py_ssize_t start = 0
    while start < n:
        moments_merge(&acc, chunk_moments(x + start, min(<Py_ssize_t>CHUNK, n - start)))
        start += CHUNK
    return acc


cdef inline Moments* parts_buffer(Py_ssize_t items, Py_ssize_t rows, double** first,
                                  double** second) noexcept nogil:
    """One malloc for the chunked path of a statistics kernel: `items` chunk
    Moments, then two float64 values per row (first, second); NULL when out of
    memory. free() the returned pointer."""
    cdef Moments* parts = <Moments*>malloc(items * sizeof(Moments) + 2 * rows * sizeof(double))
    if parts != NULL:
        first[0] = <double*>(parts + items)
        second[0] = first[0] + rows
    return parts


cdef inline double moments_var(Moments m) noexcept nogil:
    """Population variance, clamped at 0 (NaN passes through)."""
    cdef double v = m.m2 / m.count
    return 0.0 if v < 0.0 else v


cdef inline Py_ssize_t n_chunks(Py_ssize_t n) noexcept nogil:
    return (n + CHUNK - 1) // CHUNK


cdef inline double hard_sigmoid_d(double v) noexcept nogil:
    cdef double h = v * (1.0 / 6.0) + 0.5
    h = 0.0 if h < 0.0 else h
    return 1.0 if h > 1.0 else h


cdef inline float hard_sigmoid_f(float v) noexcept nogil:
    # x * alpha + beta rounded twice (the build has -ffp-contract=off), as
    # numpy's HardSigmoid computes it; NaN stays NaN (only "<" / ">" tests)
    cdef float h = v * <float>(1.0 / 6.0)
    h = h + <float>0.5
    h = <float>0.0 if h < <float>0.0 else h
    return <float>1.0 if h > <float>1.0 else h


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
    if act == ACT_RELU6:
        v = 0.0 if v < 0.0 else v
        return 6.0 if v > 6.0 else v
    if act == ACT_HARDSIGMOID:
        return hard_sigmoid_d(v)
    if act == ACT_HARDSWISH:
        return v * hard_sigmoid_d(v)
    if act == ACT_GELU_TANH:
        return 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))
    if act == ACT_ELU:
        return expm1(v) if v < 0.0 else v
    return v



# ---- float32 activations the compiler can vectorize ------------------------
# libm's expf/erff are scalar calls; these are polynomial, branch-free
# (comparisons become blends) and accurate to a few ulp, so an activation
# epilogue costs about as much as the normalization itself. NaN stays NaN.
# Every constant is a float: one double literal would turn the loop into
# float64 arithmetic at half the vector width.


cdef union FloatBits:
    float f
    int i


cdef inline float exp_f(float x) noexcept nogil:
    """e**x for float32 (Cephes' expf: range reduction by ln2, degree-6 polynomial)."""
    cdef float xc = x
    cdef float n, r, z, p
    cdef FloatBits b
    if xc > <float>88.3762626647949:
        xc = <float>88.3762626647949
    if xc < <float>-87.3365447504019:
        xc = <float>-87.3365447504019
    # n = round(x / ln2) by the 1.5 * 2**23 shifter: plain adds, which every
    # level vectorizes (floorf needs SSE4.1's roundps, else a libm call)
    n = (xc * <float>1.44269504088896341 + <float>12582912.0) - <float>12582912.0
    r = xc - n * <float>0.693359375
    r = r + n * <float>2.12194440e-4
    z = r * r
    p = <float>1.9875691500e-4
    p = p * r + <float>1.3981999507e-3
    p = p * r + <float>8.3334519073e-3
    p = p * r + <float>4.1665795894e-2
    p = p * r + <float>1.6666665459e-1
    p = p * r + <float>5.0000001201e-1
    p = p * z + r + <float>1.0
    b.i = (<int>n + 127) << 23
    p = p * b.f
    return <float>0.0 if x < <float>-87.3365447504019 else p   # exp(-inf) = 0; NaN stays NaN


cdef inline float half_erfc_core(float t, float m, float l, float lc) noexcept nogil:
    """erfc(z) / 2 for z >= 0 with a relative error below ~2e-7, given
    t = 1 / (1 + 0.3 z) and -z^2 = m + l * lc exactly (m the rounded square,
    l its rounding error from square_err): the tails keep their digits.

    erfc(z) = t R(t) exp(-z^2): R a degree-8 minimax fit of erfcx(z) / t over
    z in [0, 9.4] (coefficients halved, which is exact). exp runs on m with
    the square's low part added to the reduced argument, so z^2 ~ 80 costs no
    digits. Returns 0 once the result would leave the normal range (z above
    ~9.1, erfc < 1e-37). A NaN m gives some finite value: callers keep NaN
    through their own final select.
    """
    cdef float t2 = t * t
    cdef float t4 = t2 * t2
    cdef float mc = m if m > <float>-83.0 else <float>-83.0
    cdef float fn, n, r, e, R
    cdef FloatBits b, q
    # Estrin's scheme: shorter dependency chains than Horner
    R = mul_add(mul_add(<float>-6.470330805e-02, t4,
                  mul_add(mul_add(<float>2.424759567e-01, t, <float>-2.554502487e-01), t2,
                       mul_add(<float>2.729919553e-01, t, <float>-4.665724561e-02))), t4,
             mul_add(mul_add(<float>1.071419269e-01, t, <float>7.426355779e-02), t2,
                  mul_add(<float>8.534233272e-02, t, <float>8.459506184e-02)))
    # exp(mc + l lc) = 2**n exp(r): n rounded by the 1.5 * 2**23 shifter, whose
    # low mantissa bits then hold n; ln2 in two parts (Cody-Waite; n ln2_hi is exact, so fused or not the same)
    fn = mul_add(mc, <float>1.44269504088896341, <float>12582912.0)
    n = fn - <float>12582912.0
    r = mul_add(n, <float>-0.693145752, mc)
    r = mul_add(n, <float>-1.42860677e-06, r)
    r = mul_add(l, lc, r)
    e = <float>1.383683761e-03       # minimax on |r| <= ln2 / 2, relative 2e-9
    e = mul_add(e, r, <float>8.374822326e-03)
    e = mul_add(e, r, <float>4.166822508e-02)
    e = mul_add(e, r, <float>1.666641980e-01)
    e = mul_add(e, r, <float>4.999999106e-01)
    e = mul_add(e, r, <float>1.0)
    e = mul_add(e, r, <float>1.0)
    # times 2**n by adding n to the exponent: (t R e) >= 2**-6 and n >= -120
    # keep the result normal
    b.f = fn
    q.f = (t * R) * e
    # (unsigned: wraps, never undefined, in lanes whose result is discarded)
    q.i = <int>(<unsigned int>q.i + ((<unsigned int>b.i - <unsigned int>0x4B400000) << 23))
    return <float>0.0 if m <= <float>-83.0 else q.f


cdef inline float erf_f(float x) noexcept nogil:
    """erf(x) for float32, relative error below ~2e-7 everywhere, branch-free.

    |x| < 0.875: x P(x^2), a degree-5 minimax fit (relative, so tiny x keep
    their digits); above: 1 - erfc(|x|) with the sign of x. NaN stays NaN.
    """
    cdef float a = fabsf(x)
    cdef float xh = x * x
    cdef float xl = square_err(x, xh)
    cdef float p = <float>-6.203258527e-04
    p = mul_add(p, xh, <float>5.032182205e-03)
    p = mul_add(p, xh, <float>-2.679146454e-02)
    p = mul_add(p, xh, <float>1.128245518e-01)
    p = mul_add(p, xh, <float>-3.761255145e-01)
    p = mul_add(p, xh, <float>1.128379107)
    cdef float t = <float>1.0 / mul_add(<float>0.3, a, <float>1.0)
    cdef float big = copysignf(mul_add(<float>-2.0, half_erfc_core(t, -xh, xl, <float>-1.0), <float>1.0), x)
    return big if a >= <float>0.875 else x * p     # NaN takes x * p


cdef inline float gelu_f(float v) noexcept nogil:
    """v Phi(v) = v erfc(-v / sqrt 2) / 2 for float32, relative error below
    ~3e-7 down to |result| ~ 1e-30 (0 below 1e-36), branch-free.

    The halved square v^2 / 2 is exact as (v*v)/2 plus the square_err remainder, and
    1/sqrt 2 folds into t's coefficient, so no rounded v / sqrt 2 moves the
    tail. gelu(-inf) = 0, gelu(inf) = inf, NaN stays NaN.
    """
    cdef float vh = v * v
    cdef float vl = square_err(v, vh)
    cdef float t = <float>1.0 / mul_add(<float>0.2121320367, fabsf(v), <float>1.0)
    cdef float q = half_erfc_core(t, <float>-0.5 * vh, vl, <float>-0.5)
    cdef float w = q if v < <float>0.0 else <float>1.0 - q   # NaN: w = 1 - q != 0
    return <float>0.0 if w == <float>0.0 else v * w     # -inf * 0 would be NaN


cdef inline float sigmoid_f(float x) noexcept nogil:
    """1 / (1 + e**-x) with one exp per element (exp_inf_f takes two): e = e**-|x| is in
    [0, 1], never overflows; x >= 0 gives 1 / (1 + e), x < 0 e / (1 + e): one division
    of a selected numerator (e * (1 / (1 + e)) would round once more: 2.7 ulp, not 2.3).
    Selects, no branch: the loop vectorizes. -inf -> 0, +inf -> 1, x < -87.3 -> 0
    (exp_f flushes), NaN stays NaN."""
    cdef float e = exp_f(-fabsf(x))
    cdef float num = e if x < <float>0.0 else <float>1.0
    return num / (<float>1.0 + e)


cdef inline float tanh_f(float x) noexcept nogil:
    """tanh for float32, branch-free (the loop vectorizes, unlike libm's tanhf): |x| < 0.625
    Cephes' odd polynomial x + x^3 P(x^2), else 1 - 2 / (e**(2|x|) + 1) with x's sign (exp_f
    saturates, so |x| > 44 gives exactly +-1). Within a few ulp of tanh; NaN stays NaN."""
    cdef float a = fabsf(x)
    cdef float z = x * x
    cdef float p = <float>-5.70498872745e-3
    p = p * z + <float>2.06390887954e-2
    p = p * z + <float>-5.37397155531e-2
    p = p * z + <float>1.33314422036e-1
    p = p * z + <float>-3.33332819422e-1
    p = p * z * x + x
    cdef float big = copysignf(<float>1.0 - <float>2.0 / (exp_f(a + a) + <float>1.0), x)
    return p if a < <float>0.625 else big


cdef inline float elu_f(float x) noexcept nogil:
    """ELU (alpha 1): x where x >= 0 (NaN and -0.0 pass), else e**x - 1, branch-free. On
    [-0.5, 0) e**x - 1 is its Taylor polynomial to x^8 (truncation < 2e-8 relative; exp_f - 1
    there would lose digits to cancellation near 0), below it exp_f(x) - 1 (exp_f saturates:
    -inf gives -1). Within a few ulp of expm1."""
    cdef float p = <float>(1.0 / 40320.0)
    p = p * x + <float>(1.0 / 5040.0)
    p = p * x + <float>(1.0 / 720.0)
    p = p * x + <float>(1.0 / 120.0)
    p = p * x + <float>(1.0 / 24.0)
    p = p * x + <float>(1.0 / 6.0)
    p = p * x + <float>0.5
    p = (p * x) * x + x
    cdef float far = exp_f(x) - <float>1.0
    cdef float neg = p if x > <float>-0.5 else far
    return neg if x < <float>0.0 else x


cdef inline float gelu_tanh_f(float x) noexcept nogil:
    """x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2 as x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)):
    the same function (1 + tanh(z) = 2 sigmoid(2z)), one exp and one division, within a few
    ulp of the float64 formula. x^3's term is folded: z2 = x (c1 + c2 x^2), c1 = 2 sqrt(2/pi),
    c2 = 0.044715 c1."""
    return x * sigmoid_f(x * (<float>1.5957691216057308 + <float>0.07135481627260025 * (x * x)))


cdef inline void activate_span(real* y, Py_ssize_t n, int act) noexcept nogil:
    """y[i] = act(y[i]) in place, one vectorizable loop per activation."""
    cdef Py_ssize_t i
    cdef float v
    if act == ACT_NONE:
        return
    if real is float:
        if act != ACT_GELU and act != ACT_SIGMOID and act != ACT_GELU_TANH and act != ACT_ELU \
                and vec_activate(y, n, act):
            return
        if act == ACT_RELU:
            for i in range(n):
                v = y[i]
                y[i] = <float>0.0 if v < <float>0.0 else v
        elif act == ACT_SILU:
            for i in range(n):
                v = y[i]
                y[i] = v / (<float>1.0 + exp_f(-v))
        elif act == ACT_GELU:
            for i in range(n):
                y[i] = gelu_f(y[i])
        elif act == ACT_SIGMOID:
            for i in range(n):
                y[i] = <float>1.0 / (<float>1.0 + exp_f(-y[i]))
        elif act == ACT_RELU6:
            for i in range(n):
                v = y[i]
                v = <float>0.0 if v < <float>0.0 else v
                y[i] = <float>6.0 if v > <float>6.0 else v
        elif act == ACT_HARDSIGMOID:
            for i in range(n):
                y[i] = hard_sigmoid_f(y[i])
        elif act == ACT_HARDSWISH:
            for i in range(n):
                v = y[i]
                y[i] = v * hard_sigmoid_f(v)
        elif act == ACT_GELU_TANH:
            for i in range(n):
                y[i] = gelu_tanh_f(y[i])
        elif act == ACT_ELU:
            for i in range(n):
                y[i] = elu_f(y[i])
    else:
        for i in range(n):
            y[i] = activate(y[i], act)


# ---- the affine output pass -------------------------------------------------

cdef inline void affine_span(const elem* x, elem* y, Py_ssize_t m, float mh, float fa, float fb,
                             int act) noexcept nogil:
    """m <= LANES elements of write_affine; with m == LANES, a constant, half
    conversions stay in vector registers."""
    cdef float buf[LANES]
    cdef const float* p
    cdef float* q
    cdef Py_ssize_t j
    if m < LANES:
        # a short run or tail: one whole block in buf (the padding is computed, not stored)
        p = as_f32_padded(x, buf, m, LANES)
        for j in range(LANES):
            buf[j] = mul_add(p[j] - mh, fa, fb)
        if act:
            activate_span(buf, LANES, act)
        store_f32(buf, y, m)
        return
    p = as_f32(x, buf, LANES)
    q = out_f32(y, buf)
    for j in range(LANES):
        q[j] = mul_add(p[j] - mh, fa, fb)
    if act:
        activate_span(q, LANES, act)
    flush_f32(q, y, LANES)


cdef inline void write_affine(const elem* x, elem* y, Py_ssize_t n, double mean, double a,
                              double b, int act) noexcept nogil:
    """y[i] = act((x[i] - mean) * a + b), a = inv_std * scale, b = bias.

    float32 and half storage: one subtraction and one multiply-add per element,
    (x - mean_hi) * a + (b - mean_lo * a), with the mean split in two floats:
    x - mean_hi is exact near the mean (Sterbenz), so large offsets cost no
    digits, and a constant group (mean_lo = 0) gives exactly b.
    """
    cdef Py_ssize_t i = 0
    cdef float mh = <float>mean
    cdef double ml = mean - <double>mh
    cdef float fa = <float>a
    cdef float fb = <float>(b - ml * a) if ml != 0.0 else <float>b   # (a may be inf: eps = var = 0)
    if elem is double:
        for i in range(n):
            y[i] = (x[i] - mean) * a + b
        activate_span(<double*>y, n, act)
        return
    if vec_affine(storage_kind(x), act, x, y, n, mh, fa, fb):
        return
    while i + LANES <= n:
        affine_span(x + i, y + i, LANES, mh, fa, fb, act)
        i += LANES
    if i < n:
        affine_span(x + i, y + i, n - i, mh, fa, fb, act)
