"""A numpy memory handler keeping freed data blocks for reuse (pyx/block_cache.h has the why).

normrt.onnx's executor installs it around each run (`handler()`, then numpy's
PyDataMem_SetHandler, which is per context); the rest of the process keeps numpy's own.
"""
from cpython.pycapsule cimport PyCapsule_New
cimport numpy as cnp

cnp.import_array()

cdef extern from "block_cache.h":
    ctypedef struct PyDataMem_Handler:
        pass
    PyDataMem_Handler *nrt_cache_handler_ptr()
    void nrt_cache_after_fork()
    size_t nrt_cache_clear() nogil
    size_t nrt_cache_set_limit(size_t limit) nogil
    void nrt_cache_stats(size_t *count, size_t *bytes, size_t *limit, size_t *hits, size_t *misses) nogil
    size_t NRT_CACHE_MIN
    int NRT_CACHE_SLOTS

# numpy reads the handler from a capsule named "mem_handler"; the struct is static (never freed)
nrt_cache_after_fork()      # once, at import
_CAPSULE = PyCapsule_New(<void *>nrt_cache_handler_ptr(), "mem_handler", NULL)


def install():
    """Make the block cache numpy's handler in the current context; returns the one it replaces
    (give it to `restore`)."""
    return cnp.PyDataMem_SetHandler(_CAPSULE)


def restore(previous):
    """Put back the handler `install` returned."""
    cnp.PyDataMem_SetHandler(previous)


def clear():
    """Free every kept block; returns the bytes released."""
    return nrt_cache_clear()


def set_limit(size_t limit):
    """Keep at most `limit` bytes of blocks (0: keep none); returns the previous limit."""
    return nrt_cache_set_limit(limit)


def stats():
    """{"blocks", "bytes", "limit", "hits", "misses"}: what is kept now and the reuse counts."""
    cdef size_t count, nbytes, limit, hits, misses
    nrt_cache_stats(&count, &nbytes, &limit, &hits, &misses)
    return {"blocks": count, "bytes": nbytes, "limit": limit, "hits": hits, "misses": misses,
            "min_block": NRT_CACHE_MIN, "slots": NRT_CACHE_SLOTS}
