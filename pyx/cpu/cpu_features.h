/* Which x86 instruction-set features this CPU has *and the OS enables*,
   from cpuid (and xgetbv for the register state the OS saves).

   Compiled at the x86-64 baseline (no -march): it must run on the oldest CPU
   to tell normrt which kernel build to load. Names follow Linux /proc/cpuinfo.

   An AVX or AVX-512 feature counts only when the OS saves the wider registers
   on a context switch (XCR0 bits); otherwise the first vector instruction
   would fault, exactly what the dispatch exists to avoid. */
#ifndef NRT_CPU_FEATURES_H
#define NRT_CPU_FEATURES_H

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define NRT_CPU_X86 1
#else
#define NRT_CPU_X86 0
#endif

enum { NRT_EAX = 0, NRT_EBX = 1, NRT_ECX = 2, NRT_EDX = 3 };

/* XCR0 state bits a feature needs: SSE|AVX (0x6), + opmask/ZMM (0xE0), + AMX (0x60000) */
#define NRT_XS_AVX 0x6ULL
#define NRT_XS_AVX512 0xE6ULL
#define NRT_XS_AMX 0x60006ULL

typedef struct {
    const char* name;
    unsigned int leaf, subleaf;
    int reg, bit;
    unsigned long long xstate;
} nrt_cpu_feature;

static const nrt_cpu_feature nrt_cpu_table[] = {
    {"sse", 1, 0, NRT_EDX, 25, 0}, {"sse2", 1, 0, NRT_EDX, 26, 0},
    {"sse3", 1, 0, NRT_ECX, 0, 0}, {"ssse3", 1, 0, NRT_ECX, 9, 0},
    {"fma", 1, 0, NRT_ECX, 12, NRT_XS_AVX}, {"cx16", 1, 0, NRT_ECX, 13, 0},
    {"sse4_1", 1, 0, NRT_ECX, 19, 0}, {"sse4_2", 1, 0, NRT_ECX, 20, 0},
    {"movbe", 1, 0, NRT_ECX, 22, 0}, {"popcnt", 1, 0, NRT_ECX, 23, 0},
    {"osxsave", 1, 0, NRT_ECX, 27, 0}, {"avx", 1, 0, NRT_ECX, 28, NRT_XS_AVX},
    {"f16c", 1, 0, NRT_ECX, 29, NRT_XS_AVX},
    {"lahf_lm", 0x80000001u, 0, NRT_ECX, 0, 0}, {"abm", 0x80000001u, 0, NRT_ECX, 5, 0},
    {"bmi1", 7, 0, NRT_EBX, 3, 0}, {"avx2", 7, 0, NRT_EBX, 5, NRT_XS_AVX},
    {"bmi2", 7, 0, NRT_EBX, 8, 0},
    {"avx512f", 7, 0, NRT_EBX, 16, NRT_XS_AVX512}, {"avx512dq", 7, 0, NRT_EBX, 17, NRT_XS_AVX512},
    {"avx512ifma", 7, 0, NRT_EBX, 21, NRT_XS_AVX512}, {"avx512cd", 7, 0, NRT_EBX, 28, NRT_XS_AVX512},
    {"avx512bw", 7, 0, NRT_EBX, 30, NRT_XS_AVX512}, {"avx512vl", 7, 0, NRT_EBX, 31, NRT_XS_AVX512},
    {"avx512vbmi", 7, 0, NRT_ECX, 1, NRT_XS_AVX512}, {"avx512_vbmi2", 7, 0, NRT_ECX, 6, NRT_XS_AVX512},
    {"gfni", 7, 0, NRT_ECX, 8, 0}, {"vaes", 7, 0, NRT_ECX, 9, NRT_XS_AVX},
    {"vpclmulqdq", 7, 0, NRT_ECX, 10, NRT_XS_AVX}, {"avx512_vnni", 7, 0, NRT_ECX, 11, NRT_XS_AVX512},
    {"avx512_bitalg", 7, 0, NRT_ECX, 12, NRT_XS_AVX512},
    {"avx512_vpopcntdq", 7, 0, NRT_ECX, 14, NRT_XS_AVX512},
    {"amx_bf16", 7, 0, NRT_EDX, 22, NRT_XS_AMX}, {"avx512_fp16", 7, 0, NRT_EDX, 23, NRT_XS_AVX512},
    {"amx_tile", 7, 0, NRT_EDX, 24, NRT_XS_AMX}, {"amx_int8", 7, 0, NRT_EDX, 25, NRT_XS_AMX},
    {"avx_vnni", 7, 1, NRT_EAX, 4, NRT_XS_AVX}, {"avx512_bf16", 7, 1, NRT_EAX, 5, NRT_XS_AVX512},
};

#define NRT_CPU_NFEATURES ((int)(sizeof(nrt_cpu_table) / sizeof(nrt_cpu_table[0])))

static inline const char* nrt_cpu_feature_name(int i) { return nrt_cpu_table[i].name; }

#if NRT_CPU_X86
static inline unsigned long long nrt_xcr0(void) {
    unsigned int lo, hi;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));  /* xgetbv */
    return ((unsigned long long)hi << 32) | lo;
}
#endif

/* has[i] = 1 when feature i is present and usable; returns the count found */
static inline int nrt_cpu_detect(unsigned char* has) {
    int i, n = 0;
    memset(has, 0, NRT_CPU_NFEATURES);
#if NRT_CPU_X86
    unsigned int r[4], max_basic = __get_cpuid_max(0, 0), max_ext = __get_cpuid_max(0x80000000u, 0);
    unsigned int ecx1 = 0, dummy;
    unsigned long long xcr0 = 0;
    if (max_basic >= 1) {
        __cpuid(1, dummy, dummy, ecx1, dummy);
        if (ecx1 & (1u << 27))   /* OSXSAVE: xgetbv is allowed */
            xcr0 = nrt_xcr0();
    }
    for (i = 0; i < NRT_CPU_NFEATURES; i++) {
        const nrt_cpu_feature* f = &nrt_cpu_table[i];
        unsigned int max = f->leaf >= 0x80000000u ? max_ext : max_basic;
        if (f->leaf > max)
            continue;
        if (f->leaf == 7 && f->subleaf > 0) {
            __cpuid_count(7, 0, r[0], r[1], r[2], r[3]);
            if (r[0] < f->subleaf)   /* leaf 7's EAX: the highest subleaf */
                continue;
        }
        __cpuid_count(f->leaf, f->subleaf, r[0], r[1], r[2], r[3]);
        if (!(r[f->reg] & (1u << f->bit)))
            continue;
        if ((xcr0 & f->xstate) != f->xstate)
            continue;
        has[i] = 1;
        n++;
    }
#else
    (void)i;
#endif
    return n;
}

/* the 48-character brand string ("AMD EPYC ...", "Intel(R) Xeon(R) ..."), or "" */
static inline void nrt_cpu_brand(char* out /* 49 bytes */) {
    memset(out, 0, 49);
#if NRT_CPU_X86
    unsigned int r[4], leaf;
    if (__get_cpuid_max(0x80000000u, 0) < 0x80000004u)
        return;
    for (leaf = 0; leaf < 3; leaf++) {
        __cpuid(0x80000002u + leaf, r[0], r[1], r[2], r[3]);
        memcpy(out + 16 * leaf, r, 16);
    }
#endif
}

#endif
