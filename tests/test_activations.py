"""normrt.erf and normrt.activate against float64 references."""
import math

import numpy as np
import pytest

import normrt
from dtype_checks import ACTS, ref_act

_erf = np.vectorize(math.erf, otypes=[np.float64])
rng = np.random.default_rng(7)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_erf_matches_libm_with_relative_accuracy(dtype, rtol):
    x = np.concatenate([np.linspace(-7, 7, 100_001), [0.0, 1e-30, -1e-8, 0.4999, 0.5, -0.5, 30.0]])
    x = x.astype(dtype)
    y = normrt.erf(x)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, _erf(x.astype(np.float64)), rtol=rtol, atol=0)


def test_erf_special_values_and_layouts():
    x = np.array([np.inf, -np.inf, np.nan, -0.0], np.float32)
    y = normrt.erf(x)
    assert y[0] == 1 and y[1] == -1 and np.isnan(y[2]) and y[3] == 0
    m = rng.standard_normal((40, 30)).astype(np.float32)
    np.testing.assert_allclose(normrt.erf(m.T), _erf(m.T.astype(np.float64)), rtol=1e-6)
    out = m.copy()
    assert normrt.erf(out, out=out) is out
    np.testing.assert_allclose(out, _erf(m.astype(np.float64)), rtol=1e-6)


@pytest.mark.parametrize("act", ACTS[1:])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activate(act, dtype):
    x = (rng.standard_normal(50_000) * 4).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(normrt.activate(x, act), ref_act(x, act), rtol=tol, atol=tol)
    y = np.empty_like(x)
    with normrt.threads(1):
        a = normrt.activate(x, act, out=y).copy()
    with normrt.threads(2):
        assert np.array_equal(normrt.activate(x, act), a)


def test_activate_bad_input():
    with pytest.raises(ValueError, match="activation must be one of"):
        normrt.activate(np.ones(3, np.float32), "tanh")
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.erf(np.ones(3, np.int32))
    with pytest.raises(ValueError, match=r"out must have shape \(3,\)"):
        normrt.erf(np.ones(3, np.float32), out=np.empty(4, np.float32))
