"""normrt.lp_norm against an independent float64 numpy reference."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import normrt
from dtype_checks import (ALL_FLOAT_DTYPES, HALF_DTYPES, assert_close_in_dtype, assert_concurrent_calls_match,
                          assert_same_bits_for_threads, same_bits)


def ref_lp_norm(x, p, axis):
    """y = x / ||x||_p along axis in float64; a zero vector gives 0.

    The vectors are scaled by their largest magnitude first, so that tiny or
    huge float64 inputs do not under- or overflow the sum of squares.
    """
    x64 = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        amax = np.max(np.abs(x64), axis=axis, keepdims=True)
        scale = np.where((amax == 0) | ~np.isfinite(amax), 1.0, amax)
        xs = x64 / scale
        if p == 1:
            norm = np.sum(np.abs(xs), axis=axis, keepdims=True) * scale
        else:
            norm = np.sqrt(np.sum(xs * xs, axis=axis, keepdims=True)) * scale
        y = np.where(norm == 0.0, 0.0, x64 / norm)
    return y.astype(x.dtype)


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-30) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-300)


# shapes and axes that reach every kernel path: rows (K2 == 1), rows split into
# chunks (few long rows), column blocks (K2 > 1), column blocks split along L
CASES = [
    ((7,), 0),
    ((4, 9), -1),
    ((4, 9), 0),
    ((3, 5, 6), 1),
    ((3, 5, 6), 0),
    ((2, 3, 4, 5), 2),
    ((2, 3, 4, 5), -1),
    ((3, 5000), -1),        # 3 chunks per row, fewer rows than threads
    ((1, 9000), 1),
    ((2, 600, 130), 1),     # 2 column blocks, 3 row chunks
    ((1, 1000, 3), 1),      # narrow columns, long L
    ((64, 40, 2), 1),
    ((5, 1), 1),            # L == 1
    ((5, 1), 0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("shape,axis", CASES)
def test_values(shape, axis, p, dtype):
    rng = np.random.default_rng(hash((shape, axis, p)) % 2**32)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    y = normrt.lp_norm(x, p=p, axis=axis)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, ref_lp_norm(x, p, axis), **tol(dtype))


@pytest.mark.parametrize("p", [1, 2])
def test_unit_norm(p):
    x = np.random.default_rng(1).standard_normal((6, 50, 7))
    y = normrt.lp_norm(x, p=p, axis=1)
    np.testing.assert_allclose(np.linalg.norm(y, ord=p, axis=1), 1.0, rtol=1e-13)


def test_known_values():
    y = normrt.lp_norm(np.array([[3.0, -4.0]]), p=2)
    np.testing.assert_array_equal(y, [[0.6, -0.8]])
    y = normrt.lp_norm(np.array([[1.0, -1.0, 2.0]]), p=1)
    np.testing.assert_array_equal(y, [[0.25, -0.25, 0.5]])


def test_default_p_and_axis():
    x = np.random.default_rng(2).standard_normal((3, 4, 5))
    np.testing.assert_allclose(normrt.lp_norm(x), ref_lp_norm(x, 2, -1), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("shape,axis", [((4, 6), 1), ((4, 6), 0), ((3, 5000), 1), ((2, 600, 130), 1)])
def test_zero_vector_gives_zero(shape, axis, p, dtype):
    x = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(None)
    zero_at = tuple(0 if i != axis else slice(None) for i in range(x.ndim))
    x[zero_at] = 0
    y = normrt.lp_norm(x, p=p, axis=axis)
    assert not np.isnan(y).any()
    assert (y[zero_at] == 0).all()
    np.testing.assert_allclose(y, ref_lp_norm(x, p, axis), **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("shape,axis", [((4, 6), 1), ((4, 6), 0), ((3, 5000), 1), ((2, 600, 130), 1)])
def test_nan_stays_in_its_vector(shape, axis, p, dtype):
    x = np.random.default_rng(4).standard_normal(shape).astype(dtype)
    nan_at = tuple(1 if i != axis else 2 for i in range(x.ndim))
    x[nan_at] = np.nan
    y = normrt.lp_norm(x, p=p, axis=axis)
    vec = tuple(1 if i != axis else slice(None) for i in range(x.ndim))
    assert np.isnan(y[vec]).all()
    assert np.isnan(y).sum() == x.shape[axis]
    np.testing.assert_allclose(y, ref_lp_norm(x, p, axis), equal_nan=True, **tol(dtype))


@pytest.mark.parametrize("p", [1, 2])
def test_inf_like_reference(p):
    x = np.random.default_rng(5).standard_normal((3, 8))
    x[1, 3] = np.inf
    y = normrt.lp_norm(x, p=p)
    np.testing.assert_allclose(y, ref_lp_norm(x, p, -1), equal_nan=True, rtol=1e-12)
    assert np.isnan(y[1, 3]) and (y[1, np.arange(8) != 3] == 0).all()


@pytest.mark.parametrize("axis", [0, 1])
def test_float64_extreme_magnitudes(axis):
    # a naive float64 sum of squares over/underflows; the norm must not
    s = 1 / np.sqrt(2)
    big = np.array([[1e200, -1e200], [1e-200, 1e-200], [3e-320, 4e-320],
                    [5e-324, 5e-324], [1.5e308, 1.5e308]])
    x = big if axis == 1 else np.ascontiguousarray(big.T)
    y = normrt.lp_norm(x, p=2, axis=axis)
    y = y if axis == 1 else y.T
    np.testing.assert_allclose(y[0], [s, -s], rtol=1e-15)
    np.testing.assert_allclose(y[1], [s, s], rtol=1e-15)
    # subnormal inputs carry few digits (3e-320 is 3.0000e-320 to 4 digits) ...
    np.testing.assert_allclose(y[2], [0.6, 0.8], rtol=1e-4)
    # ... and a norm that is itself subnormal or past DBL_MAX must not round again
    np.testing.assert_allclose(y[3], [s, s], rtol=1e-15)
    np.testing.assert_allclose(y[4], [s, s], rtol=1e-15)
    np.testing.assert_allclose(normrt.lp_norm(np.array([1e300, 1e300]), p=1), [0.5, 0.5])


def test_float32_no_overflow():
    x = np.array([3e30, 4e30], np.float32)  # squares overflow float32, not float64
    np.testing.assert_allclose(normrt.lp_norm(x), [0.6, 0.8], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("shape,axis", [((3, 5000), 1), ((1, 20000), 1), ((37, 300), 1), ((2, 600, 130), 1),
                                        ((1, 3000, 5), 1), ((9, 300, 7), 1), ((300, 9), 0)])
def test_bitwise_identical_across_thread_counts(shape, axis, p, dtype):
    x = (np.random.default_rng(6).standard_normal(shape) * 10 + 3).astype(dtype)
    results = []
    for n in (1, 2, 8):
        with normrt.threads(n):
            results.append(normrt.lp_norm(x, p=p, axis=axis))
    assert same_bits(results[0], results[1]) and same_bits(results[0], results[2])


def test_concurrent_python_threads_match_serial():
    rng = np.random.default_rng(7)
    jobs = [(rng.standard_normal(shape).astype(dt), p, axis, n)
            for shape, axis in [((3, 5000), 1), ((2, 600, 130), 1), ((50, 64), 0), ((8, 7, 6), -1)]
            for dt in (np.float32, np.float64) for p in (1, 2) for n in (1, 3)]
    with normrt.threads(1):
        serial = [normrt.lp_norm(x, p=p, axis=axis) for x, p, axis, _ in jobs]

    def run(job):
        x, p, axis, n = job
        with normrt.threads(n):
            return normrt.lp_norm(x, p=p, axis=axis)

    assert_concurrent_calls_match(run, jobs, reference=serial)


@st.composite
def lp_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7))
    bound = 1e4
    elements = st.floats(-bound, bound, allow_nan=False, width=32 if dtype == np.float32 else 64)
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    p = draw(st.sampled_from([1, 2]))
    return x, axis, p


@settings(max_examples=100, deadline=None)
@given(lp_cases())
def test_property_matches_reference(case):
    x, axis, p = case
    y = normrt.lp_norm(x, p=p, axis=axis)
    np.testing.assert_allclose(y, ref_lp_norm(x, p, axis), **tol(x.dtype))
    # every vector has norm 1 or is all zeros
    n = np.linalg.norm(y.astype(np.float64), ord=p, axis=axis)
    assert np.all((np.abs(n - 1) < 1e-4) | (n == 0))


@pytest.mark.parametrize("p", [1, 2])
def test_fortran_and_strided_inputs(p):
    base = np.random.default_rng(8).standard_normal((6, 10, 8))
    views = [np.asfortranarray(base), base[:, ::2, 1::3], base.transpose(2, 0, 1), base[::-1]]
    for x in views:
        for axis in range(3):
            np.testing.assert_allclose(normrt.lp_norm(x, p=p, axis=axis), ref_lp_norm(x, p, axis), rtol=1e-12)


@pytest.mark.parametrize("shape,axis", [((4, 9), 1), ((3, 5000), 1), ((2, 600, 130), 1), ((5, 6, 7), 0)])
def test_out_and_in_place(shape, axis):
    x = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    ref = normrt.lp_norm(x, axis=axis)
    out = np.empty_like(x)
    assert normrt.lp_norm(x, axis=axis, out=out) is out
    assert same_bits(out, ref)
    for n in (1, 8):
        xx = x.copy()
        with normrt.threads(n):
            assert normrt.lp_norm(xx, axis=axis, out=xx) is xx
        assert same_bits(xx, ref)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0), (2, 0, 4), (2, 3, 0)])
@pytest.mark.parametrize("axis", [0, -1])
def test_empty(shape, axis):
    x = np.empty(shape, np.float32)
    y = normrt.lp_norm(x, axis=axis)
    assert y.shape == shape and y.dtype == np.float32


def test_list_input():
    np.testing.assert_allclose(normrt.lp_norm([[3.0, 4.0]]), [[0.6, 0.8]])


def test_matches_onnx_reference():
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    x = np.random.default_rng(10).standard_normal((3, 4, 5)).astype(np.float32)
    for axis in (0, 1, -1):
        node = helper.make_node("LpNormalization", ["x"], ["y"], axis=axis, p=2)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
        (expected,) = ReferenceEvaluator(model).run(None, {"x": x})
        np.testing.assert_allclose(normrt.lp_norm(x, p=2, axis=axis), expected, rtol=1e-5, atol=1e-7)
    # (the onnx reference's p=1 sums x, not |x|, so it is only comparable on x >= 0)
    xa = np.abs(x)
    node = helper.make_node("LpNormalization", ["x"], ["y"], axis=1, p=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    (expected,) = ReferenceEvaluator(model).run(None, {"x": xa})
    np.testing.assert_allclose(normrt.lp_norm(xa, p=1, axis=1), expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- bad input

X = np.ones((2, 3), np.float32)


@pytest.mark.parametrize("bad", [np.ones((2, 3), np.int32), np.ones((2, 3), np.int16),
                                 np.ones((2, 3), bool), np.array([["a"]])])
def test_non_float_x(bad):
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.lp_norm(bad)


@pytest.mark.parametrize("p", [0, 3, -2, 1.5, True, "2", None, np.inf])
def test_bad_p(p):
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        normrt.lp_norm(X, p=p)


def test_p_accepts_integral_values():
    np.testing.assert_array_equal(normrt.lp_norm(X, p=np.int64(1)), normrt.lp_norm(X, p=1))
    np.testing.assert_array_equal(normrt.lp_norm(X, p=2.0), normrt.lp_norm(X, p=2))


@pytest.mark.parametrize("axis", [2, -3, 10])
def test_bad_axis(axis):
    with pytest.raises(ValueError, match="axis must be in"):
        normrt.lp_norm(X, axis=axis)


@pytest.mark.parametrize("axis", [1.0, "1", None])
def test_non_int_axis(axis):
    with pytest.raises(TypeError, match="axis must be an int"):
        normrt.lp_norm(X, axis=axis)


def test_rank_zero():
    with pytest.raises(ValueError, match="x must have rank >= 1"):
        normrt.lp_norm(np.float32(3.0))


@pytest.mark.parametrize("out,msg", [
    (np.empty((3, 2), np.float32), "out must have shape"),
    (np.empty((2, 3), np.float64), "out must have dtype"),
    (np.empty((3, 2), np.float32).T, "out must be C-contiguous"),
    ([[0.0] * 3] * 2, "out must be a numpy array"),
])
def test_bad_out(out, msg):
    with pytest.raises(ValueError, match=msg):
        normrt.lp_norm(X, out=out)


def test_read_only_and_overlapping_out():
    ro = np.empty((2, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        normrt.lp_norm(X, out=ro)
    buf = np.ones(7, np.float32)
    with pytest.raises(ValueError, match="out partially overlaps"):
        normrt.lp_norm(buf[:6].reshape(2, 3), out=buf[1:].reshape(2, 3))


def test_read_only_and_broadcast_inputs():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    x.flags.writeable = False
    np.testing.assert_allclose(normrt.lp_norm(x, axis=1), ref_lp_norm(x, 2, 1), rtol=1e-6)
    np.testing.assert_array_equal(normrt.lp_norm(np.broadcast_to(np.float64(2), (3, 4))), np.full((3, 4), 0.5))


# ---------------------------------------------------------------- eps: torch's F.normalize

def ref_normalize(x, p, axis, eps):
    """torch.nn.functional.normalize: x / max(||x||_p, eps), in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    if p == 1:
        norm = np.sum(np.abs(x64), axis=axis, keepdims=True)
    else:
        norm = np.sqrt(np.sum(x64 * x64, axis=axis, keepdims=True))
    return (x64 / np.maximum(norm, eps)).astype(x.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("shape,axis", CASES)
def test_eps_matches_torch_formula(shape, axis, p, dtype):
    rng = np.random.default_rng(21)
    x = rng.standard_normal(shape).astype(dtype)
    # some vectors with norms below eps, one exactly zero
    x.reshape(-1)[: x.size // 3] *= dtype(1e-7)
    eps = 1e-3
    y = normrt.lp_norm(x, p=p, axis=axis, eps=eps)
    np.testing.assert_allclose(y, ref_normalize(x, p, axis, eps), **tol(dtype))
    zero = np.zeros_like(x)
    assert not normrt.lp_norm(zero, p=p, axis=axis, eps=eps).any()


def test_eps_known_values():
    x = np.array([[3e-13, 4e-13], [3.0, 4.0], [0.0, 0.0]], np.float64)
    y = normrt.lp_norm(x, eps=1e-12)
    np.testing.assert_allclose(y, [[0.3, 0.4], [0.6, 0.8], [0.0, 0.0]], rtol=1e-12)
    # eps = 0 (the default) is ONNX LpNormalization: the tiny vector gets unit norm
    np.testing.assert_allclose(normrt.lp_norm(x), [[0.6, 0.8], [0.6, 0.8], [0.0, 0.0]], rtol=1e-12)
    # a norm above eps is not touched
    assert same_bits(normrt.lp_norm(x[1:2], eps=1.0), normrt.lp_norm(x[1:2]))


def test_eps_keeps_nan_and_inf():
    x = np.array([[np.nan, 1.0], [np.inf, 1.0], [1e-30, 0.0]], np.float64)
    y = normrt.lp_norm(x, eps=1e-12)
    assert np.isnan(y[0]).all()
    assert np.isnan(y[1, 0]) and y[1, 1] == 0.0     # inf / inf, 1 / inf: like x / max(inf, eps)
    np.testing.assert_allclose(y[2], [1e-18, 0.0], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((3, 5000), 1), ((1, 20000), 1), ((2, 600, 130), 1), ((1, 3000, 5), 1)])
def test_eps_bitwise_identical_across_thread_counts(shape, axis, dtype):
    x = np.random.default_rng(22).standard_normal(shape).astype(dtype) * dtype(1e-4)
    results = []
    for n in (1, 2, 8):
        with normrt.threads(n):
            results.append(normrt.lp_norm(x, axis=axis, eps=0.5))
    assert same_bits(results[0], results[1]) and same_bits(results[0], results[2])
    np.testing.assert_allclose(results[0], ref_normalize(x, 2, axis, 0.5), **tol(dtype))


@pytest.mark.parametrize("eps,err", [(-1e-12, ValueError), (float("nan"), ValueError), ("1e-12", TypeError),
                                     (None, TypeError)])
def test_bad_eps(eps, err):
    with pytest.raises(err, match="eps"):
        normrt.lp_norm(np.ones((2, 3), np.float32), eps=eps)


def ref_divide(x, p, axis):
    """The plain division x / ||x||_p a model writes (float64): NaN for a zero vector."""
    x64 = np.asarray(x, dtype=np.float64)
    norm = np.sum(np.abs(x64), axis=axis, keepdims=True) if p == 1 else \
        np.sqrt(np.sum(x64 * x64, axis=axis, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        return x64 / norm


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, "bfloat16"])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("shape,axis", CASES)
def test_nan_on_zero_is_the_plain_division(shape, axis, p, dtype):
    """nan_on_zero: every vector as x / ||x|| gives it, a zero vector NaN (0 / 0) - on every kernel path
    (rows, chunked rows, column blocks, split columns) and storage type; other vectors keep the
    default's bits."""
    import ml_dtypes
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(31)
    x = rng.standard_normal(shape).astype(dt)
    zero_at = tuple(0 if i != axis % x.ndim else slice(None) for i in range(x.ndim))
    x[zero_at] = 0
    y = normrt.lp_norm(x, p=p, axis=axis, nan_on_zero=True)
    want = ref_divide(x, p, axis)
    assert y.dtype == dt
    assert np.isnan(y.astype(np.float64)[zero_at]).all()
    assert np.array_equal(np.isnan(y.astype(np.float64)), np.isnan(want))
    rtol = {np.float32: 1e-5, np.float64: 1e-12}.get(dt.type, 2.0 ** -7 if dtype == "bfloat16" else 2.0 ** -10)
    # (a half output below the normal range is rounded to the subnormal spacing)
    atol = float(ml_dtypes.finfo(dt).smallest_subnormal) if dt.itemsize == 2 else 1e-30
    np.testing.assert_allclose(y.astype(np.float64), want, rtol=rtol, atol=atol)
    default = normrt.lp_norm(x, p=p, axis=axis)
    keep = ~np.isnan(want)
    assert same_bits(y[keep], default[keep])


@pytest.mark.parametrize("shape,axis", [((3, 5000), 1), ((1, 20000), 1), ((1, 3000, 5), 1)])
def test_nan_on_zero_bitwise_identical_across_thread_counts(shape, axis):
    x = np.random.default_rng(32).standard_normal(shape).astype(np.float32)
    x[0] = 0
    results = []
    for n in (1, 2, 8):
        with normrt.threads(n):
            results.append(normrt.lp_norm(x, axis=axis, nan_on_zero=True))
    assert same_bits(results[0], results[1]) and same_bits(results[0], results[2])
    assert np.isnan(results[0][0]).all() and not np.isnan(results[0][1:]).any()


def test_nan_on_zero_with_eps_keeps_the_clamp():
    """With eps > 0 no norm is 0: nan_on_zero changes nothing (F.normalize in float32)."""
    x = np.array([[0.0, 0.0], [3e-13, 4e-13], [3.0, 4.0]], np.float64)
    assert same_bits(normrt.lp_norm(x, eps=1e-12, nan_on_zero=True), normrt.lp_norm(x, eps=1e-12))


@pytest.mark.parametrize("bad", [1, 0, "yes", None])
def test_bad_nan_on_zero(bad):
    with pytest.raises(TypeError, match="nan_on_zero"):
        normrt.lp_norm(np.ones((2, 3), np.float32), nan_on_zero=bad)


# ---------------------------------------------------------------- grn (ConvNeXt V2)

def ref_grn(x, gamma, beta, eps=1e-6):
    """ConvNeXt V2's GRN in float64 on channels-last x (N, *spatial, C)."""
    x64 = np.asarray(x, np.float64)
    axes = tuple(range(1, x.ndim - 1))
    g = np.sqrt(np.sum(x64 * x64, axis=axes, keepdims=True))
    nx = g / (g.mean(axis=-1, keepdims=True) + eps)
    return np.asarray(gamma, np.float64) * (x64 * nx) + np.asarray(beta, np.float64) + x64


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), spatial=st.lists(st.integers(1, 24), min_size=1, max_size=2),
       c=st.sampled_from([1, 3, 16, 130, 257]), dtype=st.sampled_from(ALL_FLOAT_DTYPES[:1] + HALF_DTYPES),
       offset=st.sampled_from([0.0, 3.0, 1e4]), seed=st.integers(0, 2 ** 16))
def test_grn_matches_float64_reference(n, spatial, c, dtype, offset, seed):
    """Shapes across the kernel's column blocks (128 channels) and row chunks (256 positions),
    float32 and half storage, inputs with an offset; the same bits for 1-3 threads."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, *spatial, c)) + offset).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    y = normrt.grn(x, gamma, beta)
    ref = ref_grn(x, gamma, beta)
    # float32 results are rounded once from float64 arithmetic; half ones from float32 inputs of x
    assert_close_in_dtype(y, ref, dtype, scale=np.abs(ref).max(), ulps=1.0, f32_rel=2.0 ** -21)
    assert_same_bits_for_threads(lambda: normrt.grn(x, gamma, beta))


def test_grn_long_columns_and_in_place():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 40, 40, 70)).astype(np.float32)          # 1600 positions: 7 row chunks
    gamma, beta = rng.standard_normal((1, 1, 1, 70)), rng.standard_normal(70)
    want = ref_grn(x, gamma.reshape(-1), beta)
    y = normrt.grn(x.copy(), gamma, beta)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    z = x.copy()
    assert normrt.grn(z, gamma, beta, out=z) is z and same_bits(z, y)
    assert_same_bits_for_threads(lambda: normrt.grn(x, gamma, beta))


def test_grn_zeros_nan_and_large_values():
    x = np.zeros((2, 3, 3, 4), np.float32)
    beta = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(normrt.grn(x, np.ones(4, np.float32), beta), np.broadcast_to(beta, x.shape))
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32)
    x[1, 0, 0, 2] = np.nan
    y = normrt.grn(x, np.ones(4, np.float32), beta)
    assert np.isnan(y[1]).all() and not np.isnan(y[0]).any()      # the sample's mean over C
    big = np.full((1, 2, 2, 3), 3e38, np.float32)                   # squares beyond float32: float64 sums
    np.testing.assert_allclose(normrt.grn(big, np.full(3, -0.5, np.float32), np.zeros(3, np.float32)),
                               ref_grn(big, np.full(3, -0.5), np.zeros(3)), rtol=1e-6)


def test_grn_bad_arguments():
    x = np.ones((1, 2, 2, 3), np.float32)
    with pytest.raises(TypeError, match="x must be a float32, float16 or bfloat16 array"):
        normrt.grn(x.astype(np.float64), np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="gamma must have shape"):
        normrt.grn(x, np.ones(4), np.zeros(3))
    with pytest.raises(TypeError, match="gamma and beta"):
        normrt.grn(x, None, np.zeros(3))
    with pytest.raises(ValueError, match="rank >= 2"):
        normrt.grn(np.ones(3, np.float32), np.ones(3), np.zeros(3))
