"""PreparedGemm (pyx/prepared_gemm.pyx): the GEMM call bound once gives bitwise gemm.gemm's result
(and float64 numpy's within float32 rounding), for any thread count; bad arguments are refused."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normrt._kernels import gemm
from normrt._kernels.prepared_gemm import PreparedGemm
from normrt.api.gemm import _EMPTY, pack_matmul_weight


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 70), n=st.integers(1, 70), k=st.integers(1, 300), bias=st.booleans(),
       residual=st.booleans(), act=st.sampled_from([0, 1]), threads=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_prepared_gemm_is_gemm(m, n, k, bias, residual, act, threads, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    r = rng.standard_normal((m, n)).astype(np.float32) if residual else None
    packed = pack_matmul_weight(w)
    work = np.empty(gemm.workspace_size(threads), np.float32)
    want = np.empty((m, n), np.float32)
    gemm.gemm(a.reshape(-1), False, packed.data, True, m, n, k, want.reshape(-1), _EMPTY if b is None else b, 1,
              _EMPTY if r is None else r.reshape(-1), act, work, threads)
    call = PreparedGemm(packed.data, m, n, k, b, act, threads)
    y = np.full((m, n), np.nan, np.float32)
    assert call(a, y, work, r) is y
    assert np.array_equal(y, want)
    ref = a.astype(np.float64) @ w + (0 if b is None else b) + (0 if r is None else r)
    if act == 1:
        ref = np.maximum(ref, 0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    # a non-contiguous a is copied, same result
    y2 = np.empty_like(y)
    call(np.asfortranarray(a), y2, work, r)
    assert np.array_equal(y2, want)


def test_prepared_gemm_refuses_bad_arguments():
    packed = pack_matmul_weight(np.ones((4, 3), np.float32))
    work = np.empty(gemm.workspace_size(1), np.float32)
    with pytest.raises(ValueError, match="m, n and k"):
        PreparedGemm(packed.data, 0, 3, 4, None, 0, 1)
    with pytest.raises(ValueError, match="packed"):
        PreparedGemm(packed.data[:-1].copy(), 2, 3, 4, None, 0, 1)
    with pytest.raises(ValueError, match="bias"):
        PreparedGemm(packed.data, 2, 3, 4, np.ones(2, np.float32), 0, 1)
    call = PreparedGemm(packed.data, 2, 3, 4, None, 0, 1)
    with pytest.raises(ValueError, match="a must"):
        call(np.ones(7, np.float32), np.empty((2, 3), np.float32), work)
    with pytest.raises(ValueError, match="y must"):
        call(np.ones((2, 4), np.float32), np.empty((2, 3), np.float64), work)
    with pytest.raises(ValueError, match="work"):
        call(np.ones((2, 4), np.float32), np.empty((2, 3), np.float32), np.empty(1, np.float32))
    with pytest.raises(ValueError, match="residual"):
        call(np.ones((2, 4), np.float32), np.empty((2, 3), np.float32), work, np.ones(5, np.float32))
