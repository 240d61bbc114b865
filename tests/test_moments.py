"""moments and mean_variance_norm against float64 numpy references (and ONNX's evaluator)."""
import itertools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import normrt
from dtype_checks import assert_concurrent_calls_match


def ref_moments(x, axes, keepdims=False):
    """float64 mean and population variance (two-pass) over `axes`."""
    h = x.astype(np.float64)
    mean = h.mean(axis=axes, keepdims=True)
    var = ((h - mean) ** 2).mean(axis=axes, keepdims=True)
    if not keepdims:
        mean, var = np.squeeze(mean, axis=axes), np.squeeze(var, axis=axes)
    return mean, var


def ref_mvn(x, axes=(0, 2, 3), eps=1e-9):
    """ONNX MeanVarianceNormalization: (x - mean) / (sqrt(var) + eps), in float64."""
    mean, var = ref_moments(x, axes, keepdims=True)
    return (x.astype(np.float64) - mean) / (np.sqrt(var) + eps)


def tol(dtype, conditioning=0.0):
    """Tolerances for outputs; `conditioning` * float64 epsilon widens atol where the float64
    reference itself is only that exact (a large mean amplified by a large 1/std)."""
    slack = 4 * np.finfo(np.float64).eps * conditioning
    if dtype == np.float32:
        return dict(rtol=1e-5, atol=1e-5 + slack)
    return dict(rtol=1e-12, atol=1e-12 + slack)


def all_axes(ndim):
    return [c for r in range(ndim + 1) for c in itertools.combinations(range(ndim), r)]


rng = np.random.default_rng(77)


# ---- values -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 1, 70, 2), (6, 40, 1, 3)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_moments_every_axes_combination(dtype, shape, keepdims):
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    for axes in all_axes(len(shape)):
        mean, var = normrt.moments(x, axes, keepdims=keepdims)
        rmean, rvar = ref_moments(x, axes, keepdims)
        assert mean.shape == var.shape == rmean.shape, axes
        assert mean.dtype == var.dtype == dtype
        np.testing.assert_allclose(mean, rmean, **tol(dtype), err_msg=str(axes))
        np.testing.assert_allclose(var, rvar, **tol(dtype), err_msg=str(axes))


@pytest.mark.parametrize("shape,axes", [
    ((50_000, 7), 0), ((7, 50_000), 1), ((3, 6000, 5), (0, 2)), ((3, 6000, 5), 1),
    ((300_000,), 0), ((300_000,), -1), ((2, 3, 4, 5), (-1, -3)), ((4, 3, 700), (0, 2)),
    ((4, 5, 6, 7, 8), (1, 3)), ((4, 5, 6, 7, 8), (0, 2, 4)), ((100, 100, 3), (0, 1)),
])
def test_moments_layouts(shape, axes):
    x = (rng.standard_normal(shape) - 1).astype(np.float64)
    axes_t = axes if isinstance(axes, tuple) else (axes,)
    mean, var = normrt.moments(x, axes)
    rmean, rvar = ref_moments(x, axes_t)
    np.testing.assert_allclose(mean, rmean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, rvar, rtol=1e-12, atol=1e-12)


def test_moments_int_axis_and_list_axes_and_scalar():
    x = rng.standard_normal((4, 5))
    np.testing.assert_allclose(normrt.moments(x, -1)[0], x.mean(axis=-1), rtol=1e-12)
    np.testing.assert_allclose(normrt.moments(x, [0, 1])[1], x.var(), rtol=1e-12)
    mean, var = normrt.moments(np.float64(2.5), ())
    assert mean.shape == () and mean == 2.5 and var == 0
    mean, var = normrt.moments(x, ())            # nothing reduced: mean is x, var is 0
    np.testing.assert_array_equal(mean, x)
    np.testing.assert_array_equal(var, np.zeros_like(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axes", [((2, 3, 4, 5), (0, 2, 3)), ((2, 3, 4, 5), (1,)),
                                        ((2, 3, 4, 5), (0, 1, 2, 3)), ((3, 4, 5), (2,)),
                                        ((2, 3, 4, 5), (1, 3)), ((2, 3, 4000), (0, 2)), ((6, 4), (0,))])
def test_mean_variance_norm_matches_reference(dtype, shape, axes):
    x = (rng.standard_normal(shape) * 4 - 1).astype(dtype)
    y = normrt.mean_variance_norm(x, axes=axes)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, ref_mvn(x, axes), **tol(dtype))


def test_mean_variance_norm_default_axes_and_eps():
    x = rng.standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(normrt.mean_variance_norm(x), ref_mvn(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(normrt.mean_variance_norm(x, eps=0.5), ref_mvn(x, eps=0.5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("axes", [[0, 2, 3], [0, 2], [1], [3], [0, 1, 2, 3]])
def test_mean_variance_norm_matches_onnx_reference_evaluator(axes):
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator
    node = helper.make_node("MeanVarianceNormalization", ["X"], ["Y"], axes=axes)
    graph = helper.make_graph([node], "mvn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    expected = ReferenceEvaluator(model).run(None, {"X": x})[0]
    np.testing.assert_allclose(normrt.mean_variance_norm(x, axes=axes), expected, rtol=1e-5, atol=2e-6)


# ---- numerics --------------------------------------------------------------------

@pytest.mark.parametrize("offset", [1e4, 1e6, 1e7])
@pytest.mark.parametrize("shape,axes", [((8, 16, 30, 30), (0, 2, 3)), ((4000, 6), (0,)),
                                        ((2, 3, 20_000), (0, 2)), ((6, 5, 300), (1, 2)), ((6, 5, 300), (0, 1))])
def test_large_offsets_do_not_cancel(offset, shape, axes):
    x = (offset + rng.standard_normal(shape)).astype(np.float32)
    rmean, rvar = ref_moments(x, axes)   # float64 reference on the same float32 input
    mean, var = normrt.moments(x, axes)
    assert np.all(np.abs(mean - rmean) <= np.spacing(np.float32(offset)))
    np.testing.assert_allclose(var, rvar, rtol=1e-6)
    y = normrt.mean_variance_norm(x, axes=axes)
    assert np.abs(y - ref_mvn(x, axes)).max() <= 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [0.0, 3.3, -1e7, 0.1])
@pytest.mark.parametrize("shape,axes", [((3, 4, 5), (0, 2)), ((3000, 4), (0,)), ((4, 5000), (1,)),
                                        ((3, 4, 5), (1,))])
def test_constant_group_gives_exact_mean_and_zero_variance(dtype, value, shape, axes):
    x = np.full(shape, value, dtype)
    mean, var = normrt.moments(x, axes)
    assert (mean == dtype(value)).all() and (var == 0).all()
    assert (normrt.mean_variance_norm(x, axes=axes) == 0).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape,axes", [((5, 4, 7), (0, 2)), ((9000, 4), (0,)), ((4, 9000), (1,)),
                                        ((5, 4, 7), (1,)), ((2, 4, 5000), (0, 2))])
def test_nan_or_inf_stays_inside_its_group(bad, shape, axes):
    x = rng.standard_normal(shape).astype(np.float32)
    where = tuple(1 if i in axes else 2 for i in range(len(shape)))   # reduced index 1, kept index 2
    x[where] = bad
    mean, var = normrt.moments(x, axes, keepdims=True)
    group = tuple(0 if i in axes else 2 for i in range(len(shape)))
    hit = np.zeros(var.shape, bool)
    hit[group] = True
    assert np.isnan(var[hit]).all() and np.isfinite(var[~hit]).all()
    assert np.isfinite(mean[~hit]).all()
    y = normrt.mean_variance_norm(x, axes=axes)
    in_group = np.broadcast_to(hit, x.shape)
    assert np.isnan(y[in_group]).all() and np.isfinite(y[~in_group]).all()


def test_constant_group_with_zero_eps_is_nan_like_onnx_and_warns_nothing():
    x = np.ones((2, 3, 4, 5), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(normrt.mean_variance_norm(x, eps=0)).all()


# ---- determinism and concurrency ---------------------------------------------------

@pytest.mark.parametrize("shape,axes", [
    ((600_000,), (0,)),                       # K = 1, one long run
    ((2, 3, 300, 300), (0, 2, 3)),            # N*C small, large spatial
    ((2, 3, 300, 300), (0, 1, 2, 3)),         # everything reduced
    ((200_000, 3), (0,)),                     # (N, C): column-wise path
    ((40, 30, 20, 10), (1, 3)),               # kept axes not one block: transposed copy
    ((8, 5000, 9), (0, 2)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bitwise_identical_for_any_thread_count(shape, axes, dtype):
    x = (rng.standard_normal(shape) * 3 + 7).astype(dtype)
    results = []
    for n in (1, 2, 8):
        with normrt.threads(n):
            results.append((*normrt.moments(x, axes), normrt.mean_variance_norm(x, axes=axes)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


def test_concurrent_calls_from_python_threads():
    xs = [(rng.standard_normal((8, 16, 32, 32)) + i).astype(np.float32) for i in range(6)]

    def work(x):
        return (*normrt.moments(x, (0, 2, 3)), *normrt.moments(x, (1, 3)), normrt.mean_variance_norm(x))

    assert_concurrent_calls_match(work, xs)


# ---- layouts, out= and empty tensors ------------------------------------------------

def test_fortran_and_strided_inputs():
    base = rng.standard_normal((6, 8, 10, 12)).astype(np.float32)
    for x in (np.asfortranarray(base), base[::2, ::3, :, ::2], base.transpose(3, 1, 0, 2)):
        xc = np.ascontiguousarray(x)
        for axes in [(0, 2, 3), (1,), (0, 3), (2,)]:
            mean, var = normrt.moments(x, axes)
            rmean, rvar = ref_moments(xc, axes)
            np.testing.assert_allclose(mean, rmean, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(var, rvar, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(normrt.mean_variance_norm(x, axes=axes), ref_mvn(xc, axes),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axes", [(0, 2, 3), (1, 3)])
def test_mvn_out_buffer_and_in_place(axes):
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    ref = normrt.mean_variance_norm(x, axes=axes)
    np.testing.assert_allclose(ref, ref_mvn(x, axes), rtol=1e-5, atol=1e-5)
    out = np.empty_like(x)
    assert normrt.mean_variance_norm(x, axes=axes, out=out) is out
    np.testing.assert_array_equal(out, ref)
    xc = x.copy()
    assert normrt.mean_variance_norm(xc, axes=axes, out=xc) is xc
    np.testing.assert_array_equal(xc, ref)


@pytest.mark.parametrize("shape,axes", [((0, 3), (0,)), ((3, 0), (0,)), ((2, 0, 4), (0, 2)),
                                        ((2, 0, 4), (1,)), ((0,), (0,)), ((4, 0), ())])
@pytest.mark.parametrize("keepdims", [False, True])
def test_empty_tensors(shape, axes, keepdims):
    x = np.empty(shape, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, var = normrt.moments(x, axes, keepdims=keepdims)
        assert normrt.mean_variance_norm(x, axes=axes).shape == shape
    if keepdims:
        expected_shape = tuple(1 if i in axes else n for i, n in enumerate(shape))
    else:
        expected_shape = tuple(n for i, n in enumerate(shape) if i not in axes)
    assert mean.shape == var.shape == expected_shape and mean.dtype == np.float32
    assert np.isnan(mean).all() and np.isnan(var).all()    # NaN where numpy gives NaN (with a warning)


# ---- bad input ---------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    x = np.ones((2, 3, 4), np.float32)
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.moments(np.ones((2, 3), np.int64), 0)
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.mean_variance_norm(np.ones((2, 3, 4, 5), np.int16))
    for bad, msg in [((0, 0), "axes has duplicate entries"), ((1, -2), "axes has duplicate entries"),
                     (3, "axes entry 3 is out of range for rank 3"), ((-4,), "axes entry -4 is out of range"),
                     ((0.5,), "axes must contain ints"), (None, "axes must be an int or a tuple"),
                     ("0", "axes must contain ints"), (True, "axes must be an int or a tuple")]:
        with pytest.raises(ValueError, match=msg):
            normrt.moments(x, bad)
        with pytest.raises(ValueError, match=msg):
            normrt.mean_variance_norm(x, axes=bad)
    with pytest.raises(ValueError, match="axes entry 3 is out of range for rank 3"):
        normrt.mean_variance_norm(x)   # default axes (0, 2, 3) need rank 4
    with pytest.raises(ValueError, match="eps must be >= 0"):
        normrt.mean_variance_norm(x, axes=0, eps=-1e-9)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3, 4\)"):
        normrt.mean_variance_norm(x, axes=0, out=np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="out must have dtype float32"):
        normrt.mean_variance_norm(x, axes=0, out=np.empty((2, 3, 4), np.float64))
    big = np.ones((3, 3, 4), np.float32)
    with pytest.raises(ValueError, match="out partially overlaps"):
        normrt.mean_variance_norm(big[:2], axes=0, out=big[1:])


# ---- property tests --------------------------------------------------------------------

@st.composite
def reduce_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=5, min_side=1, max_side=8))
    x = draw(hnp.arrays(dtype, shape, elements=st.floats(-100, 100, width=32)))
    offset = draw(st.sampled_from([0.0, 1e3]))
    axes = draw(st.lists(st.integers(0, len(shape) - 1), unique=True))
    axes = tuple(a - len(shape) if draw(st.booleans()) else a for a in axes)
    return (x + offset).astype(dtype), axes, draw(st.booleans())


@settings(max_examples=200, deadline=None)
@given(reduce_cases())
def test_property_moments_and_mvn(case):
    x, axes, keepdims = case
    t = 1e-5 if x.dtype == np.float32 else 1e-12
    scale = float(np.abs(x).max()) + 1.0
    mean, var = normrt.moments(x, axes, keepdims=keepdims)
    rmean, rvar = ref_moments(x, axes, keepdims)
    assert mean.shape == rmean.shape
    np.testing.assert_allclose(mean, rmean, rtol=t, atol=t * scale)
    np.testing.assert_allclose(var, rvar, rtol=t, atol=t * scale * scale)
    y = normrt.mean_variance_norm(x, axes=axes, eps=1e-2)
    # a mean near 1e3 is exact to ~ulp(1e3) in float64 (in the reference too), then scaled by
    # up to 1/eps = 100
    np.testing.assert_allclose(y, ref_mvn(x, axes, eps=1e-2), **tol(x.dtype, scale * 100))
