"""Shared pytest setup for the test suite."""
import os

import pytest
from hypothesis import settings

import normrt

# In CI (the CI variable set, as .ci/run's hosts do) hypothesis draws the same examples every
# run, so a red CI is a regression, not a lucky draw; elsewhere each run explores new ones
# (and keeps what failed in .hypothesis/ to replay first).
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_report_header(config):
    # which kernel build ran (NORMRT_ISA forces one): a failure at one ISA
    # level must say so; tests/test_isa.py checks this line in its runs
    info = normrt.cpu_info()
    forced = f", NORMRT_ISA={info['forced']}" if info["forced"] else ""
    return f"normrt kernels: {info['level']} (cpu {info['cpu_level']}{forced})"


@pytest.fixture(autouse=True)
def _split_small_work(monkeypatch):
    """Kernels split their work from 32K elements / 2 Mflop during the tests.

    normrt._thread_policy sizes its thresholds for speed (410K elements,
    ~100 us of one thread's work; 3 Mflop for products), so most of the
    suite's arrays would run on one thread whatever `normrt.threads(n)` says, and the tests
    of bitwise identity across thread counts would compare one thread with
    itself. The split never changes a result, only who computes what, so the
    suite splits from smaller work and
    exercises the threaded paths. Policy tests read the patched values.
    """
    from normrt import _thread_policy
    monkeypatch.setattr(_thread_policy, "MEMORY_BOUND_MIN_ELEMENTS", 1 << 15)
    monkeypatch.setattr(_thread_policy, "COMPUTE_BOUND_MIN_FLOPS", 2_000_000)
