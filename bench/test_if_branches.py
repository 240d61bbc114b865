"""pytest-benchmark suite for If-wrapped models (bench/if_branches.py: an export as both branches of
an If, the weights outside, as Optimum's merged decoders are): normrt on the plain export and on
the wrapped one, onnxruntime on the wrapped one, in one group per model. Each first checks the
wrapped model's outputs against the plain export's stored ones."""
import numpy as np
import onnx
import pytest

from . import if_branches


@pytest.mark.parametrize("impl", ["normrt_plain", "normrt_if", "ort_if"])
@pytest.mark.parametrize("name", if_branches.DEFAULT)
def test_if_wrapped_model(benchmark, name, impl, threads):
    import normrt
    path = if_branches.DATA / name
    feeds = if_branches.feeds_of(path)
    data = np.load(str(path).replace(".onnx", ".npz"))
    want = [v for k, v in data.items() if k.startswith("output:")]
    if impl == "normrt_plain":
        sess = normrt.InferenceSession(str(path), num_threads=threads)
    else:
        merged = if_branches.wrap_in_if(onnx.load(str(path))).SerializeToString()
        feeds = dict(feeds, use_first=np.array(True))
        if impl == "ort_if":
            ort = pytest.importorskip("onnxruntime")
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            sess = ort.InferenceSession(merged, so, providers=["CPUExecutionProvider"])
        else:
            sess = normrt.InferenceSession(merged, num_threads=threads)
    for got, w in zip(sess.run(None, feeds), want):
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4)
    benchmark.group = f"if_wrapped-{name.removesuffix('.onnx')}"
    benchmark.extra_info.update(threads=threads)
    benchmark(sess.run, None, feeds)


@pytest.mark.parametrize("impl", ["normrt", "ort"])
def test_scan_steps(benchmark, impl, threads):
    """bench/if_branches.py's Scan (16 steps of a LayerNorm body): normrt's nested executor per
    step against onnxruntime's, the outputs checked against onnxruntime's first."""
    ort = pytest.importorskip("onnxruntime")
    import normrt
    model, feeds = if_branches.scan_model()
    data = model.SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    reference = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    sess = reference if impl == "ort" else normrt.InferenceSession(data, num_threads=threads)
    for got, want in zip(sess.run(None, feeds), reference.run(None, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    benchmark.group = "scan-16-steps"
    benchmark.extra_info.update(threads=threads)
    benchmark(sess.run, None, feeds)
