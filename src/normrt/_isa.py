"""The x86-64 instruction-set levels normrt's kernels are compiled for, and
the choice among them at run time.

One fact in one place: setup.py loads this file (by path, without importing
normrt) for the compiler flags and package names of the levels it builds, and
the kernel loader (normrt._kernels) uses it to pick the level for this CPU.
Nothing here imports the rest of normrt.

The levels are the x86-64 psABI's micro-architecture levels (what GCC and
clang call -march=x86-64-v2 ...): each one a set of CPU features a program
may assume. `features` lists what normrt checks, in the names of
normrt._kernels._cpuid (Linux /proc/cpuinfo spelling).
"""
import os
import warnings

ENV_FORCE = "NORMRT_ISA"
# "0": bfloat16 stores round with integer operations even where the CPU has
# AVX-512 BF16's vcvtneps2bf16 (pyx/half.h reads it when a module loads)
ENV_BF16 = "NORMRT_BF16_INSTRUCTIONS"
BF16_STORES = ("avx512_bf16", "integer")

# (name, subpackage of normrt._kernels, compiler flag, required CPU features),
# lowest first. Each level includes the features of the levels below it.
_V2 = ("cx16", "lahf_lm", "popcnt", "sse3", "ssse3", "sse4_1", "sse4_2")
_V3 = _V2 + ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "osxsave")
_V4 = _V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")

LEVELS = (
    ("x86-64", "_x86_64", "-march=x86-64", ("sse", "sse2")),
    ("x86-64-v2", "_x86_64_v2", "-march=x86-64-v2", ("sse", "sse2") + _V2),
    ("x86-64-v3", "_x86_64_v3", "-march=x86-64-v3", ("sse", "sse2") + _V3),
    ("x86-64-v4", "_x86_64_v4", "-march=x86-64-v4", ("sse", "sse2") + _V4),
)
LEVEL_NAMES = tuple(name for name, *_ in LEVELS)

# What a dispatching build (pip install ., the wheel) compiles: the baseline
# runs on every x86-64 CPU, v3 is every x86 server since ~2015 (Haswell, Zen),
# v4 the AVX-512 ones. v2 adds little for these kernels (SSE4.1 blends and
# rounding) over the baseline, so it is not built by default: a v2 CPU runs
# the baseline kernels. NORMRT_BUILD_LEVELS lists others.
DEFAULT_BUILD = ("x86-64", "x86-64-v3", "x86-64-v4")

# A build made with NORMRT_NATIVE=1 (-march=native): one level whose required
# features are what the compiler assumed (written next to its modules by the
# build, see setup.py), ranked above the named levels when this CPU has them.
NATIVE = "native"
NATIVE_PACKAGE = "_native"
NATIVE_REQUIRES_FILE = "requires.txt"

# Preprocessor macros that -march=... defines, and the feature each one means
# (for the native build's requirement list).
MACRO_FEATURES = {
    "__SSE3__": "sse3", "__SSSE3__": "ssse3", "__SSE4_1__": "sse4_1",
    "__SSE4_2__": "sse4_2", "__POPCNT__": "popcnt", "__AVX__": "avx",
    "__AVX2__": "avx2", "__FMA__": "fma", "__F16C__": "f16c", "__BMI__": "bmi1",
    "__BMI2__": "bmi2", "__LZCNT__": "abm", "__MOVBE__": "movbe",
    "__AVX512F__": "avx512f", "__AVX512BW__": "avx512bw", "__AVX512CD__": "avx512cd",
    "__AVX512DQ__": "avx512dq", "__AVX512VL__": "avx512vl",
    "__AVX512VNNI__": "avx512_vnni", "__AVX512BF16__": "avx512_bf16",
    "__AVX512FP16__": "avx512_fp16", "__AVX512VBMI__": "avx512vbmi",
    "__AVX512VBMI2__": "avx512_vbmi2", "__AVX512BITALG__": "avx512_bitalg",
    "__AVX512VPOPCNTDQ__": "avx512_vpopcntdq", "__AVX512IFMA__": "avx512ifma",
    "__AVXVNNI__": "avx_vnni", "__GFNI__": "gfni", "__VAES__": "vaes",
    "__VPCLMULQDQ__": "vpclmulqdq", "__AMX_TILE__": "amx_tile",
}


# Not x86-64 (or a compiler without -march levels): one build with the
# compiler's default target, which needs nothing the CPU might lack.
GENERIC = "generic"
GENERIC_PACKAGE = "_generic"


def package_of(level):
    """The subpackage of normrt._kernels holding `level`'s modules."""
    if level == NATIVE:
        return NATIVE_PACKAGE
    if level == GENERIC:
        return GENERIC_PACKAGE
    for name, package, _, _ in LEVELS:
        if name == level:
            return package
    raise ValueError(f"unknown ISA level {level!r}; expected one of {', '.join(LEVEL_NAMES)}")


def march_flag(level):
    for name, _, flag, _ in LEVELS:
        if name == level:
            return flag
    raise ValueError(f"unknown ISA level {level!r}; expected one of {', '.join(LEVEL_NAMES)}")


def required_features(level):
    if level == GENERIC:
        return frozenset()
    for name, _, _, feats in LEVELS:
        if name == level:
            return frozenset(feats)
    raise ValueError(f"unknown ISA level {level!r}; expected one of {', '.join(LEVEL_NAMES)}")


def cpu_level(features):
    """The highest named level whose features are all in `features`, or None
    (not even the baseline: not an x86-64 CPU)."""
    best = None
    for name, _, _, feats in LEVELS:
        if features.issuperset(feats):
            best = name
    return best


def rank(level):
    """Order of levels: generic lowest, the named ones by index, native above them all."""
    if level == GENERIC:
        return -1
    return len(LEVELS) if level == NATIVE else LEVEL_NAMES.index(level)


def parse_forced(value):
    """The level NORMRT_ISA asks for (a name, 'native', or None when unset)."""
    value = (value or "").strip().lower()
    if not value:
        return None
    if value in LEVEL_NAMES or value in (NATIVE, GENERIC):
        return value
    raise ValueError(
        f"{ENV_FORCE}={value!r} is not an ISA level; expected one of "
        f"{', '.join(LEVEL_NAMES)}, {NATIVE!r} or {GENERIC!r}")


def choose(built, features, forced=None):
    """The level to run: the highest of `built` (level -> required features)
    that this CPU (`features`) supports and that is not above `forced`.

    A forced level the CPU lacks warns and falls back to the best it has; a
    forced level that was not built runs the best built level below it.
    """
    usable = [lv for lv, req in built.items() if features.issuperset(req)]
    if not usable:
        have = cpu_level(features) or "not x86-64"
        raise ImportError(
            f"normrt: none of the kernel builds in this install ({', '.join(sorted(built, key=rank))}) "
            f"runs on this CPU (level {have}); reinstall normrt from a wheel or source build "
            f"that includes the x86-64 baseline")
    if forced is not None:
        need = built.get(forced) if forced == NATIVE else required_features(forced)
        if forced == NATIVE and need is None:
            warnings.warn(
                f"normrt: {ENV_FORCE}=native but this install has no -march=native build "
                f"(NORMRT_NATIVE=1 at build time); using {max(usable, key=rank)}",
                RuntimeWarning, stacklevel=3)
        elif not features.issuperset(need):
            warnings.warn(
                f"normrt: {ENV_FORCE}={forced} needs CPU features this CPU lacks "
                f"({', '.join(sorted(need - features))}); using {max(usable, key=rank)} instead",
                RuntimeWarning, stacklevel=3)
        else:
            lower = [lv for lv in usable if rank(lv) <= rank(forced)]
            if lower:
                return max(lower, key=rank)
            warnings.warn(
                f"normrt: {ENV_FORCE}={forced} asks for a level below every build in this "
                f"install ({', '.join(sorted(built, key=rank))}); using {min(usable, key=rank)}",
                RuntimeWarning, stacklevel=3)
            return min(usable, key=rank)
    return max(usable, key=rank)


def forced_from_env():
    return parse_forced(os.environ.get(ENV_FORCE))


def parse_bf16_instructions(value):
    """Whether NORMRT_BF16_INSTRUCTIONS lets bfloat16 stores use vcvtneps2bf16:
    unset, "" or "1" yes (where the CPU has it), "0" no. pyx/half.h reads the
    same variable and only knows "0", so anything else is refused here, before
    a kernel module loads."""
    if value is None or value in ("", "1"):
        return True
    if value == "0":
        return False
    raise ValueError(f"{ENV_BF16}={value!r}: expected '0' (integer rounding for bfloat16 stores) "
                     f"or '1' (vcvtneps2bf16 where the CPU has AVX-512 BF16)")


def bf16_store(level_features, features, allowed=True):
    """How kernels built for a level assuming `level_features` (required_features,
    or a native build's list) round float32 to bfloat16 on a CPU with
    `features`: "avx512_bf16" (vcvtneps2bf16) where that code is AVX-512 (its
    modules carry the instruction behind a run-time check, pyx/half.h), the CPU
    has avx512_bf16 and `allowed` (parse_bf16_instructions); else "integer"."""
    avx512 = set(level_features) >= {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
    return BF16_STORES[0] if allowed and avx512 and "avx512_bf16" in features else BF16_STORES[1]
