/* pyx/norm_vec.h's SiLU epilogue (nrt_silu) against its definition,
 * v / (1 + nrt_exp_f(-v)): the same 32 bits for every float32 bit pattern
 * visited (NaN payloads included). Usage: silu_check [STRIDE]: patterns
 * 0, STRIDE, 2*STRIDE, ... (each with its 15 neighbours, one vector); STRIDE 16,
 * the default, is all 2^32. tests/test_half_isa.py runs it with a large stride;
 * the full sweep takes a few seconds of one core. Prints the patterns compared
 * and the mismatches; exit status 1 on any. Needs AVX-512 (-march=x86-64-v4). */
#include <stdio.h>
#include <stdlib.h>
#include "norm_vec.h"

#if !NRT_HAVE_NORM_VEC
#error "compile with -march=x86-64-v4: nrt_silu is the AVX-512 epilogue"
#endif

static __m512 silu_by_definition(__m512 v) {
    __m512 neg = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000)));
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), nrt_exp_f(neg)));
}

int main(int argc, char** argv) {
    unsigned long long stride = argc > 1 ? strtoull(argv[1], NULL, 10) : 16, b, seen = 0, bad = 0;
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    if (stride < 16 || stride % 16) {
        fprintf(stderr, "STRIDE must be a multiple of 16\n");
        return 2;
    }
    for (b = 0; b < (1ULL << 32); b += stride) {
        __m512 v = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_set1_epi32((int)(unsigned)b), lane));
        __mmask16 ne = _mm512_cmpneq_epi32_mask(_mm512_castps_si512(nrt_silu(v)),
                                                _mm512_castps_si512(silu_by_definition(v)));
        bad += (unsigned)__builtin_popcount(ne);
        seen += 16;
    }
    printf("%llu %llu\n", seen, bad);
    return bad != 0;
}
