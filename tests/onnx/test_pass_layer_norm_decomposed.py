"""recognized_norms on the LayerNorm chains exporters write: each becomes one normrt::LayerNorm.

Each variant is a small graph built here; the oracle is onnx.reference on the original model.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from half_models import assert_matches_float64
from graph_builder import const, vi

RNG = np.random.default_rng(5)
F = TensorProto.FLOAT
PASS = "recognized_norms"


def reduce_mean(inp, out, axes, opset, name):
    """ReduceMean with axes as attribute (opset < 18) or as a constant input (opset >= 18)."""
    if opset >= 18:
        return [helper.make_node("Constant", [], [out + "_axes"], name=name + "_axes",
                                 value=numpy_helper.from_array(np.array(axes, np.int64))),
                helper.make_node("ReduceMean", [inp, out + "_axes"], [out], name=name)]
    return [helper.make_node("ReduceMean", [inp], [out], name=name, axes=axes)]


def layer_norm_nodes(x="x", out="y", *, axes=(-1,), var_axes=None, opset=13, square="pow", inverse="div",
                     scale="scale", bias="bias", eps="eps", dtype=np.float32):
    """The exporter's chain; returns (nodes, initializers). square: pow | mul; inverse: div | reciprocal |
    div_one | pow; scale/bias: initializer names or None."""
    nodes = reduce_mean(x, "mean", list(axes), opset, "rm_mean")
    nodes.append(helper.make_node("Sub", [x, "mean"], ["d"], name="sub"))
    inits = [const("two", np.array(2.0, dtype)), const("one", np.array(1.0, dtype)),
             const("minus_half", np.array(-0.5, dtype))]
    if square == "pow":
        nodes.append(helper.make_node("Pow", ["d", "two"], ["sq"], name="pow"))
    else:
        nodes.append(helper.make_node("Mul", ["d", "d"], ["sq"], name="square"))
    nodes += reduce_mean("sq", "var", list(var_axes or axes), opset, "rm_var")
    nodes.append(helper.make_node("Add", ["var", eps], ["ve"], name="add_eps"))
    last = "n"
    if inverse == "pow":
        nodes += [helper.make_node("Pow", ["ve", "minus_half"], ["inv"], name="rsqrt"),
                  helper.make_node("Mul", ["d", "inv"], [last], name="mul_inv")]
    else:
        nodes.append(helper.make_node("Sqrt", ["ve"], ["std"], name="sqrt"))
        if inverse == "div":
            nodes.append(helper.make_node("Div", ["d", "std"], [last], name="div"))
        elif inverse == "reciprocal":
            nodes += [helper.make_node("Reciprocal", ["std"], ["inv"], name="recip"),
                      helper.make_node("Mul", ["inv", "d"], [last], name="mul_inv")]
        else:
            nodes += [helper.make_node("Div", ["one", "std"], ["inv"], name="div_one"),
                      helper.make_node("Mul", ["d", "inv"], [last], name="mul_inv")]
    if scale:
        nodes.append(helper.make_node("Mul", [last, scale], ["scaled"], name="mul_scale"))
        last = "scaled"
    if bias:
        nodes.append(helper.make_node("Add", ["bias", last], ["shifted"], name="add_bias"))
        last = "shifted"
    nodes[-1].output[0] = out          # the last op writes the chain's output
    return nodes, inits


def make_model(nodes, inputs, outputs, inits, opset=13):
    graph = helper.make_graph(nodes, "ln", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def ln_model(shape=(2, 5, 8), *, scale_shape=None, bias_shape=None, eps_value=1e-5, eps_shape=(),
             dtype=np.float32, opset=13, **kw):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits = layer_norm_nodes(opset=opset, dtype=dtype, **kw)
    if kw.get("scale", "scale"):
        inits.append(const("scale", RNG.standard_normal(scale_shape or shape[-1:]).astype(dtype)))
    if kw.get("bias", "bias"):
        inits.append(const("bias", RNG.standard_normal(bias_shape or shape[-1:]).astype(dtype)))
    if kw.get("eps", "eps") == "eps":
        inits.append(const("eps", np.full(eps_shape, eps_value, dtype)))
    return make_model(nodes, [vi("x", list(shape), elem)], [vi("y", list(shape), elem)], inits, opset)


def feed_for(model):
    feed = {}
    for i in model.graph.input:
        shape = [d.dim_value or 3 for d in i.type.tensor_type.shape.dim]
        dt = helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        feed[i.name] = (RNG.standard_normal(shape) * 2 + 0.5).astype(dt)
    return feed


def run_and_compare(model, feed=None, atol=1e-5, rtol=1e-5):
    """(session, report): the session's outputs equal onnx.reference's on the original model."""
    feed = feed or feed_for(model)
    sess = normrt.InferenceSession(model)
    want = ReferenceEvaluator(model).run(None, feed)
    got = sess.run(None, feed)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    onnx.checker.check_model(sess.optimized_model)
    return sess, sess.report


def ops(sess):
    return [n.op_type for n in sess.optimized_model.graph.node]


def fused(report):
    return report["passes"].get(PASS, 0)


def refusals(report):
    return [e["reason"] for e in report["refused"] if e["pass"] == PASS]


# ---- variants that fuse ------------------------------------------------------

@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("inverse", ["div", "reciprocal", "div_one", "pow"])
@pytest.mark.parametrize("opset", [13, 18])
def test_every_spelling_becomes_one_node(square, inverse, opset):
    sess, report = run_and_compare(ln_model(square=square, inverse=inverse, opset=opset))
    assert fused(report) == 1
    assert ops(sess) == ["LayerNorm"]
    (entry,) = report["fused"]
    assert entry["op"] == "LayerNorm by statistics (centred)" and entry["normrt_op"] == "LayerNorm"
    assert entry["kernel"] == "layer_norm" and entry["residual"] is False
    assert {"rm_mean", "sub", "rm_var", "add_eps", "mul_scale", "add_bias"} <= set(entry["nodes"])
    assert entry["pattern"].startswith("ReduceMean-Sub-")
    (node,) = sess.optimized_model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["epsilon"] == pytest.approx(1e-5)
    assert list(node.input) == ["x", "scale", "bias"]


@pytest.mark.parametrize("scale,bias,inputs", [("scale", None, 2), (None, "bias", 3), (None, None, 1)])
def test_partial_or_no_affine(scale, bias, inputs):
    sess, report = run_and_compare(ln_model(scale=scale, bias=bias))
    assert fused(report) == 1 and ops(sess) == ["LayerNorm"]
    (node,) = sess.optimized_model.graph.node
    assert len(node.input) == inputs
    assert node.input[0] == "x" and (bias is None or node.input[2] == "bias")


def test_float64_eps_first_and_one_element_eps():
    nodes, inits = layer_norm_nodes(dtype=np.float64)
    add = next(n for n in nodes if n.name == "add_eps")
    add.input[:] = ["eps", "var"]
    inits += [const("scale", RNG.standard_normal(8)), const("bias", RNG.standard_normal(8)),
              const("eps", np.array([1e-3]))]
    model = make_model(nodes, [vi("x", [3, 8], TensorProto.DOUBLE)], [vi("y", [3, 8], TensorProto.DOUBLE)], inits)
    sess, report = run_and_compare(model, atol=1e-12)
    assert fused(report) == 1 and ops(sess) == ["LayerNorm"]
    eps = [a.f for a in sess.optimized_model.graph.node[0].attribute if a.name == "epsilon"]
    assert eps == [pytest.approx(1e-3)]


@pytest.mark.parametrize("opset,axes,scale_shape,axis", [
    (13, (1, 2), (5, 8), -2), (18, (-2, -1), (1, 5, 8), -2), (18, (2,), (1, 1, 8), -1), (13, (0, 1, 2), None, -3)])
def test_trailing_axes_positive_or_negative(opset, axes, scale_shape, axis):
    model = ln_model(axes=axes, opset=opset, scale_shape=scale_shape or (2, 5, 8), bias_shape=(8,))
    sess, report = run_and_compare(model)
    assert fused(report) == 1 and ops(sess) == ["LayerNorm"]
    node = sess.optimized_model.graph.node[0]
    assert [a.i for a in node.attribute if a.name == "axis"] == ([axis] if axis != -1 else [])
    inits = {t.name: numpy_helper.to_array(t) for t in sess.optimized_model.graph.initializer}
    assert inits[node.input[1]].ndim <= -axis       # leading 1s dropped: the kernel's scale shape


def test_identity_casts_around_the_statistics_are_absorbed():
    """Cast to float before the statistics and back after (float32 model: both are no-ops)."""
    nodes, inits = layer_norm_nodes(x="xc", out="yc")
    nodes = [helper.make_node("Cast", ["x"], ["xc"], name="cast_in", to=F)] + nodes
    # a Cast between the normalized value and the scale
    mul = next(n for n in nodes if n.name == "mul_scale")
    mul.input[0] = "n_cast"
    nodes.insert(nodes.index(mul), helper.make_node("Cast", ["n"], ["n_cast"], name="cast_mid", to=F))
    nodes.append(helper.make_node("Cast", ["yc"], ["y"], name="cast_out", to=F))
    inits += [const("scale", RNG.standard_normal(8).astype(np.float32)),
              const("bias", RNG.standard_normal(8).astype(np.float32)), const("eps", np.float32(1e-5))]
    model = make_model(nodes, [vi("x", [4, 8])], [vi("y", [4, 8])], inits)
    sess, report = run_and_compare(model)
    assert fused(report) == 1
    assert "cast_in" in report["fused"][0]["nodes"] and "cast_mid" in report["fused"][0]["nodes"]
    assert ops(sess) == ["LayerNorm"]       # the trailing identity Cast is absorbed too


def test_float16_model_normalized_in_float32():
    """x16 -> Cast(float) -> chain -> Cast(float16): the float32 chain is fused, then the island
    becomes one node reading and writing float16 (cast_islands)."""
    nodes, inits = layer_norm_nodes(x="x32", out="y32", scale=None, bias=None)
    nodes = [helper.make_node("Cast", ["x"], ["x32"], name="to32", to=F)] + nodes
    nodes.append(helper.make_node("Cast", ["y32"], ["y"], name="to16", to=TensorProto.FLOAT16))
    inits.append(const("eps", np.float32(1e-5)))
    model = make_model(nodes, [vi("x", [4, 8], TensorProto.FLOAT16)], [vi("y", [4, 8], TensorProto.FLOAT16)],
                       inits)
    sess, report = run_and_compare(model, atol=2e-3)
    assert fused(report) == 1
    assert ops(sess) == ["LayerNorm"]
    feed = {"x": RNG.standard_normal((4, 8)).astype(np.float16)}
    assert_matches_float64(sess.run(None, feed), model, feed)


def test_scale_varying_along_other_axes_is_left_outside():
    """Mul by a (5, 1) tensor is not a LayerNorm scale over the last axis: the norm fuses without it."""
    sess, report = run_and_compare(ln_model(scale_shape=(5, 1), bias=None))
    assert fused(report) == 1
    assert ops(sess) == ["LayerNorm", "Mul"]
    assert len(sess.optimized_model.graph.node[0].input) == 1


def test_two_norms_sharing_their_input():
    nodes1, inits = layer_norm_nodes(out="y1")
    nodes2, _ = layer_norm_nodes(out="y2", scale=None, bias=None)
    for n in nodes2:     # rename the second chain's values and nodes
        n.name += "_2"
        n.input[:] = [i + "_2" if i not in ("x", "eps", "two", "one", "minus_half") else i for i in n.input]
        n.output[:] = [o + "_2" if o != "y2" else o for o in n.output]
    inits += [const("scale", RNG.standard_normal(8).astype(np.float32)),
              const("bias", RNG.standard_normal(8).astype(np.float32)), const("eps", np.float32(1e-5))]
    model = make_model(nodes1 + nodes2, [vi("x", [4, 8])], [vi("y1", [4, 8]), vi("y2", [4, 8])], inits)
    sess, report = run_and_compare(model)
    assert fused(report) == 2
    assert sorted(ops(sess)) == ["LayerNorm", "LayerNorm"]


# ---- refusals: left alone, still correct ------------------------------------

def assert_not_fused(model, reason_part):
    sess, report = run_and_compare(model)
    assert fused(report) == 0
    assert "LayerNorm" not in ops(sess)
    reasons = refusals(report)
    assert any(reason_part in r for r in reasons), reasons
    return sess, report


def test_channel_axis_statistics_become_channel_norm():
    # LayerNorm2d: statistics over axis 1 of (N, C, L), per-channel (C, 1) affine
    sess, report = run_and_compare(ln_model(axes=(1,), scale_shape=(5, 1), bias_shape=(5, 1)))
    assert fused(report) == 1 and ops(sess) == ["ChannelNorm"]
    assert report["fused"][0]["kernel"] == "layer_norm_2d"


def test_channel_axis_affine_not_per_channel_is_left_outside():
    # (5, 8) scale varies along the positions too: the fused node stops before it
    sess, report = run_and_compare(ln_model(axes=(1,), scale_shape=(5, 8), bias_shape=(5, 1)))
    assert "ChannelNorm" in ops(sess) and "Elementwise" in ops(sess)    # the Mul and Add, one pass


def test_refuses_mean_and_variance_over_different_axes():
    sess, report = assert_not_fused(ln_model(axes=(2,), var_axes=(1, 2), scale=None, bias=None), "mean")
    assert "RMSNorm" not in ops(sess)      # the centered chain is not taken for an RMSNorm either


def test_refuses_eps_as_graph_input():
    nodes, inits = layer_norm_nodes(scale=None, bias=None)
    model = make_model(nodes, [vi("x", [4, 8]), vi("eps", [])], [vi("y", [4, 8])], inits)
    feed = {"x": RNG.standard_normal((4, 8)).astype(np.float32), "eps": np.float32(1e-5)}
    sess, report = run_and_compare(model, feed)
    assert fused(report) == 0 and "LayerNorm" not in ops(sess)
    assert any("epsilon" in r and "constant" in r for r in refusals(report))


@pytest.mark.parametrize("middle", ["mean", "d", "var", "std", "n"])
def test_refuses_a_middle_value_read_elsewhere(middle):
    """A middle value that is also a graph output must stay computed: nothing is fused."""
    model = ln_model()
    model.graph.output.append(vi(middle, [2, 5, 8] if middle in ("d", "n") else [2, 5, 1]))
    sess, report = run_and_compare(model)
    if middle == "n":
        # the normalized value itself: the norm fuses up to it, scale and bias stay outside
        assert fused(report) == 1 and "Elementwise" in ops(sess)     # the Mul and Add, one pass
        return
    assert fused(report) == 0 and "LayerNorm" not in ops(sess)
    assert any(repr(middle) in r for r in refusals(report))


def test_refuses_middle_value_read_by_another_node():
    model = ln_model()
    model.graph.node.append(helper.make_node("Neg", ["var"], ["neg_var"], name="other_reader"))
    model.graph.output.append(vi("neg_var", [2, 5, 1]))
    _, report = assert_not_fused(model, "other_reader")


def test_refuses_unknown_rank():
    """X reshaped to a runtime shape of unknown length: its rank is unknown, so are the trailing axes."""
    nodes, inits = layer_norm_nodes(scale=None, bias=None)
    nodes.insert(0, helper.make_node("Reshape", ["x_in", "new_shape"], ["x"], name="reshape"))
    inits.append(const("eps", np.float32(1e-5)))
    model = make_model(nodes, [vi("x_in", [3, 4]), vi("new_shape", ["k"], TensorProto.INT64)],
                       [vi("y", ["a", "b"])], inits)
    feed = {"x_in": RNG.standard_normal((3, 4)).astype(np.float32), "new_shape": np.array([2, 6], np.int64)}
    assert_not_fused_feed(model, feed, "rank")


def assert_not_fused_feed(model, feed, reason_part):
    sess, report = run_and_compare(model, feed)
    assert fused(report) == 0 and "LayerNorm" not in ops(sess)
    assert any(reason_part in r for r in refusals(report)), refusals(report)


def test_fuses_float16_and_refuses_wrong_exponent():
    model = ln_model(dtype=np.float16, scale=None, bias=None)
    feed = {"x": RNG.standard_normal((2, 5, 8)).astype(np.float16)}
    sess = normrt.InferenceSession(model)
    assert ops(sess) == ["LayerNorm"]
    assert_matches_float64(sess.run(None, feed), model, feed)
    model = ln_model(scale=None, bias=None)
    for t in model.graph.initializer:
        if t.name == "two":
            t.CopyFrom(const("two", np.float32(3.0)))
    assert_not_fused(model, "exponent 'two' is not a constant 2")


def test_reversed_sub_is_not_a_layer_norm():
    """(mean - x) / std is no LayerNorm of x; by dataflow it is the RMSNorm of d = mean - x
    (d / sqrt(mean(d²) + eps)): that is what is fused, the Sub and its mean stay."""
    model = ln_model(scale=None, bias=None)
    sub = next(n for n in model.graph.node if n.name == "sub")
    sub.input[:] = ["mean", "x"]
    sess, report = run_and_compare(model)
    assert "LayerNorm" not in ops(sess) and sorted(ops(sess)) == ["RMSNorm", "ReduceMean", "Sub"]


@pytest.mark.parametrize("scale_shape,absorbed", [([8], True), ([1, 8], False)])
def test_scale_as_graph_input(scale_shape, absorbed):
    """A runtime scale is taken when its shape already fits the kernel; one needing a reshape stays a Mul."""
    nodes, inits = layer_norm_nodes(scale="s_in", bias=None)
    inits.append(const("eps", np.float32(1e-5)))
    model = make_model(nodes, [vi("x", [3, 8]), vi("s_in", scale_shape)], [vi("y", [3, 8])], inits)
    feed = {"x": RNG.standard_normal((3, 8)).astype(np.float32),
            "s_in": RNG.standard_normal(scale_shape).astype(np.float32)}
    sess, report = run_and_compare(model, feed)
    assert fused(report) == 1
    assert ops(sess) == (["LayerNorm"] if absorbed else ["LayerNorm", "Mul"])
    assert list(sess.optimized_model.graph.node[0].input) == (["x", "s_in"] if absorbed else ["x"])
