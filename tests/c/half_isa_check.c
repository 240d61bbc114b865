/* pyx/half.h's vector paths (whichever this compile's -march enables) against
 * its portable scalar code: every float16/bfloat16 value widened, and 2^26
 * pseudo-random float32 bit patterns (plus a ragged tail) rounded. NaN payloads
 * are not compared. Prints the path and the mismatch count; exit status 1 on any.
 * Built and run by tests/test_half_isa.py at each x86-64 ISA level. */
#include <stdio.h>
#include "half.h"

int main(void) {
    static uint16_t h[65536], o1[4096], o2[4096];
    static float f1[65536], f2[65536], src[4096];
    long bad = 0;
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
        nrt_half_load(k, h, f1, 65536);
        nrt_half_load_portable(k, h, f2, 65536);
        for (int i = 0; i < 65536; i++) {
            int nan = f1[i] != f1[i] && f2[i] != f2[i];
            if (nrt_f32_bits(f1[i]) != nrt_f32_bits(f2[i]) && !nan) bad++;
        }
        uint32_t u = 12345u;
        for (long rep = 0; rep < (1L << 26) / 4096; rep++) {
            for (int i = 0; i < 4096; i++) {
                u = u * 1664525u + 1013904223u;
                src[i] = nrt_bits_f32(u);
            }
            ptrdiff_t n = 4096 - (rep % 17);
            nrt_half_store(k, src, o1, n);
            nrt_half_store_portable(k, src, o2, n);
            for (ptrdiff_t i = 0; i < n; i++)
                if (o1[i] != o2[i] && src[i] == src[i]) bad++;
        }
    }
    printf("%s %ld\n", nrt_half_isa(), bad);
    return bad != 0;
}
