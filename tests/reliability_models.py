"""Shared helpers of the reliability tests and scripts (scripts/memory.py, scripts/soak.py): the models they
build, and process memory readings."""
import importlib.util
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def rss_mb():
    """This process's resident set size, MB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def symbolic_block_model(d=64, hidden=256, seed=0):
    """A pre-LN transformer block on x[batch, seq, d] with symbolic batch and seq:
    LayerNorm -> single-head attention (MatMul/Transpose/Div/Softmax/MatMul) -> residual Add
    -> LayerNorm -> MLP (MatMul, Relu, MatMul) -> residual Add."""
    rng = np.random.default_rng(seed)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    inits = [w("wq", d, d), w("wk", d, d), w("wv", d, d), w("wo", d, d), w("w1", d, hidden), w("w2", hidden, d),
             numpy_helper.from_array(np.ones(d, np.float32), "g1"), numpy_helper.from_array(np.zeros(d, np.float32), "b1"),
             numpy_helper.from_array(np.ones(d, np.float32), "g2"), numpy_helper.from_array(np.zeros(d, np.float32), "b2"),
             numpy_helper.from_array(np.array(np.sqrt(d), np.float32), "scale")]
    mk = helper.make_node
    nodes = [mk("LayerNormalization", ["x", "g1", "b1"], ["h"], name="ln1", axis=-1),
             mk("MatMul", ["h", "wq"], ["q"], name="q"), mk("MatMul", ["h", "wk"], ["k"], name="k"),
             mk("MatMul", ["h", "wv"], ["v"], name="v"),
             mk("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
             mk("MatMul", ["q", "kt"], ["s"], name="scores"), mk("Div", ["s", "scale"], ["ss"], name="div"),
             mk("Softmax", ["ss"], ["p"], name="softmax", axis=-1), mk("MatMul", ["p", "v"], ["a"], name="pv"),
             mk("MatMul", ["a", "wo"], ["o"], name="o"), mk("Add", ["x", "o"], ["r1"], name="res1"),
             mk("LayerNormalization", ["r1", "g2", "b2"], ["h2"], name="ln2", axis=-1),
             mk("MatMul", ["h2", "w1"], ["m1"], name="fc1"), mk("Relu", ["m1"], ["m2"], name="relu"),
             mk("MatMul", ["m2", "w2"], ["m3"], name="fc2"), mk("Add", ["r1", "m3"], ["y"], name="res2")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", d])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def small_cnn_model(seed=0):
    """A small CNN on x[1, 8, 16, 16]: Conv -> GroupNormalization(4) -> Relu -> Conv -> Add -> GlobalAveragePool."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(16, np.float32), "c1"),
             numpy_helper.from_array((rng.standard_normal((8, 16, 3, 3)) * 0.1).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "beta")]
    mk = helper.make_node
    nodes = [mk("Conv", ["x", "w1", "c1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             mk("GroupNormalization", ["a", "gamma", "beta"], ["n"], name="gn", num_groups=4),
             mk("Relu", ["n"], ["r"], name="relu"),
             mk("Conv", ["r", "w2"], ["b"], name="conv2", pads=[1, 1, 1, 1]),
             mk("Add", ["x", "b"], ["s"], name="res"), mk("GlobalAveragePool", ["s"], ["y"], name="gap")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def normrt_import_root():
    """The sys.path entry this process imports normrt from (the repo's src/ in a
    development checkout, site-packages for an installed wheel): what a child
    process's PYTHONPATH must lead with to run the same build."""
    return str(Path(importlib.util.find_spec("normrt").origin).resolve().parents[1])
