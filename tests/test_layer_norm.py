"""layer_norm and rms_norm against float64 numpy references."""
import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import normrt
from dtype_checks import ACTS, assert_concurrent_calls_match, ref_act, same_bits


def ref_layer_norm(x, scale=None, bias=None, axis=-1, eps=1e-5, residual=None, act=None):
    h = x if residual is None else (x + residual)  # the sum is taken in x's dtype
    h = h.astype(np.float64)
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = h.mean(axis=axes, keepdims=True)
    var = ((h - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (h - mean) / np.sqrt(var + eps)
    if scale is not None:
        y = y * scale.astype(np.float64)
    if bias is not None:
        y = y + bias.astype(np.float64)
    return ref_act(y, act), mean, 1 / np.sqrt(var + eps)


def ref_rms_norm(x, scale=None, axis=-1, eps=1e-5, residual=None):
    h = (x if residual is None else x + residual).astype(np.float64)
    axes = tuple(range(axis % x.ndim, x.ndim))
    y = h / np.sqrt((h * h).mean(axis=axes, keepdims=True) + eps)
    return y if scale is None else y * scale.astype(np.float64)


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


rng = np.random.default_rng(1234)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((4, 16), -1), ((2, 3, 40), -1), ((2, 3, 40), 1),
                                         ((3, 5000), -1), ((1, 3, 7, 9), 0), ((2, 8193), 1)])
@pytest.mark.parametrize("act", ACTS)
def test_layer_norm_matches_reference(dtype, shape, axis, act):
    x = rng.standard_normal(shape).astype(dtype)
    nshape = x.shape[axis % x.ndim:]
    scale = rng.standard_normal(nshape).astype(dtype)
    bias = rng.standard_normal(nshape).astype(dtype)
    y = normrt.layer_norm(x, scale, bias, axis=axis, eps=1e-3, activation=act)
    ref, _, _ = ref_layer_norm(x, scale, bias, axis, 1e-3, act=act)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, ref, **tol(dtype))


def test_layer_norm_scale_and_bias_broadcast_over_normalized_axes():
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    scale = rng.standard_normal((1, 5)).astype(np.float32)
    bias = np.float32(0.5)
    y = normrt.layer_norm(x, scale, bias, axis=2)
    ref, _, _ = ref_layer_norm(x, np.broadcast_to(scale, (4, 5)), np.full((4, 5), 0.5), axis=2)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_return_stats_have_onnx_shapes(dtype):
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    y, mean, inv = normrt.layer_norm(x, axis=2, return_stats=True)
    ref, rmean, rinv = ref_layer_norm(x, axis=2)
    assert mean.shape == inv.shape == (2, 3, 1, 1)
    assert mean.dtype == inv.dtype == dtype
    np.testing.assert_allclose(y, ref, **tol(dtype))
    np.testing.assert_allclose(mean, rmean, **tol(dtype))
    np.testing.assert_allclose(inv, rinv, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("shape", [(8, 64), (1, 50_000)])
def test_layer_norm_with_residual_normalizes_the_sum(shape):
    x = rng.standard_normal(shape).astype(np.float32)
    r = rng.standard_normal(shape).astype(np.float32)
    scale = rng.standard_normal(shape[-1]).astype(np.float32)
    y = normrt.layer_norm(x, scale, residual=r, activation="gelu")
    ref, _, _ = ref_layer_norm(x, scale, residual=r, act="gelu")
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # inputs are not modified
    y2 = normrt.layer_norm(x, scale, residual=r, activation="gelu")
    np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((4, 16), -1), ((2, 3, 40), 1), ((1, 20000), -1)])
def test_rms_norm_matches_reference(dtype, shape, axis):
    x = rng.standard_normal(shape).astype(dtype)
    scale = rng.standard_normal(x.shape[axis % x.ndim:]).astype(dtype)
    np.testing.assert_allclose(normrt.rms_norm(x, scale, axis=axis), ref_rms_norm(x, scale, axis), **tol(dtype))
    np.testing.assert_allclose(normrt.rms_norm(x, axis=axis), ref_rms_norm(x, None, axis), **tol(dtype))


def test_rms_norm_with_residual():
    x = rng.standard_normal((6, 300)).astype(np.float32)
    r = rng.standard_normal((6, 300)).astype(np.float32)
    np.testing.assert_allclose(normrt.rms_norm(x, residual=r, eps=1e-6), ref_rms_norm(x, residual=r, eps=1e-6),
                               rtol=1e-5, atol=1e-5)


# ---- numerics -------------------------------------------------------------

@pytest.mark.parametrize("offset", [1e4, 1e6, 1e7])
@pytest.mark.parametrize("shape", [(16, 768), (1, 100_000)])
def test_large_offsets_do_not_cancel(offset, shape):
    x = (offset + rng.standard_normal(shape)).astype(np.float32)
    y = normrt.layer_norm(x)
    ref, _, _ = ref_layer_norm(x)   # float64 reference on the same float32 input
    assert np.abs(y - ref).max() <= 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [0.0, 3.3, -1e7, 0.1])
def test_constant_rows_give_exactly_bias(dtype, value):
    x = np.full((3, 5000), value, dtype)
    bias = rng.standard_normal(5000).astype(dtype)
    scale = rng.standard_normal(5000).astype(dtype)
    y = normrt.layer_norm(x, scale, bias)
    np.testing.assert_array_equal(y, np.broadcast_to(bias, x.shape))
    np.testing.assert_array_equal(normrt.rms_norm(np.zeros((2, 9), dtype)), np.zeros((2, 9), dtype))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("L", [100, 9000])
def test_nan_or_inf_stays_inside_its_row(bad, L):
    x = rng.standard_normal((4, L)).astype(np.float32)
    x[2, L // 3] = bad
    for fn in (normrt.layer_norm, normrt.rms_norm):
        y = fn(x)
        if fn is normrt.layer_norm or not np.isinf(bad):
            assert np.isnan(y[2]).all()
        assert np.isfinite(y[[0, 1, 3]]).all()
    ref, _, _ = ref_layer_norm(x[[0, 1, 3]])
    np.testing.assert_allclose(normrt.layer_norm(x)[[0, 1, 3]], ref, rtol=1e-5, atol=1e-5)


# ---- determinism and concurrency ------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1_000_003), (3, 70_001), (64, 768)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bitwise_identical_for_any_thread_count(shape, dtype):
    x = (rng.standard_normal(shape) * 3 + 7).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    s = rng.standard_normal(shape[-1]).astype(dtype)
    outs = []
    for n in (1, 2, 8):
        with normrt.threads(n):
            outs.append((normrt.layer_norm(x, s, s, return_stats=True),
                         normrt.layer_norm(x, s, residual=r),
                         normrt.rms_norm(x, s)))
    first = outs[0]
    for other in outs[1:]:
        for a, b in zip(first[0], other[0]):
            assert np.array_equal(a, b)
        assert np.array_equal(first[1], other[1])
        assert np.array_equal(first[2], other[2])


def test_concurrent_calls_from_python_threads():
    xs = [rng.standard_normal((32, 4096)).astype(np.float32) + i for i in range(8)]
    assert_concurrent_calls_match(lambda x: normrt.layer_norm(x, activation="silu"), xs)


# ---- layouts and out= -----------------------------------------------------

def test_fortran_and_strided_inputs():
    base = rng.standard_normal((20, 30)).astype(np.float32)
    for x in (np.asfortranarray(base), base[::2, ::3], base.T):
        ref, _, _ = ref_layer_norm(np.ascontiguousarray(x))
        np.testing.assert_allclose(normrt.layer_norm(x), ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(normrt.rms_norm(x), ref_rms_norm(np.ascontiguousarray(x)), rtol=1e-5, atol=1e-5)


def test_out_buffer_and_in_place():
    x = rng.standard_normal((5, 33)).astype(np.float32)
    ref, _, _ = ref_layer_norm(x)
    out = np.empty_like(x)
    assert normrt.layer_norm(x, out=out) is out
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    xc = x.copy()
    assert normrt.layer_norm(xc, out=xc) is xc
    np.testing.assert_array_equal(xc, out)
    xr = x.copy()
    normrt.rms_norm(xr, out=xr)
    np.testing.assert_allclose(xr, ref_rms_norm(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,axis", [((0, 5), -1), ((3, 0), -1), ((2, 0, 4), 1)])
def test_empty_tensors_give_empty_results(shape, axis):
    x = np.empty(shape, np.float32)
    assert normrt.layer_norm(x, axis=axis).shape == shape
    assert normrt.rms_norm(x, axis=axis).shape == shape


# ---- bad input --------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.layer_norm(np.ones((2, 4), np.int32))
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.rms_norm(np.ones((2, 4), np.complex64))
    with pytest.raises(ValueError, match=r"scale must have shape \(4,\)"):
        normrt.layer_norm(x, np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        normrt.layer_norm(x, None, np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"scale must have shape \(4,\)"):
        normrt.rms_norm(x, np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="axis must be in"):
        normrt.layer_norm(x, axis=2)
    with pytest.raises(ValueError, match="rank >= 1"):
        normrt.layer_norm(np.float32(3.0))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        normrt.layer_norm(x, eps=-1e-5)
    with pytest.raises(ValueError, match="activation must be one of"):
        normrt.layer_norm(x, activation="swish")
    with pytest.raises(ValueError, match=r"residual must have shape \(2, 4\)"):
        normrt.layer_norm(x, residual=np.ones((4,), np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4\)"):
        normrt.layer_norm(x, out=np.empty((4, 2), np.float32))
    with pytest.raises(ValueError, match="out must have dtype float32"):
        normrt.layer_norm(x, out=np.empty((2, 4), np.float64))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        normrt.layer_norm(x, out=np.empty((4, 2), np.float32).T)
    ro = np.empty((2, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        normrt.rms_norm(x, out=ro)
    big = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="out partially overlaps"):
        normrt.layer_norm(big[:2], out=big[1:])


# ---- property tests ---------------------------------------------------------

@st.composite
def ln_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    x = draw(hnp.arrays(dtype, shape, elements=st.floats(-100, 100, width=32)))
    act = draw(st.sampled_from(ACTS))
    offset = draw(st.sampled_from([0.0, 1e3]))
    return (x + offset).astype(dtype), axis, act


@settings(max_examples=150, deadline=None)
@given(ln_cases())
def test_property_layer_norm(case):
    x, axis, act = case
    nshape = x.shape[axis % x.ndim:]
    scale = np.linspace(-2, 2, math.prod(nshape)).reshape(nshape).astype(x.dtype)
    bias = np.linspace(1, -1, math.prod(nshape)).reshape(nshape).astype(x.dtype)
    y = normrt.layer_norm(x, scale, bias, axis=axis, eps=1e-2, activation=act)
    ref, _, _ = ref_layer_norm(x, scale, bias, axis, 1e-2, act=act)
    t = tol(x.dtype)
    if x.dtype == np.float64:
        # float64 x - mean is rounded to an ulp of |x|; the gain 1/sqrt(eps) * |scale| magnifies it
        t["atol"] += 8 * np.finfo(np.float64).eps * float(np.abs(x).max(initial=0)) * 10 * 2
    np.testing.assert_allclose(y, ref, **t)


@settings(max_examples=100, deadline=None)
@given(ln_cases())
def test_property_rms_norm(case):
    x, axis, _ = case
    y = normrt.rms_norm(x, axis=axis, eps=1e-2)
    np.testing.assert_allclose(y, ref_rms_norm(x, None, axis, 1e-2), **tol(x.dtype))


# ---- residual_out: the skip-connection sum written by the same pass ----------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((4, 16), -1), ((2, 3, 40), 1), ((1, 70_001), -1), ((3, 5000), -1)])
def test_residual_out_receives_the_sum(dtype, shape, axis):
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    s = rng.standard_normal(shape[axis % len(shape):]).astype(dtype)
    for n in (1, 4):      # row-per-thread and chunked paths write the sum alike
        with normrt.threads(n):
            sum_ln = np.full(shape, np.nan, dtype)
            y = normrt.layer_norm(x, s, s, axis=axis, residual=r, residual_out=sum_ln)
            sum_rms = np.full(shape, np.nan, dtype)
            y_rms = normrt.rms_norm(x, s, axis=axis, residual=r, residual_out=sum_rms)
        np.testing.assert_array_equal(sum_ln, x + r)      # exactly the sum in x's dtype
        np.testing.assert_array_equal(sum_rms, x + r)
        np.testing.assert_array_equal(y, normrt.layer_norm(x, s, s, axis=axis, residual=r))
        np.testing.assert_array_equal(y_rms, normrt.rms_norm(x, s, axis=axis, residual=r))
        ref, _, _ = ref_layer_norm(x, s, s, axis=axis, residual=r)
        np.testing.assert_allclose(y, ref, **tol(dtype))
        np.testing.assert_allclose(y_rms, ref_rms_norm(x, s, axis=axis, residual=r), **tol(dtype))


def test_residual_out_with_stats_and_in_place():
    x = rng.standard_normal((6, 24)).astype(np.float32)
    r = rng.standard_normal((6, 24)).astype(np.float32)
    want_sum = x + r
    want_y, want_mean, want_rstd = normrt.layer_norm(x, residual=r, return_stats=True)
    # the sum may overwrite x itself (or residual): the kernel adds elementwise before reading
    xc = x.copy()
    y, mean, rstd = normrt.layer_norm(xc, residual=r, return_stats=True, residual_out=xc)
    np.testing.assert_array_equal(xc, want_sum)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(mean, want_mean)
    np.testing.assert_array_equal(rstd, want_rstd)
    rc = r.copy()
    y = normrt.rms_norm(x, residual=rc, residual_out=rc)
    np.testing.assert_array_equal(rc, want_sum)
    np.testing.assert_array_equal(y, normrt.rms_norm(x, residual=r))
    # out and residual_out are separate buffers
    out, sum_out = np.empty_like(x), np.empty_like(x)
    assert normrt.layer_norm(x, residual=r, out=out, residual_out=sum_out) is out
    np.testing.assert_array_equal(out, want_y)
    np.testing.assert_array_equal(sum_out, want_sum)


def test_residual_out_bad_arguments():
    x = np.ones((2, 4), np.float32)
    r = np.ones((2, 4), np.float32)
    for fn in (normrt.layer_norm, normrt.rms_norm):
        with pytest.raises(ValueError, match="residual_out needs residual"):
            fn(x, residual_out=np.empty_like(x))
        with pytest.raises(ValueError, match=r"residual_out must have shape \(2, 4\)"):
            fn(x, residual=r, residual_out=np.empty((4, 2), np.float32))
        with pytest.raises(ValueError, match="residual_out must have dtype float32"):
            fn(x, residual=r, residual_out=np.empty((2, 4), np.float64))
        with pytest.raises(ValueError, match="residual_out must be C-contiguous"):
            fn(x, residual=r, residual_out=np.empty((4, 2), np.float32).T)
        buf = np.empty((2, 4), np.float32)
        with pytest.raises(ValueError, match="residual_out must not overlap out"):
            fn(x, residual=r, out=buf, residual_out=buf)
        big = np.empty(9, np.float32)
        with pytest.raises(ValueError, match="residual_out partially overlaps"):
            fn(big[:8].reshape(2, 4), residual=r, residual_out=big[1:].reshape(2, 4))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L", [20, 40, 768, 5000])
@pytest.mark.parametrize("lead", [1e4, -3e6, 0.0])
def test_outliers_at_the_start_of_a_chunk(dtype, L, lead):
    # the statistics shift by the mean of a chunk's first elements; outliers
    # there must not cost digits (the kernel then takes its exact second pass)
    x = rng.standard_normal((3, L)).astype(dtype)
    x[:, :7] += lead
    x[1, :40] = lead            # a whole leading sample far from the rest
    y = normrt.layer_norm(x, eps=1e-6)
    ref, _, _ = ref_layer_norm(x, eps=1e-6)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 if dtype == np.float32 else 1e-11)


def test_out_calls_that_the_kernel_refuses_take_the_checked_path():
    # with out= given, (G, L) calls go straight to the kernel; anything it
    # refuses must still be converted or reported like any other call
    x = rng.standard_normal((4, 32)).astype(np.float32)
    out = np.empty_like(x)
    ref, _, _ = ref_layer_norm(x, np.full(32, 2.0), np.full(32, 0.5))
    for scale, bias in [(np.full(32, 2.0), np.full(32, 0.5)),                  # float64 params
                        (np.full((1,), 2, np.float32), np.float32(0.5)),      # broadcast params
                        ([2.0] * 32, [0.5] * 32)]:                              # lists
        out.fill(np.nan)
        assert normrt.layer_norm(x, scale, bias, out=out) is out
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    xf = np.asfortranarray(x)
    np.testing.assert_allclose(normrt.rms_norm(xf, out=out), ref_rms_norm(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"scale must have shape \(32,\)"):
        normrt.layer_norm(x, np.ones(31, np.float32), out=out)
    with pytest.raises(ValueError, match=r"out must have shape \(4, 32\)"):
        normrt.rms_norm(x, out=np.empty((4, 31), np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(0, 32\)"):
        normrt.layer_norm(np.empty((0, 32), np.float32), out=np.empty((1, 32), np.float32))
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.layer_norm(np.ones((4, 32), np.int64), out=np.empty((4, 32), np.int64))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), width=st.sampled_from([1, 7, 16, 33, 128, 500, 1024, 1025]),
       dtype=st.sampled_from([np.float32, np.float64, np.float16, ml_dtypes.bfloat16]), rms=st.booleans(),
       residual=st.booleans(), threads=st.integers(1, 3),
       special=st.sampled_from([None, "nan", "constant", "huge", "outlier"]), seed=st.integers(0, 2 ** 16))
def test_rows_normalized_in_blocks_give_each_rows_own_bits(rows, width, dtype, rms, residual, threads, special,
                                                           seed):
    # short rows go a block at a time (their scalar tails overlap: norm_row_block); each row must
    # still get exactly the bits of its own call (a one-row call normalizes it alone), statistics
    # and sum included, NaN, constant and huge rows too
    r = np.random.default_rng(seed)
    x = r.standard_normal((rows, width)) * 3 + 1
    i = int(r.integers(rows))
    if special == "nan":
        x[i, int(r.integers(width))] = np.nan
    elif special == "constant":
        x[i] = 2.5
    elif special == "huge":
        x[i] *= 1e30 if np.dtype(dtype).itemsize >= 4 else 1e3
    elif special == "outlier":
        x[i, 0] = 1e4
    x = x.astype(dtype)
    res = (r.standard_normal((rows, width))).astype(dtype) if residual else None
    pdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    s, b = r.standard_normal(width).astype(pdt), r.standard_normal(width).astype(pdt)

    def call(xs, rs, out=None):
        if rms:
            total = np.empty_like(xs) if rs is not None else None
            return normrt.rms_norm(xs, s, residual=rs, residual_out=total), total
        total = np.empty_like(xs) if rs is not None else None
        y, mean, rstd = normrt.layer_norm(xs, s, b, residual=rs, return_stats=True, residual_out=total)
        return (y, mean, rstd), total

    with normrt.threads(threads):
        whole, total = call(x, res)
    whole = whole if isinstance(whole, tuple) else (whole,)
    for i in range(rows):
        part, part_total = call(x[i:i + 1], None if res is None else res[i:i + 1])
        part = part if isinstance(part, tuple) else (part,)
        for w, p in zip(whole, part):
            assert same_bits(w[i:i + 1], p)
        if res is not None:
            assert same_bits(total[i:i + 1], part_total)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3),
       dtype=st.sampled_from([np.float32, np.float64, np.float16, ml_dtypes.bfloat16]), rms=st.booleans(),
       residual=st.booleans(), out=st.sampled_from([None, "fresh", "x", "view"]), seed=st.integers(0, 2 ** 16))
def test_small_calls_give_the_checked_paths_bits(shape, dtype, rms, residual, out, seed):
    # a small call runs every check in C (layer_norm.pyx's small_call) or declines; either way
    # the result must be the bits of the checked path, which parameters given as lists take
    r = np.random.default_rng(seed)
    x = (r.standard_normal(shape) * 2 + 1).astype(dtype)
    L = shape[-1]
    pdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    s, b = r.standard_normal(L).astype(pdt), r.standard_normal(L).astype(pdt)
    res = r.standard_normal(shape).astype(dtype) if residual else None
    if rms:
        expect = normrt.rms_norm(x, s.tolist(), residual=res)
    else:
        expect = normrt.layer_norm(x, s.tolist(), b.tolist(), residual=res)
    xin = x.copy()
    buf = {None: None, "fresh": np.full_like(x, np.nan), "x": xin,
           "view": np.full((2,) + x.shape, np.nan, x.dtype)[1]}[out]
    got = normrt.rms_norm(xin, s, residual=res, out=buf) if rms else \
        normrt.layer_norm(xin, s, b, residual=res, out=buf)
    assert same_bits(got, expect)
    if buf is not None:
        assert got is buf
