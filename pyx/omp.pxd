# The only place normrt touches the OpenMP runtime. Every other kernel cimports
# from here, so a build without OpenMP (no -fopenmp, _OPENMP undefined) still
# compiles: the fallbacks below describe a single-threaded runtime.

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define NORMRT_HAVE_OPENMP 1
    /* which runtime the compiler links: GNU libgomp's team does not survive a fork */
    #if defined(__clang__)
    #define NORMRT_OPENMP_RUNTIME "libomp"
    #elif defined(__GNUC__)
    #define NORMRT_OPENMP_RUNTIME "libgomp"
    #elif defined(_MSC_VER)
    #define NORMRT_OPENMP_RUNTIME "vcomp"
    #else
    #define NORMRT_OPENMP_RUNTIME "unknown"
    #endif
    #else
    #define NORMRT_OPENMP_RUNTIME "none"
    #define NORMRT_HAVE_OPENMP 0
    static inline int omp_get_thread_num(void) { return 0; }
    static inline int omp_get_num_threads(void) { return 1; }
    static inline int omp_get_max_threads(void) { return 1; }
    static inline int omp_get_num_procs(void) { return 1; }
    #endif
    """
    const int NORMRT_HAVE_OPENMP
    const char* NORMRT_OPENMP_RUNTIME
    int omp_get_thread_num() noexcept nogil
    int omp_get_num_threads() noexcept nogil
    int omp_get_max_threads() noexcept nogil
    int omp_get_num_procs() noexcept nogil
