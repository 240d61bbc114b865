"""conv_epilogue: float32 1-D or 2-D Conv [-> Add/Sum residual] [-> Relu/Sigmoid/SiLU/GELU] becomes one normrt::Conv
(bias, residual and activation applied by normrt.conv2d as it writes the output); anything it does not
understand stays standard ONNX ops.

Oracle: onnx.reference on the original model.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import normrt
from normrt.onnx.loader import load_model
from normrt.onnx.passes import PassContext
from normrt.onnx.passes.conv_epilogue import ConvEpilogue, same_pads
from normrt.onnx.report import format_report
from graph_builder import optimize_and_compare

RNG = np.random.default_rng(31)
PASS = "conv_epilogue"
mk = helper.make_node


def arr(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def vi(name, shape, elem=TensorProto.FLOAT):
    """shape None: symbolic dims no other value has (a shape the pass cannot compare)."""
    if shape is None:
        shape = [f"{name}_{i}" for i in range(4)]
    return helper.make_tensor_value_info(name, elem, list(shape))


def build(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "conv_epilogue", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def conv_model(tail, x_shape=(2, 3, 9, 8), cout=6, cin_per_group=3, k=3, conv_attrs=None, bias=True,
               y_shape=None, extra_inputs=(), extra_outputs=(), extra_inits=None, opset=17, elem=TensorProto.FLOAT):
    """Conv('x' -> 'c') followed by `tail` (nodes from 'c' to 'y')."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    inits = {"w": arr(cout, cin_per_group, k, k).astype(dtype)}
    ins = ["x", "w"]
    if bias:
        inits["b"] = arr(cout).astype(dtype)
        ins.append("b")
    inits.update(extra_inits or {})
    nodes = [mk("Conv", ins, ["c"], name="conv", **(conv_attrs or {}))] + tail
    inputs = [vi("x", x_shape, elem)] + [vi(n, s, elem) for n, s in extra_inputs]
    outputs = [vi("y", y_shape, elem)] + [vi(n, s, elem) for n, s in extra_outputs]
    return build(nodes, inputs, outputs, inits, opset)


def run_and_compare(model, feed, rtol=1e-4, atol=1e-4):
    return optimize_and_compare(model, feed, rtol, atol)


def normrt_conv(opt):
    (node,) = [n for n in opt.graph.node if n.domain == "normrt" and n.op_type == "Conv"]
    return node, {a.name: helper.get_attribute_value(a) for a in node.attribute}


SQRT2 = math.sqrt(2.0)
HALF_CONSTS = {"sqrt2": np.float32(SQRT2), "one": np.float32(1.0), "half": np.float32(0.5)}
TAILS = {
    # name: (nodes from 'c' to 'y', activation, residual?, extra graph inputs, constants)
    "relu": ([mk("Relu", ["c"], ["y"], name="act")], "relu", False, (), {}),
    "sigmoid": ([mk("Sigmoid", ["c"], ["y"], name="act")], "sigmoid", False, (), {}),
    "silu": ([mk("Sigmoid", ["c"], ["s"], name="sig"), mk("Mul", ["s", "c"], ["y"], name="act")], "silu", False,
             (), {}),
    "gelu_erf": ([mk("Div", ["c", "sqrt2"], ["t"], name="div"), mk("Erf", ["t"], ["e"], name="erf"),
                  mk("Add", ["e", "one"], ["p"], name="add1"), mk("Mul", ["c", "p"], ["q"], name="mul"),
                  mk("Mul", ["q", "half"], ["y"], name="act")], "gelu", False, (), HALF_CONSTS),
    "add_residual": ([mk("Add", ["c", "r"], ["y"], name="res")], "", True, (("r", (2, 6, 9, 8)),), {}),
    "sum_residual_relu": ([mk("Sum", ["r", "c"], ["s"], name="res"), mk("Relu", ["s"], ["y"], name="act")], "relu",
                          True, (("r", (2, 6, 9, 8)),), {}),
    "add_residual_silu": ([mk("Add", ["c", "r"], ["s"], name="res"), mk("Sigmoid", ["s"], ["g"], name="sig"),
                           mk("Mul", ["s", "g"], ["y"], name="act")], "silu", True, (("r", (2, 6, 9, 8)),), {}),
    # YOLO's Conv -> LeakyRelu(0.1) and a GAN's residual + LeakyRelu(0.2): the conv kernel's own
    "leaky_relu": ([mk("LeakyRelu", ["c"], ["y"], name="act", alpha=0.1)], "leaky_relu", False, (), {}),
    "add_residual_leaky_relu": ([mk("Add", ["c", "r"], ["s"], name="res"),
                                 mk("LeakyRelu", ["s"], ["y"], name="act", alpha=0.2)], "leaky_relu", True,
                                (("r", (2, 6, 9, 8)),), {}),
}


@pytest.mark.parametrize("case", sorted(TAILS))
@pytest.mark.parametrize("bias", [True, False])
def test_fused(case, bias):
    tail, act, residual, extra, consts = TAILS[case]
    model = conv_model(tail, conv_attrs={"pads": [1, 1, 1, 1]}, bias=bias, y_shape=(2, 6, 9, 8),
                       extra_inputs=extra, extra_inits=consts)
    feed = {"x": arr(2, 3, 9, 8), **{n: arr(*s) for n, s in extra}}
    opt, report = run_and_compare(model, feed)
    assert len(opt.graph.node) == 1
    node, attrs = normrt_conv(opt)
    assert attrs.get("activation", b"").decode() == act
    assert list(node.input[:2]) == ["x", "w"] and (len(node.input) > 2 and node.input[2] == "b") == bias
    assert (len(node.input) == 4 and node.input[3] == "r") == residual
    assert attrs["pads"] == [1, 1, 1, 1] and list(node.output) == ["y"]
    assert report["passes"][PASS] == 1 and not report["refused"]
    (entry,) = report["fused"]
    assert entry["normrt_op"] == "Conv" and entry["kernel"] == "conv2d" and entry["nodes"][0] == "conv"
    assert entry["activation"] == (act or None) and entry["residual"] == residual
    assert "Conv/MatMul with fused epilogues: 1" in format_report(report)


def test_gelu_op_opset20():
    model = conv_model([mk("Gelu", ["c"], ["y"], name="act")], y_shape=(2, 6, 7, 6), opset=20)
    opt, _ = run_and_compare(model, {"x": arr(2, 3, 9, 8)})
    assert normrt_conv(opt)[1]["activation"] == b"gelu"


CONV_ATTRS = {
    "strided_dilated_asymmetric": ({"strides": [2, 1], "dilations": [1, 2], "pads": [0, 2, 1, 1]}, (1, 6, 5, 6),
                                   [0, 2, 1, 1]),
    "valid": ({"auto_pad": "VALID", "strides": [2, 2]}, (1, 6, 4, 3), [0, 0, 0, 0]),
    "same_upper": ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (1, 6, 5, 4), same_pads("SAME_UPPER", (9, 8),
                                                                                           (3, 3), (2, 2), (1, 1))),
    "same_lower": ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (1, 6, 5, 4), same_pads("SAME_LOWER", (9, 8),
                                                                                           (3, 3), (2, 2), (1, 1))),
    "kernel_shape": ({"kernel_shape": [3, 3]}, (1, 6, 7, 6), [0, 0, 0, 0]),
}


@pytest.mark.parametrize("case", sorted(CONV_ATTRS))
def test_attributes_normalized(case):
    attrs, y_shape, pads = CONV_ATTRS[case]
    model = conv_model([mk("Relu", ["c"], ["y"], name="act")], x_shape=(1, 3, 9, 8), conv_attrs=attrs,
                       y_shape=y_shape)
    opt, _ = run_and_compare(model, {"x": arr(1, 3, 9, 8)})
    _, got = normrt_conv(opt)
    assert got.get("pads", [0, 0, 0, 0]) == list(pads) and "auto_pad" not in got


def test_same_pads_put_the_odd_pad_at_the_end_or_beginning():
    assert same_pads("SAME_UPPER", (9, 8), (3, 3), (2, 2), (1, 1)) == (1, 0, 1, 1)
    assert same_pads("SAME_LOWER", (9, 8), (3, 3), (2, 2), (1, 1)) == (1, 1, 1, 0)
    assert same_pads("SAME_UPPER", (5, 5), (1, 1), (1, 1), (1, 1)) == (0, 0, 0, 0)


def test_grouped_conv():
    model = conv_model([mk("Relu", ["c"], ["y"], name="act")], x_shape=(1, 16, 6, 6), cout=8, cin_per_group=8,
                       conv_attrs={"group": 2, "pads": [1, 1, 1, 1]}, y_shape=(1, 8, 6, 6))
    opt, _ = run_and_compare(model, {"x": arr(1, 16, 6, 6)})
    assert normrt_conv(opt)[1]["group"] == 2


def test_resnet_projection_block():
    """Sum of two Conv outputs, then Relu: the first Conv takes the Sum and Relu, the other stays a Conv."""
    inits = {"w1": arr(6, 3, 1, 1), "b1": arr(6), "w2": arr(6, 3, 3, 3), "b2": arr(6)}
    nodes = [mk("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
             mk("Conv", ["x", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             mk("Sum", ["c1", "c2"], ["s"], name="sum"), mk("Relu", ["s"], ["y"], name="relu")]
    model = build(nodes, [vi("x", (2, 3, 5, 5))], [vi("y", (2, 6, 5, 5))], inits)
    opt, report = run_and_compare(model, {"x": arr(2, 3, 5, 5)})
    assert [(n.domain, n.op_type) for n in opt.graph.node] == [("", "Conv"), ("normrt", "Conv")]
    assert report["passes"][PASS] == 1 and not report["refused"]
    assert report["fused"][0]["pattern"] == "Conv+Sum+Relu"


@pytest.mark.parametrize("other_reader_first", [False, True])
def test_residual_that_is_the_convs_own_input(other_reader_first):
    """x -> Conv -> Add(., x) -> Relu (an identity shortcut around one conv): x is both the kernel's input and
    its residual, and a second reader of x (a Neg that could write in place into a dead input) runs before or
    after it; nothing overwrites x while the conv reads it. 32 channels x 3x3: two K blocks, two threads."""
    inits = {"w": arr(32, 32, 3, 3), "b": arr(32)}
    fused = [mk("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             mk("Add", ["c", "x"], ["s"], name="res"), mk("Relu", ["s"], ["y"], name="act")]
    other = [mk("Neg", ["x"], ["z"], name="neg")]
    nodes = [mk("Sigmoid", ["i"], ["x"], name="pre")] + (other + fused if other_reader_first else fused + other)
    model = build(nodes, [vi("i", (1, 32, 12, 12))], [vi("y", (1, 32, 12, 12)), vi("z", (1, 32, 12, 12))], inits)
    feed = {"i": arr(1, 32, 12, 12)}
    opt, report = run_and_compare(model, feed)
    node, attrs = normrt_conv(opt)
    assert list(node.input) == ["x", "w", "b", "x"] and attrs["activation"] == b"relu"
    assert report["fused"][0]["pattern"] == "Conv+Add+Relu"
    runs = [normrt.InferenceSession(model, num_threads=n).run(None, feed) for n in (1, 2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_folds_first_then_fuses():
    """Conv -> BatchNormalization -> Mul -> Add -> Relu (Caffe2): one normrt::Conv with the folded weights."""
    c = 6
    inits = {"s": 1 + 0.3 * arr(c), "bb": arr(c), "m": arr(c), "v": 0.5 + arr(c) ** 2, "k": arr(c, 1, 1),
             "d": arr(c, 1, 1)}
    tail = [mk("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], name="bn"),
            mk("Mul", ["n", "k"], ["p"], name="mul"), mk("Add", ["p", "d"], ["q"], name="add"),
            mk("Relu", ["q"], ["y"], name="act")]
    model = conv_model(tail, y_shape=(2, 6, 7, 6), extra_inits=inits, opset=15)
    opt, report = run_and_compare(model, {"x": arr(2, 3, 9, 8)})
    assert len(opt.graph.node) == 1 and normrt_conv(opt)[1]["activation"] == b"relu"


def test_weight_and_bias_as_graph_inputs():
    """Runtime weights (not packed ahead) are fused too: the kernel takes them as arrays."""
    w, b = arr(6, 3, 3, 3), arr(6)
    nodes = [mk("Conv", ["x", "w", "b"], ["c"], name="conv"), mk("Relu", ["c"], ["y"], name="act")]
    model = build(nodes, [vi("x", (2, 3, 9, 8)), vi("w", w.shape), vi("b", b.shape)], [vi("y", (2, 6, 7, 6))], {})
    opt, _ = run_and_compare(model, {"x": arr(2, 3, 9, 8), "w": w, "b": b})
    assert list(normrt_conv(opt)[0].input) == ["x", "w", "b"]


def test_bitwise_equal_for_thread_counts():
    tail, _, _, extra, _ = TAILS["sum_residual_relu"]
    model = conv_model(tail, x_shape=(2, 3, 9, 8), conv_attrs={"pads": [1, 1, 1, 1]}, y_shape=(2, 6, 9, 8),
                       extra_inputs=extra)
    feed = {"x": arr(2, 3, 9, 8), "r": arr(2, 6, 9, 8)}
    results = [normrt.InferenceSession(model, num_threads=n).run(None, feed)[0] for n in (1, 2, 3)]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


# -- left alone ----------------------------------------------------------------------------------------------

def _unchanged(model, feed, want_ops):
    opt, report = run_and_compare(model, feed)
    assert [(n.domain or "", n.op_type) for n in opt.graph.node] == want_ops
    assert report["passes"].get(PASS, 0) == 0 and not report["refused"]


def test_bare_conv_stays_standard():
    model = conv_model([mk("Identity", ["c"], ["y"], name="id")], y_shape=(2, 6, 7, 6))
    _unchanged(model, {"x": arr(2, 3, 9, 8)}, [("", "Conv"), ("", "Identity")])


def test_output_read_elsewhere():
    model = conv_model([mk("Relu", ["c"], ["y"], name="act")], y_shape=(2, 6, 7, 6), extra_outputs=[("c", None)])
    _unchanged(model, {"x": arr(2, 3, 9, 8)}, [("", "Conv"), ("", "Relu")])


def test_sum_read_elsewhere_keeps_the_residual_out():
    """Conv -> Add -> Relu with the sum also a graph output: the Add is fused, the Relu is not."""
    model = conv_model([mk("Add", ["c", "r"], ["s"], name="res"), mk("Relu", ["s"], ["y"], name="act")],
                       y_shape=(1, 6, 7, 6), x_shape=(1, 3, 9, 8), extra_inputs=[("r", (1, 6, 7, 6))],
                       extra_outputs=[("s", (1, 6, 7, 6))])
    opt, _ = run_and_compare(model, {"x": arr(1, 3, 9, 8), "r": arr(1, 6, 7, 6)})
    assert [(n.domain or "", n.op_type) for n in opt.graph.node] == [("normrt", "Conv"), ("", "Relu")]


def test_broadcasting_add_is_no_residual():
    model = conv_model([mk("Add", ["c", "r"], ["s"], name="res"), mk("Relu", ["s"], ["y"], name="act")],
                       y_shape=(2, 6, 7, 6), extra_inputs=[("r", (1, 6, 1, 1))])
    # (the Add and Relu then make one elementwise_chains node)
    _unchanged(model, {"x": arr(2, 3, 9, 8), "r": arr(1, 6, 1, 1)}, [("", "Conv"), ("normrt", "Elementwise")])


def test_residual_of_unknown_shape_is_no_residual():
    model = conv_model([mk("Add", ["c", "r"], ["y"], name="res")], y_shape=None, extra_inputs=[("r", None)])
    _unchanged(model, {"x": arr(2, 3, 9, 8), "r": arr(2, 6, 7, 6)}, [("", "Conv"), ("", "Add")])


def test_sum_of_three_is_no_residual():
    """Sum(c, r, q): the kernel adds one residual; the Conv stays a standard Conv."""
    model = conv_model([mk("Sum", ["c", "r", "q"], ["y"], name="res")], y_shape=(2, 6, 7, 6),
                       extra_inputs=[("r", (2, 6, 7, 6)), ("q", (2, 6, 7, 6))])
    _unchanged(model, {"x": arr(2, 3, 9, 8), "r": arr(2, 6, 7, 6), "q": arr(2, 6, 7, 6)},
               [("", "Conv"), ("", "Sum")])


def test_float64_conv():
    model = conv_model([mk("Relu", ["c"], ["y"], name="act")], y_shape=(2, 6, 7, 6), elem=TensorProto.DOUBLE)
    _unchanged(model, {"x": arr(2, 3, 9, 8, dtype=np.float64)}, [("", "Conv"), ("", "Relu")])


@settings(max_examples=30, deadline=None)
@given(act=st.sampled_from(["", "relu", "leaky", "sigmoid"]), residual=st.booleans(), bias=st.booleans(),
       group=st.sampled_from([1, 2]), cg=st.sampled_from([1, 4, 9]), k=st.integers(1, 7), stride=st.integers(1, 3),
       dil=st.integers(1, 3), pads=st.tuples(st.integers(0, 3), st.integers(0, 3)), length=st.integers(8, 40),
       batch=st.integers(1, 2))
def test_conv1d_takes_its_epilogue(act, residual, bias, group, cg, k, stride, dil, pads, length, batch):
    """A 1-D conv (a vocoder's residual block: Conv1d -> LeakyRelu, Conv1d -> Add) takes its
    residual and activation as 2-D convs do: one normrt::Conv with 1-D attributes, onnx.reference's
    values, the prepared step's bits for the generic call's, the same bits for any thread count."""
    cout = 3 * group
    out_len = (length + pads[0] + pads[1] - dil * (k - 1) - 1) // stride + 1
    if out_len < 1 or (not act and not residual):
        return
    inits = {"w": arr(cout, cg, k)}
    ins = ["x", "w"]
    if bias:
        inits["b"] = arr(cout)
        ins.append("b")
    nodes = [mk("Conv", ins, ["c"], name="conv", strides=[stride], dilations=[dil], pads=list(pads), group=group)]
    v, extra = "c", []
    if residual:
        nodes.append(mk("Add", [v, "r"], ["s"], name="res"))
        v, extra = "s", [vi("r", (batch, cout, out_len))]
    if act == "leaky":
        nodes.append(mk("LeakyRelu", [v], ["y"], name="act", alpha=0.1))
    elif act:
        nodes.append(mk(act.capitalize(), [v], ["y"], name="act"))
    else:
        nodes.append(mk("Identity", [v], ["y"], name="act"))
    model = build(nodes, [vi("x", (batch, cg * group, length))] + extra, [vi("y", (batch, cout, out_len))], inits)
    feed = {"x": arr(batch, cg * group, length), **({"r": arr(batch, cout, out_len)} if residual else {})}
    opt, report = run_and_compare(model, feed)
    # grouped convs of few channels take an activation right after them only (small_conv)
    few = group > 1 and cg < 8
    if few and (not act or residual):
        assert not any(n.domain == "normrt" and n.op_type == "Conv" for n in opt.graph.node)
        return
    node, attrs = normrt_conv(opt)
    assert attrs["strides"] == [stride] and attrs["dilations"] == [dil] and attrs["pads"] == list(pads)
    assert attrs.get("activation", b"").decode() == {"leaky": "leaky_relu"}.get(act, act)
    assert (len(node.input) == 4 and node.input[3] == "r") == (residual and not few)
    sess = normrt.InferenceSession(model)
    runs = []
    for threads in (1, 2):
        with normrt.threads(threads):
            runs.append(sess.executor.run(feed, specialize=False)[0])
            runs += [sess.run(None, feed)[0] for _ in range(2)]
    for got in runs[1:]:
        assert np.array_equal(got, runs[0])


@settings(max_examples=25, deadline=None)
@given(tail=st.sampled_from(["relu", "sigmoid", "silu", "gelu_erf"]), mult=st.integers(1, 2),
       stride=st.integers(1, 2), pad=st.integers(0, 2), k=st.integers(1, 5), hw=st.integers(5, 12),
       batch=st.integers(1, 2), bias=st.booleans())
def test_depthwise_conv_takes_its_activation(tail, mult, stride, pad, k, hw, batch, bias):
    # depthwise (one input channel per group, `mult` outputs each): the activation is fused and
    # runs on small_conv, in the generic call and in the specialized plan, against onnx.reference
    nodes, act, _, _, consts = TAILS[tail]
    oh = (hw + 2 * pad - k) // stride + 1
    model = conv_model(nodes, x_shape=(batch, 6, hw, hw), cout=6 * mult, cin_per_group=1, k=k, bias=bias,
                       conv_attrs={"group": 6, "strides": [stride, stride], "pads": [pad] * 4},
                       y_shape=(batch, 6 * mult, oh, oh), extra_inits=consts)
    feed = {"x": arr(batch, 6, hw, hw)}
    opt, _ = run_and_compare(model, feed, rtol=2e-5, atol=2e-5)
    node, attrs = normrt_conv(opt)
    assert attrs["activation"] in (act, act.encode()) and len(opt.graph.node) == 1
    sess = normrt.InferenceSession(model)
    generic = sess.executor.run(feed, specialize=False)[0]
    sess.run(None, feed)
    assert np.array_equal(sess.run(None, feed)[0], generic)
    assert any("_small_group_into" in p.source for p in sess.executor.specialized.values())


def test_depthwise_conv_keeps_its_residual_add():
    # small_conv has no residual epilogue: Conv -> Add stays (and so does what follows it)
    model = conv_model([mk("Add", ["c", "r"], ["s"], name="res"), mk("Relu", ["s"], ["y"], name="act")],
                       x_shape=(1, 6, 6, 6), cout=6, cin_per_group=1, conv_attrs={"group": 6, "pads": [1] * 4},
                       y_shape=(1, 6, 6, 6), extra_inputs=(("r", (1, 6, 6, 6)),))
    opt, _ = run_and_compare(model, {"x": arr(1, 6, 6, 6), "r": arr(1, 6, 6, 6)})
    ops = [(n.domain or "", n.op_type) for n in opt.graph.node]
    assert ops[0] == ("", "Conv") and ("normrt", "Conv") not in ops     # (Add -> Relu: elementwise_chains')


@pytest.mark.parametrize("node,act", [(("Gelu", {"approximate": "tanh"}), "gelu_tanh"), (("Elu", {}), "elu")])
def test_gelu_tanh_and_elu(node, act):
    """Gelu(approximate="tanh") and Elu (alpha 1: EnCodec's SEANet) are the kernels' gelu_tanh / elu."""
    op, attrs = node
    model = conv_model([mk(op, ["c"], ["y"], name="act", **attrs)], y_shape=(2, 6, 7, 6), opset=20)
    opt, report = run_and_compare(model, {"x": arr(2, 3, 9, 8)})
    (conv,) = opt.graph.node
    assert conv.domain == "normrt" and helper.get_attribute_value(
        next(a for a in conv.attribute if a.name == "activation")).decode() == act


def test_elu_of_another_alpha_stays():
    model = conv_model([mk("Elu", ["c"], ["y"], name="act", alpha=0.5)], y_shape=(2, 6, 7, 6), opset=20)
    _unchanged(model, {"x": arr(2, 3, 9, 8)}, [("", "Conv"), ("", "Elu")])


def _check_reason(model, loaded=True):
    ctx = PassContext(load_model(model) if loaded else model)
    p = ConvEpilogue()
    (m,) = list(p.matches(ctx))
    reason = p.check(ctx, m)
    assert p.run(ctx) == 0 and [n.op_type for n in ctx.nodes] == ["Conv", "Relu"]
    return reason


def test_check_refuses_same_padding_of_dynamic_spatial_shape():
    model = conv_model([mk("Relu", ["c"], ["y"], name="act")], x_shape=(1, 3, "H", "W"),
                       conv_attrs={"auto_pad": "SAME_UPPER"}, y_shape=None)
    assert "not static" in _check_reason(model)


def test_check_refuses_kernel_shape_mismatch():
    model = conv_model([mk("Relu", ["c"], ["y"], name="act")], conv_attrs={"kernel_shape": [3, 3]}, y_shape=None)
    model.graph.node[0].attribute[0].CopyFrom(helper.make_attribute("kernel_shape", [2, 2]))
    # the loader refuses it (model_checks.check_attributes); the pass refuses it on its own too
    with pytest.raises(normrt.ModelError, match="kernel_shape"):
        load_model(model)
    assert "kernel_shape" in _check_reason(model, loaded=False)


def test_check_refuses_negative_pads():
    model = conv_model([mk("Relu", ["c"], ["y"], name="act")], conv_attrs={"pads": [-1, 0, 0, 0]}, y_shape=None)
    assert "pads" in _check_reason(model)


def test_check_refuses_bias_of_wrong_shape():
    model = conv_model([mk("Relu", ["c"], ["y"], name="act")], bias=False, y_shape=None,
                       extra_inits={"b": arr(1, 6)})
    model.graph.node[0].input.append("b")
    assert "bias" in _check_reason(model)


# -- the normrt::Conv node itself ----------------------------------------------------------------------------

def _normrt_conv_model(w_shape, x_shape, **attrs):
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="nc", domain="normrt", **attrs)
    graph = helper.make_graph([node], "nc", [vi("x", x_shape)], [vi("y", None)],
                              [numpy_helper.from_array(arr(*w_shape), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("normrt", 1)])


def test_normrt_conv_node_runs_conv2d():
    model = _normrt_conv_model((4, 3, 3, 3), (1, 3, 6, 6), pads=[1, 1, 1, 1], activation="relu")
    x = arr(1, 3, 6, 6)
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((1, 4, 6, 6))
    for i in range(3):
        for j in range(3):
            want += np.einsum("nchw,mc->nmhw", xp[:, :, i:i + 6, j:j + 6], w[:, :, i, j])
    got = normrt.InferenceSession(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, np.maximum(want, 0), rtol=1e-5, atol=1e-5)


def test_normrt_conv_node_channel_mismatch_is_a_clear_error():
    model = _normrt_conv_model((4, 2, 3, 3), (1, 3, 6, 6))
    with pytest.raises(Exception, match="channels"):
        normrt.InferenceSession(model).run(None, {"x": arr(1, 3, 6, 6)})


@pytest.mark.parametrize("act_tail", ["gelu_erf", "silu"])
def test_activation_before_a_pointwise_conv_stays_whole(act_tail):
    # PoolFormer's MLP: Conv1x1 -> legacy Erf GELU (whose last op is `* 0.5`) -> Conv1x1.
    # affine_before_conv must not fold the GELU's 0.5 (or anything after an x * g(x) product)
    # into the second Conv: the activation then fuses whole into the first Conv
    nodes, act, _, _, consts = TAILS[act_tail]
    tail = [mk(n.op_type, list(n.input), ["g" if o == "y" else o for o in n.output], name=n.name) for n in nodes]
    tail.append(mk("Conv", ["g", "w2", "b2"], ["y"], name="conv2"))
    model = conv_model(tail, x_shape=(1, 3, 6, 6), cout=5, k=1, y_shape=(1, 4, 6, 6),
                       extra_inits={**consts, "w2": arr(4, 5, 1, 1), "b2": arr(4)})
    opt, report = run_and_compare(model, {"x": arr(1, 3, 6, 6)})
    convs = [n for n in opt.graph.node if n.op_type == "Conv"]
    assert len(opt.graph.node) == 2 and len(convs) == 2
    acts = [helper.get_attribute_value(a) for n in convs for a in n.attribute if a.name == "activation"]
    assert acts == [act.encode()]
    assert not report["passes"].get("affine_before_conv")



@pytest.mark.parametrize("alpha", [0.01, 0.1, 2.0])
@pytest.mark.parametrize("group,cin", [(1, 3), (3, 1)])     # (3, 1): depthwise, on small_conv
def test_leaky_relu_alpha_is_carried_and_matches_the_op(alpha, group, cin):
    tail = [mk("LeakyRelu", ["c"], ["y"], name="act", alpha=alpha)]
    model = conv_model(tail, cout=6 if group == 1 else 3, cin_per_group=cin, y_shape=None,
                       conv_attrs={"pads": [1, 1, 1, 1], "group": group})
    x = arr(2, 3, 9, 8)
    x[0, 0, 0, :3] = [np.inf, np.nan, -np.inf]
    opt, report = run_and_compare(model, {"x": x})
    node, attrs = normrt_conv(opt)
    assert attrs["activation"] == b"leaky_relu" and attrs.get("alpha", 0.01) == pytest.approx(alpha)
    if group > 1:
        return      # (small_conv sums in its own order: run_and_compare's tolerance above)
    # bitwise the conv's sums through ONNX LeakyRelu's where(v > 0, v, alpha v)
    got = normrt.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    b = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b"))
    pre = normrt.conv2d(x, w, b, pads=(1, 1, 1, 1), group=group)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(got, np.where(pre > 0, pre, pre * np.float32(alpha)))


def test_leaky_relu_of_alpha_zero_stays_a_separate_node():
    """alpha 0 is not the kernel's max form (0 * inf is NaN where the op gives +inf)."""
    tail = [mk("LeakyRelu", ["c"], ["y"], name="act", alpha=0.0)]
    model = conv_model(tail, conv_attrs={"pads": [1, 1, 1, 1]}, y_shape=(2, 6, 9, 8))
    opt, report = run_and_compare(model, {"x": arr(2, 3, 9, 8)})
    assert [n.op_type for n in opt.graph.node] == ["Conv", "LeakyRelu"]


def test_leaky_relu_is_a_conv_and_matmul_activation_only():
    from normrt.onnx.domain import make_node
    make_node("Conv", ["x", "w"], ["y"], "conv", activation="leaky_relu", alpha=0.1)
    make_node("MatMul", ["x", "w"], ["y"], "mm", activation="leaky_relu", alpha=0.1)
    with pytest.raises(ValueError, match="unknown activation"):
        make_node("LayerNorm", ["x", "s"], ["y"], "ln", activation="leaky_relu")


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
@pytest.mark.parametrize("alpha", [0.2, 1.5])
@pytest.mark.parametrize("rows", [1, 3, 70])      # 1-3: the GEMV path of a packed weight
def test_linear_leaky_relu_is_the_gemms_epilogue(op, alpha, rows):
    """A discriminator's Linear -> LeakyRelu: one normrt::MatMul whose GEMM applies it, with the
    values of the product through where(v > 0, v, alpha v)."""
    w, b = arr(48, 40), arr(40)
    if op == "MatMul":
        nodes = [mk("MatMul", ["x", "w"], ["p"], name="mm"), mk("Add", ["p", "b"], ["s"], name="bias")]
    else:
        nodes = [mk("Gemm", ["x", "w", "b"], ["s"], name="mm")]
    nodes.append(mk("LeakyRelu", ["s"], ["y"], name="act", alpha=alpha))
    model = build(nodes, [vi("x", (rows, 48))], [vi("y", (rows, 40))], {"w": w, "b": b})
    x = arr(rows, 48)
    x[0, :3] = [np.inf, np.nan, -np.inf]
    opt, report = run_and_compare(model, {"x": x})
    (node,) = opt.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert (node.domain, node.op_type, attrs["activation"]) == ("normrt", "MatMul", b"leaky_relu")
    assert attrs["alpha"] == pytest.approx(alpha)
    got = normrt.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    pre = normrt.matmul(x, w, bias=b)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(got, np.where(pre > 0, pre, pre * np.float32(alpha)))
