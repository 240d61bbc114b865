"""One InferenceSession per (model digest, thread count) per process, built on first use.

Partition tasks call `cached_session` instead of receiving a session: a
process loads and optimizes each model once, whatever the partition count,
and the scheduler never holds sessions (dask-ml's ParallelPostFit pickles its
estimator into every task; its scheduler memory grows with the partitions).

The session is used under its own lock: tasks running in several threads of
one worker take turns, each run with the session's full thread count, so a
worker never runs more kernel threads than it was given.
"""
import collections
import threading

from ..onnx.session import InferenceSession

MAX_CACHED_SESSIONS = 4     # models alive at once per process (recalibration passes make several)

_lock = threading.Lock()
_sessions = collections.OrderedDict()   # (digest, num_threads) -> _Entry, least recently used first


class _Entry:
    __slots__ = ("session", "lock", "ready")

    def __init__(self):
        self.session = None
        self.lock = threading.Lock()     # held while building, then around each run
        self.ready = False


def cached_session(ref, num_threads):
    """(session, lock) for the ModelRef `ref` with `num_threads` threads, built once per process."""
    key = (ref.digest, num_threads)
    with _lock:
        entry = _sessions.get(key)
        if entry is None:
            entry = _sessions[key] = _Entry()
            while len(_sessions) > MAX_CACHED_SESSIONS:
                _sessions.popitem(last=False)
        else:
            _sessions.move_to_end(key)
    if not entry.ready:
        with entry.lock:
            if not entry.ready:
                try:
                    if ref.path is not None:
                        ref.check_file()
                    entry.session = InferenceSession(ref.source(), num_threads=num_threads)
                    entry.ready = True
                except BaseException:
                    with _lock:
                        if _sessions.get(key) is entry:
                            del _sessions[key]
                    raise
    return entry.session, entry.lock


def cache_info():
    """[(digest, num_threads)] of the sessions this process holds (for tests and diagnostics)."""
    with _lock:
        return [k for k, e in _sessions.items() if e.ready]


def clear_cache():
    with _lock:
        _sessions.clear()
