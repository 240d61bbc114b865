"""Random generators (normrt.onnx.ops.random): shapes and dtypes as the spec gives them, the
distributions they draw from (checked on large seeded samples against the exact moments and
frequencies), seeded nodes reproducible, unseeded ones fresh every run and never folded."""
import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper
from test_ops import run_ours

import normrt


def _model(node, inputs=(), opset=17):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, e, s) for n, e, s in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("dtype, np_dtype", [(None, np.float32), (TensorProto.DOUBLE, np.float64),
                                             (TensorProto.FLOAT16, np.float16),
                                             (TensorProto.BFLOAT16, ml_dtypes.bfloat16)])
def test_uniform_and_normal_shapes_dtypes_moments(dtype, np_dtype):
    kw = {} if dtype is None else {"dtype": dtype}
    u = run_ours("RandomUniform", [], dict(shape=[400, 500], low=-2.0, high=3.0, seed=1.0, **kw), 17, 1)[0]
    assert u.shape == (400, 500) and u.dtype == np_dtype
    u = u.astype(np.float64)
    assert u.min() >= -2.0 and u.max() <= 3.0
    # mean 0.5, variance 25 / 12: 200,000 draws put the sample mean within 0.02 (6 sigma)
    assert abs(u.mean() - 0.5) < 0.02 and abs(u.var() - 25 / 12) < 0.05
    g = run_ours("RandomNormal", [], dict(shape=[200000], mean=1.5, scale=0.5, seed=2.0, **kw), 17, 1)[0]
    assert g.dtype == np_dtype
    g = g.astype(np.float64)
    assert abs(g.mean() - 1.5) < 0.01 and abs(g.std() - 0.5) < 0.01


def test_like_ops_take_the_input_shape_and_dtype_unless_told():
    x = np.zeros((3, 1, 7), np.float16)
    assert run_ours("RandomUniformLike", [x], {}, 17, 1)[0].dtype == np.float16
    y = run_ours("RandomNormalLike", [x], dict(dtype=TensorProto.DOUBLE), 17, 1)[0]
    assert y.shape == (3, 1, 7) and y.dtype == np.float64


def test_bernoulli_frequencies_and_extremes():
    p = np.tile(np.array([0.0, 0.1, 0.5, 0.9, 1.0], np.float32), (40000, 1))
    b = run_ours("Bernoulli", [p], dict(seed=3.0), 17, 1)[0]
    assert b.dtype == np.float32 and set(np.unique(b)) <= {0.0, 1.0}
    freq = b.mean(axis=0)
    assert freq[0] == 0 and freq[4] == 1
    np.testing.assert_allclose(freq[1:4], [0.1, 0.5, 0.9], atol=0.01)
    assert run_ours("Bernoulli", [p[:2]], dict(dtype=TensorProto.BOOL), 17, 1)[0].dtype == np.bool_


def test_multinomial_frequencies():
    logits = np.log(np.array([[0.2, 0.5, 0.3], [0.0, 0.0, 1.0]], np.float32) + 1e-30)
    s = run_ours("Multinomial", [logits], dict(sample_size=50000, seed=4.0), 17, 1)[0]
    assert s.shape == (2, 50000) and s.dtype == np.int32
    np.testing.assert_allclose(np.bincount(s[0], minlength=3) / 50000, [0.2, 0.5, 0.3], atol=0.01)
    assert (s[1] == 2).all()
    s64 = run_ours("Multinomial", [logits], dict(sample_size=3, dtype=TensorProto.INT64), 17, 1)[0]
    assert s64.dtype == np.int64 and s64.shape == (2, 3)


def test_seeded_node_repeats_unseeded_node_does_not():
    seeded = normrt.InferenceSession(_model(helper.make_node("RandomNormal", [], ["y"], shape=[64], seed=7.0)))
    again = normrt.InferenceSession(_model(helper.make_node("RandomNormal", [], ["y"], shape=[64], seed=7.0)))
    other = normrt.InferenceSession(_model(helper.make_node("RandomNormal", [], ["y"], shape=[64], seed=8.0)))
    first = seeded.run(None, {})[0]
    np.testing.assert_array_equal(seeded.run(None, {})[0], first)
    np.testing.assert_array_equal(again.run(None, {})[0], first)
    assert not np.array_equal(other.run(None, {})[0], first)
    # unseeded, behind an input (so a plan may specialize): a new draw every run, never a constant
    node = helper.make_node("RandomUniformLike", ["x"], ["y"])
    sess = normrt.InferenceSession(_model(node, [("x", TensorProto.FLOAT, [4, 16])]))
    x = np.zeros((4, 16), np.float32)
    runs = [sess.run(None, {"x": x})[0] for _ in range(3)]
    assert not any(np.array_equal(runs[0], r) for r in runs[1:])
    assert all(s.kind != "reference" for s in sess.executor.steps)


def test_negative_shape_is_refused():
    with pytest.raises(ValueError, match="negative"):
        run_ours("RandomUniform", [], dict(shape=[2, -1]), 17, 1)
