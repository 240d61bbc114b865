"""normrt.optimize: every normalization becomes a normrt node; the result is a valid, saveable model
that runs like the original (oracle: onnx.reference.ReferenceEvaluator on the original model)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import vi

RNG = np.random.default_rng(11)
STANDARD_NORMS = {"BatchNormalization", "LayerNormalization", "RMSNormalization", "InstanceNormalization",
                  "GroupNormalization", "MeanVarianceNormalization", "LpNormalization", "LRN"}


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def all_norms_model():
    """Opset 23: one node of each standard normalization (BatchNorm also in training mode)."""
    C = 4
    init = {
        "s": f32(C), "b": f32(C), "m": f32(C), "v": np.abs(f32(C)) + 0.5,
        "ln_b": f32(C, 5, 5), "rms_s": f32(5),
    }
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["bn"], name="bn", epsilon=1e-3),
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["bnt", "rm", "rv"], name="bn_train",
                         training_mode=1, momentum=0.8),
        helper.make_node("LayerNormalization", ["x", "ln_s", "ln_b"], ["ln", "ln_mean", "ln_rstd"], name="ln",
                         axis=1),
        helper.make_node("RMSNormalization", ["x", "rms_s"], ["rms"], name="rms", epsilon=1e-6),
        helper.make_node("InstanceNormalization", ["x", "s", "b"], ["inorm"], name="inorm"),
        helper.make_node("GroupNormalization", ["x", "s", "b"], ["gn"], name="gn", num_groups=2),
        helper.make_node("MeanVarianceNormalization", ["x"], ["mvn"], name="mvn"),
        helper.make_node("LpNormalization", ["x"], ["l2"], name="l2", axis=1, p=2),
        helper.make_node("Abs", ["x"], ["ax"], name="abs"),
        helper.make_node("LpNormalization", ["ax"], ["l1"], name="l1", axis=-1, p=1),
        # onnx.reference's LRN loops over the batch axis instead of channels: N == C keeps it right
        helper.make_node("LRN", ["xl"], ["lrn"], name="lrn", size=3, alpha=1e-3, beta=0.7, bias=1.5),
    ]
    outs = ["bn", "bnt", "rm", "rv", "ln", "ln_mean", "ln_rstd", "rms", "inorm", "gn", "mvn", "l2", "l1", "lrn"]
    shapes = {"rm": [C], "rv": [C], "ln_mean": [2, 1, 1, 1], "ln_rstd": [2, 1, 1, 1], "lrn": [4, 4, 3, 3]}
    graph = helper.make_graph(
        nodes, "all_norms",
        [vi("x", ["N", C, 5, 5]), vi("ln_s", [C, 5, 5]), vi("xl", [4, 4, 3, 3])],
        [vi(o, shapes.get(o, ["N", C, 5, 5])) for o in outs],
        [numpy_helper.from_array(v, k) for k, v in init.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def all_norms_feed(n=2):
    return {"x": f32(n, 4, 5, 5) * 3 + 1, "ln_s": f32(4, 5, 5), "xl": f32(4, 4, 3, 3)}


def compare(model, feed, sess, rtol=1e-4, atol=1e-5):
    got = sess.run(None, feed)
    want = ReferenceEvaluator(model).run(None, feed)
    names = [o.name for o in model.graph.output]
    for name, g, w in zip(names, got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)


def test_every_norm_becomes_a_normrt_node_and_passes_checker():
    model = all_norms_model()
    opt, report = normrt.optimize(model, report=True)
    onnx.checker.check_model(opt)
    ops = [(n.domain, n.op_type) for n in opt.graph.node]
    assert not [op for dom, op in ops if dom == "" and op in STANDARD_NORMS]
    normrt_ops = sorted(op for dom, op in ops if dom == "normrt")
    assert normrt_ops == sorted(["BatchNorm", "BatchNorm", "LayerNorm", "RMSNorm", "InstanceNorm", "GroupNorm",
                                 "MeanVarianceNorm", "LpNorm", "LpNorm", "LRN"])
    assert {(o.domain, o.version) for o in opt.opset_import} >= {("normrt", 1), ("", 23)}
    # the report: one entry per normalization, with node names and kernels
    assert report["counts"] == {"BatchNorm": 2, "LayerNorm": 1, "RMSNorm": 1, "InstanceNorm": 1, "GroupNorm": 1,
                                "MeanVarianceNorm": 1, "LpNorm": 2, "LRN": 1}
    assert not report["refused"]
    by_node = {e["nodes"][0]: e for e in report["fused"]}
    assert by_node["ln"]["op"] == "LayerNormalization" and by_node["ln"]["kernel"] == "layer_norm"
    assert by_node["bn_train"]["normrt_op"] == "BatchNorm" and by_node["bn_train"]["activation"] is None
    assert by_node["lrn"]["kernel"] == "lrn" and by_node["lrn"]["residual"] is False
    # the LayerNorm scale is a graph input and stays one; its bias stays an initializer
    ln = next(n for n in opt.graph.node if n.op_type == "LayerNorm")
    assert ln.input[1] == "ln_s" and "ln_s" in [i.name for i in opt.graph.input]
    assert ln.input[2] in {t.name for t in opt.graph.initializer}


def test_optimized_model_runs_like_the_original():
    model = all_norms_model()
    sess = normrt.InferenceSession(model)
    assert sess.executor.counts()["kernel"] == 10
    compare(model, all_norms_feed(2), sess)
    compare(model, all_norms_feed(3), sess)


def test_save_load_round_trip(tmp_path):
    model = all_norms_model()
    opt = normrt.optimize(model)
    path = tmp_path / "opt.onnx"
    onnx.save_model(opt, path)
    onnx.checker.check_model(str(path))
    feed = all_norms_feed()
    direct = normrt.InferenceSession(model).run(None, feed)
    reloaded_sess = normrt.InferenceSession(str(path))
    reloaded = reloaded_sess.run(None, feed)
    for a, b in zip(direct, reloaded):
        np.testing.assert_array_equal(a, b)
    assert reloaded_sess.executor.counts()["kernel"] == 10
    # optimizing an optimized model changes nothing
    again = normrt.optimize(opt)
    assert [(n.domain, n.op_type) for n in again.graph.node] == [(n.domain, n.op_type) for n in opt.graph.node]


def group_norm_18_model():
    """Opset 18 GroupNormalization: per-GROUP scale/bias, once as initializers, once as graph inputs."""
    graph = helper.make_graph(
        [helper.make_node("GroupNormalization", ["x", "gs", "gb"], ["y1"], name="gn_const", num_groups=2,
                          epsilon=1e-4),
         helper.make_node("GroupNormalization", ["x", "gs_in", "gb_in"], ["y2"], name="gn_input", num_groups=2)],
        "gn18", [vi("x", ["N", 6, 3, 3]), vi("gs_in", [2]), vi("gb_in", [2])],
        [vi("y1", ["N", 6, 3, 3]), vi("y2", ["N", 6, 3, 3])],
        [numpy_helper.from_array(f32(2), "gs"), numpy_helper.from_array(f32(2), "gb")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_group_norm_18_per_group_params():
    model = group_norm_18_model()
    sess = normrt.InferenceSession(model)
    nodes = {n.name: n for n in sess.optimized_model.graph.node}
    const, inp = nodes["gn_const"], nodes["gn_input"]
    assert const.op_type == inp.op_type == "GroupNorm"
    inits = {t.name: numpy_helper.to_array(t) for t in sess.optimized_model.graph.initializer}
    assert inits[const.input[1]].shape == (6,)          # expanded to per channel at load
    assert list(inp.input[1:]) == ["gs_in", "gb_in"]     # graph inputs stay inputs, expanded at run time
    assert any(a.name == "per_group_affine" and a.i == 1 for a in inp.attribute)
    feed = {"x": f32(2, 6, 3, 3), "gs_in": f32(2), "gb_in": f32(2)}
    compare(model, feed, sess)


def test_half_kernels_and_mixed_dtypes_fall_back_to_reference():
    """A float16 LayerNorm runs on the half kernel; a double BatchNorm with float parameters stays a
    standard node (float32 parameters are taken with half X only) and runs correctly."""
    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["h", "hs"], ["hy"], name="ln_half"),
         helper.make_node("BatchNormalization", ["d", "s", "b", "m", "v"], ["dy"], name="bn_mixed"),
         helper.make_node("InstanceNormalization", ["d", "sd", "bd"], ["iy"], name="in_double")],
        "mixed", [vi("h", [3, 8], TensorProto.FLOAT16), vi("d", [2, 3, 4], TensorProto.DOUBLE)],
        [vi("hy", [3, 8], TensorProto.FLOAT16), vi("dy", [2, 3, 4], TensorProto.DOUBLE),
         vi("iy", [2, 3, 4], TensorProto.DOUBLE)],
        [numpy_helper.from_array(f32(8).astype(np.float16), "hs"),
         numpy_helper.from_array(f32(3), "s"), numpy_helper.from_array(f32(3), "b"),
         numpy_helper.from_array(f32(3), "m"), numpy_helper.from_array(np.abs(f32(3)) + 1, "v"),
         numpy_helper.from_array(f32(3).astype(np.float64), "sd"),
         numpy_helper.from_array(f32(3).astype(np.float64), "bd")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = normrt.InferenceSession(model)
    refused = {e["nodes"][0]: e["reason"] for e in sess.report["refused"]}
    assert "ln_half" not in refused
    assert "mixed" in refused["bn_mixed"]
    assert [k for _, k, _ in sess.kernel_nodes()] == ["LayerNorm", "InstanceNorm"]
    feed = {"h": f32(3, 8).astype(np.float16), "d": f32(2, 3, 4).astype(np.float64)}
    compare(model, feed, sess, rtol=2e-3, atol=2e-3)


def test_batch_norm_opset9_inference_and_legacy_training_outputs():
    """opset 9 BatchNormalization: the inference form is a kernel; the training-output form falls back."""
    init = [numpy_helper.from_array(a, n) for n, a in
            [("s", f32(3)), ("b", f32(3)), ("m", f32(3)), ("v", np.abs(f32(3)) + 1)]]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn_inf")],
        "bn9", [vi("x", [2, 3, 4, 4])], [vi("y", [2, 3, 4, 4])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    sess = normrt.InferenceSession(model)
    assert [k for _, k, _ in sess.kernel_nodes()] == ["BatchNorm"]
    # onnx.reference's BatchNormalization-9 uses batch statistics whenever `momentum` has a value
    # (it always has: the schema default): a numpy oracle instead
    x = f32(2, 3, 4, 4)
    s, b, m, v = (numpy_helper.to_array(t).reshape(1, 3, 1, 1) for t in init)
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(y, (x - m) / np.sqrt(v + 1e-5) * s + b, rtol=1e-5, atol=1e-6)
    legacy = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv", "sm", "sv"],
                           name="bn_train9")],
        "bn9t", [vi("x", [2, 3, 4, 4])], [vi("y", [2, 3, 4, 4])] + [vi(n, [3]) for n in ("rm", "rv", "sm", "sv")],
        init)
    sess = normrt.InferenceSession(helper.make_model(legacy, opset_imports=[helper.make_opsetid("", 9)]))
    assert not sess.kernel_nodes()
    assert "before opset 14" in sess.report["refused"][0]["reason"]


def test_constant_folding_skips_huge_and_random_outputs():
    """ConstantOfShape of a tiny shape into a 32 MiB tensor and RandomNormal stay nodes; small folds happen."""
    nodes = [
        helper.make_node("ConstantOfShape", ["big_shape"], ["big"], name="big",
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("ReduceSum", ["big"], ["big_sum"], name="reduce", keepdims=0),
        helper.make_node("RandomNormal", [], ["noise"], name="noise", shape=[3], dtype=TensorProto.FLOAT),
        helper.make_node("Mul", ["noise", "zero"], ["no_noise"], name="mul0"),
        helper.make_node("Add", ["x", "no_noise"], ["x1"], name="add_noise"),
        helper.make_node("Mul", ["x1", "big_sum"], ["y"], name="scale_by_sum"),
        helper.make_node("Constant", [], ["k"], name="const_k",
                         value=numpy_helper.from_array(np.array([2.0, 3.0, 4.0], np.float32))),
        helper.make_node("Mul", ["k", "k"], ["k2"], name="k_squared"),
        helper.make_node("Add", ["y", "k2"], ["out"], name="add_k2"),
    ]
    graph = helper.make_graph(
        nodes, "fold", [vi("x", [3])], [vi("out", [3])],
        [numpy_helper.from_array(np.array([8 << 20], np.int64), "big_shape"),
         numpy_helper.from_array(np.zeros(3, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = normrt.InferenceSession(model)
    names = {n.name for n in sess.optimized_model.graph.node}
    assert {"big", "noise"} <= names            # refused: huge output / non-deterministic
    assert not {"const_k", "k_squared"} & names    # folded into an initializer
    x = f32(3)
    (out,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(out, x * (8 << 20) * 0.5 + np.array([4, 9, 16]), rtol=1e-5)


def test_runtime_errors_name_the_node():
    """A kernel refusing its input at run time: the error carries the node."""
    graph = helper.make_graph(
        [helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], name="gn_bad_groups", num_groups=4)],
        "gn", [vi("x", ["N", "C", 3]), vi("s", ["C"]), vi("b", ["C"])], [vi("y", ["N", "C", 3])])
    sess = normrt.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    with pytest.raises(ValueError, match="num_groups") as info:
        sess.run(None, {"x": f32(2, 6, 3), "s": f32(6), "b": f32(6)})
    if hasattr(info.value, "add_note"):     # Python >= 3.11
        assert "node 'gn_bad_groups' (normrt::GroupNorm) [kernel]" in " ".join(info.value.__notes__)


def test_batch_norm_params_as_graph_inputs_stay_inputs():
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")], "bn",
        [vi("x", ["N", 3, 4]), vi("s", [3]), vi("b", [3]), vi("m", [3]), vi("v", [3])], [vi("y", ["N", 3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    sess = normrt.InferenceSession(model)
    (node,) = sess.optimized_model.graph.node
    assert (node.domain, node.op_type, list(node.input)) == ("normrt", "BatchNorm", ["x", "s", "b", "m", "v"])
    compare(model, {"x": f32(2, 3, 4), "s": f32(3), "b": f32(3), "m": f32(3), "v": np.abs(f32(3)) + 1}, sess)


def test_format_report():
    from normrt.onnx.report import format_report

    _, report = normrt.optimize(all_norms_model(), report=True)
    text = format_report(report)
    assert "10 on normrt kernels, 0 left to onnx.reference" in text
    assert "LayerNormalization ['ln'] -> normrt::LayerNorm 'ln' (kernel layer_norm)" in text
