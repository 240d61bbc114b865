/* One tap's row of columns added onto an output row at a stride (pyx/conv_transpose.pyx):
 * y[i * stride] += r[i] for i < n.
 *
 * Why: a stride-2 transposed conv (a UNet's or a GAN's 2x upsampling) spends its col2im in
 * this loop, which GCC leaves scalar (a strided store): (1, 128, 64, 64) k2 s2, 64 planes of
 * 128 x 128, took 715 us on one thread. With AVX-512, 16 inputs are spread over the even
 * lanes of two output vectors (vexpandps) and added there only (a masked add: the odd
 * lanes, another tap's, keep their bits, -0.0 included), the same one addition per output
 * as the scalar loop: the same bits. Other strides and ISA levels: the scalar loop.
 */
#ifndef NORMRT_COL2IM_ROW_H
#define NORMRT_COL2IM_ROW_H

#include <stddef.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

static inline void nrt_col2im_row(float *y, const float *r, ptrdiff_t n, ptrdiff_t stride) {
    ptrdiff_t i = 0;
    if (stride == 1) {
        for (; i < n; i++)
            y[i] += r[i];
        return;
    }
#if defined(__AVX512F__)
    if (stride == 2) {
        const __mmask16 even = (__mmask16)0x5555;
        /* i + 17 <= n: the second vector's last lane, y[2i + 31], is then before y[2(n - 1)],
           the row's last output, so no store touches memory past it (the next plane may be
           another thread's) */
        for (; i + 17 <= n; i += 16) {
            __m512 v = _mm512_loadu_ps(r + i);
            __m512 lo = _mm512_maskz_expand_ps(even, v);                                   /* r[i .. i+7] */
            __m512 hi = _mm512_maskz_expand_ps(even, _mm512_shuffle_f32x4(v, v, 0xEE));    /* r[i+8 .. i+15] */
            float *o = y + 2 * i;
            __m512 y0 = _mm512_loadu_ps(o), y1 = _mm512_loadu_ps(o + 16);
            _mm512_storeu_ps(o, _mm512_mask_add_ps(y0, even, y0, lo));
            _mm512_storeu_ps(o + 16, _mm512_mask_add_ps(y1, even, y1, hi));
        }
    }
#endif
    for (; i < n; i++)
        y[i * stride] += r[i];
}

#endif
