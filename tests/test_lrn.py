"""normrt.lrn against an independent float64 numpy reference and onnx's ReferenceEvaluator."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import normrt
from dtype_checks import assert_concurrent_calls_match, same_bits


def ref_lrn(x, size, alpha=1e-4, beta=0.75, bias=1.0):
    """ONNX LRN in float64, one channel window at a time (no running sums)."""
    x64 = np.asarray(x, dtype=np.float64)
    C = x64.shape[1]
    square_sum = np.zeros_like(x64)
    for c in range(C):
        lo = max(0, c - math.floor((size - 1) / 2))
        hi = min(C - 1, c + math.ceil((size - 1) / 2))
        for cc in range(lo, hi + 1):
            square_sum[:, c] += x64[:, cc] ** 2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y = x64 / (bias + alpha / size * square_sum) ** beta
    return y.astype(x.dtype)


def onnx_lrn(x, size, alpha, beta, bias):
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    et = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.DOUBLE
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)
    graph = helper.make_graph([node], "lrn", [helper.make_tensor_value_info("x", et, x.shape)],
                              [helper.make_tensor_value_info("y", et, x.shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    (y,) = ReferenceEvaluator(model).run(None, {"x": x})
    return y


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-30) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-300)


SHAPES = [(2, 5, 3, 4), (1, 17, 7, 7), (3, 6, 100), (1, 6, 2, 3, 4), (2, 1, 5, 5), (1, 40, 300), (2, 3, 1, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 16, 100])
@pytest.mark.parametrize("shape", SHAPES)
def test_values(shape, size, dtype):
    rng = np.random.default_rng(hash((shape, size)) % 2**32)
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    y = normrt.lrn(x, size, alpha=0.3, beta=0.75, bias=1.5)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, ref_lrn(x, size, 0.3, 0.75, 1.5), **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6, 2.0, 0.0, -0.5])
@pytest.mark.parametrize("alpha,bias", [(1e-4, 1.0), (0.5, 2.0), (2.0, 0.5), (-0.01, 3.0)])
def test_attributes(alpha, bias, beta, dtype):
    x = (np.random.default_rng(1).standard_normal((2, 9, 4, 5)) * 3).astype(dtype)
    y = normrt.lrn(x, 5, alpha=alpha, beta=beta, bias=bias)
    np.testing.assert_allclose(y, ref_lrn(x, 5, alpha, beta, bias), **tol(dtype))


def test_huge_size():
    x = np.random.default_rng(11).standard_normal((2, 5, 3))
    for size in (2**40 + 1, 10**30):
        np.testing.assert_allclose(normrt.lrn(x, size, alpha=1e25), ref_lrn(x, size, 1e25), rtol=1e-12)
    np.testing.assert_allclose(normrt.lrn(x, 10**400, alpha=1.0, bias=2.0), x / 2.0**0.75, rtol=1e-15)


def test_defaults():
    x = np.random.default_rng(2).standard_normal((1, 8, 3, 3)) * 50
    np.testing.assert_allclose(normrt.lrn(x, 3), ref_lrn(x, 3, 1e-4, 0.75, 1.0), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("C", [1, 4, 7])
def test_matches_onnx_reference_evaluator(C, size, dtype):
    # onnx <= 1.23's op_lrn.py loops over x.shape[0] instead of the channels
    # (onnx/onnx#7805, fixed by #8331), so only N == C shapes are comparable
    x = (np.random.default_rng(3).standard_normal((C, C, 5, 6)) * 4).astype(dtype)
    expected = onnx_lrn(x, size, 0.02, 0.75, 2.0)
    # ONNX stores float attributes as float32 and the evaluator computes alpha / size
    # in float32; hand normrt the alpha whose float64 alpha / size is that value
    # (q * size is exact in float64 for a float32 q and a small size, so (q * size) / size == q)
    alpha = float(np.float32(0.02) / np.float32(size)) * size
    assert alpha / size == float(np.float32(0.02) / np.float32(size))
    np.testing.assert_allclose(normrt.lrn(x, size, alpha=alpha, beta=0.75, bias=2.0), expected,
                               rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zeros_give_zeros(dtype):
    x = np.zeros((2, 6, 3, 3), dtype)
    y = normrt.lrn(x, 3)
    assert (y == 0).all() and not np.isnan(y).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 3, 4, 50])
def test_nan_and_inf_reach_only_their_windows(size, dtype):
    # a running add/subtract sum would turn every later window NaN after an inf
    x = np.random.default_rng(4).standard_normal((2, 20, 3, 4)).astype(dtype)
    x[0, 7, 1, 2] = np.nan
    x[1, 4, 0, 3] = np.inf
    y = normrt.lrn(x, size, alpha=0.1, beta=0.75, bias=1.0)
    np.testing.assert_allclose(y, ref_lrn(x, size, 0.1, 0.75, 1.0), equal_nan=True, **tol(dtype))
    c1, c2 = (size - 1) // 2, size // 2
    touched = np.zeros(x.shape, bool)
    touched[0, max(0, 7 - c2):7 + c1 + 1, 1, 2] = True
    touched[1, max(0, 4 - c2):4 + c1 + 1, 0, 3] = True
    assert np.isfinite(y[~touched]).all()
    assert np.isnan(y[0, max(0, 7 - c2):7 + c1 + 1, 1, 2]).all()
    assert np.isnan(y[1, 4, 0, 3])
    others = [c for c in range(max(0, 4 - c2), min(20, 4 + c1 + 1)) if c != 4]
    assert (y[1, others, 0, 3] == 0).all()


def test_wide_dynamic_range_no_drift():
    # huge channels next to tiny ones: a running sum would leave a residue of the
    # huge squares in the tiny channels' windows
    x = np.random.default_rng(5).standard_normal((1, 64, 50)) * 1e-3
    x[0, ::9] = 1e7
    for size in (3, 5, 11):
        y = normrt.lrn(x, size, alpha=1.0, beta=0.75, bias=1e-6)
        np.testing.assert_allclose(y, ref_lrn(x, size, 1.0, 0.75, 1e-6), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [3, 5, 40])
@pytest.mark.parametrize("shape", [(1, 17, 7, 7), (2, 64, 500), (5, 12, 3), (1, 96, 27, 27), (1, 3, 1000)])
def test_bitwise_identical_across_thread_counts(shape, size, dtype):
    x = (np.random.default_rng(6).standard_normal(shape) * 5).astype(dtype)
    results = []
    for n in (1, 2, 8):
        with normrt.threads(n):
            results.append(normrt.lrn(x, size, alpha=0.2, beta=0.7, bias=1.0))
    assert same_bits(results[0], results[1]) and same_bits(results[0], results[2])


def test_concurrent_python_threads_match_serial():
    rng = np.random.default_rng(7)
    jobs = [(rng.standard_normal(shape).astype(dt), size, n)
            for shape in [(1, 17, 7, 7), (2, 64, 300), (3, 5, 2, 2)]
            for dt in (np.float32, np.float64) for size in (2, 5) for n in (1, 3)]
    with normrt.threads(1):
        serial = [normrt.lrn(x, size, alpha=0.1) for x, size, _ in jobs]

    def run(job):
        x, size, n = job
        with normrt.threads(n):
            return normrt.lrn(x, size, alpha=0.1)

    assert_concurrent_calls_match(run, jobs, reference=serial)


@st.composite
def lrn_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=3, max_dims=5, min_side=1, max_side=6))
    elements = st.floats(-1e3, 1e3, allow_nan=False, width=32 if dtype == np.float32 else 64)
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    size = draw(st.integers(1, shape[1] + 3))
    alpha = draw(st.floats(1e-5, 1.0))
    beta = draw(st.sampled_from([0.75, 0.5, 1.0, 0.3]))
    bias = draw(st.floats(0.5, 3.0))
    return x, size, alpha, beta, bias


@settings(max_examples=100, deadline=None)
@given(lrn_cases())
def test_property_matches_reference(case):
    x, size, alpha, beta, bias = case
    y = normrt.lrn(x, size, alpha=alpha, beta=beta, bias=bias)
    np.testing.assert_allclose(y, ref_lrn(x, size, alpha, beta, bias), **tol(x.dtype))


def test_fortran_and_strided_inputs():
    base = np.random.default_rng(8).standard_normal((4, 10, 6, 8))
    for x in [np.asfortranarray(base), base[:, ::2, :, 1::3], base.transpose(0, 1, 3, 2), base[::-1, ::-1]]:
        np.testing.assert_allclose(normrt.lrn(x, 3, alpha=0.5), ref_lrn(x, 3, 0.5), rtol=1e-12)


@pytest.mark.parametrize("shape,size", [((2, 9, 4, 5), 3), ((1, 40, 300), 4), ((1, 40, 300), 60), ((2, 3, 7), 2)])
def test_out_and_in_place(shape, size):
    x = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    ref = normrt.lrn(x, size, alpha=0.5)
    out = np.empty_like(x)
    assert normrt.lrn(x, size, alpha=0.5, out=out) is out
    assert same_bits(out, ref)
    for n in (1, 8):
        xx = x.copy()
        with normrt.threads(n):
            assert normrt.lrn(xx, size, alpha=0.5, out=xx) is xx
        assert same_bits(xx, ref)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 3, 3), (2, 3, 0, 4), (2, 3, 0)])
def test_empty(shape):
    y = normrt.lrn(np.empty(shape, np.float64), 3)
    assert y.shape == shape and y.dtype == np.float64


# ---------------------------------------------------------------- bad input

X = np.ones((1, 3, 2, 2), np.float32)


@pytest.mark.parametrize("bad", [np.ones((1, 3, 2, 2), np.int64), np.ones((1, 3, 2, 2), np.int16),
                                 np.ones((1, 3, 2), np.complex64)])
def test_non_float_x(bad):
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.lrn(bad, 3)


@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_rank_too_small(shape):
    with pytest.raises(ValueError, match="x must have rank >= 3"):
        normrt.lrn(np.ones(shape, np.float32), 3)


@pytest.mark.parametrize("size", [0, -1, 2.5, True, "3", None, np.nan])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        normrt.lrn(X, size)


def test_size_accepts_integral_values():
    np.testing.assert_array_equal(normrt.lrn(X, np.int32(3)), normrt.lrn(X, 3))
    np.testing.assert_array_equal(normrt.lrn(X, 3.0), normrt.lrn(X, 3))


@pytest.mark.parametrize("name", ["alpha", "beta", "bias"])
def test_bad_float_attributes(name):
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        normrt.lrn(X, 3, **{name: np.nan})
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        normrt.lrn(X, 3, **{name: np.inf})
    with pytest.raises(TypeError, match=f"{name} must be a real number"):
        normrt.lrn(X, 3, **{name: "0.5"})


@pytest.mark.parametrize("out,msg", [
    (np.empty((1, 3, 2, 3), np.float32), "out must have shape"),
    (np.empty((1, 3, 2, 2), np.float64), "out must have dtype"),
    (np.empty((2, 2, 3, 1), np.float32).T, "out must be C-contiguous"),
    ("buffer", "out must be a numpy array"),
])
def test_bad_out(out, msg):
    with pytest.raises(ValueError, match=msg):
        normrt.lrn(X, 3, out=out)


def test_read_only_out():
    ro = np.empty_like(X)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        normrt.lrn(X, 3, out=ro)


def test_read_only_and_broadcast_inputs():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    x.flags.writeable = False
    np.testing.assert_allclose(normrt.lrn(x, 3, alpha=0.1), ref_lrn(x, 3, 0.1), rtol=1e-12)
    b = np.broadcast_to(np.arange(3.0).reshape(1, 3, 1), (2, 3, 5))
    np.testing.assert_allclose(normrt.lrn(b, 2, alpha=0.1), ref_lrn(b, 2, 0.1), rtol=1e-12)
