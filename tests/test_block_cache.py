"""The block cache (pyx/block_cache.h, normrt._memory): numpy's handler only inside a run,
blocks reused at the same size, zeroed by calloc, kept under the limit, released on demand,
safe under threads; and a session's results unchanged with it."""
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper

import normrt
from normrt import _memory
from normrt._kernels import block_cache

BIG = 1 << 18            # elements: 1 MB of float32, above the cache's 64 KB minimum



def _handler_name(a=None):
    try:
        from numpy._core.multiarray import get_handler_name
    except ImportError:             # numpy 1.x
        from numpy.core.multiarray import get_handler_name
    return get_handler_name() if a is None else get_handler_name(a)


@pytest.fixture
def cache():
    """The cache emptied, with its default limit, before and after the test."""
    old = block_cache.set_limit(256 << 20)
    block_cache.clear()
    yield block_cache
    block_cache.clear()
    block_cache.set_limit(old)


def _inside(fn):
    previous = block_cache.install()
    try:
        return fn()
    finally:
        block_cache.restore(previous)


def test_installed_only_between_install_and_restore(cache):
    assert _handler_name() != "normrt_block_cache"
    a = _inside(lambda: (_handler_name(), np.empty(BIG, np.float32)))
    assert a[0] == "normrt_block_cache"
    assert _handler_name(a[1]) == "normrt_block_cache"       # the array keeps its handler
    assert _handler_name() != "normrt_block_cache"
    assert _handler_name(np.empty(BIG, np.float32)) != "normrt_block_cache"


def test_a_freed_block_is_reused_at_its_size(cache):
    a = _inside(lambda: np.empty(BIG, np.float32))
    address = a.ctypes.data
    del a
    s = cache.stats()
    assert s["blocks"] == 1 and s["bytes"] == BIG * 4
    hits = s["hits"]
    b = _inside(lambda: np.empty(BIG, np.float32))
    assert b.ctypes.data == address and cache.stats()["hits"] == hits + 1
    c = _inside(lambda: np.empty(BIG + 4096, np.float32))     # another size: a new block
    assert c.ctypes.data != address


def test_small_arrays_are_not_kept(cache):
    a = _inside(lambda: np.empty(1000, np.float32))
    del a
    assert cache.stats()["blocks"] == 0


def test_zeros_from_a_reused_block_are_zero(cache):
    a = _inside(lambda: np.full(BIG, 7.0, np.float32))
    del a
    z = _inside(lambda: np.zeros(BIG, np.float32))
    assert cache.stats()["hits"] >= 1
    assert not z.any()


def test_resize_keeps_the_data(cache):
    """ndarray.resize goes through the handler's realloc (to a size the cache can later reuse)."""
    def grow():
        a = np.arange(BIG, dtype=np.float32)
        a.resize(3 * BIG, refcheck=False)
        return a
    a = _inside(grow)
    assert np.array_equal(a[:BIG], np.arange(BIG, dtype=np.float32)) and not a[BIG:].any()
    del a
    assert cache.stats()["bytes"] == 3 * BIG * 4
    b = _inside(lambda: np.ones(3 * BIG, np.float32))
    assert b.sum() == 3 * BIG


def test_limit_evicts_the_oldest_and_zero_keeps_nothing(cache):
    cache.set_limit(3 * BIG * 4)
    arrays = _inside(lambda: [np.empty(BIG, np.float32) for _ in range(5)])
    del arrays
    assert cache.stats()["bytes"] <= 3 * BIG * 4 and cache.stats()["blocks"] == 3
    cache.set_limit(0)
    assert cache.stats()["blocks"] == 0
    a = _inside(lambda: np.empty(BIG, np.float32))
    del a
    assert cache.stats()["blocks"] == 0


def test_release_memory(cache):
    arrays = _inside(lambda: [np.empty(BIG, np.float32) for _ in range(2)])
    del arrays
    assert normrt.release_memory() == 2 * BIG * 4
    assert normrt.block_cache_stats()["blocks"] == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True])
def test_limit_checked(bad):
    with pytest.raises(ValueError, match="nbytes"):
        normrt.set_block_cache_limit(bad)


def test_env_limit(monkeypatch):
    monkeypatch.setenv("NORMRT_BLOCK_CACHE_MB", "1.5")
    assert _memory._limit_from_env() == int(1.5 * (1 << 20))
    for bad in ("lots", "-1", "nan", "inf"):
        monkeypatch.setenv("NORMRT_BLOCK_CACHE_MB", bad)
        with pytest.warns(RuntimeWarning, match="NORMRT_BLOCK_CACHE_MB"):
            assert _memory._limit_from_env() == _memory.DEFAULT_LIMIT_MB << 20


def test_threads_allocating_and_freeing(cache):
    """Blocks taken and given back from several threads at once: each array keeps its own data."""
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        previous = block_cache.install()
        try:
            for _ in range(200):
                n = BIG // 4 * int(rng.integers(1, 4))
                a = np.full(n, float(seed), np.float32)
                b = np.zeros(n, np.float32)
                if not (a == seed).all() or b.any():
                    errors.append(seed)
                del a, b
        finally:
            block_cache.restore(previous)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cache.stats()["bytes"] <= cache.stats()["limit"]


def test_session_outputs_unchanged_and_blocks_reused(cache):
    """A model whose intermediates are above the cache's minimum: bitwise the same outputs with
    the cache on (default) and off (limit 0), and the second run reuses the first one's blocks."""
    x_shape = (1, 16, 64, 64)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Pad", ["r", "pads"], ["p"], mode="constant"),
             helper.make_node("Sigmoid", ["p"], ["y"])]
    pads = helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 1, 1, 0, 0, 1, 1])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    sess = normrt.InferenceSession(model)
    want = [sess.run(None, {"x": x})[0] for _ in range(3)]
    assert _handler_name(want[0]) == "normrt_block_cache"
    del want[1:]
    hits = cache.stats()["hits"]
    got = sess.run(None, {"x": x})[0]
    assert cache.stats()["hits"] > hits
    cache.set_limit(0)
    off = sess.run(None, {"x": x})[0]
    assert np.array_equal(got, want[0]) and np.array_equal(off, want[0])
    assert _handler_name() != "normrt_block_cache"
