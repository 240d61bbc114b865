"""fold_channel_affine: Mul/Add/Sub/Div by a per-channel constant after a Conv or an inference BatchNorm is
folded into the Conv's weights and bias / the BN's scale and bias, chains one node at a time; refused cases
keep the elementwise node.

Oracle: onnx.reference on the original model. Opset 15 (onnx.reference's BatchNormalization-9..13 runs in
training mode when `momentum` is set).
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from normrt.onnx.loader import load_model
from normrt.onnx.passes import PassContext
from normrt.onnx.passes.fold_channel_affine import FoldChannelAffine
from graph_builder import optimize_and_compare

RNG = np.random.default_rng(23)
PASS = "fold_channel_affine"
C = 5


def arr(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def positive(*shape, dtype=np.float32):
    return (0.5 + RNG.random(shape)).astype(dtype)


def model_of(head, affine, x_shape, y_shape, inits, elem=TensorProto.FLOAT, extra_outputs=(), extra_inputs=()):
    """head: nodes writing 'h' from 'x'; affine: [(op, (input names))] chained from 'h' to 'y'."""
    mk = helper.make_node
    nodes = list(head)
    prev = "h"
    for i, (op, ins) in enumerate(affine):
        out = "y" if i == len(affine) - 1 else f"a{i}"
        nodes.append(mk(op, [prev if n == "@" else n for n in ins], [out], name=f"{op.lower()}{i}"))
        prev = out
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    inputs = [helper.make_tensor_value_info("x", elem, list(x_shape))] + \
        [helper.make_tensor_value_info(n, elem, list(s)) for n, s in extra_inputs]
    outputs = [helper.make_tensor_value_info("y", elem, list(y_shape))] + \
        [helper.make_tensor_value_info(n, elem, list(s)) for n, s in extra_outputs]
    graph = helper.make_graph(nodes, "affine", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v).astype(dtype), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def conv_head(bias=True, dims=2, cin=3):
    ins = ["x", "w"] + (["b"] if bias else [])
    inits = {"w": arr(C, cin, *(3,) * dims)}
    if bias:
        inits["b"] = arr(C)
    return [helper.make_node("Conv", ins, ["h"], name="conv", pads=[1] * 2 * dims)], inits


def bn_head(src="x"):
    inits = {"s": 1 + 0.3 * arr(C), "bb": arr(C), "m": arr(C), "v": positive(C)}
    return [helper.make_node("BatchNormalization", [src, "s", "bb", "m", "v"], ["h"], name="bn", epsilon=1e-3)], inits


def run_and_compare(model, feed, rtol=1e-5, atol=1e-5):
    return optimize_and_compare(model, feed, rtol, atol)


def ops(model):
    return [n.op_type for n in model.graph.node]


CONV_CASES = {
    # name: (affine chain, constants, conv bias?)
    "mul_c11": ([("Mul", ("@", "c"))], {"c": arr(C, 1, 1)}, True),
    "mul_1c11_first": ([("Mul", ("c", "@"))], {"c": arr(1, C, 1, 1)}, False),
    "add_c11": ([("Add", ("@", "c"))], {"c": arr(C, 1, 1)}, False),
    "add_scalar_first": ([("Add", ("c", "@"))], {"c": np.float32(0.7)}, True),
    "sub": ([("Sub", ("@", "c"))], {"c": arr(1, C, 1, 1)}, True),
    "sub_from_constant": ([("Sub", ("c", "@"))], {"c": arr(C, 1, 1)}, True),
    "div": ([("Div", ("@", "c"))], {"c": positive(C, 1, 1)}, True),
    "div_one_element": ([("Div", ("@", "c"))], {"c": np.array([-2.5], np.float32)}, False),
    "chain_mul_add": ([("Mul", ("@", "c")), ("Add", ("@", "d"))], {"c": arr(C, 1, 1), "d": arr(C, 1, 1)}, True),
    "chain_four": ([("Mul", ("@", "c")), ("Sub", ("d", "@")), ("Div", ("@", "e")), ("Add", ("f", "@"))],
                   {"c": arr(C, 1, 1), "d": arr(1, C, 1, 1), "e": positive(C, 1, 1), "f": arr(1)}, False),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_folded(case):
    affine, consts, bias = CONV_CASES[case]
    head, inits = conv_head(bias)
    model = model_of(head, affine, (2, 3, 6, 7), (2, C, 6, 7), {**inits, **consts})
    opt, report = run_and_compare(model, {"x": arr(2, 3, 6, 7)})
    assert ops(opt) == ["Conv"]
    assert report["passes"][PASS] == len(affine) and not report["refused"]


def test_conv1d_folded():
    head, inits = conv_head(dims=1)
    model = model_of(head, [("Mul", ("@", "c")), ("Add", ("@", "d"))], (2, 3, 9), (2, C, 9),
                     {**inits, "c": arr(C, 1), "d": arr(1, C, 1)})
    opt, report = run_and_compare(model, {"x": arr(2, 3, 9)})
    assert ops(opt) == ["Conv"]


def test_conv_folded_float64():
    head, inits = conv_head()
    model = model_of(head, [("Mul", ("@", "c")), ("Sub", ("@", "d"))], (2, 3, 5, 5), (2, C, 5, 5),
                     {**inits, "c": arr(C, 1, 1), "d": arr(C, 1, 1)}, elem=TensorProto.DOUBLE)
    opt, report = run_and_compare(model, {"x": arr(2, 3, 5, 5, dtype=np.float64)}, rtol=1e-12, atol=1e-12)
    assert ops(opt) == ["Conv"]
    assert all(t.data_type == TensorProto.DOUBLE for t in opt.graph.initializer)


def test_folded_weights_match_float64_reference():
    """W' = W * a per output channel and b' = b * a + d, rounded once from float64."""
    head, inits = conv_head()
    c, d = arr(C, 1, 1), arr(C, 1, 1)
    model = model_of(head, [("Mul", ("@", "c")), ("Add", ("@", "d"))], (1, 3, 4, 4), (1, C, 4, 4),
                     {**inits, "c": c, "d": d})
    opt = normrt.optimize(model)
    (conv,) = opt.graph.node
    got = {t.name: numpy_helper.to_array(t) for t in opt.graph.initializer}
    a = c.reshape(C).astype(np.float64)
    want_w = inits["w"].astype(np.float64) * a[:, None, None, None]
    want_b = inits["b"].astype(np.float64) * a + d.reshape(C)
    np.testing.assert_array_equal(got[conv.input[1]], want_w.astype(np.float32))
    np.testing.assert_allclose(got[conv.input[2]], want_b.astype(np.float32), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("src", ["x", "pooled"])
def test_batch_norm_mul_add_relu_becomes_one_normrt_batch_norm(src):
    """Caffe2's DenseNet: BN -> Mul -> Add -> Relu (after a pooling) => normrt::BatchNorm(activation=relu)."""
    head, inits = bn_head("pooled" if src == "pooled" else "x")
    if src == "pooled":
        head.insert(0, helper.make_node("MaxPool", ["x"], ["pooled"], name="pool", kernel_shape=[2, 2]))
    model = model_of(head, [("Mul", ("@", "c")), ("Add", ("@", "d")), ("Relu", ("@",))],
                     (2, C, 6, 6), (2, C, 5, 5) if src == "pooled" else (2, C, 6, 6),
                     {**inits, "c": arr(C, 1, 1), "d": arr(C, 1, 1)})
    opt, report = run_and_compare(model, {"x": arr(2, C, 6, 6)})
    assert ops(opt)[-1] == "BatchNorm" and "Mul" not in ops(opt) and "Add" not in ops(opt)
    assert report["passes"][PASS] == 2
    (entry,) = report["fused"]
    assert entry["activation"] == "relu" and entry["normrt_op"] == "BatchNorm"
    bn = opt.graph.node[-1]
    assert {a.name: helper.get_attribute_value(a) for a in bn.attribute}["activation"] == b"relu"


def test_batch_norm_rank2_vector():
    head, inits = bn_head()
    model = model_of(head, [("Mul", ("@", "c")), ("Sub", ("@", "d"))], (4, C), (4, C),
                     {**inits, "c": arr(C), "d": arr(1, C)})
    opt, report = run_and_compare(model, {"x": arr(4, C)})
    assert ops(opt) == ["BatchNorm"]


def test_folds_into_normrt_batch_norm():
    """standard_norms ran first: the normrt::BatchNorm's scale/bias take the affine, its report entry grows."""
    from normrt.onnx.optimize import optimize_model
    from normrt.onnx.passes.constant_folding import ConstantFolding
    from normrt.onnx.passes.standard_norms import StandardNorms

    head, inits = bn_head()
    model = model_of(head, [("Mul", ("c", "@")), ("Add", ("@", "d"))], (2, C, 3, 3), (2, C, 3, 3),
                     {**inits, "c": arr(1, C, 1, 1), "d": arr(C, 1, 1)})
    opt, report = optimize_model(load_model(model), passes=[ConstantFolding(), StandardNorms(), FoldChannelAffine()])
    assert ops(opt) == ["BatchNorm"]
    (entry,) = report.fused
    assert entry["nodes"] == ["bn", "mul0", "add1"]
    x = arr(2, C, 3, 3)
    np.testing.assert_allclose(normrt.InferenceSession(opt).run(None, {"x": x})[0],
                               ReferenceEvaluator(model).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


# -- refused -------------------------------------------------------------------------------------------------

def _refused(model, feed, reason, n_folded=0):
    opt, report = run_and_compare(model, feed)
    assert report["passes"][PASS] == n_folded
    refused = [e for e in report["refused"] if e["pass"] == PASS]
    assert len(refused) == 1 and reason in refused[0]["reason"], refused
    return opt, report


def test_refused_broadcast_over_height():
    head, inits = conv_head()
    model = model_of(head, [("Mul", ("@", "c"))], (2, 3, 4, 4), (2, C, 4, 4), {**inits, "c": arr(1, C, 4, 1)})
    opt, _ = _refused(model, {"x": arr(2, 3, 4, 4)}, "varies along axis 2")
    assert ops(opt) == ["Conv", "Mul"]


def test_refused_broadcast_over_batch():
    head, inits = conv_head()
    model = model_of(head, [("Add", ("@", "c"))], (2, 3, 4, 4), (2, C, 4, 4), {**inits, "c": arr(2, C, 1, 1)})
    _refused(model, {"x": arr(2, 3, 4, 4)}, "varies along axis 0")


def test_refused_constant_raises_rank():
    head, inits = conv_head()
    model = model_of(head, [("Mul", ("@", "c"))], (2, 3, 4, 4), (1, 2, C, 4, 4), {**inits, "c": arr(1, 1, C, 1, 1)})
    _refused(model, {"x": arr(2, 3, 4, 4)}, "higher rank")


def test_refused_output_read_elsewhere():
    head, inits = conv_head()
    model = model_of(head, [("Mul", ("@", "c"))], (2, 3, 4, 4), (2, C, 4, 4), {**inits, "c": arr(C, 1, 1)},
                     extra_outputs=[("h", (2, C, 4, 4))])
    opt, _ = _refused(model, {"x": arr(2, 3, 4, 4)}, "is a graph output")
    assert ops(opt) == ["Conv", "Mul"]


def test_refused_constant_divided_by_output():
    head, inits = conv_head()
    model = model_of(head, [("Div", ("c", "@"))], (2, 3, 4, 4), (2, C, 4, 4), {**inits, "c": positive(C, 1, 1)})
    _refused(model, {"x": arr(2, 3, 4, 4)}, "not affine")


def test_refused_division_by_zero():
    head, inits = conv_head()
    c = positive(C, 1, 1)
    c[2] = 0
    model = model_of(head, [("Div", ("@", "c"))], (2, 3, 4, 4), (2, C, 4, 4), {**inits, "c": c})
    opt, report = normrt.optimize(model, report=True)
    assert ops(opt) == ["Conv", "Div"]
    assert "has zeros" in report["refused"][0]["reason"]


def test_refused_non_finite_constant():
    head, inits = conv_head()
    c = arr(C, 1, 1)
    c[0] = np.inf
    model = model_of(head, [("Mul", ("@", "c"))], (2, 3, 4, 4), (2, C, 4, 4), {**inits, "c": c})
    opt, report = normrt.optimize(model, report=True)
    assert ops(opt) == ["Conv", "Mul"] and "non-finite" in report["refused"][0]["reason"]


def test_refused_overflow():
    head, inits = conv_head()
    inits["w"][0] = 1e30
    model = model_of(head, [("Mul", ("@", "c"))], (2, 3, 4, 4), (2, C, 4, 4),
                     {**inits, "c": np.full((C, 1, 1), 1e20, np.float32)})
    opt, report = normrt.optimize(model, report=True)
    assert ops(opt) == ["Conv", "Mul"] and "overflow" in report["refused"][0]["reason"]


def test_refused_weight_not_constant():
    head, inits = conv_head()
    w = inits.pop("w")
    model = model_of(head, [("Mul", ("@", "c"))], (2, 3, 4, 4), (2, C, 4, 4), {**inits, "c": arr(C, 1, 1)},
                     extra_inputs=[("w", w.shape)])
    _refused(model, {"x": arr(2, 3, 4, 4), "w": w}, "weight is not a constant")


def test_refused_training_mode_batch_norm():
    head, inits = bn_head()
    head[0].attribute.append(helper.make_attribute("training_mode", 1))
    model = model_of(head, [("Mul", ("@", "c"))], (2, C, 3, 3), (2, C, 3, 3), {**inits, "c": arr(C, 1, 1)})
    opt, report = normrt.optimize(model, report=True)
    assert ops(opt)[-1] == "Mul"
    assert any("training_mode=1" in e["reason"] for e in report["refused"] if e["pass"] == PASS)


def test_refused_constant_of_other_dtype():
    """A float64 constant on a float32 Conv (an invalid graph onnx.checker lets through): left alone."""
    head, inits = conv_head()
    model = model_of(head, [("Mul", ("@", "c"))], (2, 3, 4, 4), (2, C, 4, 4), inits)
    model.graph.initializer.append(numpy_helper.from_array(arr(C, 1, 1, dtype=np.float64), "c"))
    ctx = PassContext(load_model(model))
    assert FoldChannelAffine().run(ctx) == 0
    assert [n.op_type for n in ctx.nodes] == ["Conv", "Mul"]
    assert "element types" in ctx.report.refused[0]["reason"]


def test_non_constant_operand_is_no_candidate():
    """Mul(h, Sigmoid(h)) (a SiLU) and Mul by a graph input are not candidates: unchanged, nothing refused."""
    head, inits = conv_head()
    head.append(helper.make_node("Sigmoid", ["h"], ["sg"], name="sig"))
    model = model_of(head, [("Mul", ("@", "sg")), ("Mul", ("@", "z"))], (2, 3, 4, 4), (2, C, 4, 4), inits,
                     extra_inputs=[("z", (2, C, 4, 4))])
    from normrt.onnx.optimize import optimize_model
    from normrt.onnx.passes.constant_folding import ConstantFolding

    opt, report = optimize_model(load_model(model), passes=[ConstantFolding(), FoldChannelAffine()])
    assert report.passes[PASS] == 0 and not report.refused
    assert ops(opt) == ["Conv", "Sigmoid", "Mul", "Mul"]


def test_chain_stops_at_refused_node():
    """Conv -> Mul(c) -> Mul(per-H constant): the first folds, the second is refused and stays."""
    head, inits = conv_head()
    model = model_of(head, [("Mul", ("@", "c")), ("Mul", ("@", "e"))], (2, 3, 4, 4), (2, C, 4, 4),
                     {**inits, "c": arr(C, 1, 1), "e": arr(C, 4, 1)})
    opt, _ = _refused(model, {"x": arr(2, 3, 4, 4)}, "varies along axis 2", n_folded=1)
    assert ops(opt) == ["Conv", "Mul"]


def test_refused_float16():
    head, inits = conv_head()
    model = model_of(head, [("Mul", ("@", "c"))], (2, 3, 4, 4), (2, C, 4, 4), {**inits, "c": arr(C, 1, 1)},
                     elem=TensorProto.FLOAT16)
    opt, report = normrt.optimize(model, report=True, half_compute="per_op")   # no region Casts
    assert ops(opt) == ["Conv", "Mul"]
    assert "not float32/float64" in report["refused"][0]["reason"]
