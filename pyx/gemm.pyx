"""Packed float32 GEMM and the 2-D convolution on top of it.

C[M, N] = act(A[M, K] @ B[K, N] + bias + residual), BLIS style: B is packed
into K-blocked column panels of NR floats, A into row panels of MR floats, and
a register-blocked MR x NR micro-kernel (C below, vector extensions) runs over
the panels. A constant operand (conv weights: A; a MatMul weight: B) is packed
once by pack_a / pack_b and passed back on every call.

The convolution is C = W (M x C*kh*kw) @ im2col(x[n]) with the B panels packed
straight from the image (implicit im2col: stride, padding and dilation are
applied while packing, padding written as zeros), one image and group at a time.
Stride-1 convs compute on the padded width instead (see use_wide): there a B
row is NR contiguous floats of the zero-padded image, read in place.

Determinism: every output element is one micro-kernel lane whose K sum runs
k = 0..K-1 in order, in fixed KC blocks added to C in order; threads only
split M/N panel ranges. So results never depend on the thread count.

Threads: a call is cut into jobs (panel ranges x images x groups) that the
calling thread and the job pool's workers take one at a time (see the pool
below for why not an OpenMP region); problems under PARALLEL_MIN_FLOPS run on
the caller alone. NORMRT_POOL_SPIN_US (default 400) is how long an idle
worker spins for the next call before it sleeps.

Python (normrt.api.gemm / normrt.api.conv) checks every argument; these
kernels trust them (sizes are re-checked here, cheaply).
"""
from cython.parallel cimport prange

from omp cimport omp_get_thread_num
from moments cimport activate_span

cdef extern from *:
    """
    #include <string.h>
    /* Register block and vector type per target. Every path runs the same
       instruction sequence for a given element whatever the thread count. */
    #if defined(__AVX512F__)
      #include <immintrin.h>
      #define NRT_VW 16
      #define NRT_MR 8
      typedef float nrt_v __attribute__((vector_size(64)));
      typedef float nrt_vu __attribute__((vector_size(64), aligned(4)));
      #define NRT_FMA(a, b, c) ((nrt_v)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
      #define NRT_BCAST(s) ((nrt_v)_mm512_set1_ps(s))
      #define NRT_ISA "avx512"
    #elif defined(__AVX2__) && defined(__FMA__)
      #include <immintrin.h>
      #define NRT_VW 8
      #define NRT_MR 6
      typedef float nrt_v __attribute__((vector_size(32)));
      typedef float nrt_vu __attribute__((vector_size(32), aligned(4)));
      #define NRT_FMA(a, b, c) ((nrt_v)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
      #define NRT_BCAST(s) ((nrt_v)_mm256_set1_ps(s))
      #define NRT_ISA "avx2"
    #else
      /* generic: plain multiply and add (no contraction: -ffp-contract=off) */
      #define NRT_VW 4
      #define NRT_MR 6
      typedef float nrt_v __attribute__((vector_size(16)));
      typedef float nrt_vu __attribute__((vector_size(16), aligned(4)));
      #define NRT_FMA(a, b, c) ((a) * (b) + (c))
      #define NRT_BCAST(s) ((nrt_v){(s), (s), (s), (s)})
      #define NRT_ISA "generic"
    #endif
    #define NRT_NR (2 * NRT_VW)

    /* d[0:NR] = s[0:NR], two vector moves (packing hot loop: no memcpy call) */
    static inline void nrt_copy_nr(float* restrict d, const float* restrict s)
    {
        *(nrt_vu*)d = *(const nrt_vu*)s;
        *(nrt_vu*)(d + NRT_VW) = *(const nrt_vu*)(s + NRT_VW);
    }

    #define NRT_FIRST 1
    #define NRT_LAST 2

    /* c[MR, NR] (row stride ldc) = (first ? 0 : c) + a_panel @ b_panel, then on
       the last K block + bias_row[i] + bias_col[j] + res[i, j] (each optional).
       a: kc x MR (k-major); b: kc x NR (k-major), or with boff its row p is
       the NR floats at b + boff[p] (a stride-1 conv's B read straight from the
       padded image: no packed copy). Same arithmetic either way. */
    static inline __attribute__((always_inline)) void
    nrt_kernel_body(long kc, const float* restrict a, const float* restrict b,
                    const Py_ssize_t* restrict boff, float* restrict c, long ldc, int flags,
                    const float* restrict bias_row, const float* restrict bias_col,
                    const float* restrict res, long ldr)
    {
        nrt_v acc[NRT_MR][2];
        int i;
        long p;
        for (i = 0; i < NRT_MR; i++) {
            acc[i][0] = NRT_BCAST(0.0f);
            acc[i][1] = NRT_BCAST(0.0f);
        }
        #pragma GCC unroll 2
        for (p = 0; p < kc; p++) {
            const float* bp = boff ? b + boff[p] : b + p * NRT_NR;
            nrt_v b0 = *(const nrt_vu*)bp;
            nrt_v b1 = *(const nrt_vu*)(bp + NRT_VW);
            #pragma GCC unroll 16
            for (i = 0; i < NRT_MR; i++) {
                nrt_v ai = NRT_BCAST(a[p * NRT_MR + i]);
                acc[i][0] = NRT_FMA(ai, b0, acc[i][0]);
                acc[i][1] = NRT_FMA(ai, b1, acc[i][1]);
            }
        }
        #pragma GCC unroll 16
        for (i = 0; i < NRT_MR; i++) {
            nrt_v v0 = acc[i][0], v1 = acc[i][1];
            float* cp = c + i * ldc;
            if (!(flags & NRT_FIRST)) {
                v0 = *(nrt_vu*)cp + v0;
                v1 = *(nrt_vu*)(cp + NRT_VW) + v1;
            }
            if (flags & NRT_LAST) {
                if (bias_row) {
                    nrt_v s = NRT_BCAST(bias_row[i]);
                    v0 = v0 + s;
                    v1 = v1 + s;
                }
                if (bias_col) {
                    v0 = v0 + *(const nrt_vu*)bias_col;
                    v1 = v1 + *(const nrt_vu*)(bias_col + NRT_VW);
                }
                if (res) {
                    v0 = v0 + *(const nrt_vu*)(res + i * ldr);
                    v1 = v1 + *(const nrt_vu*)(res + i * ldr + NRT_VW);
                }
            }
            *(nrt_vu*)cp = v0;
            *(nrt_vu*)(cp + NRT_VW) = v1;
        }
    }

    static void nrt_kernel(long kc, const float* restrict a, const float* restrict b,
                           float* restrict c, long ldc, int flags,
                           const float* restrict bias_row, const float* restrict bias_col,
                           const float* restrict res, long ldr)
    {
        nrt_kernel_body(kc, a, b, NULL, c, ldc, flags, bias_row, bias_col, res, ldr);
    }

    /* The transposed conv's tile: c[MR, NR] = (first ? 0 : c) + A @ b_panel (+
       bias_col on the last K block) with A read in place: A[i, p] = x[koff[p] +
       off[i]] (pixel i's offset, tap/channel p's offset), b as in nrt_kernel.
       Each lane's K sum runs in the same order as nrt_kernel's. */
    static inline __attribute__((always_inline)) void
    nrt_kernel_t_body(const int rows, const int contiguous, long kc, const float* restrict x,
                      const Py_ssize_t* restrict koff, const Py_ssize_t* restrict off,
                      const float* restrict b, float* restrict c, long ldc, int flags,
                      const float* restrict bias_col)
    {
        nrt_v acc[NRT_MR][2];
        Py_ssize_t o[NRT_MR];
        int i;
        long p;
        for (i = 0; i < rows; i++) {
            o[i] = off[i];
            acc[i][0] = NRT_BCAST(0.0f);
            acc[i][1] = NRT_BCAST(0.0f);
        }
        #pragma GCC unroll 2
        for (p = 0; p < kc; p++) {
            const float* xp = x + koff[p] + (contiguous ? o[0] : 0);
            nrt_v b0 = *(const nrt_vu*)(b + p * NRT_NR);
            nrt_v b1 = *(const nrt_vu*)(b + p * NRT_NR + NRT_VW);
            #pragma GCC unroll 16
            for (i = 0; i < rows; i++) {
                nrt_v ai = NRT_BCAST(contiguous ? xp[i] : xp[o[i]]);
                acc[i][0] = NRT_FMA(ai, b0, acc[i][0]);
                acc[i][1] = NRT_FMA(ai, b1, acc[i][1]);
            }
        }
        #pragma GCC unroll 16
        for (i = 0; i < rows; i++) {
            nrt_v v0 = acc[i][0], v1 = acc[i][1];
            float* cp = c + i * ldc;
            if (!(flags & NRT_FIRST)) {
                v0 = *(nrt_vu*)cp + v0;
                v1 = *(nrt_vu*)(cp + NRT_VW) + v1;
            }
            if ((flags & NRT_LAST) && bias_col) {
                v0 = v0 + *(const nrt_vu*)bias_col;
                v1 = v1 + *(const nrt_vu*)(bias_col + NRT_VW);
            }
            *(nrt_vu*)cp = v0;
            *(nrt_vu*)(cp + NRT_VW) = v1;
        }
    }

    /* one copy per row count (noinline: inlined, GCC spills its 15 live pointers);
       MR - 1 rows for pixel counts it divides better (7x7 = 49: 7 rows of 7) */
    __attribute__((noinline)) static void
    nrt_kernel_t(long kc, const float* restrict x, const Py_ssize_t* restrict koff,
                 const Py_ssize_t* restrict off, const float* restrict b, float* restrict c,
                 long ldc, int flags, const float* restrict bias_col)
    {
        nrt_kernel_t_body(NRT_MR, 0, kc, x, koff, off, b, c, ldc, flags, bias_col);
    }

    __attribute__((noinline)) static void
    nrt_kernel_t1(long kc, const float* restrict x, const Py_ssize_t* restrict koff,
                  const Py_ssize_t* restrict off, const float* restrict b, float* restrict c,
                  long ldc, int flags, const float* restrict bias_col)
    {
        nrt_kernel_t_body(NRT_MR - 1, 0, kc, x, koff, off, b, c, ldc, flags, bias_col);
    }

    /* pixels off[0] + i (a 1x1 conv's whole panel): fixed displacements, no
       offset registers */
    __attribute__((noinline)) static void
    nrt_kernel_tc(long kc, const float* restrict x, const Py_ssize_t* restrict koff,
                  const Py_ssize_t* restrict off, const float* restrict b, float* restrict c,
                  long ldc, int flags, const float* restrict bias_col)
    {
        nrt_kernel_t_body(NRT_MR, 1, kc, x, koff, off, b, c, ldc, flags, bias_col);
    }

    __attribute__((noinline)) static void
    nrt_kernel_tc1(long kc, const float* restrict x, const Py_ssize_t* restrict koff,
                   const Py_ssize_t* restrict off, const float* restrict b, float* restrict c,
                   long ldc, int flags, const float* restrict bias_col)
    {
        nrt_kernel_t_body(NRT_MR - 1, 1, kc, x, koff, off, b, c, ldc, flags, bias_col);
    }

    static void nrt_kernel_off(long kc, const float* restrict a, const float* restrict b,
                               const Py_ssize_t* restrict boff, float* restrict c, long ldc,
                               int flags, const float* restrict bias_row)
    {
        nrt_kernel_body(kc, a, b, boff, c, ldc, flags, bias_row, NULL, NULL, 0);
    }
    """
    const int MR "NRT_MR"
    const int NR "NRT_NR"
    const int K_FIRST "NRT_FIRST"
    const int K_LAST "NRT_LAST"
    const char* NRT_ISA
    void nrt_copy_nr(float* d, const float* s) noexcept nogil
    void nrt_prefetch_l2 "__builtin_prefetch"(const void* p, int rw, int locality) noexcept nogil
    void nrt_kernel(long kc, const float* a, const float* b, float* c, long ldc, int flags,
                    const float* bias_row, const float* bias_col, const float* res, long ldr) noexcept nogil
    void nrt_kernel_t(long kc, const float* x, const Py_ssize_t* koff, const Py_ssize_t* off,
                      const float* b, float* c, long ldc, int flags, const float* bias_col) noexcept nogil
    void nrt_kernel_tc(long kc, const float* x, const Py_ssize_t* koff, const Py_ssize_t* off,
                       const float* b, float* c, long ldc, int flags, const float* bias_col) noexcept nogil
    void nrt_kernel_tc1(long kc, const float* x, const Py_ssize_t* koff, const Py_ssize_t* off,
                        const float* b, float* c, long ldc, int flags, const float* bias_col) noexcept nogil
    void nrt_kernel_t1(long kc, const float* x, const Py_ssize_t* koff, const Py_ssize_t* off,
                       const float* b, float* c, long ldc, int flags, const float* bias_col) noexcept nogil
    void nrt_kernel_off(long kc, const float* a, const float* b, const Py_ssize_t* boff, float* c,
                        long ldc, int flags, const float* bias_row) noexcept nogil

from libc.string cimport memcpy, memset

# ---- the job pool ---------------------------------------------------------------
# Why not an OpenMP parallel region: its closing barrier waits for every thread
# of the team to arrive, so one worker that has not been scheduled yet (its core
# busy with another process, or with another runtime's spinning pool threads:
# onnxruntime's, right after its run) stalls the whole call for a scheduler slice
# - measured ~2x on ResNet-50 run right after onnxruntime. Here the caller works
# through the jobs too and waits only for jobs a worker has actually taken;
# a worker that wakes late finds none left. Which thread runs a job never
# changes its result (jobs write disjoint outputs with fixed arithmetic).
# POSIX threads; elsewhere (NRT_HAVE_POOL 0) the OpenMP loop below is used.
cdef extern from *:
    """
    #if defined(__unix__) || defined(__APPLE__)
    #include <pthread.h>
    #include <sched.h>
    #define NRT_HAVE_POOL 1
    #define NRT_MAX_WORKERS 63
    typedef void (*nrt_job_fn)(void* ctx, long job, int slot);

    static struct {
        pthread_mutex_t dispatch;     /* one batch at a time (else: run it serially) */
        pthread_mutex_t sleep_mu;
        pthread_cond_t wake;
        int started;                  /* workers created so far */
        long gen;                     /* even: batch published; odd: being written */
        long active;                  /* workers looking at the current batch */
        long sleeping;
        nrt_job_fn fn;
        void* ctx;
        long njobs;
        int slots;                    /* workers with slot >= slots sit this batch out */
        long next;                    /* next job to take */
        long done;                    /* jobs finished */
    } nrt_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

    #include <time.h>
    /* a worker waits this long for the next batch, spinning, before it sleeps:
       back-to-back kernel calls (a model's convs) find it awake - waking a
       sleeping thread can take longer than a whole conv on a VM */
    #include <stdlib.h>
    #define NRT_SPIN_NS 400000L
    static long nrt_spin_ns = NRT_SPIN_NS;     /* NORMRT_POOL_SPIN_US overrides it */

    static inline long nrt_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
    }

    static inline void nrt_pause(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #endif
    }

    static void nrt_run_jobs(nrt_job_fn fn, void* ctx, long njobs, int slot) {
        long j;
        while ((j = __atomic_fetch_add(&nrt_pool.next, 1, __ATOMIC_SEQ_CST)) < njobs) {
            fn(ctx, j, slot);
            __atomic_fetch_add(&nrt_pool.done, 1, __ATOMIC_SEQ_CST);
        }
    }

    static void* nrt_worker(void* arg) {
        int slot = (int)(long)arg;
        long seen = 0, g;
        int i;
        for (;;) {
            long until = nrt_now_ns() + nrt_spin_ns;
            int ready = 0;
            for (i = 0; !ready; i++) {
                g = __atomic_load_n(&nrt_pool.gen, __ATOMIC_SEQ_CST);
                if (g != seen && !(g & 1)) { ready = 1; break; }
                nrt_pause();
                if ((i & 63) == 63) {
                    if (nrt_now_ns() > until) break;
                    sched_yield();      /* a runnable thread (an OpenMP kernel's) gets the core */
                }
            }
            if (!ready) {
                pthread_mutex_lock(&nrt_pool.sleep_mu);
                __atomic_fetch_add(&nrt_pool.sleeping, 1, __ATOMIC_SEQ_CST);
                for (;;) {
                    g = __atomic_load_n(&nrt_pool.gen, __ATOMIC_SEQ_CST);
                    if (g != seen && !(g & 1)) break;
                    pthread_cond_wait(&nrt_pool.wake, &nrt_pool.sleep_mu);
                }
                __atomic_fetch_sub(&nrt_pool.sleeping, 1, __ATOMIC_SEQ_CST);
                pthread_mutex_unlock(&nrt_pool.sleep_mu);
            }
            seen = g;
            /* announce, then check the batch is still the one seen (Dekker with
               the caller's odd gen store + active load): fields are stable */
            __atomic_fetch_add(&nrt_pool.active, 1, __ATOMIC_SEQ_CST);
            if (__atomic_load_n(&nrt_pool.gen, __ATOMIC_SEQ_CST) == g && slot < nrt_pool.slots)
                nrt_run_jobs(nrt_pool.fn, nrt_pool.ctx, nrt_pool.njobs, slot);
            __atomic_fetch_sub(&nrt_pool.active, 1, __ATOMIC_SEQ_CST);
        }
        return NULL;
    }

    static void nrt_pool_after_fork(void) {
        /* the child has no workers; its locks may be held by threads that are gone */
        pthread_mutex_init(&nrt_pool.dispatch, NULL);
        pthread_mutex_init(&nrt_pool.sleep_mu, NULL);
        pthread_cond_init(&nrt_pool.wake, NULL);
        nrt_pool.started = 0;
        nrt_pool.gen &= ~1L;          /* a dispatch another thread had begun is gone */
        nrt_pool.active = 0;
        nrt_pool.sleeping = 0;
    }

    /* Run fn(ctx, j, slot) for j in [0, njobs) on up to n_threads threads (the
       caller is slot 0); returns when every job has finished. */
    static void nrt_pool_run(nrt_job_fn fn, void* ctx, long njobs, int n_threads) {
        static int fork_handler = 0;
        long j;
        if (n_threads > NRT_MAX_WORKERS + 1) n_threads = NRT_MAX_WORKERS + 1;
        if (n_threads <= 1 || njobs <= 1 || pthread_mutex_trylock(&nrt_pool.dispatch) != 0) {
            for (j = 0; j < njobs; j++) fn(ctx, j, 0);   /* busy (another caller): serially */
            return;
        }
        if (!fork_handler) {
            const char* spin = getenv("NORMRT_POOL_SPIN_US");
            if (spin != NULL && *spin) nrt_spin_ns = atol(spin) * 1000L;
            pthread_atfork(NULL, NULL, nrt_pool_after_fork);
            fork_handler = 1;
        }
        while (nrt_pool.started < n_threads - 1) {
            pthread_t t;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            if (pthread_create(&t, &attr, nrt_worker, (void*)(long)(nrt_pool.started + 1)) != 0) {
                pthread_attr_destroy(&attr);
                break;
            }
            pthread_attr_destroy(&attr);
            nrt_pool.started++;
        }
        /* odd gen: workers arriving now back off; wait for stragglers of the last batch */
        __atomic_fetch_add(&nrt_pool.gen, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&nrt_pool.active, __ATOMIC_SEQ_CST) != 0) nrt_pause();
        nrt_pool.fn = fn;
        nrt_pool.ctx = ctx;
        nrt_pool.njobs = njobs;
        nrt_pool.slots = n_threads;
        nrt_pool.next = 0;
        nrt_pool.done = 0;
        __atomic_fetch_add(&nrt_pool.gen, 1, __ATOMIC_SEQ_CST);       /* publish */
        if (__atomic_load_n(&nrt_pool.sleeping, __ATOMIC_SEQ_CST) > 0) {
            pthread_mutex_lock(&nrt_pool.sleep_mu);
            pthread_cond_broadcast(&nrt_pool.wake);
            pthread_mutex_unlock(&nrt_pool.sleep_mu);
        }
        nrt_run_jobs(fn, ctx, njobs, 0);
        /* only jobs a worker took are left: wait for those (yielding now and
           then: on an oversubscribed machine the worker may need this core) */
        for (j = 0; __atomic_load_n(&nrt_pool.done, __ATOMIC_SEQ_CST) < njobs; j++) {
            nrt_pause();
            if ((j & 255) == 255) sched_yield();
        }
        pthread_mutex_unlock(&nrt_pool.dispatch);
    }
    #else
    #define NRT_HAVE_POOL 0
    typedef void (*nrt_job_fn)(void* ctx, long job, int slot);
    static void nrt_pool_run(nrt_job_fn fn, void* ctx, long njobs, int n_threads) {
        long j;
        for (j = 0; j < njobs; j++) fn(ctx, j, 0);
    }
    #endif
    """
    const int NRT_HAVE_POOL
    ctypedef void (*nrt_job_fn)(void* ctx, long job, int slot) noexcept nogil
    void nrt_pool_run(nrt_job_fn fn, void* ctx, long njobs, int n_threads) noexcept nogil


cdef enum:
    # K block: a B micro-panel (KC x NR floats, 32 KiB) stays in L1 (pack_a,
    # pack_b and pack_at spell the 256 out: Cython wants a literal loop step)
    KC = 256
    MC_PANELS = 16      # A rows packed per call in blocks of MC_PANELS * MR (L2)
    NC_PANELS = 8       # B columns per job and K block: NC_PANELS * NR
    # below this many flops (2*M*N*K, ~15 us of work) one thread. A call to an
    # idle pool costs ~1 us (a sleeping worker is simply not waited for), so
    # small products split too: measured (2 cores) the transformer block
    # 0.27 -> 0.22 ms and DenseNet-121 25.6 -> 24.2 ms going from 16 to 4 Mflop
    PARALLEL_MIN_FLOPS = 4000000
    MAX_JOBS_M = 8
    # rows of a thread's wide C block (stride-1 convs computed on the padded width)
    WIDE_ROWS = 512

cdef enum:
    SRC_MATRIX = 0      # row-major matrix, packed per call
    SRC_PACKED = 1      # packed once by pack_a / pack_b
    SRC_IMAGE = 2       # (B only) implicit im2col of a zero-padded CHW image (runs along
                        # output rows)
    SRC_WIDE = 3        # (B only) a zero-padded CHW image, stride 1: B rows are shifted
                        # slices of it, read in place, output columns on the padded width
                        # (see conv2d)
    # (A only, the transposed conv y^T = im2col(x)^T W^T: pixels are the rows,
    # read in place by run_block_t)
    SRC_MATRIX_T = 4    # x as a (K, pixels) matrix
    SRC_IMAGE_T = 5     # implicit im2col of a zero-padded CHW image (pixel offset table)


cdef struct Problem:
    Py_ssize_t m, n, k
    Py_ssize_t mr             # rows per A panel: MR (the transposed conv: MR or MR - 1)
    # A: SRC_MATRIX (a, lda) or SRC_PACKED (panels of MR over all of K)
    const float* a
    Py_ssize_t lda
    int a_src
    # B: SRC_MATRIX (b, ldb), SRC_PACKED (panels of NR over all of K) or SRC_IMAGE
    const float* b
    Py_ssize_t ldb
    int b_src
    # image geometry (SRC_IMAGE): b points at channel 0 of this group
    Py_ssize_t ih, iw, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow
    Py_ssize_t wp, plane      # SRC_WIDE: padded row width, padded channel size
    Py_ssize_t pq             # SRC_WIDE: floats per stride phase (plane = sh*sw*pq)
    float* c
    Py_ssize_t ldc
    Py_ssize_t c_row0, c_col0  # c holds rows from c_row0, columns from c_col0
    const float* bias      # NULL, per row (bias_axis 0) or per column (1)
    int bias_axis
    const float* res       # NULL or (m, n) with row stride ldc
    int act
    bint transposed       # C is y^T: rows are pixels, columns channels (y[col, row])


def isa():
    """The micro-kernel variant compiled in: "avx512", "avx2" or "generic"."""
    return NRT_ISA.decode()


def block_sizes():
    """(MR, NR, KC): register block rows and columns, K block."""
    return MR, NR, KC


def packed_a_size(Py_ssize_t m, Py_ssize_t k):
    return ((m + MR - 1) // MR) * MR * k


def packed_b_size(Py_ssize_t k, Py_ssize_t n):
    return ((n + NR - 1) // NR) * NR * k


def workspace_size(int n_threads):
    """Floats of workspace a call with n_threads needs (B block, A block, edge tiles)."""
    return max(1, n_threads) * thread_workspace()


cdef inline Py_ssize_t thread_workspace() noexcept nogil:
    # + 16: each thread's slice is rounded up to a 64-byte boundary
    return (KC * NC_PANELS * NR + KC * MC_PANELS * MR + 4 * MR * NR + 2 * (MR + NR)
            + WIDE_ROWS * NC_PANELS * NR + 16)


cdef inline float* cptr(const Problem* g, Py_ssize_t r, Py_ssize_t col) noexcept nogil:
    return g.c + (r - g.c_row0) * g.ldc + (col - g.c_col0)


# ---- packing -----------------------------------------------------------------

cdef void pack_a_panels(const float* a, Py_ssize_t lda, Py_ssize_t m, Py_ssize_t row0,
                        Py_ssize_t rows, Py_ssize_t k0, Py_ssize_t kc, float* dst,
                        Py_ssize_t panel_stride) noexcept nogil:
    """Rows [row0, row0 + rows) (row0 a multiple of MR), columns [k0, k0 + kc) of
    the row-major a into MR-row panels: dst[p*panel_stride + kk*MR + i]; rows at
    or past m are zeros."""
    cdef Py_ssize_t p, i, kk, r, npan = (rows + MR - 1) // MR
    cdef const float* src
    cdef float* d
    for p in range(npan):
        d = dst + p * panel_stride
        for i in range(MR):
            r = row0 + p * MR + i
            if r < m:
                src = a + r * lda + k0
                for kk in range(kc):
                    d[kk * MR + i] = src[kk]
            else:
                for kk in range(kc):
                    d[kk * MR + i] = 0.0


cdef void pack_b_matrix(const float* b, Py_ssize_t ldb, Py_ssize_t n, Py_ssize_t col0,
                        Py_ssize_t cols, Py_ssize_t k0, Py_ssize_t kc, float* dst,
                        Py_ssize_t panel_stride, Py_ssize_t width) noexcept nogil:
    """Columns [col0, col0 + cols) (col0 a multiple of width), rows [k0, k0 + kc)
    of the row-major b into width-column panels: dst[p*panel_stride + kk*width + j];
    columns at or past n are zeros (width: NR, the B panels)."""
    cdef Py_ssize_t p, kk, j, c0, w, npan = (cols + width - 1) // width
    cdef const float* src
    cdef float* d
    for p in range(npan):
        c0 = col0 + p * width
        w = min(width, n - c0)
        d = dst + p * panel_stride
        if w == NR and width == NR:
            for kk in range(kc):
                nrt_copy_nr(d + kk * NR, b + (k0 + kk) * ldb + c0)
        else:
            for kk in range(kc):
                src = b + (k0 + kk) * ldb + c0
                for j in range(w):
                    d[kk * width + j] = src[j]
                for j in range(w, width):
                    d[kk * width + j] = 0.0


cdef void pack_b_padded(const Problem* g, Py_ssize_t col0, Py_ssize_t cols, Py_ssize_t k0,
                        Py_ssize_t kc, float* dst, Py_ssize_t panel_stride) noexcept nogil:
    """SRC_IMAGE: implicit im2col from the zero-padded input (row stride wp, plane
    stride plane): B[k, p] = xpad[c, oy*sh + ky*dh, ox*sw + kx*dw]. Each panel's
    pixels split into runs along output rows once per block; a row of K is
    then one fixed-stride copy per run, no bounds tests."""
    cdef Py_ssize_t koff[KC]
    cdef Py_ssize_t run_t[NC_PANELS * NR]
    cdef Py_ssize_t run_len[NC_PANELS * NR]
    cdef Py_ssize_t run_off[NC_PANELS * NR]
    cdef Py_ssize_t run_first[NC_PANELS + 1]
    cdef Py_ssize_t fill[NC_PANELS]          # columns [fill, NR) of the panel are past the last pixel
    cdef Py_ssize_t taps = g.kh * g.kw, n = g.n, sw = g.sw
    cdef Py_ssize_t p, kk, kidx, ci, ky, kx, r, nr_, c0, pend, q, t, oy, ox, ln, j, o, tt
    cdef const float* base
    cdef const float* src
    cdef float* d
    cdef Py_ssize_t npan = (cols + NR - 1) // NR
    nr_ = 0
    for p in range(npan):               # (a job packs at most NC_PANELS panels)
        run_first[p] = nr_
        c0 = col0 + p * NR
        pend = min(c0 + NR, n)
        oy = c0 // g.ow
        ox = c0 - oy * g.ow
        q = c0
        t = 0
        while q < pend:
            ln = min(g.ow - ox, pend - q)
            run_t[nr_] = t
            run_len[nr_] = ln
            run_off[nr_] = oy * g.sh * g.wp + ox * sw
            nr_ += 1
            t += ln
            q += ln
            ox = 0
            oy += 1
        fill[p] = t
    run_first[npan] = nr_
    for kk in range(kc):
        kidx = k0 + kk
        ci = kidx // taps
        ky = (kidx - ci * taps) // g.kw
        kx = kidx - ci * taps - ky * g.kw
        koff[kk] = ci * g.plane + ky * g.dh * g.wp + kx * g.dw
    for kk in range(kc):
        base = g.b + koff[kk]
        for p in range(npan):
            d = dst + p * panel_stride + kk * NR
            for r in range(run_first[p], run_first[p + 1]):
                src = base + run_off[r]
                tt = run_t[r]
                ln = run_len[r]
                if sw == 1:
                    for j in range(ln):
                        d[tt + j] = src[j]
                elif sw == 2:       # a constant stride vectorizes (permutes)
                    for j in range(ln):
                        d[tt + j] = src[2 * j]
                else:
                    for j in range(ln):
                        d[tt + j] = src[j * sw]
            for j in range(fill[p], NR):
                d[j] = 0.0


cdef void pack_b_wide(const Problem* g, Py_ssize_t col0, Py_ssize_t cols, Py_ssize_t k0,
                      Py_ssize_t kc, float* dst, Py_ssize_t panel_stride) noexcept nogil:
    """SRC_WIDE: B[k, q] = xpad[c, q + ky*dh*wp + kx*dw] for k = (c, ky, kx): every
    panel row is a plain NR-float copy from the padded image (g.n is a whole
    number of panels). Only an edge tile (M not a multiple of MR) needs it: the
    full tiles read these rows in place."""
    cdef Py_ssize_t koff[KC]
    cdef Py_ssize_t p, kk
    cdef const float* src
    cdef float* d
    cdef Py_ssize_t npan = (cols + NR - 1) // NR
    wide_offsets(g, k0, kc, koff)
    for p in range(npan):
        src = g.b + col0 + p * NR
        d = dst + p * panel_stride
        for kk in range(kc):
            nrt_copy_nr(d + kk * NR, src + koff[kk])


cdef void wide_offsets(const Problem* g, Py_ssize_t k0, Py_ssize_t kc, Py_ssize_t* koff) noexcept nogil:
    """SRC_WIDE: koff[kk] = where B row k0 + kk = (c, ky, kx) starts in the padded
    image, relative to the column: B[k, q] = g.b[koff[k - k0] + q]. A strided
    conv's padded image is split by stride phase (see pad_phases): tap row
    ky*dh is phase (ky*dh) % sh, shifted by (ky*dh) // sh rows (columns alike)."""
    cdef Py_ssize_t taps = g.kh * g.kw, kk, ci, ky, kx, ty, tx
    ci = k0 // taps
    ky = (k0 - ci * taps) // g.kw
    kx = k0 - ci * taps - ky * g.kw
    for kk in range(kc):            # (counters: no divisions per row at stride 1)
        ty = ky * g.dh
        tx = kx * g.dw
        if g.sh == 1 and g.sw == 1:
            koff[kk] = ci * g.plane + ty * g.wp + tx
        else:
            koff[kk] = (ci * g.plane + ((ty % g.sh) * g.sw + tx % g.sw) * g.pq
                        + ty // g.sh * g.wp + tx // g.sw)
        kx += 1
        if kx == g.kw:
            kx = 0
            ky += 1
            if ky == g.kh:
                ky = 0
                ci += 1


cdef void image_offsets(const Problem* g, Py_ssize_t k0, Py_ssize_t kc, Py_ssize_t* koff) noexcept nogil:
    """SRC_IMAGE_T: koff[kk] = tap k0 + kk = (c, ky, kx)'s offset in the padded
    image (row stride wp, plane stride plane), to add to a pixel's."""
    cdef Py_ssize_t taps = g.kh * g.kw, kk, kidx, ci, ky, kx
    for kk in range(kc):
        kidx = k0 + kk
        ci = kidx // taps
        ky = (kidx - ci * taps) // g.kw
        kx = kidx - ci * taps - ky * g.kw
        koff[kk] = ci * g.plane + ky * g.dh * g.wp + kx * g.dw


def pack_a(const float[:, ::1] a,     # IN  (M, K)
           float[::1] out):           # OUT packed_a_size(M, K)
    """Pack a constant A (conv weights as (M, C*kh*kw)) into MR-row panels, K block
    by K block: block pc holds every panel's rows pc..pc+kc, one after the other,
    so a product streams it front to back (weights too big for the caches come
    from memory in one sequential pass the prefetchers follow)."""
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], pc, kc, mp = (m + MR - 1) // MR
    if out.shape[0] != packed_a_size(m, k):
        raise ValueError("out must have packed_a_size(M, K) floats")
    if m == 0 or k == 0:
        return
    with nogil:
        for pc in range(0, k, 256):     # KC
            kc = min(<Py_ssize_t>KC, k - pc)
            pack_a_panels(&a[0, 0], k, m, 0, m, pc, kc, &out[pc * mp * MR], MR * kc)


def pack_b(const float[:, ::1] b,     # IN  (K, N)
           float[::1] out):           # OUT packed_b_size(K, N)
    """Pack a constant B (a MatMul weight) into NR-column panels, K block by K block
    (like pack_a)."""
    cdef Py_ssize_t k = b.shape[0], n = b.shape[1], pc, kc, np_ = (n + NR - 1) // NR
    if out.shape[0] != packed_b_size(k, n):
        raise ValueError("out must have packed_b_size(K, N) floats")
    if n == 0 or k == 0:
        return
    with nogil:
        for pc in range(0, k, 256):     # KC
            kc = min(<Py_ssize_t>KC, k - pc)
            pack_b_matrix(&b[0, 0], n, n, 0, n, pc, kc, &out[pc * np_ * NR], NR * kc, NR)


def pack_at(const float[:, ::1] a,    # IN  (M, K)
            float[::1] out):          # OUT packed_b_size(K, M)
    """Pack A^T (conv weights (M, C*kh*kw), transposed) as B panels of NR output
    channels, K block by K block: the transposed conv's weight."""
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], pc, kc, p, kk, j, c0
    cdef Py_ssize_t np_ = (m + NR - 1) // NR
    cdef float* d
    if out.shape[0] != packed_b_size(k, m):
        raise ValueError("out must have packed_b_size(K, M) floats")
    if m == 0 or k == 0:
        return
    with nogil:
        for pc in range(0, k, 256):     # KC
            kc = min(<Py_ssize_t>KC, k - pc)
            for p in range(np_):
                d = &out[pc * np_ * NR + p * NR * kc]
                for kk in range(kc):
                    for j in range(NR):
                        c0 = p * NR + j
                        d[kk * NR + j] = a[c0, pc + kk] if c0 < m else 0.0


# ---- the blocked product -----------------------------------------------------

cdef void edge_tile(const Problem* g, const float* ap, const float* bp, Py_ssize_t kc, int flags,
                    Py_ssize_t r0, Py_ssize_t c0, Py_ssize_t mr, Py_ssize_t nr, float* tile) noexcept nogil:
    """A tile cut by the edge of C: the same micro-kernel on a padded copy, so edge
    elements get exactly the arithmetic of interior ones."""
    cdef float* t_c = tile
    cdef float* t_res = tile + MR * NR
    cdef float* t_brow = tile + 2 * MR * NR
    cdef float* t_bcol = t_brow + MR
    cdef const float* brow = NULL
    cdef const float* bcol = NULL
    cdef const float* res = NULL
    cdef Py_ssize_t i, j
    cdef float* crow
    if not (flags & K_FIRST):
        for i in range(mr):
            crow = cptr(g, r0 + i, c0)
            for j in range(nr):
                t_c[i * NR + j] = crow[j]
    if flags & K_LAST:
        if g.bias != NULL and g.bias_axis == 0:
            for i in range(MR):
                t_brow[i] = g.bias[r0 + i] if i < mr else 0.0
            brow = t_brow
        elif g.bias != NULL:
            for j in range(NR):
                t_bcol[j] = g.bias[c0 + j] if j < nr else 0.0
            bcol = t_bcol
        if g.res != NULL:
            for i in range(mr):
                for j in range(nr):
                    t_res[i * NR + j] = g.res[(r0 + i) * g.ldc + c0 + j]
            res = t_res
    nrt_kernel(kc, ap, bp, t_c, NR, flags, brow, bcol, res, NR)
    for i in range(mr):
        crow = cptr(g, r0 + i, c0)
        for j in range(nr):
            crow[j] = t_c[i * NR + j]


cdef void run_job(const Problem* g, Py_ssize_t mp0, Py_ssize_t mp1, Py_ssize_t np0, Py_ssize_t np1,
                  float* work) noexcept nogil:
    """C panels [mp0, mp1) x [np0, np1) (MR x NR units), all of K.

    SRC_WIDE / transposed: the block is computed (with its bias) into the
    thread's wide C block, then copied to y with residual and activation: the
    valid columns of the padded width / the transpose."""
    cdef Problem lg
    if g.b_src != SRC_WIDE and not g.transposed:
        run_block(g, mp0, mp1, np0, np1, work)
        return
    lg = g[0]
    lg.c = work + KC * NC_PANELS * NR + KC * MC_PANELS * MR + 4 * MR * NR + 2 * (MR + NR)
    lg.ldc = (np1 - np0) * NR
    lg.c_row0 = mp0 * g.mr
    lg.c_col0 = np0 * NR
    lg.res = NULL
    lg.act = 0
    if g.transposed:
        run_block_t(&lg, mp0, mp1, np0, np1)
    else:
        run_block(&lg, mp0, mp1, np0, np1, work)
    if g.transposed:
        transpose_out(g, &lg, mp0 * g.mr, min(mp1 * g.mr, g.m), np0 * NR, min(np1 * NR, g.n))
    else:
        wide_compact(g, &lg, mp0 * MR, min(mp1 * MR, g.m), np0 * NR, min(np1 * NR, g.oh * g.wp))


cdef void run_block_t(const Problem* g, Py_ssize_t mp0, Py_ssize_t mp1, Py_ssize_t np0,
                      Py_ssize_t np1) noexcept nogil:
    """The transposed conv into the thread's C block g.c (whole panels): C[p, ch]
    for pixel panels [mp0, mp1), channel panels [np0, np1), all of K. A is read
    in place (nrt_kernel_t: no packed copy); rows past the last pixel repeat it
    and channels past the last are the weight's zero columns: scratch that
    transpose_out never copies, so every tile is whole."""
    cdef Py_ssize_t off[WIDE_ROWS]
    cdef Py_ssize_t koff[KC]
    cdef float bias_pad[NR]
    cdef Py_ssize_t np_ = (g.n + NR - 1) // NR
    cdef Py_ssize_t r, p, oy, kb, pc, kc, kk, jp, ip, c0, nr, j, pf, pf_share
    cdef int flags
    cdef const float* bp
    cdef const float* bcol
    cdef const float* pf_next
    cdef bint contiguous
    for r in range(mp0 * g.mr, mp1 * g.mr):
        p = min(r, g.m - 1)
        if g.a_src == SRC_MATRIX_T:
            off[r - mp0 * g.mr] = p
        else:
            oy = p // g.ow
            off[r - mp0 * g.mr] = oy * g.sh * g.wp + (p - oy * g.ow) * g.sw
    for kb in range((g.k + KC - 1) // KC):
        pc = kb * KC
        kc = min(<Py_ssize_t>KC, g.k - pc)
        flags = (K_FIRST if pc == 0 else 0) | (K_LAST if pc + kc == g.k else 0)
        if g.a_src == SRC_MATRIX_T:
            for kk in range(kc):
                koff[kk] = (pc + kk) * g.lda
        else:
            image_offsets(g, pc, kc, koff)
        pf_share = (NR * kc + (mp1 - mp0) * 16 - 1) // ((mp1 - mp0) * 16) * 16
        for jp in range(np0, np1):
            bp = g.b + pc * np_ * NR + jp * NR * kc
            c0 = jp * NR
            nr = min(<Py_ssize_t>NR, g.n - c0)
            bcol = NULL
            if (flags & K_LAST) and g.bias != NULL:
                bcol = g.bias + c0
                if nr < NR:
                    for j in range(NR):
                        bias_pad[j] = g.bias[c0 + j] if j < nr else 0.0
                    bcol = bias_pad
            # the weight (often streamed from memory): its next panel is fetched
            # into L2 while this one is used, in even shares
            pf_next = bp + NR * kc if jp + 1 < np1 else NULL
            for ip in range(mp0, mp1):
                if pf_next != NULL:
                    for pf in range((ip - mp0) * pf_share, min((ip - mp0 + 1) * pf_share, NR * kc), 16):
                        nrt_prefetch_l2(pf_next + pf, 0, 1)
                contiguous = g.a_src == SRC_MATRIX_T and (ip + 1) * g.mr <= g.m
                if g.mr == MR and contiguous:
                    nrt_kernel_tc(kc, g.a, koff, &off[(ip - mp0) * MR], bp, cptr(g, ip * MR, c0), g.ldc,
                                  flags, bcol)
                elif contiguous:
                    nrt_kernel_tc1(kc, g.a, koff, &off[(ip - mp0) * g.mr], bp, cptr(g, ip * g.mr, c0),
                                   g.ldc, flags, bcol)
                elif g.mr == MR:
                    nrt_kernel_t(kc, g.a, koff, &off[(ip - mp0) * MR], bp, cptr(g, ip * MR, c0), g.ldc,
                                 flags, bcol)
                else:
                    nrt_kernel_t1(kc, g.a, koff, &off[(ip - mp0) * g.mr], bp, cptr(g, ip * g.mr, c0),
                                  g.ldc, flags, bcol)


cdef void transpose_out(const Problem* g, const Problem* lg, Py_ssize_t r0, Py_ssize_t r1,
                        Py_ssize_t q0, Py_ssize_t q1) noexcept nogil:
    """y[ch, p] = act(t[p, ch] + res[ch, p]) for pixels [r0, r1), channels [q0, q1):
    a transpose in 16 x 16 tiles (whole cache lines on both sides), then the
    residual and activation along y's rows."""
    cdef Py_ssize_t cb, pb, ch, p, c1, p1
    cdef const float* src = cptr(lg, r0, q0)
    cdef const float* res
    cdef float* dst
    for pb in range(r0, r1, 16):
        p1 = min(pb + 16, r1)
        for cb in range(q0, q1, 16):
            c1 = min(cb + 16, q1)
            for ch in range(cb, c1):
                dst = g.c + ch * g.ldc
                for p in range(pb, p1):
                    dst[p] = src[(p - r0) * lg.ldc + (ch - q0)]
    if g.res == NULL and g.act == 0:
        return
    for ch in range(q0, q1):
        dst = g.c + ch * g.ldc
        if g.res != NULL:
            res = g.res + ch * g.ldc
            for p in range(r0, r1):
                dst[p] = dst[p] + res[p]
        if g.act != 0:
            activate_span(dst + r0, r1 - r0, g.act)


cdef void wide_compact(const Problem* g, const Problem* lg, Py_ssize_t r0, Py_ssize_t r1,
                       Py_ssize_t q0, Py_ssize_t q1) noexcept nogil:
    """y[r, oy*ow + ox] = act(wide[r, oy*wp + ox] + res[r, oy*ow + ox]) for the wide
    columns [q0, q1) whose ox < ow (the rest are the padded width's spill)."""
    cdef Py_ssize_t oy = q0 // g.wp, a, b, r, j, n_
    cdef const float* src
    cdef const float* res
    cdef float* dst
    while oy * g.wp < q1:
        a = max(q0, oy * g.wp)
        b = min(q1, oy * g.wp + g.ow)
        if b > a:
            n_ = b - a
            for r in range(r0, r1):
                src = cptr(lg, r, a)
                dst = g.c + r * g.ldc + oy * g.ow + (a - oy * g.wp)
                if g.res != NULL:
                    res = g.res + r * g.ldc + oy * g.ow + (a - oy * g.wp)
                    for j in range(n_):
                        dst[j] = src[j] + res[j]
                else:
                    memcpy(dst, src, n_ * sizeof(float))
                if g.act != 0:
                    activate_span(dst, n_, g.act)
        oy += 1


cdef void run_block(const Problem* g, Py_ssize_t mp0, Py_ssize_t mp1, Py_ssize_t np0, Py_ssize_t np1,
                    float* work) noexcept nogil:
    cdef float* wb = work
    cdef float* wa = work + KC * NC_PANELS * NR
    cdef float* tile = wa + KC * MC_PANELS * MR
    cdef Py_ssize_t pc, kc, ic, ic1, jp, ip, r0, c0, mr, nr, i, pf, pf_share
    cdef const float* pf_next
    cdef Py_ssize_t a_stride, b_stride
    cdef const float* ablk
    cdef const float* bblk
    cdef const float* ap
    cdef const float* bp
    cdef const float* brow
    cdef const float* bcol
    cdef const float* res
    cdef int flags
    cdef Py_ssize_t kb
    cdef Py_ssize_t koff[KC]
    cdef bint wide = g.b_src == SRC_WIDE
    for kb in range((g.k + KC - 1) // KC):
        pc = kb * KC
        kc = min(<Py_ssize_t>KC, g.k - pc)
        flags = (K_FIRST if pc == 0 else 0) | (K_LAST if pc + kc == g.k else 0)
        if wide:
            # B rows read in place from the padded image (see nrt_kernel); only
            # an edge tile's panel is packed, when it comes
            wide_offsets(g, pc, kc, koff)
            bblk = wb
            b_stride = 0
        elif g.b_src == SRC_PACKED:
            bblk = g.b + pc * ((g.n + NR - 1) // NR) * NR + np0 * NR * kc
            b_stride = NR * kc
        else:
            if g.b_src == SRC_MATRIX:
                pack_b_matrix(g.b, g.ldb, g.n, np0 * NR, (np1 - np0) * NR, pc, kc, wb, NR * kc, NR)
            else:
                pack_b_padded(g, np0 * NR, (np1 - np0) * NR, pc, kc, wb, NR * kc)
            bblk = wb
            b_stride = NR * kc
        ic = mp0
        while ic < mp1:
            ic1 = min(ic + MC_PANELS, mp1)
            if g.a_src == SRC_PACKED:
                ablk = g.a + pc * ((g.m + MR - 1) // MR) * MR + ic * MR * kc
            else:       # SRC_MATRIX (the transposed conv's A: run_block_t)
                pack_a_panels(g.a, g.lda, g.m, ic * MR, (ic1 - ic) * MR, pc, kc, wa, MR * kc)
                ablk = wa
            a_stride = MR * kc
            for jp in range(np0, np1):
                bp = bblk + (jp - np0) * b_stride
                c0 = jp * NR
                nr = min(<Py_ssize_t>NR, g.n - c0)
                # a prepacked B (a weight, often streamed from memory): the next
                # panel is fetched into L2 while this one is used, in even shares
                pf_next = bp + b_stride if g.b_src == SRC_PACKED and jp + 1 < np1 else NULL
                pf_share = (NR * kc + (ic1 - ic) * 16 - 1) // ((ic1 - ic) * 16) * 16
                for ip in range(ic, ic1):
                    if pf_next != NULL:
                        for pf in range((ip - ic) * pf_share, min((ip - ic + 1) * pf_share, NR * kc), 16):
                            nrt_prefetch_l2(pf_next + pf, 0, 1)
                    ap = ablk + (ip - ic) * a_stride
                    r0 = ip * MR
                    mr = min(<Py_ssize_t>MR, g.m - r0)
                    if wide and mr == MR:       # (wide: nr == NR, whole panels)
                        nrt_kernel_off(kc, ap, g.b + c0, koff, cptr(g, r0, c0), g.ldc, flags,
                                       g.bias + r0 if (flags & K_LAST) and g.bias != NULL else NULL)
                    elif wide:
                        pack_b_wide(g, c0, NR, pc, kc, wb, NR * kc)
                        edge_tile(g, ap, wb, kc, flags, r0, c0, mr, nr, tile)
                    elif mr == MR and nr == NR:
                        brow = NULL
                        bcol = NULL
                        res = NULL
                        if flags & K_LAST:
                            if g.bias != NULL:
                                if g.bias_axis == 0:
                                    brow = g.bias + r0
                                else:
                                    bcol = g.bias + c0
                            if g.res != NULL:
                                res = g.res + r0 * g.ldc + c0
                        nrt_kernel(kc, ap, bp, cptr(g, r0, c0), g.ldc, flags,
                                   brow, bcol, res, g.ldc)
                    else:
                        edge_tile(g, ap, bp, kc, flags, r0, c0, mr, nr, tile)
                    if (flags & K_LAST) and g.act != 0:
                        for i in range(mr):
                            activate_span(cptr(g, r0 + i, c0), nr, g.act)
            ic = ic1


cdef struct Split:
    Py_ssize_t mb, nb       # job grid: M panel groups x N panel groups


cdef inline Py_ssize_t group_size(Py_ssize_t total, Py_ssize_t groups, Py_ssize_t idx) noexcept nogil:
    return total // groups + (1 if idx < total % groups else 0)


cdef inline Py_ssize_t group_start(Py_ssize_t total, Py_ssize_t groups, Py_ssize_t idx) noexcept nogil:
    return idx * (total // groups) + min(idx, total % groups)


cdef Split choose_split(const Problem* g, Py_ssize_t reps, int n_threads) noexcept nogil:
    """The job grid for n_threads: the one whose busiest thread (round robin over
    reps copies of the grid: images x groups) has the least estimated work,
    counting compute on padded panels plus per-job packing. Only the speed
    depends on it, never the result."""
    cdef Py_ssize_t mp = (g.m + g.mr - 1) // g.mr, np_ = (g.n + NR - 1) // NR
    # (a transposed conv's job must fit the thread's C block: NC_PANELS panels
    # wide, WIDE_ROWS rows high)
    cdef Py_ssize_t nb_min = (np_ + NC_PANELS - 1) // NC_PANELS if (g.b_src != SRC_PACKED or g.transposed) else 1
    cdef Py_ssize_t mb_min = (mp + WIDE_ROWS // g.mr - 1) // (WIDE_ROWS // g.mr) if g.transposed else 1
    cdef Py_ssize_t mb, nb, j, jobs, t, mrows, ncols, nb_max
    cdef double cost, worst, best = -1.0
    cdef double load[64]
    cdef Split s
    s.mb = mb_min
    s.nb = nb_min
    if n_threads <= 1:
        return s
    if n_threads > 64:
        n_threads = 64
    if mb_min * nb_min * reps >= 4 * n_threads:
        # plenty of jobs: a whole number of rounds when the N panels allow it
        nb = ((nb_min + n_threads - 1) // n_threads) * n_threads
        if reps == 1 and nb <= np_ and mb_min == 1:
            s.nb = nb
        return s
    nb_max = min(np_, nb_min + 2 * n_threads)
    for mb in range(mb_min, max(mb_min, min(mp, <Py_ssize_t>MAX_JOBS_M)) + 1):
        for nb in range(nb_min, nb_max + 1):
            for t in range(n_threads):
                load[t] = 0.0
            jobs = mb * nb * reps
            for j in range(jobs):
                mrows = group_size(mp, mb, (j // nb) % mb) * g.mr
                ncols = group_size(np_, nb, j % nb) * NR
                cost = mrows * ncols * <double>g.k / 32.0       # ~flops per cycle / 2
                if g.b_src != SRC_PACKED and g.b_src != SRC_WIDE:      # (wide: read in place)
                    cost += ncols * <double>g.k * (2.0 if g.b_src == SRC_IMAGE else 0.5)
                if g.a_src == SRC_MATRIX:
                    cost += mrows * <double>g.k
                cost += 2000.0                                  # per-job overhead
                load[j % n_threads] += cost
            worst = 0.0
            for t in range(n_threads):
                if load[t] > worst:
                    worst = load[t]
            if best < 0.0 or worst < best:
                best = worst
                s.mb = mb
                s.nb = nb
    return s


cdef inline float* thread_work(float* work, int tid) noexcept nogil:
    cdef float* w = work + tid * thread_workspace()
    return <float*>((<size_t>w + 63) & ~(<size_t>63))


cdef void run_jobs(Problem* g, Split s, Py_ssize_t job0, Py_ssize_t step, float* work) noexcept nogil:
    """Jobs job0, job0 + step, ... of one problem's grid."""
    cdef Py_ssize_t mp = (g.m + g.mr - 1) // g.mr, np_ = (g.n + NR - 1) // NR
    cdef Py_ssize_t j, im, in_, m0, n0
    j = job0
    while j < s.mb * s.nb:
        im = j // s.nb
        in_ = j - im * s.nb
        m0 = group_start(mp, s.mb, im)
        n0 = group_start(np_, s.nb, in_)
        run_job(g, m0, m0 + group_size(mp, s.mb, im), n0, n0 + group_size(np_, s.nb, in_), work)
        j += step


cdef inline int team(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t reps, int n_threads) noexcept nogil:
    if 2.0 * m * n * <double>k * reps < PARALLEL_MIN_FLOPS:
        return 1
    return max(1, min(n_threads, 64))


def gemm(const float[::1] a,          # IN  (M*K,) row-major, or packed_a_size(M, K) if a_packed
         bint a_packed,
         const float[::1] b,          # IN  (K*N,) row-major, or packed_b_size(K, N) if b_packed
         bint b_packed,
         Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
         float[::1] c,                # OUT (M*N,) row-major; must not overlap a, b
         const float[::1] bias,       # IN  empty, (M,) with bias_axis 0, or (N,) with bias_axis 1
         int bias_axis,
         const float[::1] residual,   # IN  empty or (M*N,); may be c itself
         int act,
         float[::1] work,             # workspace_size(n_threads) floats
         int n_threads):
    """c = act(a @ b + bias + residual)."""
    cdef Problem g
    cdef Split s
    cdef int nt
    cdef Py_ssize_t j
    cdef GemmJobs gj
    if m <= 0 or n <= 0 or k <= 0:
        raise ValueError("m, n and k must be >= 1")
    if a.shape[0] != (packed_a_size(m, k) if a_packed else m * k):
        raise ValueError("a has the wrong size")
    if b.shape[0] != (packed_b_size(k, n) if b_packed else k * n):
        raise ValueError("b has the wrong size")
    if c.shape[0] != m * n:
        raise ValueError("c must have m*n elements")
    if bias.shape[0] != 0 and bias.shape[0] != (m if bias_axis == 0 else n):
        raise ValueError("bias has the wrong length")
    if residual.shape[0] != 0 and residual.shape[0] != m * n:
        raise ValueError("residual must have m*n elements")
    nt = team(m, n, k, 1, n_threads)
    if work.shape[0] < workspace_size(nt):
        raise ValueError("work is smaller than workspace_size(n_threads)")
    g.m = m
    g.n = n
    g.k = k
    g.mr = MR
    g.a = &a[0]
    g.lda = k
    g.a_src = SRC_PACKED if a_packed else SRC_MATRIX
    g.b = &b[0]
    g.ldb = n
    g.b_src = SRC_PACKED if b_packed else SRC_MATRIX
    g.c = &c[0]
    g.ldc = n
    g.c_row0 = 0
    g.c_col0 = 0
    g.transposed = False
    g.bias = &bias[0] if bias.shape[0] else NULL
    g.bias_axis = bias_axis
    g.res = &residual[0] if residual.shape[0] else NULL
    g.act = act
    with nogil:
        s = choose_split(&g, 1, nt)
        if nt == 1 or s.mb * s.nb == 1:
            run_jobs(&g, s, 0, 1, thread_work(&work[0], 0))
        else:
            # jobs handed out one at a time: a thread whose core is busy with
            # something else takes fewer (which thread runs a job never
            # changes its result)
            gj.g = &g
            gj.s = s
            gj.work = &work[0]
            if NRT_HAVE_POOL:
                nrt_pool_run(gemm_job, &gj, s.mb * s.nb, nt)
            else:
                for j in prange(s.mb * s.nb, schedule="dynamic", num_threads=nt):
                    gemm_job(&gj, j, omp_get_thread_num())


def conv2d(const float[:, :, :, ::1] x,     # IN  (N, C, H, W)
           const float[::1] w,              # IN  group * packed_a_size(M/group, C/group*kh*kw)
           Py_ssize_t kh, Py_ssize_t kw,
           Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t ph, Py_ssize_t pw,    # leading pads (trailing ones only shape the output)
           Py_ssize_t dh, Py_ssize_t dw,
           Py_ssize_t group,
           bint transposed,                 # w is group * packed_b_size(C/group*kh*kw, M/group)
                                            # (pack_at): y^T = im2col(x)^T W^T, see conv_transposed
           float[:, :, :, ::1] y,           # OUT (N, M, OH, OW); must not overlap x
           const float[::1] bias,           # IN  empty or (M,)
           const float[::1] residual,       # IN  empty or (N*M*OH*OW,); may be y itself
           int act,
           float[::1] work,                 # workspace_size(n_threads) floats
           int n_threads):
    """y = act(conv(x, w) + bias + residual), one GEMM per image and group."""
    cdef Py_ssize_t nimg = x.shape[0], c = x.shape[1], h = x.shape[2], wd = x.shape[3]
    cdef Py_ssize_t m = y.shape[1], oh = y.shape[2], ow = y.shape[3]
    cdef Py_ssize_t cg, mg, kg, wsize, reps, jobs
    cdef Problem proto
    cdef Split s
    cdef int nt
    cdef ConvJobs cj
    cdef PadJobs pj
    cdef bint direct, wide, padded
    cdef Py_ssize_t hp
    cdef const float* xp
    cdef float* xpad = NULL
    cdef Py_ssize_t pi
    cdef const float* bias_p = &bias[0] if bias.shape[0] else NULL
    cdef const float* res_p = &residual[0] if residual.shape[0] else NULL
    if group < 1 or c % group or m % group or y.shape[0] != nimg:
        raise ValueError("inconsistent group / channel counts")
    cg = c // group
    mg = m // group
    kg = cg * kh * kw
    wsize = packed_b_size(kg, mg) if transposed else packed_a_size(mg, kg)
    if w.shape[0] != group * wsize:
        raise ValueError("w has the wrong packed size")
    if bias.shape[0] != 0 and bias.shape[0] != m:
        raise ValueError("bias must have M elements")
    if residual.shape[0] != 0 and residual.shape[0] != nimg * m * oh * ow:
        raise ValueError("residual must have y's size")
    if nimg == 0 or m == 0 or oh * ow == 0:
        return
    reps = nimg * group
    # the flops computed, not the useful ones: a few output channels still fill an MR-row tile
    # (a 3-channel output conv over 64 channels at 32x32: 3.5 useful Mflop, 9.4 computed)
    nt = team((mg + MR - 1) // MR * MR, oh * ow, kg, reps, n_threads)
    if work.shape[0] < conv_workspace_size(nimg, c, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, mg, n_threads):
        raise ValueError("work is smaller than conv_workspace_size(...)")
    # 1x1, stride 1, no padding: x[n] is B as it is
    direct = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0 and oh == h and ow == wd
    wide = use_wide(oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, mg) and not transposed
    proto.transposed = transposed
    proto.m = mg
    proto.mr = MR
    proto.n = oh * ow
    proto.c_row0 = 0
    proto.c_col0 = 0
    # every conv but the direct 1x1 reads a zero-padded copy of x (x itself when
    # no tap leaves the image: then the row stride is x's width)
    proto.wp = padded_cols(ow, kw, sw, dw, wide)
    hp = padded_rows(oh, kh, sh, dh, wide, proto.wp)
    proto.pq = hp * proto.wp
    padded = not direct
    if not wide and ph == 0 and pw == 0 and hp <= h and proto.wp <= wd:
        padded = False
        proto.wp = wd
        hp = h
    proto.plane = hp * proto.wp * (sh * sw if wide else 1)
    xp = &x[0, 0, 0, 0]
    if padded:
        xpad = thread_work(&work[0], nt)   # after the threads' slices
        xp = xpad
    if wide:
        # a whole number of NR panels (no edge tiles): the spare columns read
        # the padded input's extra rows and are thrown away like the spill
        proto.n = (oh * proto.wp + NR - 1) // NR * NR
    proto.k = kg
    proto.lda = kg
    proto.a_src = SRC_PACKED
    proto.ldb = h * wd
    proto.b_src = SRC_MATRIX if direct else (SRC_WIDE if wide else SRC_IMAGE)
    if transposed:
        proto.m = oh * ow
        proto.mr = t_panel_rows(oh * ow)
        proto.n = mg
        proto.a_src = SRC_MATRIX_T if direct else SRC_IMAGE_T
        proto.lda = h * wd
        proto.b_src = SRC_PACKED
    proto.ih = h
    proto.iw = wd
    proto.kh = kh
    proto.kw = kw
    proto.sh = sh
    proto.sw = sw
    proto.ph = ph
    proto.pw = pw
    proto.dh = dh
    proto.dw = dw
    proto.oh = oh
    proto.ow = ow
    proto.ldc = oh * ow
    proto.bias_axis = 1 if transposed else 0
    proto.act = act
    with nogil:
        if padded:
            pj.x = &x[0, 0, 0, 0]
            pj.xp = xpad
            pj.planes = nimg * c
            pj.h = h
            pj.w = wd
            pj.hp = hp
            pj.wp = proto.wp
            pj.pt = ph
            pj.pl = pw
            pj.sh = sh if wide else 1
            pj.sw = sw if wide else 1
            run_parallel(pad_job, &pj, (nimg * c + PAD_PLANES - 1) // PAD_PLANES, nt)
        s = choose_split(&proto, reps, nt)
        cj.proto = &proto
        cj.s = s
        cj.x = xp
        cj.w = &w[0]
        cj.y = &y[0, 0, 0, 0]
        cj.bias = bias_p
        cj.res = res_p
        cj.nimg = nimg
        cj.group = group
        cj.cg = cg
        cj.m = m
        cj.total = s.mb * s.nb * reps
        cj.work = &work[0]
        run_parallel(conv_job, &cj, cj.total, nt)


cdef struct GemmJobs:
    Problem* g
    Split s
    float* work


cdef void gemm_job(void* ctx, long j, int slot) noexcept nogil:
    cdef GemmJobs* c = <GemmJobs*>ctx
    run_jobs(c.g, c.s, j, c.s.mb * c.s.nb, thread_work(c.work, slot))


cdef struct ConvJobs:
    const Problem* proto
    Split s
    const float* x
    const float* w
    float* y
    const float* bias
    const float* res
    Py_ssize_t nimg, group, cg, m, total
    float* work


cdef void conv_job(void* ctx, long j, int slot) noexcept nogil:
    cdef ConvJobs* c = <ConvJobs*>ctx
    conv_jobs(c.proto, c.s, c.x, c.w, c.y, c.bias, c.res, c.nimg, c.group, c.cg, c.m,
              j, c.total, c.work, slot)


cdef enum:
    PAD_PLANES = 16     # input planes per padding job


cdef struct PadJobs:
    const float* x
    float* xp
    Py_ssize_t planes, h, w, hp, wp, pt, pl, sh, sw


cdef void pad_job(void* ctx, long j, int slot) noexcept nogil:
    cdef PadJobs* c = <PadJobs*>ctx
    if c.sh * c.sw > 1:
        pad_phases(c.x, c.xp, j * PAD_PLANES, min((j + 1) * PAD_PLANES, c.planes), c.h, c.w, c.hp, c.wp,
                   c.pt, c.pl, c.sh, c.sw)
        return
    pad_planes(c.x, c.xp, j * PAD_PLANES, min((j + 1) * PAD_PLANES, c.planes), c.h, c.w, c.hp, c.wp,
               c.pt, c.pl)


cdef void run_parallel(nrt_job_fn fn, void* ctx, long njobs, int nt) noexcept nogil:
    """fn(ctx, j, slot) for every job j on nt threads (the pool; OpenMP where
    there is none), slot being the thread's workspace index."""
    cdef long j
    if nt <= 1 or njobs <= 1:
        for j in range(njobs):
            fn(ctx, j, 0)
    elif NRT_HAVE_POOL:
        nrt_pool_run(fn, ctx, njobs, nt)
    else:
        for j in prange(njobs, schedule="dynamic", num_threads=nt):
            fn(ctx, j, omp_get_thread_num())


cdef inline bint use_wide(Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                          Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                          Py_ssize_t mg) noexcept nogil:
    """Convs with taps to shift: B from a zero-padded copy of the input, output
    on its padded width (wp = ow + (kw-1)*dw columns, the last ones thrown
    away) - every B row is then NR contiguous floats of the padded image,
    which the micro-kernel reads in place (no packing), where implicit im2col
    costs about as much as a few output channels' worth of FMAs. A strided
    conv's copy is split by stride phase (pad_phases), which makes its taps
    plain shifts too (wp = ow + (kw-1)*dw // sw). Chosen when the thrown-away
    columns cost less than that; not for 1x1 kernels without padding (stride
    1: x is B as it is; strided: the copy would be mostly unused phases)."""
    cdef Py_ssize_t spill = (kw - 1) * dw // sw, wp = ow + (kw - 1) * dw // sw
    if kh == 1 and kw == 1 and (sh != 1 or sw != 1 or (ph == 0 and pw == 0)):
        return False
    if ((mg + MR - 1) // MR) * MR > WIDE_ROWS:
        return False
    return spill * 8 <= wp or (mg <= 128 and spill * 3 <= wp)


def conv_transposed(Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                    Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                    Py_ssize_t mg):
    """Whether conv2d should run transposed (y^T = im2col(x)^T W^T, weight from
    pack_at): small images whose pixel count pads badly to NR-wide panels
    (7x7 = 49 pixels: 64 columns of work, 56 rows transposed), with enough
    output channels to fill the NR-wide weight panels. Against the padded
    width (both read the image in place): transposed when it computes 5%
    fewer padded elements (its transpose costs about that: measured 3x3 56x56
    64 channels, 4% fewer, 1.5% slower; 28x28: 784 rows vs 864 wide
    columns, 6% faster; 14x14: 200 vs 224)."""
    cdef Py_ssize_t pix = oh * ow, wp = padded_cols(ow, kw, sw, dw, True)
    cdef Py_ssize_t tr_rows = (pix + t_panel_rows(pix) - 1) // t_panel_rows(pix) * t_panel_rows(pix)
    cdef Py_ssize_t tr_work = tr_rows * (((mg + NR - 1) // NR) * NR)
    if mg < 64:
        return False
    if use_wide(oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, mg):
        return tr_work * 20 < ((oh * wp + NR - 1) // NR) * NR * (((mg + MR - 1) // MR) * MR) * 19
    return ((pix + NR - 1) // NR) * NR * 10 > tr_rows * 11


cdef inline Py_ssize_t t_panel_rows(Py_ssize_t pix) noexcept nogil:
    """Pixels per A panel of the transposed conv: MR, or MR - 1 when that pads
    the pixel count by 5% less (49 = 7 x 7: 49 rows, not 56). Measured (1x1,
    256 -> 1024 channels): 7 rows of 196 pixels are 3% slower than 200 in 8."""
    if (pix + MR - 2) // (MR - 1) * (MR - 1) * 20 < (pix + MR - 1) // MR * MR * 19:
        return MR - 1
    return MR


def conv_workspace_size(Py_ssize_t nimg, Py_ssize_t c, Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh,
                        Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t mg, int n_threads):
    """Floats of workspace conv2d needs: the threads' slices, then the padded input."""
    cdef Py_ssize_t size = (max(1, n_threads) + 1) * thread_workspace()
    cdef bint wide = use_wide(oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, mg)
    # (room for the padded input always: whether a 1x1 conv reads x directly
    # also depends on its trailing pads)
    size += nimg * c * padded_rows(oh, kh, sh, dh, wide, padded_cols(ow, kw, sw, dw, wide)) \
        * padded_cols(ow, kw, sw, dw, wide) * (sh * sw if wide else 1)
    return size


cdef inline Py_ssize_t padded_rows(Py_ssize_t oh, Py_ssize_t kh, Py_ssize_t sh, Py_ssize_t dh,
                                   bint wide, Py_ssize_t wp) noexcept nogil:
    """Rows of the zero-padded input: what the taps reach (wide: of each stride
    phase, plus the rows the last wide row's spill and the columns up to a
    whole NR panel read)."""
    if wide:
        return oh + (kh - 1) * dh // sh + 1 + (NR + wp - 1) // wp
    return (oh - 1) * sh + (kh - 1) * dh + 1


cdef inline Py_ssize_t padded_cols(Py_ssize_t ow, Py_ssize_t kw, Py_ssize_t sw, Py_ssize_t dw,
                                   bint wide) noexcept nogil:
    return ow + (kw - 1) * dw // sw if wide else (ow - 1) * sw + (kw - 1) * dw + 1


cdef void pad_phases(const float* x, float* xp, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t h, Py_ssize_t w,
                     Py_ssize_t hq, Py_ssize_t wq, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t sh,
                     Py_ssize_t sw) noexcept nogil:
    """Planes [p0, p1) of x (h, w), zero-padded by (pt, pl) in front, split by
    stride phase: xp[p, a, b, i, j] = xpad[p, i*sh + a, j*sw + b] (each phase
    hq x wq, zeros outside x). A stride-(sh, sw) tap is then a plain shift
    within one phase (wide_offsets)."""
    cdef Py_ssize_t p, a, b, i, j, sy, sx
    cdef const float* src
    cdef float* row
    for p in range(p0, p1):
        for a in range(sh):
            for b in range(sw):
                for i in range(hq):
                    row = xp + (((p * sh + a) * sw + b) * hq + i) * wq
                    sy = i * sh + a - pt
                    if sy < 0 or sy >= h:
                        for j in range(wq):
                            row[j] = 0.0
                        continue
                    src = x + (p * h + sy) * w
                    for j in range(wq):
                        sx = j * sw + b - pl
                        row[j] = src[sx] if 0 <= sx < w else 0.0


cdef void pad_planes(const float* x, float* xp, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t h, Py_ssize_t w,
                     Py_ssize_t hp, Py_ssize_t wp, Py_ssize_t pt, Py_ssize_t pl) noexcept nogil:
    """Planes [p0, p1) of x (h, w) into xp (hp, wp), shifted by (pt, pl), zeros around.
    Plain loops, no memset/memcpy calls: the rows are short (7..58 floats)."""
    cdef Py_ssize_t p, yy, sy, lead, ncopy, j
    cdef const float* src
    cdef float* row
    for p in range(p0, p1):
        src = x + p * h * w
        for yy in range(hp):
            row = xp + (p * hp + yy) * wp
            sy = yy - pt
            if sy < 0 or sy >= h:
                for j in range(wp):
                    row[j] = 0.0
                continue
            lead = min(pl, wp)
            ncopy = min(w, wp - lead)
            for j in range(lead):
                row[j] = 0.0
            for j in range(ncopy):
                row[lead + j] = src[sy * w + j]
            for j in range(lead + ncopy, wp):
                row[j] = 0.0
cdef void conv_jobs(const Problem* proto, Split s, const float* x, const float* w, float* y,
                    const float* bias, const float* res, Py_ssize_t nimg, Py_ssize_t group,
                    Py_ssize_t cg, Py_ssize_t m, Py_ssize_t first, Py_ssize_t step,
                    float* work, int tid) noexcept nogil:
    """Jobs first, first + step, ... of the (image, group, job) round robin: every
    thread stays busy even for many small images."""
    cdef Problem g = proto[0]
    cdef Py_ssize_t jobs = s.mb * s.nb, pix = g.oh * g.ow, img, gi, j
    cdef Py_ssize_t mg = g.n if g.transposed else g.m
    cdef Py_ssize_t wsize = (((mg + NR - 1) // NR) * NR * g.k if g.transposed
                             else ((mg + MR - 1) // MR) * MR * g.k)
    cdef Py_ssize_t plane = g.plane if (g.b_src == SRC_WIDE or g.b_src == SRC_IMAGE or g.a_src == SRC_IMAGE_T) \
        else g.ih * g.iw
    cdef Py_ssize_t total = jobs * group * nimg
    j = first
    while j < total:
        img = j // (jobs * group)
        gi = (j // jobs) % group
        if g.transposed:
            g.b = w + gi * wsize
            g.a = x + (img * group + gi) * cg * plane
        else:
            g.a = w + gi * wsize
            g.b = x + (img * group + gi) * cg * plane
        g.c = y + (img * m + gi * mg) * pix
        g.bias = bias + gi * mg if bias != NULL else NULL
        g.res = res + (img * m + gi * mg) * pix if res != NULL else NULL
        run_jobs(&g, s, j % jobs, jobs, thread_work(work, tid))
        j += step
