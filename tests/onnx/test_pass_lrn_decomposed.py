"""lrn_decomposed: torch's LocalResponseNorm decomposition becomes normrt::LRN.

The graphs are built here in both exporters' forms (dynamo: Squeeze back; legacy: an If
choosing Squeeze or Identity, then a Reshape). Oracles: a numpy transcription of
torch.nn.functional.local_response_norm, and onnx.reference on the original model
(its AveragePool/Pad are right; only its LRN op loops over the wrong axis, which is not used here).
"""
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from half_models import assert_matches_float64
from graph_builder import const, vi

RNG = np.random.default_rng(43)
F, D, H = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16
PASS = "lrn_decomposed"


def torch_lrn(x, size, alpha, beta, k):
    """torch.nn.functional.local_response_norm in float64 (zero padding, count_include_pad)."""
    x64 = np.asarray(x, np.float64)
    C = x64.shape[1]
    sq = x64 ** 2
    pad = [(0, 0)] * x64.ndim
    pad[1] = (size // 2, (size - 1) // 2)
    sqp = np.pad(sq, pad)
    s = sum(sqp[:, i:i + C] for i in range(size))
    return x64 / (k + alpha * s / size) ** beta


def lrn_model(shape=(2, 8, 6, 6), *, size=5, alpha=1e-2, beta=0.75, k=1.0, form="dynamo", opset=18,
              elem=F, square="mul", pads=None, pool_kw=None, alpha_input=False, extra_outputs=(),
              pad_mode="constant"):
    dtype = {F: np.float32, D: np.float64, H: np.float16}[elem]
    rank = len(shape)
    N, C = shape[:2]
    inits = [const("beta", np.array(beta, dtype)), const("k", np.array(k, dtype))]
    if not alpha_input:
        inits.append(const("alpha", np.array(alpha, dtype)))
    nodes = []
    if square == "mul":
        nodes.append(helper.make_node("Mul", ["x", "x"], ["sq"], name="square"))
    else:
        inits.append(const("two", np.array(2.0, dtype)))
        nodes.append(helper.make_node("Pow", ["x", "two"], ["sq"], name="square"))
    if rank == 3:
        inits.append(const("one_axis", np.array([1], np.int64)))
        nodes.append(helper.make_node("Unsqueeze", ["sq", "one_axis"], ["view"], name="view"))
        vr = 4
    else:
        inits.append(const("view_shape", np.array([N, 1, C, shape[2], -1], np.int64)))
        nodes.append(helper.make_node("Reshape", ["sq", "view_shape"], ["view"], name="view"))
        vr = 5
    if pads is None:
        pads = [0] * (2 * vr)
        pads[2], pads[vr + 2] = size // 2, (size - 1) // 2
    inits.append(const("pads", np.array(pads, np.int64)))
    nodes.append(helper.make_node("Pad", ["view", "pads"], ["padded"], name="pad", mode=pad_mode))
    kw = dict(kernel_shape=[size] + [1] * (vr - 3), strides=[1] * (vr - 2), pads=[0] * (2 * (vr - 2)),
              count_include_pad=1, ceil_mode=0)
    kw.update(pool_kw or {})
    nodes.append(helper.make_node("AveragePool", ["padded"], ["pooled"], name="pool", **kw))
    inits.append(const("squeeze_axes", np.array([1], np.int64)))
    if form == "dynamo":
        nodes.append(helper.make_node("Squeeze", ["pooled", "squeeze_axes"], ["summed"], name="squeeze"))
    else:
        then = helper.make_graph(
            [helper.make_node("Constant", [], ["ax"], value=const("ax", np.array([1], np.int64))),
             helper.make_node("Squeeze", ["pooled", "ax"], ["t_out"])], "then", [], [vi("t_out", None, elem)])
        other = helper.make_graph([helper.make_node("Identity", ["pooled"], ["e_out"])], "else", [],
                                  [vi("e_out", None, elem)])
        inits += [const("one_idx", np.array([1], np.int64)), const("one_val", np.array([1], np.int64)),
                  const("x_shape", np.array(shape, np.int64))]
        nodes += [helper.make_node("Shape", ["pooled"], ["pshape"], name="pshape"),
                  helper.make_node("Gather", ["pshape", "one_idx"], ["dim1"], name="gather", axis=0),
                  helper.make_node("Equal", ["dim1", "one_val"], ["is_one"], name="equal"),
                  helper.make_node("If", ["is_one"], ["branch"], name="if", then_branch=then, else_branch=other),
                  helper.make_node("Reshape", ["branch", "x_shape"], ["summed"], name="back")]
    nodes += [helper.make_node("Mul", ["summed", "alpha"], ["scaled"], name="mul_alpha"),
              helper.make_node("Add", ["k", "scaled"], ["biased"], name="add_k"),
              helper.make_node("Pow", ["biased", "beta"], ["den"], name="pow_beta"),
              helper.make_node("Div", ["x", "den"], ["y"], name="div")]
    inputs = [vi("x", list(shape), elem)] + ([vi("alpha", [], elem)] if alpha_input else [])
    outputs = [vi("y", list(shape), elem)] + [vi(o, list(shape), elem) for o in extra_outputs]
    graph = helper.make_graph(nodes, "lrn", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feed_for(model, shape, dtype=np.float32, alpha=1e-2):
    feed = {"x": (RNG.standard_normal(shape) * 2).astype(dtype)}
    if any(i.name == "alpha" for i in model.graph.input):
        feed["alpha"] = np.array(alpha, dtype)
    return feed


def check_reference(model, feed, got, rtol=1e-5, atol=1e-6):
    want = ReferenceEvaluator(model).run(None, feed)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


@pytest.mark.parametrize("form", ["dynamo", "legacy"])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("shape,size", [((2, 8, 6, 6), 5), ((1, 3, 4, 5), 3), ((2, 6, 3, 4), 1),
                                        ((2, 4, 3, 3), 7), ((2, 7, 9), 3)])
def test_variants_fuse(form, opset, shape, size):
    model = lrn_model(shape, size=size, form=form, opset=opset, alpha=2e-2, beta=0.6, k=1.5)
    feed = feed_for(model, shape)
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 1, report["refused"]
    (node,) = opt.graph.node
    assert (node.domain, node.op_type) == ("normrt", "LRN")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["size"] == size
    np.testing.assert_allclose([attrs["alpha"], attrs.get("beta", 0.75), attrs.get("bias", 1.0)],
                               [2e-2, 0.6, 1.5], rtol=1e-6)
    assert report["fused"][0]["normrt_op"] == "LRN" and "pool" in report["fused"][0]["nodes"]
    (got,) = normrt.InferenceSession(model).run(None, feed)
    np.testing.assert_allclose(got, torch_lrn(feed["x"], size, 2e-2, 0.6, 1.5), rtol=1e-5, atol=1e-6)
    check_reference(model, feed, [got])


def test_pow_square_and_float64():
    """float64 with constants a float attribute holds exactly (alpha = 2**-7)."""
    model = lrn_model((2, 5, 3, 3), square="pow", elem=D, alpha=2.0**-7)
    feed = feed_for(model, (2, 5, 3, 3), np.float64)
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 1
    (got,) = normrt.InferenceSession(model).run(None, feed)
    np.testing.assert_allclose(got, torch_lrn(feed["x"], 5, 2.0**-7, 0.75, 1.0), rtol=1e-13)


def test_onnx_window_for_even_size_is_accepted():
    """Pads (size-1)//2 before and size//2 after: ONNX LRN's own window, for any size."""
    pads = [0] * 10
    pads[2], pads[7] = 1, 2
    model = lrn_model((2, 6, 3, 3), size=4, pads=pads)
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 1
    feed = feed_for(model, (2, 6, 3, 3))
    check_reference(model, feed, normrt.InferenceSession(model).run(None, feed))


@pytest.mark.parametrize("kw,reason,runs", [
    (dict(size=4), "even", True),
    # the next three are not even valid models once run (shapes stop matching): refused at load
    (dict(pads=[0, 0, 2, 1, 0, 0, 0, 2, 1, 0]), "other than the channel axis", False),
    (dict(pads=[0, 0, 1, 0, 0, 0, 0, 1, 0, 0]), "channel pads", False),
    (dict(pool_kw={"strides": [2, 1, 1]}), "strides", False),
    (dict(pool_kw={"pads": [2, 0, 0, 2, 0, 0]}, pads=[0] * 10), "own padding", True),
    (dict(pad_mode="reflect"), "mode", True),
    (dict(alpha_input=True), "alpha", True),
    (dict(extra_outputs=("sq",)), "graph output", True),
    (dict(extra_outputs=("summed",), form="legacy"), "graph output", True),
    # float64 constants the float attributes of normrt::LRN cannot hold exactly
    (dict(elem=D, alpha=1e-2), "float32", True),
])
def test_refusals(kw, reason, runs):
    model = lrn_model((2, 8, 6, 6), **kw)
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0
    refused = [e for e in report["refused"] if e["pass"] == PASS]
    assert len(refused) == 1 and reason in refused[0]["reason"], refused
    assert "LRN" not in [n.op_type for n in opt.graph.node]
    if not runs:
        return
    dtype = {H: np.float16, D: np.float64}.get(kw.get("elem"), np.float32)
    feed = feed_for(model, (2, 8, 6, 6), dtype)
    got = normrt.InferenceSession(model).run(None, feed)
    check_reference(model, feed, got, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("form", ["dynamo", "legacy"])
def test_float16_fused(form):
    """The float16 spelling (alpha, beta, k in half) -> one half LRN, within float16 rounding of float64."""
    model = lrn_model((2, 8, 6, 6), form=form, elem=H)
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 1, report["refused"]
    assert "LRN" in [n.op_type for n in opt.graph.node]
    feed = feed_for(model, (2, 8, 6, 6), np.float16)
    assert_matches_float64(normrt.InferenceSession(model).run(None, feed), model, feed, ulps=2)


def test_if_branch_doing_arithmetic_is_refused():
    model = lrn_model((2, 8, 6, 6), form="legacy")
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    else_branch = next(a for a in if_node.attribute if a.name == "else_branch").g
    else_branch.node[0].CopyFrom(helper.make_node("Neg", ["pooled"], ["e_out"]))
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0
    assert "Neg" in report["refused"][0]["reason"]


def test_if_condition_from_elsewhere_is_refused():
    """An If whose condition depends on a graph input: refused (the rewrite only knows the exporter's condition)."""
    model = lrn_model((2, 8, 6, 6), form="legacy")
    model.graph.input.append(vi("flag", [1], TensorProto.INT64))
    equal = next(n for n in model.graph.node if n.op_type == "Equal")
    equal.input[1] = "flag"
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0
    assert "If condition" in report["refused"][0]["reason"]
    feed = feed_for(model, (2, 8, 6, 6))
    feed["flag"] = np.array([1], np.int64)
    check_reference(model, feed, normrt.InferenceSession(model).run(None, feed))
