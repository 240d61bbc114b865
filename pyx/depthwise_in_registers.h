/* Depthwise convs on small maps with the whole input plane in vector registers
 * (small_conv.pyx, AVX-512 builds): one input channel per group, at most 16 outputs per
 * plane (1x1 to 4x4 maps, 8x8 -> 4x4 at stride 2) and at most 64 inputs (4 vectors).
 *
 * Why: grouped_conv.h first copies each plane into a zero-padded polyphase scratch and
 * then computes whole rows of vectors. On MobileNet's 2x2 and 4x4 maps that copy (rows of
 * 18 floats for 2 outputs) and the partial-row stores cost ~40-80 ns per channel for 4-16
 * outputs: 256 channels at 2x2, 3x3, took 12.4 us where onnxruntime takes ~5.
 * Here a plane's 1-4 vectors are loaded once (masked: nothing past the plane is read), and
 * each tap's inputs for all the plane's outputs are one permute of those registers
 * (vpermps for one vector, vpermt2ps for two; four take two permutes and a blend) with
 * the lanes that fall in the padding zeroed by the permute's mask. The tap's indices and
 * masks depend only on the geometry: they are computed once per call (nrt_dwr_setup), for
 * every thread. One FMA per tap and plane, one masked store per plane, no scratch.
 *
 * Determinism, and the same bits as grouped_conv.h: lane t of a plane is output t,
 * summed as bias, then the taps row-major by FMA, padding taps adding 0 * w as there.
 */
#ifndef NORMRT_DEPTHWISE_IN_REGISTERS_H
#define NORMRT_DEPTHWISE_IN_REGISTERS_H

#include <stddef.h>
#include <stdlib.h>

#include "grouped_conv.h"

#if defined(__AVX512F__)
#define NRT_DWR_AVAILABLE 1
#include <immintrin.h>

/* A tap's permute: lane t reads input element idx[t] (of the plane's 64 at most); `lo` the
 * lanes reading elements 0-31 (the first two vectors), `hi` 32-63; a lane in neither is a
 * padding zero or a lane past the plane's outputs. */
typedef struct {
    __m512i idx;
    __mmask16 lo, hi;
} nrt_dwr_tap;

/* Planes side by side in one block: their FMA chains (one per plane, as long as the taps)
 * overlap so the FMA latency is covered. */
#define NRT_DWR_NC 4

/* Whether the call takes this path: geometry `g` after nrt_gc_setup. */
static inline int nrt_dwr_fits(const nrt_gc_geom *g) {
    return g->cg == 1 && g->OH * g->OW <= 16 && g->H * g->W <= 64 && g->KH * g->KW <= 256;
}

/* The call's taps, taps[i * KW + j] (KH * KW entries, 64-byte aligned; free() them), or NULL
 * when out of memory. */
static nrt_dwr_tap *nrt_dwr_setup(const nrt_gc_geom *g) {
    size_t bytes = sizeof(nrt_dwr_tap) * (size_t)(g->KH * g->KW);
    nrt_dwr_tap *taps = (nrt_dwr_tap *)aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (taps == NULL)
        return NULL;
    for (ptrdiff_t i = 0; i < g->KH; i++)
        for (ptrdiff_t j = 0; j < g->KW; j++) {
            int idx[16] = {0};
            unsigned lo = 0, hi = 0;
            for (ptrdiff_t t = 0; t < g->OH * g->OW; t++) {
                ptrdiff_t ih = (t / g->OW) * g->sh + i * g->dh - g->pt;
                ptrdiff_t iw = (t % g->OW) * g->sw + j * g->dw - g->pl;
                if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W)
                    continue;
                ptrdiff_t e = ih * g->W + iw;
                idx[t] = (int)(e & 31);          /* vpermt2ps reads 5 index bits */
                if (e < 32)
                    lo |= 1u << t;
                else
                    hi |= 1u << t;
            }
            nrt_dwr_tap *tap = taps + i * g->KW + j;
            tap->idx = _mm512_loadu_si512(idx);
            tap->lo = (__mmask16)lo;
            tap->hi = (__mmask16)hi;
        }
    return taps;
}

/* The tap's 16 inputs from a plane held in NV vectors (the padding lanes zero). */
static inline __attribute__((always_inline)) __m512
nrt_dwr_gather(const nrt_dwr_tap *tap, const __m512 *z, const int NV) {
    if (NV == 1)
        return _mm512_maskz_permutexvar_ps(tap->lo, tap->idx, z[0]);
    if (NV == 2)
        return _mm512_maskz_permutex2var_ps(tap->lo, z[0], tap->idx, z[1]);
    __m512 a = _mm512_maskz_permutex2var_ps(tap->lo, z[0], tap->idx, z[1]);
    __m512 b = _mm512_maskz_permutex2var_ps(tap->hi, z[2], tap->idx, z[3]);
    return _mm512_mask_blend_ps(tap->hi, a, b);
}

/* NC output planes m0 .. m0 + NC - 1 of one image: x the image's (C, H, W), w (M, KH, KW),
 * bias (M,) or NULL, y the image's (M, OH, OW); mg outputs per group (input channel m / mg).
 * Planes of one input channel (mg > 1) share its permutes. */
static inline __attribute__((always_inline)) void
nrt_dwr_block(const nrt_gc_geom *g, const nrt_dwr_tap *taps, const float *x, const float *w,
              const float *bias, float *y, ptrdiff_t m0, const int NC, const int NV) {
    const ptrdiff_t HW = g->H * g->W, P = g->OH * g->OW, ntaps = g->KH * g->KW;
    const __mmask16 out_lanes = (__mmask16)((1u << P) - 1u);
    __m512 z[NRT_DWR_NC][4], acc[NRT_DWR_NC];
    int fresh[NRT_DWR_NC];                   /* plane k's input differs from plane k - 1's */
    for (int k = 0; k < NC; k++) {
        ptrdiff_t c = (m0 + k) / g->mg;
        fresh[k] = k == 0 || c != (m0 + k - 1) / g->mg;
        const float *xc = x + c * HW;
        for (int v = 0; v < NV; v++) {
            ptrdiff_t left = HW - 16 * v;
            __mmask16 in = left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
            z[k][v] = _mm512_maskz_loadu_ps(in, xc + 16 * v);
        }
        acc[k] = _mm512_set1_ps(bias ? bias[m0 + k] : 0.0f);
    }
    for (ptrdiff_t tp = 0; tp < ntaps; tp++) {
        const nrt_dwr_tap *tap = taps + tp;
        __m512 xt = _mm512_setzero_ps();
        #pragma GCC unroll 4
        for (int k = 0; k < NC; k++) {
            if (fresh[k])
                xt = nrt_dwr_gather(tap, z[k], NV);
            acc[k] = _mm512_fmadd_ps(xt, _mm512_set1_ps(w[(m0 + k) * ntaps + tp]), acc[k]);
        }
    }
    for (int k = 0; k < NC; k++)
        _mm512_mask_storeu_ps(y + (m0 + k) * P, out_lanes, acc[k]);
}

static inline __attribute__((always_inline)) void
nrt_dwr_planes_nv(const nrt_gc_geom *g, const nrt_dwr_tap *taps, const float *x, const float *w,
                  const float *bias, float *y, ptrdiff_t m0, ptrdiff_t nc, const int NV) {
    switch (nc) {
    case 4: nrt_dwr_block(g, taps, x, w, bias, y, m0, 4, NV); break;
    case 3: nrt_dwr_block(g, taps, x, w, bias, y, m0, 3, NV); break;
    case 2: nrt_dwr_block(g, taps, x, w, bias, y, m0, 2, NV); break;
    default: nrt_dwr_block(g, taps, x, w, bias, y, m0, 1, NV); break;
    }
}

/* One work item: output planes [m0, m0 + nc) (nc <= NRT_DWR_NC) of one image. */
static void nrt_dwr_planes(const nrt_gc_geom *g, const nrt_dwr_tap *taps, const float *x, const float *w,
                           const float *bias, float *y, ptrdiff_t m0, ptrdiff_t nc) {
    ptrdiff_t HW = g->H * g->W;
    if (HW <= 16)
        nrt_dwr_planes_nv(g, taps, x, w, bias, y, m0, nc, 1);
    else if (HW <= 32)
        nrt_dwr_planes_nv(g, taps, x, w, bias, y, m0, nc, 2);
    else
        nrt_dwr_planes_nv(g, taps, x, w, bias, y, m0, nc, 4);
}

#else
#define NRT_DWR_AVAILABLE 0
typedef struct { int unused; } nrt_dwr_tap;
#define NRT_DWR_NC 4
static inline int nrt_dwr_fits(const nrt_gc_geom *g) { (void)g; return 0; }
static inline nrt_dwr_tap *nrt_dwr_setup(const nrt_gc_geom *g) { (void)g; return NULL; }
static inline void nrt_dwr_planes(const nrt_gc_geom *g, const nrt_dwr_tap *taps, const float *x, const float *w,
                                  const float *bias, float *y, ptrdiff_t m0, ptrdiff_t nc) {
    (void)g; (void)taps; (void)x; (void)w; (void)bias; (void)y; (void)m0; (void)nc;
}
#endif

#endif
