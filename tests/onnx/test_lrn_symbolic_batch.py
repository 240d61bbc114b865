"""lrn_decomposed with a symbolic batch axis (nn.LocalResponseNorm exported with a dynamic batch).

The dynamo exporter's LocalResponseNorm with `dynamic_shapes` on the batch views X² as
(N, 1, C, H, -1) with N symbolic; the pass used to refuse any X whose shape was not all
static. hypothesis builds the dynamo form (Reshape to [0, 1, C, H, -1] (0: copy N) for
rank 4, Unsqueeze for rank 3; Squeeze back) over a symbolic N, odd sizes and random
constants, runs it at two batch sizes and checks one normrt LRN matching torch's formula
in float64; a symbolic channel axis is still refused (the window runs over C).
"""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import normrt

F = TensorProto.FLOAT
SETTINGS = settings(max_examples=int(os.environ.get("NORMRT_HYPOTHESIS_EXAMPLES", 40)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def torch_lrn(x, size, alpha, beta, k):
    """torch.nn.functional.local_response_norm in float64 (zero padding, count_include_pad)."""
    x64 = np.asarray(x, np.float64)
    C = x64.shape[1]
    pad = [(0, 0)] * x64.ndim
    pad[1] = (size // 2, (size - 1) // 2)
    sqp = np.pad(x64 ** 2, pad)
    return x64 / (k + alpha * sum(sqp[:, i:i + C] for i in range(size)) / size) ** beta


def lrn_model(dims, size, alpha, beta, k):
    """The dynamo exporter's LocalResponseNorm, X of shape `dims` (symbols allowed)."""
    rank = len(dims)
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in
             (("alpha", alpha), ("beta", beta), ("k", k))]
    ints = lambda name, v: inits.append(numpy_helper.from_array(np.asarray(v, np.int64), name))  # noqa: E731
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"])]
    if rank == 3:
        ints("one", [1])
        nodes.append(helper.make_node("Unsqueeze", ["sq", "one"], ["view"]))
        vr = 4
    else:
        ints("view_shape", [0, 1, dims[1], dims[2], -1])
        nodes.append(helper.make_node("Reshape", ["sq", "view_shape"], ["view"]))
        vr = 5
    pads = [0] * (2 * vr)
    pads[2], pads[vr + 2] = size // 2, (size - 1) // 2
    ints("pads", pads)
    ints("squeeze_axes", [1])
    nodes += [helper.make_node("Pad", ["view", "pads"], ["padded"], mode="constant"),
              helper.make_node("AveragePool", ["padded"], ["pooled"], kernel_shape=[size] + [1] * (vr - 3),
                               strides=[1] * (vr - 2), pads=[0] * (2 * (vr - 2)), count_include_pad=1),
              helper.make_node("Squeeze", ["pooled", "squeeze_axes"], ["summed"]),
              helper.make_node("Mul", ["summed", "alpha"], ["scaled"]),
              helper.make_node("Add", ["scaled", "k"], ["biased"]),
              helper.make_node("Pow", ["biased", "beta"], ["den"]),
              helper.make_node("Div", ["x", "den"], ["y"])]
    graph = helper.make_graph(nodes, "lrn", [helper.make_tensor_value_info("x", F, list(dims))],
                              [helper.make_tensor_value_info("y", F, list(dims))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@st.composite
def lrn_case(draw):
    rank = draw(st.integers(3, 4))
    dims = ["N", draw(st.integers(1, 9))] + [draw(st.integers(1, 5)) for _ in range(rank - 2)]
    size = draw(st.sampled_from([1, 3, 5, 7]))
    params = (size, draw(st.floats(1e-4, 0.5)), draw(st.floats(0.25, 1.0)), draw(st.floats(0.5, 2.0)))
    return dims, params


@SETTINGS
@given(lrn_case())
def test_symbolic_batch_fuses_and_matches_torch(case):
    dims, (size, alpha, beta, k) = case
    model = lrn_model(dims, size, alpha, beta, k)
    sess = normrt.InferenceSession(model)
    assert [(n.domain, n.op_type) for n in sess.optimized_model.graph.node] == [("normrt", "LRN")], \
        sess.report["refused"]
    rng = np.random.default_rng(size)
    for n in (1, 3):
        x = (rng.standard_normal([n] + dims[1:]) * 2).astype(np.float32)
        (got,) = sess.run(None, {"x": x})
        np.testing.assert_allclose(got, torch_lrn(x, size, float(np.float32(alpha)), float(np.float32(beta)),
                                                  float(np.float32(k))), rtol=2e-5, atol=1e-6)


def test_symbolic_channels_are_refused():
    model = lrn_model(["N", "C", 4], 3, 1e-2, 0.75, 1.0)
    sess = normrt.InferenceSession(model)
    assert not any(n.domain == "normrt" and n.op_type == "LRN" for n in sess.optimized_model.graph.node)
    reasons = [e["reason"] for e in sess.report["refused"] if e["pass"] == "lrn_decomposed"]
    assert any("not static past the batch axis" in r for r in reasons), reasons
    x = np.random.default_rng(1).standard_normal((2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], torch_lrn(x, 3, 1e-2, 0.75, 1.0), rtol=2e-5, atol=1e-6)
