"""fold_batch_norm: an inference BatchNormalization after Conv/ConvTranspose/Gemm/MatMul with constant weights
is folded into the weights and bias; refused cases keep the BN (as a normrt::BatchNorm).

Opset 15: onnx.reference's BatchNormalization-9..13 runs in training mode when `momentum` is set.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import optimize_and_compare, vi

RNG = np.random.default_rng(17)
PASS = "fold_batch_norm"


def arr(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def bn_inits(c, dtype=np.float32):
    return {"bn_s": (1 + 0.3 * arr(c)).astype(dtype), "bn_b": arr(c).astype(dtype),
            "bn_m": arr(c).astype(dtype), "bn_v": (0.5 + arr(c) ** 2).astype(dtype)}


def model_of(op, x_shape, w, inputs_extra=(), attrs=None, bias=None, cout=None, opset=15, bn_attrs=None,
             elem=TensorProto.FLOAT, extra_outputs=(), y_shape=None, weight_as_input=False):
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    init = {"w": w.astype(dtype)}
    ins = ["x", "w"]
    if bias is not None:
        init["bias"] = bias.astype(dtype)
        ins.append("bias")
    init.update(bn_inits(cout, dtype))
    nodes = [helper.make_node(op, ins, ["p"], name="prod", **(attrs or {})),
             helper.make_node("BatchNormalization", ["p", "bn_s", "bn_b", "bn_m", "bn_v"], ["y"], name="bn",
                              epsilon=1e-3, momentum=0.9, **(bn_attrs or {}))]
    graph_inputs = [vi("x", list(x_shape), elem)]
    if weight_as_input:
        graph_inputs.append(vi("w", list(w.shape), elem))
        del init["w"]
    outputs = [vi("y", y_shape, elem)] + [vi(o, s, elem) for o, s in extra_outputs]
    graph = helper.make_graph(nodes, "fold", graph_inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in init.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_and_compare(model, x, feed_extra=None, rtol=1e-5, atol=1e-5):
    return optimize_and_compare(model, {"x": x, **(feed_extra or {})}, rtol, atol)


CASES = {
    "conv": lambda: (model_of("Conv", (2, 3, 6, 6), arr(5, 3, 3, 3), bias=arr(5), cout=5, y_shape=[2, 5, 4, 4]),
                     arr(2, 3, 6, 6)),
    "conv_no_bias_padded": lambda: (model_of("Conv", (2, 3, 6, 6), arr(4, 3, 3, 3), cout=4, y_shape=[2, 4, 6, 6],
                                             attrs={"pads": [1, 1, 1, 1]}), arr(2, 3, 6, 6)),
    "conv_grouped": lambda: (model_of("Conv", (2, 4, 5, 5), arr(6, 2, 3, 3), bias=arr(6), cout=6,
                                      y_shape=[2, 6, 3, 3], attrs={"group": 2}), arr(2, 4, 5, 5)),
    "conv1d": lambda: (model_of("Conv", (2, 3, 7), arr(4, 3, 3), bias=arr(4), cout=4, y_shape=[2, 4, 5]),
                       arr(2, 3, 7)),
    "conv_transpose": lambda: (model_of("ConvTranspose", (2, 4, 3, 3), arr(4, 5, 2, 2), bias=arr(5), cout=5,
                                        y_shape=[2, 5, 4, 4]), arr(2, 4, 3, 3)),
    "conv_transpose_grouped": lambda: (model_of("ConvTranspose", (2, 4, 3, 3), arr(4, 3, 2, 2), bias=arr(6), cout=6,
                                                y_shape=[2, 6, 4, 4], attrs={"group": 2}), arr(2, 4, 3, 3)),
    "gemm_transB": lambda: (model_of("Gemm", (4, 6), arr(5, 6), bias=arr(5), cout=5, y_shape=[4, 5],
                                     attrs={"transB": 1, "alpha": 0.7, "beta": 1.3}), arr(4, 6)),
    "gemm_row_bias": lambda: (model_of("Gemm", (4, 6), arr(6, 5), bias=arr(1, 5), cout=5, y_shape=[4, 5]),
                              arr(4, 6)),
    "gemm_scalar_bias_transA": lambda: (model_of("Gemm", (6, 4), arr(6, 5), bias=arr(1), cout=5, y_shape=[4, 5],
                                                 attrs={"transA": 1}), arr(6, 4)),
    "gemm_no_bias": lambda: (model_of("Gemm", (4, 6), arr(6, 5), cout=5, y_shape=[4, 5]), arr(4, 6)),
    "matmul": lambda: (model_of("MatMul", (4, 6), arr(6, 5), cout=5, y_shape=[4, 5]), arr(4, 6)),
    "float64": lambda: (model_of("Conv", (2, 3, 6, 6), arr(5, 3, 3, 3), bias=arr(5), cout=5, y_shape=[2, 5, 4, 4],
                                 elem=TensorProto.DOUBLE), arr(2, 3, 6, 6, dtype=np.float64)),
    "opset9": lambda: (model_of("Conv", (2, 3, 6, 6), arr(5, 3, 3, 3), bias=arr(5), cout=5, y_shape=[2, 5, 4, 4],
                                opset=9), arr(2, 3, 6, 6)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_folded(case):
    model, x = CASES[case]()
    if case == "opset9":   # onnx.reference's BN-9 would use batch statistics (momentum set): compare with opset 15
        opt, report = normrt.optimize(model, report=True)
        model.opset_import[0].version = 15
        want = ReferenceEvaluator(model).run(None, {"x": x})[0]
        np.testing.assert_allclose(normrt.InferenceSession(opt).run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    elif case == "conv_transpose_grouped":
        # onnx.reference's ConvTranspose mishandles group > 1: oracle = the ConvTranspose alone
        # (normrt's numpy op) followed by a numpy BatchNormalization
        opt, report = normrt.optimize(model, report=True)
        np.testing.assert_allclose(normrt.InferenceSession(opt).run(None, {"x": x})[0], _bn_after(model, x),
                                   rtol=1e-5, atol=1e-5)
    else:
        opt, report = run_and_compare(model, x, atol=1e-12 if x.dtype == np.float64 else 1e-5)
    assert report["passes"][PASS] == 1
    ops = [n.op_type for n in opt.graph.node]
    # a folded float32 Gemm/MatMul then takes its new bias in one normrt::MatMul (matmul_epilogue)
    epilogue = report["passes"].get("matmul_epilogue", 0)
    assert len(ops) == 1 and ops[0] in ("Conv", "ConvTranspose", "Gemm") + (("MatMul",) if epilogue else ())
    assert report["counts"] == ({"MatMul": 1} if epilogue else {}) and not report["refused"]
    (entry,) = [e for e in report["fused"] if e["pass"] == PASS]
    assert entry["pass"] == PASS and entry["nodes"] == ["prod", "bn"] and entry["normrt_op"] is None
    assert entry["pattern"].endswith("+BatchNormalization")
    assert "folded into" in normrt.onnx.report.format_report(report)


def _bn_after(model, x):
    """numpy oracle: the model's first node alone (run by normrt), then BatchNormalization in float64."""
    alone = onnx.ModelProto()
    alone.CopyFrom(model)
    del alone.graph.node[1:]
    alone.graph.output[0].name = "p"
    p = normrt.InferenceSession(alone).run(None, {"x": x})[0].astype(np.float64)
    c = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    shape = (1, -1) + (1,) * (p.ndim - 2)
    a = c["bn_s"] / np.sqrt(c["bn_v"] + 1e-3)
    return ((p - c["bn_m"].reshape(shape)) * a.reshape(shape) + c["bn_b"].reshape(shape)).astype(x.dtype)


def _refused(model, x, reason, feed_extra=None):
    opt, report = run_and_compare(model, x, feed_extra)
    assert report["passes"][PASS] == 0
    refused = [e for e in report["refused"] if e["pass"] == PASS]
    assert len(refused) == 1 and reason in refused[0]["reason"], refused
    return opt, report


def test_refused_producer_output_read_elsewhere():
    model = model_of("Conv", (2, 3, 6, 6), arr(5, 3, 3, 3), bias=arr(5), cout=5, y_shape=[2, 5, 4, 4],
                     extra_outputs=[("p", [2, 5, 4, 4])])
    opt, report = _refused(model, arr(2, 3, 6, 6), "is a graph output")
    assert report["counts"] == {"BatchNorm": 1}       # the BN stays, on its kernel


def test_refused_weight_not_constant():
    w = arr(5, 3, 3, 3)
    model = model_of("Conv", (2, 3, 6, 6), w, bias=arr(5), cout=5, y_shape=[2, 5, 4, 4], weight_as_input=True)
    _refused(model, arr(2, 3, 6, 6), "weight is not a constant", {"w": w})


def test_refused_training_mode():
    model = model_of("Conv", (2, 3, 6, 6), arr(5, 3, 3, 3), bias=arr(5), cout=5, y_shape=[2, 5, 4, 4],
                     bn_attrs={"training_mode": 1})
    _refused(model, arr(2, 3, 6, 6), "training_mode=1")


def test_refused_matmul_on_3d_input():
    model = model_of("MatMul", (2, 4, 6), arr(6, 4), cout=4, y_shape=[2, 4, 4])
    _refused(model, arr(2, 4, 6), "2-D needed")


def test_refused_gemm_bias_per_row():
    model = model_of("Gemm", (4, 6), arr(6, 5), bias=arr(4, 5), cout=5, y_shape=[4, 5])
    _refused(model, arr(4, 6), "not one value per output column")


def test_refused_negative_variance():
    model = model_of("Conv", (2, 3, 6, 6), arr(5, 3, 3, 3), bias=arr(5), cout=5, y_shape=[2, 5, 4, 4])
    v = next(t for t in model.graph.initializer if t.name == "bn_v")
    v.CopyFrom(numpy_helper.from_array(-np.ones(5, np.float32), "bn_v"))
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0
    assert "var negative" in report["refused"][0]["reason"]


def test_refused_float16():
    """Folding into half weights would round them once more than the model does: the BN stays,
    on the half BatchNorm kernel."""
    model = model_of("Conv", (2, 3, 6, 6), arr(5, 3, 3, 3), bias=arr(5), cout=5, y_shape=[2, 5, 4, 4],
                     elem=TensorProto.FLOAT16)
    opt, report = normrt.optimize(model, report=True, half_compute="per_op")   # no region Casts
    assert report["passes"][PASS] == 0
    assert any("not float32/float64" in e["reason"] for e in report["refused"] if e["pass"] == PASS)
    assert [n.op_type for n in opt.graph.node] == ["Conv", "BatchNorm"]


def test_chain_of_conv_bn_pairs_all_fold():
    """Conv -> BN -> Relu -> Conv -> BN: both fold."""
    mk = helper.make_node
    init = {"w1": arr(4, 3, 3, 3), "w2": arr(4, 4, 1, 1), "b2": arr(4)}
    for k in ("1", "2"):
        init.update({f"{n}{k}": v for n, v in bn_inits(4).items()})
    nodes = [mk("Conv", ["x", "w1"], ["c1"], name="conv1"),
             mk("BatchNormalization", ["c1", "bn_s1", "bn_b1", "bn_m1", "bn_v1"], ["n1"], name="bn1"),
             mk("Relu", ["n1"], ["r1"], name="relu"),
             mk("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             mk("BatchNormalization", ["c2", "bn_s2", "bn_b2", "bn_m2", "bn_v2"], ["y"], name="bn2")]
    graph = helper.make_graph(nodes, "chain", [vi("x", [1, 3, 5, 5])], [vi("y", [1, 4, 3, 3])],
                              [numpy_helper.from_array(v, k) for k, v in init.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    opt, report = run_and_compare(model, arr(1, 3, 5, 5))
    assert report["passes"][PASS] == 2
    # conv_epilogue then takes the Relu into the first Conv (a normrt::Conv)
    assert [(n.domain, n.op_type) for n in opt.graph.node] == [("normrt", "Conv"), ("", "Conv")]


def test_folds_a_converted_batch_norm():
    """standard_norms ran first: a normrt::BatchNorm is folded too and its report entry replaced."""
    from normrt.onnx.loader import load_model
    from normrt.onnx.optimize import optimize_model
    from normrt.onnx.passes.constant_folding import ConstantFolding
    from normrt.onnx.passes.fold_batch_norm import FoldBatchNorm
    from normrt.onnx.passes.standard_norms import StandardNorms

    model, x = CASES["conv"]()
    opt, report = optimize_model(load_model(model), passes=[ConstantFolding(), StandardNorms(), FoldBatchNorm()])
    assert [n.op_type for n in opt.graph.node] == ["Conv"]
    assert report.counts() == {} and [e["pass"] for e in report.fused] == [PASS]
    np.testing.assert_allclose(normrt.InferenceSession(opt).run(None, {"x": x})[0],
                               ReferenceEvaluator(model).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
