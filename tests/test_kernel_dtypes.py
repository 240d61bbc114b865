"""The statistics kernels' one driver per family over float32, float64, float16
and bfloat16 storage (pyx/half.pxd's `elem`): every kernel x dtype against a
float64 reference within the output's rounding, offsets far above the spread
(the output pass folds the mean's low part into the bias), determinism across
thread counts, and the entry points' own array checks (pyx/kernel_args.pxd).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import normrt
from normrt._kernels import batch_norm as kbn, group_norm as kgn, half_convert, layer_norm as kln
from dtype_checks import (ALL_FLOAT_DTYPES, HALF_DTYPES, assert_close_in_dtype, assert_same_bits_for_threads,
                          ref_act, same_bits)

all_dtypes = pytest.mark.parametrize("dt", ALL_FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
fuzz = settings(max_examples=12, deadline=None)


def f64(a):
    return np.asarray(a).astype(np.float64)


def standardize(x, axes, eps):
    m = x.mean(axis=axes, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(axis=axes, keepdims=True) + eps)


def check(y, ref, dt):
    """float16/bfloat16: within the output's rounding; float32/float64: a few of their ulps."""
    if np.dtype(dt) in HALF_DTYPES:
        assert_close_in_dtype(y, ref, dt)
    else:
        assert y.dtype == dt
        tol = 2e-5 if dt == np.float32 else 1e-11
        np.testing.assert_allclose(f64(y), ref, rtol=tol, atol=tol * max(1.0, float(np.abs(ref).max())))


def data(draw, shape, dt, offset):
    """x = offset + N(0, spread) in dt, from hypothesis' seed."""
    seed = draw(st.integers(0, 2 ** 32 - 1))
    spread = draw(st.sampled_from([1e-2, 1.0, 30.0]))
    rng = np.random.default_rng(seed)
    return (offset * spread + spread * rng.standard_normal(shape)).astype(dt)


# offsets in units of the spread: float32 keeps its digits at 1e4 sigma (the split
# mean); a half value has 8-11 bits, so its offset stays within what it can hold
def offsets(dt):
    return [0.0, 3.0, 1e4] if np.dtype(dt) in (np.float32, np.float64) else [0.0, 3.0, 40.0]


@all_dtypes
@fuzz
@given(draw=st.data(), G=st.integers(1, 4), L=st.sampled_from([1, 5, 33, 768, 2049, 4100]),
       act=st.sampled_from([None, "relu", "silu", "gelu"]), rms=st.booleans(), k=st.integers(0, 2))
def test_rows_every_dtype(dt, draw, G, L, act, rms, k):
    x = data(draw.draw, (G, L), dt, offsets(dt)[k])
    rng = np.random.default_rng(L)
    pdt = np.float64 if dt == np.float64 else np.float32
    w = (1 + 0.2 * rng.standard_normal(L)).astype(pdt)
    if rms:
        y = normrt.rms_norm(x, w)
        ref = f64(x) / np.sqrt((f64(x) ** 2).mean(1, keepdims=True) + 1e-5) * w
    else:
        b = (0.3 * rng.standard_normal(L)).astype(pdt)
        y = normrt.layer_norm(x, w, b, activation=act)
        ref = ref_act(standardize(f64(x), (1,), 1e-5) * w + b, act)
    check(y, ref, dt)


@all_dtypes
@fuzz
@given(draw=st.data(), N=st.integers(1, 2), CG=st.sampled_from([(4, 1), (6, 3), (32, 8)]),
       S=st.sampled_from([(5,), (9, 9), (48, 48)]), act=st.sampled_from([None, "silu"]), k=st.integers(0, 2))
def test_groups_every_dtype(dt, draw, N, CG, S, act, k):
    C, G = CG
    x = data(draw.draw, (N, C) + S, dt, offsets(dt)[k])
    rng = np.random.default_rng(C)
    pdt = np.float64 if dt == np.float64 else np.float32
    w, b = (1 + 0.2 * rng.standard_normal(C)).astype(pdt), (0.3 * rng.standard_normal(C)).astype(pdt)
    bshape = (1, C) + (1,) * len(S)
    y = normrt.group_norm(x, G, w, b, activation=act)
    ref = standardize(f64(x).reshape(N, G, -1), (2,), 1e-5).reshape(x.shape) * w.reshape(bshape) + b.reshape(bshape)
    check(y, ref_act(ref, act), dt)
    y = normrt.instance_norm(x if len(S) > 0 else x, w, b)
    check(y, standardize(f64(x), tuple(range(2, x.ndim)), 1e-5) * w.reshape(bshape) + b.reshape(bshape), dt)


@all_dtypes
@fuzz
@given(draw=st.data(), shape=st.sampled_from([(4, 3), (3, 37, 19, 23), (2, 16, 7), (1, 3, 130, 130)]),
       act=st.sampled_from([None, "relu", "silu"]), k=st.integers(0, 2))
def test_batch_norm_every_dtype(dt, draw, shape, act, k):
    x = data(draw.draw, shape, dt, offsets(dt)[k])
    C = shape[1]
    rng = np.random.default_rng(C)
    m = f64(x).mean(axis=tuple(i for i in range(x.ndim) if i != 1))
    w, b, v = 1 + 0.2 * rng.standard_normal(C), 0.3 * rng.standard_normal(C), 0.5 + rng.random(C)
    y = normrt.batch_norm(x, w, b, m, v, activation=act)
    bshape = (1, C) + (1,) * (x.ndim - 2)
    ref = (f64(x) - m.reshape(bshape)) / np.sqrt(v.reshape(bshape) + 1e-5) * w.reshape(bshape) + b.reshape(bshape)
    check(y, ref_act(ref, act), dt)


@pytest.mark.parametrize("dt", HALF_DTYPES, ids=lambda d: np.dtype(d).name)
def test_half_constant_channels_and_huge_bfloat16(dt):
    # a channel equal to its running mean gives exactly its bias, in every storage type
    x = np.full((2, 3, 40), 1.5, dt)
    b = np.array([0.25, -3.0, 7.5])
    y = normrt.batch_norm(x, np.ones(3), b, np.full(3, 1.5), np.ones(3))
    assert same_bits(y, np.broadcast_to(b.astype(dt).reshape(1, 3, 1), x.shape))
    if dt == HALF_DTYPES[1]:        # bfloat16 holds float32's magnitudes
        img = (np.random.default_rng(3).standard_normal((2, 4, 30, 30)) * 1e30).astype(dt)
        check(normrt.instance_norm(img), standardize(f64(img), (2, 3), 1e-5), dt)
        check(normrt.layer_norm(img.reshape(8, 900), residual=img.reshape(8, 900)),
              standardize(f64((img + img).reshape(8, 900)), (1,), 1e-5), dt)


@all_dtypes
@pytest.mark.parametrize("case", ["ln_rows", "ln_chunks", "rms_rows", "gn_rows", "gn_chunks", "bn_runs"])
def test_bitwise_identical_for_any_thread_count(dt, case):
    rng = np.random.default_rng(11)
    x = (5.0 + rng.standard_normal(150_000)).astype(dt)
    w = rng.random(1000).astype(np.float64 if dt == np.float64 else np.float32)
    if case == "ln_rows":
        fn = lambda: normrt.layer_norm(x.reshape(150, 1000), w, activation="silu")
    elif case == "ln_chunks":
        fn = lambda: normrt.layer_norm(x.reshape(1, -1), return_stats=True)
    elif case == "rms_rows":
        fn = lambda: normrt.rms_norm(x.reshape(30, 5000))
    elif case == "gn_rows":
        fn = lambda: normrt.group_norm(x.reshape(2, 30, 50, 50), 6, activation="gelu")
    elif case == "gn_chunks":
        fn = lambda: normrt.group_norm(x.reshape(1, 6, 125, 200), 1)
    else:
        p = [np.random.default_rng(i).random(24) + 0.5 for i in range(4)]
        fn = lambda: normrt.batch_norm(x[:148_824].reshape(3, 24, 2067), *p, activation="relu")
    assert_same_bits_for_threads(fn)


@pytest.mark.parametrize("dt", HALF_DTYPES, ids=lambda d: np.dtype(d).name)
def test_half_convert_bitwise_for_any_thread_count(dt):
    words = np.random.default_rng(2).integers(0, 2 ** 16, 300_000, dtype=np.uint16)
    kind = 0 if dt == HALF_DTYPES[0] else 1
    outs = []
    for n in (1, 2, 3):
        f = np.empty(words.size, np.float32)
        half_convert.to_float32(words, f, kind, n)
        back = np.empty(words.size, np.uint16)
        half_convert.from_float32(f, back, kind, n)
        outs.append((f.view(np.uint32), back))
    for f, back in outs[1:]:
        assert np.array_equal(f, outs[0][0]) and np.array_equal(back, outs[0][1])


# ------------------------------------------------------------------ the entry points' own checks

def _calls(x, y, dt):
    p = np.ones(x.shape[1], np.float64 if dt == np.float64 else np.float32)
    return [
        lambda xx, yy: kln.layer_norm(xx, yy, p, p, None, None, None, 1e-5, 0, 1),
        lambda xx, yy: kln.rms_norm(xx, yy, p, None, None, 1e-5, 0, 1),
        lambda xx, yy: kgn.group_norm(xx, p[:1], p[:1], yy, 1, 1e-5, 0, 1),
    ]


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_kernels_refuse_bad_arrays_before_computing(dt):
    x = np.ones((3, 8), dt)
    for call in _calls(x, None, dt):
        for bad_out, what in [(np.zeros((3, 8), np.float16), "dtype"), (np.zeros((3, 9), dt), "shape"),
                              (np.zeros((8, 3), dt).T, "layout"), (np.zeros(24, dt), "dimensions")]:
            keep = bad_out.copy()
            with pytest.raises(ValueError, match="out"):
                call(x, bad_out)
            assert same_bits(bad_out, keep), what
        ro = np.zeros((3, 8), dt)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="writeable"):
            call(x, ro)
        with pytest.raises(ValueError, match="x"):
            call([[1.0] * 8] * 3, np.zeros((3, 8), dt))
    with pytest.raises(ValueError, match="scale"):
        kln.layer_norm(x, np.empty_like(x), np.ones(7, dt), None, None, None, None, 1e-5, 0, 1)
    with pytest.raises(ValueError, match="residual"):
        kln.layer_norm(x, np.empty_like(x), None, None, np.ones((3, 8), np.int32), None, None, 1e-5, 0, 1)
    with pytest.raises(ValueError, match="stats_out"):
        kln.layer_norm(x, np.empty_like(x), None, None, None, None, np.empty((2, 3), np.float32), 1e-5, 0, 1)
    with pytest.raises(ValueError, match="nseg"):
        kgn.group_norm(x, None, None, np.empty_like(x), 3, 1e-5, 0, 1)
    x3 = x.reshape(3, 2, 4)
    p = np.ones(2)
    with pytest.raises(ValueError, match="float32 or all float64"):
        kbn.batch_norm(x3, p.astype(np.int64), p, p, p, 1e-5, np.empty_like(x3), 0, 1)
    with pytest.raises(ValueError, match="out"):
        kbn.batch_norm(x3, p, p, p, p, 1e-5, np.empty((3, 4, 2), dt), 0, 1)


@pytest.mark.parametrize("dt", [np.float32] + list(HALF_DTYPES), ids=lambda d: np.dtype(d).name)
def test_fast_path_keeps_the_checks_it_cannot_leave_to_the_kernel(dt):
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(dt)
    # same size, other shape: a reshape to rows would hide it
    with pytest.raises(ValueError, match="out must have shape"):
        normrt.layer_norm(x, out=np.empty((3, 2, 8), dt))
    # a non-contiguous out: a reshape would copy, and the result would be lost
    with pytest.raises(ValueError, match="C-contiguous"):
        normrt.rms_norm(x, out=np.empty((2, 3, 16), dt)[..., ::2])
    # out of another 16-bit type, or integers: named by the checked path
    with pytest.raises(ValueError, match="out must have dtype"):
        normrt.layer_norm(x, out=np.empty(x.shape, np.int16))
    # scale as a list, or of x's dtype: converted by the checked path
    y = normrt.layer_norm(x, [1.0] * 8, np.zeros(8, dt))
    assert same_bits(y, normrt.layer_norm(x, np.ones(8, np.float32), np.zeros(8, np.float32)))
