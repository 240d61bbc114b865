"""This CPU's instruction-set features (cpuid), for normrt's kernel loader.

Built once, at the x86-64 baseline, outside the per-level kernel builds: it
runs before normrt knows which of those this CPU can execute.
"""

cdef extern from "cpu_features.h":
    const int NRT_CPU_NFEATURES
    const int NRT_CPU_X86
    const char* nrt_cpu_feature_name(int i)
    int nrt_cpu_detect(unsigned char* has)
    void nrt_cpu_brand(char* out)


def features():
    """The features this CPU has and the OS enables, as a frozenset of names."""
    cdef unsigned char has[256]
    cdef int i
    if NRT_CPU_NFEATURES > 256:
        raise RuntimeError("cpu feature table larger than its buffer")
    nrt_cpu_detect(has)
    return frozenset(nrt_cpu_feature_name(i).decode() for i in range(NRT_CPU_NFEATURES) if has[i])


def known_features():
    """Every feature name this module can detect."""
    return tuple(nrt_cpu_feature_name(i).decode() for i in range(NRT_CPU_NFEATURES))


def brand():
    """The CPU's brand string, e.g. 'AMD EPYC 9654 96-Core Processor' ('' if none)."""
    cdef char buf[49]
    nrt_cpu_brand(buf)
    return buf[:48].split(b"\0", 1)[0].decode("ascii", "replace").strip()


def is_x86():
    return bool(NRT_CPU_X86)
