"""Big same-shape Add/Sub/Mul/Div on the kernels' thread team: bitwise numpy's result."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from test_ops import run_ours

import normrt
from normrt import _thread_policy

OPS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


@settings(max_examples=40, deadline=None)
@given(op=st.sampled_from(sorted(OPS)), dtype=st.sampled_from([np.float32, np.float64]),
       n=st.integers(_thread_policy.MEMORY_BOUND_MIN_ELEMENTS, 3 * _thread_policy.MEMORY_BOUND_MIN_ELEMENTS),
       special=st.booleans(), seed=st.integers(0, 2**16), threads=st.integers(1, 3))
def test_big_binary_ops_equal_numpy_bitwise(op, dtype, n, special, seed, threads):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((2, n // 2)).astype(dtype)
    b = rng.standard_normal((2, n // 2)).astype(dtype)
    if special:     # zeros, infinities and NaN go through the same IEEE operation
        a.flat[::97] = np.inf
        b.flat[::89] = 0.0
        a.flat[::101] = np.nan
    with np.errstate(all="ignore"):
        want = OPS[op](a, b)
    with normrt.threads(threads), np.errstate(all="ignore"):
        got = run_ours(op, [a, b], {}, 14, 1)[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_binary_kernel_checks_its_arguments():
    from normrt._kernels import elementwise as k
    a = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="same length"):
        k.binary(0, a, np.zeros(3, np.float32), a, 1)
    with pytest.raises(ValueError, match="op"):
        k.binary(7, a, a, a, 1)
