"""dynamic_qdq_pairs: DynamicQuantizeLinear -> DequantizeLinear becomes one normrt::DynamicFakeQuant
with the pair's bits (normrt's own numpy ops and onnx.reference); refusals keep the pair."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from test_ops import run_ours

import normrt
from graph_builder import vi


def pair_model(shape, q_output=False):
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dql"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    outputs = [vi("y", list(shape))] + ([vi("q", list(shape), TensorProto.UINT8)] if q_output else [])
    model = helper.make_model(helper.make_graph(nodes, "g", [vi("x", list(shape))], outputs),
                              opset_imports=[helper.make_opsetid("", 19)])      # the reference's DequantizeLinear
    model.ir_version = 8
    return model


def pair_values(x):
    q, s, z = run_ours("DynamicQuantizeLinear", [x], {}, 11, 3)
    return run_ours("DequantizeLinear", [q, s, z], {}, 13, 1)[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=3),
       st.sampled_from(["mixed", "positive", "negative", "zeros", "constant", "ties", "huge", "tiny",
                        "tiny_positive"]),
       st.integers(0, 2**31 - 1))
def test_pair_is_one_node_with_the_pairs_bits(shape, kind, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 100)).astype(np.float32)
    x = {"mixed": x, "positive": np.abs(x), "negative": -np.abs(x), "zeros": 0 * x, "constant": np.full_like(x, -3.25),
         "ties": np.round(x * 2) / 2, "huge": x * np.float32(1e30),
         # a range narrower than 255 subnormals: the scale rounds to 0 (MobileViT's dead channels)
         "tiny": rng.integers(-30, 31, shape) * np.float32(1.4e-45),
         "tiny_positive": rng.integers(0, 31, shape) * np.float32(1.4e-45)}[kind].astype(np.float32)
    sess = normrt.InferenceSession(pair_model(x.shape))
    assert [n.op_type for n in sess.optimized_model.graph.node] == ["DynamicFakeQuant"]
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(got.view(np.uint32), pair_values(x).view(np.uint32))
    want = ReferenceEvaluator(pair_model(x.shape)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_input_same_bits_for_any_thread_count(threads):
    x = np.random.default_rng(1).standard_normal((64, 4096)).astype(np.float32) * 7
    with normrt.threads(threads):
        got = normrt.InferenceSession(pair_model(x.shape)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, pair_values(x))


def test_quantized_value_read_elsewhere_keeps_the_pair():
    x = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
    model = pair_model(x.shape, q_output=True)
    sess = normrt.InferenceSession(model)
    assert "DynamicQuantizeLinear" in [n.op_type for n in sess.optimized_model.graph.node]
    for got, want in zip(sess.run(None, {"x": x}), ReferenceEvaluator(model).run(None, {"x": x})):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3000), st.sampled_from([1.0, 1e-3, 1e30, 1e-44, 0.0]), st.booleans(), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_kernel_grid_is_the_ops_range(n, magnitude, positive, with_nan, seed):
    """The kernel's own range (quant_grid.h) is ops.quantize.dynamic_range's, scale and zero point
    bitwise; a NaN leaves the empty range's grid and passes through as NaN."""
    from normrt._kernels import elementwise as kernel
    from normrt.onnx.ops.quantize import dynamic_range
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * magnitude).astype(np.float32)
    if positive:
        x = np.abs(x)
    if with_nan and n:
        x[rng.integers(n)] = np.nan
    out = np.empty_like(x)
    scale, zero = kernel.dynamic_fake_quant(x, out, 2)
    assert (np.float32(scale), np.float32(zero)) == dynamic_range(x)
    finite = ~np.isnan(x)
    np.testing.assert_array_equal(np.isnan(out), ~finite)
    if not with_nan:
        np.testing.assert_array_equal(out.view(np.uint32), pair_values(x).view(np.uint32))
