"""The onnx package's `light_*` models (conv nets with BatchNormalization / LRN) through InferenceSession.

Inputs are made exactly as onnx's backend test runner makes them for these
models (`Runner.generate_dummy_data(..., random=False)`: arange / size, float32,
symbolic dims as 1) and outputs compared with the stored `light_*_output_0.pb`
using the rtol/atol of the suite's `data/real/test_<model>/data.json`.
"""
import json
import os

import numpy as np
import onnx
import onnx.backend.test
import pytest
from onnx.backend.test.runner import Runner

import normrt
from normrt.onnx.report import COMPUTE_OPS

DATA = os.path.join(os.path.dirname(onnx.backend.test.__file__), "data")
MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
          "squeezenet", "vgg19", "zfnet512"]


def _case(name):
    with open(os.path.join(DATA, "real", f"test_{name}", "data.json")) as f:
        meta = json.load(f)
    path = os.path.join(DATA, "light", f"light_{name}.onnx")
    return meta, path


@pytest.mark.parametrize("name", MODELS)
def test_light_model(name):
    meta, path = _case(name)
    assert meta["url"].endswith(os.path.basename(path))
    model = onnx.load(path)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {x.name: Runner.generate_dummy_data(x, seed=0, name=meta["model_name"], random=False)
             for x in model.graph.input if x.name not in initializers}
    expected = onnx.numpy_helper.to_array(onnx.load_tensor(path[:-len(".onnx")] + "_output_0.pb"))

    sess = normrt.InferenceSession(path)
    assert [a.name for a in sess.get_inputs()] == list(feeds)
    (got,) = sess.run(None, feeds)

    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=meta["rtol"], atol=meta["atol"])
    # every BatchNormalization / LRN of the model ran on a kernel or was folded into its Conv's weights
    n_norms = sum(1 for n in model.graph.node if n.op_type in ("BatchNormalization", "LRN"))
    folded = sum(1 for e in sess.report["fused"] if e["pass"] == "fold_batch_norm")
    norm_kernels = [k for k in sess.kernel_nodes() if k[1] not in COMPUTE_OPS]   # not normrt::Conv epilogues
    assert len(norm_kernels) + folded == n_norms
    assert not sess.report["refused"]
