"""GatherElements on pyx/gather.pyx: generated shapes, axes, index signs and dtypes against the
spec written out with numpy (the indices may be shorter than the data on the other axes), the
generic op and the specialized plan's step, any thread count, and out-of-range indices refused."""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import normrt
from normrt._kernels import gather as _kgather
from normrt.onnx.ops.shape_ops import gather_elements_into

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, np.int64, np.uint8, np.float64]


def spec(x, idx, axis):
    """GatherElements as the spec writes it: out[i...] = x[i... with i[axis] = idx[i...]]."""
    out = np.empty(idx.shape, x.dtype)
    for pos in np.ndindex(*idx.shape):
        k = int(idx[pos])
        k = k + x.shape[axis] if k < 0 else k
        out[pos] = x[pos[:axis] + (k,) + pos[axis + 1:]]
    return out


@st.composite
def cases(draw):
    rank = draw(st.integers(1, 4))
    shape = [draw(st.integers(1, 6)) for _ in range(rank)]
    axis = draw(st.integers(-rank, rank - 1))
    a = axis % rank
    # indices: any length on the axis, at most the data's on the others
    ishape = [draw(st.integers(1, 7)) if d == a else draw(st.integers(1, shape[d])) for d in range(rank)]
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    idx = rng.integers(-shape[a], shape[a], ishape).astype(draw(st.sampled_from([np.int64, np.int32])))
    return shape, axis, idx, rng


@settings(max_examples=80, deadline=None)
@given(case=cases(), dtype=st.sampled_from(DTYPES), threads=st.integers(1, 3))
def test_generated_against_the_spec(case, dtype, threads):
    shape, axis, idx, rng = case
    x = (rng.standard_normal(shape) * 30).astype(dtype)
    want = spec(x, idx, axis % len(shape))
    with normrt.threads(threads):
        got = gather_elements_into(x, idx, axis % len(shape), None)
    assert got.dtype == x.dtype and got.shape == idx.shape
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("threads", [1, 2])
def test_deberta_shaped_gather_in_a_session(threads):
    """(heads, seq, seq) scores picked from (heads, seq, 2 * span) along the last axis, as DeBERTa's
    c2p exports it: the generic op and the specialized step, the spec's values (onnx.reference's
    np.choose takes at most 32 choices)."""
    h, s, span = 4, 79, 512
    rng = np.random.default_rng(0)
    idx = np.clip(np.arange(s)[:, None] - np.arange(s)[None, :] + span // 2, 0, span - 1)
    idx = np.broadcast_to(idx, (h, s, s)).astype(np.int64)
    nodes = [helper.make_node("Neg", ["x"], ["n"]),
             helper.make_node("GatherElements", ["n", "i"], ["g"], axis=-1),
             helper.make_node("Transpose", ["g"], ["y"], perm=[0, 2, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [h, s, span])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [h, s, s])],
                              [numpy_helper.from_array(idx, "i")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((h, s, span)).astype(np.float32)
    want = spec(-x, idx, 2).transpose(0, 2, 1)
    sess = normrt.InferenceSession(model, num_threads=threads)
    generic = sess.executor.run({"x": x}, specialize=False)[0]
    runs = [sess.run(None, {"x": x})[0] for _ in range(2)]
    assert "_gather_elements" in next(iter(sess.executor.specialized.values())).source
    for got in [generic] + runs:
        assert np.array_equal(got, want)


def test_out_of_range_indices_are_refused():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for bad in (4, -5):
        idx = np.array([[0, 1], [bad, 2], [3, 0]], np.int64)
        with pytest.raises(IndexError, match=f"index {bad} is out of range for an axis of size 4"):
            gather_elements_into(x, idx, 1, None)
    with pytest.raises(ValueError, match="larger than data"):
        gather_elements_into(x, np.zeros((4, 2), np.int64), 1, None)
    with pytest.raises(ValueError, match="same rank"):
        gather_elements_into(x, np.zeros((3,), np.int64), 1, None)
    with pytest.raises(ValueError, match="int64 idx"):
        _kgather.gather_elements(x.reshape(3, 4, 1), np.zeros((3, 2, 1), np.int32), np.empty((3, 2, 1), np.float32), 1)
    # several threads: the first bad index is reported, whatever the split
    x = np.zeros((64, 8), np.float32)
    idx = np.zeros((64, 8), np.int64)
    idx[40, 3], idx[10, 5] = 9, -12
    with normrt.threads(2):
        with pytest.raises(IndexError, match="index -12"):
            _kgather.gather_elements(x.reshape(64, 8, 1), idx.reshape(64, 8, 1), np.empty((64, 8, 1), np.float32), 2)
