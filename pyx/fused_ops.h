/* Multiply-adds for the float32 polynomials of moments.pxd, at every ISA level.

   Why: fmaf() is one instruction where the target has FMA (x86-64-v3 and up),
   but at the x86-64 baseline it is a libm call that emulates the fused
   rounding in software, ~50x slower, and a call in a loop stops the
   vectorizer. So the polynomials call nrt_mul_add, fused only where that is
   free, and the two places that need the exact rounding error of a product
   call nrt_square_err, which computes it without FMA (Dekker's product).

   Results differ in the last bits between a level with FMA and one without
   (one rounding or two); within a level every path runs the same
   operations, so results stay bitwise identical for any thread count.
   (-ffp-contract=off: the compiler never fuses a * b + c on its own.) */
#ifndef NRT_FUSED_OPS_H
#define NRT_FUSED_OPS_H

#include <math.h>

#if defined(__FMA__) || defined(__AVX512F__)
#define NRT_HAVE_FMA 1
#else
#define NRT_HAVE_FMA 0
#endif

/* a * b + c: fused where the ISA has FMA, else rounded twice. Only for
   polynomials and products whose rounding the error budget already covers. */
static inline float nrt_mul_add(float a, float b, float c) {
#if NRT_HAVE_FMA
    return fmaf(a, b, c);
#else
    return a * b + c;
#endif
}

/* x * x - xh exactly, for xh = the rounded x * x (the low part of the square).
   Without FMA: Veltkamp's split of x into 12 + 12 significant bits, whose
   partial products are exact in float32. Exact unless |x| > 2**114 (the split
   overflows: NaN), where xh is already infinite and callers discard the lane. */
static inline float nrt_square_err(float x, float xh) {
#if NRT_HAVE_FMA
    return fmaf(x, x, -xh);
#else
    float c = 4097.0f * x;           /* 2**12 + 1 */
    float hi = c - (c - x);
    float lo = x - hi;
    return ((hi * hi - xh) + 2.0f * hi * lo) + lo * lo;
#endif
}

#endif
