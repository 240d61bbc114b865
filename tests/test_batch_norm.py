"""batch_norm, batch_norm_stats and spade against float64 numpy references."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import normrt
from dtype_checks import ACTS, assert_concurrent_calls_match, ref_act as _ref_act


def ref_act(v, act):
    with np.errstate(over="ignore"):
        return _ref_act(v, act)



def per_channel(p, ndim):
    """(C,) -> broadcastable against (N, C, *spatial), in float64."""
    return np.asarray(p, np.float64).reshape((-1,) + (1,) * (ndim - 2))


def ref_stats(x):
    """float64 per-channel mean and population variance over every axis but 1."""
    h = np.moveaxis(x.astype(np.float64), 1, 0).reshape(x.shape[1], -1)
    mean = h.mean(axis=1)
    var = ((h - mean[:, None]) ** 2).mean(axis=1)
    return mean, var


def ref_batch_norm(x, scale, bias, mean, var, eps=1e-5, act=None):
    h = x.astype(np.float64)
    d = x.ndim
    y = (h - per_channel(mean, d)) / np.sqrt(per_channel(var, d) + eps) * per_channel(scale, d)
    return ref_act(y + per_channel(bias, d), act)


def ref_spade(x, gamma, beta, mean=None, var=None, eps=1e-5):
    if mean is None:
        mean, var = ref_stats(x)
    xhat = ref_batch_norm(x, np.ones(x.shape[1]), np.zeros(x.shape[1]), mean, var, eps)
    return xhat * (1 + gamma.astype(np.float64)) + beta.astype(np.float64)


def tol(dtype, conditioning=0.0):
    """Tolerances for outputs; `conditioning` * float64 epsilon widens atol where the float64
    reference itself is only that exact (a large mean amplified by a large 1/std)."""
    slack = 4 * np.finfo(np.float64).eps * conditioning
    if dtype == np.float32:
        return dict(rtol=1e-5, atol=1e-5 + slack)
    return dict(rtol=1e-12, atol=1e-12 + slack)


def params(C, dtype, rng):
    scale = rng.standard_normal(C).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype)
    mean = rng.standard_normal(C).astype(dtype)
    var = rng.uniform(0.5, 2.0, C).astype(dtype)
    return scale, bias, mean, var


rng = np.random.default_rng(2024)

SHAPES = [(4, 3), (2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 5), (3, 70, 1), (2, 5, 2100), (5000, 4),
          (1, 1, 3000), (2, 200, 3, 3)]


# ---- values -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ACTS)
def test_batch_norm_matches_reference(dtype, shape, act):
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    p = params(shape[1], dtype, rng)
    y = normrt.batch_norm(x, *p, eps=1e-3, activation=act)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, ref_batch_norm(x, *p, eps=1e-3, act=act), **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES + [(40_000, 3), (3, 2, 70_000), (700, 5, 7)])
def test_batch_norm_stats_match_reference(dtype, shape):
    x = (rng.standard_normal(shape) * 3 - 2).astype(dtype)
    mean, var = normrt.batch_norm_stats(x)
    rmean, rvar = ref_stats(x)
    assert mean.shape == var.shape == (shape[1],)
    assert mean.dtype == var.dtype == dtype
    np.testing.assert_allclose(mean, rmean, **tol(dtype))
    np.testing.assert_allclose(var, rvar, **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 5), (2, 4, 3000)])
@pytest.mark.parametrize("running", [False, True])
def test_spade_matches_reference(dtype, shape, running):
    x = (rng.standard_normal(shape) + 1).astype(dtype)
    gamma = (0.3 * rng.standard_normal(shape)).astype(dtype)
    beta = rng.standard_normal(shape).astype(dtype)
    stats = {}
    if running:
        _, _, stats["mean"], stats["var"] = params(shape[1], dtype, rng)
    y = normrt.spade(x, gamma, beta, eps=1e-4, **stats)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, ref_spade(x, gamma, beta, eps=1e-4, **stats), **tol(dtype))


def test_spade_casts_gamma_and_beta_to_x_dtype():
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    gamma = rng.standard_normal((2, 3, 4))            # float64
    beta = np.ones((2, 3, 4), np.int64)
    y = normrt.spade(x, gamma, beta)
    assert y.dtype == np.float32
    ref = ref_spade(x, gamma.astype(np.float32), beta.astype(np.float32))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# ---- numerics -----------------------------------------------------------------

@pytest.mark.parametrize("offset", [1e4, 1e6, 1e7])
@pytest.mark.parametrize("shape", [(64, 8, 300), (2000, 6), (2, 3, 20_000)])
def test_large_offsets_do_not_cancel(offset, shape):
    x = (offset + rng.standard_normal(shape)).astype(np.float32)
    rmean, rvar = ref_stats(x)   # float64 reference on the same float32 input
    mean, var = normrt.batch_norm_stats(x)
    # the float64 statistics, rounded once to float32
    assert np.all(np.abs(mean - rmean) <= np.spacing(np.float32(offset)))
    np.testing.assert_allclose(var, rvar, rtol=1e-6)
    C = shape[1]
    y = normrt.batch_norm(x, np.ones(C), np.zeros(C), mean, var, eps=1e-5)
    ref = ref_batch_norm(x, np.ones(C), np.zeros(C), mean, var, eps=1e-5)
    assert np.abs(y - ref).max() <= 1e-5
    gamma = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    beta = rng.standard_normal(shape).astype(np.float32)
    y = normrt.spade(x, gamma, beta)
    assert np.abs(y - ref_spade(x, gamma, beta)).max() <= 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [0.0, 3.3, -1e7, 0.1])
@pytest.mark.parametrize("shape", [(3, 4, 5), (3000, 4), (2, 4, 5000)])
def test_constant_channel_gives_exactly_bias_and_zero_variance(dtype, value, shape):
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    x[:, 1] = value
    mean, var = normrt.batch_norm_stats(x)
    assert mean[1] == dtype(value) and var[1] == 0
    C = shape[1]
    scale, bias, _, _ = params(C, dtype, rng)
    y = normrt.batch_norm(x, scale, bias, mean, var)
    np.testing.assert_array_equal(y[:, 1], np.full(y[:, 1].shape, bias[1]))
    beta = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(shape).astype(dtype)
    y = normrt.spade(x, gamma, beta)
    np.testing.assert_array_equal(y[:, 1], beta[:, 1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape", [(5, 4, 7), (9000, 4), (2, 4, 5000)])
@pytest.mark.parametrize("first", [False, True])
def test_nan_or_inf_stays_inside_its_channel(bad, shape, first):
    x = rng.standard_normal(shape).astype(np.float32)
    i = 0 if first else -1     # the first element of a chunk is its shift
    x[(i, 2) + (i,) * (x.ndim - 2)] = bad
    mean, var = normrt.batch_norm_stats(x)
    assert np.isnan(var[2]) and np.isfinite(np.delete(var, 2)).all()
    assert np.isfinite(np.delete(mean, 2)).all()
    good = [0, 1, 3]
    rmean, rvar = ref_stats(x[:, good])
    np.testing.assert_allclose(mean[good], rmean, rtol=1e-5, atol=1e-5)
    y = normrt.batch_norm(x, np.ones(4), np.zeros(4), mean, var)
    assert np.isnan(y[:, 2]).all() and np.isfinite(y[:, good]).all()
    y = normrt.spade(x, np.zeros(shape), np.zeros(shape))
    assert np.isnan(y[:, 2]).all() and np.isfinite(y[:, good]).all()


def test_zero_variance_and_zero_eps_give_nan_or_inf_without_warnings():
    x = np.ones((2, 3, 4), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = normrt.batch_norm(x, np.ones(3), np.zeros(3), np.zeros(3), np.zeros(3), eps=0)
        assert np.isinf(y).all()
        y = normrt.spade(x, np.zeros_like(x), np.zeros_like(x), eps=0)
        assert np.isnan(y).all()


@pytest.mark.parametrize("act", [None, "relu"])
@pytest.mark.parametrize("run", list(range(1, 35)) + [47, 49, 196, 3136])
def test_batch_norm_run_lengths(run, act):
    # each channel run in one vector pass with a masked tail (float32 None / relu)
    x = (rng.standard_normal((2, 5, run)) * 2).astype(np.float32)
    x[0, 1, run // 2] = np.nan
    p = params(5, np.float32, rng)
    y = normrt.batch_norm(x, *p, activation=act)
    want = ref_batch_norm(x, *p, act=act)
    np.testing.assert_allclose(y, want, **tol(np.float32))     # NaN where x has it
    assert np.isnan(y[0, 1, run // 2]) and np.isnan(y).sum() == 1
    if act == "relu":
        assert (y[~np.isnan(y)] >= 0).all()


@pytest.mark.parametrize("run", [16, 37])
def test_silu_epilogue_over_the_whole_float32_range(run):
    # y = x exactly (scale 1, mean 0, var 1, eps 0), so the SiLU sees every magnitude: exp's
    # clamps (|v| > 87), underflow to subnormal results, tiny and huge values, NaN
    vals = np.array([-200, -103.5, -100, -95, -88.5, -87.5, -80, -30, -1, -1e-30, 0.0, 1e-30, 0.5, 3, 20, 88.5,
                     100, 1e30, 3e38, np.nan], np.float32)
    x = np.resize(vals, run * 3).reshape(1, 3, run)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    y = normrt.batch_norm(x, ones, zeros, zeros, ones, eps=0.0, activation="silu")
    with np.errstate(over="ignore"):
        want = ref_act(x.astype(np.float64), "silu").astype(np.float32)
    # (below v = -88 exp(-v) is clamped at exp(88.4): the result is ~1e-36 instead of ~v e^v)
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=1e-35)
    assert np.array_equal(np.isnan(y), np.isnan(x))


def test_batch_norm_relu_keeps_the_sign_of_zero():
    # relu(v) is `0 if v < 0 else v`: -0.0 stays -0.0 (the scalar loops' rule, on every path)
    x = np.full((1, 2, 40), -0.0, np.float32)                # (-0 - 0) * 1 + -0 = -0; ... + 0 = +0
    y = normrt.batch_norm(x, np.ones(2), np.array([-0.0, 0.0]), np.zeros(2), np.ones(2), eps=0.0,
                          activation="relu")
    assert np.array_equal(np.signbit(y[0, 0]), np.ones(40, bool))
    assert not np.signbit(y[0, 1]).any()


@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p_dtypes", [(np.float32,) * 4, (np.float64,) * 4,
                                      (np.float32, np.float64, np.float32, np.float16), (np.int64,) * 4])
def test_batch_norm_parameter_dtypes(x_dtype, p_dtypes):
    # the statistics are read in float64 whatever their type: the same bits as float64 parameters
    x = (rng.standard_normal((2, 6, 9)) * 2).astype(x_dtype)
    p = [q.astype(dt) for q, dt in zip(params(6, np.float64, rng), p_dtypes)]
    p[3] = np.abs(p[3]) + 1                                   # int64 var: >= 1
    y = normrt.batch_norm(x, *p, activation="relu")
    assert y.dtype == x_dtype
    assert np.array_equal(y, normrt.batch_norm(x, *[q.astype(np.float64) for q in p], activation="relu"))
    np.testing.assert_allclose(y, ref_batch_norm(x, *p, act="relu"), **tol(x_dtype))


def test_batch_norm_non_contiguous_and_listed_parameters():
    x = rng.standard_normal((2, 4, 7)).astype(np.float32)
    p = params(8, np.float32, rng)
    strided = [q[::2] for q in p]                             # (4,), not contiguous
    listed = [list(q) for q in strided]
    want = ref_batch_norm(x, *strided)
    np.testing.assert_allclose(normrt.batch_norm(x, *strided), want, **tol(np.float32))
    np.testing.assert_allclose(normrt.batch_norm(x, *listed), want, **tol(np.float32))


# ---- determinism and concurrency --------------------------------------------

@pytest.mark.parametrize("shape", [(1, 256, 56, 56), (1, 992, 7, 7), (3, 7, 5000)])
def test_batch_norm_relu_bitwise_identical_for_any_thread_count(shape):
    x = rng.standard_normal(shape).astype(np.float32)
    p = params(shape[1], np.float32, rng)
    results = []
    for n in (1, 2, 3):
        with normrt.threads(n):
            results.append(normrt.batch_norm(x, *p, activation="relu"))
    assert all(np.array_equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("shape", [(1, 1, 400, 700), (2, 3, 256, 256), (200_000, 3), (64, 32, 7, 7),
                                   (3, 5000, 40)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bitwise_identical_for_any_thread_count(shape, dtype):
    x = (rng.standard_normal(shape) * 3 + 7).astype(dtype)
    gamma = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    p = params(C, dtype, rng)
    results = []
    for n in (1, 2, 8):
        with normrt.threads(n):
            results.append((*normrt.batch_norm_stats(x),
                            normrt.batch_norm(x, *p, activation="silu"),
                            normrt.spade(x, gamma, gamma)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


def test_concurrent_calls_from_python_threads():
    xs = [(rng.standard_normal((8, 16, 32, 32)) + i).astype(np.float32) for i in range(6)]
    g = rng.standard_normal((8, 16, 32, 32)).astype(np.float32)

    def work(x):
        mean, var = normrt.batch_norm_stats(x)
        return mean, var, normrt.spade(x, g, g), normrt.batch_norm(x, var, mean, mean, var)

    assert_concurrent_calls_match(work, xs)


# ---- layouts, out= and empty tensors -----------------------------------------

def test_fortran_and_strided_inputs():
    base = rng.standard_normal((6, 8, 10, 12)).astype(np.float32)
    for x in (np.asfortranarray(base), base[::2, ::3, :, ::2], base.transpose(0, 1, 3, 2)):
        xc = np.ascontiguousarray(x)
        C = x.shape[1]
        p = params(C, np.float32, rng)
        np.testing.assert_allclose(normrt.batch_norm(x, *p), ref_batch_norm(xc, *p), rtol=1e-5, atol=1e-5)
        mean, var = normrt.batch_norm_stats(x)
        rmean, rvar = ref_stats(xc)
        np.testing.assert_allclose(mean, rmean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(var, rvar, rtol=1e-5, atol=1e-5)
        g = np.asfortranarray(rng.standard_normal(x.shape).astype(np.float32))
        np.testing.assert_allclose(normrt.spade(x, g, g[::-1]), ref_spade(xc, g, g[::-1]),
                                   rtol=1e-5, atol=1e-5)
    # strided parameters
    x = base[0]
    scale = rng.standard_normal(16).astype(np.float32)[::2]
    np.testing.assert_allclose(normrt.batch_norm(x[None], scale, scale, scale, scale ** 2),
                               ref_batch_norm(x[None], scale, scale, scale, scale ** 2), rtol=1e-5, atol=1e-5)


def test_out_buffer_and_in_place():
    x = rng.standard_normal((3, 4, 50)).astype(np.float32)
    p = params(4, np.float32, rng)
    out = np.empty_like(x)
    assert normrt.batch_norm(x, *p, out=out) is out
    np.testing.assert_allclose(out, ref_batch_norm(x, *p), rtol=1e-5, atol=1e-5)
    xc = x.copy()
    assert normrt.batch_norm(xc, *p, out=xc) is xc
    np.testing.assert_array_equal(xc, out)
    g = rng.standard_normal(x.shape).astype(np.float32)
    ref = normrt.spade(x, g, g)
    xc = x.copy()
    assert normrt.spade(xc, g, g, out=xc) is xc
    np.testing.assert_array_equal(xc, ref)
    out = np.empty_like(x)
    assert normrt.spade(x, g, g, out=out) is out
    np.testing.assert_array_equal(out, ref)
    gc = g.copy()
    assert normrt.spade(x, gc, g, out=gc) is gc      # out may be gamma
    np.testing.assert_array_equal(gc, ref)
    flat = np.concatenate([g.ravel(), g.ravel()[:20]])
    shifted = flat[20:].reshape(x.shape)              # overlaps out at another offset
    expected = normrt.spade(x, shifted.copy(), g)
    out = flat[:x.size].reshape(x.shape)
    assert normrt.spade(x, shifted, g, out=out) is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("shape", [(0, 3), (2, 0, 5), (0, 3, 4), (2, 3, 0)])
def test_empty_tensors(shape):
    x = np.empty(shape, np.float32)
    C = shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert normrt.batch_norm(x, *params(C, np.float32, rng)).shape == shape
        assert normrt.spade(x, x, x).shape == shape
        mean, var = normrt.batch_norm_stats(x)
    assert mean.shape == var.shape == (C,) and mean.dtype == np.float32
    assert np.isnan(mean).all() and np.isnan(var).all()


# ---- bad input ----------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    x = np.ones((2, 3, 4), np.float32)
    p = [np.ones(3, np.float32)] * 4
    g = np.ones_like(x)
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.batch_norm(np.ones((2, 3), np.int32), *p)
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.batch_norm_stats(np.ones((2, 3), np.int16))
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.spade(np.ones((2, 3), bool), g, g)
    for i, name in enumerate(["scale", "bias", "mean", "var"]):
        bad = list(p)
        bad[i] = np.ones(4, np.float32)
        with pytest.raises(ValueError, match=rf"{name} must have shape \(3,\)"):
            normrt.batch_norm(x, *bad)
        bad[i] = None
        with pytest.raises(ValueError, match=rf"{name} is required: an array of shape \(3,\)"):
            normrt.batch_norm(x, *bad)
    for fn, args in ((normrt.batch_norm, p), (normrt.batch_norm_stats, ()), (normrt.spade, ())):
        with pytest.raises(ValueError, match="x must have rank >= 2"):
            if fn is normrt.spade:
                fn(np.ones(3, np.float32), np.ones(3), np.ones(3))
            else:
                fn(np.ones(3, np.float32), *args)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        normrt.batch_norm(x, *p, eps=-1e-5)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        normrt.spade(x, g, g, eps=-1.0)
    with pytest.raises(ValueError, match="activation must be one of"):
        normrt.batch_norm(x, *p, activation="swish")
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3, 4\)"):
        normrt.batch_norm(x, *p, out=np.empty((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match="out must have dtype float32"):
        normrt.spade(x, g, g, out=np.empty((2, 3, 4), np.float64))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        normrt.batch_norm(x, *p, out=np.empty((4, 3, 2), np.float32).T)
    with pytest.raises(ValueError, match="out must be a numpy array"):
        normrt.batch_norm(x, *p, out=[0.0] * 24)
    big = np.ones((3, 3, 4), np.float32)
    with pytest.raises(ValueError, match="out partially overlaps"):
        normrt.batch_norm(big[:2], *p, out=big[1:])
    with pytest.raises(ValueError, match=r"gamma must have shape \(2, 3, 4\)"):
        normrt.spade(x, np.ones((3, 4)), g)
    with pytest.raises(ValueError, match=r"beta must have shape \(2, 3, 4\)"):
        normrt.spade(x, g, np.ones((2, 3, 1)))
    with pytest.raises(ValueError, match="mean and var must be given together"):
        normrt.spade(x, g, g, mean=np.zeros(3))
    with pytest.raises(ValueError, match="mean and var must be given together"):
        normrt.spade(x, g, g, var=np.ones(3))
    with pytest.raises(ValueError, match=r"var must have shape \(3,\)"):
        normrt.spade(x, g, g, mean=np.zeros(3), var=np.ones(2))


# ---- property tests -------------------------------------------------------------

@st.composite
def channel_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=5, min_side=1, max_side=9))
    x = draw(hnp.arrays(dtype, shape, elements=st.floats(-100, 100, width=32)))
    offset = draw(st.sampled_from([0.0, 1e3]))
    return (x + offset).astype(dtype)


@settings(max_examples=120, deadline=None)
@given(channel_cases())
def test_property_batch_norm_stats_and_spade(x):
    dt = x.dtype.type
    mean, var = normrt.batch_norm_stats(x)
    rmean, rvar = ref_stats(x)
    scale = float(np.abs(x).max()) + 1.0
    t = 1e-5 if dt == np.float32 else 1e-12
    np.testing.assert_allclose(mean, rmean, rtol=t, atol=t * scale)
    np.testing.assert_allclose(var, rvar, rtol=t, atol=t * scale * scale)
    gamma = np.linspace(-0.5, 0.5, x.size).reshape(x.shape).astype(dt)
    y = normrt.spade(x, gamma, gamma[::-1], eps=1e-2)
    # a mean near 1e3 is exact to ~ulp(1e3) in float64 (in the reference too), then scaled by
    # up to 1/sqrt(eps) = 10
    np.testing.assert_allclose(y, ref_spade(x, gamma, gamma[::-1], eps=1e-2), **tol(dt, scale * 10))


@settings(max_examples=80, deadline=None)
@given(channel_cases(), st.sampled_from(ACTS))
def test_property_batch_norm(x, act):
    C = x.shape[1]
    scale = np.linspace(-2, 2, C)
    bias = np.linspace(1, -1, C)
    mean = np.linspace(-50, 50, C)
    var = np.linspace(0.5, 30, C)
    y = normrt.batch_norm(x, scale, bias, mean, var, activation=act)
    np.testing.assert_allclose(y, ref_batch_norm(x, scale, bias, mean, var, act=act), **tol(x.dtype))


def test_batch_norm_stats_in_float64_for_float32_input():
    x = (1e4 + np.random.default_rng(5).standard_normal((8, 3, 10, 10))).astype(np.float32)
    mean, var = normrt.batch_norm_stats(x, dtype=np.float64)
    assert mean.dtype == var.dtype == np.float64
    xd = x.astype(np.float64)
    np.testing.assert_allclose(mean, xd.mean(axis=(0, 2, 3)), rtol=1e-14)
    np.testing.assert_allclose(var, xd.var(axis=(0, 2, 3)), rtol=1e-7)   # float32 lanes per block
    y = normrt.batch_norm(x, np.ones(3), np.zeros(3), mean, var, eps=1e-5)
    ref = (xd - xd.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(xd.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    assert np.abs(y - ref).max() <= 1e-5
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        normrt.batch_norm_stats(x, dtype=np.int32)
