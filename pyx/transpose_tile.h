/* 8 x 8 blocks of a 2-D transpose in vector registers (pyx/transpose.pyx's tiles).
 *
 * Why: the tiled transpose copied each TILE x TILE block element by element through a tile in
 * L1 (four scalar moves per element): a (64, 1024) float32 -> (1024, 64) took 30 us on one
 * thread where a plain copy of the same bytes takes 7. Here a block of 8 source rows is
 * loaded as vectors, transposed by shuffles and stored as 8 destination rows. Shuffles move
 * bits, they compute nothing: the result is the scalar copy's, bit for bit (NaN payloads
 * included), at every ISA level.
 *
 *   4-byte words: AVX (x86-64-v3 and up): each 256-bit register holds half a row of two source
 *                 rows (i and i + 4, the second half inserted from memory), then two rounds of
 *                 in-lane unpack/shuffle: 16 shuffles per 64 elements. SSE2: four 4 x 4 blocks.
 *   2-byte words: SSE2: 8 rows of 8 half words, three rounds of unpacks (16-, 32-, 64-bit).
 *   Elsewhere (no SSE2, other word sizes): nrt_tr8_available() says 0 and the caller copies
 *   element by element.
 *
 * dst[r * ds + c] = src[c * ss + r] for r, c < 8: src's rows c (stride ss) hold the block's
 * columns, dst's rows r (stride ds) receive them.
 */
#ifndef NORMRT_TRANSPOSE_TILE_H
#define NORMRT_TRANSPOSE_TILE_H

#include <stddef.h>
#include <stdint.h>

#if defined(__SSE2__)
#include <immintrin.h>
#define NRT_TR8_SIMD 1
#else
#define NRT_TR8_SIMD 0
#endif

/* 1 when the 8 x 8 blocks of `word_size`-byte words run on vectors here. */
static inline int nrt_tr8_available(int word_size) {
    return NRT_TR8_SIMD && (word_size == 4 || word_size == 2);
}

#if NRT_TR8_SIMD

static inline void nrt_tr8_u32(const uint32_t *src, ptrdiff_t ss, uint32_t *dst, ptrdiff_t ds) {
#if defined(__AVX__)
    const float *s = (const float *)src;
    float *d = (float *)dst;
    /* t[i] = columns 0-3 of source rows i | i + 4; t[4 + i] = columns 4-7 of the same rows */
    __m256 t[8];
    for (int i = 0; i < 4; i++) {
        t[i] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(s + i * ss)), _mm_loadu_ps(s + (i + 4) * ss), 1);
        t[4 + i] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(s + i * ss + 4)),
                                        _mm_loadu_ps(s + (i + 4) * ss + 4), 1);
    }
    for (int h = 0; h < 2; h++) {
        const __m256 *q = t + 4 * h;
        __m256 u0 = _mm256_unpacklo_ps(q[0], q[1]), u1 = _mm256_unpackhi_ps(q[0], q[1]);
        __m256 u2 = _mm256_unpacklo_ps(q[2], q[3]), u3 = _mm256_unpackhi_ps(q[2], q[3]);
        float *o = d + 4 * h * ds;
        _mm256_storeu_ps(o, _mm256_shuffle_ps(u0, u2, 0x44));
        _mm256_storeu_ps(o + ds, _mm256_shuffle_ps(u0, u2, 0xEE));
        _mm256_storeu_ps(o + 2 * ds, _mm256_shuffle_ps(u1, u3, 0x44));
        _mm256_storeu_ps(o + 3 * ds, _mm256_shuffle_ps(u1, u3, 0xEE));
    }
#else
    for (int bc = 0; bc < 8; bc += 4)
        for (int br = 0; br < 8; br += 4) {
            const float *s = (const float *)src + bc * ss + br;
            __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + ss), r2 = _mm_loadu_ps(s + 2 * ss),
                   r3 = _mm_loadu_ps(s + 3 * ss);
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
            float *o = (float *)dst + br * ds + bc;
            _mm_storeu_ps(o, r0);
            _mm_storeu_ps(o + ds, r1);
            _mm_storeu_ps(o + 2 * ds, r2);
            _mm_storeu_ps(o + 3 * ds, r3);
        }
#endif
}

static inline void nrt_tr8_u16(const uint16_t *src, ptrdiff_t ss, uint16_t *dst, ptrdiff_t ds) {
    __m128i r[8], a[8], b[8];
    for (int i = 0; i < 8; i++)
        r[i] = _mm_loadu_si128((const __m128i *)(src + i * ss));
    for (int i = 0; i < 4; i++) {           /* (r[2i], r[2i+1]) interleaved by 16 bits */
        a[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++)             /* pairs of pairs, by 32 bits */
        for (int j = 0; j < 2; j++) {
            b[4 * i + 2 * j] = _mm_unpacklo_epi32(a[4 * i + j], a[4 * i + 2 + j]);
            b[4 * i + 2 * j + 1] = _mm_unpackhi_epi32(a[4 * i + j], a[4 * i + 2 + j]);
        }
    for (int k = 0; k < 4; k++) {           /* the two halves of the block, by 64 bits */
        _mm_storeu_si128((__m128i *)(dst + (2 * k) * ds), _mm_unpacklo_epi64(b[k], b[4 + k]));
        _mm_storeu_si128((__m128i *)(dst + (2 * k + 1) * ds), _mm_unpackhi_epi64(b[k], b[4 + k]));
    }
}

#else

static inline void nrt_tr8_u32(const uint32_t *src, ptrdiff_t ss, uint32_t *dst, ptrdiff_t ds) {
    for (int r = 0; r < 8; r++)
        for (int c = 0; c < 8; c++)
            dst[r * ds + c] = src[c * ss + r];
}

static inline void nrt_tr8_u16(const uint16_t *src, ptrdiff_t ss, uint16_t *dst, ptrdiff_t ds) {
    for (int r = 0; r < 8; r++)
        for (int c = 0; c < 8; c++)
            dst[r * ds + c] = src[c * ss + r];
}

#endif

#endif
