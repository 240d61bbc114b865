"""qdq_pairs: QuantizeLinear -> DequantizeLinear becomes one normrt::FakeQuant pass (or, beside other
elementwise ops, part of their program), bitwise the pair's values (onnx.reference's Q and DQ, and
normrt's own numpy ops), for any thread count; refusals keep the pair."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from test_ops import run_ours

import normrt
from graph_builder import vi

ITYPES = {np.int8: TensorProto.INT8, np.uint8: TensorProto.UINT8, np.int16: TensorProto.INT16,
          np.uint16: TensorProto.UINT16}


def qdq_model(n, scale, zp, itype, with_zero_point=True, dq_scale=None, opset=21, per_axis=False):
    """x -> Relu -> Q -> DQ -> Add(x) -> y (the Relu and Add: neighbours the fused chain sits between)."""
    s = np.array(scale, np.float32) if not per_axis else np.full(n, scale, np.float32)
    inits = [numpy_helper.from_array(s, "s"),
             numpy_helper.from_array(np.broadcast_to(np.float32(scale if dq_scale is None else dq_scale), s.shape).copy(),
                                     "ds")]
    q_in, dq_in = ["r", "s"], ["q", "ds"]
    attrs = {}
    if with_zero_point:
        inits.append(numpy_helper.from_array(np.broadcast_to(np.array(zp, itype), s.shape).copy(), "zp"))
        q_in.append("zp")
        dq_in.append("zp")
    elif itype != np.uint8:
        attrs["output_dtype"] = ITYPES[itype]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", q_in, ["q"], name="quant", **({"axis": 0} if per_axis else {}), **attrs),
             helper.make_node("DequantizeLinear", dq_in, ["d"], name="dequant", **({"axis": 0} if per_axis else {})),
             helper.make_node("Add", ["d", "x"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [vi("x", [n])], [vi("y", [n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(list(ITYPES)), st.sampled_from([0.5, 0.1, 1 / 3, 0.0173, 3.0]), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_pair_becomes_one_pass_with_the_pairs_bits(itype, scale, with_zero_point, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(itype)
    zp = int(rng.integers(info.min, info.max, endpoint=True)) if with_zero_point else 0
    model = qdq_model(4000, scale, zp, itype, with_zero_point)
    sess = normrt.InferenceSession(model)
    ops = [node.op_type for node in sess.optimized_model.graph.node]
    # between the Relu and the Add it joins their elementwise program (one pass)
    assert ops == ["Elementwise"], ops
    assert sess.report["passes"]["qdq_pairs"] == 1
    span = (info.max - info.min) * scale
    # ties (k + 1/2) * scale, the saturation bounds and beyond, and everything between
    x = np.concatenate([(rng.integers(-600, 600, 1000) + 0.5) * np.float32(scale),
                        rng.uniform(-2 * span, 2 * span, 3000)]).astype(np.float32)
    got = sess.run(None, {"x": x})[0]
    r = np.maximum(x, 0)
    q_args = [r, np.array(scale, np.float32)] + ([np.array(zp, itype)] if with_zero_point else [])
    q = run_ours("QuantizeLinear", q_args, {} if with_zero_point or itype == np.uint8
                 else {"output_dtype": ITYPES[itype]}, 21, 1)[0]
    d = run_ours("DequantizeLinear", [q] + q_args[1:], {}, 21, 1)[0]
    np.testing.assert_array_equal(got, d + x)
    np.testing.assert_array_equal(got, ReferenceEvaluator(model).run(None, {"x": x})[0])


@pytest.mark.parametrize("change", ["scales_differ", "per_axis", "q_read_twice"])
def test_refused_pairs_stay(change):
    n = 16
    if change == "scales_differ":
        model = qdq_model(n, 0.5, 3, np.uint8, dq_scale=0.25)
    elif change == "per_axis":
        model = qdq_model(n, 0.5, 3, np.uint8, per_axis=True)
    else:
        model = qdq_model(n, 0.5, 3, np.uint8)
        model.graph.output.append(vi("q", [n], TensorProto.UINT8))
    sess = normrt.InferenceSession(model)
    ops = [node.op_type for node in sess.optimized_model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    x = np.random.default_rng(1).standard_normal(n).astype(np.float32) * 10
    for got, want in zip(sess.run(None, {"x": x}), ReferenceEvaluator(model).run(None, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("lone", [True, False])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_pair_same_bits_for_any_thread_count(threads, lone):
    """Alone (its own FakeQuant kernel) or in an elementwise program, the pair's bits for any thread count."""
    model = qdq_model(300_000, 0.0173, 200, np.uint8)
    if lone:                            # x -> Q -> DQ -> y: nothing elementwise beside it
        g = model.graph
        nodes = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        nodes[0].input[0], nodes[1].output[0] = "x", "y"
        del g.node[:]
        g.node.extend(nodes)
    x = np.random.default_rng(4).standard_normal(300_000).astype(np.float32) * 3
    with normrt.threads(threads):
        sess = normrt.InferenceSession(model)
        got = sess.run(None, {"x": x})[0]
    assert [n.op_type for n in sess.optimized_model.graph.node] == (["FakeQuant"] if lone else ["Elementwise"])
    np.testing.assert_array_equal(got, ReferenceEvaluator(model).run(None, {"x": x})[0])
