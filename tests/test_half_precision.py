"""float16 and bfloat16 on every normalization kernel, against float64 references.

Half precision is storage only: each kernel computes in float32/float64 and
rounds its output once, so every result must be within one rounding step of
the output dtype of the float64 reference computed from the same (exactly
widened) half-precision input.
"""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import normrt
from normrt._kernels import half_convert
from dtype_checks import (ACTS, ref_act, HALF_DTYPES, assert_close_in_dtype, assert_same_bits_for_threads, dtype_eps,
                      same_bits)

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
half_dtypes = pytest.mark.parametrize("dt", HALF_DTYPES, ids=lambda d: d.name)
fuzz = settings(max_examples=25, deadline=None)


def f64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


def standardize(x, axes, eps):
    m = x.mean(axis=axes, keepdims=True)
    v = ((x - m) ** 2).mean(axis=axes, keepdims=True)
    return (x - m) / np.sqrt(v + eps)


@st.composite
def half_data(draw, dt, shape, spread=(0.01, 300.0)):
    """Values of dt: a random scale and offset (so groups far from 0, nearly constant
    groups and wide ones all occur), then rounded to dt."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.floats(*spread))
    offset = draw(st.sampled_from([0.0, 1.0, -30.0, 1000.0]))
    x = rng.standard_normal(shape) * scale + offset
    if draw(st.booleans()):
        x[..., : max(1, shape[-1] // 3)] = offset      # part of each row constant
    return x.astype(dt)


def rand(shape, dt, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dt)


# ------------------------------------------------------------------ conversions

@pytest.mark.parametrize("portable", [False, True], ids=["simd", "portable"])
@half_dtypes
def test_every_half_value_widens_exactly(dt, portable):
    words = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(words.size, np.float32)
    half_convert.to_float32(words, out, 0 if dt == F16 else 1, 2, portable)
    ref = words.view(dt).astype(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(out.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])


@pytest.mark.parametrize("portable", [False, True], ids=["simd", "portable"])
@half_dtypes
def test_float32_rounds_to_nearest_even_like_numpy_and_ml_dtypes(dt, portable):
    rng = np.random.default_rng(1)
    grid = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(dt).astype(np.float64)
    grid = grid[np.isfinite(grid)]
    grid.sort()
    mid = (grid[:-1] + grid[1:]) / 2                       # exact ties: nearest even decides
    with np.errstate(over="ignore"):
        f = np.concatenate([
            rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
            grid.astype(np.float32), mid.astype(np.float32),
            np.nextafter(mid.astype(np.float32), np.float32(np.inf)),
            np.nextafter(mid.astype(np.float32), np.float32(-np.inf)),
            np.array([np.inf, -np.inf, np.nan, -np.nan, 65504.0, 65520.0, 65519.99, 3.4e38, 1e-45],
                     np.float32)])
    out = np.empty(f.size, np.uint16)
    half_convert.from_float32(f, out, 0 if dt == F16 else 1, 2, portable)
    with np.errstate(all="ignore"):
        ref = f.astype(dt).view(np.uint16)
    nan = np.isnan(f)
    assert np.isnan(out.view(dt)[nan].astype(np.float32)).all()      # NaN stays NaN
    assert np.array_equal(out[~nan], ref[~nan])


@half_dtypes
@pytest.mark.parametrize("threads", [1, 2])
def test_plan_conversions_into_buffers(dt, threads):
    """widen_into / narrow_into (a specialized plan's per-run conversions): the same bits as
    to_float32 / from_float32 for any layout of the half input and thread count; bad buffers raise."""
    kind = 0 if dt == F16 else 1
    x = rand((3, 70000), np.float32, seed=3, scale=100.0)
    h = x.astype(dt)
    for src in (h, h[:, ::-1], h.T):                 # contiguous, reversed and transposed views
        out = np.empty(src.shape, np.float32)
        assert half_convert.widen_into(src, out, kind, threads) is out
        assert np.array_equal(out, np.asarray(src).astype(np.float32))
    y = np.empty(x.shape, dt)
    assert half_convert.narrow_into(x, y, kind, threads) is y
    assert np.array_equal(y.view(np.uint16), x.astype(dt).view(np.uint16))
    half_convert.narrow_into(x.T, y.T.copy(), kind, threads)     # a non-contiguous f is copied first
    with pytest.raises(ValueError, match="out must be"):
        half_convert.widen_into(h, np.empty(x.shape, np.float64), kind, threads)
    with pytest.raises(ValueError, match="expected"):
        half_convert.widen_into(h[:, :5].T, np.empty(3 * 4, np.float32), kind, threads)
    with pytest.raises(ValueError, match="y must be"):
        half_convert.narrow_into(x, y.T, kind, threads)
    with pytest.raises(ValueError, match="f must have"):
        half_convert.narrow_into(x[:, :5], y, kind, threads)


def test_conversion_isa_is_reported():
    assert half_convert.isa() in ("avx512bf16", "avx512f", "f16c+avx2", "f16c", "avx2", "portable")


# ------------------------------------------------------------------ row norms

@half_dtypes
@fuzz
@given(data=st.data(), G=st.integers(1, 5), L=st.sampled_from([1, 3, 31, 768, 2049, 5000]),
       act=st.sampled_from(ACTS), param_dtype=st.sampled_from(["float32", "x"]),
       with_residual=st.booleans())
def test_layer_norm_half(dt, data, G, L, act, param_dtype, with_residual):
    x = data.draw(half_data(dt, (G, L)))
    pdt = np.float32 if param_dtype == "float32" else dt
    rng = np.random.default_rng(G * L)
    w = rng.standard_normal(L).astype(pdt)
    b = rng.standard_normal(L).astype(pdt)
    r = data.draw(half_data(dt, (G, L))) if with_residual else None
    y = normrt.layer_norm(x, w, b, residual=r, activation=act)
    h = f64(x if r is None else x + r)                    # the skip connection is summed in x's dtype
    z = standardize(h, (1,), 1e-5)
    ref = ref_act(z * f64(w) + f64(b), act)
    assert_close_in_dtype(y, ref, dt, scale=np.abs(z * f64(w)).max() + np.abs(f64(b)).max())


@half_dtypes
@fuzz
@given(data=st.data(), G=st.integers(1, 4), L=st.sampled_from([1, 7, 64, 4096, 4100]),
       with_residual=st.booleans())
def test_rms_norm_half(dt, data, G, L, with_residual):
    x = data.draw(half_data(dt, (G, L)))
    w = np.random.default_rng(L).standard_normal(L).astype(np.float32)
    r = data.draw(half_data(dt, (G, L))) if with_residual else None
    s = np.empty_like(x) if with_residual else None
    y = normrt.rms_norm(x, w, residual=r, residual_out=s, eps=1e-6)
    h = f64(x if r is None else x + r)
    ref = h / np.sqrt((h ** 2).mean(axis=1, keepdims=True) + 1e-6) * f64(w)
    assert_close_in_dtype(y, ref, dt)
    if with_residual:
        assert same_bits(s, x + r)


@half_dtypes
def test_layer_norm_half_stats_axis_and_in_place(dt):
    x = rand((3, 4, 5, 6), dt, 2, 4.0)
    y, mean, inv = normrt.layer_norm(x, axis=1, return_stats=True)
    xd = f64(x)
    ref = standardize(xd, (1, 2, 3), 1e-5)
    assert_close_in_dtype(y, ref, dt)
    assert mean.dtype == dt and inv.dtype == dt
    assert_close_in_dtype(mean, xd.mean(axis=(1, 2, 3), keepdims=True), dt)
    x2 = x.copy()
    out = normrt.layer_norm(x2, axis=1, out=x2)
    assert out is x2 and same_bits(x2, y)
    # the last axis, in place, float32 and half parameters (the no-check path and the checked one)
    w = rand(6, np.float32, 3)
    ref = normrt.rms_norm(x, w)
    for scale in (w, w.astype(dt)):
        x3 = x.copy()
        assert normrt.rms_norm(x3, scale, out=x3) is x3
        assert_close_in_dtype(x3, f64(x) / np.sqrt((f64(x) ** 2).mean(-1, keepdims=True) + 1e-5)
                              * f64(scale), dt)
    assert same_bits(ref, normrt.rms_norm(x, w, out=np.empty_like(x)))


# ------------------------------------------------------------------ channel norms

@half_dtypes
@fuzz
@given(data=st.data(), N=st.integers(1, 3), CG=st.sampled_from([(4, 1), (6, 3), (32, 8), (12, 12)]),
       S=st.sampled_from([(1,), (5, 7), (16, 16), (48, 48)]), act=st.sampled_from(ACTS),
       param_dtype=st.sampled_from(["float32", "x"]))
def test_group_norm_half(dt, data, N, CG, S, act, param_dtype):
    C, G = CG
    x = data.draw(half_data(dt, (N, C) + S))
    pdt = np.float32 if param_dtype == "float32" else dt
    rng = np.random.default_rng(C)
    w = rng.standard_normal(C).astype(pdt)
    b = rng.standard_normal(C).astype(pdt)
    y = normrt.group_norm(x, G, w, b, activation=act)
    xd = f64(x).reshape((N, G, -1))
    z = standardize(xd, (2,), 1e-5).reshape(x.shape)
    sh = (1, C) + (1,) * len(S)
    ref = ref_act(z * f64(w).reshape(sh) + f64(b).reshape(sh), act)
    assert_close_in_dtype(y, ref, dt, scale=np.abs(z).max() * np.abs(f64(w)).max() + np.abs(f64(b)).max())


@half_dtypes
@fuzz
@given(data=st.data(), N=st.integers(1, 3), C=st.integers(1, 5), S=st.sampled_from([(3,), (9, 9), (70, 70)]),
       per_sample=st.booleans(), act=st.sampled_from(ACTS))
def test_instance_norm_half(dt, data, N, C, S, per_sample, act):
    x = data.draw(half_data(dt, (N, C) + S))
    pshape = (N, C) if per_sample else (C,)
    rng = np.random.default_rng(N * C)
    w = rng.standard_normal(pshape).astype(np.float32)
    b = rng.standard_normal(pshape).astype(dt)
    y = normrt.instance_norm(x, w, b, activation=act)
    z = standardize(f64(x), tuple(range(2, x.ndim)), 1e-5)
    sh = (N if per_sample else 1, C) + (1,) * len(S)
    ref = ref_act(z * f64(w).reshape(sh) + f64(b).reshape(sh), act)
    assert_close_in_dtype(y, ref, dt, scale=np.abs(z).max() * np.abs(f64(w)).max() + np.abs(f64(b)).max())


@half_dtypes
@fuzz
@given(data=st.data(), shape=st.sampled_from([(4, 3), (2, 5, 1), (3, 37, 19, 23), (2, 8, 7), (1, 3, 130, 130)]),
       act=st.sampled_from(ACTS), stat_dtype=st.sampled_from([np.float32, np.float64]))
def test_batch_norm_half(dt, data, shape, act, stat_dtype):
    x = data.draw(half_data(dt, shape))
    C = shape[1]
    rng = np.random.default_rng(C)
    w, b, m = (rng.standard_normal(C).astype(stat_dtype) for _ in range(3))
    v = (rng.random(C) + 0.5).astype(stat_dtype)
    y = normrt.batch_norm(x, w, b, m, v, activation=act)
    sh = (1, C) + (1,) * (len(shape) - 2)
    a = f64(w) / np.sqrt(f64(v) + 1e-5)
    t = (f64(x) - f64(m).reshape(sh)) * a.reshape(sh)
    ref = ref_act(t + f64(b).reshape(sh), act)
    assert_close_in_dtype(y, ref, dt, scale=np.abs(t).max() + np.abs(f64(b)).max())


@half_dtypes
@fuzz
@given(data=st.data(), N=st.integers(1, 2), C=st.integers(1, 4), S=st.sampled_from([(4, 4), (33, 65)]),
       Ss=st.sampled_from([(3, 3), (50, 50)]), unbiased=st.booleans())
def test_adain_half(dt, data, N, C, S, Ss, unbiased):
    c = data.draw(half_data(dt, (N, C) + S))
    s = data.draw(half_data(dt, (N, C) + Ss))
    y = normrt.adain(c, s, unbiased=unbiased)
    ddof = 1 if unbiased else 0
    cd, sd = f64(c), f64(s)
    ax = (2, 3)
    ref = ((cd - cd.mean(ax, keepdims=True)) / np.sqrt(cd.var(ax, ddof=ddof, keepdims=True) + 1e-5)
           * np.sqrt(sd.var(ax, ddof=ddof, keepdims=True) + 1e-5) + sd.mean(ax, keepdims=True))
    assert_close_in_dtype(y, ref, dt)


@half_dtypes
@fuzz
@given(data=st.data(), shape=st.sampled_from([(2, 3, 5, 5), (1, 4, 33, 40)]), running=st.booleans())
def test_spade_half(dt, data, shape, running):
    x = data.draw(half_data(dt, shape))
    rng = np.random.default_rng(shape[1])
    g = rng.standard_normal(shape).astype(dt)
    b = rng.standard_normal(shape).astype(np.float32)
    C = shape[1]
    xd = f64(x)
    if running:
        m, v = rng.standard_normal(C), rng.random(C) + 0.5
        y = normrt.spade(x, g, b, mean=m, var=v)
    else:
        y = normrt.spade(x, g, b)
        m, v = xd.mean((0, 2, 3)), xd.var((0, 2, 3))
    sh = (1, C, 1, 1)
    z = (xd - m.reshape(sh)) / np.sqrt(v.reshape(sh) + 1e-5)
    ref = z * (1 + f64(g)) + f64(b.astype(dt))                   # beta is cast to x's dtype
    assert_close_in_dtype(y, ref, dt, scale=np.abs(z * (1 + f64(g))).max() + np.abs(f64(b)).max())


# ------------------------------------------------------------------ the other normalizations

@half_dtypes
@fuzz
@given(data=st.data(), shape=st.sampled_from([(2, 3, 4, 5), (1, 8, 30, 30), (6, 100)]),
       axes_pick=st.integers(0, 2))
def test_mean_variance_norm_half(dt, data, shape, axes_pick):
    x = data.draw(half_data(dt, shape))
    axes = [tuple(i for i in (0, 2, 3) if i < len(shape)), (len(shape) - 1,), (0,)][axes_pick]
    y = normrt.mean_variance_norm(x, axes=axes)
    xd = f64(x)
    ref = (xd - xd.mean(axes, keepdims=True)) / (xd.std(axes, keepdims=True) + 1e-9)
    # a constant group is exactly 0 in both
    assert_close_in_dtype(y, ref, dt)


@half_dtypes
@fuzz
@given(data=st.data(), shape=st.sampled_from([(3, 10), (2, 5, 7), (4, 3000)]), p=st.sampled_from([1, 2]),
       axis=st.sampled_from([-1, 0, 1]))
def test_lp_norm_half(dt, data, shape, p, axis):
    x = data.draw(half_data(dt, shape))
    y = normrt.lp_norm(x, p=p, axis=axis)
    xd = f64(x)
    n = np.abs(xd).sum(axis, keepdims=True) if p == 1 else np.sqrt((xd ** 2).sum(axis, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.where(n == 0, 0.0, xd / n)
    assert_close_in_dtype(y, ref, dt)


@half_dtypes
@fuzz
@given(data=st.data(), shape=st.sampled_from([(1, 5, 4, 4), (2, 16, 9, 9)]), size=st.integers(1, 6))
def test_lrn_half(dt, data, shape, size):
    x = data.draw(half_data(dt, shape, spread=(0.01, 30.0)))
    y = normrt.lrn(x, size, alpha=1e-3, beta=0.75, bias=2.0)
    xd = f64(x)
    C = shape[1]
    sq = np.zeros_like(xd)
    for c in range(C):
        lo, hi = max(0, c - (size - 1) // 2), min(C - 1, c + size // 2)
        sq[:, c] = (xd[:, lo:hi + 1] ** 2).sum(1)
    ref = xd / (2.0 + 1e-3 / size * sq) ** 0.75
    assert_close_in_dtype(y, ref, dt)


@half_dtypes
@fuzz
@given(data=st.data(), shape=st.sampled_from([(4, 6), (2, 3, 50), (3, 4, 5, 6)]), keepdims=st.booleans())
def test_moments_and_batch_norm_stats_half(dt, data, shape, keepdims):
    x = data.draw(half_data(dt, shape))
    xd = f64(x)
    axes = (0,) + tuple(range(2, len(shape)))
    mean, var = normrt.moments(x, axes, keepdims=keepdims)
    assert_close_in_dtype(mean, xd.mean(axes, keepdims=keepdims), dt, f32_rel=0)
    assert_close_in_dtype(var, xd.var(axes, keepdims=keepdims), dt, f32_rel=0)
    bm, bv = normrt.batch_norm_stats(x)
    assert same_bits(bm, mean.reshape(-1)) and same_bits(bv, var.reshape(-1))
    m64, v64 = normrt.batch_norm_stats(x, dtype=np.float64)
    np.testing.assert_allclose(m64, xd.mean(axes), rtol=1e-12, atol=1e-12 * np.abs(xd).max())
    np.testing.assert_allclose(v64, xd.var(axes), rtol=1e-6, atol=1e-300)


# ------------------------------------------------------------------ edge values

@half_dtypes
def test_constant_groups_give_exactly_the_bias(dt):
    x = np.full((2, 6, 5, 5), 3.0, dt)
    b = np.linspace(-1, 1, 6).astype(dt)
    w = np.ones(6, np.float32)
    assert same_bits(normrt.group_norm(x, 3, w, b), np.broadcast_to(b.reshape(1, 6, 1, 1), x.shape))
    assert same_bits(normrt.instance_norm(x, w, b), np.broadcast_to(b.reshape(1, 6, 1, 1), x.shape))
    xr = np.full((3, 2500), -7.5, dt)
    br = np.linspace(-2, 2, 2500).astype(dt)
    assert same_bits(normrt.layer_norm(xr, np.ones(2500, dt), br), np.broadcast_to(br, xr.shape))
    assert same_bits(normrt.rms_norm(np.zeros((2, 9), dt)), np.zeros((2, 9), dt))


@half_dtypes
def test_nan_and_inf_stay_in_their_group(dt):
    x = rand((4, 300), dt, 3)
    x[1, 7] = np.nan
    x[2, 9] = np.inf
    y = normrt.layer_norm(x)
    assert np.isnan(y[1].astype(np.float32)).all() and np.isnan(y[2].astype(np.float32)).all()
    assert_close_in_dtype(y[[0, 3]], standardize(f64(x[[0, 3]]), (1,), 1e-5), dt)
    img = rand((2, 4, 8, 8), dt, 4)
    img[0, 1, 2, 3] = -np.inf
    g = normrt.group_norm(img, 2).astype(np.float32)
    assert np.isnan(g[0, :2]).all() and not np.isnan(g[0, 2:]).any() and not np.isnan(g[1]).any()
    img[1, 0, 0, 0] = np.nan
    bn = normrt.batch_norm(img, np.ones(4), np.zeros(4), np.zeros(4), np.ones(4)).astype(np.float32)
    assert bn[0, 1, 2, 3] == -np.inf and np.isnan(bn[1, 0, 0, 0]) and np.isnan(bn).sum() == 1
    # relu keeps NaN
    assert np.isnan(normrt.layer_norm(x, activation="relu")[1].astype(np.float32)).all()


def test_bfloat16_covers_float32_magnitudes():
    # bfloat16 has float32's exponent range: its squares overflow float32 partial sums
    x = (np.random.default_rng(5).standard_normal((3, 700)) * 1e36).astype(BF16)
    assert_close_in_dtype(normrt.layer_norm(x), standardize(f64(x), (1,), 1e-5), BF16)
    ref = f64(x) / np.sqrt((f64(x) ** 2).mean(1, keepdims=True) + 1e-5)
    assert_close_in_dtype(normrt.rms_norm(x), ref, BF16)
    img = x.reshape(3, 7, 10, 10)
    assert_close_in_dtype(normrt.group_norm(img, 7), standardize(f64(img), (2, 3), 1e-5), BF16)


def test_float16_outputs_that_overflow_are_inf():
    x = np.array([[0.0, 1.0]], F16)
    y = normrt.layer_norm(x, np.array([1e5, 1e5], np.float32))     # +-1e5 does not fit float16
    assert np.array_equal(y.astype(np.float32), np.array([[-np.inf, np.inf]], np.float32))


# ------------------------------------------------------------------ the float32 tail

@pytest.mark.parametrize("magnitude", [1e20, 1e30, 3e37, 5e37])
def test_float32_huge_magnitudes_are_right(magnitude):
    rng = np.random.default_rng(6)
    x = (np.clip(rng.standard_normal((5, 3000)), -6, 6) * magnitude).astype(np.float32)
    xd = f64(x)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(normrt.layer_norm(x), standardize(xd, (1,), 1e-5), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(normrt.rms_norm(x), xd / np.sqrt((xd ** 2).mean(1, keepdims=True)),
                               rtol=2e-5, atol=2e-6)
    img = x.reshape(5, 6, 20, 25)
    np.testing.assert_allclose(normrt.group_norm(img, 3), standardize(f64(img).reshape(5, 3, -1), (2,), 1e-5)
                               .reshape(img.shape), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(normrt.instance_norm(img), standardize(f64(img), (2, 3), 1e-5),
                               rtol=2e-5, atol=2e-6)
    mean, var = normrt.batch_norm_stats(img, dtype=np.float64)
    np.testing.assert_allclose(var, f64(img).var((0, 2, 3)), rtol=1e-6)


def test_float32_tiny_magnitudes_keep_their_variance():
    # squares of 1e-25 underflow float32: with eps=0 the variance itself must survive
    x = (np.random.default_rng(7).standard_normal((3, 500)) * 1e-25).astype(np.float32)
    np.testing.assert_allclose(normrt.layer_norm(x, eps=0.0), standardize(f64(x), (1,), 0.0), rtol=1e-5,
                               atol=1e-6)
    ref = f64(x) / np.sqrt((f64(x) ** 2).mean(1, keepdims=True))
    np.testing.assert_allclose(normrt.rms_norm(x, eps=0.0), ref, rtol=1e-5, atol=1e-6)


def test_float32_huge_mixed_signs_do_not_overflow():
    x = np.array([[3e38, -3e38, 1e38, 0.0, -2e38]], np.float32)
    np.testing.assert_allclose(normrt.layer_norm(x), standardize(f64(x), (1,), 1e-5), rtol=1e-6)


# ------------------------------------------------------------------ determinism

@half_dtypes
@pytest.mark.parametrize("case", ["ln_rows", "ln_chunks", "ln_residual", "rms_chunks", "gn_rows", "gn_chunks",
                                  "in_silu", "bn", "bn_cols", "adain", "moments"])
def test_half_bitwise_identical_for_any_thread_count(dt, case):
    if case == "ln_rows":
        x = rand((80, 1000), dt, 1)
        fn = lambda: normrt.layer_norm(x, rand(1000, dt, 2), activation="gelu")
    elif case == "ln_chunks":
        x = rand((1, 70000), dt, 1)
        fn = lambda: normrt.layer_norm(x, return_stats=True)
    elif case == "ln_residual":
        x, r = rand((2, 40000), dt, 1), rand((2, 40000), dt, 2)
        fn = lambda: normrt.layer_norm(x, residual=r, activation="silu")
    elif case == "rms_chunks":
        x = rand((2, 50000), dt, 1)
        fn = lambda: normrt.rms_norm(x, rand(50000, np.float32, 3))
    elif case == "gn_rows":
        x = rand((2, 64, 32, 32), dt, 1, 3.0)
        fn = lambda: normrt.group_norm(x, 8, rand(64, np.float32, 2), rand(64, dt, 3), activation="silu")
    elif case == "gn_chunks":
        x = rand((1, 6, 64, 64), dt, 1, 3.0)
        fn = lambda: normrt.group_norm(x, 2)
    elif case == "in_silu":
        x = rand((2, 8, 48, 48), dt, 1)
        fn = lambda: normrt.instance_norm(x, activation="silu")
    elif case == "bn":
        x = rand((4, 16, 37, 41), dt, 1)
        p = [rand(16, np.float32, i) for i in range(4)]
        p[3] = np.abs(p[3]) + 0.5
        fn = lambda: normrt.batch_norm(x, *p, activation="relu")
    elif case == "bn_cols":
        x = rand((5000, 24), dt, 1)
        p = [rand(24, np.float64, i) for i in range(4)]
        p[3] = np.abs(p[3]) + 0.5
        fn = lambda: normrt.batch_norm(x, *p, activation="gelu")
    elif case == "adain":
        c, s = rand((2, 8, 60, 60), dt, 1), rand((2, 8, 30, 30), dt, 2)
        fn = lambda: normrt.adain(c, s)
    else:
        x = rand((8, 32, 40, 40), dt, 1, 5.0)
        fn = lambda: normrt.moments(x, (0, 2, 3))
    assert_same_bits_for_threads(fn)


# ------------------------------------------------------------------ arguments

@half_dtypes
def test_half_arguments_are_checked(dt):
    x = rand((2, 8), dt)
    other = BF16 if dt == F16 else F16          # the same 16-bit words to a kernel: refused here
    with pytest.raises(ValueError, match=f"out must have dtype {dt.name}"):
        normrt.layer_norm(x, out=np.empty((2, 8), np.float32))
    with pytest.raises(ValueError, match=f"out must have dtype {dt.name}"):
        normrt.layer_norm(x, np.ones(8, np.float32), out=np.empty((2, 8), other))
    with pytest.raises(ValueError, match=f"out must have dtype {dt.name}"):
        normrt.rms_norm(x, out=np.empty((2, 8), other))
    with pytest.raises(ValueError, match=f"out must have dtype {dt.name}"):
        normrt.group_norm(x.reshape(2, 4, 2), 2, out=np.empty((2, 4, 2), other))
    with pytest.raises(ValueError, match=f"out must have dtype {dt.name}"):
        normrt.batch_norm(x, *[np.ones(8)] * 4, out=np.empty((2, 8), other))
    y = normrt.rms_norm(x, np.ones(8, np.float32), residual=x.astype(other))   # cast to x's dtype
    assert same_bits(y, normrt.rms_norm(x, np.ones(8, np.float32), residual=x.astype(other).astype(dt)))
    with pytest.raises(ValueError, match="scale must have shape"):
        normrt.layer_norm(x, np.ones(7, dt))
    with pytest.raises(ValueError, match="residual must have shape"):
        normrt.rms_norm(x, residual=rand((2, 9), dt))
    y = normrt.layer_norm(x, residual=x.astype(np.float32))           # cast to x's dtype
    assert same_bits(y, normrt.layer_norm(x, residual=x))
    assert normrt.layer_norm(np.empty((0, 8), dt)).dtype == dt
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        normrt.layer_norm(np.ones((2, 8), np.int16))                    # 2 bytes, not a half dtype
    assert normrt.group_norm(np.empty((0, 4, 3), dt), 2).shape == (0, 4, 3)
    assert normrt.batch_norm(np.empty((0, 4), dt), *[np.ones(4)] * 4).dtype == dt


def test_float32_and_half_scale_give_the_same_bits():
    x = rand((3, 40), BF16, 8)
    w = rand(40, BF16, 9)
    assert same_bits(normrt.layer_norm(x, w, w), normrt.layer_norm(x, w.astype(np.float32), w.astype(np.float32)))
    assert dtype_eps(BF16) == 2.0 ** -7 and dtype_eps(F16) == 2.0 ** -10
