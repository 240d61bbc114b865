"""Fixtures for the benchmark suite: thread count, case inputs, runners.

Benchmarks are skipped in the normal test run (--benchmark-skip in pyproject's
addopts); see bench/README.md for how to run them.
"""
import functools

import pytest

from .backends import Unavailable, make_runner
from .cases import bench_threads, make_inputs, reference


@pytest.fixture(scope="session")
def threads():
    """Threads for every implementation: $NORMRT_BENCH_THREADS, default 2."""
    return bench_threads()


@functools.lru_cache(maxsize=1)
def _inputs_and_reference(case):
    # tests run case by case (all implementations of one case in a row), so one
    # cached case avoids rebuilding large inputs without holding them all
    arrays = make_inputs(case)
    return arrays, reference(case, arrays)


@pytest.fixture
def arrays(case):
    return _inputs_and_reference(case)[0]


@pytest.fixture
def expected(case):
    """The float64 numpy result of the case."""
    return _inputs_and_reference(case)[1]


_REQUIRES = {"ort": "onnxruntime", "ort-unfused": "onnxruntime", "torch": "torch"}


@pytest.fixture
def runner(case, impl, arrays, threads):
    if impl in _REQUIRES:
        pytest.importorskip(_REQUIRES[impl])
    try:
        return make_runner(impl, case, arrays, threads)
    except Unavailable as exc:
        pytest.skip(str(exc))

