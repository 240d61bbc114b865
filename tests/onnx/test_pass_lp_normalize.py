"""lp_normalize: torch's F.normalize (ReduceL2 -> Clip(min=eps) -> Expand -> Div) becomes normrt::LpNorm.

Each variant is a small graph built here; the oracle is onnx.reference on the original
model (exact for these ops), and for p=1 a numpy formula as well.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from half_models import HALF_NP as NP_HALF, assert_matches_float64
from graph_builder import const, vi

RNG = np.random.default_rng(41)
F, D, H, BF = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16
PASS = "lp_normalize"


def normalize_model(shape=(4, 8), *, axis=-1, opset=18, form="dynamo", reduce="ReduceL2", clip="clip",
                    eps=1e-12, keepdims=1, elem=F, extra_outputs=(), eps_input=False, clip_max=None, axes=None):
    """The exporters' F.normalize: form 'legacy' (Expand to Shape(x)), 'dynamo' (Expand to a constant),
    'plain' (no Expand)."""
    dtype = {F: np.float32, D: np.float64, **NP_HALF}[elem]
    axes = [axis] if axes is None else axes
    inits = []
    if opset >= 18:
        inits.append(const("axes", np.array(axes, np.int64)))
        nodes = [helper.make_node(reduce, ["x", "axes"], ["norm"], name="reduce", keepdims=keepdims)]
    else:
        nodes = [helper.make_node(reduce, ["x"], ["norm"], name="reduce", axes=axes, keepdims=keepdims)]
    if clip == "max":
        inits.append(const("eps", np.array(eps, dtype)))
        nodes.append(helper.make_node("Max", ["norm", "eps"], ["clamped"], name="clamp"))
    elif opset < 11:
        kw = {"min": eps} if clip_max is None else {"min": eps, "max": clip_max}
        nodes.append(helper.make_node("Clip", ["norm"], ["clamped"], name="clamp", **kw))
    else:
        if not eps_input:
            inits.append(const("eps", np.array(eps, dtype)))
        ins = ["norm", "eps"]
        if clip_max is not None:
            inits.append(const("cmax", np.array(clip_max, dtype)))
            ins.append("cmax")
        nodes.append(helper.make_node("Clip", ins, ["clamped"], name="clamp"))
    den = "clamped"
    if form == "legacy":
        nodes += [helper.make_node("Shape", ["x"], ["xshape"], name="shape"),
                  helper.make_node("Expand", ["clamped", "xshape"], ["expanded"], name="expand")]
        den = "expanded"
    elif form == "dynamo":
        inits.append(const("target", np.array(shape, np.int64)))
        nodes.append(helper.make_node("Expand", ["clamped", "target"], ["expanded"], name="expand"))
        den = "expanded"
    nodes.append(helper.make_node("Div", ["x", den], ["y"], name="div"))
    inputs = [vi("x", list(shape), elem)] + ([vi("eps", [], elem)] if eps_input else [])
    reduced = [1 if i == axis % len(shape) else d for i, d in enumerate(shape)]
    outputs = [vi("y", list(shape), elem)] + [vi(o, reduced, elem) for o in extra_outputs]
    graph = helper.make_graph(nodes, "normalize", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feed_for(model, shape, dtype=np.float32):
    x = RNG.standard_normal(shape).astype(dtype)
    x[0] *= np.asarray(1e-14, dtype)   # a vector whose norm is below eps (where F.normalize differs from ONNX)
    x[1] = 0                      # a zero vector
    feed = {"x": x}
    if any(i.name == "eps" for i in model.graph.input):
        feed["eps"] = np.array(1e-12, dtype)
    return feed


def run(model, feed):
    opt, report = normrt.optimize(model, report=True)
    got = normrt.InferenceSession(model).run(None, feed)
    return opt, report, got


def check_against_reference(model, feed, got, rtol=1e-6, atol=1e-7):
    want = ReferenceEvaluator(model).run(None, feed)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


@pytest.mark.parametrize("form", ["legacy", "dynamo", "plain"])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("shape,axis", [((4, 8), -1), ((3, 5, 6), 1), ((2, 3, 4, 5), 0)])
def test_variants_fuse(form, opset, shape, axis):
    model = normalize_model(shape, axis=axis, opset=opset, form=form)
    feed = feed_for(model, shape)
    opt, report, got = run(model, feed)
    assert report["passes"][PASS] == 1
    (node,) = opt.graph.node
    assert (node.domain, node.op_type) == ("normrt", "LpNorm")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["axis"] == axis % len(shape) and abs(attrs["epsilon"] - 1e-12) < 1e-18 and attrs.get("p", 2) == 2
    entry = report["fused"][0]
    assert entry["normrt_op"] == "LpNorm" and entry["pass"] == PASS and "div" in entry["nodes"]
    check_against_reference(model, feed, got)
    # the norm-below-eps vector is scaled by 1/eps like torch, not to unit norm like ONNX LpNormalization
    x = feed["x"]
    np.testing.assert_allclose(got[0][0], x[0] / np.float32(1e-12), rtol=1e-5)


def test_max_form_and_float64():
    """float64 with an eps a float attribute holds exactly (2**-10)."""
    model = normalize_model((4, 6), clip="max", elem=D, eps=2.0**-10)
    feed = feed_for(model, (4, 6), np.float64)
    opt, report, got = run(model, feed)
    assert report["passes"][PASS] == 1 and [n.op_type for n in opt.graph.node] == ["LpNorm"]
    check_against_reference(model, feed, got, rtol=1e-12, atol=1e-15)


def test_clip_attribute_form_opset10():
    model = normalize_model((4, 6), opset=10, form="legacy", eps=1e-6)
    feed = feed_for(model, (4, 6))
    opt, report, got = run(model, feed)
    assert report["passes"][PASS] == 1
    check_against_reference(model, feed, got)


def test_l1_norm():
    """ReduceL1 -> p=1 (numpy oracle: onnx.reference's LpNormalization is not involved, but check anyway)."""
    model = normalize_model((5, 7), reduce="ReduceL1", eps=1e-4)
    feed = feed_for(model, (5, 7))
    opt, report, got = run(model, feed)
    assert report["passes"][PASS] == 1
    node = opt.graph.node[0]
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute}["p"] == 1
    x = feed["x"].astype(np.float64)
    want = x / np.maximum(np.abs(x).sum(-1, keepdims=True), 1e-4)
    np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-7)
    check_against_reference(model, feed, got)


@pytest.mark.parametrize("kw,reason", [
    (dict(axes=[0, 1]), "axes"),
    (dict(keepdims=0, form="plain", shape=(8, 8), axis=0), "keepdims=0"),
    (dict(clip_max=1.0), "max"),
    (dict(clip_max=1.0, opset=10), "max"),
    (dict(eps_input=True), "not a constant"),
    (dict(eps=-1.0), "lower bound"),
    (dict(extra_outputs=("norm",)), "graph output"),
    (dict(extra_outputs=("clamped",), form="legacy"), "graph output"),
    (dict(elem=D, eps=1e-12), "float32"),     # float64 eps that float32 attributes cannot hold
])
def test_refusals(kw, reason):
    shape = kw.pop("shape", (4, 8))
    model = normalize_model(shape, **kw)
    dtype = {F: np.float32, D: np.float64, H: np.float16}[kw.get("elem", F)]
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0
    refused = [e for e in report["refused"] if e["pass"] == PASS]
    assert len(refused) == 1 and reason in refused[0]["reason"], refused
    assert "LpNorm" not in [n.op_type for n in opt.graph.node]
    feed = feed_for(model, shape, dtype)
    got = normrt.InferenceSession(model).run(None, feed)
    with np.errstate(all="ignore"):       # onnx.reference divides zero vectors by a negative/float16 eps
        check_against_reference(model, feed, got, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("form", ["dynamo", "legacy"])
def test_half_fused(form):
    """The bfloat16 spelling (its eps in half) -> one half LpNorm, within bfloat16 rounding of
    float64; float16 with eps 1e-4 too. float16's 1e-12 is 0: the model divides by the plain
    norm, so the LpNorm keeps its NaN for a zero vector (nan_on_zero)."""
    for elem, eps in ((BF, 1e-12), (H, 1e-4)):
        model = normalize_model((4, 8), form=form, elem=elem, eps=eps)
        opt, report = normrt.optimize(model, report=True)
        assert report["passes"][PASS] == 1, report["refused"]
        assert [n.op_type for n in opt.graph.node] == ["LpNorm"]
        feed = feed_for(model, (4, 8), NP_HALF[elem])
        assert_matches_float64(normrt.InferenceSession(model).run(None, feed), model, feed, ulps=2)
    model = normalize_model((4, 8), form=form, elem=H)
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 1, report["refused"]
    (node,) = opt.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "LpNorm" and attrs.get("epsilon", 0.0) == 0.0 and attrs["nan_on_zero"] == 1
    feed = feed_for(model, (4, 8), np.float16)       # rows 0 (1e-14 rounds to 0) and 1: zero vectors
    got = normrt.InferenceSession(model).run(None, feed)
    assert np.isnan(got[0][:2]).all() and not np.isnan(got[0][2:]).any()
    with np.errstate(all="ignore"):
        check_against_reference(model, feed, got, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("form", ["dynamo", "legacy", "plain"])
@pytest.mark.parametrize("clip", ["clip", "max"])
def test_eps_zero_keeps_the_divisions_nan(form, clip):
    """A float32 F.normalize spelled with eps 0 (Clip/Max at 0) is x / ||x||: fused with nan_on_zero,
    a zero vector NaN as in onnx.reference, the others unit vectors."""
    model = normalize_model((5, 8), form=form, clip=clip, eps=0.0)
    feed = feed_for(model, (5, 8))
    opt, report, got = run(model, feed)
    assert report["passes"][PASS] == 1, report["refused"]
    attrs = {a.name: helper.get_attribute_value(a) for a in opt.graph.node[0].attribute}
    assert attrs["nan_on_zero"] == 1
    assert np.isnan(got[0][1]).all() and not np.isnan(np.delete(got[0], 1, axis=0)).any()
    with np.errstate(all="ignore"):
        check_against_reference(model, feed, got)


def test_expand_that_broadcasts_up_is_refused():
    """An Expand to a bigger shape makes the Div grow X: not F.normalize."""
    model = normalize_model((1, 8), form="dynamo")
    for t in model.graph.initializer:
        if t.name == "target":
            t.CopyFrom(const("target", np.array([3, 8], np.int64)))
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 3
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0
    assert "changes X's shape" in report["refused"][0]["reason"]
    feed = {"x": RNG.standard_normal((1, 8)).astype(np.float32)}
    check_against_reference(model, feed, normrt.InferenceSession(model).run(None, feed))


def test_other_numerator_is_not_matched():
    """Div(z, Clip(ReduceL2(x))) divides something else than x: no candidate at all."""
    model = normalize_model((4, 8), form="plain")
    model.graph.input.append(vi("z", [4, 8]))
    model.graph.node[-1].input[0] = "z"
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0 and not report["refused"]


@pytest.mark.parametrize("elem", [F, H])
def test_plain_division_by_its_norm_keeps_nan(elem):
    """X / ReduceL2(X) with no clamp (CLIP's h / h.norm(), recognized_norms' spelling of the same
    LpNorm): a zero vector is 0 / 0 in the model, NaN, and stays NaN on the kernel."""
    dtype = {F: np.float32, **NP_HALF}[elem]
    nodes = [helper.make_node("ReduceL2", ["x", "axes"], ["norm"], name="reduce", keepdims=1),
             helper.make_node("Div", ["x", "norm"], ["y"], name="div")]
    graph = helper.make_graph(nodes, "plain_l2", [vi("x", [5, 8], elem)], [vi("y", [5, 8], elem)],
                              [const("axes", np.array([-1], np.int64))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    opt, report = normrt.optimize(model, report=True)
    (node,) = opt.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "LpNorm" and attrs["nan_on_zero"] == 1
    x = RNG.standard_normal((5, 8)).astype(dtype)
    x[3] = 0
    got = normrt.InferenceSession(model).run(None, {"x": x})
    assert np.isnan(got[0][3]).all() and not np.isnan(np.delete(got[0], 3, axis=0)).any()
    with np.errstate(all="ignore"):
        tol = dict(rtol=1e-6, atol=1e-7) if elem == F else dict(rtol=1e-3, atol=1e-3)
        check_against_reference(model, {"x": x}, got, **tol)


@pytest.mark.parametrize("bad", [2, -1, 1.5, "yes"])
def test_bad_nan_on_zero_attribute_is_a_model_error(bad):
    node = helper.make_node("LpNorm", ["x"], ["y"], name="lp", domain="normrt", nan_on_zero=bad)
    graph = helper.make_graph([node], "g", [vi("x", [2, 3], F)], [vi("y", [2, 3], F)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("normrt", 1)])
    with pytest.raises(normrt.ModelError, match="nan_on_zero must be 0 or 1"):
        normrt.InferenceSession(model).run(None, {"x": np.ones((2, 3), np.float32)})
