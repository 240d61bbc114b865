"""Build and thread control."""
import concurrent.futures as cf
import os
import subprocess
import sys

import numpy as np
import pytest

import normrt


def test_openmp_enabled_on_this_machine():
    # the shipped build must be parallel here; a serial build is a build bug
    assert normrt.openmp_enabled() is True


def test_set_and_get_num_threads():
    old = normrt.get_num_threads()
    try:
        normrt.set_num_threads(3)
        assert normrt.get_num_threads() == 3
    finally:
        normrt.set_num_threads(old)
    assert normrt.get_num_threads() == old


@pytest.mark.parametrize("bad", [0, -1, -8])
def test_non_positive_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="num_threads"):
        normrt.set_num_threads(bad)
    with pytest.raises(ValueError, match="num_threads"):
        with normrt.threads(bad):
            pass


@pytest.mark.parametrize("bad", [1.5, "2", None, True])
def test_non_integer_thread_counts_are_refused(bad):
    with pytest.raises(TypeError, match="num_threads"):
        normrt.set_num_threads(bad)


def test_threads_context_manager_restores_and_nests():
    base = normrt.get_num_threads()
    with normrt.threads(1):
        assert normrt.get_num_threads() == 1
        with normrt.threads(5):
            assert normrt.get_num_threads() == 5
        assert normrt.get_num_threads() == 1
    assert normrt.get_num_threads() == base


def test_threads_context_is_restored_after_an_exception():
    base = normrt.get_num_threads()
    with pytest.raises(RuntimeError):
        with normrt.threads(1):
            raise RuntimeError("boom")
    assert normrt.get_num_threads() == base


def test_threads_context_is_per_python_thread():
    base = normrt.get_num_threads()
    with normrt.threads(1):
        with cf.ThreadPoolExecutor(1) as pool:
            seen = pool.submit(normrt.get_num_threads).result()
    assert seen == base


def _default_in_subprocess(env_value):
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if env_value is not None:
        env["OMP_NUM_THREADS"] = env_value
    out = subprocess.run([sys.executable, "-c", "import normrt; print(normrt.get_num_threads())"],
                         env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_default_honours_omp_num_threads():
    assert _default_in_subprocess("3") == 3
    assert _default_in_subprocess("2,1") == 2


def test_default_without_omp_num_threads_is_usable_cores():
    assert _default_in_subprocess(None) == len(os.sched_getaffinity(0))


def test_kernels_use_the_requested_thread_count_without_changing_results():
    x = np.random.default_rng(0).standard_normal((1, 300_000)).astype(np.float32)
    results = []
    for n in (1, 2, 8):
        with normrt.threads(n):
            results.append(normrt.layer_norm(x))
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_thread_policy_gives_small_work_one_thread():
    from normrt import _thread_policy as tp
    with normrt.threads(2):
        assert tp.memory_bound(tp.MEMORY_BOUND_MIN_ELEMENTS - 1) == 1
        assert tp.memory_bound(tp.MEMORY_BOUND_MIN_ELEMENTS) == 2
        assert tp.compute_bound(tp.COMPUTE_BOUND_MIN_FLOPS - 1) == 1
        assert tp.compute_bound(10 * tp.COMPUTE_BOUND_MIN_FLOPS) == 2
    with normrt.threads(1):
        assert tp.memory_bound(1 << 30) == 1 and tp.compute_bound(1e12) == 1


def test_products_of_few_rows_split_by_their_weight():
    """A decode step's product (one row) has few flops but streams its whole weight: it splits
    from PRODUCT_SPLIT_WEIGHTS weights whatever its flops; smaller ones by their flops."""
    from normrt import _thread_policy as tp
    k = 1024
    n = tp.PRODUCT_SPLIT_WEIGHTS // k
    assert 2 * k * n < tp.COMPUTE_BOUND_MIN_FLOPS           # one row: under the flops rule
    with normrt.threads(2):
        assert tp.product(1, k, n) == 2
        assert tp.product(1, k, n - 1) == 1
        assert tp.product(tp.COMPUTE_BOUND_MIN_FLOPS // (2 * 64 * 64) + 1, 64, 64) == 2
    with normrt.threads(1):
        assert tp.product(1, k, 4 * n) == 1


@pytest.mark.parametrize("name", ["softmax_rows", "gather"])
def test_softmax_and_gather_split_by_their_estimated_time(monkeypatch, name):
    """Softmax (an exp per element) and GatherElements (a scattered read per output) split by their
    one-thread time, below the memory-bound count (which the suite's fixture lowers: restored to
    its real size here)."""
    from normrt import _thread_policy as tp
    monkeypatch.setattr(tp, "MEMORY_BOUND_MIN_ELEMENTS", tp.SPLIT_MIN_US * tp.MEMORY_BOUND_ELEMENTS_PER_US)
    ns = {"softmax_rows": tp.SOFTMAX_NS_PER_ELEMENT, "gather": tp.GATHER_NS_PER_ELEMENT}[name]
    threads_for = getattr(tp, name)
    at = int(tp.PROGRAM_SPLIT_MIN_US * 1000 / ns) + 1
    assert at < tp.MEMORY_BOUND_MIN_ELEMENTS
    with normrt.threads(2):
        assert threads_for(at - 2) == 1 and threads_for(at) == 2
    with normrt.threads(1):
        assert threads_for(1 << 30) == 1


def test_configure_openmp_keeps_a_users_wait_policy():
    from normrt import _thread_policy as tp
    env = {}
    tp.configure_openmp(env)
    assert env == {"GOMP_SPINCOUNT": str(tp.WAIT_SPINCOUNT)}
    for user in ({"GOMP_SPINCOUNT": "5"}, {"OMP_WAIT_POLICY": "active"}):
        env = dict(user)
        tp.configure_openmp(env)
        assert env == user


def test_wait_policy_is_set_before_the_kernels_load():
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", "import os, normrt; print(os.environ['GOMP_SPINCOUNT'])"],
                         env=env, capture_output=True, text=True, check=True)
    from normrt import _thread_policy as tp
    assert out.stdout.strip() == str(tp.WAIT_SPINCOUNT)


def test_openmp_runtime_is_named():
    from normrt._kernels.openmp_info import openmp_runtime
    if normrt.openmp_enabled():
        assert openmp_runtime() in ("libgomp", "libomp", "vcomp", "unknown")
    else:
        assert openmp_runtime() == "none"
