"""layer_norm_2d and rms_norm_2d (channels-first statistics over axis 1) against float64 numpy."""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import normrt
from dtype_checks import ACTS, ALL_FLOAT_DTYPES, assert_close_in_dtype, assert_same_bits_for_threads, ref_act, same_bits


def ref_channel_norm(x, scale=None, bias=None, eps=1e-6, act=None, rms=False, shift=0.0):
    """Float64 reference; `shift` (exact in x's dtype) is subtracted first: a LayerNorm does not
    depend on it, and x - shift is exact near the shift, so offsets cost the reference no digits."""
    h = x.astype(np.float64)
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    if rms:
        y = h / np.sqrt((h * h).mean(axis=1, keepdims=True) + eps)
    else:
        h = h - shift
        mean = h.mean(axis=1, keepdims=True)
        var = ((h - mean) ** 2).mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):     # C = 1, eps = 0: 0 / 0
            y = (h - mean) / np.sqrt(var + eps)
    if scale is not None:
        y = y * np.asarray(scale, np.float64).reshape(bshape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(bshape)
    return ref_act(y, act)


def fn(rms):
    return normrt.rms_norm_2d if rms else normrt.layer_norm_2d


def check(y, ref, dtype, act):
    if np.dtype(dtype) == np.float64:
        assert_close_in_dtype(y, ref, dtype, ulps=16, f32_rel=1e-13)
    elif np.dtype(dtype) == np.float32:
        # the output is rounded once from float64 (the float32 activations: a few ulp)
        assert_close_in_dtype(y, ref, dtype, ulps=8 if act else 1, f32_rel=2.0 ** -22)
    else:
        assert_close_in_dtype(y, ref, dtype, ulps=2, f32_rel=2.0 ** -20)


@st.composite
def cases(draw):
    rank = draw(st.integers(2, 5))
    shape = [draw(st.integers(1, 4)), draw(st.integers(1, 40))] + \
        [draw(st.integers(1, 9 if rank < 5 else 4)) for _ in range(rank - 2)]
    if rank >= 3 and draw(st.booleans()):
        shape[-1] = draw(st.integers(60, 140))          # several position blocks
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rms = draw(st.booleans())
    offset = 0.0 if rms else draw(st.sampled_from([0.0, 1e3, 1e7]))
    magnitude = draw(st.sampled_from([1.0, 1e-20, 1e30]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    has_scale, has_bias = draw(st.booleans()), draw(st.booleans())
    act = draw(st.sampled_from(ACTS))
    # eps comparable to the variance only at magnitude 1 (else it would hide the statistics);
    # tiny deviations on a large offset round to a constant: eps keeps those finite
    eps = draw(st.sampled_from([0.0, 1e-6, 1e-2])) if magnitude == 1.0 else (1e-6 if offset else 0.0)
    return tuple(shape), dtype, rms, offset, magnitude, seed, has_scale, has_bias, act, eps


@settings(max_examples=80, deadline=None)
@given(cases())
def test_matches_float64_reference(case):
    shape, dtype, rms, offset, magnitude, seed, has_scale, has_bias, act, eps = case
    rng = np.random.default_rng(seed)
    # deviations of `magnitude` around `offset` (in x's dtype: offset + d rounded once)
    x = (offset + rng.standard_normal(shape) * magnitude).astype(dtype)
    C = shape[1]
    scale = rng.uniform(-2, 2, C).astype(dtype) if has_scale else None
    bias = rng.uniform(-1, 1, C).astype(dtype) if has_bias else None
    if rms and magnitude == 1e30 and dtype == np.float32:
        x = (rng.standard_normal(shape) * 1e30).astype(dtype)
    y = fn(rms)(x, scale, bias, eps=eps, activation=act)
    ref = ref_channel_norm(x, scale, bias, eps, act, rms, shift=dtype(offset))
    assert y.shape == x.shape and y.dtype == x.dtype
    check(y, ref, dtype, act)


@pytest.mark.parametrize("dtype", ALL_FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("shape", [(2, 96, 7, 9), (1, 3, 130), (3, 5), (2, 4, 3, 2, 5)])
def test_every_dtype_and_rank(dtype, rms, shape):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    pdt = np.float32 if dtype in ALL_FLOAT_DTYPES[2:] else dtype
    scale, bias = rng.uniform(0.5, 1.5, shape[1]).astype(pdt), rng.uniform(-1, 1, shape[1]).astype(pdt)
    y = fn(rms)(x, scale, bias, eps=1e-5, activation="silu")
    check(y, ref_channel_norm(x, scale, bias, 1e-5, "silu", rms), dtype, "silu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [0.0, 3.7, -1e7, 1e30, -2.5e-30])
def test_constant_positions_give_exactly_the_bias(dtype, value):
    rng = np.random.default_rng(5)
    N, C, H, W = 2, 37, 5, 70
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    x[1, :, 3, 11] = value
    x[0, :, :, 64:] = value                   # a whole block of positions
    scale, bias = rng.uniform(-2, 2, C).astype(dtype), rng.uniform(-1, 1, C).astype(dtype)
    y = normrt.layer_norm_2d(x, scale, bias, eps=1e-6)
    assert same_bits(y[1, :, 3, 11], bias)
    assert same_bits(y[0, :, :, 64:], np.broadcast_to(bias[:, None, None], (C, H, W - 64)))
    y0 = normrt.layer_norm_2d(x, eps=1e-6)
    assert np.all(y0[1, :, 3, 11] == 0)


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_stays_in_its_position(rms, bad):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 12, 3, 80)).astype(np.float32)
    clean = fn(rms)(x, eps=1e-6)
    x[1, 5, 2, 70] = bad
    y = fn(rms)(x, eps=1e-6)
    col = y[1, :, 2, 70]
    if rms and np.isinf(bad):            # x / inf: 0 in the other channels, inf / inf there
        assert np.isnan(col[5]) and np.all(np.delete(col, 5) == 0)
    else:
        assert np.all(np.isnan(col))
    mask = np.ones(y.shape, bool)
    mask[1, :, 2, 70] = False
    assert same_bits(y[mask], clean[mask])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("shape", [(2, 64, 33, 31), (1, 300, 130), (5, 8, 2000)])
def test_bitwise_identical_for_any_thread_count(dtype, rms, shape):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) + 1e3).astype(dtype)
    scale, bias = rng.uniform(-2, 2, shape[1]).astype(dtype), rng.uniform(-1, 1, shape[1]).astype(dtype)
    assert_same_bits_for_threads(lambda: fn(rms)(x, scale, bias, eps=1e-6, activation="gelu"))


def test_matches_layer_norm_over_the_channels_moved_last():
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((2, 24, 6, 10)) + 2).astype(np.float64)
    w, b = rng.standard_normal(24), rng.standard_normal(24)
    want = np.moveaxis(normrt.layer_norm(np.moveaxis(x, 1, -1), w, b, eps=1e-6), -1, 1)
    np.testing.assert_allclose(normrt.layer_norm_2d(x, w, b, eps=1e-6), want, rtol=1e-12, atol=1e-12)
    want = np.moveaxis(normrt.rms_norm(np.moveaxis(x, 1, -1), w, eps=1e-6), -1, 1)
    np.testing.assert_allclose(normrt.rms_norm_2d(x, w, eps=1e-6), want, rtol=1e-12, atol=1e-12)


def test_parameter_shapes_out_and_strided_inputs():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 6, 4, 5)).astype(np.float32)
    w, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    want = normrt.layer_norm_2d(x, w, b)
    for sw, sb in ((w.reshape(6, 1, 1), b.reshape(1, 6, 1, 1)), (w.astype(np.float64), list(b))):
        assert same_bits(normrt.layer_norm_2d(x, sw, sb), want)
    out = np.empty_like(x)
    assert normrt.layer_norm_2d(x, w, b, out=out) is out and same_bits(out, want)
    xc = x.copy()
    assert same_bits(normrt.layer_norm_2d(xc, w, b, out=xc), want)          # in place
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)   # not C-contiguous
    assert same_bits(normrt.layer_norm_2d(xt, w, b), want)
    e = np.empty((0, 6, 4, 5), np.float32)
    assert normrt.rms_norm_2d(e, w).shape == e.shape


def test_bad_arguments_raise_clear_errors():
    x = np.ones((2, 3, 4), np.float32)
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.layer_norm_2d(np.ones((2, 3, 4), np.int32))
    with pytest.raises(ValueError, match="x must have rank >= 2"):
        normrt.layer_norm_2d(np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"scale must hold one value per channel: shape \(3,\)"):
        normrt.layer_norm_2d(x, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="bias must hold one value per channel"):
        normrt.rms_norm_2d(x, None, np.ones((1, 1, 4), np.float32))
    with pytest.raises(TypeError, match="scale must be numeric"):
        normrt.layer_norm_2d(x, np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        normrt.layer_norm_2d(x, eps=-1.0)
    with pytest.raises(TypeError, match="eps must be a real number"):
        normrt.rms_norm_2d(x, eps="small")
    with pytest.raises(ValueError, match="activation must be one of"):
        normrt.layer_norm_2d(x, activation="swish")
    with pytest.raises(ValueError, match="out must have shape"):
        normrt.layer_norm_2d(x, out=np.empty((2, 3), np.float32))
    with pytest.raises(ValueError, match="out must have dtype"):
        normrt.layer_norm_2d(x, out=np.empty((2, 3, 4), np.float64))
    with pytest.raises(ValueError, match="out partially overlaps"):
        big = np.ones((3, 3, 4), np.float32)
        normrt.layer_norm_2d(big[:2], out=big[1:])


def test_half_precision_parameters_may_come_as_x_dtype():
    x = np.linspace(-3, 3, 2 * 5 * 7).reshape(2, 5, 7).astype(ml_dtypes.bfloat16)
    w = np.linspace(0.5, 1.5, 5).astype(ml_dtypes.bfloat16)
    y = normrt.layer_norm_2d(x, w, w)
    check(y, ref_channel_norm(x, w, w), x.dtype, None)


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("spread", [1e36, 1e20, 1e-22])
def test_a_position_of_extreme_spread_leaves_its_neighbours_bits_alone(rms, spread):
    # float32 positions whose squares leave float32's range (1e20: they overflow, 1e-22: they
    # are subnormal) get their statistics in float64, those whose std exceeds ~1e30 their
    # output too; the others must not notice (each position's result depends on its own values)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 20, 70)).astype(np.float32)
    w, b = rng.uniform(-2, 2, 20).astype(np.float32), rng.uniform(-1, 1, 20).astype(np.float32)
    clean = fn(rms)(x, w, b, activation="silu")
    x[0, :, 33] = rng.standard_normal(20) * spread + (0 if rms else 3 * spread)
    y = fn(rms)(x, w, b, activation="silu")
    assert same_bits(np.delete(y, 33, axis=2), np.delete(clean, 33, axis=2))
    check(y[:, :, 33:34], ref_channel_norm(x[:, :, 33:34], w, b, 1e-6, "silu", rms), np.float32, "silu")
