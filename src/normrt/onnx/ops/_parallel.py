"""Two-way parallelism for numpy-level work: the calling thread plus one helper thread.

numpy releases the GIL inside ufunc loops and ctypes calls (the BLAS), so big
independent pieces (attention heads) run on two cores at once. Used only when
normrt's thread setting allows more than one thread; each piece then runs
with one thread for everything it calls (no oversubscription).
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..._threads import get_num_threads, threads

_lock = threading.Lock()
_pool = []


def _helper():
    with _lock:
        if not _pool:
            _pool.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="normrt-ops"))
        return _pool[0]


if hasattr(os, "register_at_fork"):
    # the helper thread does not survive a fork: start a new one in the child
    os.register_at_fork(after_in_child=_pool.clear)


def _run_single(fn, lo, hi):
    with threads(1):
        for i in range(lo, hi):
            fn(i)


def for_each(fn, n, parallel=True):
    """fn(0), ..., fn(n - 1), split between this thread and the helper when
    `parallel`, n > 1 and the thread setting is > 1."""
    if not parallel or n < 2 or get_num_threads() < 2:
        for i in range(n):
            fn(i)
        return
    half = (n + 1) // 2
    fut = _helper().submit(_run_single, fn, half, n)
    try:
        _run_single(fn, 0, half)
    finally:
        fut.result()


# elementwise work below this many elements stays on one thread (a helper
# round trip costs ~20 us; a float32 ufunc pass ~0.2-0.5 ns per element)
ELEMENTWISE_MIN = 1 << 18


def ufunc(fn, out, *operands):
    """fn(*operands, out=out) for a numpy ufunc, split in two halves over two threads
    when big; operands are arrays of out's shape (C-contiguous) or scalars / size-1
    arrays. Anything else is one plain call. Returns out."""
    if (out is None or out.size < ELEMENTWISE_MIN or not out.flags.c_contiguous
            or get_num_threads() < 2):
        return fn(*operands, out=out)
    flat = []
    for a in operands:
        if isinstance(a, np.ndarray) and a.size > 1:
            if a.shape != out.shape or not a.flags.c_contiguous:
                return fn(*operands, out=out)
            flat.append(a.reshape(-1))
        else:
            flat.append(a)
    o = out.reshape(-1)
    half = o.size // 2

    def part(i):
        sl = slice(0, half) if i == 0 else slice(half, None)
        fn(*[a[sl] if isinstance(a, np.ndarray) and a.ndim else a for a in flat], out=o[sl])

    for_each(part, 2)
    return out
