"""normrt.softmax against a float64 reference."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import normrt

rng = np.random.default_rng(11)


def ref(x, axis):
    v = x.astype(np.float64)
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 3e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("shape,axis", [((7, 1000), -1), ((2, 5, 33), 1), ((4, 3, 2), 0), ((300, 1100), -1)])
def test_softmax_matches_reference(dtype, rtol, shape, axis):
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    y = normrt.softmax(x, axis=axis)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref(x, axis), rtol=rtol, atol=1e-12)


def test_nan_stays_in_its_row_and_masked_rows():
    x = rng.standard_normal((4, 50)).astype(np.float32)
    x[1, 7] = np.nan
    x[2] = -np.inf
    x[3, :25] = -np.inf
    y = normrt.softmax(x)
    assert np.isnan(y[1]).all() and np.isnan(y[2]).all()
    np.testing.assert_allclose(y[[0, 3]], ref(x[[0, 3]], -1), rtol=3e-6, atol=1e-12)
    assert (y[3, :25] == 0).all()
    z = normrt.softmax(x, masked_rows="zero")
    assert (z[2] == 0).all() and np.isnan(z[1]).all()


def test_same_bits_for_any_thread_count_and_in_place():
    x = rng.standard_normal((600, 700)).astype(np.float32)
    outs = []
    for n in (1, 2, 8):
        with normrt.threads(n):
            outs.append(normrt.softmax(x))
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    xc = x.copy()
    assert normrt.softmax(xc, out=xc) is xc
    assert np.array_equal(xc, outs[0])


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), n=st.integers(1, 600), scale=st.sampled_from([0.1, 5.0, 80.0]),
       special=st.sampled_from(["none", "nan", "neg_inf", "all_neg_inf", "max_neg"]), seed=st.integers(0, 2 ** 16))
def test_rows_of_any_length(rows, n, scale, special, seed):
    # short rows (attention scores over a few keys) and block tails: one masked vector each on AVX-512
    r = np.random.default_rng(seed)
    x = (r.standard_normal((rows, n)) * scale).astype(np.float32)
    row, col = r.integers(rows), r.integers(n)
    if special == "nan":
        x[row, col] = np.nan
    elif special == "neg_inf":
        x[row, col] = -np.inf
    elif special == "all_neg_inf":
        x[row] = -np.inf
    elif special == "max_neg":                       # BLOOM's mask: float32's lowest value
        x[row, : col + 1] = np.finfo(np.float32).min
    with normrt.threads(1):
        y = normrt.softmax(x)
    with np.errstate(invalid="ignore"):
        want = ref(x, -1)
    bad = np.isnan(want).any(axis=1)
    assert np.isnan(y[bad]).all()
    np.testing.assert_allclose(y[~bad], want[~bad], rtol=3e-6, atol=1e-12)
    if special == "all_neg_inf":
        assert (normrt.softmax(x, masked_rows="zero")[row] == 0).all()
    with normrt.threads(2):
        assert np.array_equal(normrt.softmax(x), y, equal_nan=True)


def test_bad_input():
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.softmax(np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match="axis must be in"):
        normrt.softmax(np.ones((2, 3), np.float32), axis=2)
    with pytest.raises(ValueError, match="masked_rows must be one of"):
        normrt.softmax(np.ones((2, 3), np.float32), masked_rows="one")
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3\)"):
        normrt.softmax(np.ones((2, 3), np.float32), out=np.empty((3, 2), np.float32))
