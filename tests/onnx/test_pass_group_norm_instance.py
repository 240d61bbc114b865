"""group_norm_instance: Reshape -> InstanceNormalization -> Reshape [-> Mul -> Add] becomes one normrt::GroupNorm.

Each variant (legacy Shape form, dynamo constant shapes, group counts, affine
shapes, no affine) and each refusal, checked against onnx.reference on the original.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from half_models import HALF_NP, assert_matches_float64
from normrt.onnx.loader import load_model
from normrt.onnx.optimize import optimize_model
from normrt.onnx.passes.constant_folding import ConstantFolding
from normrt.onnx.passes.group_norm_instance import GroupNormInstance
from normrt.onnx.passes.standard_norms import StandardNorms
from graph_builder import optimize_and_compare

RNG = np.random.default_rng(5)
PASS = "group_norm_instance"


def arr(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def gn_model(x_shape=(2, 8, 4, 4), groups=4, *, form="legacy", affine=((8, 1, 1), (8, 1, 1)), eps=1e-5,
             in_scale=None, in_bias=None, first_target=None, back_target=None, elem=TensorProto.FLOAT,
             extra_outputs=(), opset=17):
    """GroupNorm as torch writes it; `affine` = (Mul operand shape, Add operand shape), None to leave out."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    init = {"target": np.array(first_target if first_target is not None else [0, groups, -1], np.int64),
            "ones": in_scale if in_scale is not None else np.ones(groups, dtype),
            "zeros": in_bias if in_bias is not None else np.zeros(groups, dtype)}
    nodes = [helper.make_node("Reshape", ["x", "target"], ["r1"], name="reshape_in"),
             helper.make_node("InstanceNormalization", ["r1", "ones", "zeros"], ["in"], name="inorm", epsilon=eps)]
    if form == "legacy":
        nodes.append(helper.make_node("Shape", ["x"], ["xshape"], name="shape"))
        back = "xshape"
    else:
        init["back"] = np.array(back_target if back_target is not None else x_shape, np.int64)
        back = "back"
    nodes.append(helper.make_node("Reshape", ["in", back], ["r2"], name="reshape_out"))
    y = "r2"
    mul_shape, add_shape = affine if affine else (None, None)
    if mul_shape is not None:
        init["gamma"] = (1 + 0.5 * arr(*mul_shape)).astype(dtype)
        nodes.append(helper.make_node("Mul", [y, "gamma"], ["m"], name="mul"))
        y = "m"
    if add_shape is not None:
        init["beta"] = arr(*add_shape).astype(dtype)
        nodes.append(helper.make_node("Add", ["beta", y], ["a"], name="add"))   # operands swapped on purpose
        y = "a"
    nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    outputs = [helper.make_tensor_value_info("y", elem, list(x_shape))]
    outputs += [helper.make_tensor_value_info(o, elem, shape) for o, shape in extra_outputs]
    graph = helper.make_graph(nodes, "gn", [helper.make_tensor_value_info("x", elem, list(x_shape))], outputs,
                              [numpy_helper.from_array(v, k) for k, v in init.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_and_compare(model, x, atol=1e-5, rtol=1e-5):
    return optimize_and_compare(model, {"x": x}, rtol, atol)


def ops(model):
    return [(n.domain, n.op_type) for n in model.graph.node]


def attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@pytest.mark.parametrize("form", ["legacy", "dynamo"])
@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_fused_with_affine(form, groups):
    model = gn_model(groups=groups, form=form, eps=1e-4)
    opt, report = run_and_compare(model, arr(2, 8, 4, 4) * 3 + 1)
    assert report["passes"][PASS] == 1
    assert [op for _, op in ops(opt)] == ["GroupNorm", "Identity"]
    gn = opt.graph.node[0]
    assert attr(gn, "num_groups") == groups and abs(attr(gn, "epsilon") - 1e-4) < 1e-9
    inits = {t.name: numpy_helper.to_array(t) for t in opt.graph.initializer}
    assert inits[gn.input[1]].shape == (8,) and inits[gn.input[2]].shape == (8,)
    entry = report["fused"][0]
    assert entry["normrt_op"] == "GroupNorm" and entry["kernel"] == "group_norm" and entry["activation"] is None
    assert entry["nodes"] == ["reshape_in", "inorm", "reshape_out", "mul", "add"]
    assert not report["refused"]


@pytest.mark.parametrize("x_shape,affine", [
    ((2, 6, 5), ((6, 1), (6, 1))),             # rank 3, (C, 1)
    ((2, 6, 3, 3), ((1, 6, 1, 1), (6, 1, 1))),  # (1, C, 1, 1)
    ((2, 6, 2, 2, 2), ((6, 1, 1, 1), (1,))),    # rank 5, a one-element bias
    ((3, 6), ((6,), (6,))),                     # rank 2
])
def test_affine_shapes(x_shape, affine):
    model = gn_model(x_shape, groups=3, form="dynamo", affine=affine)
    opt, report = run_and_compare(model, arr(*x_shape))
    assert report["passes"][PASS] == 1 and ops(opt)[0] == ("normrt", "GroupNorm")
    assert not [op for _, op in ops(opt) if op in ("Mul", "Add", "InstanceNormalization")]


@pytest.mark.parametrize("form", ["legacy", "dynamo"])
def test_without_affine(form):
    model = gn_model(groups=2, form=form, affine=None)
    opt, report = run_and_compare(model, arr(2, 8, 4, 4))
    assert report["passes"][PASS] == 1
    gn = opt.graph.node[0]
    assert gn.op_type == "GroupNorm" and list(gn.input) == ["x"]


def test_mul_only_and_batch_in_target():
    model = gn_model(groups=4, form="dynamo", affine=((8, 1, 1), None), first_target=[2, 4, -1],
                     back_target=[0, 8, -1, 4])
    opt, report = run_and_compare(model, arr(2, 8, 4, 4))
    assert report["passes"][PASS] == 1 and [op for _, op in ops(opt)] == ["GroupNorm", "Identity"]
    assert len(opt.graph.node[0].input) == 2


def test_non_channel_mul_stays_after_the_group_norm():
    """A Mul by a spatial constant is not the affine: GroupNorm without affine, the Mul and Add kept."""
    model = gn_model(groups=4, form="dynamo", affine=((8, 4, 4), (8, 1, 1)))
    opt, report = run_and_compare(model, arr(2, 8, 4, 4))
    assert report["passes"][PASS] == 1
    assert [op for _, op in ops(opt)] == ["GroupNorm", "Elementwise", "Identity"]   # the Mul and Add, one pass


def test_matches_a_converted_instance_norm():
    """standard_norms ran first: the normrt::InstanceNorm form is matched too, one report entry."""
    model = gn_model(groups=4, form="legacy")
    x = arr(2, 8, 4, 4)
    opt, report = optimize_model(load_model(model), passes=[ConstantFolding(), StandardNorms(), GroupNormInstance()])
    assert [op for _, op in ops(opt)] == ["GroupNorm", "Identity"]
    assert report.counts() == {"GroupNorm": 1}
    got = normrt.InferenceSession(opt).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_silu_after_fusion():
    model = gn_model(groups=4, form="legacy")
    graph = model.graph
    out = graph.node[-1]
    graph.node.remove(out)
    graph.node.extend([helper.make_node("Sigmoid", ["a"], ["s"], name="sig"),
                       helper.make_node("Mul", ["s", "a"], ["y"], name="silu")])
    opt, report = run_and_compare(model, arr(2, 8, 4, 4))
    assert [op for _, op in ops(opt)] == ["GroupNorm"]
    assert attr(opt.graph.node[0], "activation") == b"silu"
    assert report["fused"][0]["activation"] == "silu"


@pytest.mark.parametrize("kwargs,reason", [
    (dict(in_scale=np.full(4, 2.0, np.float32)), "not all ones/zeros"),
    (dict(in_bias=np.full(4, 0.5, np.float32)), "not all ones/zeros"),
    (dict(first_target=[0, 4, 32]), "is not [N, G, -1]"),
    (dict(first_target=[0, 4, 8, 4]), "is not [N, G, -1]"),
    (dict(first_target=[1, 4, -1]), "does not keep the batch axis"),
    (dict(form="dynamo", back_target=[2, 32, 4], affine=None), "does not match x's shape"),
    (dict(form="dynamo", back_target=[2, 8, 16, 1]), "does not restore x's shape"),
    (dict(extra_outputs=[("in", [2, 4, 32])]), "is a graph output"),
])
def test_refused(kwargs, reason):
    _refused(kwargs, reason)


@pytest.mark.parametrize("form", ["legacy", "dynamo"])
@pytest.mark.parametrize("elem", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_half_fused(form, elem):
    """The diffusers export of a half GroupNorm (InstanceNormalization on (N, G, -1), ones/zeros in
    half, then Mul/Add by half constants) -> one half GroupNorm with float32 parameters."""
    model = gn_model(groups=4, form=form, elem=elem)
    x = arr(2, 8, 4, 4).astype(HALF_NP[elem])
    sess = normrt.InferenceSession(model)
    assert [n.op_type for n in sess.optimized_model.graph.node] == ["GroupNorm", "Identity"], sess.report["refused"]
    assert_matches_float64(sess.run(None, {"x": x}), model, {"x": x}, ulps=2)
    params = {t.name: t.data_type for t in sess.optimized_model.graph.initializer}
    assert set(params.values()) == {TensorProto.FLOAT}


def _refused(kwargs, reason):
    form = kwargs.pop("form", "legacy")
    model = gn_model(groups=4, form=form, **kwargs)
    x = arr(2, 8, 4, 4).astype(helper.tensor_dtype_to_np_dtype(kwargs.get("elem", TensorProto.FLOAT)))
    # half: onnx.reference computes the left InstanceNormalization in the half type, normrt in
    # float32 rounded once (fallback.py): one unit of the half type apart at most
    atol = {np.dtype(np.float16): 2e-3, HALF_NP[TensorProto.BFLOAT16]: 5e-2}.get(x.dtype, 1e-5)
    rtol = {np.dtype(np.float16): 2.0 ** -9, HALF_NP[TensorProto.BFLOAT16]: 2.0 ** -6}.get(x.dtype, 1e-5)
    opt, report = run_and_compare(model, x, atol=atol, rtol=rtol)
    assert report["passes"][PASS] == 0
    refused = [e for e in report["refused"] if e["pass"] == PASS]
    assert len(refused) == 1 and reason in refused[0]["reason"], refused
    assert refused[0]["nodes"][:3] == ["reshape_in", "inorm", "reshape_out"]
    assert not any(op == "GroupNorm" for _, op in ops(opt))


def test_refused_groups_not_dividing_channels():
    """C = 6, G = 4: the Reshape works (6*2*2 = 24) but the groups straddle channels: not a GroupNorm."""
    model = gn_model((2, 6, 2, 2), groups=4, form="dynamo", affine=((6, 1, 1), (6, 1, 1)))
    opt, report = run_and_compare(model, arr(2, 6, 2, 2))
    assert report["passes"][PASS] == 0
    assert "do not divide" in report["refused"][0]["reason"]


def test_refused_non_constant_instance_norm_params():
    model = gn_model(groups=4, form="legacy")
    graph = model.graph
    ones = next(t for t in graph.initializer if t.name == "ones")
    graph.initializer.remove(ones)
    graph.input.append(helper.make_tensor_value_info("ones", TensorProto.FLOAT, [4]))
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0
    assert "not constants" in report["refused"][0]["reason"]
    x, ones_v = arr(2, 8, 4, 4), np.ones(4, np.float32)
    got = normrt.InferenceSession(opt).run(None, {"x": x, "ones": ones_v})[0]
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, {"x": x, "ones": ones_v})[0],
                               rtol=1e-5, atol=1e-5)


def test_refused_middle_value_read_elsewhere():
    model = gn_model(groups=4, form="dynamo")
    model.graph.node.append(helper.make_node("Relu", ["r1"], ["side"], name="side"))
    model.graph.output.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, [2, 4, 32]))
    opt, report = run_and_compare(model, arr(2, 8, 4, 4))
    assert report["passes"][PASS] == 0
    assert "also read by ['side']" in report["refused"][0]["reason"]


def test_symbolic_batch_legacy_form():
    """x of shape (N, 8, 4, 4) with a symbolic N: fused, and runs for any batch size."""
    model = gn_model(("N", 8, 4, 4), groups=4, form="legacy")
    for n in (1, 3):
        opt, report = run_and_compare(model, arr(n, 8, 4, 4))
        assert report["passes"][PASS] == 1


def test_refused_unknown_channel_count():
    model = gn_model(("N", "C", 4, 4), groups=4, form="legacy", affine=None)
    opt, report = run_and_compare(model, arr(2, 8, 4, 4))
    assert report["passes"][PASS] == 0
    assert "known channel count" in report["refused"][0]["reason"]
