# float16 / bfloat16 storage for the kernels: declarations of half.h (the
# vectorized conversions) and the element type every statistics kernel is
# written over.
#
# A half-precision tensor reaches a kernel as its raw 16-bit words (numpy's
# `x.view(np.uint16)`: bfloat16 has no buffer format); the kernel casts the
# pointer to f16_t* or bf16_t* and calls the one driver, specialized by
# Cython for each `elem`. Half precision is storage, never arithmetic: a
# block of LANES or OUT_BLOCK elements is converted to float32 (as_f32) right
# where the float32 code reads it, computed exactly as float32 input would
# be (float32 blocks into float64 statistics) and rounded back (flush_f32,
# nearest even) where it is written.

cdef extern from "half.h" nogil:
    enum:
        HALF_F16 "NRT_F16"
        HALF_BF16 "NRT_BF16"
    ctypedef struct f16_t "nrt_f16":
        unsigned short bits
    ctypedef struct bf16_t "nrt_bf16":
        unsigned short bits
    void half_load "nrt_half_load"(int kind, const unsigned short* src, float* dst,
                                   Py_ssize_t n) noexcept
    void half_store "nrt_half_store"(int kind, const float* src, unsigned short* dst,
                                     Py_ssize_t n) noexcept
    void half_load_portable "nrt_half_load_portable"(int kind, const unsigned short* src, float* dst,
                                                     Py_ssize_t n) noexcept
    void half_store_portable "nrt_half_store_portable"(int kind, const float* src, unsigned short* dst,
                                                       Py_ssize_t n) noexcept
    float f16_to_f32 "nrt_f16_to_f32_scalar"(unsigned short h) noexcept
    float bf16_to_f32 "nrt_bf16_to_f32_scalar"(unsigned short h) noexcept
    unsigned short f32_to_f16 "nrt_f32_to_f16_scalar"(float f) noexcept
    unsigned short f32_to_bf16 "nrt_f32_to_bf16_scalar"(float f) noexcept
    const char* half_isa "nrt_half_isa"() noexcept
    # bfloat16 rounding by a named path (0 portable, 1 integer vectors, 2 vcvtneps2bf16): -1 if unavailable
    int bf16_store_path "nrt_bf16_store_path"(int path, const float* src, unsigned short* dst,
                                               Py_ssize_t n) noexcept
    bint bf16_instructions_available "nrt_bf16_ne_available"() noexcept
    const char* bf16_store_name "nrt_bf16_store_name"() noexcept

ctypedef unsigned short half_t    # the 16 bits of one float16 or bfloat16

# what a kernel stores: float64 computes in float64; float32, float16 and
# bfloat16 all compute in float32 (statistics in float64)
ctypedef fused elem:
    float
    double
    f16_t
    bf16_t


cdef extern from "norm_vec.h" nogil:
    enum:
        HALF_F32 "NRT_F32"     # float32 storage, for norm_vec.h's `kind`


cdef inline int storage_kind(const elem* x) noexcept nogil:
    """norm_vec.h's `kind` of x's storage type (-1: float64, which it does not cover)."""
    if elem is f16_t:
        return HALF_F16
    elif elem is bf16_t:
        return HALF_BF16
    elif elem is float:
        return HALF_F32
    else:
        return -1


cdef inline const float* as_f32(const elem* x, float* buf, Py_ssize_t n) noexcept nogil:
    """x[0:n] as float32: x itself for float32 storage, else converted into buf
    (half.h's vector converts). Never called for float64."""
    if elem is f16_t:
        half_load(HALF_F16, <const unsigned short*>x, buf, n)
        return buf
    elif elem is bf16_t:
        half_load(HALF_BF16, <const unsigned short*>x, buf, n)
        return buf
    else:
        return <const float*>x


cdef inline float* out_f32(elem* y, float* buf) noexcept nogil:
    """Where to compute float32 results bound for y: y itself for float32
    storage, else buf (then flush_f32 rounds buf into y)."""
    if elem is f16_t or elem is bf16_t:
        return buf
    else:
        return <float*>y


cdef inline void flush_f32(const float* buf, elem* y, Py_ssize_t n) noexcept nogil:
    """y[0:n] = buf rounded to y's half type (nothing to do for float32)."""
    if elem is f16_t:
        half_store(HALF_F16, buf, <unsigned short*>y, n)
    elif elem is bf16_t:
        half_store(HALF_BF16, buf, <unsigned short*>y, n)


cdef inline double value(elem v) noexcept nogil:
    """One element as float64 (exact for every storage type)."""
    if elem is f16_t:
        return f16_to_f32(v.bits)
    elif elem is bf16_t:
        return bf16_to_f32(v.bits)
    else:
        return v


cdef inline void put(elem* y, double v) noexcept nogil:
    """y[0] = v in y's type (float16/bfloat16 through float32: the rounding
    the vector path gives a float32 result)."""
    if elem is f16_t:
        y[0].bits = f32_to_f16(<float>v)
    elif elem is bf16_t:
        y[0].bits = f32_to_bf16(<float>v)
    elif elem is float:
        y[0] = <float>v
    else:
        y[0] = v


cdef inline const float* as_f32_padded(const elem* x, float* buf, Py_ssize_t m,
                                       Py_ssize_t lanes) noexcept nogil:
    """x[0:m] as float32 in buf[0:m], buf[m:lanes] = 0: a short tail computed as
    one whole block of `lanes` (callers mask or discard the padding)."""
    cdef Py_ssize_t j
    if elem is f16_t:
        half_load(HALF_F16, <const unsigned short*>x, buf, m)
    elif elem is bf16_t:
        half_load(HALF_BF16, <const unsigned short*>x, buf, m)
    else:
        for j in range(m):
            buf[j] = <float>x[j]
    for j in range(m, lanes):
        buf[j] = 0.0
    return buf


cdef inline void store_f32(const float* buf, elem* y, Py_ssize_t m) noexcept nogil:
    """y[0:m] = buf[0:m] in y's type (flush_f32 for halves, a copy for float32)."""
    cdef Py_ssize_t j
    if elem is f16_t or elem is bf16_t:
        flush_f32(buf, y, m)
    else:
        for j in range(m):
            y[j] = buf[j]
