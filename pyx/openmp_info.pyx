"""What the build holds: whether the kernels were compiled with OpenMP."""
from omp cimport NORMRT_HAVE_OPENMP, NORMRT_OPENMP_RUNTIME, omp_get_max_threads, omp_get_num_procs


def openmp_enabled():
    """True when the kernels were built with OpenMP (parallel), False for the serial build."""
    return bool(NORMRT_HAVE_OPENMP)


def openmp_max_threads():
    """The OpenMP runtime's own default team size (1 in the serial build)."""
    return omp_get_max_threads()


def openmp_num_procs():
    return omp_get_num_procs()


def openmp_runtime():
    """The OpenMP runtime the kernels were built for: "libgomp" (GCC), "libomp"
    (clang), "vcomp" (MSVC), "unknown", or "none" in the serial build."""
    return NORMRT_OPENMP_RUNTIME.decode()
