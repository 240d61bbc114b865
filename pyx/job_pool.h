/* The GEMM's job pool (see gemm_core.pxd for why not an OpenMP region). */
#ifndef NORMRT_JOB_POOL_H
#define NORMRT_JOB_POOL_H
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

#endif /* NORMRT_JOB_POOL_H */
