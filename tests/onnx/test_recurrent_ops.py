"""LSTM, GRU and RNN (normrt.onnx.ops.recurrent, pyx/recurrent.pyx) against onnx.reference for
what it implements (directions, layouts, biases, initial states, peepholes, GRU's
linear_before_reset) and against onnxruntime for what it ignores (clip, input_forget,
sequence_lens, non-default activations), on generated sizes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from test_ops import check, opnode, run_ours

import normrt
from normrt.onnx.ops.registry import lookup

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DIRS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def make_inputs(rng, kind, direction, seq, batch, inputs, hidden, layout=0, bias=True, states=True,
                peepholes=False, dtype=np.float32):
    d, g = DIRS[direction], GATES[kind]
    x = rng.standard_normal((batch, seq, inputs) if layout else (seq, batch, inputs)).astype(dtype)
    scale = 1 / np.sqrt(hidden)
    w = (rng.standard_normal((d, g * hidden, inputs)) * scale).astype(dtype)
    r = (rng.standard_normal((d, g * hidden, hidden)) * scale).astype(dtype)
    args = [x, w, r, (rng.standard_normal((d, 2 * g * hidden)) * 0.5).astype(dtype) if bias else None, None]
    state_shape = (batch, d, hidden) if layout else (d, batch, hidden)
    if states or peepholes:
        args.append(rng.standard_normal(state_shape).astype(dtype) if states else None)
        if kind == "LSTM":
            args.append(rng.standard_normal(state_shape).astype(dtype) if states else None)
            if peepholes:
                args.append((rng.standard_normal((d, 3 * hidden)) * 0.5).astype(dtype))
    return args


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(["LSTM", "GRU", "RNN"]))
    direction = draw(st.sampled_from(list(DIRS)))
    sizes = dict(seq=draw(st.integers(1, 7)), batch=draw(st.integers(1, 3)), inputs=draw(st.integers(1, 9)),
                 hidden=draw(st.sampled_from([1, 3, 4, 16, 21, 37])))
    layout = draw(st.integers(0, 1))
    opts = dict(bias=draw(st.booleans()), states=draw(st.booleans()),
                peepholes=kind == "LSTM" and draw(st.booleans()))
    attrs = dict(hidden_size=sizes["hidden"], direction=direction, layout=layout)
    if kind == "GRU":
        attrs["linear_before_reset"] = draw(st.integers(0, 1))
    return kind, direction, sizes, layout, opts, attrs, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=120, deadline=None)
@given(cases())
def test_matches_reference(case):
    kind, direction, sizes, layout, opts, attrs, seed = case
    args = make_inputs(np.random.default_rng(seed), kind, direction, layout=layout, **sizes, **opts)
    n_out = 3 if kind == "LSTM" else 2
    check(kind, args, attrs, opset=14, n_out=n_out, rtol=2e-5, atol=2e-6)


def ort_model(kind, args, attrs, n_out):
    names = ["x", "w", "r", "b", "lens", "h0", "c0", "p"][:len(args)]
    vis, feeds, inputs = [], {}, []
    for name, a in zip(names, args):
        if a is None:
            inputs.append("")
            continue
        inputs.append(name)
        vis.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape))
        feeds[name] = a
    outs = [helper.make_tensor_value_info(f"y{i}", helper.np_dtype_to_tensor_dtype(args[0].dtype), None)
            for i in range(n_out)]
    node = helper.make_node(kind, inputs, [o.name for o in outs], **attrs)
    model = helper.make_model(helper.make_graph([node], "g", vis, outs), opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model, feeds


def ort_run(kind, args, attrs, n_out):
    ort = pytest.importorskip("onnxruntime")
    model, feeds = ort_model(kind, args, attrs, n_out)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@settings(max_examples=60, deadline=None)
@given(cases(), st.sampled_from([0.0, 0.5, 3.0]), st.booleans(), st.booleans(),
       st.sampled_from([None, ["Relu"], ["Sigmoid", "Relu", "Tanh"]]))
def test_matches_onnxruntime_where_the_reference_ignores(case, clip, input_forget, with_lens, activations):
    """clip, input_forget, sequence_lens and chosen activations, which onnx.reference ignores."""
    kind, direction, sizes, _, opts, attrs, seed = case
    rng = np.random.default_rng(seed)
    args = make_inputs(rng, kind, direction, **sizes, **opts)     # onnxruntime takes layout 0 only
    attrs = {**attrs, "layout": 0}
    if with_lens:
        args[4] = rng.integers(1, sizes["seq"] + 1, sizes["batch"]).astype(np.int32)
        args[4][0] = sizes["seq"]       # onnxruntime sizes Y by the longest row
        if len(args) == 5:
            args.append(None)
    if clip:
        attrs["clip"] = clip
    if kind == "LSTM" and input_forget:
        attrs["input_forget"] = 1
    if activations is not None:
        acts = activations if kind == "LSTM" else ["Sigmoid", "Relu"] if kind == "GRU" else ["Relu"]
        if kind == "LSTM" and len(acts) == 1:
            acts = ["Sigmoid", "Relu", "Relu"]
        attrs["activations"] = acts * DIRS[direction]
    n_out = 3 if kind == "LSTM" else 2
    while args and args[-1] is None:
        args.pop()
    want = ort_run(kind, args, attrs, n_out)
    got = run_ours(kind, args, attrs, 14, n_out)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=5e-6)


def test_sequence_lens_zero_steps_past_the_end():
    rng = np.random.default_rng(1)
    args = make_inputs(rng, "LSTM", "bidirectional", 5, 3, 4, 6, states=False)
    args[4] = np.array([5, 2, 0], np.int32)
    y, yh, yc = run_ours("LSTM", args, dict(hidden_size=6, direction="bidirectional"), 14, 3)
    assert (y[2:, :, 1] == 0).all() and (y[:, :, 2] == 0).all() and (yh[:, 2] == 0).all()
    # row 1's final states are those of the same 2-step sequence run alone
    alone = [args[0][:2, 1:2], args[1], args[2], args[3]]
    y1, yh1, yc1 = run_ours("LSTM", alone, dict(hidden_size=6, direction="bidirectional"), 14, 3)
    np.testing.assert_array_equal(yh[:, 1], yh1[:, 0])
    np.testing.assert_array_equal(y[:2, :, 1], y1[:, :, 0])


@pytest.mark.parametrize("kind, direction, hidden, lbr", [
    ("LSTM", "bidirectional", 40, 0), ("GRU", "bidirectional", 40, 1), ("RNN", "bidirectional", 40, 0),
    # one direction, big enough that each step's units split over the threads (odd chunk at the end)
    ("LSTM", "forward", 130, 0), ("GRU", "reverse", 150, 0), ("GRU", "forward", 150, 1), ("RNN", "forward", 200, 0)])
def test_float64_and_bitwise_across_threads(kind, direction, hidden, lbr):
    rng = np.random.default_rng(2)
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        args = make_inputs(rng, kind, direction, 12, 2, 24, hidden, dtype=dtype)
        attrs = dict(hidden_size=hidden, direction=direction, **({"linear_before_reset": lbr} if kind == "GRU" else {}))
        n_out = 3 if kind == "LSTM" else 2
        check(kind, args, attrs, opset=14, n_out=n_out, rtol=rtol, atol=rtol)
        args[4] = np.array([12, 7], np.int32)      # and rows of their own lengths (the reference ignores them)
        ref = None
        for threads in (1, 2, 3):
            with normrt.threads(threads):
                out = run_ours(kind, args, attrs, 14, n_out)
            assert all(o.dtype == dtype for o in out)
            ref = out if ref is None else ref
            for a, b in zip(out, ref):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind, direction, hidden, lbr, dtype", [
    ("LSTM", "forward", 130, 0, np.float32), ("LSTM", "bidirectional", 37, 0, np.float32),
    ("LSTM", "reverse", 64, 0, np.float64), ("GRU", "reverse", 130, 0, np.float32),
    ("GRU", "forward", 64, 1, np.float32), ("GRU", "forward", 21, 0, np.float64),
    ("RNN", "reverse", 200, 0, np.float32)])
def test_batch_rows_bitwise_as_each_row_alone(kind, direction, hidden, lbr, dtype):
    """A step computes all its batch rows together (recurrent.pyx, several rows per pass over R):
    each row's outputs must be those of the row run alone with batch 1, bit for bit, with rows of
    other lengths beside it (some past their end, some of none) and on any thread count."""
    rng = np.random.default_rng(6)
    seq, batch = 9, 7
    args = make_inputs(rng, kind, direction, seq, batch, 11, hidden, peepholes=kind == "LSTM", dtype=dtype)
    args[4] = np.array([9, 0, 4, 9, 1, 7, 3], np.int32)
    attrs = dict(hidden_size=hidden, direction=direction, **({"linear_before_reset": lbr} if kind == "GRU" else {}))
    n_out = 3 if kind == "LSTM" else 2
    alone = []
    for b in range(batch):
        one = list(args)
        one[0] = np.ascontiguousarray(args[0][:, b:b + 1])
        one[4] = args[4][b:b + 1]
        one[5] = np.ascontiguousarray(args[5][:, b:b + 1])
        if kind == "LSTM":
            one[6] = np.ascontiguousarray(args[6][:, b:b + 1])
        with normrt.threads(1):
            alone.append(run_ours(kind, one, attrs, 14, n_out))
    for threads in (1, 2, 3):
        with normrt.threads(threads):
            y, *states = run_ours(kind, args, attrs, 14, n_out)
        for b in range(batch):
            np.testing.assert_array_equal(y[:, :, b], alone[b][0][:, :, 0])
            for got, want in zip(states, alone[b][1:]):
                np.testing.assert_array_equal(got[:, b], want[:, 0])


def test_saturated_gates_stay_finite():
    """Pre-activations of +-1e30 (and huge inputs) saturate the gates; no NaN appears."""
    rng = np.random.default_rng(3)
    args = make_inputs(rng, "LSTM", "forward", 4, 2, 3, 5)
    args[0] = args[0] * 1e30
    y, yh, yc = run_ours("LSTM", args, dict(hidden_size=5), 14, 3)
    assert np.isfinite(y).all() and np.abs(y).max() <= 1


def test_refuses_activations_it_does_not_implement():
    assert lookup(opnode("LSTM", dict(activations=["HardSigmoid", "Tanh", "Tanh"]), 14, 3, [np.zeros(1)] * 3)) is None
    assert lookup(opnode("GRU", dict(activations=["Sigmoid", "Tanh"], activation_alpha=[0.5]), 14, 2,
                         [np.zeros(1)] * 3)) is None
    assert lookup(opnode("RNN", dict(activations=["Relu"]), 14, 2, [np.zeros(1)] * 3)) is not None


def test_bad_weight_shape_is_a_clear_error():
    rng = np.random.default_rng(4)
    args = make_inputs(rng, "GRU", "forward", 3, 1, 4, 5)
    args[2] = args[2][:, :, :4]
    with pytest.raises(ValueError, match="R .* do not fit"):
        run_ours("GRU", args, dict(hidden_size=5), 14, 2)
    args = make_inputs(rng, "LSTM", "forward", 3, 2, 4, 5)
    args[4] = np.array([3, 4], np.int32)
    with pytest.raises(ValueError, match="sequence_lens"):
        run_ours("LSTM", args, dict(hidden_size=5), 14, 3)


def test_lstm_layer_norm_model_runs_without_fallback():
    """An exported-style LSTM -> Squeeze/Transpose -> LayerNorm graph on normrt's ops alone."""
    rng = np.random.default_rng(5)
    _, w, r, b, _, h0, c0 = make_inputs(rng, "LSTM", "bidirectional", 6, 2, 8, 16)
    inits = [numpy_helper.from_array(v, n) for v, n in ((w, "w"), (r, "r"), (b, "b"))]
    inits += [numpy_helper.from_array(np.array([6, 2, 32], np.int64), "shape"),
              numpy_helper.from_array(np.ones(32, np.float32), "gamma"),
              numpy_helper.from_array(np.zeros(32, np.float32), "beta")]
    nodes = [helper.make_node("LSTM", ["x", "w", "r", "b"], ["y"], hidden_size=16, direction="bidirectional"),
             helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["yt", "shape"], ["flat"]),
             helper.make_node("LayerNormalization", ["flat", "gamma", "beta"], ["out"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 2, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = normrt.InferenceSession(model)
    assert not [s.node.op_type for s in sess.executor.steps if s.kind == "reference"]
    x = rng.standard_normal((6, 2, 8)).astype(np.float32)
    from onnx.reference import ReferenceEvaluator
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ReferenceEvaluator(model).run(None, {"x": x})[0],
                               rtol=2e-5, atol=2e-5)


def test_pack_r_layout():
    """pack_r's panels: p[((ch * G + g) * H + i) * 32 + u] = R[g*H + ch*32 + u][i], zeros past H."""
    from normrt._kernels import recurrent as krec
    rng = np.random.default_rng(7)
    for gates, hidden in ((4, 37), (3, 32), (1, 5), (4, 64)):
        r = rng.standard_normal((2, gates * hidden, hidden)).astype(np.float32)
        out = np.empty((2, krec.packed_r_size(gates, hidden)), np.float32)
        krec.pack_r(r, out)
        nch = -(-hidden // 32)
        padded = np.zeros((2, gates, nch * 32, hidden), np.float32)
        padded[:, :, :hidden] = r.reshape(2, gates, hidden, hidden)
        # (D, G, ch, u, i) -> (D, ch, G, i, u)
        want = padded.reshape(2, gates, nch, 32, hidden).transpose(0, 2, 1, 4, 3).reshape(2, -1)
        np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="packed_r_size"):
        krec.pack_r(r, np.empty((2, 3), np.float32))


@st.composite
def batch_cases(draw):
    kind = draw(st.sampled_from(["LSTM", "GRU", "RNN"]))
    direction = draw(st.sampled_from(list(DIRS)))
    sizes = dict(seq=draw(st.integers(1, 4)), batch=draw(st.integers(1, 12)), inputs=draw(st.integers(1, 6)),
                 hidden=draw(st.sampled_from([1, 5, 31, 32, 33, 64, 70])))
    lbr = draw(st.integers(0, 1)) if kind == "GRU" else 0
    return kind, direction, sizes, lbr, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=30, deadline=None)
@given(batch_cases())
def test_packed_products_any_batch(case):
    """float32 steps run on R packed as panels (recurrent_kernel.h's outer products: 8 x 2, 4 x 4,
    2 x 8 ... blocks by batch size and gate count): against onnx.reference, each batch row bit for
    bit the row run alone, and a constant R (packed once, cached) the same bits as R fed each run."""
    kind, direction, sizes, lbr, seed = case
    args = make_inputs(np.random.default_rng(seed), kind, direction, **sizes)
    attrs = dict(hidden_size=sizes["hidden"], direction=direction,
                 **({"linear_before_reset": lbr} if kind == "GRU" else {}))
    n_out = 3 if kind == "LSTM" else 2
    got = check(kind, args, attrs, opset=14, n_out=n_out, rtol=2e-5, atol=2e-6)
    const = list(args)
    const[2] = args[2].copy()
    const[2].flags.writeable = False
    for a, b in zip(run_ours(kind, const, attrs, 14, n_out), got):
        np.testing.assert_array_equal(a, b)
    b = sizes["batch"] - 1
    one = list(args)
    one[0] = np.ascontiguousarray(args[0][:, b:b + 1])
    one[5] = np.ascontiguousarray(args[5][:, b:b + 1])
    if kind == "LSTM":
        one[6] = np.ascontiguousarray(args[6][:, b:b + 1])
    alone = run_ours(kind, one, attrs, 14, n_out)
    np.testing.assert_array_equal(got[0][:, :, b], alone[0][:, :, 0])


@pytest.mark.parametrize("kind, acts", [("LSTM", ["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Relu", "Relu"]),
                                        ("GRU", ["Sigmoid", "Tanh", "Sigmoid", "Relu"]), ("RNN", ["Tanh", "Relu"])])
@pytest.mark.parametrize("hidden", [5, 40])
def test_bidirectional_with_activations_of_its_own_per_direction(kind, acts, hidden):
    """Directions with different activations run one kernel call each (each on its row of the packed
    R): onnxruntime's values."""
    args = make_inputs(np.random.default_rng(hidden), kind, "bidirectional", 4, 3, 6, hidden)
    attrs = dict(hidden_size=hidden, direction="bidirectional", activations=acts)
    n_out = 3 if kind == "LSTM" else 2
    for g, w in zip(run_ours(kind, args, attrs, 14, n_out), ort_run(kind, args, attrs, n_out)):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
