"""The memory normrt's runs allocate: a cache of freed numpy data blocks (pyx/block_cache.h).

A run's intermediate arrays are freed when it ends and allocated again, at the same sizes, by
the next run. The C library returns blocks of a few hundred KB to the kernel when they sit at
the top of the heap, and the next run pays a page fault for every 4 KB it touches again
(wav2vec2-conformer: 922 faults, 3.6 ms per run against 1.9 ms without them). The ONNX
executor therefore runs with numpy's allocation handler set to the block cache (`install` /
`restore`, per context: other threads and the code around normrt keep numpy's own), which keeps
freed blocks of 64 KB or more, up to a byte limit, and hands them back at the same size.

The limit is NORMRT_BLOCK_CACHE_MB (default 256; 0 keeps nothing), or `set_block_cache_limit`.
`release_memory()` frees what is kept now, e.g. once a long-lived process is done with a model.
"""
import os
import warnings

from ._kernels import block_cache as _cache

DEFAULT_LIMIT_MB = 256


def _limit_from_env():
    """NORMRT_BLOCK_CACHE_MB in bytes; a value that is no number >= 0 warns (naming the variable)
    and gives the default: read at import, where an exception would leave normrt unimportable."""
    raw = os.environ.get("NORMRT_BLOCK_CACHE_MB", "").strip()
    if not raw:
        return DEFAULT_LIMIT_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb >= 0 or mb == float("inf"):
        warnings.warn(f"NORMRT_BLOCK_CACHE_MB must be a number of megabytes >= 0, got {raw!r}; using "
                      f"{DEFAULT_LIMIT_MB}", RuntimeWarning, stacklevel=2)
        return DEFAULT_LIMIT_MB << 20
    return int(mb * (1 << 20))


_cache.set_limit(_limit_from_env())

install = _cache.install
restore = _cache.restore


def set_block_cache_limit(nbytes):
    """Keep at most `nbytes` bytes of freed blocks for reuse (0: none); returns the previous limit.
    Lowering it frees what is kept now."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be a non-negative int, got {nbytes!r}")
    return _cache.set_limit(nbytes)


def release_memory():
    """Free the data blocks normrt keeps for its next runs; returns the bytes released."""
    return _cache.clear()


def block_cache_stats():
    """What the block cache keeps now ("blocks", "bytes", "limit") and how often a run's
    allocation reused a kept block ("hits") or did not ("misses", of 64 KB or more)."""
    return _cache.stats()
