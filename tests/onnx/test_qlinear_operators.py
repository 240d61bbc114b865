"""QOperator-format models (passes/qlinear_operators.py, dequantize_before_views.py): onnxruntime's
com.microsoft QLinear* ops and the standard QLinearMatMul / QLinearConv of a model become their
QDQ form. Single generated ops against onnxruntime (which defines the contrib ops): the 8-bit
codes equal, or one apart where a value lands within float error of a half-way point; a QOperator
DistilBERT-like block end to end; what stays exact; the refusals."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt

MS = "com.microsoft"
U8, I8 = TensorProto.UINT8, TensorProto.INT8
NP = {U8: np.uint8, I8: np.int8}


def model(nodes, inputs, outputs, inits, opset=19):     # onnx.reference's DequantizeLinear
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                          opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    m.ir_version = 8
    return m


def grid(rng, name, itype):
    """(scale, zero point) initializers of one 8-bit grid."""
    lo, hi = (0, 255) if itype == U8 else (-128, 127)
    return [numpy_helper.from_array(np.float32(rng.uniform(0.005, 0.1)), f"{name}_s"),
            numpy_helper.from_array(NP[itype](rng.integers(lo + 60, hi - 60)), f"{name}_z")]


def codes(rng, shape, itype):
    lo, hi = (0, 255) if itype == U8 else (-128, 127)
    return rng.integers(lo, hi + 1, shape).astype(NP[itype])


def assert_codes_close(got, want, equal_share=0.99):
    """8-bit outputs: equal, or one apart where float rounding meets a half-way point (rare)."""
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max() <= 1, diff.max()
    assert (diff == 0).mean() >= equal_share


def single_op(op, rng, itype, shape, other_shape=None, attrs=None):
    """A model of one QLinear op over 8-bit graph inputs, and its feeds."""
    attrs = attrs or {}
    vi = [helper.make_tensor_value_info("a", itype, shape)]
    feeds = {"a": codes(rng, shape, itype)}
    inits = grid(rng, "a", itype) + grid(rng, "y", itype)
    if op in ("QLinearAdd", "QLinearMul"):
        vi.append(helper.make_tensor_value_info("b", itype, other_shape))
        feeds["b"] = codes(rng, other_shape, itype)
        inits += grid(rng, "b", itype)
        ins = ["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"]
    elif op == "QLinearConcat":
        vi.append(helper.make_tensor_value_info("b", itype, other_shape))
        feeds["b"] = codes(rng, other_shape, itype)
        inits += grid(rng, "b", itype)
        ins = ["y_s", "y_z", "a", "a_s", "a_z", "b", "b_s", "b_z"]
    elif op == "QLinearWhere":
        vi += [helper.make_tensor_value_info("c", TensorProto.BOOL, shape),
               helper.make_tensor_value_info("b", itype, shape)]
        feeds.update(c=rng.random(shape) < 0.5, b=codes(rng, shape, itype))
        inits += grid(rng, "b", itype)
        ins = ["c", "a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"]
    else:
        ins = ["a", "a_s", "a_z", "y_s", "y_z"]
    node = helper.make_node(op, ins, ["y"], name="q", domain=MS, **attrs)
    return model([node], vi, [helper.make_tensor_value_info("y", itype, None)], inits), feeds


CASES = {
    "QLinearAdd": lambda d: dict(other_shape=d.draw(st.sampled_from(["same", "row", "scalar"]))),
    "QLinearMul": lambda d: dict(other_shape=d.draw(st.sampled_from(["same", "row", "scalar"]))),
    "QLinearSigmoid": lambda d: {},
    "QLinearLeakyRelu": lambda d: dict(attrs={"alpha": d.draw(st.sampled_from([0.01, 0.2]))}),
    "QLinearSoftmax": lambda d: dict(attrs={"axis": -1, "opset": 13}),
    "QLinearGlobalAveragePool": lambda d: {},
    "QLinearAveragePool": lambda d: dict(attrs={"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "QLinearConcat": lambda d: dict(other_shape="same", attrs={"axis": 1}),
    "QLinearWhere": lambda d: {},
}


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(sorted(CASES)), st.sampled_from([U8, I8]), st.integers(0, 2**31 - 1))
def test_contrib_ops_match_onnxruntime(ort_cpu_run, data, op, itype, seed):
    rng = np.random.default_rng(seed)
    shape = [1, int(rng.integers(1, 6)), int(rng.integers(2, 9)), int(rng.integers(2, 9))]
    if op in ("QLinearGlobalAveragePool", "QLinearAveragePool") and itype == I8:
        itype = U8          # onnxruntime's pooling kernels take uint8 only
    kw = CASES[op](data)
    other = {"same": shape, "row": [shape[-1]], "scalar": []}.get(kw.pop("other_shape", None))
    m, feeds = single_op(op, rng, itype, shape, other, **kw)
    sess = normrt.InferenceSession(m.SerializeToString())
    assert not [n for n in sess.optimized_model.graph.node if n.domain == MS]
    got = sess.run(None, feeds)[0]
    want = ort_cpu_run(m.SerializeToString(), feeds)[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    if op != "QLinearSoftmax":
        assert_codes_close(got, want)
        return
    # onnxruntime's QLinearSoftmax reads exp from a 256-entry table and rounds in its own order:
    # one code apart on 10-25% of the values. normrt computes the definition, the float softmax
    # of the dequantized values quantized (checked here in float64)
    assert_codes_close(got, want, 0.0)
    p = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in m.graph.initializer}
    a = (feeds["a"].astype(np.float64) - p["a_z"]) * p["a_s"]
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    lo, hi = (0, 255) if itype == U8 else (-128, 127)
    exact = np.clip(np.rint(e / e.sum(axis=-1, keepdims=True) / p["y_s"]) + p["y_z"], lo, hi)
    assert_codes_close(got, exact.astype(got.dtype))


def test_reduce_mean_matches_its_definition():
    """QLinearReduceMean (no onnxruntime CPU kernel): quantize(mean(dequantize(a)))."""
    rng = np.random.default_rng(2)
    m, feeds = single_op("QLinearReduceMean", rng, U8, [2, 3, 5, 7], attrs={"axes": [2, 3], "keepdims": 1})
    got = normrt.InferenceSession(m.SerializeToString()).run(None, feeds)[0]
    p = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    a = (feeds["a"].astype(np.float64) - p["a_z"]) * p["a_s"]
    want = np.clip(np.rint(a.mean(axis=(2, 3), keepdims=True) / p["y_s"]) + p["y_z"], 0, 255).astype(np.uint8)
    assert got.shape == (2, 3, 1, 1)
    assert_codes_close(got, want)


def qlinear_product(rng, conv, per_channel, fed_weight=False):
    """x (uint8) -> QLinearConv / QLinearMatMul by an int8 weight (constant or fed) -> uint8."""
    x_shape = [1, 8, 9, 9] if conv else [1, 5, 24]
    w = codes(rng, [6, 8, 3, 3] if conv else [24, 7], I8)
    n = w.shape[0] if conv else w.shape[1]
    ws = rng.uniform(0.002, 0.01, n if per_channel else ()).astype(np.float32)
    inits = grid(rng, "x", U8) + grid(rng, "y", U8) + [
        numpy_helper.from_array(ws, "w_s"), numpy_helper.from_array(np.zeros(ws.shape, np.int8), "w_z")]
    vi = [helper.make_tensor_value_info("x", U8, x_shape)]
    feeds = {"x": codes(rng, x_shape, U8)}
    if fed_weight:
        vi.append(helper.make_tensor_value_info("w", I8, list(w.shape)))
        feeds["w"] = w
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    ins = ["x", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z"]
    if conv:
        inits.append(numpy_helper.from_array(rng.integers(-2000, 2000, n).astype(np.int32), "bias"))
        node = helper.make_node("QLinearConv", ins + ["bias"], ["y"], name="q", pads=[1, 1, 1, 1])
    else:
        node = helper.make_node("QLinearMatMul", ins, ["y"], name="q")
    return model([node], vi, [helper.make_tensor_value_info("y", U8, None)], inits), feeds


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_standard_products_with_constant_weights_take_the_float_kernels(conv, per_channel):
    """Within one code of the exact integer arithmetic (onnx.reference), which a fed weight keeps."""
    rng = np.random.default_rng(3)
    m, feeds = qlinear_product(rng, conv, per_channel)
    sess = normrt.InferenceSession(m.SerializeToString())
    ops = {n.op_type for n in sess.optimized_model.graph.node}
    assert not ops & {"QLinearConv", "QLinearMatMul"}, ops
    assert_codes_close(sess.run(None, feeds)[0], ReferenceEvaluator(m).run(None, feeds)[0])

    fed, feeds = qlinear_product(rng, conv, per_channel, fed_weight=True)
    sess = normrt.InferenceSession(fed.SerializeToString())
    assert {"QLinearConv", "QLinearMatMul"} & {n.op_type for n in sess.optimized_model.graph.node}
    np.testing.assert_array_equal(sess.run(None, feeds)[0], ReferenceEvaluator(fed).run(None, feeds)[0])


def test_dequantize_moves_before_views_and_pairs_with_its_quantize():
    """x -> Q -> Reshape -> Transpose -> DQ: the DQ moves before the views, the pair becomes one
    FakeQuant, the values bitwise those of the ops as written (onnx.reference)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    inits = grid(rng, "q", U8) + [numpy_helper.from_array(np.array([2, 6, 2, 4], np.int64), "shape")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "q_s", "q_z"], ["q"]),
             helper.make_node("Reshape", ["q", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]),
             helper.make_node("DequantizeLinear", ["t", "q_s", "q_z"], ["y"])]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    sess = normrt.InferenceSession(m.SerializeToString())
    ops = [n.op_type for n in sess.optimized_model.graph.node]
    assert "FakeQuant" in ops and "QuantizeLinear" not in ops and "DequantizeLinear" not in ops, ops
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ReferenceEvaluator(m).run(None, {"x": x})[0])


def test_qoperator_block_end_to_end(ort_cpu_run):
    """Linear -> Add(residual) -> Sigmoid -> Linear in QOperator form, as quantize_static writes it."""
    rng = np.random.default_rng(11)
    w1, w2 = codes(rng, [16, 16], I8), codes(rng, [16, 8], I8)
    inits = []
    for name in ("x", "h", "r", "s", "y"):
        inits += grid(rng, name, U8)
    for name, w in (("w1", w1), ("w2", w2)):
        inits += [numpy_helper.from_array(w, name), numpy_helper.from_array(np.float32(0.01), f"{name}_s"),
                  numpy_helper.from_array(np.int8(0), f"{name}_z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
             helper.make_node("QLinearMatMul", ["xq", "x_s", "x_z", "w1", "w1_s", "w1_z", "h_s", "h_z"], ["h"]),
             helper.make_node("QLinearAdd", ["h", "h_s", "h_z", "xq", "x_s", "x_z", "r_s", "r_z"], ["r"], domain=MS),
             helper.make_node("QLinearSigmoid", ["r", "r_s", "r_z", "s_s", "s_z"], ["s"], domain=MS),
             helper.make_node("QLinearMatMul", ["s", "s_s", "s_z", "w2", "w2_s", "w2_z", "y_s", "y_z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"])]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    feeds = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    sess = normrt.InferenceSession(m.SerializeToString())
    assert not {n.op_type for n in sess.optimized_model.graph.node} & {"QLinearMatMul", "QLinearAdd",
                                                                       "QLinearSigmoid"}
    got, want = sess.run(None, feeds)[0], ort_cpu_run(m.SerializeToString(), feeds)[0]
    step = float(numpy_helper.to_array(next(i for i in inits if i.name == "y_s")))
    assert np.abs(got - want).max() <= step * 1.001


def test_refusals_name_the_node():
    rng = np.random.default_rng(0)
    m, _ = single_op("QLinearGlobalAveragePool", rng, U8, [1, 4, 3, 3], attrs={"channels_last": 1})
    with pytest.raises(NotImplementedError, match="'q'"):
        normrt.InferenceSession(m.SerializeToString())
    _, report = normrt.optimize(m, report=True)
    assert any(r["pass"] == "qlinear_operators" and "channels_last" in r["reason"] for r in report["refused"])


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("float_output", [False, True])
def test_qgemm_matches_onnxruntime(ort_cpu_run, trans_b, alpha, float_output):
    """com.microsoft::QGemm: the int32 C joins the integer sums, all scaled by alpha * a_scale *
    b_scale; without y_scale the output is float."""
    rng = np.random.default_rng(int(trans_b * 4 + alpha * 2 + float_output))
    b = codes(rng, [7, 12] if trans_b else [12, 7], I8)
    inits = grid(rng, "a", U8) + grid(rng, "y", U8) + [
        numpy_helper.from_array(b, "b"), numpy_helper.from_array(rng.uniform(0.002, 0.01, 7).astype(np.float32), "b_s"),
        numpy_helper.from_array(np.zeros(7, np.int8), "b_z"),
        numpy_helper.from_array(rng.integers(-3000, 3000, 7).astype(np.int32), "c")]
    ins = ["a", "a_s", "a_z", "b", "b_s", "b_z", "c"] + ([] if float_output else ["y_s", "y_z"])
    node = helper.make_node("QGemm", ins, ["y"], name="q", domain=MS, alpha=alpha, transB=trans_b)
    out_type = TensorProto.FLOAT if float_output else U8
    m = model([node], [helper.make_tensor_value_info("a", U8, [5, 12])],
              [helper.make_tensor_value_info("y", out_type, None)], inits)
    feeds = {"a": codes(rng, [5, 12], U8)}
    sess = normrt.InferenceSession(m.SerializeToString())
    assert "QGemm" not in {n.op_type for n in sess.optimized_model.graph.node}
    got, want = sess.run(None, feeds)[0], ort_cpu_run(m.SerializeToString(), feeds)[0]
    if float_output:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:
        assert_codes_close(got, want)
