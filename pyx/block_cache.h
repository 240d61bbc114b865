/* A cache of freed numpy data blocks, for the arrays a normrt run allocates.
 *
 * Why: a run's intermediate arrays are freed at the end of the run and allocated again, with
 * the same sizes, by the next one. glibc hands blocks of a few hundred KB back to the kernel
 * when they sit at the top of the heap (or come from mmap), and the next run touches fresh
 * pages: wav2vec2-conformer took 922 page faults per run, 3.6 ms where the same run without
 * them takes 1.9 ms. onnxruntime keeps an arena for the same reason.
 *
 * What: a numpy memory handler (NEP 49) whose free keeps blocks of at least NRT_CACHE_MIN
 * bytes, up to NRT_CACHE_SLOTS blocks and a byte limit, and whose malloc hands back a kept
 * block of the same page-rounded size. Every other call goes to the C library. Blocks are
 * kept oldest first; one that does not fit evicts the oldest.
 *
 * Capacity rule: every block this handler returns for a size >= NRT_CACHE_MIN has room for
 * nrt_cache_class(size) bytes (malloc, calloc and realloc all ask for that much), so a block
 * freed under size s can serve any later request of class nrt_cache_class(s).
 *
 * Thread safety: numpy may allocate and free from any thread (arrays freed by the user after
 * a run, helper threads); the cache's state is guarded by a spin lock held for a few
 * instructions. The handler installs per context (numpy keeps it in a ContextVar): only the
 * code between normrt's activate / restore uses it; the arrays it allocated keep it, so
 * their data comes back here whenever they are freed.
 */
#ifndef NRT_BLOCK_CACHE_H
#define NRT_BLOCK_CACHE_H

#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <numpy/ndarraytypes.h>

#if defined(_MSC_VER)
#include <windows.h>
static volatile LONG nrt_cache_busy = 0;
static void nrt_cache_lock(void) { while (InterlockedExchange(&nrt_cache_busy, 1)) { } }
static void nrt_cache_unlock(void) { InterlockedExchange(&nrt_cache_busy, 0); }
static void nrt_cache_after_fork(void) { }
#else
#include <stdatomic.h>
#include <pthread.h>
static atomic_flag nrt_cache_busy = ATOMIC_FLAG_INIT;
static void nrt_cache_lock(void) { while (atomic_flag_test_and_set_explicit(&nrt_cache_busy, memory_order_acquire)) { } }
static void nrt_cache_unlock(void) { atomic_flag_clear_explicit(&nrt_cache_busy, memory_order_release); }
/* a fork while another thread held the lock: the child has that thread no more, so free the lock */
static void nrt_cache_child(void) { atomic_flag_clear(&nrt_cache_busy); }
static void nrt_cache_after_fork(void) { pthread_atfork(NULL, NULL, nrt_cache_child); }
#endif

/* smaller blocks come from malloc's bins, which reuse them without page faults */
#define NRT_CACHE_MIN ((size_t)1 << 16)
#define NRT_CACHE_SLOTS 64
#define NRT_PAGE ((size_t)4096)

typedef struct { void *ptr; size_t size; } nrt_block;

static nrt_block nrt_cache_blocks[NRT_CACHE_SLOTS];
static int nrt_cache_count = 0;
static size_t nrt_cache_bytes = 0;
static size_t nrt_cache_limit = (size_t)256 << 20;
static size_t nrt_cache_hits = 0, nrt_cache_misses = 0;

static size_t nrt_cache_class(size_t size)
{
    return size < NRT_CACHE_MIN ? size : (size + NRT_PAGE - 1) & ~(NRT_PAGE - 1);
}

/* a kept block of exactly `cls` bytes, or NULL (the caller allocates) */
static void *nrt_cache_take(size_t cls)
{
    void *p = NULL;
    nrt_cache_lock();
    for (int i = nrt_cache_count - 1; i >= 0; i--) {        /* newest first: warmest in cache */
        if (nrt_cache_blocks[i].size == cls) {
            p = nrt_cache_blocks[i].ptr;
            memmove(&nrt_cache_blocks[i], &nrt_cache_blocks[i + 1],
                    (size_t)(nrt_cache_count - 1 - i) * sizeof(nrt_block));
            nrt_cache_count--;
            nrt_cache_bytes -= cls;
            break;
        }
    }
    if (p) nrt_cache_hits++; else nrt_cache_misses++;
    nrt_cache_unlock();
    return p;
}

static void *nrt_cache_malloc(void *ctx, size_t size)
{
    (void)ctx;
    if (size < NRT_CACHE_MIN) return malloc(size);
    size_t cls = nrt_cache_class(size);
    void *p = nrt_cache_take(cls);
    return p ? p : malloc(cls);
}

static void *nrt_cache_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    if (elsize && nelem > SIZE_MAX / elsize) return NULL;
    size_t size = nelem * elsize;
    if (size < NRT_CACHE_MIN) return calloc(nelem, elsize);
    size_t cls = nrt_cache_class(size);
    void *p = nrt_cache_take(cls);
    if (p) { memset(p, 0, size); return p; }
    return calloc(1, cls);
}

static void *nrt_cache_realloc(void *ctx, void *ptr, size_t new_size)
{
    (void)ctx;
    /* every block is the C library's: its own realloc, to the new size's class (capacity rule) */
    return realloc(ptr, nrt_cache_class(new_size));
}

static void nrt_cache_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    if (ptr == NULL) return;
    size_t cls = nrt_cache_class(size);
    if (size < NRT_CACHE_MIN || cls > nrt_cache_limit) { free(ptr); return; }
    void *evicted[NRT_CACHE_SLOTS];
    int n_evicted = 0;
    nrt_cache_lock();
    while (nrt_cache_count > 0 && (nrt_cache_count == NRT_CACHE_SLOTS || nrt_cache_bytes + cls > nrt_cache_limit)) {
        evicted[n_evicted++] = nrt_cache_blocks[0].ptr;          /* the oldest */
        nrt_cache_bytes -= nrt_cache_blocks[0].size;
        memmove(&nrt_cache_blocks[0], &nrt_cache_blocks[1], (size_t)(nrt_cache_count - 1) * sizeof(nrt_block));
        nrt_cache_count--;
    }
    nrt_cache_blocks[nrt_cache_count].ptr = ptr;
    nrt_cache_blocks[nrt_cache_count].size = cls;
    nrt_cache_count++;
    nrt_cache_bytes += cls;
    nrt_cache_unlock();
    for (int i = 0; i < n_evicted; i++) free(evicted[i]);   /* outside the lock */
}

/* drop every kept block; the bytes released */
static size_t nrt_cache_clear(void)
{
    void *blocks[NRT_CACHE_SLOTS];
    int n;
    size_t bytes;
    nrt_cache_lock();
    n = nrt_cache_count;
    bytes = nrt_cache_bytes;
    for (int i = 0; i < n; i++) blocks[i] = nrt_cache_blocks[i].ptr;
    nrt_cache_count = 0;
    nrt_cache_bytes = 0;
    nrt_cache_unlock();
    for (int i = 0; i < n; i++) free(blocks[i]);
    return bytes;
}

static size_t nrt_cache_set_limit(size_t limit)
{
    size_t old = nrt_cache_limit;
    nrt_cache_lock();
    nrt_cache_limit = limit;
    nrt_cache_unlock();
    if (limit < old) nrt_cache_clear();       /* (simplest way to get under the new limit) */
    return old;
}

static PyDataMem_Handler nrt_cache_handler = {
    "normrt_block_cache",
    1,
    {NULL, nrt_cache_malloc, nrt_cache_calloc, nrt_cache_realloc, nrt_cache_free},
};

static PyDataMem_Handler *nrt_cache_handler_ptr(void) { return &nrt_cache_handler; }

static void nrt_cache_stats(size_t *count, size_t *bytes, size_t *limit, size_t *hits, size_t *misses)
{
    nrt_cache_lock();
    *count = (size_t)nrt_cache_count;
    *bytes = nrt_cache_bytes;
    *limit = nrt_cache_limit;
    *hits = nrt_cache_hits;
    *misses = nrt_cache_misses;
    nrt_cache_unlock();
}

#endif
