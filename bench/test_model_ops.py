"""pytest-benchmark suite for bench/model_ops.py: recurrent layers, GridSample, Col2Im, the
quantization pairs, einsum, batched products, DFT / STFT, ScatterND and ELU, normrt and
onnxruntime in one group per case.

Each benchmark checks normrt's output against onnxruntime's first (rtol/atol 1e-5; the
quantization pairs bitwise, onnxruntime rounding them the same way).
"""
import functools

import numpy as np
import pytest

from .model_ops import CASES, build, tolerance


@functools.lru_cache(maxsize=1)
def _case(name):
    return build(name)


def _session(impl, model, threads):
    if impl == "ort":
        ort = pytest.importorskip("onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    import normrt
    return normrt.InferenceSession(model, num_threads=threads)


@pytest.mark.parametrize("impl", ["normrt", "ort"])
@pytest.mark.parametrize("name", list(CASES))
def test_model_op(benchmark, name, impl, threads):
    model, x = _case(name)
    sess = _session(impl, model, threads)
    got = sess.run(None, {"x": x})[0]
    if impl == "normrt":
        want = _session("ort", model, threads).run(None, {"x": x})[0]
        tol = tolerance(name, want)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    benchmark.group = f"model_op-{name}"
    benchmark.extra_info.update(threads=threads)
    benchmark(sess.run, None, {"x": x})
