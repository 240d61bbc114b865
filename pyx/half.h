/* Half precision <-> float32 conversions for normrt's kernels.
 *
 * The kernels never compute in half precision: they convert a block of a
 * float16 / bfloat16 tensor to float32 in an L1-resident buffer, run the
 * float32 statistics and epilogue code on it, and convert the result back.
 * So these few loops are all that half precision costs, and they must be cheap.
 *
 * Which instructions: the vector width and float16 conversions are chosen at
 * COMPILE time from the compiler's predefined macros: a module compiled once
 * per x86-64 ISA level (x86-64, -v3, -v4) and dispatched at run time gets the
 * right path at each level with no code here knowing about it:
 *   float16 load   __AVX512F__: vcvtph2ps zmm    __F16C__: vcvtph2ps ymm
 *   float16 store  __AVX512F__: vcvtps2ph zmm    __F16C__: vcvtps2ph ymm
 *                  (round to nearest even, subnormals kept, NaN quieted)
 *   bf16 load      __AVX512F__ / __AVX2__: zero-extend and shift (exact)
 *   bf16 store     __AVX512F__: AVX-512 BF16's vcvtneps2bf16 when chosen at
 *                  run time (below), else integer round-to-nearest-even;
 *                  __AVX2__: integer round-to-nearest-even
 *   otherwise      the portable scalar code below, written branch-free so
 *                  the compiler can vectorize it with plain SSE2.
 * AVX-512 FP16 (__AVX512FP16__) adds half-precision arithmetic, which the
 * kernels do not want (statistics stay in float32/float64); its conversions
 * are the AVX512F ones above.
 *
 * bfloat16 stores, chosen at RUN time: no x86-64 level includes AVX-512 BF16
 * (Cooper Lake, Sapphire Rapids, Zen 4 have it; Skylake-SP, Ice Lake do not),
 * so the x86-64-v4 build carries both roundings and uses vcvtneps2bf16 (one
 * instruction for ~6 integer operations) where the CPU has it, the OS saves
 * the AVX-512 state and NORMRT_BF16_INSTRUCTIONS is not "0" (read once, when
 * the module loads: nrt_bf16_ne_on). The instruction is compiled with a
 * function-level target attribute (NRT_BF16_NE_TARGET), so the module itself
 * still runs on any AVX-512 CPU. vcvtneps2bf16 treats subnormal inputs as zero
 * and its NaN result is not guaranteed to be the integer path's quieted
 * payload, so a vector holding a subnormal or a NaN (one vfpclassps) takes the
 * integer rounding: the bits are those of ml_dtypes (and of the portable
 * code) on every path, which scripts/bf16_sweep.py checks for all 2^32 inputs.
 *
 * Every path gives the same bits for every non-NaN value (tests compare each
 * against numpy / ml_dtypes); a NaN stays a NaN (quieted, sign kept).
 */
#ifndef NORMRT_HALF_H
#define NORMRT_HALF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#if defined(__AVX512F__) || defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include "cpu/cpu_features.h"

enum { NRT_F16 = 0, NRT_BF16 = 1 };

/* The two storage types as distinct C types (a struct each, both 16 bits):
   Cython's fused types tell them apart, so one kernel source is specialized
   for float32, float16 and bfloat16 storage (see half.pxd). */
typedef struct { uint16_t bits; } nrt_f16;
typedef struct { uint16_t bits; } nrt_bf16;

static inline uint32_t nrt_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float nrt_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---- portable scalar conversions (also the tails of the vector loops) ---- */

static inline float nrt_f16_to_f32_scalar(uint16_t h) {
    /* Move exponent and mantissa into float32 position and rebias the
       exponent by 112; Inf/NaN get the rest of the bias (exponent 255); a
       subnormal half is renormalized by subtracting 2^-14 in float32, which is
       exact. */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t o = (uint32_t)(h & 0x7fffu) << 13;
    uint32_t e = o & 0x0f800000u;
    uint32_t normal = o + (112u << 23);
    uint32_t special = (o + (224u << 23)) | ((h & 0x3ffu) ? 0x00400000u : 0u);   /* quiet a NaN */
    float sub = nrt_bits_f32(o + (113u << 23)) - nrt_bits_f32(113u << 23);
    uint32_t r = e == 0x0f800000u ? special : (e == 0 ? nrt_f32_bits(sub) : normal);
    return nrt_bits_f32(r | sign);
}

static inline uint16_t nrt_f32_to_f16_scalar(float f) {
    uint32_t u = nrt_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    /* normal range: add the rounding bias (half an ulp, minus one unless the
       kept lsb is odd: ties to even); a carry may reach the exponent, up to Inf */
    uint32_t normal = (a - (112u << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    /* below 2^-14: adding 0.5f lines the half's subnormal lsb up with the
       float32 lsb, and the hardware add rounds to nearest even */
    uint32_t sub = nrt_f32_bits(nrt_bits_f32(a) + 0.5f) - 0x3f000000u;
    uint32_t big = a > 0x7f800000u ? (0x7e00u | ((a >> 13) & 0x3ffu)) : 0x7c00u;   /* NaN / overflow */
    uint32_t r = a >= 0x47800000u ? big : (a < 0x38800000u ? sub : normal);
    return (uint16_t)(r | sign);
}

static inline float nrt_bf16_to_f32_scalar(uint16_t h) {
    return nrt_bits_f32((uint32_t)h << 16);
}

static inline uint16_t nrt_f32_to_bf16_scalar(float f) {
    uint32_t u = nrt_f32_bits(f);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;   /* round to nearest even */
    uint32_t nan = (u >> 16) | 0x40u;                             /* quiet, sign and payload kept */
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

static inline void nrt_half_load_portable(int kind, const uint16_t* src, float* dst, ptrdiff_t n) {
    ptrdiff_t i;
    if (kind == NRT_BF16) {
        for (i = 0; i < n; i++) dst[i] = nrt_bf16_to_f32_scalar(src[i]);
    } else {
        for (i = 0; i < n; i++) dst[i] = nrt_f16_to_f32_scalar(src[i]);
    }
}

static inline void nrt_half_store_portable(int kind, const float* src, uint16_t* dst, ptrdiff_t n) {
    ptrdiff_t i;
    if (kind == NRT_BF16) {
        for (i = 0; i < n; i++) dst[i] = nrt_f32_to_bf16_scalar(src[i]);
    } else {
        for (i = 0; i < n; i++) dst[i] = nrt_f32_to_f16_scalar(src[i]);
    }
}

/* ---- vector paths ---- */

#if defined(__AVX512F__)
static inline __m512i nrt_bf16_round16(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    return _mm512_mask_blend_epi32(nan, r, q);
}
#elif defined(__AVX2__)
static inline __m256i nrt_bf16_round8(__m256 v) {
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(r, q, nan);
}
#endif

/* dst[i] = float(src[i]) for a float16 (kind NRT_F16) or bfloat16 (NRT_BF16) src */
static inline void nrt_half_load(int kind, const uint16_t* src, float* dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
    if (kind == NRT_BF16) {
#if defined(__AVX512F__)
        for (; i + 16 <= n; i += 16) {
            __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(src + i)));
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
        }
#elif defined(__AVX2__)
        for (; i + 8 <= n; i += 8) {
            __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(src + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
#endif
        for (; i < n; i++) dst[i] = nrt_bf16_to_f32_scalar(src[i]);
        return;
    }
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + i))));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
#endif
    for (; i < n; i++) dst[i] = nrt_f16_to_f32_scalar(src[i]);
}

/* ---- bfloat16 stores: vcvtneps2bf16 or the integer rounding, chosen at run time ---- */

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define NRT_HAVE_BF16_NE 1
/* Functions holding vcvtneps2bf16: compiled for AVX-512 BF16 on top of the
   module's level, called only when nrt_bf16_ne_on says the CPU has it. */
#define NRT_BF16_NE_TARGET __attribute__((target("avx512bf16")))
#else
#define NRT_HAVE_BF16_NE 0
#endif

#define NRT_BF16_ENV "NORMRT_BF16_INSTRUCTIONS"

/* 1 when this CPU runs vcvtneps2bf16 (cpuid avx512_bf16 with the OS saving the
   AVX-512 state) and this build can use it, whatever the environment says */
static inline int nrt_bf16_ne_available(void) {
#if NRT_HAVE_BF16_NE
    unsigned char has[NRT_CPU_NFEATURES];
    int i;
    nrt_cpu_detect(has);
    for (i = 0; i < NRT_CPU_NFEATURES; i++)
        if (strcmp(nrt_cpu_feature_name(i), "avx512_bf16") == 0)
            return has[i];
#endif
    return 0;
}

/* Whether this module's bfloat16 stores use vcvtneps2bf16: set once when the
   module is loaded (a constructor, before any kernel runs or thread starts),
   from the CPU and NORMRT_BF16_INSTRUCTIONS ("0" forces the integer rounding;
   normrt._kernels refuses other values than "0" and "1" before loading). */
static int nrt_bf16_ne_on = 0;

__attribute__((constructor)) static void nrt_bf16_ne_init(void) {
    const char* env = getenv(NRT_BF16_ENV);
    nrt_bf16_ne_on = nrt_bf16_ne_available() && !(env && strcmp(env, "0") == 0);
}

#if NRT_HAVE_BF16_NE
/* 16 floats rounded to bfloat16 by vcvtneps2bf16, unless a lane is a NaN or a
   subnormal (vfpclassps: QNaN 0x01 | denormal 0x20 | SNaN 0x80), where the
   instruction's DAZ / NaN results could differ: then the integer rounding */
static inline NRT_BF16_NE_TARGET __m256i nrt_bf16_pack_ne16(__m512 v) {
    if (_mm512_fpclass_ps_mask(v, 0x01 | 0x20 | 0x80))
        return _mm512_cvtepi32_epi16(nrt_bf16_round16(v));
    return (__m256i)_mm512_cvtneps_pbh(v);
}

static NRT_BF16_NE_TARGET void nrt_bf16_store_ne(const float* src, uint16_t* dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i*)(dst + i), nrt_bf16_pack_ne16(_mm512_loadu_ps(src + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm256_mask_storeu_epi16(dst + i, m, nrt_bf16_pack_ne16(_mm512_maskz_loadu_ps(m, src + i)));
    }
}
#endif

/* the integer round-to-nearest-even at this level's vector width */
static inline void nrt_bf16_store_int(const float* src, uint16_t* dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i*)(dst + i),
                            _mm512_cvtepi32_epi16(nrt_bf16_round16(_mm512_loadu_ps(src + i))));
#elif defined(__AVX2__)
    for (; i + 16 <= n; i += 16) {
        __m256i lo = nrt_bf16_round8(_mm256_loadu_ps(src + i));
        __m256i hi = nrt_bf16_round8(_mm256_loadu_ps(src + i + 8));
        /* packus works per 128-bit lane: restore the element order */
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
        _mm256_storeu_si256((__m256i*)(dst + i), p);
    }
#endif
    for (; i < n; i++) dst[i] = nrt_f32_to_bf16_scalar(src[i]);
}

/* dst[i] = src[i] rounded to float16 / bfloat16 (nearest even) */
static inline void nrt_half_store(int kind, const float* src, uint16_t* dst, ptrdiff_t n) {
    ptrdiff_t i = 0;
    if (kind == NRT_BF16) {
#if NRT_HAVE_BF16_NE
        if (nrt_bf16_ne_on) {
            nrt_bf16_store_ne(src, dst, n);
            return;
        }
#endif
        nrt_bf16_store_int(src, dst, n);
        return;
    }
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i*)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; i < n; i++) dst[i] = nrt_f32_to_f16_scalar(src[i]);
}

/* The bfloat16 rounding by a named path, for tests and scripts/bf16_sweep.py:
   0 the portable scalar code, 1 the integer vector path, 2 vcvtneps2bf16 (with
   its NaN/subnormal fix-up). Returns 0, or -1 when path 2 is not available. */
static inline int nrt_bf16_store_path(int path, const float* src, uint16_t* dst, ptrdiff_t n) {
    if (path == 0) {
        nrt_half_store_portable(NRT_BF16, src, dst, n);
        return 0;
    }
    if (path == 1) {
        nrt_bf16_store_int(src, dst, n);
        return 0;
    }
#if NRT_HAVE_BF16_NE
    if (path == 2 && nrt_bf16_ne_available()) {
        nrt_bf16_store_ne(src, dst, n);
        return 0;
    }
#endif
    return -1;
}

/* sum[i] = half(float(a[i]) + float(b[i])) (a skip connection in x's dtype, as
   ONNX's Add computes it) and dst[i] = float(sum[i]), the value normalized */
static inline void nrt_half_add(int kind, const uint16_t* a, const uint16_t* b, uint16_t* sum,
                                float* dst, ptrdiff_t n) {
    float tmp[256];
    ptrdiff_t i, j, m;
    for (i = 0; i < n; i += 256) {
        m = n - i < 256 ? n - i : 256;
        nrt_half_load(kind, a + i, dst + i, m);
        nrt_half_load(kind, b + i, tmp, m);
        for (j = 0; j < m; j++) tmp[j] += dst[i + j];
        nrt_half_store(kind, tmp, sum + i, m);
        nrt_half_load(kind, sum + i, dst + i, m);
    }
}

/* which conversion instructions this module uses (its level's, and for
   bfloat16 stores at AVX-512 the run-time choice) */
static inline const char* nrt_half_isa(void) {
#if defined(__AVX512F__)
    return nrt_bf16_ne_on ? "avx512bf16" : "avx512f";
#elif defined(__F16C__) && defined(__AVX2__)
    return "f16c+avx2";
#elif defined(__F16C__)
    return "f16c";
#elif defined(__AVX2__)
    return "avx2";
#else
    return "portable";
#endif
}

/* how bfloat16 stores round: "avx512_bf16" (vcvtneps2bf16) or "integer" */
static inline const char* nrt_bf16_store_name(void) {
    return nrt_bf16_ne_on ? "avx512_bf16" : "integer";
}

#endif
