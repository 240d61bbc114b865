"""float16 / bfloat16 graphs on the executor's own ops, never on the onnx.reference fallback.

Each case builds a small float32 graph (hypothesis draws shapes, broadcasting and
attributes), converts it to float16 or bfloat16 (tests/half_models.py: what a half
export holds) and runs it with normrt. The expected result is onnx.reference on the
float32 graph, fed the same half-precision values widened to float32 and holding
weights that half precision represents exactly: normrt computes each op in float32
and rounds its result once, so it must match within the rounding of the output dtype.
Every case also asserts that no node ran on the fallback and that the specialized plan
(the second run) gives the same bits as the first.
"""
import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from dtype_checks import HALF_DTYPES, assert_close_in_dtype, dtype_name, same_bits
from half_models import to_half
from normrt.onnx.domain import make_node as normrt_node

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_name)
F = TensorProto.FLOAT


def representable(a, dtype):
    """float32 values half precision holds exactly (weights and inputs both runtimes see the same)."""
    return np.asarray(a, np.float32).astype(dtype).astype(np.float32)


def model(nodes, inputs, outputs, inits=(), opset=18, normrt_domain=False):
    """A float32 model: `inputs` {name: shape}, `outputs` names (typed by `typed` once known),
    `inits` {name: array}."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [helper.make_value_info(n, onnx.TypeProto()) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("normrt", 1)] if normrt_domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def typed(m, values):
    """m with its outputs typed like `values` (the reference's outputs): the loader's checker wants them."""
    for vi, v in zip(m.graph.output, values):
        v = np.asarray(v)
        vi.type.CopyFrom(helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(v.dtype), v.shape))
    return m


def run_half(m32, feeds32, dtype):
    """normrt on the half copy of m32: (outputs, session), after checking no node fell back
    and the specialized second run repeats the first bit for bit."""
    sess = normrt.InferenceSession(to_half(m32, dtype).SerializeToString())
    feeds = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in feeds32.items()}
    first = sess.run(None, feeds)
    second = sess.run(None, feeds)
    assert_no_fallback(sess)
    for a, b in zip(first, second):
        assert same_bits(a, b)
    return first, sess


def assert_no_fallback(sess):
    assert sess.executor.counts()["reference"] == 0, [s.node.op_type for s in sess.executor.steps
                                                      if s.kind == "reference"]
    fell = [s.node.op_type for s in sess.executor.steps if getattr(s.run, "fallback_runs", 0)]
    assert not fell, f"ran on onnx.reference: {fell}"


def check(m32, feeds32, dtype, *, ulps=1.0, f32_rel=2.0 ** -20, ref_model=None, scale=None):
    """normrt's half result of m32 against onnx.reference's float32 result (of `ref_model`, default m32);
    `scale`: the magnitude of the terms a kernel sums (assert_close_in_dtype's; default max |result|)."""
    feeds32 = {k: representable(v, dtype) if v.dtype == np.float32 else v for k, v in feeds32.items()}
    refs = ReferenceEvaluator(ref_model or m32).run(None, feeds32)
    ys, _ = run_half(typed(m32, refs), feeds32, dtype)
    for y, ref in zip(ys, refs):
        if np.asarray(ref).dtype.kind == "f":
            assert_close_in_dtype(y, ref, dtype, ulps=ulps, f32_rel=f32_rel, scale=scale)
        else:
            np.testing.assert_array_equal(y, ref)
    return ys


def shapes(min_rank=1, max_rank=4, max_side=5):
    return st.lists(st.integers(1, max_side), min_size=min_rank, max_size=max_rank).map(tuple)


@st.composite
def broadcast_pair(draw):
    """(a shape, b shape) that broadcast: b a suffix of a with some sides set to 1, or the reverse."""
    a = draw(shapes())
    k = draw(st.integers(0, len(a)))
    b = tuple(1 if draw(st.booleans()) else s for s in a[len(a) - k:])
    return (b, a) if draw(st.booleans()) else (a, b)


def normal(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ------------------------------------------------------------------ elementwise
BINARY = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"]


@DTYPES
@SETTINGS
@given(op=st.sampled_from(BINARY), pair=broadcast_pair(), const_b=st.booleans(), seed=st.integers(0, 99))
def test_binary_broadcasting(dtype, op, pair, const_b, seed):
    sa, sb = pair
    a, b = normal(sa, seed), normal(sb, seed + 1)
    if op == "Pow":
        a = np.abs(a) + 0.5                       # a real power of a positive base
        b = np.clip(b, -2, 2)
    if op == "Div":
        b = np.sign(b) * (np.abs(b) + 0.5)        # away from zero
    node = helper.make_node(op, ["a", "b"], ["y"])
    if const_b:
        m = model([node], {"a": sa}, ["y"], {"b": representable(b, dtype)})
        check(m, {"a": a}, dtype)
    else:
        check(model([node], {"a": sa, "b": sb}, ["y"]), {"a": a, "b": b}, dtype)


UNARY = {  # op: (attributes, input transform)
    "Relu": ({}, None), "Sigmoid": ({}, None), "Tanh": ({}, None), "Erf": ({}, None),
    "Exp": ({}, None), "Neg": ({}, None), "Abs": ({}, None), "Sqrt": ({}, np.abs),
    "Log": ({}, lambda x: np.abs(x) + 0.1), "Reciprocal": ({}, lambda x: np.sign(x) * (np.abs(x) + 0.5)),
    "Gelu": ({}, None), "Gelu-tanh": ({"approximate": "tanh"}, None), "LeakyRelu": ({"alpha": 0.1}, None),
    "HardSigmoid": ({}, None), "HardSwish": ({}, None), "Softplus": ({}, None), "Elu": ({}, None),
    "Floor": ({}, None), "Ceil": ({}, None), "Sin": ({}, None), "Cos": ({}, None), "Mish": ({}, None),
}


@DTYPES
@SETTINGS
@given(name=st.sampled_from(sorted(UNARY)), shape=shapes(), seed=st.integers(0, 99),
       scale=st.sampled_from([0.5, 3.0]))
def test_unary_and_activations(dtype, name, shape, seed, scale):
    attrs, transform = UNARY[name]
    x = normal(shape, seed, scale)
    if transform is not None:
        x = transform(x).astype(np.float32)
    m = model([helper.make_node(name.split("-")[0], ["x"], ["y"], **attrs)], {"x": shape}, ["y"], opset=20)
    check(m, {"x": x}, dtype)


@DTYPES
@SETTINGS
@given(shape=shapes(), seed=st.integers(0, 99), lo=st.floats(-2, 0), hi=st.floats(0, 2))
def test_clip_where_and_compare(dtype, shape, seed, lo, hi):
    x = normal(shape, seed, 2.0)
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
             helper.make_node("Greater", ["x", "zero"], ["gt"]),
             helper.make_node("Where", ["gt", "c", "x"], ["y"])]
    inits = {"lo": representable(lo, dtype), "hi": representable(hi, dtype), "zero": np.float32(0)}
    check(model(nodes, {"x": shape}, ["y", "gt"], inits), {"x": x}, dtype)


# ------------------------------------------------------------------ Cast
@DTYPES
@SETTINGS
@given(shape=shapes(), seed=st.integers(0, 99),
       to=st.sampled_from([TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.FLOAT16,
                           TensorProto.BFLOAT16, TensorProto.BOOL]))
def test_cast_from_half(dtype, shape, seed, to):
    x = normal(shape, seed, 40.0)
    m = to_half(typed(model([helper.make_node("Identity", ["x"], ["h"])], {"x": shape}, ["h"]), [x]), dtype)
    m.graph.node.append(helper.make_node("Cast", ["h"], ["y"], to=to))
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", to, shape))
    xh = x.astype(dtype)
    sess = normrt.InferenceSession(m.SerializeToString())
    y = sess.run(None, {"x": xh})[0]
    assert_no_fallback(sess)
    expected = ReferenceEvaluator(m).run(None, {"x": xh})[0]
    assert y.dtype == expected.dtype
    assert same_bits(y, expected)


@DTYPES
@SETTINGS
@given(shape=shapes(), seed=st.integers(0, 99), src=st.sampled_from([np.float32, np.float64, np.int32]),
       scale=st.sampled_from([1.0, 1e3, 1e6]))
def test_cast_to_half(dtype, shape, seed, src, scale):
    x = (normal(shape, seed, scale)).astype(src)
    elem = {np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(ml_dtypes.bfloat16): TensorProto.BFLOAT16}
    in_elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(src))
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=elem[np.dtype(dtype)])], "g",
                              [helper.make_tensor_value_info("x", in_elem, shape)],
                              [helper.make_tensor_value_info("y", elem[np.dtype(dtype)], shape)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    sess = normrt.InferenceSession(m.SerializeToString())
    y = sess.run(None, {"x": x})[0]
    assert_no_fallback(sess)
    assert same_bits(y, x.astype(dtype))           # round to nearest even, overflow to inf


def test_cast_specials_round_trip():
    """inf, nan, subnormals and ties: float32 -> half through the vectorized converter as numpy rounds."""
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-8, 6.0e-5, 65520.0, 65519.0, 1 + 2 ** -11,
                  1 + 3 * 2 ** -11, 3.4e38], np.float32)
    for dtype in HALF_DTYPES:
        m = to_half(typed(model([helper.make_node("Identity", ["x"], ["h"])], {"x": [12]}, ["h"]), [x]), dtype)
        m.graph.input[0].type.tensor_type.elem_type = F
        m.graph.node[0].op_type = "Cast"
        m.graph.node[0].attribute.append(helper.make_attribute("to", m.graph.output[0].type.tensor_type.elem_type))
        y = normrt.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
        expected = x.astype(dtype)
        assert np.array_equal(np.isnan(y.astype(np.float32)), np.isnan(x))
        ok = ~np.isnan(x)
        assert same_bits(y[ok], expected[ok])


# ------------------------------------------------------------------ data movement
@DTYPES
@SETTINGS
@given(shape=shapes(2, 4), seed=st.integers(0, 99), data=st.data())
def test_movement_ops_exact(dtype, shape, seed, data):
    """Transpose, Reshape, Slice, Gather, Concat, Expand, Split, Pad, Tile: the same bits as the reference."""
    rank = len(shape)
    perm = data.draw(st.permutations(range(rank)))
    axis = data.draw(st.integers(0, rank - 1))
    idx = np.array(data.draw(st.lists(st.integers(-shape[axis], shape[axis] - 1), min_size=1, max_size=4)),
                   np.int64)
    start = data.draw(st.integers(0, shape[axis] - 1))
    step = data.draw(st.sampled_from([1, 2, -1]))
    pads = data.draw(st.lists(st.integers(0, 2), min_size=2 * rank, max_size=2 * rank))
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=list(perm)),
        helper.make_node("Reshape", ["t", "flat"], ["r"]),
        helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["s"]),
        helper.make_node("Gather", ["x", "idx"], ["g"], axis=axis),
        helper.make_node("Concat", ["x", "x"], ["c"], axis=axis),
        helper.make_node("Expand", ["x", "big"], ["e"]),
        helper.make_node("Split", ["x"], ["p0", "p1"], axis=axis, num_outputs=2) if shape[axis] >= 2
        else helper.make_node("Identity", ["x"], ["p0"]),
        helper.make_node("Pad", ["x", "pads", "pv"], ["pd"], mode=data.draw(st.sampled_from(["constant", "edge"]))),
        helper.make_node("Tile", ["x", "reps"], ["tl"]),
    ]
    inits = {"flat": np.array([-1], np.int64), "st": np.array([start], np.int64),
             "en": np.array([-10 ** 9 if step < 0 else 10 ** 9], np.int64), "ax": np.array([axis], np.int64),
             "sp": np.array([step], np.int64), "idx": idx, "big": np.array((2,) + shape, np.int64),
             "pads": np.array(pads, np.int64), "pv": np.float32(1.5), "reps": np.array([2] + [1] * (rank - 1),
                                                                                          np.int64)}
    outs = ["r", "s", "g", "c", "e", "p0", "pd", "tl"] + (["p1"] if shape[axis] >= 2 else [])
    m32 = model(nodes, {"x": shape}, outs, inits)
    x = representable(normal(shape, seed), dtype)
    refs = ReferenceEvaluator(m32).run(None, {"x": x})
    ys, _ = run_half(typed(m32, refs), {"x": x}, dtype)
    for y, ref in zip(ys, refs):
        assert y.dtype == np.dtype(dtype)
        assert same_bits(y.astype(np.float32), ref)


# ------------------------------------------------------------------ reductions, softmax
REDUCE = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare", "ReduceL1"]


@DTYPES
@SETTINGS
@given(op=st.sampled_from(REDUCE), shape=shapes(1, 4, 7), seed=st.integers(0, 99), keepdims=st.integers(0, 1),
       data=st.data())
def test_reductions(dtype, op, shape, seed, keepdims, data):
    drawn = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1, max_size=3))
    axes = sorted({a % len(shape) for a in drawn})
    m = model([helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)], {"x": shape}, ["y"],
              {"axes": np.array(axes, np.int64)})
    check(m, {"x": normal(shape, seed)}, dtype, f32_rel=2.0 ** -18)


@DTYPES
@SETTINGS
@given(op=st.sampled_from(["Softmax", "LogSoftmax"]), shape=shapes(1, 4, 9), seed=st.integers(0, 99),
       data=st.data(), scale=st.sampled_from([1.0, 8.0]))
def test_softmax(dtype, op, shape, seed, data, scale):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    m = model([helper.make_node(op, ["x"], ["y"], axis=axis)], {"x": shape}, ["y"])
    check(m, {"x": normal(shape, seed, scale)}, dtype)


# ------------------------------------------------------------------ products
@DTYPES
@SETTINGS
@given(m_=st.integers(1, 9), k=st.integers(1, 40), n=st.integers(1, 20), batch=shapes(0, 2, 3),
       const_b=st.booleans(), seed=st.integers(0, 99))
def test_matmul(dtype, m_, k, n, batch, const_b, seed):
    a, b = normal(batch + (m_, k), seed), normal((k, n) if const_b else batch[-1:] + (k, n), seed + 1)
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    if const_b:
        m = model([node], {"a": a.shape}, ["y"], {"b": representable(b, dtype)})
        check(m, {"a": a}, dtype, f32_rel=2.0 ** -16)
    else:
        check(model([node], {"a": a.shape, "b": b.shape}, ["y"]), {"a": a, "b": b}, dtype, f32_rel=2.0 ** -16)


@DTYPES
@SETTINGS
@given(m_=st.integers(1, 8), k=st.integers(1, 30), n=st.integers(1, 16), trans_a=st.integers(0, 1),
       trans_b=st.integers(0, 1), c_shape=st.sampled_from(["none", "row", "full", "scalar"]),
       alpha=st.sampled_from([1.0, 0.5]), beta=st.sampled_from([1.0, 2.0]), seed=st.integers(0, 99))
def test_gemm(dtype, m_, k, n, trans_a, trans_b, c_shape, alpha, beta, seed):
    a = normal((k, m_) if trans_a else (m_, k), seed)
    b = representable(normal((n, k) if trans_b else (k, n), seed + 1), dtype)
    inits = {"b": b}
    inputs = ["a", "b"]
    if c_shape != "none":
        inits["c"] = representable(normal({"row": (n,), "full": (m_, n), "scalar": ()}[c_shape], seed + 2), dtype)
        inputs.append("c")
    node = helper.make_node("Gemm", inputs, ["y"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    check(model([node], {"a": a.shape}, ["y"], inits), {"a": a}, dtype, f32_rel=2.0 ** -16)


@st.composite
def conv_case(draw):
    n, group = draw(st.integers(1, 2)), draw(st.sampled_from([1, 1, 2, "depthwise"]))
    cin = draw(st.integers(1, 4)) * (2 if group == 2 else 1)
    if group == "depthwise":
        group = cin
    cout = group * draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    h, w = draw(st.integers(k, 9)), draw(st.integers(k, 9))
    return dict(n=n, cin=cin, cout=cout, group=group, k=k, h=h, w=w, stride=draw(st.integers(1, 2)),
                pad=draw(st.integers(0, k - 1)), dil=draw(st.integers(1, 2)) if h > 2 * k and w > 2 * k else 1,
                bias=draw(st.booleans()), seed=draw(st.integers(0, 99)))


@DTYPES
@SETTINGS
@given(case=conv_case(), transpose=st.booleans())
def test_conv_and_conv_transpose(dtype, case, transpose):
    c = dict(case)
    if transpose:     # onnx.reference's ConvTranspose has no groups
        c.update(group=1, cout=c["cout"] // c["group"])
    x = normal((c["n"], c["cin"], c["h"], c["w"]), c["seed"])
    if transpose:
        wshape = (c["cin"], c["cout"] // c["group"], c["k"], c["k"])
    else:
        wshape = (c["cout"], c["cin"] // c["group"], c["k"], c["k"])
    inits = {"w": representable(normal(wshape, c["seed"] + 1, 0.5), dtype)}
    inputs = ["x", "w"]
    if c["bias"]:
        inits["b"] = representable(normal((c["cout"],), c["seed"] + 2), dtype)
        inputs.append("b")
    node = helper.make_node("ConvTranspose" if transpose else "Conv", inputs, ["y"], group=c["group"],
                            strides=[c["stride"]] * 2, pads=[c["pad"]] * 4, dilations=[c["dil"]] * 2)
    check(model([node], {"x": x.shape}, ["y"], inits), {"x": x}, dtype, f32_rel=2.0 ** -16)


# ------------------------------------------------------------------ pooling, resize
@DTYPES
@SETTINGS
@given(op=st.sampled_from(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"]),
       n=st.integers(1, 2), c=st.integers(1, 4), h=st.integers(3, 9), w=st.integers(3, 9), k=st.integers(1, 3),
       stride=st.integers(1, 2), pad=st.integers(0, 1), ceil=st.integers(0, 1), cip=st.integers(0, 1),
       seed=st.integers(0, 99))
def test_pooling(dtype, op, n, c, h, w, k, stride, pad, ceil, cip, seed):
    attrs = {}
    if not op.startswith("Global"):
        pad = min(pad, k - 1)
        # (onnx.reference sizes a padded ceil_mode MaxPool wrongly: ceil_mode only unpadded)
        attrs = dict(kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4, ceil_mode=ceil if not pad else 0)
        if op == "AveragePool":
            attrs["count_include_pad"] = cip
    m = model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": (n, c, h, w)}, ["y"])
    check(m, {"x": normal((n, c, h, w), seed)}, dtype)


@DTYPES
@SETTINGS
@given(mode=st.sampled_from(["nearest", "linear"]), scale=st.sampled_from([2.0, 1.5, 0.5, 3.0]),
       ctm=st.sampled_from(["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"]),
       c=st.integers(1, 3), h=st.integers(2, 8), w=st.integers(2, 8), seed=st.integers(0, 99))
def test_resize(dtype, mode, scale, ctm, c, h, w, seed):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode, coordinate_transformation_mode=ctm)
    m = model([node], {"x": (1, c, h, w)}, ["y"], {"scales": np.array([1, 1, scale, scale], np.float32)})
    check(m, {"x": normal((1, c, h, w), seed)}, dtype, f32_rel=2.0 ** -18)


# ------------------------------------------------------------------ normrt-domain nodes
def _pair(normrt_nodes, std_nodes, inputs, outputs, inits):
    """(the graph with normrt nodes, the same computation in standard ops for onnx.reference)."""
    return (model(normrt_nodes, inputs, outputs, inits, normrt_domain=True), model(std_nodes, inputs, outputs, inits))


@DTYPES
@SETTINGS
@given(case=conv_case(), act=st.sampled_from(["", "relu", "sigmoid"]), residual=st.booleans())
def test_normrt_conv_node(dtype, case, act, residual):
    """A fused normrt Conv reading half X: widened once, the float32 conv, Y rounded once; the weight
    (a half initializer) widened and packed once."""
    c = case
    x = normal((c["n"], c["cin"], c["h"], c["w"]), c["seed"])
    w = representable(normal((c["cout"], c["cin"] // c["group"], c["k"], c["k"]), c["seed"] + 1, 0.5), dtype)
    b = representable(normal((c["cout"],), c["seed"] + 2), dtype)
    oh = (c["h"] + 2 * c["pad"] - c["dil"] * (c["k"] - 1) - 1) // c["stride"] + 1
    ow = (c["w"] + 2 * c["pad"] - c["dil"] * (c["k"] - 1) - 1) // c["stride"] + 1
    geo = dict(strides=[c["stride"]] * 2, pads=[c["pad"]] * 4, dilations=[c["dil"]] * 2, group=c["group"])
    inputs = {"x": x.shape}
    feeds = {"x": x}
    ins = ["x", "w", "b"]
    std = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], **geo)]
    last = "conv"
    if residual:
        inputs["r"] = (c["n"], c["cout"], oh, ow)
        feeds["r"] = normal(inputs["r"], c["seed"] + 3)
        ins.append("r")
        std.append(helper.make_node("Add", [last, "r"], ["sum"]))
        last = "sum"
    std.append(helper.make_node({"": "Identity", "relu": "Relu", "sigmoid": "Sigmoid"}[act], [last], ["y"]))
    fused, plain = _pair([normrt_node("Conv", ins, ["y"], "conv", activation=act, **geo)], std, inputs, ["y"],
                         {"w": w, "b": b})
    check(fused, feeds, dtype, ref_model=plain, ulps=1.5, f32_rel=2.0 ** -16)


@DTYPES
@SETTINGS
@given(m_=st.integers(1, 9), k=st.integers(1, 40), n=st.integers(1, 24), batch=shapes(0, 2, 3),
       bias=st.booleans(), act=st.sampled_from(["", "relu", "gelu"]), seed=st.integers(0, 99))
def test_normrt_matmul_node(dtype, m_, k, n, batch, bias, act, seed):
    a = normal(batch + (m_, k), seed)
    inits = {"w": representable(normal((k, n), seed + 1), dtype)}
    ins, std = ["a", "w"], [helper.make_node("MatMul", ["a", "w"], ["mm"])]
    last = "mm"
    if bias:
        inits["bias"] = representable(normal((n,), seed + 2), dtype)
        ins.append("bias")
        std.append(helper.make_node("Add", ["mm", "bias"], ["biased"]))
        last = "biased"
    std.append(helper.make_node({"": "Identity", "relu": "Relu", "gelu": "Gelu"}[act], [last], ["y"]))
    fused, plain = _pair([normrt_node("MatMul", ins, ["y"], "mm", activation=act)], std, {"a": a.shape}, ["y"],
                         inits)
    plain.opset_import[0].version = 20
    # the terms summed: |a| @ |w| (a sum that cancels to ~1e-7 carries float32 errors of its terms)
    terms = np.abs(representable(a, dtype)).astype(np.float64) @ np.abs(inits["w"]).astype(np.float64)
    check(fused, {"a": a}, dtype, ref_model=plain, ulps=1.5, f32_rel=2.0 ** -16,
          scale=float(terms.max()) + (float(np.abs(inits["bias"]).max()) if bias else 0.0))


@DTYPES
@SETTINGS
@given(b=st.integers(1, 2), h=st.integers(1, 3), sq=st.integers(1, 12), skv=st.integers(1, 12),
       d=st.sampled_from([4, 8, 16]), causal=st.integers(0, 1), seed=st.integers(0, 99))
def test_normrt_attention_node(dtype, b, h, sq, skv, d, causal, seed):
    q, kt, v = normal((b, h, sq, d), seed), normal((b, h, d, skv), seed + 1), normal((b, h, skv, d), seed + 2)
    scale = float(1 / np.sqrt(d))
    node = normrt_node("Attention", ["q", "kt", "v"], ["y"], "attn", scale=scale, is_causal=causal)
    std = [helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["ss"])]
    last = "ss"
    if causal:
        std.append(helper.make_node("Add", ["ss", "mask"], ["sm"]))
        last = "sm"
    std += [helper.make_node("Softmax", [last], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    inputs = {"q": q.shape, "kt": kt.shape, "v": v.shape}
    # the causal mask (key j visible to query i when j <= i, as the kernel and ONNX Attention-23)
    mask = np.where(np.arange(skv)[None, :] <= np.arange(sq)[:, None], 0, -np.inf).astype(np.float32)
    fused = model([node], inputs, ["y"], normrt_domain=True)
    plain = model(std, inputs, ["y"], {"scale": np.float32(scale), "mask": mask})
    plain.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.float32(scale), "scale"))
    check(fused, {"q": q, "kt": kt, "v": v}, dtype, ref_model=plain, ulps=1.5, f32_rel=2.0 ** -16)


@DTYPES
@pytest.mark.parametrize("weights", ["float32", "half"])
@pytest.mark.parametrize("mode", ["per_op", "float32"])
def test_norm_kernel_node_gets_half_x_and_model_weights(dtype, weights, mode):
    """A normrt LayerNorm / GroupNorm reading half X keeps half X (no widening) and the model's weights in
    the dtype the model has them (mixed-precision exports keep float32 norm weights). per_op rounds the
    GroupNorm's output to half; float32 (the default) keeps it in float32 between the two norms."""
    rng = np.random.default_rng(3)
    x = representable(rng.standard_normal((2, 6, 5, 4)) * 3 + 1, dtype)
    wdt = np.float32 if weights == "float32" else dtype
    scale, bias = (representable(rng.standard_normal(6), dtype).astype(wdt) for _ in range(2))
    ln_s, ln_b = (representable(rng.standard_normal(4), dtype).astype(wdt) for _ in range(2))
    elem = {np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(ml_dtypes.bfloat16): TensorProto.BFLOAT16}[
        np.dtype(dtype)]
    nodes = [normrt_node("GroupNorm", ["x", "s", "b"], ["g"], "gn", num_groups=3, activation="silu"),
             normrt_node("LayerNorm", ["g", "ls", "lb"], ["y"], "ln")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, x.shape)],
                              [helper.make_tensor_value_info("y", elem, x.shape)],
                              [numpy_helper.from_array(a, n) for n, a in
                               (("s", scale), ("b", bias), ("ls", ln_s), ("lb", ln_b))])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("normrt", 1)])
    sess = normrt.InferenceSession(m.SerializeToString(), half_compute=mode)
    y = sess.run(None, {"x": x.astype(dtype)})[0]
    assert_no_fallback(sess)
    assert y.dtype == dtype
    # float64 reference of the two norms on the same values
    xd = x.astype(np.float64).reshape(2, 3, -1)
    g = ((xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
    g = g * scale.astype(np.float64)[:, None, None] + bias.astype(np.float64)[:, None, None]
    g = g / (1 + np.exp(-g))
    if mode == "per_op":
        g = g.astype(dtype).astype(np.float64)       # rounds the GroupNorm output to the model dtype
    ref = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5) * ln_s + ln_b
    assert_close_in_dtype(y, ref, dtype, ulps=1.0, f32_rel=2.0 ** -16)


# ------------------------------------------------------------------ whole models
DATA = __import__("pathlib").Path(__file__).parent.parent / "data"


@pytest.mark.parametrize("name", ["diffusers_unet2d__dynamo18", "hf_bert__dynamo18"])
def test_float16_model_matches_onnxruntime(name):
    """A float32 fixture converted to float16 (every tensor, as a `.half()` export): normrt's result agrees
    with onnxruntime's float16 run of the same file and is as close to the float32 model's as onnxruntime's.
    No op falls back to onnx.reference except the normalizations the rewrite passes left (named in the
    session's report, with their reason)."""
    ort = pytest.importorskip("onnxruntime")
    m32 = onnx.load(DATA / f"{name}.onnx")
    stored = np.load(DATA / f"{name}.npz")
    m16 = to_half(m32, np.float16)
    sess = normrt.InferenceSession(m16.SerializeToString())
    feeds = {i.name: stored[f"input:{i.name}"] for i in sess.get_inputs()}
    feeds = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()}
    y = sess.run(None, feeds)[0]
    assert y.dtype == np.float16
    refused = {n for e in sess.report["refused"] for n in e["nodes"]}
    fell = [s.node.name for s in sess.executor.steps if s.kind == "reference" and s.node.name not in refused]
    assert not fell, f"ops on onnx.reference: {fell}"
    assert not [s.node.op_type for s in sess.executor.steps if getattr(s.run, "fallback_runs", 0)]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    y_ort = ort.InferenceSession(m16.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    y32 = normrt.InferenceSession(m32.SerializeToString()).run(
        None, {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in feeds.items()})[0]
    scale = float(np.abs(y32).max())
    err = np.abs(y.astype(np.float64) - y32).max()
    err_ort = np.abs(y_ort.astype(np.float64) - y32).max()
    np.testing.assert_allclose(y.astype(np.float32), y_ort.astype(np.float32), rtol=0, atol=2.0 ** -7 * scale)
    assert err <= 2 * err_ort + 2.0 ** -10 * scale, (err, err_ort)


def test_inspect_shows_kernel_node_and_input_dtypes(tmp_path, capsys):
    """`normrt inspect` on a mixed-precision model: the model's input dtypes, and per kernel node its X -> Y
    element types with the weights' where they differ."""
    from normrt import cli
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 8])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 8])
    nodes = [normrt_node("LayerNorm", ["x", "s", "b"], ["ln"], "ln"),
             normrt_node("MatMul", ["ln", "w"], ["y"], "mm")]
    inits = [numpy_helper.from_array(np.ones(8, np.float32), "s"), numpy_helper.from_array(np.zeros(8, np.float32), "b"),
             numpy_helper.from_array(np.eye(8, dtype=np.float16), "w")]
    graph = helper.make_graph(nodes, "g", [x, ids], [y], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("normrt", 1)])
    path = tmp_path / "mixed.onnx"
    onnx.save(m, path)
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "inputs: x float16 [2, 8], ids int64 [2]" in out
    # (the model holds normrt nodes already, so its table lists no fusion: the cells it would show)
    from normrt.onnx.report import dtype_name, value_elem_types
    types = value_elem_types(m)
    assert (dtype_name(types["ln"]), dtype_name(types["y"])) == ("float16", "float16")
    assert cli._node_dtypes(m.graph.node[0], types) == "float16 (weights float32) -> float16"
    assert cli._node_dtypes(m.graph.node[1], types) == "float16 -> float16"


def test_inspect_types_ops_whose_schema_at_the_model_opset_lacks_bfloat16():
    """A bfloat16 Conv in an opset-18 model (Conv took bfloat16 in opset 22; normrt runs it): its
    output is typed from the op's newest schema, so the norm after it shows bfloat16 -> bfloat16."""
    from normrt import cli
    from normrt.onnx.report import value_elem_types
    bf = TensorProto.BFLOAT16
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             normrt_node("GroupNorm", ["c", "s", "b"], ["y"], "gn", num_groups=2)]
    inits = [numpy_helper.from_array(np.ones((4, 4, 1, 1), ml_dtypes.bfloat16), "w"),
             numpy_helper.from_array(np.ones(4, np.float32), "s"), numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", bf, [1, 4, 3, 3])],
                              [helper.make_tensor_value_info("y", bf, [1, 4, 3, 3])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("normrt", 1)])
    types = value_elem_types(m)
    assert types["c"] == bf
    assert cli._node_dtypes(m.graph.node[1], types) == "bfloat16 (weights float32) -> bfloat16"


@DTYPES
@SETTINGS
@given(op=st.sampled_from(["Shrink", "LpPool", "InstanceNormalization"]), c=st.integers(1, 4),
       hw=st.integers(2, 6), seed=st.integers(0, 99), offset=st.sampled_from([0.0, 40.0]))
def test_fallback_node_computes_in_float32(dtype, op, c, hw, seed, offset):
    """An op normrt does not implement in numpy (left to onnx.reference) still computes a half node in float32
    and rounds once: onnx.reference alone would run it in the half dtype (a bfloat16 InstanceNormalization of
    values near 40 loses its statistics)."""
    x = normal((2, c, hw, hw), seed) + np.float32(offset)
    attrs = {"Shrink": {"lambd": 0.5, "bias": 0.25}, "LpPool": {"kernel_shape": [2, 2], "p": 2}}.get(op, {})
    inputs, inits = ["x"], {}
    if op == "InstanceNormalization":
        inputs += ["s", "b"]
        inits = {"s": representable(normal((c,), seed + 1), dtype), "b": representable(normal((c,), seed + 2), dtype)}
    m32 = model([helper.make_node(op, inputs, ["y"], **attrs)], {"x": x.shape}, ["y"], inits)
    x = representable(x, dtype)
    ref = ReferenceEvaluator(m32).run(None, {"x": x})[0]
    m = to_half(typed(m32, [ref]), dtype)
    sess = normrt.InferenceSession(m.SerializeToString())
    assert [s.node.op_type for s in sess.executor.steps if s.kind == "reference"] in ([op], [])
    y = sess.run(None, {"x": x.astype(dtype)})[0]
    assert_close_in_dtype(y, ref, dtype, ulps=1.0, f32_rel=2.0 ** -16)


# ------------------------------------------------------------------ strided views
@DTYPES
@SETTINGS
@given(shape=shapes(min_rank=2, max_rank=4), seed=st.integers(0, 99), op=st.sampled_from(["Add", "Mul", "Cast"]))
def test_ops_on_a_strided_slice(dtype, shape, seed, op):
    """A Slice of the last axis is a strided view of its input: the half ops that widen their
    inputs to float32 read it as such (they once raised "ndarray is not C-contiguous")."""
    last = shape[-1] + 1
    full = shape[:-1] + (last,)
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a"], ["sl"])]
    if op == "Cast":
        nodes.append(helper.make_node("Cast", ["sl"], ["y"], to=F))
    else:
        nodes += [helper.make_node("Mul", ["sl", "k"], ["m"]), helper.make_node(op, ["m", "sl"], ["y"])]
    inits = {"s": np.array([0], np.int64), "e": np.array([last - 1], np.int64), "a": np.array([-1], np.int64),
             "k": np.array([1.5], np.float32)}
    check(model(nodes, {"x": full}, ["y"], inits), {"x": normal(full, seed)}, dtype, ulps=2.0)
