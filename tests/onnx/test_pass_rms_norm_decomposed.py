"""recognized_norms on the RMSNorm chains exporters write: each becomes one normrt::RMSNorm.

The forms of the dynamo exporter (nn.RMSNorm, opset 18), of LLaMA's and T5's hand-written
RMSNorm (legacy and dynamo), and refusals; the oracle is onnx.reference on the original model.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from half_models import assert_matches_float64
from test_pass_layer_norm_decomposed import const, make_model, ops, reduce_mean, run_and_compare, vi

RNG = np.random.default_rng(7)
F = TensorProto.FLOAT
PASS = "recognized_norms"


def rms_nodes(x="x", out="y", *, axes=(-1,), opset=18, square="pow", inverse="reciprocal", cast=False,
              scale="weight", scale_first=False, eps="eps"):
    """inverse: reciprocal (dynamo) | div_one (legacy LLaMA) | div (T5: Div(x, std)) | pow (Pow(·, -0.5))."""
    nodes = []
    xs = x
    if cast:        # LLaMA: hidden_states.to(float32) before the statistics
        nodes.append(helper.make_node("Cast", [x], ["x_f"], name="cast_in", to=F))
        xs = "x_f"
    if square == "pow":
        nodes.append(helper.make_node("Pow", [xs, "two"], ["sq"], name="pow"))
    else:
        nodes.append(helper.make_node("Mul", [xs, xs], ["sq"], name="square"))
    nodes += reduce_mean("sq", "ms", list(axes), opset, "mean")
    nodes.append(helper.make_node("Add", ["ms", eps], ["mse"], name="add_eps"))
    if inverse == "pow":
        nodes += [helper.make_node("Pow", ["mse", "minus_half"], ["inv"], name="rsqrt"),
                  helper.make_node("Mul", [xs, "inv"], ["n"], name="mul_x")]
    else:
        nodes.append(helper.make_node("Sqrt", ["mse"], ["std"], name="sqrt"))
        if inverse == "div":
            nodes.append(helper.make_node("Div", [xs, "std"], ["n"], name="div_x"))
        elif inverse == "reciprocal":
            nodes += [helper.make_node("Reciprocal", ["std"], ["inv"], name="recip"),
                      helper.make_node("Mul", [xs, "inv"], ["n"], name="mul_x")]
        else:
            nodes += [helper.make_node("Div", ["one", "std"], ["inv"], name="div_one"),
                      helper.make_node("Mul", [xs, "inv"], ["n"], name="mul_x")]
    last = "n"
    if cast:        # .to(input_dtype) after
        nodes.append(helper.make_node("Cast", [last], ["n_c"], name="cast_out", to=F))
        last = "n_c"
    if scale:
        ins = [scale, last] if scale_first else [last, scale]
        nodes.append(helper.make_node("Mul", ins, ["scaled"], name="mul_weight"))
    nodes[-1].output[0] = out
    inits = [const("two", np.float32(2.0)), const("one", np.float32(1.0)), const("minus_half", np.float32(-0.5))]
    return nodes, inits


def rms_model(shape=(2, 6, 16), *, scale_shape=None, eps_value=1e-6, opset=18, **kw):
    nodes, inits = rms_nodes(opset=opset, **kw)
    if kw.get("scale", "weight"):
        inits.append(const("weight", RNG.standard_normal(scale_shape or shape[-1:]).astype(np.float32)))
    if kw.get("eps", "eps") == "eps":
        inits.append(const("eps", np.float32(eps_value)))
    return make_model(nodes, [vi("x", list(shape))], [vi("y", list(shape))], inits, opset)


def fused(report):
    return report["passes"].get(PASS, 0)


def refusals(report):
    return [e["reason"] for e in report["refused"] if e["pass"] == PASS]


@pytest.mark.parametrize("form", [
    dict(inverse="reciprocal"),                                              # dynamo nn.RMSNorm / LLaMA
    dict(inverse="div_one", cast=True, scale_first=True, opset=13),          # legacy LLaMA
    dict(inverse="div_one", cast=True, scale_first=True, opset=17),
    dict(inverse="div", scale_first=True),                                   # T5 (dynamo)
    dict(inverse="div", scale_first=True, opset=13),                         # T5 (legacy)
    dict(inverse="pow", square="mul"),
    dict(inverse="reciprocal", square="mul", cast=True),
])
def test_exporter_forms_become_one_node(form):
    sess, report = run_and_compare(rms_model(**form))
    assert fused(report) == 1
    assert ops(sess) == ["RMSNorm"]
    (entry,) = report["fused"]
    assert entry["op"] == "RMSNorm by statistics (raw)" and entry["normrt_op"] == "RMSNorm"
    assert entry["kernel"] == "rms_norm" and entry["residual"] is False
    assert {"mean", "add_eps", "mul_weight"} <= set(entry["nodes"])
    if form.get("cast"):
        assert {"cast_in", "cast_out"} <= set(entry["nodes"])
    (node,) = sess.optimized_model.graph.node
    assert list(node.input) == ["x", "weight"]
    assert [a.f for a in node.attribute if a.name == "epsilon"] == [pytest.approx(1e-6)]


def test_without_scale_and_over_two_axes():
    sess, report = run_and_compare(rms_model(scale=None, axes=(1, 2), opset=13))
    assert fused(report) == 1 and ops(sess) == ["RMSNorm"]
    node = sess.optimized_model.graph.node[0]
    assert list(node.input) == ["x"] and [a.i for a in node.attribute if a.name == "axis"] == [-2]


def test_scale_with_leading_ones_is_reshaped():
    sess, report = run_and_compare(rms_model(scale_shape=(1, 1, 16)))
    assert fused(report) == 1 and ops(sess) == ["RMSNorm"]
    inits = {t.name: numpy_helper.to_array(t) for t in sess.optimized_model.graph.initializer}
    assert inits[sess.optimized_model.graph.node[0].input[1]].shape == (16,)


def test_float16_model_becomes_one_half_node():
    """x16 -> Cast(float) -> statistics -> Cast(float16) -> Mul(w16) (LLaMA's RMSNorm): the float32
    part is fused, then the Cast island and the half weight after it (cast_islands)."""
    nodes, inits = rms_nodes(x="x32", out="n32", scale=None)
    nodes = [helper.make_node("Cast", ["x"], ["x32"], name="to32", to=F)] + nodes
    nodes += [helper.make_node("Cast", ["n32"], ["n16"], name="to16", to=TensorProto.FLOAT16),
              helper.make_node("Mul", ["w16", "n16"], ["y"], name="mul_w16")]
    inits += [const("eps", np.float32(1e-6)), const("w16", RNG.standard_normal(16).astype(np.float16))]
    model = make_model(nodes, [vi("x", [3, 16], TensorProto.FLOAT16)], [vi("y", [3, 16], TensorProto.FLOAT16)],
                       inits, 18)
    # the fused kernel rounds to float16 once; the reference rounds the norm, then the product
    # with w16: the two may differ by one float16 ulp (2^-10 relative) wherever the data fall
    sess, report = run_and_compare(model, atol=2e-3, rtol=2.0 ** -10)
    assert fused(report) == 1
    assert ops(sess) == ["RMSNorm"] and list(sess.optimized_model.graph.node[0].input)[0] == "x"
    feed = {"x": RNG.standard_normal((3, 16)).astype(np.float16)}
    assert_matches_float64(sess.run(None, feed), model, feed, ulps=2)


def test_input_cast_read_elsewhere_stays():
    """The Cast before the statistics also feeds another node: it stays; the norm reads X itself."""
    model = rms_model(cast=True, opset=13, inverse="div_one")
    model.graph.node.append(helper.make_node("Neg", ["x_f"], ["other"], name="other_reader"))
    model.graph.output.append(vi("other", [2, 6, 16]))
    sess, report = run_and_compare(model)
    assert fused(report) == 1
    # the norm reads X itself; the identity Cast (float32 -> float32) then goes in no_op_views
    assert sorted(ops(sess)) == ["Neg", "RMSNorm"]
    assert "cast_in" not in report["fused"][0]["nodes"]


# ---- refusals ---------------------------------------------------------------

def assert_not_fused(model, reason_part, feed=None):
    sess, report = run_and_compare(model, feed)
    assert fused(report) == 0 and "RMSNorm" not in ops(sess)
    assert any(reason_part in r for r in refusals(report)), refusals(report)
    return sess, report


def test_channel_axis_statistics_become_channel_norm_rms():
    # PixelNorm: RMS statistics over the channel axis at each position
    sess, report = run_and_compare(rms_model(axes=(1,), scale=None))
    assert fused(report) == 1 and ops(sess) == ["ChannelNorm"]
    node = sess.optimized_model.graph.node[0]
    assert {a.name: a for a in node.attribute}["mode"].s == b"rms"
    assert report["fused"][0]["kernel"] == "rms_norm_2d"


def test_channel_axis_rms_with_a_scale_along_the_last_axis_is_left_outside():
    sess, report = run_and_compare(rms_model(axes=(1,)))     # weight (16,): varies along the last axis
    assert fused(report) == 1 and ops(sess) == ["ChannelNorm", "Mul"]


def test_refuses_eps_as_graph_input():
    nodes, inits = rms_nodes()
    inits.append(const("weight", RNG.standard_normal(16).astype(np.float32)))
    model = make_model(nodes, [vi("x", [2, 16]), vi("eps", [1])], [vi("y", [2, 16])], inits, 18)
    feed = {"x": RNG.standard_normal((2, 16)).astype(np.float32), "eps": np.array([1e-6], np.float32)}
    assert_not_fused(model, "epsilon", feed)


@pytest.mark.parametrize("middle,shape", [("ms", [2, 6, 1]), ("inv", [2, 6, 1]), ("std", [2, 6, 1])])
def test_refuses_middle_value_used_elsewhere(middle, shape):
    model = rms_model()
    model.graph.output.append(vi(middle, shape))
    assert_not_fused(model, repr(middle))


def test_other_numerator_of_the_inverse_becomes_the_scale():
    """x * (2 / std) is an RMSNorm scaled by 2: fused, the 2 in the kernel's scale."""
    model = rms_model(inverse="div_one", opset=13, scale=None)
    for t in model.graph.initializer:
        if t.name == "one":
            t.CopyFrom(const("one", np.float32(2.0)))
    sess, report = run_and_compare(model)
    assert ops(sess) == ["RMSNorm"]
    scale = {t.name: numpy_helper.to_array(t) for t in sess.optimized_model.graph.initializer}[
        sess.optimized_model.graph.node[0].input[1]]
    assert np.all(scale == 2.0)


def test_different_squared_value_is_no_rms_norm():
    """x / sqrt(mean(z**2) + eps) with z != x: not matched."""
    model = rms_model()
    pow_node = next(n for n in model.graph.node if n.name == "pow")
    pow_node.input[0] = "z"
    model.graph.input.append(vi("z", [2, 6, 16]))
    feed = {"x": RNG.standard_normal((2, 6, 16)).astype(np.float32),
            "z": RNG.standard_normal((2, 6, 16)).astype(np.float32)}
    sess, report = run_and_compare(model, feed)
    assert fused(report) == 0 and "RMSNorm" not in ops(sess)
