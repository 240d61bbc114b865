"""pad_into_conv: a zero Pad of the spatial axes before a Conv -> the Conv's pads; a reflect or
edge Pad -> normrt::Conv with those pads mirrored. Oracle: onnx.reference on the original model."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import helper
from onnx.reference import ReferenceEvaluator

import normrt
from test_pass_layer_norm_decomposed import const, make_model, vi

PASS = "pad_into_conv"
RNG = np.random.default_rng(11)


def pad_conv_model(pads=(0, 0, 1, 1, 0, 0, 1, 1), *, conv_pads=None, auto_pad=None, mode="constant", value=0.0, group=1, strides=(1, 1),
                   k=3, c=4, hw=(9, 8), extra_output=False, opset=17, n_convs=1):
    n_out = 4 * group if group > 1 else 6
    nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["p"], name="pad", mode=mode)]
    inits = [const("pads", np.array(pads, np.int64)), const("value", np.array(value, np.float32))]
    conv_attrs = dict(kernel_shape=[k, k], strides=list(strides), group=group)
    if conv_pads is not None:
        conv_attrs["pads"] = list(conv_pads)
    if auto_pad is not None:
        conv_attrs["auto_pad"] = auto_pad
    outputs = []
    for i in range(n_convs):
        c_in = c + pads[1] + pads[5]      # a channel pad (refused) widens the Conv's input
        inits.append(const(f"W{i}", RNG.standard_normal((n_out, c_in // group, k, k)).astype(np.float32)))
        nodes.append(helper.make_node("Conv", ["p", f"W{i}"], [f"y{i}"], name=f"conv{i}", **conv_attrs))
        outputs.append(vi(f"y{i}", ["n", "m", "h", "w"]))
    if extra_output:
        outputs.append(vi("p", ["n", "c", "h", "w"]))
    return make_model(nodes, [vi("x", [2, c, *hw])], outputs, inits, opset=opset)


def run(model):
    feed = {"x": RNG.standard_normal((2, 4, 9, 8)).astype(np.float32)}
    want = ReferenceEvaluator(model).run(None, feed)
    sess = normrt.InferenceSession(model.SerializeToString())
    for g, w in zip(sess.run(None, feed), want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    return sess


def op_types(sess):
    return [n.op_type for n in sess.optimized_model.graph.node]


@settings(max_examples=20, deadline=None)
@given(pads=st.lists(st.integers(0, 2), min_size=4, max_size=4),
       conv_pads=st.one_of(st.none(), st.lists(st.integers(0, 1), min_size=4, max_size=4)),
       group=st.sampled_from([1, 2, 4]), strides=st.sampled_from([(1, 1), (2, 2), (2, 1)]),
       auto_valid=st.booleans(), n_convs=st.integers(1, 2))
def test_generated_pads_fold_into_the_conv(pads, conv_pads, group, strides, auto_valid, n_convs):
    h0, w0, h1, w1 = pads
    model = pad_conv_model([0, 0, h0, w0, 0, 0, h1, w1], conv_pads=None if auto_valid else conv_pads,
                           auto_pad="VALID" if auto_valid else None, group=group, strides=strides,
                           n_convs=n_convs)
    sess = run(model)
    assert "Pad" not in op_types(sess)
    assert sess.report["passes"][PASS] == 1     # (a Pad by 0 folds into the Conv as 0 pads)


@pytest.mark.parametrize("kwargs", [
    dict(mode="reflect", conv_pads=[1, 0, 0, 1]),   # the Conv's own zero pads outside the reflection
    dict(mode="edge", pads=[0, 1, 1, 1, 0, 0, 1, 1]),  # a channel pad
    dict(value=1.5),
    dict(pads=[0, 1, 1, 1, 0, 0, 1, 1]),          # a channel pad
    dict(auto_pad="SAME_UPPER"),
    dict(extra_output=True),                      # the padded tensor is also an output
])
def test_refused_forms_keep_the_pad(kwargs):
    kwargs.setdefault("pads", [0, 0, 1, 0, 0, 0, 1, 2])
    pads = kwargs.pop("pads")
    sess = run(pad_conv_model(pads, **kwargs))
    assert "Pad" in op_types(sess)
    assert sess.report["passes"][PASS] == 0


def test_refusal_reasons():
    from normrt.onnx.passes import PassContext
    from normrt.onnx.passes.pad_into_conv import PadIntoConv
    p = PadIntoConv()
    for kwargs, reason in ((dict(mode="wrap", opset=19), "mode 'wrap'"), (dict(value=2.0), "pad value"),
                           (dict(mode="reflect", pads=[0, 0, 9, 1, 0, 0, 1, 1]), "not smaller than the spatial"),
                           (dict(mode="reflect", conv_pads=[0, 0, 1, 0]), "of its own"),
                           (dict(auto_pad="SAME_LOWER"), "auto_pad"),
                           (dict(pads=[0, 0, -1, 0, 0, 0, 1, 1]), "negative pads"),   # (onnx.reference can't run it)
                           (dict(pads=[0, 1, 1, 1, 0, 0, 1, 1]), "channel axis")):
        kwargs.setdefault("pads", [0, 0, 1, 1, 0, 0, 1, 1])
        ctx = PassContext(pad_conv_model(**kwargs))
        (m,) = list(p.matches(ctx))
        assert reason in p.check(ctx, m)


@settings(max_examples=25, deadline=None)
@given(pads=st.lists(st.integers(0, 3), min_size=4, max_size=4), mode=st.sampled_from(["reflect", "edge"]),
       group=st.sampled_from([1, 2, 4]), strides=st.sampled_from([(1, 1), (2, 2), (1, 2)]),
       k=st.sampled_from([1, 3, 5]), valid=st.booleans(), n_convs=st.integers(1, 2), opset=st.sampled_from([13, 18]))
def test_generated_mirrored_pads_become_the_conv_pad_mode(pads, mode, group, strides, k, valid, n_convs, opset):
    """A reflect / edge Pad (torch's ReflectionPad2d, ReplicationPad2d) goes into normrt::Conv's
    pad_mode: no Pad left, the output as onnx.reference computes the two nodes."""
    h0, w0, h1, w1 = pads
    model = pad_conv_model([0, 0, h0, w0, 0, 0, h1, w1], mode=mode, group=group, strides=strides, k=k,
                           auto_pad="VALID" if valid else None, n_convs=n_convs, opset=opset)
    sess = run(model)
    assert "Pad" not in op_types(sess)
    assert sess.report["passes"][PASS] == 1
    convs = [n for n in sess.optimized_model.graph.node if n.op_type == "Conv"]
    assert len(convs) == n_convs and all(n.domain == "normrt" for n in convs)
    for n in convs:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["pad_mode"] == mode.encode() and list(attrs.get("pads", [0] * 4)) == [h0, w0, h1, w1]


def test_mirrored_pad_conv_takes_its_activation():
    """ReflectionPad -> Conv -> Relu (a style-transfer block): the activation epilogue fuses into the
    padded normrt::Conv, which keeps its pad_mode."""
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="reflect"),
             helper.make_node("Conv", ["p", "W", "B"], ["y"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    inits = [const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
             const("W", RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)),
             const("B", RNG.standard_normal(6).astype(np.float32))]
    sess = run(make_model(nodes, [vi("x", [2, 4, 9, 8])], [vi("z", ["n", "m", "h", "w"])], inits, opset=17))
    (node,) = sess.optimized_model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert (node.domain, attrs["pad_mode"], attrs["activation"]) == ("normrt", b"reflect", b"relu")


def test_bad_pad_mode_attribute_is_a_model_error():
    from normrt.onnx.domain import make_node
    node = make_node("Conv", ["x", "W"], ["y"], "conv", pads=[1, 1, 1, 1], pad_mode="wrap")
    model = make_model([node], [vi("x", [1, 4, 9, 8])], [vi("y", [1, 6, 9, 8])],
                       [const("W", RNG.standard_normal((6, 4, 3, 3)).astype(np.float32))], opset=17)
    model.opset_import.append(helper.make_opsetid("normrt", 1))
    sess = normrt.InferenceSession(model.SerializeToString())
    with pytest.raises(normrt.ModelError, match="pad_mode"):
        sess.run(None, {"x": RNG.standard_normal((1, 4, 9, 8)).astype(np.float32)})


@settings(max_examples=25, deadline=None)
@given(pads=st.lists(st.integers(0, 4), min_size=2, max_size=2), mode=st.sampled_from(["reflect", "edge"]),
       k=st.sampled_from([1, 3, 7]), dilation=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       group=st.sampled_from([1, 2]), length=st.integers(5, 40), relu=st.booleans())
def test_generated_1d_mirrored_pads(pads, mode, k, dilation, stride, group, length, relu):
    """ReflectionPad1d / ReplicationPad1d -> Conv1d (MelGAN's and HiFi-GAN's residual stacks, dilated):
    normrt::Conv on the one-row 2-D kernel, against onnx.reference."""
    if (k - 1) * dilation + 1 > length + sum(pads):
        return
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode=mode),
             helper.make_node("Conv", ["p", "W", "B"], ["y"], name="conv", kernel_shape=[k], strides=[stride],
                              dilations=[dilation], group=group)]
    if relu:
        nodes.append(helper.make_node("Relu", ["y"], ["z"], name="relu"))
    inits = [const("pads", np.array([0, 0, pads[0], 0, 0, pads[1]], np.int64)),
             const("W", RNG.standard_normal((6, 8 // group, k)).astype(np.float32)),
             const("B", RNG.standard_normal(6).astype(np.float32))]
    model = make_model(nodes, [vi("x", [2, 8, length])], [vi("z" if relu else "y", ["n", "m", "l"])], inits,
                       opset=17)
    feed = {"x": RNG.standard_normal((2, 8, length)).astype(np.float32)}
    want = ReferenceEvaluator(model).run(None, feed)[0]
    sess = normrt.InferenceSession(model.SerializeToString())
    np.testing.assert_allclose(sess.run(None, feed)[0], want, rtol=1e-4, atol=1e-4)
    (node,) = sess.optimized_model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == "normrt" and attrs["pad_mode"] == mode.encode()
    assert list(attrs["pads"]) == pads and list(attrs["strides"]) == [stride]


@pytest.mark.parametrize("end", ["whole", "cut"])
def test_encodec_pad_then_whole_slice(end):
    """EnCodec's SEANet `pad1d`: reflect Pad, then `padded[..., :padded.shape[-1] - extra]` with
    extra = 0 once shapes are static, a Slice of the whole axis, then the Conv1d. The Slice goes
    first (an early no_op_views run for Slices), so the Pad fuses; a Slice that cuts keeps both."""
    length, pads = 20, [3, 2]
    cut = length + sum(pads) - (0 if end == "whole" else 1)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="reflect"),
             helper.make_node("Slice", ["p", "starts", "ends", "axes"], ["s"], name="slice"),
             helper.make_node("Conv", ["s", "W", "B"], ["y"], name="conv", kernel_shape=[7])]
    inits = [const("pads", np.array([0, 0, pads[0], 0, 0, pads[1]], np.int64)),
             const("starts", np.array([0], np.int64)), const("ends", np.array([cut], np.int64)),
             const("axes", np.array([-1], np.int64)),
             const("W", RNG.standard_normal((6, 8, 7)).astype(np.float32)),
             const("B", RNG.standard_normal(6).astype(np.float32))]
    model = make_model(nodes, [vi("x", [1, 8, length])], [vi("y", None)], inits, opset=17)
    feed = {"x": RNG.standard_normal((1, 8, length)).astype(np.float32)}
    want = ReferenceEvaluator(model).run(None, feed)[0]
    sess = normrt.InferenceSession(model.SerializeToString())
    np.testing.assert_allclose(sess.run(None, feed)[0], want, rtol=1e-4, atol=1e-4)
    if end == "whole":
        assert op_types(sess) == ["Conv"] and sess.optimized_model.graph.node[0].domain == "normrt"
    else:
        assert op_types(sess) == ["Pad", "Slice", "Conv"]


def _half_pad_conv(elem, mode, pads, np_dtype, w):
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode=mode),
             helper.make_node("Conv", ["p", "W"], ["y"], name="conv", kernel_shape=[3, 3])]
    inits = [const("pads", np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64)),
             helper.make_tensor("W", elem, w.shape, w.astype(np_dtype).astype(np.float32).reshape(-1).tolist())]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", elem, [2, 4, 9, 8])],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("mode", ["reflect", "edge"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_model_mirrored_pad_fuses_through_the_widening_cast(mode, dtype):
    """A float16 / bfloat16 model's Pad -> Conv fuses too (normrt::Conv computes half values in
    float32, as the standard Conv does). Oracle: the float32 model of the same (half-rounded)
    values on onnx.reference, within the output's rounding."""
    import ml_dtypes
    from onnx import TensorProto
    np_dtype = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    elem = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}[dtype]
    w = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
    model = _half_pad_conv(elem, mode, (1, 2, 2, 1), np_dtype, w)
    x = RNG.standard_normal((2, 4, 9, 8)).astype(np_dtype)
    sess = normrt.InferenceSession(model.SerializeToString())
    got = sess.run(None, {"x": x})[0]
    assert got.dtype == np_dtype
    ops = [(n.op_type, n.domain) for n in sess.optimized_model.graph.node]
    assert ("Pad", "") not in ops and ("Conv", "normrt") in ops
    f32 = _half_pad_conv(TensorProto.FLOAT, mode, (1, 2, 2, 1), np_dtype, w)
    want = ReferenceEvaluator(f32).run(None, {"x": x.astype(np.float32)})[0]
    eps = float(np.finfo(np_dtype).eps)
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=eps, atol=eps * np.abs(want).max())


def test_cast_to_float64_after_a_pad_is_refused():
    """Only half -> float32 is the widening half_regions writes; a float32 Pad cast to float64 stays."""
    from normrt.onnx.passes import PassContext
    from normrt.onnx.passes.pad_into_conv import PadIntoConv
    from onnx import TensorProto
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="reflect"),
             helper.make_node("Cast", ["p"], ["c"], name="cast", to=TensorProto.DOUBLE),
             helper.make_node("Conv", ["c", "W"], ["y"], name="conv", kernel_shape=[3, 3])]
    inits = [const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
             const("W", RNG.standard_normal((6, 4, 3, 3)).astype(np.float64))]
    ctx = PassContext(make_model(nodes, [vi("x", [2, 4, 9, 8])], [vi("y", ["n", "m", "h", "w"])], inits, opset=17))
    p = PadIntoConv()
    (m,) = list(p.matches(ctx))
    assert "only half" in p.check(ctx, m)


@pytest.mark.parametrize("mode", ["reflect", "edge", "constant"])
def test_pad_then_widening_cast_then_conv(mode):
    """x (float16) -> Pad -> Cast(float32) -> Conv, as half_regions leaves an autocast island's
    first conv: the Cast moves before the Pad, which fuses (a constant Pad into the Conv's pads)."""
    from onnx import TensorProto
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode=mode),
             helper.make_node("Cast", ["p"], ["c"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Conv", ["c", "W"], ["y"], name="conv", kernel_shape=[3, 3])]
    inits = [const("pads", np.array([0, 0, 2, 1, 0, 0, 1, 2], np.int64)),
             const("W", RNG.standard_normal((6, 4, 3, 3)).astype(np.float32))]
    graph = helper.make_graph(nodes, "cast", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4, 9, 8])],
                              [vi("y", ["n", "m", "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.standard_normal((2, 4, 9, 8)).astype(np.float16)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    sess = normrt.InferenceSession(model.SerializeToString())
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    ops = [n.op_type for n in sess.optimized_model.graph.node]
    assert ops == ["Cast", "Conv"] and sess.report["passes"][PASS] == 1


def _fixture_entries(name):
    import json
    from pathlib import Path
    data = Path(__file__).parent.parent / "data"
    return data, [e for e in json.loads((data / "fixtures.json").read_text())["fixtures"] if e["name"] == name]


DATA, REFLECT_FIXTURES = _fixture_entries("reflect_pad_conv")


@pytest.mark.parametrize("entry", REFLECT_FIXTURES, ids=[e["file"][:-5] for e in REFLECT_FIXTURES])
def test_exported_reflection_and_replication_pads_fuse(entry):
    """The exporters' forms of ReflectionPad2d -> Conv2d and ReplicationPad2d -> Conv2d/2 -> LeakyReLU
    (tests/data/reflect_pad_conv__*, scripts/make_fixtures.py; TorchScript 13/17, dynamo 18/23): no
    Pad or LeakyRelu node is left, the two convs carry pad_mode reflect / edge (the second with the
    LeakyReLU as its epilogue), and the model computes the stored torch output."""
    import onnx
    model = onnx.load(str(DATA / entry["file"]))
    data = np.load(DATA / entry["data"])
    sess = normrt.InferenceSession(model)
    got = sess.run(None, {"x": data["input:x"]})[0]
    want = data[f"output:{entry['outputs'][0]['name']}"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, float(np.abs(want).max())))
    nodes = sess.optimized_model.graph.node
    assert not [n.op_type for n in nodes if n.op_type in ("Pad", "LeakyRelu")]
    convs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in nodes
             if (n.op_type, n.domain) == ("Conv", "normrt")]
    assert sorted(c.get("pad_mode") for c in convs) == [b"edge", b"reflect"]
    (edge,) = [c for c in convs if c["pad_mode"] == b"edge"]
    assert edge["activation"] == b"leaky_relu" and edge["alpha"] == pytest.approx(0.2)
    assert list(edge["pads"]) == [0, 1, 1, 2]
