"""Quantization ops (normrt.onnx.ops.quantize) against onnx.reference (opsets it implements) and
onnxruntime (the opset-10/13 forms its quantization tools write), and a model quantized by
onnxruntime.quantization end to end."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from test_ops import check, run_ort, run_ours

import normrt

INTS = [np.int8, np.uint8, np.int16, np.uint16]


def _ints(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


@st.composite
def scale_layouts(draw):
    """(x shape, attrs, scale shape): per tensor, per axis, or blocked along an axis."""
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    kind = draw(st.sampled_from(["tensor", "axis", "block"]))
    if kind == "tensor":
        return shape, {}, ()
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    a = axis % len(shape)
    if kind == "axis":
        return shape, {"axis": axis}, (shape[a],)
    block = draw(st.integers(1, 4))
    s = list(shape)
    s[a] = -(-shape[a] // block)
    return shape, {"axis": axis, "block_size": block}, tuple(s)


def expand(v, shape, attrs):
    """A scale / zero point broadcast to x's shape, written out independently of normrt."""
    if "axis" not in attrs:
        return np.broadcast_to(v, shape)
    axis = attrs["axis"] % len(shape)
    if "block_size" in attrs:
        v = np.repeat(v, attrs["block_size"], axis=axis)
        return v[(slice(None),) * axis + (slice(0, shape[axis]),)]
    return v.reshape([-1 if a == axis else 1 for a in range(len(shape))])


@settings(max_examples=80, deadline=None)
@given(scale_layouts(), st.sampled_from(INTS + [np.int32]), st.sampled_from([np.float32, np.float16]),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_dequantize_matches_reference(layout, qtype, stype, with_zero_point, seed):
    shape, attrs, sshape = layout
    rng = np.random.default_rng(seed)
    x = _ints(rng, qtype, shape)
    scale = rng.uniform(0.001, 2.0, sshape).astype(stype)
    args = [x, scale] + ([_ints(rng, qtype, sshape)] if with_zero_point and qtype != np.int32 else [])
    tol = 1e-6 if stype == np.float32 else 1e-3
    check("DequantizeLinear", args, attrs, opset=21, rtol=tol, atol=0)


@settings(max_examples=80, deadline=None)
@given(scale_layouts(), st.sampled_from(INTS), st.sampled_from([np.float32, np.float16]), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_quantize_matches_reference(layout, qtype, xtype, with_zero_point, seed):
    shape, attrs, sshape = layout
    rng = np.random.default_rng(seed)
    scale = rng.choice([0.5, 0.25, 0.1, 1 / 3, 2.0], sshape).astype(xtype)
    # values on and near the rounding ties, and far beyond the type's range (saturation)
    x = (rng.integers(-600, 600, shape) / 2 * rng.choice([1.0, 0.1, 37.0], shape)).astype(xtype)
    if with_zero_point:
        args = [x, scale, _ints(rng, qtype, sshape)]
    else:
        args = [x, scale]
        attrs = {**attrs, "output_dtype": helper.np_dtype_to_tensor_dtype(np.dtype(qtype))}
    if xtype == np.float32:
        check("QuantizeLinear", args, attrs, opset=21)
        return
    # float16: the reference divides in float16 (one more rounding); normrt divides the exact
    # half values in float32, which is the exact quotient's rounding here: compare with float64
    got = run_ours("QuantizeLinear", args, attrs, 21, 1)[0]
    want = np.rint(x.astype(np.float64) / expand(scale.astype(np.float64), shape, attrs))
    if with_zero_point:
        want = want + expand(args[2].astype(np.float64), shape, attrs)
    info = np.iinfo(qtype)
    np.testing.assert_array_equal(got, np.clip(want, info.min, info.max).astype(qtype))


@pytest.mark.parametrize("opset", [10, 13])
def test_quantize_dequantize_old_opsets_match_onnxruntime(opset):
    """The forms quantize_static writes (uint8 activations, int8 per-channel weights at 13)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5)).astype(np.float32) * 4
    scale, zp = np.array(0.037, np.float32), np.array(131, np.uint8)
    check("QuantizeLinear", [x, scale, zp], {}, opset=opset, ref="ort")
    q = _ints(rng, np.uint8, (2, 3, 5))
    check("DequantizeLinear", [q, scale, zp], {}, opset=opset, ref="ort", rtol=1e-6, atol=0)
    if opset == 13:
        w = _ints(rng, np.int8, (4, 3, 3))
        ws = rng.uniform(0.01, 0.1, 4).astype(np.float32)
        check("DequantizeLinear", [w, ws, np.zeros(4, np.int8)], {"axis": 0}, opset=13, ref="ort",
              rtol=1e-6, atol=0)
    bias = rng.integers(-(2**30), 2**30, 7).astype(np.int32)
    check("DequantizeLinear", [bias, np.array(1e-4, np.float32)], {}, opset=opset, ref="ort", rtol=1e-6, atol=0)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["mixed", "positive", "negative", "zeros", "constant"]))
def test_dynamic_quantize_matches_reference(seed, kind):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 7)).astype(np.float32) * rng.uniform(0.01, 100)
    x = {"mixed": x, "positive": np.abs(x), "negative": -np.abs(x), "zeros": 0 * x,
         "constant": np.full_like(x, 2.5)}[kind]
    check("DynamicQuantizeLinear", [x], {}, opset=11, n_out=3, rtol=1e-6, atol=0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(1, 6), st.sampled_from(["none", "scalar", "vector"]),
       st.sampled_from([np.int8, np.uint8]), st.sampled_from([np.int8, np.uint8]), st.integers(0, 2**31 - 1))
def test_integer_products_match_reference(m, k, n, zp_kind, at, bt, seed):
    rng = np.random.default_rng(seed)
    a, b = _ints(rng, at, (2, m, k)), _ints(rng, bt, (k, n))
    args = [a, b]
    if zp_kind != "none":
        args += [_ints(rng, at, () if zp_kind == "scalar" else (m,)), _ints(rng, bt, () if zp_kind == "scalar" else (n,))]
    if zp_kind == "vector":
        # the reference subtracts a (M,) a_zero_point along A's last axis, not per row as the
        # spec says (it fails when K != M): the product written out in int64 instead
        want = (a.astype(np.int64) - args[2].astype(np.int64)[:, None]) @ (b.astype(np.int64) - args[3].astype(np.int64))
        np.testing.assert_array_equal(run_ours("MatMulInteger", args, {}, 10, 1)[0], want.astype(np.int32))
    else:
        check("MatMulInteger", args, {}, opset=10)
    a2 = a[0]
    sc = [np.array(rng.uniform(0.01, 0.1), np.float32) for _ in range(3)]
    zps = [_ints(rng, at, ()), _ints(rng, bt, ()), _ints(rng, np.uint8, ())]
    check("QLinearMatMul", [a2, sc[0], zps[0], b, sc[1], zps[1], sc[2], zps[2]], {}, opset=10)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(3, 7), st.sampled_from([1, 3]), st.integers(0, 1),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_integer_convs_match_reference(c, m, size, kernel, pad, per_channel, seed):
    rng = np.random.default_rng(seed)
    x = _ints(rng, np.uint8, (1, c, size, size))
    w = _ints(rng, np.int8, (m, c, kernel, kernel))
    attrs = dict(pads=[pad] * 4, kernel_shape=[kernel, kernel])
    check("ConvInteger", [x, w, _ints(rng, np.uint8, ()), np.zeros((), np.int8)], attrs, opset=10)
    ws = (rng.uniform(0.01, 0.05, m) if per_channel else np.array(rng.uniform(0.01, 0.05))).astype(np.float32)
    bias = rng.integers(-5000, 5000, m).astype(np.int32)
    args = [x, np.array(0.02, np.float32), _ints(rng, np.uint8, ()), w, ws,
            np.zeros(ws.shape, np.int8), np.array(0.5, np.float32), _ints(rng, np.uint8, ()), bias]
    check("QLinearConv", args, attrs, opset=10)


def test_refuses_types_it_does_not_implement():
    from test_ops import refused
    assert refused("QuantizeLinear", {"output_dtype": TensorProto.FLOAT8E4M3FN}, opset=21, n_in=2)
    assert refused("QuantizeLinear", {"precision": TensorProto.FLOAT16}, opset=23, n_in=2)
    assert not refused("QuantizeLinear", {"output_dtype": TensorProto.INT16}, opset=21, n_in=2)


def test_bad_scale_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="per-axis"):
        run_ours("DequantizeLinear", [np.zeros((2, 3), np.int8), np.ones(4, np.float32)], {"axis": 1}, 13, 1)
    with pytest.raises(ValueError, match="blocked"):
        run_ours("DequantizeLinear", [np.zeros((2, 6), np.int8), np.ones((2, 2), np.float32)],
                 {"axis": 1, "block_size": 2}, 21, 1)


def test_onnxruntime_quantized_model_runs_with_folded_weights(tmp_path):
    """A Conv -> BatchNorm -> Relu -> Gemm model quantized by onnxruntime.quantization (QDQ,
    int8 per-channel weights): loads, runs on normrt's ops alone, its weight DequantizeLinears
    folded to float constants, and gives onnxruntime's outputs within one quantization step."""
    quant = pytest.importorskip("onnxruntime.quantization")
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w")
    fc = numpy_helper.from_array(rng.standard_normal((10, 8 * 6 * 6)).astype(np.float32) * 0.05, "fc")
    bn = [numpy_helper.from_array(v.astype(np.float32), n) for v, n in
          ((rng.uniform(0.5, 1.5, 8), "g"), (rng.standard_normal(8) * 0.1, "b"), (rng.standard_normal(8) * 0.1, "mu"),
           (rng.uniform(0.5, 2, 8), "var"))]
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, fc, shape, *bn])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    import onnx
    onnx.save(model, src)
    feeds = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(4)]

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quant.quantize_static(str(src), str(dst), Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=True,
                          activation_type=quant.QuantType.QUInt8, weight_type=quant.QuantType.QInt8)
    sess = normrt.InferenceSession(str(dst))
    assert not [s.node.op_type for s in sess.executor.steps if s.kind == "reference"]
    inits = {t.name for t in sess.optimized_model.graph.initializer}
    assert not [n for n in sess.optimized_model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    ort = pytest.importorskip("onnxruntime")
    o = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    for f in feeds:
        got, want = sess.run(None, f)[0], o.run(None, f)[0]
        # int8 kernels (onnxruntime) and exact dequantized float math (normrt) may round one
        # activation differently: a few quantization steps of the output at most
        np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max() + 1e-3)


@pytest.mark.parametrize("at, bt", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)])
def test_matmul_integer_on_the_float_kernel_is_exact(at, bt):
    """A constant weight takes normrt's float32 GEMM in K ranges whose partial sums stay below
    2^24: extreme values over K = 3000 (one float32 pass would round) give the exact int32."""
    rng = np.random.default_rng(6)
    a = _ints(rng, at, (2, 5, 3000))
    a[0, 0] = np.iinfo(at).max
    b = _ints(rng, bt, (3000, 7))
    b[:, 0] = np.iinfo(bt).min
    b.flags.writeable = False           # an initializer: packed once, in K ranges
    for azp, bzp in ((None, None), (np.array(3, at), np.array(7, bt))):
        args = [a, b] if azp is None else [a, b, azp, bzp]
        want = ((a.astype(np.int64) - (0 if azp is None else int(azp)))
                @ (b.astype(np.int64) - (0 if bzp is None else int(bzp))))
        got = run_ours("MatMulInteger", args, {}, 10, 1)[0]
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want.astype(np.int32))


@pytest.mark.parametrize("value", [0.0, 3.75, -200.0, 1e4])
def test_scalar_tensors(value):
    """0-d tensors (a Pad's quantized constant value in a QDQ model): numpy's scalar results
    must come back as arrays, and constant folding must be able to evaluate the pair."""
    x = np.array(value, np.float32)
    check("QuantizeLinear", [x, np.array(0.5, np.float32), np.array(3, np.uint8)], {}, opset=19)
    check("QuantizeLinear", [x, np.array(0.25, np.float32)], {"output_dtype": TensorProto.INT8}, opset=21)
    check("DynamicQuantizeLinear", [x], {}, opset=11, n_out=3, rtol=1e-6, atol=0)
    check("DequantizeLinear", [np.array(-7, np.int8), np.array(0.5, np.float32), np.array(3, np.int8)], {},
          opset=19, rtol=1e-6, atol=0)
    # far beyond the type: saturated (onnx.reference's int8 cast wraps 4e9 to -128 instead)
    big = run_ours("QuantizeLinear", [np.array(1e9, np.float32), np.array(0.25, np.float32), np.array(0, np.int8)],
                   {}, 19, 1)[0]
    assert big == 127
