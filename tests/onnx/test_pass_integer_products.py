"""integer_products: quantize_dynamic's MatMulInteger -> Cast -> Mul(xs * ws) as a float MatMul of the
dequantized operands, against onnx.reference of the integer graph; refusals; a model written by
onnxruntime.quantization.quantize_dynamic; and value_info vaguer than inference not hiding shapes."""
import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import vi


def quantized_linear(m, k, n, w_type, per_column, weight_zero_point, rng, cast_to=TensorProto.FLOAT,
                     weight_const=True):
    """x (m, k) -> DynamicQuantizeLinear -> MatMulInteger(W) -> Cast -> Mul(xs * ws) -> Add(b) -> y."""
    info = np.iinfo(w_type)
    w = rng.integers(info.min, info.max, (k, n), endpoint=True).astype(w_type)
    ws = rng.uniform(0.001, 0.02, n if per_column else ()).astype(np.float32)
    wz = rng.integers(info.min // 4, info.max // 4, n if per_column else ()).astype(w_type)
    inits = [numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")]
    inputs = [vi("x", [m, k])]
    if weight_const:
        inits.append(numpy_helper.from_array(w, "w"))
    else:
        inputs.append(vi("w", [k, n], helper.np_dtype_to_tensor_dtype(np.dtype(w_type))))
    mmi_in = ["xq", "w", "xz"]
    if weight_zero_point:
        inits.append(numpy_helper.from_array(wz, "wz"))
        mmi_in.append("wz")
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
             helper.make_node("MatMulInteger", mmi_in, ["acc"], name="mmi"),
             helper.make_node("Cast", ["acc"], ["accf"], to=cast_to, name="cast"),
             helper.make_node("Mul", ["xs", "ws"], ["s"], name="scale"),
             helper.make_node("Mul", ["accf", "s"], ["yq"], name="mul"),
             helper.make_node("Add", ["yq", "b"], ["y"], name="bias")]
    graph = helper.make_graph(nodes, "g", inputs, [vi("y", [m, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, w


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 70), st.integers(1, 9), st.sampled_from([np.int8, np.uint8]), st.booleans(),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_rewritten_product_matches_the_integer_graph(m, k, n, w_type, per_column, weight_zero_point, seed):
    rng = np.random.default_rng(seed)
    model, _ = quantized_linear(m, k, n, w_type, per_column, weight_zero_point, rng)
    sess = normrt.InferenceSession(model)
    ops = [node.op_type for node in sess.optimized_model.graph.node]
    assert "MatMulInteger" not in ops and "Cast" not in ops
    assert sess.report["passes"].get("integer_products") == 1
    x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = sess.run(None, {"x": x})[0]
    # the same terms summed in float32 instead of exactly: a float32 Linear layer's rounding
    scale = float(np.abs(want).max()) + 1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("kind", ["weight_input", "cast_double"])
def test_refused_products_run_exactly(kind):
    rng = np.random.default_rng(1)
    model, w = quantized_linear(4, 16, 5, np.int8, True, True, rng, weight_const=kind != "weight_input",
                                cast_to=TensorProto.DOUBLE if kind == "cast_double" else TensorProto.FLOAT)
    if kind == "cast_double":     # the graph must stay valid: Mul of double and float needs a Cast back
        return _refused_cast(model, rng)
    sess = normrt.InferenceSession(model)
    assert "MatMulInteger" in [node.op_type for node in sess.optimized_model.graph.node]
    feeds = {"x": rng.standard_normal((4, 16)).astype(np.float32), "w": w}
    np.testing.assert_allclose(sess.run(None, feeds)[0], ReferenceEvaluator(model).run(None, feeds)[0],
                               rtol=1e-6, atol=1e-6)


def _refused_cast(model, rng):
    g = model.graph
    g.node.insert(3, helper.make_node("Cast", ["accf"], ["accf32"], to=TensorProto.FLOAT, name="back"))
    g.node[5].input[0] = "accf32"
    sess = normrt.InferenceSession(model)
    assert "MatMulInteger" in [node.op_type for node in sess.optimized_model.graph.node]
    x = rng.standard_normal((4, 16)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ReferenceEvaluator(model).run(None, {"x": x})[0],
                               rtol=1e-6, atol=1e-6)


def test_quantize_dynamic_model(tmp_path):
    """An MLP quantized by onnxruntime.quantization.quantize_dynamic: every MatMulInteger rewritten,
    its bias and Relu fused into normrt's MatMul, outputs = onnxruntime's within quantization."""
    quant = pytest.importorskip("onnxruntime.quantization")
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.1).astype(np.float32), n)
             for n, s in (("w1", (64, 128)), ("b1", (128,)), ("w2", (128, 32)), ("b2", (32,)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "mlp", [vi("x", [8, 64])], [vi("y", [8, 32])], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, src)
    quant.quantize_dynamic(str(src), str(dst), weight_type=quant.QuantType.QInt8)
    sess = normrt.InferenceSession(str(dst))
    ops = [node.op_type for node in sess.optimized_model.graph.node]
    assert "MatMulInteger" not in ops and ops.count("MatMul") == 2   # normrt::MatMul with bias (+ Relu)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    want = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=0.02 * np.abs(want).max())


def test_vaguer_value_info_does_not_hide_inferred_shapes():
    """A tool's value_info ('unk__1' for a static batch: onnxruntime's quantization tools) must not
    hide the static shapes inference finds (they decide attention and residual fusions), while a
    declaration inference cannot work out itself (after a custom-domain op) is kept."""
    from normrt.onnx.passes import PassContext
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["s"]),
             helper.make_node("Mystery", ["s"], ["m"], domain="vendor"), helper.make_node("Relu", ["m"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [vi("x", [2, 4, 8])], [vi("y", None)],
                              value_info=[vi("r", ["unk__1", 4, 8]), vi("s", ["unk__2", None, 8]), vi("m", [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("vendor", 1)])
    ctx = PassContext(model)
    assert ctx.shape("r") == (2, 4, 8) and ctx.shape("s") == (2, 4, 8)
    assert ctx.shape("m") == (2, 3) and ctx.shape("z") == (2, 3)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.sampled_from([1, 3]), st.integers(0, 1), st.integers(1, 2),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_rewritten_conv_matches_the_integer_graph(c, m, k, pad, stride, per_channel, seed):
    """ConvInteger -> Cast -> Mul(xs * ws) -> Add(bias) (quantize_dynamic's Conv) becomes a float Conv."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 127, (m, c, k, k), endpoint=True).astype(np.int8)
    ws = rng.uniform(0.001, 0.02, (m, 1, 1) if per_channel else ()).astype(np.float32)
    wz = rng.integers(-10, 10, m if per_channel else ()).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(wz, "wz"),
             numpy_helper.from_array(rng.standard_normal((1, m, 1, 1)).astype(np.float32), "b")]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("ConvInteger", ["xq", "w", "xz", "wz"], ["acc"], pads=[pad] * 4, strides=[stride] * 2),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["s"]), helper.make_node("Mul", ["accf", "s"], ["yq"]),
             helper.make_node("Add", ["yq", "b"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [vi("x", [1, c, 7, 7])], [vi("y", None)], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    sess = normrt.InferenceSession(model)
    assert "ConvInteger" not in [node.op_type for node in sess.optimized_model.graph.node]
    x = (rng.standard_normal((1, c, 7, 7)) * 3).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5 * (np.abs(want).max() + 1))
