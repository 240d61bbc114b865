"""onnxruntime's DynamicQuantizeLSTM (quantize_dynamic's LSTMs) as the standard LSTM of its
dequantized weights (passes/quantized_lstm.py): the whole model against onnx.reference's LSTM of
weights dequantized here, on generated directions, sizes, 8-bit types and scale shapes; against
onnxruntime's own kernel within its activations' 8-bit rounding; and the refusals."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from test_recurrent_ops import DIRS, make_inputs

import normrt

ORDER = ["x", "w", "r", "b", "lens", "h0", "c0", "p"]


def quantize(w, codes_type, per_column, symmetric):
    """(codes [D, cols, 4H] of w [D, 4H, cols] transposed, scale, zero point), as quantize_dynamic
    stores them: per direction [D] or per gate column [D, 4H]; symmetric: int8, zero points 0."""
    wt = w.transpose(0, 2, 1)                                 # [D, cols, 4H]
    axes = (1,) if per_column else (1, 2)
    lo, hi = (-128, 127) if codes_type == np.int8 else (0, 255)
    mn, mx = np.minimum(wt.min(axis=axes), 0), np.maximum(wt.max(axis=axes), 0)
    if symmetric:
        scale = (np.maximum(-mn, mx) / 127).astype(np.float32) + np.float32(1e-8)
        zero = np.zeros(scale.shape, codes_type)
    else:
        scale = ((mx - mn) / (hi - lo)).astype(np.float32) + np.float32(1e-8)
        zero = np.clip(np.round(lo - mn / scale), lo, hi).astype(codes_type)
    shape = (w.shape[0], 1, -1) if per_column else (w.shape[0], 1, 1)
    codes = np.clip(np.round(wt / scale.reshape(shape)) + zero.reshape(shape).astype(np.float64), lo, hi)
    return codes.astype(codes_type), scale, zero


def dequantized(codes, scale, zero):
    """float32 [D, 4H, cols], element by element: (code - zero point) * scale of its column."""
    D, cols, gh = codes.shape
    out = np.empty((D, gh, cols), np.float32)
    for d in range(D):
        for j in range(gh):
            s = scale[d, j] if scale.ndim == 2 else scale[d]
            z = zero[d, j] if zero.ndim == 2 else zero[d]
            out[d, j, :] = (codes[d, :, j].astype(np.float32) - np.float32(z)) * s
    return out


def models(args, attrs, codes_type, per_column, symmetric=False, zero_points=True):
    """(DynamicQuantizeLSTM model, standard LSTM model of the dequantized weights, feeds);
    zero_points False leaves the (symmetric) zero points out."""
    w, r = args[1], args[2]
    (wq, ws, wz), (rq, rs, rz) = (quantize(v, codes_type, per_column, symmetric) for v in (w, r))
    consts, inputs, vis, feeds = {}, [], [], {}
    for name, a in zip(ORDER, args):
        if a is None:
            inputs.append("")
        elif name in ("w", "r"):
            inputs.append(name)
        elif name in ("b", "p"):
            inputs.append(name)
            consts[name] = a
        else:
            inputs.append(name)
            feeds[name] = a
            vis.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape))
    inputs += [""] * (8 - len(inputs))
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "yh", "yc")]

    def build(node, weights):
        inits = [numpy_helper.from_array(v, k) for k, v in {**consts, **weights}.items()]
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(helper.make_graph([node], "g", vis, outs, inits), opset_imports=opsets)
        model.ir_version = 8
        return model

    q = {"w": wq, "r": rq, "ws": ws, "rs": rs}
    names = ["ws", "wz", "rs", "rz"] if zero_points else ["ws", "", "rs", ""]
    if zero_points:
        q.update(wz=wz, rz=rz)
    else:
        assert not wz.any() and not rz.any()
    quant = build(helper.make_node("DynamicQuantizeLSTM", inputs + names, ["y", "yh", "yc"], name="qlstm",
                                   domain="com.microsoft", **attrs), q)
    flat = build(helper.make_node("LSTM", inputs, ["y", "yh", "yc"], name="lstm", **attrs),
                 {"w": dequantized(wq, ws, wz), "r": dequantized(rq, rs, rz)})
    return quant, flat, feeds


@st.composite
def cases(draw):
    direction = draw(st.sampled_from(list(DIRS)))
    sizes = dict(seq=draw(st.integers(1, 6)), batch=draw(st.integers(1, 3)), inputs=draw(st.integers(1, 9)),
                 hidden=draw(st.sampled_from([1, 4, 16, 21])))
    opts = dict(bias=draw(st.booleans()), states=draw(st.booleans()), peepholes=draw(st.booleans()))
    codes = draw(st.sampled_from([np.int8, np.uint8]))
    symmetric = codes == np.int8 and draw(st.booleans())
    return direction, sizes, opts, codes, draw(st.booleans()), symmetric, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=60, deadline=None)
@given(cases())
def test_is_the_lstm_of_the_dequantized_weights(case):
    direction, sizes, opts, codes, per_column, symmetric, seed = case
    rng = np.random.default_rng(seed)
    args = make_inputs(rng, "LSTM", direction, **sizes, **opts)
    attrs = dict(hidden_size=sizes["hidden"], direction=direction)
    quant, flat, feeds = models(args, attrs, codes, per_column, symmetric)
    sess = normrt.InferenceSession(quant.SerializeToString())
    assert {n.op_type for n in sess.optimized_model.graph.node} == {"LSTM"}
    got = sess.run(None, feeds)
    want = ReferenceEvaluator(flat).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


def test_without_zero_points_and_with_sequence_lengths():
    """quantize_dynamic's symmetric int8 weights leave the zero points out; sequence_lens and the
    attributes (clip, input_forget) pass to the LSTM as written (onnx.reference ignores them:
    normrt's own LSTM of the dequantized weights is the reference)."""
    rng = np.random.default_rng(3)
    args = make_inputs(rng, "LSTM", "bidirectional", seq=5, batch=3, inputs=7, hidden=8)
    args[4] = np.array([5, 2, 4], np.int32)
    attrs = dict(hidden_size=8, direction="bidirectional", clip=2.0, input_forget=1)
    quant, flat, feeds = models(args, attrs, np.int8, True, symmetric=True, zero_points=False)
    got = normrt.InferenceSession(quant.SerializeToString()).run(None, feeds)
    want = normrt.InferenceSession(flat.SerializeToString()).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
# onnxruntime takes int8 weights with zero points 0 only, uint8 ones with one zero point per direction
@pytest.mark.parametrize("codes, per_column, symmetric", [(np.int8, False, True), (np.int8, True, True),
                                                          (np.uint8, False, False)])
def test_within_8_bit_rounding_of_onnxruntime(ort_cpu_run, direction, codes, per_column, symmetric):
    """onnxruntime rounds X and every step's H to 8 bits as well: the difference is that rounding
    (a wrong transposition, zero point or scale would be off by the outputs' own size)."""
    rng = np.random.default_rng(7)
    args = make_inputs(rng, "LSTM", direction, seq=12, batch=2, inputs=24, hidden=32)
    attrs = dict(hidden_size=32, direction=direction)
    quant, flat, feeds = models(args, attrs, codes, per_column, symmetric)
    got = normrt.InferenceSession(quant.SerializeToString()).run(None, feeds)
    ort = ort_cpu_run(quant.SerializeToString(), feeds)
    for g, o in zip(got, ort):
        assert np.abs(g - o).max() < 0.025          # measured 0.004-0.012, outputs up to 2.7


def test_refuses_a_scale_that_is_not_a_constant():
    rng = np.random.default_rng(0)
    args = make_inputs(rng, "LSTM", "forward", seq=3, batch=1, inputs=4, hidden=4)
    quant, _, feeds = models(args, dict(hidden_size=4, direction="forward"), np.int8, False)
    scale = next(i for i in quant.graph.initializer if i.name == "ws")
    quant.graph.input.append(helper.make_tensor_value_info("ws", TensorProto.FLOAT, list(scale.dims)))
    quant.graph.initializer.remove(scale)
    with pytest.raises(NotImplementedError, match="qlstm"):
        normrt.InferenceSession(quant.SerializeToString())
    _, report = normrt.optimize(quant, report=True)
    assert any(r["pass"] == "quantized_lstm" and "not a constant" in r["reason"] for r in report["refused"])


def test_refuses_a_weight_of_the_wrong_shape():
    rng = np.random.default_rng(0)
    args = make_inputs(rng, "LSTM", "forward", seq=3, batch=1, inputs=4, hidden=4)
    quant, _, _ = models(args, dict(hidden_size=4, direction="forward"), np.int8, False)
    for a in quant.graph.node[0].attribute:
        if a.name == "hidden_size":
            a.i = 5
    _, report = normrt.optimize(quant, report=True)
    reasons = [r["reason"] for r in report["refused"] if r["pass"] == "quantized_lstm"]
    assert reasons and "not 8-bit [1, *, 20]" in reasons[0]
