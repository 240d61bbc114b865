"""DFT (17, 20) and STFT (17) on numpy's FFT, against onnx.reference over generated shapes, axes,
lengths, directions and one-sided forms, and STFT against torch.stft; a model with them gets a
specialized plan (no reference fallback); malformed inputs raise naming the op."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt


def _model(node, inputs, inits, opset):
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def _compare(model, feeds, rtol=2e-5):
    sess = normrt.InferenceSession(model)
    assert all(step.kind == "numpy" for step in sess.executor.steps)       # no onnx.reference fallback
    got = [sess.run(None, feeds)[0] for _ in range(3)]                     # generic, traced, specialized
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    scale = max(float(np.abs(want).max()), 1.0)
    for g in got:
        assert g.shape == want.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, want, rtol=rtol, atol=rtol * scale)
    return sess


@settings(max_examples=60, deadline=None)
@given(dims=st.lists(st.integers(1, 9), min_size=1, max_size=3), complex_in=st.booleans(), opset=st.sampled_from([17, 20]),
       inverse=st.booleans(), onesided=st.booleans(), length=st.one_of(st.none(), st.integers(1, 12)),
       axis_pick=st.integers(0, 5), negative=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_dft_matches_the_reference(dims, complex_in, opset, inverse, onesided, length, axis_pick, negative, seed):
    rng = np.random.default_rng(seed)
    shape = [2] + dims + [2 if complex_in else 1]
    axis = 1 + axis_pick % len(dims)                    # a signal axis (not the batch, not the last)
    if inverse and onesided and length is None and shape[axis] == 1:
        length = 1                                      # (the default 2 (n - 1) would be 0)
    x = rng.standard_normal(shape).astype(np.float32)
    ins, inits, node_in = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], [], ["x"]
    node_in.append("n" if length is not None else "")
    if length is not None:
        inits.append(numpy_helper.from_array(np.array(length, np.int64), "n"))
    attrs = {"inverse": int(inverse), "onesided": int(onesided)}
    if opset == 17:
        attrs["axis"] = axis
    else:
        node_in.append("a")
        inits.append(numpy_helper.from_array(np.array(axis - len(shape) if negative else axis, np.int64), "a"))
    while node_in and node_in[-1] == "":
        node_in.pop()
    _compare(_model(helper.make_node("DFT", node_in, ["y"], **attrs), ins, inits, opset), {"x": x})


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), length=st.integers(8, 70), frame=st.integers(1, 16), step=st.integers(1, 9),
       window=st.booleans(), give_length=st.booleans(), onesided=st.booleans(), complex_in=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_stft_matches_the_reference(batch, length, frame, step, window, give_length, onesided, complex_in, seed):
    if onesided and complex_in:
        return                          # (ONNX: onesided needs a real signal)
    rng = np.random.default_rng(seed)
    frame = min(frame, length)
    x = rng.standard_normal((batch, length, 2 if complex_in else 1)).astype(np.float32)
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)]
    inits = [numpy_helper.from_array(np.array(step, np.int64), "step")]
    node_in = ["x", "step", "", ""]
    if window:
        inits.append(numpy_helper.from_array(np.hanning(frame).astype(np.float32), "w"))
        node_in[2] = "w"
    if give_length or not window:
        inits.append(numpy_helper.from_array(np.array(frame, np.int64), "len"))
        node_in[3] = "len"
    while node_in[-1] == "":
        node_in.pop()
    node = helper.make_node("STFT", node_in, ["y"], onesided=int(onesided))
    _compare(_model(node, ins, inits, 17), {"x": x})


def test_stft_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 400)).astype(np.float32)
    n_fft, hop = 64, 16
    window = np.hanning(n_fft).astype(np.float32)
    want = torch.view_as_real(torch.stft(torch.from_numpy(x), n_fft, hop, window=torch.from_numpy(window),
                                         center=False, return_complex=True)).numpy()    # (batch, bins, frames, 2)
    node = helper.make_node("STFT", ["x", "step", "w"], ["y"], onesided=1)
    model = _model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 400, 1])],
                   [numpy_helper.from_array(np.array(hop, np.int64), "step"), numpy_helper.from_array(window, "w")], 17)
    got = normrt.InferenceSession(model).run(None, {"x": x[..., None]})[0]
    np.testing.assert_allclose(got, want.transpose(0, 2, 1, 3), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op,shape,attrs,message", [
    ("DFT", (2, 8, 3), {"axis": 1}, r"1 \(real\) or 2"),
    ("DFT", (2, 8, 1), {"axis": 2}, "not a signal axis"),
])
def test_malformed_inputs_raise(op, shape, attrs, message):
    model = _model(helper.make_node(op, ["x"], ["y"], **attrs), [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                   [], 17)
    sess = normrt.InferenceSession(model)
    with pytest.raises(ValueError, match=message):
        sess.run(None, {"x": np.zeros(shape, np.float32)})
