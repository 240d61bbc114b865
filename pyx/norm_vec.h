/* AVX-512 forms of the hot loops of moments.pxd and layer_norm.pyx, for
 * float32, float16 and bfloat16 storage (`kind`: NRT_F16, NRT_BF16 or NRT_F32).
 *
 * Why C: the Cython loops convert a block of 32 half values into a stack
 * buffer, read it back, call small helpers GCC does not inline and finish a
 * short row with a padded copy; a (1024, 768) float16 LayerNorm ran at ~5x a
 * copy of its bytes, compute-bound on that shuffling. Here every block stays
 * in registers: 16 floats per vector, conversions by vcvtph2ps / vcvtps2ph
 * (bfloat16: shifts, and half.h's rounding), and a short tail is one masked
 * load and store.
 *
 * Same bits as the Cython code: each function does, per lane, the very
 * operations in the very order of the loop it replaces (the 32 accumulator
 * lanes of moments.pxd are two vectors, its float64 lanes four, lane_total's
 * pairwise tree is reproduced), so the statistics and the outputs do not
 * depend on the ISA level that ran them, nor on the thread count. The one
 * exception is SiLU's exp (nrt_exp_f: fused, within an ulp). Where AVX-512 (F, BW, VL) is not
 * compiled in, every function returns 0 and the caller runs its own loop;
 * they also return 0 for what they do not cover (an activation other than
 * relu / silu).
 */
#ifndef NRT_NORM_VEC_H
#define NRT_NORM_VEC_H

#include <stddef.h>
#include <stdint.h>
#include "half.h"

enum { NRT_F32 = 2 };   /* float32 storage; NRT_F16 / NRT_BF16 are half.h's */
/* bfloat16 storage stored by vcvtneps2bf16: internal to this file, used for
   NRT_BF16 when half.h's run-time choice (nrt_bf16_ne_on) says so */
enum { NRT_BF16_NE = 3 };
enum { NRT_VEC_ACT_NONE = 0, NRT_VEC_ACT_RELU = 1, NRT_VEC_ACT_SILU = 2,     /* moments.pxd's ACT_* */
       NRT_VEC_ACT_RELU6 = 5, NRT_VEC_ACT_HARDSIGMOID = 6, NRT_VEC_ACT_HARDSWISH = 7 };

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define NRT_HAVE_NORM_VEC 1
#define NRT_AI static inline __attribute__((always_inline))

/* 16 elements from p + i as float32 (exact); NRT_BF16_NE loads as NRT_BF16 */
NRT_AI __m512 nrt_vload(int kind, const void* p, ptrdiff_t i) {
    if (kind == NRT_F32)
        return _mm512_loadu_ps((const float*)p + i);
    __m256i w = _mm256_loadu_si256((const __m256i*)((const uint16_t*)p + i));
    if (kind == NRT_F16)
        return _mm512_cvtph_ps(w);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(w), 16));
}

/* the lanes of m; the others 0 */
NRT_AI __m512 nrt_vload_mask(int kind, const void* p, ptrdiff_t i, __mmask16 m) {
    if (kind == NRT_F32)
        return _mm512_maskz_loadu_ps(m, (const float*)p + i);
    __m256i w = _mm256_maskz_loadu_epi16(m, (const uint16_t*)p + i);
    if (kind == NRT_F16)
        return _mm512_cvtph_ps(w);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(w), 16));
}

/* v rounded to the 16-bit type (nearest even), as half.h's nrt_half_store.
   NRT_BF16_NE only inlines into the NRT_BF16_NE_TARGET functions at the end
   of this file (a function compiled without AVX-512 BF16 keeps it a call, in
   a branch its constant kind never takes). */
NRT_AI __m256i nrt_vpack_half(int kind, __m512 v) {
    if (kind == NRT_F16)
        return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#if NRT_HAVE_BF16_NE
    if (kind == NRT_BF16_NE)
        return nrt_bf16_pack_ne16(v);
#endif
    return _mm512_cvtepi32_epi16(nrt_bf16_round16(v));
}

NRT_AI void nrt_vstore(int kind, void* p, ptrdiff_t i, __m512 v) {
    if (kind == NRT_F32)
        _mm512_storeu_ps((float*)p + i, v);
    else
        _mm256_storeu_si256((__m256i*)((uint16_t*)p + i), nrt_vpack_half(kind, v));
}

NRT_AI void nrt_vstore_mask(int kind, void* p, ptrdiff_t i, __mmask16 m, __m512 v) {
    if (kind == NRT_F32)
        _mm512_mask_storeu_ps((float*)p + i, m, v);
    else
        _mm256_mask_storeu_epi16((uint16_t*)p + i, m, nrt_vpack_half(kind, v));
}

/* masks of the first r (0 <= r <= 32) lanes of a 32-lane block: lanes 0-15, 16-31 */
NRT_AI __mmask16 nrt_mask_lo(ptrdiff_t r) { return r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << r) - 1u); }
NRT_AI __mmask16 nrt_mask_hi(ptrdiff_t r) { return r <= 16 ? (__mmask16)0 : (__mmask16)((1u << (r - 16)) - 1u); }

/* moments.pxd's float64 lanes: acc[0:8], acc[8:16], acc[16:24], acc[24:32] += float32 lanes b0 (0-15), b1 (16-31) */
NRT_AI void nrt_acc32(__m512d* acc, __m512 b0, __m512 b1) {
    acc[0] = _mm512_add_pd(acc[0], _mm512_cvtps_pd(_mm512_castps512_ps256(b0)));
    acc[1] = _mm512_add_pd(acc[1], _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(b0), 1))));
    acc[2] = _mm512_add_pd(acc[2], _mm512_cvtps_pd(_mm512_castps512_ps256(b1)));
    acc[3] = _mm512_add_pd(acc[3], _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(b1), 1))));
}

/* moments.pxd's lane_total: the same pairwise tree over the 32 lanes */
NRT_AI double nrt_lane_total(const __m512d* acc) {
    __m512d a = _mm512_add_pd(acc[0], acc[2]);              /* acc[j] + acc[j + 16] */
    __m512d b = _mm512_add_pd(acc[1], acc[3]);
    __m512d c = _mm512_add_pd(a, b);                        /* acc[j] + acc[j + 8] */
    __m256d d = _mm256_add_pd(_mm512_castpd512_pd256(c), _mm512_extractf64x4_pd(c, 1));   /* + acc[j + 4] */
    double e[4];
    _mm256_storeu_pd(e, d);
    return (e[0] + e[2]) + (e[1] + e[3]);
}

/* one 32-element step of sums_dev: deviations f0 (lanes 0-15), f1 (16-31) into b. The sums are
   fma(f, 1, b): the same bits as b + f (f * 1 is exact, one rounding), on the FMA pipes instead of
   the adders, which the subtraction of the shift and (half storage) the conversions already load:
   sums_dev of a (768,) row in L1 on Zen 4, float16 70 -> 62 ns, float32 51 -> 42 ns. */
NRT_AI void nrt_sums_step(__m512* b, __m512 f0, __m512 f1) {
    const __m512 one = _mm512_set1_ps(1.0f);
    b[0] = _mm512_fmadd_ps(f0, one, b[0]);
    b[1] = _mm512_fmadd_ps(f1, one, b[1]);
    b[2] = _mm512_fmadd_ps(f0, f0, b[2]);
    b[3] = _mm512_fmadd_ps(f1, f1, b[3]);
}

/* sums_dev: s1 = sum(x - shift), s2 = sum((x - shift)^2) */
NRT_AI void nrt_sums_dev_k(int kind, const void* x, ptrdiff_t n, float shift, double* s1, double* s2) {
    const __m512 vs = _mm512_set1_ps(shift);
    __m512d a1[4], a2[4];
    __m512 b[4], f0, f1;   /* float32 lanes: sums 0-15, 16-31, squares 0-15, 16-31 */
    ptrdiff_t i = 0, k;
    for (k = 0; k < 4; k++) { a1[k] = _mm512_setzero_pd(); a2[k] = _mm512_setzero_pd(); }
    for (; i + 256 <= n; i += 256) {
        b[0] = b[1] = b[2] = b[3] = _mm512_setzero_ps();
        for (k = 0; k < 256; k += 32) {
            f0 = _mm512_sub_ps(nrt_vload(kind, x, i + k), vs);
            f1 = _mm512_sub_ps(nrt_vload(kind, x, i + k + 16), vs);
            nrt_sums_step(b, f0, f1);
        }
        nrt_acc32(a1, b[0], b[1]);
        nrt_acc32(a2, b[2], b[3]);
    }
    b[0] = b[1] = b[2] = b[3] = _mm512_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        f0 = _mm512_sub_ps(nrt_vload(kind, x, i), vs);
        f1 = _mm512_sub_ps(nrt_vload(kind, x, i + 16), vs);
        nrt_sums_step(b, f0, f1);
    }
    if (i < n) {
        __mmask16 m0 = nrt_mask_lo(n - i), m1 = nrt_mask_hi(n - i);
        f0 = _mm512_maskz_sub_ps(m0, nrt_vload_mask(kind, x, i, m0), vs);
        f1 = _mm512_maskz_sub_ps(m1, nrt_vload_mask(kind, x, i + 16, m1), vs);
        nrt_sums_step(b, f0, f1);
    }
    nrt_acc32(a1, b[0], b[1]);
    nrt_acc32(a2, b[2], b[3]);
    *s1 = nrt_lane_total(a1);
    *s2 = nrt_lane_total(a2);
}

/* sum_sq_dev: sum(((x - mh) - ml)^2) */
NRT_AI double nrt_sum_sq_dev_k(int kind, const void* x, ptrdiff_t n, float mh, float ml) {
    const __m512 vh = _mm512_set1_ps(mh), vl = _mm512_set1_ps(ml);
    __m512d acc[4];
    __m512 b0, b1, f0, f1;
    ptrdiff_t i = 0, k;
    for (k = 0; k < 4; k++) acc[k] = _mm512_setzero_pd();
    for (; i + 256 <= n; i += 256) {
        b0 = b1 = _mm512_setzero_ps();
        for (k = 0; k < 256; k += 32) {
            f0 = _mm512_sub_ps(_mm512_sub_ps(nrt_vload(kind, x, i + k), vh), vl);
            f1 = _mm512_sub_ps(_mm512_sub_ps(nrt_vload(kind, x, i + k + 16), vh), vl);
            b0 = _mm512_fmadd_ps(f0, f0, b0);
            b1 = _mm512_fmadd_ps(f1, f1, b1);
        }
        nrt_acc32(acc, b0, b1);
    }
    b0 = b1 = _mm512_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        f0 = _mm512_sub_ps(_mm512_sub_ps(nrt_vload(kind, x, i), vh), vl);
        f1 = _mm512_sub_ps(_mm512_sub_ps(nrt_vload(kind, x, i + 16), vh), vl);
        b0 = _mm512_fmadd_ps(f0, f0, b0);
        b1 = _mm512_fmadd_ps(f1, f1, b1);
    }
    if (i < n) {
        __mmask16 m0 = nrt_mask_lo(n - i), m1 = nrt_mask_hi(n - i);
        f0 = _mm512_maskz_sub_ps(m0, _mm512_sub_ps(nrt_vload_mask(kind, x, i, m0), vh), vl);
        f1 = _mm512_maskz_sub_ps(m1, _mm512_sub_ps(nrt_vload_mask(kind, x, i + 16, m1), vh), vl);
        b0 = _mm512_fmadd_ps(f0, f0, b0);
        b1 = _mm512_fmadd_ps(f1, f1, b1);
    }
    nrt_acc32(acc, b0, b1);
    return nrt_lane_total(acc);
}

/* the first `count` elements (<= 32) of x as float32 into dst: chunk_moments' shift sample */
NRT_AI void nrt_head_k(int kind, const void* x, ptrdiff_t count, float* dst) {
    ptrdiff_t c = count < 32 ? count : 32;
    __mmask16 m0 = nrt_mask_lo(c), m1 = nrt_mask_hi(c);
    _mm512_mask_storeu_ps(dst, m0, nrt_vload_mask(kind, x, 0, m0));
    _mm512_mask_storeu_ps(dst + 16, m1, nrt_vload_mask(kind, x, 16, m1));
}

/* 2^n * e**r for |r| <= ln2/2: Cephes' degree-6 polynomial and vscalefps, the part of
   e**x that nrt_exp_f and nrt_silu share after their range reductions. */
NRT_AI __m512 nrt_exp_reduced(__m512 r, __m512 n) {
    __m512 z = _mm512_mul_ps(r, r);
    __m512 p = _mm512_set1_ps((float)1.9875691500e-4);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps((float)1.3981999507e-3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps((float)8.3334519073e-3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps((float)4.1665795894e-2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps((float)1.6666665459e-1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps((float)5.0000001201e-1));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, z, r), _mm512_set1_ps(1.0f));
    p = _mm512_scalef_ps(p, n);
    return p;
}

/* e**x for float32, moments.pxd's exp_f (Cephes' range reduction by ln2 and
   degree-6 polynomial, the same constants and clamps), with fused
   multiply-adds and the power of two applied by vscalefps: 18 instead of 30
   vector operations, which is what a SiLU epilogue costs (its division aside).
   Within an ulp of exp_f, not its bits: the only loop here that is not the
   Cython code's own. NaN stays NaN, exp(-inf) = 0. */
NRT_AI __m512 nrt_exp_f(__m512 x) {
    const __m512 hi = _mm512_set1_ps((float)88.3762626647949), lo = _mm512_set1_ps(-(float)87.3365447504019);
    /* vminps / vmaxps return their second operand for a NaN: NaN stays NaN */
    __m512 xc = _mm512_max_ps(lo, _mm512_min_ps(hi, x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps((float)1.44269504088896341)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps((float)0.693359375), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-(float)2.12194440e-4), r);
    __m512 p = nrt_exp_reduced(r, n);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), p, _mm512_setzero_ps());
}

/* silu(v) = v / (1 + nrt_exp_f(-v)), the same bits in three vector operations
   fewer (of ~24: the epilogue is what a GroupNorm+SiLU output pass spends its
   time on; the division is not the bottleneck, a reciprocal with a Newton step
   measured slower on Zen 4):
   - no negation: nrt_exp_f's steps on x = -v are written on v. The clamp
     bounds are negated (clamping commutes with negation, NaN stays NaN),
     n = round(u * -log2e) is round(x * log2e), and x - n*c1 (one fnmadd) is
     -(n*c1) - u, one fnmsub of the same operands;
   - no flush to 0 where x < lo: there exp is at most exp(lo) < 2^-125, and
     1 + that rounds to 1, as 1 + 0 does.
   tests/c/silu_check.c compares the two over all 2^32 floats. */
NRT_AI __m512 nrt_silu(__m512 v) {
    const __m512 neg_hi = _mm512_set1_ps(-(float)88.3762626647949), neg_lo = _mm512_set1_ps((float)87.3365447504019);
    __m512 u = _mm512_min_ps(neg_lo, _mm512_max_ps(neg_hi, v));   /* -xc; NaN: the second operand */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(u, _mm512_set1_ps(-(float)1.44269504088896341)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmsub_ps(n, _mm512_set1_ps((float)0.693359375), u);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-(float)2.12194440e-4), r);
    __m512 p = nrt_exp_reduced(r, n);
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), p));
}

/* moments.pxd's activate_span for relu and silu */
NRT_AI __m512 nrt_activate(__m512 v, int act) {
    if (act == NRT_VEC_ACT_RELU)
        return _mm512_max_ps(_mm512_setzero_ps(), v);   /* v when NaN or -0.0: `0 if v < 0 else v` */
    if (act == NRT_VEC_ACT_SILU)
        return nrt_silu(v);
    return v;
}

/* moments.pxd's write_affine: y = act((x - mh) * a + b). Four vectors per
   iteration: with SiLU each vector is one ~25-operation dependency chain, and
   four independent chains side by side keep the FP pipes fuller than the
   out-of-order window does alone (the bf16 SiLU pass over an L2-resident
   group 6-9% faster on Zen 4 than one vector per iteration). Every element gets the
   same operations, so the same bits. An iteration loads each vector before it
   stores it, at the same index: x may be y. */
NRT_AI void nrt_affine_k(int kind, int act, const void* x, void* y, ptrdiff_t n, float mh, float a, float b) {
    const __m512 vh = _mm512_set1_ps(mh), va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
    ptrdiff_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512 v0 = nrt_activate(_mm512_fmadd_ps(_mm512_sub_ps(nrt_vload(kind, x, i), vh), va, vb), act);
        __m512 v1 = nrt_activate(_mm512_fmadd_ps(_mm512_sub_ps(nrt_vload(kind, x, i + 16), vh), va, vb), act);
        __m512 v2 = nrt_activate(_mm512_fmadd_ps(_mm512_sub_ps(nrt_vload(kind, x, i + 32), vh), va, vb), act);
        __m512 v3 = nrt_activate(_mm512_fmadd_ps(_mm512_sub_ps(nrt_vload(kind, x, i + 48), vh), va, vb), act);
        nrt_vstore(kind, y, i, v0);
        nrt_vstore(kind, y, i + 16, v1);
        nrt_vstore(kind, y, i + 32, v2);
        nrt_vstore(kind, y, i + 48, v3);
    }
    for (; i + 16 <= n; i += 16)
        nrt_vstore(kind, y, i, nrt_activate(_mm512_fmadd_ps(_mm512_sub_ps(nrt_vload(kind, x, i), vh), va, vb), act));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        nrt_vstore_mask(kind, y, i, m,
                        nrt_activate(_mm512_fmadd_ps(_mm512_sub_ps(nrt_vload_mask(kind, x, i, m), vh), va, vb), act));
    }
}

/* layer_norm.pyx's layer_norm_lanes over a row: sc, bi may be NULL */
NRT_AI __m512 nrt_ln_one(__m512 p, const float* sc, const float* bi, ptrdiff_t i, __mmask16 m,
                         __m512 vh, __m512 vl, __m512 vr, int no_low) {
    if (sc && bi) {
        __m512 s = _mm512_maskz_loadu_ps(m, sc + i), b = _mm512_maskz_loadu_ps(m, bi + i);
        if (no_low)
            return _mm512_fmadd_ps(_mm512_mul_ps(_mm512_sub_ps(p, vh), vr), s, b);
        return _mm512_fmadd_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_sub_ps(p, vh), vl), vr), s, b);
    }
    if (sc)
        return _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_sub_ps(p, vh), vl), vr), _mm512_maskz_loadu_ps(m, sc + i));
    if (bi)
        return _mm512_fmadd_ps(_mm512_sub_ps(_mm512_sub_ps(p, vh), vl), vr, _mm512_maskz_loadu_ps(m, bi + i));
    return _mm512_mul_ps(_mm512_sub_ps(_mm512_sub_ps(p, vh), vl), vr);
}

NRT_AI void nrt_layer_norm_out_k(int kind, const void* x, void* y, ptrdiff_t n, const float* sc, const float* bi,
                                 float mh, float ml, float fr) {
    const __m512 vh = _mm512_set1_ps(mh), vl = _mm512_set1_ps(ml), vr = _mm512_set1_ps(fr);
    const int no_low = ml == 0.0f;
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16)
        nrt_vstore(kind, y, i, nrt_ln_one(nrt_vload(kind, x, i), sc, bi, i, 0xffff, vh, vl, vr, no_low));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        nrt_vstore_mask(kind, y, i, m, nrt_ln_one(nrt_vload_mask(kind, x, i, m), sc, bi, i, m, vh, vl, vr, no_low));
    }
}

/* layer_norm.pyx's rms_norm_lanes over a row: (x * k) * fr * sc, the * k only when k != 1 */
NRT_AI __m512 nrt_rms_one(__m512 p, const float* sc, ptrdiff_t i, __mmask16 m, __m512 vk, __m512 vr, int scaled) {
    __m512 v = _mm512_mul_ps(scaled ? _mm512_mul_ps(p, vk) : p, vr);
    if (scaled)
        return _mm512_mul_ps(v, sc ? _mm512_maskz_loadu_ps(m, sc + i) : _mm512_set1_ps(1.0f));
    return sc ? _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, sc + i)) : v;
}

NRT_AI void nrt_rms_norm_out_k(int kind, const void* x, void* y, ptrdiff_t n, const float* sc, float k, float fr) {
    const __m512 vk = _mm512_set1_ps(k), vr = _mm512_set1_ps(fr);
    const int scaled = k != 1.0f;
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16)
        nrt_vstore(kind, y, i, nrt_rms_one(nrt_vload(kind, x, i), sc, i, 0xffff, vk, vr, scaled));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        nrt_vstore_mask(kind, y, i, m, nrt_rms_one(nrt_vload_mask(kind, x, i, m), sc, i, m, vk, vr, scaled));
    }
}

/* layer_norm.pyx's add_residual: h = x + r, added in float32, rounded to the storage type */
NRT_AI void nrt_add_k(int kind, const void* x, const void* r, void* h, ptrdiff_t n) {
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16)
        nrt_vstore(kind, h, i, _mm512_add_ps(nrt_vload(kind, x, i), nrt_vload(kind, r, i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        nrt_vstore_mask(kind, h, i, m, _mm512_add_ps(nrt_vload_mask(kind, x, i, m), nrt_vload_mask(kind, r, i, m)));
    }
}

/* The vcvtneps2bf16 copies of the kernels that store: one function each,
   compiled for AVX-512 BF16 (the kind is a constant inside). */
#if NRT_HAVE_BF16_NE
static NRT_BF16_NE_TARGET void nrt_affine_bf16_ne(int act, const void* x, void* y, ptrdiff_t n, float mh,
                                                   float a, float b) {
    if (act == NRT_VEC_ACT_NONE) nrt_affine_k(NRT_BF16_NE, NRT_VEC_ACT_NONE, x, y, n, mh, a, b);
    else if (act == NRT_VEC_ACT_RELU) nrt_affine_k(NRT_BF16_NE, NRT_VEC_ACT_RELU, x, y, n, mh, a, b);
    else nrt_affine_k(NRT_BF16_NE, NRT_VEC_ACT_SILU, x, y, n, mh, a, b);
}
static NRT_BF16_NE_TARGET void nrt_layer_norm_out_bf16_ne(const void* x, void* y, ptrdiff_t n, const float* sc,
                                                           const float* bi, float mh, float ml, float fr) {
    nrt_layer_norm_out_k(NRT_BF16_NE, x, y, n, sc, bi, mh, ml, fr);
}
static NRT_BF16_NE_TARGET void nrt_rms_norm_out_bf16_ne(const void* x, void* y, ptrdiff_t n, const float* sc,
                                                         float k, float fr) {
    nrt_rms_norm_out_k(NRT_BF16_NE, x, y, n, sc, k, fr);
}
static NRT_BF16_NE_TARGET void nrt_add_bf16_ne(const void* x, const void* r, void* h, ptrdiff_t n) {
    nrt_add_k(NRT_BF16_NE, x, r, h, n);
}
#endif

/* one copy of each kernel per storage type (kind is a constant inside) */
#define NRT_BY_KIND(kind, CALL_F32, CALL_F16, CALL_BF16) \
    switch (kind) { case NRT_F32: CALL_F32; break; case NRT_F16: CALL_F16; break; default: CALL_BF16; }

/* the same for the kernels that store, bfloat16 stores by half.h's run-time choice */
#if NRT_HAVE_BF16_NE
#define NRT_BY_STORE_KIND(kind, CALL_F32, CALL_F16, CALL_BF16, CALL_BF16_NE) \
    switch (kind) { case NRT_F32: CALL_F32; break; case NRT_F16: CALL_F16; break; \
                    default: if (nrt_bf16_ne_on) { CALL_BF16_NE; } else { CALL_BF16; } }
#else
#define NRT_BY_STORE_KIND(kind, CALL_F32, CALL_F16, CALL_BF16, CALL_BF16_NE) \
    NRT_BY_KIND(kind, CALL_F32, CALL_F16, CALL_BF16)
#endif

static inline int nrt_vec_sums_dev(int kind, const void* x, ptrdiff_t n, float shift, double* s1, double* s2) {
    NRT_BY_KIND(kind, nrt_sums_dev_k(NRT_F32, x, n, shift, s1, s2), nrt_sums_dev_k(NRT_F16, x, n, shift, s1, s2),
                nrt_sums_dev_k(NRT_BF16, x, n, shift, s1, s2))
    return 1;
}

static inline int nrt_vec_sum_sq_dev(int kind, const void* x, ptrdiff_t n, float mh, float ml, double* s) {
    NRT_BY_KIND(kind, *s = nrt_sum_sq_dev_k(NRT_F32, x, n, mh, ml), *s = nrt_sum_sq_dev_k(NRT_F16, x, n, mh, ml),
                *s = nrt_sum_sq_dev_k(NRT_BF16, x, n, mh, ml))
    return 1;
}

static inline int nrt_vec_head(int kind, const void* x, ptrdiff_t count, float* dst) {
    NRT_BY_KIND(kind, nrt_head_k(NRT_F32, x, count, dst), nrt_head_k(NRT_F16, x, count, dst),
                nrt_head_k(NRT_BF16, x, count, dst))
    return 1;
}

#define NRT_AFFINE_ACT(KIND) \
    if (act == NRT_VEC_ACT_NONE) nrt_affine_k(KIND, NRT_VEC_ACT_NONE, x, y, n, mh, a, b); \
    else if (act == NRT_VEC_ACT_RELU) nrt_affine_k(KIND, NRT_VEC_ACT_RELU, x, y, n, mh, a, b); \
    else nrt_affine_k(KIND, NRT_VEC_ACT_SILU, x, y, n, mh, a, b)

static inline int nrt_vec_affine(int kind, int act, const void* x, void* y, ptrdiff_t n, float mh, float a, float b) {
    if (act != NRT_VEC_ACT_NONE && act != NRT_VEC_ACT_RELU && act != NRT_VEC_ACT_SILU)
        return 0;
    NRT_BY_STORE_KIND(kind, NRT_AFFINE_ACT(NRT_F32), NRT_AFFINE_ACT(NRT_F16), NRT_AFFINE_ACT(NRT_BF16),
                      nrt_affine_bf16_ne(act, x, y, n, mh, a, b))
    return 1;
}

static inline int nrt_vec_layer_norm_out(int kind, const void* x, void* y, ptrdiff_t n, const float* sc, const float* bi,
                                  float mh, float ml, float fr) {
    NRT_BY_STORE_KIND(kind, nrt_layer_norm_out_k(NRT_F32, x, y, n, sc, bi, mh, ml, fr),
                      nrt_layer_norm_out_k(NRT_F16, x, y, n, sc, bi, mh, ml, fr),
                      nrt_layer_norm_out_k(NRT_BF16, x, y, n, sc, bi, mh, ml, fr),
                      nrt_layer_norm_out_bf16_ne(x, y, n, sc, bi, mh, ml, fr))
    return 1;
}

static inline int nrt_vec_rms_norm_out(int kind, const void* x, void* y, ptrdiff_t n, const float* sc, float k, float fr) {
    NRT_BY_STORE_KIND(kind, nrt_rms_norm_out_k(NRT_F32, x, y, n, sc, k, fr),
                      nrt_rms_norm_out_k(NRT_F16, x, y, n, sc, k, fr),
                      nrt_rms_norm_out_k(NRT_BF16, x, y, n, sc, k, fr), nrt_rms_norm_out_bf16_ne(x, y, n, sc, k, fr))
    return 1;
}

static inline int nrt_vec_add(int kind, const void* x, const void* r, void* h, ptrdiff_t n) {
    NRT_BY_STORE_KIND(kind, nrt_add_k(NRT_F32, x, r, h, n), nrt_add_k(NRT_F16, x, r, h, n),
                      nrt_add_k(NRT_BF16, x, r, h, n), nrt_add_bf16_ne(x, r, h, n))
    return 1;
}

/* moments.pxd's hard_sigmoid_f: h = v * (1/6) then + 0.5 (two roundings, as there), clamped
   to [0, 1]. vmaxps / vminps return their second operand when either is NaN or both are
   zeros: NaN and -0.0 pass as the scalar `0 if h < 0 else h` lets them. */
NRT_AI __m512 nrt_hard_sigmoid(__m512 v) {
    __m512 h = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps((float)(1.0 / 6.0))), _mm512_set1_ps(0.5f));
    return _mm512_min_ps(_mm512_set1_ps(1.0f), _mm512_max_ps(_mm512_setzero_ps(), h));
}

/* relu, relu6, hardsigmoid, hardswish: activate_span's bits (same operations, the same NaN
   and -0.0 handling); the scalar loops cost a hardswish stem (16 x 112 x 112) 46 us, a fifth
   of its conv */
NRT_AI __m512 nrt_clamp_act(__m512 v, int act) {
    if (act == NRT_VEC_ACT_RELU)
        return nrt_activate(v, NRT_VEC_ACT_RELU);
    if (act == NRT_VEC_ACT_RELU6)
        return _mm512_min_ps(_mm512_set1_ps(6.0f), _mm512_max_ps(_mm512_setzero_ps(), v));
    if (act == NRT_VEC_ACT_HARDSIGMOID)
        return nrt_hard_sigmoid(v);
    return _mm512_mul_ps(v, nrt_hard_sigmoid(v));
}

/* moments.pxd's activate_span on float32 y[0:n] in place, for relu, the clamps and silu: the
   vectors of nrt_activate (silu: nrt_silu's exp, as the norms' SiLU epilogues), a
   short tail one masked load and store. A conv's SiLU epilogue spent 1.8 cycles
   per element in the Cython loop's exp and division. */
static inline int nrt_vec_activate(float* y, ptrdiff_t n, int act) {
    ptrdiff_t i = 0;
    if (act == NRT_VEC_ACT_RELU || act == NRT_VEC_ACT_RELU6 || act == NRT_VEC_ACT_HARDSIGMOID
            || act == NRT_VEC_ACT_HARDSWISH) {
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(y + i, nrt_clamp_act(_mm512_loadu_ps(y + i), act));
        if (i < n) {
            __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
            _mm512_mask_storeu_ps(y + i, m, nrt_clamp_act(_mm512_maskz_loadu_ps(m, y + i), act));
        }
        return 1;
    }
    if (act != NRT_VEC_ACT_SILU)
        return 0;
    for (; i + 32 <= n; i += 32) {        /* two chains in flight */
        __m512 a = nrt_silu(_mm512_loadu_ps(y + i)), b = nrt_silu(_mm512_loadu_ps(y + i + 16));
        _mm512_storeu_ps(y + i, a);
        _mm512_storeu_ps(y + i + 16, b);
    }
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, nrt_silu(_mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, m, nrt_silu(_mm512_maskz_loadu_ps(m, y + i)));
    }
    return 1;
}

#undef NRT_AI
#else
#define NRT_HAVE_NORM_VEC 0
static inline int nrt_vec_activate(float* y, ptrdiff_t n, int act) {
    (void)y; (void)n; (void)act; return 0;
}
/* below AVX-512: the callers' own loops */
static inline int nrt_vec_sums_dev(int kind, const void* x, ptrdiff_t n, float shift, double* s1, double* s2) {
    (void)kind; (void)x; (void)n; (void)shift; (void)s1; (void)s2; return 0;
}
static inline int nrt_vec_sum_sq_dev(int kind, const void* x, ptrdiff_t n, float mh, float ml, double* s) {
    (void)kind; (void)x; (void)n; (void)mh; (void)ml; (void)s; return 0;
}
static inline int nrt_vec_head(int kind, const void* x, ptrdiff_t count, float* dst) {
    (void)kind; (void)x; (void)count; (void)dst; return 0;
}
static inline int nrt_vec_affine(int kind, int act, const void* x, void* y, ptrdiff_t n, float mh, float a, float b) {
    (void)kind; (void)act; (void)x; (void)y; (void)n; (void)mh; (void)a; (void)b; return 0;
}
static inline int nrt_vec_layer_norm_out(int kind, const void* x, void* y, ptrdiff_t n, const float* sc,
                                         const float* bi, float mh, float ml, float fr) {
    (void)kind; (void)x; (void)y; (void)n; (void)sc; (void)bi; (void)mh; (void)ml; (void)fr; return 0;
}
static inline int nrt_vec_rms_norm_out(int kind, const void* x, void* y, ptrdiff_t n, const float* sc,
                                       float k, float fr) {
    (void)kind; (void)x; (void)y; (void)n; (void)sc; (void)k; (void)fr; return 0;
}
static inline int nrt_vec_add(int kind, const void* x, const void* r, void* h, ptrdiff_t n) {
    (void)kind; (void)x; (void)r; (void)h; (void)n; return 0;
}
#endif

#endif
