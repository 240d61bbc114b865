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
 * Planes of 17-64 outputs (5x5 to 8x8 maps at stride 1: 96 channels at 8x8 took 15 us,
 * onnxruntime 9) take up to four vectors of outputs; each vector's inputs for a tap lie in a
 * window of two vectors of the plane (checked at setup), permuted from an aligned copy of
 * the plane made once per plane.
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

/* A tap's permute for one vector of outputs. Planes of at most 16 outputs: lane t reads
 * input element idx[t] of the plane's (at most 64) held in registers; `lo` the lanes reading
 * elements 0-31 (the first two vectors), `hi` 32-63. Planes of 17-64 outputs (a window):
 * lane t reads element 16 * base + idx[t], a window of two vectors of the plane's copy,
 * `lo` the lanes that read. A lane not read is a padding zero or past the plane's outputs. */
typedef struct {
    __m512i idx;
    __mmask16 lo, hi;
    int base;
} nrt_dwr_tap;

/* Planes side by side in one block: their FMA chains (one per plane, as long as the taps)
 * overlap so the FMA latency is covered. */
#define NRT_DWR_NC 4

/* Whether the call may take this path (geometry `g` after nrt_gc_setup); nrt_dwr_setup then
 * says whether it does (the windows of 17-64 outputs must each lie in two vectors). */
static inline int nrt_dwr_fits(const nrt_gc_geom *g) {
    return g->cg == 1 && g->OH * g->OW <= 64 && g->H * g->W <= 64 && g->KH * g->KW <= 256;
}

/* The call's taps, taps[o * KH * KW + i * KW + j] for output vector o (one for planes of at
 * most 16 outputs, up to four for 64), 64-byte aligned (free() them); NULL with *refused = 0
 * when out of memory, NULL with *refused = 1 when a window does not lie in two vectors (the
 * call then runs on grouped_conv.h). */
static nrt_dwr_tap *nrt_dwr_setup(const nrt_gc_geom *g, int *refused) {
    const ptrdiff_t P = g->OH * g->OW, nvo = (P + 15) / 16, ntaps = g->KH * g->KW;
    size_t bytes = sizeof(nrt_dwr_tap) * (size_t)(nvo * ntaps);
    *refused = 0;
    nrt_dwr_tap *taps = (nrt_dwr_tap *)aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (taps == NULL)
        return NULL;
    for (ptrdiff_t o = 0; o < nvo; o++)
        for (ptrdiff_t i = 0; i < g->KH; i++)
            for (ptrdiff_t j = 0; j < g->KW; j++) {
                ptrdiff_t elem[16];
                ptrdiff_t first = 64, last = -1;
                ptrdiff_t oh = (o * 16) / g->OW, ow = (o * 16) % g->OW;   /* output o * 16 + l, stepped */
                for (ptrdiff_t l = 0; l < 16; l++, ow = ow + 1 == g->OW ? (oh++, 0) : ow + 1) {
                    elem[l] = -1;
                    if (o * 16 + l >= P)
                        continue;
                    ptrdiff_t ih = oh * g->sh + i * g->dh - g->pt;
                    ptrdiff_t iw = ow * g->sw + j * g->dw - g->pl;
                    if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W)
                        continue;
                    elem[l] = ih * g->W + iw;
                    if (elem[l] < first) first = elem[l];
                    if (elem[l] > last) last = elem[l];
                }
                int base = nvo == 1 || last < 0 ? 0 : (int)(first / 16);
                if (nvo > 1 && last >= 16 * base + 32) {
                    free(taps);
                    *refused = 1;
                    return NULL;
                }
                int idx[16] = {0};
                unsigned lo = 0, hi = 0;
                for (int l = 0; l < 16; l++) {
                    if (elem[l] < 0)
                        continue;
                    ptrdiff_t e = elem[l] - 16 * base;
                    idx[l] = (int)(e & 31);          /* vpermt2ps reads 5 index bits */
                    if (e < 32)
                        lo |= 1u << l;
                    else
                        hi |= 1u << l;
                }
                nrt_dwr_tap *tap = taps + o * ntaps + i * g->KW + j;
                tap->idx = _mm512_loadu_si512(idx);
                tap->lo = (__mmask16)lo;
                tap->hi = (__mmask16)hi;
                tap->base = base;
            }
    return taps;
}

/* Output m's sums start as 0 + bias[m], as grouped_conv.h's (+0 for a bias of -0). */
static inline __m512 nrt_dwr_bias(const float *bias, ptrdiff_t m) {
    return _mm512_add_ps(_mm512_setzero_ps(), _mm512_set1_ps(bias ? bias[m] : 0.0f));
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

/* NC output planes m0 .. m0 + NC - 1 (of at most 16 outputs) of one image: x the image's
 * (C, H, W), w (M, KH, KW), bias (M,) or NULL, y the image's (M, OH, OW); mg outputs per group
 * (input channel m / mg). Planes of one input channel (mg > 1) share its permutes. */
static inline __attribute__((always_inline)) void
nrt_dwr_block(const nrt_gc_geom *g, const nrt_dwr_tap *taps, const float *x, const float *w,
              const float *bias, float *y, ptrdiff_t m0, const int NC, const int NV, const int ONE) {
    const ptrdiff_t HW = g->H * g->W, P = g->OH * g->OW, ntaps = g->KH * g->KW;
    const __mmask16 out_lanes = (__mmask16)((1u << P) - 1u);
    __m512 z[NRT_DWR_NC][4], acc[NRT_DWR_NC];
    int fresh[NRT_DWR_NC];                   /* plane k's input differs from plane k - 1's */
    for (int k = 0; k < NC; k++) {
        ptrdiff_t c = (m0 + k) / g->mg;
        fresh[k] = ONE || k == 0 || c != (m0 + k - 1) / g->mg;
        const float *xc = x + c * HW;
        for (int v = 0; v < NV; v++) {
            ptrdiff_t left = HW - 16 * v;
            __mmask16 in = left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
            z[k][v] = _mm512_maskz_loadu_ps(in, xc + 16 * v);
        }
        acc[k] = nrt_dwr_bias(bias, m0 + k);
    }
    for (ptrdiff_t tp = 0; tp < ntaps; tp++) {
        const nrt_dwr_tap *tap = taps + tp;
        __m512 xt = _mm512_setzero_ps();
        #pragma GCC unroll 4
        for (int k = 0; k < NC; k++) {
            if (ONE || fresh[k])
                xt = nrt_dwr_gather(tap, z[k], NV);
            acc[k] = _mm512_fmadd_ps(xt, _mm512_set1_ps(w[(m0 + k) * ntaps + tp]), acc[k]);
        }
    }
    for (int k = 0; k < NC; k++)
        _mm512_mask_storeu_ps(y + (m0 + k) * P, out_lanes, acc[k]);
}

/* The same for planes of 17-64 outputs: each plane copied once into an aligned buffer
 * (zeros past it), each output vector's tap a permute of the two vectors of its window. */
static inline __attribute__((always_inline)) void
nrt_dwr_block_windows(const nrt_gc_geom *g, const nrt_dwr_tap *taps, const float *x, const float *w,
                      const float *bias, float *y, ptrdiff_t m0, const int NC, const int ONE) {
    const ptrdiff_t HW = g->H * g->W, P = g->OH * g->OW, ntaps = g->KH * g->KW, nvo = (P + 15) / 16;
    float buf[NRT_DWR_NC][80] __attribute__((aligned(64)));
    int fresh[NRT_DWR_NC];
    for (int k = 0; k < NC; k++) {
        ptrdiff_t c = (m0 + k) / g->mg;
        fresh[k] = ONE || k == 0 || c != (m0 + k - 1) / g->mg;
        const float *xc = x + c * HW;
        for (int v = 0; v < 5; v++) {
            ptrdiff_t left = HW - 16 * v;
            __mmask16 in = left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
            _mm512_store_ps(buf[k] + 16 * v, _mm512_maskz_loadu_ps(in, xc + 16 * v));
        }
    }
    for (ptrdiff_t o = 0; o < nvo; o++) {
        __m512 acc[NRT_DWR_NC];
        for (int k = 0; k < NC; k++)
            acc[k] = nrt_dwr_bias(bias, m0 + k);
        const nrt_dwr_tap *row = taps + o * ntaps;
        for (ptrdiff_t tp = 0; tp < ntaps; tp++) {
            const nrt_dwr_tap *tap = row + tp;
            __m512 xt = _mm512_setzero_ps();
            #pragma GCC unroll 4
            for (int k = 0; k < NC; k++) {
                if (ONE || fresh[k]) {
                    const float *win = buf[k] + 16 * tap->base;
                    xt = _mm512_maskz_permutex2var_ps(tap->lo, _mm512_load_ps(win), tap->idx,
                                                      _mm512_load_ps(win + 16));
                }
                acc[k] = _mm512_fmadd_ps(xt, _mm512_set1_ps(w[(m0 + k) * ntaps + tp]), acc[k]);
            }
        }
        ptrdiff_t left = P - 16 * o;
        __mmask16 out = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
        for (int k = 0; k < NC; k++)
            _mm512_mask_storeu_ps(y + (m0 + k) * P + 16 * o, out, acc[k]);
    }
}

static inline __attribute__((always_inline)) void
nrt_dwr_planes_nv(const nrt_gc_geom *g, const nrt_dwr_tap *taps, const float *x, const float *w,
                  const float *bias, float *y, ptrdiff_t m0, ptrdiff_t nc, const int NV) {
    switch (nc) {
    case 4:
        if (g->mg == 1)             /* one plane per input channel: no test per tap */
            nrt_dwr_block(g, taps, x, w, bias, y, m0, 4, NV, 1);
        else
            nrt_dwr_block(g, taps, x, w, bias, y, m0, 4, NV, 0);
        break;
    case 3: nrt_dwr_block(g, taps, x, w, bias, y, m0, 3, NV, 0); break;
    case 2: nrt_dwr_block(g, taps, x, w, bias, y, m0, 2, NV, 0); break;
    default: nrt_dwr_block(g, taps, x, w, bias, y, m0, 1, NV, 0); break;
    }
}

/* One work item: output planes [m0, m0 + nc) (nc <= NRT_DWR_NC) of one image. */
static void nrt_dwr_planes(const nrt_gc_geom *g, const nrt_dwr_tap *taps, const float *x, const float *w,
                           const float *bias, float *y, ptrdiff_t m0, ptrdiff_t nc) {
    ptrdiff_t HW = g->H * g->W;
    if (g->OH * g->OW > 16) {
        switch (nc) {
        case 4:
            if (g->mg == 1)         /* one plane per input channel: no test per tap */
                nrt_dwr_block_windows(g, taps, x, w, bias, y, m0, 4, 1);
            else
                nrt_dwr_block_windows(g, taps, x, w, bias, y, m0, 4, 0);
            break;
        case 3: nrt_dwr_block_windows(g, taps, x, w, bias, y, m0, 3, 0); break;
        case 2: nrt_dwr_block_windows(g, taps, x, w, bias, y, m0, 2, 0); break;
        default: nrt_dwr_block_windows(g, taps, x, w, bias, y, m0, 1, 0); break;
        }
    } else if (HW <= 16) {
        nrt_dwr_planes_nv(g, taps, x, w, bias, y, m0, nc, 1);
    } else if (HW <= 32) {
        nrt_dwr_planes_nv(g, taps, x, w, bias, y, m0, nc, 2);
    } else {
        nrt_dwr_planes_nv(g, taps, x, w, bias, y, m0, nc, 4);
    }
}

#else
#define NRT_DWR_AVAILABLE 0
typedef struct { int unused; } nrt_dwr_tap;
#define NRT_DWR_NC 4
static inline int nrt_dwr_fits(const nrt_gc_geom *g) { (void)g; return 0; }
static inline nrt_dwr_tap *nrt_dwr_setup(const nrt_gc_geom *g, int *refused) { (void)g; *refused = 1; return NULL; }
static inline void nrt_dwr_planes(const nrt_gc_geom *g, const nrt_dwr_tap *taps, const float *x, const float *w,
                                  const float *bias, float *y, ptrdiff_t m0, ptrdiff_t nc) {
    (void)g; (void)taps; (void)x; (void)w; (void)bias; (void)y; (void)m0; (void)nc;
}
#endif

#endif
