"""Thread control: how many OpenMP threads the kernels use.

The default honours OMP_NUM_THREADS, else the number of cores this process may
run on. `threads(n)` overrides it for the calling Python thread only, so
concurrent callers do not see each other's setting.
"""
import contextlib
import os
import threading


def _usable_cores():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _default_threads():
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n > 0:
            return n
    return _usable_cores()


def _check(n):
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"num_threads must be an int, got {type(n).__name__}")
    n = int(n)
    if n <= 0:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    return n


class _Local(threading.local):
    def __init__(self):
        self.stack = []   # overrides from threads(n) blocks, innermost last


_global = [_default_threads()]
_local = _Local()


def override_stack():
    """The calling Python thread's list of threads(n) overrides, innermost last: for a hot path
    that pushes and pops its own (InferenceSession.run), where the context manager costs ~1 us."""
    return _local.stack


def set_num_threads(n):
    """Set the number of threads normrt's kernels use (process-wide default)."""
    _global[0] = _check(n)


def get_num_threads():
    """The number of threads the next kernel call from this Python thread will use."""
    stack = _local.stack
    return stack[-1] if stack else _global[0]


@contextlib.contextmanager
def threads(n):
    """Use `n` threads inside the block (for the calling Python thread only)."""
    n = _check(n)
    stack = _local.stack
    stack.append(n)
    try:
        yield n
    finally:
        stack.pop()
