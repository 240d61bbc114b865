# float16 / bfloat16 storage for the kernels: declarations of half.h (the
# vectorized conversions) and the block helpers the kernels share.
#
# A half-precision tensor reaches a kernel as its raw 16-bit words (numpy's
# `x.view(np.uint16)`: bfloat16 has no buffer format) plus `kind`, HALF_F16 or
# HALF_BF16. The kernels convert CHUNK-sized blocks to float32 in a stack
# buffer, run the float32 statistics and epilogue code of moments.pxd on it
# (float32 blocks into float64 statistics, exactly as for float32 input) and
# round the result back: half precision is storage, never arithmetic.

cdef extern from "half.h" nogil:
    enum:
        HALF_F16 "NRT_F16"
        HALF_BF16 "NRT_BF16"
    void half_load "nrt_half_load"(int kind, const unsigned short* src, float* dst,
                                   Py_ssize_t n) noexcept
    void half_store "nrt_half_store"(int kind, const float* src, unsigned short* dst,
                                     Py_ssize_t n) noexcept
    void half_add "nrt_half_add"(int kind, const unsigned short* a, const unsigned short* b,
                                 unsigned short* sum, float* dst, Py_ssize_t n) noexcept
    void half_load_portable "nrt_half_load_portable"(int kind, const unsigned short* src, float* dst,
                                                     Py_ssize_t n) noexcept
    void half_store_portable "nrt_half_store_portable"(int kind, const float* src, unsigned short* dst,
                                                       Py_ssize_t n) noexcept
    const char* half_isa "nrt_half_isa"() noexcept

ctypedef unsigned short half_t    # the 16 bits of one float16 or bfloat16
