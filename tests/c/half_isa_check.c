/* pyx/half.h's vector paths (whichever this compile's -march enables) against
 * its portable scalar code: every float16/bfloat16 value widened, and 2^26
 * pseudo-random float32 bit patterns (plus a ragged tail) rounded, by the store
 * this module chose at load time and, for bfloat16, by each named path (the
 * integer vectors and, where the CPU has it, vcvtneps2bf16). NaN payloads are
 * not compared here (tests/test_half_precision.py compares them to ml_dtypes).
 * Prints the path the module chose, the bf16 paths it ran and the mismatch
 * count; exit status 1 on any. Built and run by tests/test_half_isa.py at each
 * x86-64 ISA level. */
#include <stdio.h>
#include "half.h"

int main(void) {
    static uint16_t h[65536], o1[4096], o2[4096];
    static float f1[65536], f2[65536], src[4096];
    long bad = 0;
    int bf16_paths = 0;
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
            nrt_half_store_portable(k, src, o2, n);
            nrt_half_store(k, src, o1, n);
            for (ptrdiff_t i = 0; i < n; i++)
                if (o1[i] != o2[i] && src[i] == src[i]) bad++;
            for (int path = 1; k == NRT_BF16 && path <= 2; path++) {
                if (nrt_bf16_store_path(path, src, o1, n) != 0)
                    continue;
                bf16_paths |= 1 << path;
                for (ptrdiff_t i = 0; i < n; i++)
                    if (o1[i] != o2[i] && src[i] == src[i]) bad++;
            }
        }
    }
    printf("%s %s %ld\n", nrt_half_isa(), bf16_paths & 4 ? "integer+instruction" : "integer", bad);
    return bad != 0;
}
