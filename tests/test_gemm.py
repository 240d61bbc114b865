"""normrt.matmul (the packed float32 GEMM kernel) against a float64 reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normrt
from normrt._kernels import gemm as _k
from dtype_checks import ACTS, ref_act

rng = np.random.default_rng(21)
MR, NR, KC = _k.block_sizes()


def ref(a, b, bias=None, residual=None, act=None):
    y = a.astype(np.float64) @ b.astype(np.float64)
    if bias is not None:
        y = y + bias
    if residual is not None:
        y = y + residual
    return ref_act(y, act)


def assert_close(y, a, b, ref_y, k):
    # float32 dot products: error ~ eps * sqrt(K) * sum |a_i b_i|
    scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    tol = 1e-6 * np.sqrt(max(k, 1)) * (scale + np.abs(ref_y)) + 1e-30
    assert np.all(np.abs(y - ref_y) <= tol), float(np.max(np.abs(y - ref_y) / tol))


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


SHAPES = [(1, 1, 1), (1, 7, 3), (13, 1, 5), (MR, NR, KC), (MR + 1, NR + 1, KC + 1), (29, 97, 2 * KC + 3),
          (3, 500, 7), (131, 67, 1031), (64, 384, 128)]


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_matches_reference_packed_or_not(m, n, k):
    a, b = rand(m, k), rand(k, n)
    y = normrt.matmul(a, b)
    assert y.shape == (m, n) and y.dtype == np.float32
    assert_close(y, a, b, ref(a, b), k)
    assert np.array_equal(normrt.matmul(a, normrt.pack_matmul_weight(b)), y)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("m,n,k", [(5, 3, 2), (MR + 3, 2 * NR + 5, KC + 9)])
def test_epilogue_bias_residual_activation(act, m, n, k):
    a, b, bias, res = rand(m, k), rand(k, n), rand(n), rand(m, n)
    y = normrt.matmul(a, b, bias=bias, residual=res, activation=act)
    want = ref(a, b, bias, res, act)
    # the activation's float32 polynomials add a few ulp on top of the product's error
    np.testing.assert_allclose(y, want, rtol=2e-5, atol=2e-5 * np.sqrt(k))
    pre = normrt.matmul(a, b, bias=bias, residual=res)
    assert np.array_equal(y, normrt.activate(pre, act) if act else pre)
    assert np.array_equal(normrt.matmul(a, b, bias=bias), normrt.matmul(a, b) + bias)


def test_batched_leading_dims_and_views():
    a, b = rand(2, 3, 17, 40), rand(40, 23)
    y = normrt.matmul(a, b)
    assert y.shape == (2, 3, 17, 23)
    assert_close(y.reshape(-1, 23), a.reshape(-1, 40), b, ref(a.reshape(-1, 40), b), 40)
    at = rand(40, 17).T                      # a non-contiguous view
    assert np.array_equal(normrt.matmul(at, b), normrt.matmul(np.ascontiguousarray(at), b))
    v = rand(40)
    assert_close(normrt.matmul(v, b)[None], v[None], b, ref(v[None], b), 40)


def test_residual_broadcasts_and_may_be_out():
    a, b = rand(30, 600), rand(600, 50)
    r = rand(1, 50)
    np.testing.assert_array_equal(normrt.matmul(a, b, residual=r), normrt.matmul(a, b, residual=np.repeat(r, 30, 0)))
    res = rand(30, 50)
    want = normrt.matmul(a, b, residual=res)
    out = res.copy()
    assert normrt.matmul(a, b, residual=out, out=out) is out
    assert np.array_equal(out, want)


def test_out_and_float64():
    a, b = rand(9, 11), rand(11, 4)
    out = np.empty((9, 4), np.float32)
    assert normrt.matmul(a, b, out=out) is out
    assert np.array_equal(out, normrt.matmul(a, b))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    y = normrt.matmul(a64, b64, bias=np.ones(4), activation="relu")
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, np.maximum(a64 @ b64 + 1.0, 0), rtol=1e-13, atol=1e-13)


def test_empty_and_k_zero():
    assert normrt.matmul(rand(0, 5), rand(5, 3)).shape == (0, 3)
    assert normrt.matmul(rand(4, 5), rand(5, 0)).shape == (4, 0)
    bias = rand(3)
    y = normrt.matmul(rand(4, 0), rand(0, 3), bias=bias, activation="relu")
    assert np.array_equal(y, np.broadcast_to(np.maximum(bias, 0), (4, 3)))


@pytest.mark.parametrize("m,n,k", [(150, 333, 257), (512, 49, 600), (40, 1000, 300)])
def test_same_bits_for_any_thread_count(m, n, k):
    assert 2 * m * n * k > 16e6    # big enough for the kernel to use several threads
    a, b, bias, res = rand(m, k), rand(k, n), rand(n), rand(m, n)
    packed = normrt.pack_matmul_weight(b)
    outs = []
    for t in (1, 2, 3):
        with normrt.threads(t):
            outs.append(normrt.matmul(a, b, bias=bias, residual=res, activation="silu"))
            outs.append(normrt.matmul(a, packed, bias=bias, residual=res, activation="silu"))
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def packed_a_ref(a):
    """gemm.pack_a's layout in numpy: per K block of KC columns, every MR-row panel k-major
    (panel[kk, i] = a[row + i, kk]), rows past M zeros."""
    m, k = a.shape
    mp = -(-m // MR)
    pad = np.zeros((mp * MR, k), np.float32)
    pad[:m] = a
    return np.concatenate([pad[:, pc:pc + KC].reshape(mp, MR, -1).transpose(0, 2, 1).ravel()
                           for pc in range(0, k, KC)])


@given(st.integers(1, 3 * MR + 1), st.integers(1, KC + 40), st.integers(0, 2 ** 31))
def test_pack_a_layout_matches_numpy(m, k, seed):
    # (every row count of an edge panel, K blocks cut anywhere: the register-transpose blocks
    # of 8 columns and their tail)
    a = np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)
    out = np.full(_k.packed_a_size(m, k), np.nan, np.float32)
    _k.pack_a(a, out)
    assert np.array_equal(out, packed_a_ref(a))


@given(st.integers(1, 2 * MR + 3), st.integers(1, 70), st.integers(1, 2 * NR + 3), st.integers(0, 2 ** 31))
def test_products_of_every_edge_shape_match_float64(m, k, n, seed):
    # (A packed per call: edge panels of every row count, K in and out of the 8-column blocks)
    r = np.random.default_rng(seed)
    a, b = r.standard_normal((m, k)).astype(np.float32), r.standard_normal((k, n)).astype(np.float32)
    assert_close(normrt.matmul(a, b), a, b, ref(a, b), k)


def test_bad_input():
    a, b = rand(4, 5), rand(5, 3)
    with pytest.raises(TypeError, match="a must be a float32 or float64"):
        normrt.matmul(np.ones((4, 5), np.int32), b)
    with pytest.raises(ValueError, match=r"b must be a 2-D \(K, N\) array"):
        normrt.matmul(a, rand(2, 5, 3))
    with pytest.raises(TypeError, match="b must be a numeric array"):
        normrt.matmul(a, np.array([["x"] * 3] * 5))
    with pytest.raises(ValueError, match="a's last dimension must be K = 6"):
        normrt.matmul(a, rand(6, 3))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        normrt.matmul(a, b, bias=rand(4))
    with pytest.raises(ValueError, match=r"residual must have shape \(4, 3\)"):
        normrt.matmul(a, b, residual=rand(3, 4))
    with pytest.raises(ValueError, match="activation must be one of"):
        normrt.matmul(a, b, activation="tanh")
    with pytest.raises(ValueError, match=r"out must have shape \(4, 3\)"):
        normrt.matmul(a, b, out=np.empty((3, 4), np.float32))
    with pytest.raises(ValueError, match="out must have dtype float32"):
        normrt.matmul(a, b, out=np.empty((4, 3), np.float64))
    big = rand(5, 5)
    with pytest.raises(ValueError, match="out must not overlap a or b"):
        normrt.matmul(big, big, out=big)
    with pytest.raises(TypeError, match="a must be float32 with a packed b"):
        normrt.matmul(a.astype(np.float64), normrt.pack_matmul_weight(b))
    with pytest.raises(ValueError, match=r"b must be a 2-D \(K, N\) array"):
        normrt.pack_matmul_weight(rand(5))


def test_concurrent_callers_get_the_same_bits():
    # kernel calls from several Python threads at once (the GIL is released):
    # one of them gets the worker threads, the others run alone - same results
    import threading
    a, b = rand(150, 333), rand(333, 257)
    with normrt.threads(1):
        want = normrt.matmul(a, b, activation="relu")
    got, errors = [None] * 4, []

    def run(i):
        try:
            with normrt.threads(2):
                for _ in range(20):
                    got[i] = normrt.matmul(a, b, activation="relu")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert all(np.array_equal(g, want) for g in got)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_forked_child_still_computes():
    # the worker threads do not survive fork(): the child must start its own
    import os
    a, b = rand(200, 300), rand(300, 400)
    with normrt.threads(2):
        want = normrt.matmul(a, b)
    pid = os.fork()
    if pid == 0:  # child
        ok = False
        try:
            with normrt.threads(2):
                ok = np.array_equal(normrt.matmul(a, b), want)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 4), k=st.integers(1, 600), n=st.integers(1, 200), bias=st.booleans(), residual=st.booleans(),
       act=st.sampled_from(ACTS), threads=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_few_rows_give_the_packed_products_bits(m, k, n, bias, residual, act, threads, seed):
    # up to 4 rows against a packed weight run as a matrix-vector product (B streamed once,
    # no 8-row A panels); each output must keep the packed GEMM's bits: the same rows inside
    # a 9-row product (which takes the packed path) are the oracle, float64 the reference
    r = np.random.default_rng(seed)
    a = r.standard_normal((9, k)).astype(np.float32)
    w = r.standard_normal((k, n)).astype(np.float32)
    b = r.standard_normal(n).astype(np.float32) if bias else None
    res = r.standard_normal((9, n)).astype(np.float32) if residual else None
    pw = normrt.pack_matmul_weight(w)
    with normrt.threads(threads):
        few = normrt.matmul(a[:m], pw, bias=b, residual=None if res is None else res[:m], activation=act)
    full = normrt.matmul(a, pw, bias=b, residual=res, activation=act)
    assert np.array_equal(few, full[:m])
    want = ref(a[:m], w, b, None if res is None else res[:m], act)
    np.testing.assert_allclose(few, want, rtol=1e-4, atol=1e-4 * np.sqrt(k))


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 70), k=st.integers(1, 300), n=st.integers(1, 90), packed=st.booleans(),
       alpha=st.sampled_from([1e-3, 0.1, 0.2, 1.0, 4.0]), seed=st.integers(0, 2 ** 32 - 1))
def test_leaky_relu_epilogue_is_the_ops_values(m, k, n, packed, alpha, seed):
    """activation="leaky_relu": the GEMM's own epilogue (GEMV rows and tiles alike) gives exactly
    where(v > 0, v, alpha v) of the product, for any thread count; float64 on numpy alike."""
    r = np.random.default_rng(seed)
    a = r.standard_normal((m, k)).astype(np.float32)
    b = r.standard_normal((k, n)).astype(np.float32)
    bias = r.standard_normal(n).astype(np.float32)
    bb = normrt.pack_matmul_weight(b) if packed else b
    pre = normrt.matmul(a, bb, bias=bias)
    want = np.where(pre > 0, pre, pre * np.float32(alpha))
    for threads in (1, 2, 3):
        with normrt.threads(threads):
            got = normrt.matmul(a, bb, bias=bias, activation="leaky_relu", alpha=alpha)
        np.testing.assert_array_equal(got, want)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    pre64 = a64 @ b64 + bias
    np.testing.assert_allclose(normrt.matmul(a64, b64, bias=bias.astype(np.float64), activation="leaky_relu",
                                             alpha=alpha), np.where(pre64 > 0, pre64, pre64 * alpha), rtol=1e-12)


def test_leaky_relu_epilogue_bad_alpha():
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    for bad, err in ((0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), ("x", TypeError)):
        with pytest.raises(err, match="alpha"):
            normrt.matmul(a, b, activation="leaky_relu", alpha=bad)
