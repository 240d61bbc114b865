"""pytest-benchmark suite for per-node cost: the 1,000-Add chain (bench/node_overhead.py) and the
small transformers models (bench/small_models.py), normrt and onnxruntime in one group each.

Each benchmark checks normrt's outputs first (the chain against the same adds in numpy, the
models against the torch outputs saved at export). The models are exported into the suite's
cache on first use (needs torch and transformers).
"""
import numpy as np
import pytest

from . import node_overhead, small_models


@pytest.fixture(scope="module")
def chain():
    return node_overhead.add_chain(1000, 16)


@pytest.mark.parametrize("impl", ["normrt", "ort"])
@pytest.mark.benchmark(group="add_chain-1000")
def test_add_chain(benchmark, chain, impl, threads):
    import normrt
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    want = x.copy()
    for t in chain.graph.initializer:
        want = want + node_overhead.numpy_helper.to_array(t)
    if impl == "ort":
        ort = pytest.importorskip("onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(chain.SerializeToString(), so, providers=["CPUExecutionProvider"])
    else:
        sess = normrt.InferenceSession(chain, num_threads=threads)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    benchmark.extra_info.update(nodes=1000, threads=threads)
    benchmark(sess.run, None, {"x": x})


@pytest.mark.parametrize("impl", ["normrt", "ort"])
@pytest.mark.parametrize("name", list(small_models.MODELS))
def test_small_model(benchmark, name, impl, threads):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import normrt
    path, feeds, expected = small_models.load(name)
    if impl == "ort":
        ort = pytest.importorskip("onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    else:
        sess = normrt.InferenceSession(str(path), num_threads=threads)
    for got, want in zip(sess.run(None, feeds), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * max(float(np.abs(want).max()), 1.0))
    benchmark.group = f"small_model-{name}"
    benchmark.extra_info.update(threads=threads)
    benchmark(sess.run, None, feeds)
