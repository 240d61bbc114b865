"""mvn_decomposed: (x - mean) / (sqrt(var) + eps) written out -- torch style (two-pass) or the ONNX
MeanVarianceNormalization function body (E[x^2] - E[x]^2) -- becomes normrt::MeanVarianceNorm.

Oracle: onnx.reference on the original model.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import StatsBuilder, vi
from half_models import assert_matches_float64

RNG = np.random.default_rng(53)
F, D, H = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16
NP = {F: np.float32, D: np.float64, H: np.float16}
PASS = "mvn_decomposed"
SHAPE = (3, 4, 5, 6)


class Builder(StatsBuilder):
    def __init__(self, opset, elem):
        super().__init__(opset, elem, NP[elem])

    def model(self, shape, extra_outputs=()):
        self.nodes[-1].output[0] = "y"
        outputs = [vi("y", list(shape), self.elem)] + [vi(o, list(s), self.elem) for o, s in extra_outputs]
        graph = helper.make_graph(self.nodes, "mvn", [vi("x", list(shape), self.elem)], outputs, self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])


def torch_style(axes=(0, 2, 3), *, shape=SHAPE, opset=13, elem=F, how="mul", eps=1e-6, shared=True,
                var_axes=None, keepdims=1, eps_inside=False, commute=False, extra_outputs=()):
    """(x - x.mean(A, keepdim)) / (x.var(A, keepdim, unbiased=False).sqrt() + eps)."""
    b = Builder(opset, elem)
    m = b.reduce_mean("x", list(axes), "mean")
    d = b.node("Sub", ["x", m], "d")
    var = b.reduce_mean(b.square(d, "sq", how), list(var_axes or axes), "var", keepdims=keepdims)
    if eps_inside:
        den = b.node("Sqrt", [b.node("Add", [var, b.const("eps", eps)], "var_eps")], "den")
    else:
        std = b.node("Sqrt", [var], "std")
        if eps is None:
            den = std
        else:
            den = b.node("Add", [b.const("eps", eps), std] if commute else [std, b.const("eps", eps)], "den")
    if not shared:
        d = b.node("Sub", ["x", b.reduce_mean("x", list(axes), "mean2")], "num")
    b.node("Div", [d, den], "y")
    return b.model(shape, extra_outputs)


def function_body(axes=(0, 2, 3), *, shape=SHAPE, opset=18, elem=F):
    """The MeanVarianceNormalization function body, node for node (ONNX's *_expanded test models)."""
    b = Builder(opset, elem)
    exponent = b.constant_node("Exponent", 2.0)
    epsilon = b.constant_node("Epsilon", 1e-9)
    if opset >= 18:
        ax = b.constant_node("axes", list(axes), np.int64)
        rm = lambda i, o: b.node("ReduceMean", [i, ax], o)      # noqa: E731
    else:
        rm = lambda i, o: b.node("ReduceMean", [i], o, axes=list(axes))      # noqa: E731
    x_rm = rm("x", "X_RM")
    ex_sq = b.node("Pow", [x_rm, exponent], "EX_squared")
    x_sq = b.node("Pow", ["x", exponent], "X_squared")
    e_xsq = rm(x_sq, "E_Xsquared")
    var = b.node("Sub", [e_xsq, ex_sq], "Variance")
    std = b.node("Sqrt", [var], "STD")
    x_var = b.node("Sub", ["x", x_rm], "X_variance")
    den = b.node("Add", [std, epsilon], "Processed_STD")
    b.node("Div", [x_var, den], "Y")
    return b.model(shape)


def feed(shape=SHAPE, elem=F):
    return {"x": (RNG.standard_normal(shape) * 1.7 + 0.4).astype(NP[elem])}


def check(model, inputs, rtol=1e-5, atol=1e-5):
    got = normrt.InferenceSession(model).run(None, inputs)
    want = ReferenceEvaluator(model).run(None, inputs)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def fused_attrs(model):
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 1, report["refused"]
    (node,) = opt.graph.node
    assert (node.domain, node.op_type, list(node.input)) == ("normrt", "MeanVarianceNorm", ["x"])
    assert report["fused"][0]["normrt_op"] == "MeanVarianceNorm"
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("axes", [(0, 2, 3), (0,), (1,), (1, 3), (2, 3), (3,), (0, 1, 2, 3)])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("how,shared,commute", [("mul", True, False), ("pow", False, True)])
def test_torch_style(axes, opset, how, shared, commute):
    model = torch_style(axes, opset=opset, how=how, shared=shared, commute=commute)
    attrs = fused_attrs(model)
    assert attrs.get("axes", [0, 2, 3]) == sorted(axes) and abs(attrs["epsilon"] - 1e-6) < 1e-12
    check(model, feed())


def test_without_eps():
    model = torch_style((0, 2, 3), eps=None)
    attrs = fused_attrs(model)
    assert attrs["epsilon"] == 0.0
    check(model, feed())


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes", [(0, 2, 3), (1,), (2, 3)])
def test_onnx_function_body(opset, axes):
    model = function_body(axes, opset=opset)
    attrs = fused_attrs(model)
    assert attrs.get("axes", [0, 2, 3]) == sorted(axes)
    # the body's eps 1e-9 as float32, i.e. the op's default epsilon (1e-9) up to float32 rounding
    assert abs(attrs.get("epsilon", 1e-9) - 1e-9) < 1e-15
    # the body's one-pass variance loses a few digits to cancellation that the kernel does not
    check(model, feed(), rtol=1e-4, atol=1e-4)


def test_function_body_like_the_standard_op():
    """Same graph as one MeanVarianceNormalization node: both run the same kernel call."""
    x = feed()
    expanded = normrt.InferenceSession(function_body((0, 2, 3))).run(None, x)[0]
    graph = helper.make_graph([helper.make_node("MeanVarianceNormalization", ["x"], ["y"])], "mvn",
                              [vi("x", list(SHAPE))], [vi("y", list(SHAPE))])
    op = normrt.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    np.testing.assert_allclose(expanded, op.run(None, x)[0], rtol=1e-6, atol=1e-6)


def test_float64_exact_eps():
    model = torch_style((0, 2, 3), elem=D, eps=2.0**-20)
    fused_attrs(model)
    check(model, feed(elem=D), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw,reason,runs,later", [
    (dict(eps_inside=True), "inside the square root", True, 0),
    (dict(var_axes=(0, 2)), "axes", True, 0),
    # a keepdims=0 variance over every axis is a scalar that broadcasts: recognized_norms,
    # which reads statistics through views by dataflow, takes what this template refuses
    (dict(keepdims=0, axes=(0, 1, 2, 3)), "keepdims", True, 1),
    (dict(extra_outputs=[("std", (1, 4, 1, 1))]), "graph output", True, 0),
    (dict(extra_outputs=[("d", SHAPE)]), "graph output", True, 0),
    (dict(elem=D, eps=1e-6), "float32", True, 0),
])
def test_refusals(kw, reason, runs, later):
    elem = kw.get("elem", F)
    model = torch_style(**kw)
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0
    refused = [e for e in report["refused"] if e["pass"] == PASS]
    assert len(refused) == 1 and reason in refused[0]["reason"], refused
    assert [n.op_type for n in opt.graph.node].count("MeanVarianceNorm") == later
    assert report["passes"].get("recognized_norms", 0) == later
    if runs:
        tol = 5e-3 if elem == H else 1e-5
        check(model, feed(elem=elem), tol, tol)


@pytest.mark.parametrize("axes", [(0, 2, 3), (2, 3)])
def test_float16_fused(axes):
    """The torch-style float16 spelling (eps and counts in half) -> one half MeanVarianceNorm."""
    model = torch_style(axes, elem=H)
    fused_attrs(model)
    inputs = feed(elem=H)
    assert_matches_float64(normrt.InferenceSession(model).run(None, inputs), model, inputs, ulps=2)


def test_eps_inside_over_trailing_axes_is_left_to_layer_norm():
    """(x - mean) / sqrt(var + eps) over trailing axes is a LayerNorm: no candidate (and no refusal) here."""
    model = torch_style((3,), eps_inside=True)
    _, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0 and not [e for e in report["refused"] if e["pass"] == PASS]
    check(model, feed())


def test_unbiased_variance_is_refused():
    b = Builder(13, F)
    m = b.reduce_mean("x", [0, 2, 3], "mean")
    d = b.node("Sub", ["x", m], "d")
    var = b.reduce_mean(b.square(d, "sq", "mul"), [0, 2, 3], "var")
    n = 3 * 5 * 6
    var = b.node("Div", [b.node("Mul", [var, b.const("n", float(n))], "var_n"), b.const("nm1", n - 1.0)], "uvar")
    den = b.node("Add", [b.node("Sqrt", [var], "std"), b.const("eps", 1e-6)], "den")
    b.node("Div", [d, den], "y")
    model = b.model(SHAPE)
    _, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0
    assert "neither" in report["refused"][0]["reason"]
    check(model, feed())
