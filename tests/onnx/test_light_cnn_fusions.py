"""The Conv graph fusions on the onnx package's light ResNet-50 and DenseNet-121 (their outputs are checked
against the stored ones by test_light_models.py): what is left of the graph after normrt.optimize."""
import collections
import os

import numpy as np
import onnx
import pytest

import normrt
from normrt.onnx.executor import Executor
from normrt.onnx.loader import load_model
from normrt.onnx.optimize import default_passes, optimize_model

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
GRAPH_FUSIONS = ("fold_channel_affine", "pool_before_pointwise_conv", "conv_epilogue")


def optimized(name):
    return normrt.optimize(os.path.join(LIGHT, f"light_{name}.onnx"), report=True)


def op_counts(model):
    return collections.Counter((n.domain or "", n.op_type) for n in model.graph.node)


def test_resnet50():
    """Every Relu and residual Sum is in a normrt::Conv (the 4 projection shortcuts stay plain Convs)."""
    model, report = optimized("resnet50")
    counts = op_counts(model)
    assert counts[("normrt", "Conv")] == 49 and counts[("", "Conv")] == 4
    assert counts[("", "Relu")] == 0 and counts[("", "Sum")] == 0
    patterns = collections.Counter(e["pattern"] for e in report["fused"] if e["pass"] == "conv_epilogue")
    assert patterns == {"Conv+Relu": 33, "Conv+Sum+Relu": 16}
    assert not report["refused"]


def test_densenet121():
    """No Mul/Add/Relu left: the affine constants are in the Convs and BatchNorms, the Relus fused after them;
    the three transition AveragePools run before their 1x1 Conv."""
    model, report = optimized("densenet121")
    counts = op_counts(model)
    assert not {op for (dom, op) in counts if dom == ""} & {"Mul", "Add", "Relu", "BatchNormalization"}
    assert counts[("normrt", "BatchNorm")] == 62 and counts[("normrt", "Conv")] == 59
    assert report["passes"]["fold_channel_affine"] == 242
    assert report["passes"]["pool_before_pointwise_conv"] == 3
    assert all(e["activation"] == "relu" for e in report["fused"] if e["normrt_op"] == "BatchNorm")
    assert not report["refused"]


@pytest.mark.parametrize("name", ["resnet50", "densenet121"])
def test_same_outputs_as_without_the_fusions(name):
    path = os.path.join(LIGHT, f"light_{name}.onnx")
    x = np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype(np.float32)
    outs = []
    for passes in (default_passes(), [p for p in default_passes() if p.name not in GRAPH_FUSIONS]):
        model, _ = optimize_model(load_model(path), passes=passes)
        ex = Executor(model)
        outs.append(ex.run({ex.input_names[0]: x})[0])
    scale = float(np.max(np.abs(outs[1])))
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-5 * scale)
