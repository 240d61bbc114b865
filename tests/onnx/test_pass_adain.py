"""adain: hand-written AdaIN (means and stds of content and style, then std_s * (c - mean_c) / std_c + mean_s)
becomes one normrt::AdaIN, in the forms both torch exporters write (tests/data adain*, see
scripts/make_fixtures.py) and their small variations; anything else is refused with a reason.

Oracle: onnx.reference on the original model.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import StatsBuilder, vi
from half_models import assert_matches_float64

RNG = np.random.default_rng(47)
F, D, H = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16
NP = {F: np.float32, D: np.float64, H: np.float16}
PASS = "adain"


def Builder(opset, elem):
    return StatsBuilder(opset, elem, NP[elem])


def legacy_stats(b, x, shape, p, *, unbiased=True, eps=1e-5, count=None, how="mul"):
    """Legacy exporter, calc_mean_std (view(N, C, -1), unbiased var, Shape-based count): (mean, std) expanded."""
    N, C = shape[:2]
    view = b.node("Reshape", [x, b.const(p + "view_shape", [N, C, -1], np.int64)], p + "view")
    m1 = b.reduce_mean(view, [2], p + "m_keep", keepdims=1)
    d = b.node("Sub", [view, m1], p + "d")
    var = b.reduce_mean(b.square(d, p + "sq", how), [2], p + "var_pop", keepdims=0)
    if unbiased:
        if count is None:
            shp = b.node("Shape", [view], p + "shape")
            g = b.node("Gather", [shp, b.const(p + "idx", [2], np.int64)], p + "gather", axis=0)
            n = b.node("Cast", [b.node("ReduceProd", [g], p + "prod", keepdims=0)], p + "n", to=b.elem)
            nm1 = b.node("Sub", [n, b.const(p + "one", 1.0)], p + "nm1")
        else:
            n, nm1 = b.const(p + "n", count[0]), b.const(p + "nm1", count[1])
        var = b.node("Div", [b.node("Mul", [var, n], p + "var_n"), nm1], p + "var")
    std = b.node("Sqrt", [b.node("Add", [var, b.const(p + "eps", eps)], p + "var_eps")], p + "std0")
    nc11 = b.const(p + "nc11", [N, C] + [1] * (len(shape) - 2), np.int64)
    std = b.node("Reshape", [std, nc11], p + "std")
    mean = b.node("Reshape", [b.reduce_mean(view, [2], p + "m", keepdims=0), nc11], p + "mean")
    return mean, std


def keepdim_stats(b, x, shape, p, *, eps=1e-5, how="mul", axes=None, shared=False):
    """adain_biased's form: mean/var over the spatial axes with keepdim (dynamo: var keepdims=0 + Reshape)."""
    axes = list(range(2, len(shape))) if axes is None else axes
    m = b.reduce_mean(x, axes, p + "mean", keepdims=1)
    d = b.node("Sub", [x, m], p + "d")
    if shared:          # dynamo: var with keepdims=0, then Reshape to (N, C, 1, 1)
        v = b.reduce_mean(b.square(d, p + "sq", how), axes, p + "var0", keepdims=0)
        v = b.node("Reshape", [v, b.const(p + "nc11", list(shape[:2]) + [1] * (len(shape) - 2), np.int64)],
                   p + "var")
    else:
        v = b.reduce_mean(b.square(d, p + "sq", how), axes, p + "var", keepdims=1)
    std = b.node("Sqrt", [b.node("Add", [b.const(p + "eps", eps), v], p + "var_eps")], p + "std")
    return m, std, d


def adain_model(form="legacy", *, cshape=(2, 8, 6, 6), sshape=(2, 8, 5, 5), opset=13, elem=F,
                eps_c=1e-5, eps_s=1e-5, unbiased_c=True, unbiased_s=True, count_c=None, count_s=None, how="mul",
                commute=False, expand=True, extra_outputs=(), content_axes=None):
    b = Builder(opset, elem)
    if form == "legacy":
        ms, ss = legacy_stats(b, "style", sshape, "s_", unbiased=unbiased_s, eps=eps_s, count=count_s, how=how)
        mc, sc = legacy_stats(b, "content", cshape, "c_", unbiased=unbiased_c, eps=eps_c, count=count_c, how=how)
        num = None
    else:
        shared = form == "dynamo"
        mc, sc, d = keepdim_stats(b, "content", cshape, "c_", eps=eps_c, how=how, shared=shared,
                                  axes=content_axes)
        ms, ss, _ = keepdim_stats(b, "style", sshape, "s_", eps=eps_s, how=how, shared=shared)
        num = d if shared else None
    if expand:
        target = b.const("target", list(cshape), np.int64)
        mc, sc, ss, ms = (b.node("Expand", [v, target], v + "_x") for v in (mc, sc, ss, ms))
    num = num or b.node("Sub", ["content", mc], "num")
    q = b.node("Div", [num, sc], "q")
    prod = b.node("Mul", [ss, q] if commute else [q, ss], "prod")
    b.nodes.append(helper.make_node("Add", [ms, prod] if commute else [prod, ms], ["y"], name="add_out"))
    outputs = [vi("y", list(cshape), elem)] + [vi(o, list(shp), elem) for o, shp in extra_outputs]
    graph = helper.make_graph(b.nodes, "adain", [vi("content", list(cshape), elem), vi("style", list(sshape), elem)],
                              outputs, b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feed_for(cshape=(2, 8, 6, 6), sshape=(2, 8, 5, 5), elem=F):
    dt = NP[elem]
    return {"content": (RNG.standard_normal(cshape) * 1.3 + 0.2).astype(dt),
            "style": (RNG.standard_normal(sshape) * 2 + 0.5).astype(dt)}


def check(model, feed, rtol=1e-5, atol=1e-5):
    got = normrt.InferenceSession(model).run(None, feed)
    want = ReferenceEvaluator(model).run(None, feed)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def fused_node(model):
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 1, report["refused"]
    (node,) = opt.graph.node
    assert (node.domain, node.op_type) == ("normrt", "AdaIN") and list(node.input) == ["content", "style"]
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}, report


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("how", ["mul", "pow"])
@pytest.mark.parametrize("commute", [False, True])
def test_legacy_unbiased_form(opset, how, commute):
    model = adain_model("legacy", opset=opset, how=how, commute=commute)
    attrs, report = fused_node(model)
    assert attrs.get("unbiased") == 1 and abs(attrs["epsilon"] - 1e-5) < 1e-10
    assert report["fused"][0]["normrt_op"] == "AdaIN"
    # the counts n (Shape -> Gather -> ReduceProd) are folded to constants first at these fixed shapes
    assert "add_out" in report["fused"][0]["nodes"] and report["passes"]["constant_folding"] > 0
    check(model, feed_for())


def test_dynamo_unbiased_form_constant_counts():
    """dynamo writes var * n / (n - 1) with n and n - 1 constants (36 = 6*6 and 25 = 5*5 here)."""
    model = adain_model("legacy", count_c=(36.0, 35.0), count_s=(25.0, 24.0))
    attrs, _ = fused_node(model)
    assert attrs.get("unbiased") == 1
    check(model, feed_for())


@pytest.mark.parametrize("form", ["keepdim", "dynamo"])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("expand", [False, True])
def test_biased_forms(form, opset, expand):
    model = adain_model(form, opset=opset, expand=expand, eps_c=1e-3, eps_s=1e-3)
    attrs, _ = fused_node(model)
    assert attrs.get("unbiased", 0) == 0 and abs(attrs["epsilon"] - 1e-3) < 1e-9
    check(model, feed_for())


def test_rank3_and_rank5():
    for cshape, sshape in (((2, 4, 9), (2, 4, 5)), ((1, 3, 2, 3, 4), (1, 3, 4, 2, 2))):
        model = adain_model("keepdim", cshape=cshape, sshape=sshape)
        fused_node(model)
        check(model, feed_for(cshape, sshape))
        model = adain_model("legacy", cshape=cshape, sshape=sshape)
        fused_node(model)
        check(model, feed_for(cshape, sshape))


def test_float64_with_exact_eps():
    model = adain_model("dynamo", elem=D, eps_c=2.0**-16, eps_s=2.0**-16)
    fused_node(model)
    check(model, feed_for(elem=D), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw,reason,runs", [
    (dict(eps_s=1e-3), "eps", True),
    (dict(unbiased_s=False), "unbiased", True),
    (dict(count_c=(36.0, 34.0)), "not the unbiased variance", True),
    (dict(form="keepdim", content_axes=[3]), "axes", True),
    (dict(form="keepdim", sshape=(1, 8, 5, 5)), "alike", True),
    (dict(extra_outputs=[("c_std", (2, 8, 1, 1))]), "graph output", True),
    (dict(form="dynamo", extra_outputs=[("c_d", (2, 8, 6, 6))]), "graph output", True),
    (dict(form="dynamo", elem=D), "float32", True),      # float64 eps 1e-5 is no float32
])
def test_refusals(kw, reason, runs):
    elem = kw.get("elem", F)
    model = adain_model(kw.pop("form", "legacy"), **kw)
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0
    refused = [e for e in report["refused"] if e["pass"] == PASS]
    assert len(refused) == 1 and reason in refused[0]["reason"], refused
    assert "AdaIN" not in [n.op_type for n in opt.graph.node]
    if runs:
        tol = 5e-3 if elem == H else 1e-5
        check(model, feed_for(kw.get("cshape", (2, 8, 6, 6)), kw.get("sshape", (2, 8, 5, 5)), elem), tol, tol)


@pytest.mark.parametrize("form", ["legacy", "keepdim", "dynamo"])
def test_float16_fused(form):
    """The same spellings in float16 (constants, eps and counts in half) -> one half AdaIN node,
    matching the float64 reading of the model within float16 rounding."""
    model = adain_model(form, elem=H, opset=18)
    fused_node(model)
    feed = feed_for(elem=H)
    got = normrt.InferenceSession(model).run(None, feed)
    assert_matches_float64(got, model, feed, ulps=2)


def test_eps_from_a_graph_input_is_refused():
    model = adain_model("keepdim")
    for t in list(model.graph.initializer):
        if t.name == "c_eps":
            model.graph.initializer.remove(t)
    model.graph.input.append(vi("c_eps", []))
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0
    assert "eps" in report["refused"][0]["reason"]
    feed = feed_for()
    feed["c_eps"] = np.array(1e-5, np.float32)
    check(model, feed)


def test_plain_affine_is_not_a_candidate():
    """(x - mean) / std * gamma + beta with constant gamma/beta (a LayerNorm-like chain) is no AdaIN candidate."""
    b = Builder(13, F)
    m, s, d = keepdim_stats(b, "content", (2, 8, 6, 6), "c_")
    q = b.node("Div", [d, s], "q")
    prod = b.node("Mul", [q, b.const("gamma", RNG.standard_normal((8, 1, 1)))], "prod")
    b.nodes.append(helper.make_node("Add", [prod, b.const("beta", RNG.standard_normal((8, 1, 1)))], ["y"]))
    graph = helper.make_graph(b.nodes, "in", [vi("content", [2, 8, 6, 6])], [vi("y", [2, 8, 6, 6])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    _, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0 and not [e for e in report["refused"] if e["pass"] == PASS]
