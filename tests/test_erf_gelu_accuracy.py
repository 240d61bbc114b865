"""float32 erf and GELU (moments.pxd erf_f / gelu_f, used by every fused epilogue)
against float64 math.erf / math.erfc, over every binade, tails included."""
import math

import numpy as np
import pytest

import normrt

_erf = np.vectorize(math.erf, otypes=[np.float64])
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def float32_grid(top, step=4099):
    """Every step-th float32 below |top| (both signs): all binades, denormals included."""
    bits = np.arange(0, np.float32(top).view(np.uint32), step, dtype=np.uint32)
    x = bits.view(np.float32)
    return np.concatenate([x, -x])


def ref_gelu(x):
    v = x.astype(np.float64)
    return 0.5 * v * _erfc(-v / math.sqrt(2))   # erfc: relative accuracy in the negative tail


def test_erf_relative_error_every_binade():
    x = float32_grid(10.0)
    ref = _erf(x.astype(np.float64))
    y = normrt.erf(x).astype(np.float64)
    big = np.abs(ref) > 1e-37            # below, the float32 result itself loses digits
    assert np.max(np.abs(y[big] - ref[big]) / np.abs(ref[big])) < 5e-7
    assert np.all(np.abs(y[~big] - ref[~big]) <= 5e-7 * np.abs(ref[~big]) + 2 ** -149)


def test_erf_near_the_piece_boundary_and_saturation():
    edges = np.array([0.875, 3.9, 4.0], np.float32)
    x = np.concatenate([np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(0)), edges])
    x = np.concatenate([x, -x])
    ref = _erf(x.astype(np.float64))
    np.testing.assert_allclose(normrt.erf(x), ref, rtol=5e-7, atol=0)


def test_gelu_relative_error_tails_included():
    x = float32_grid(12.5)
    ref = ref_gelu(x)
    y = normrt.activate(x, "gelu").astype(np.float64)
    # relative down to 1e-30 (v = -11.6): the negative tail keeps its digits
    keep = np.abs(ref) > 1e-30
    assert np.max(np.abs(y[keep] - ref[keep]) / np.abs(ref[keep])) < 1e-6
    assert np.max(np.abs(y[~keep] - ref[~keep])) < 1e-30


def test_gelu_far_tail_flushes_to_zero_and_special_values():
    x = np.array([-13.0, -20.0, -1e30, -np.inf, np.inf, 1e30, np.nan, 0.0, -0.0, 1e-40, -1e-40],
                 np.float32)
    y = normrt.activate(x, "gelu")
    assert np.all(np.abs(y[:4]) <= 1e-36)      # exact values below 1e-36 (or 0)
    assert y[4] == np.inf and y[5] == np.float32(1e30)
    assert np.isnan(y[6])
    assert y[7] == 0 and y[8] == 0
    np.testing.assert_allclose(y[9:], 0.5 * x[9:].astype(np.float64), rtol=1e-6)
    e = normrt.erf(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(e).all()


@pytest.mark.parametrize("act", ["gelu", "silu", "sigmoid"])
def test_vector_body_and_scalar_remainder_agree_bitwise(act):
    # one element alone runs the scalar remainder loop; inside a long array the
    # vector body: both must execute the same operations
    x = (np.random.default_rng(3).standard_normal(203) * 5).astype(np.float32)
    whole = normrt.activate(x, act)
    alone = np.array([normrt.activate(x[i:i + 1], act)[0] for i in range(x.size)])
    assert np.array_equal(whole, alone)
    assert np.array_equal(normrt.erf(x), np.array([normrt.erf(x[i:i + 1])[0] for i in range(x.size)]))


def test_gelu_and_erf_bitwise_for_any_thread_count():
    # above the kernels' parallel threshold (2**18), odd length
    x = (np.random.default_rng(5).standard_normal((1 << 19) + 37) * 4).astype(np.float32)
    with normrt.threads(1):
        g1, e1 = normrt.activate(x, "gelu"), normrt.erf(x)
    for n in (2, 3):
        with normrt.threads(n):
            assert np.array_equal(normrt.activate(x, "gelu"), g1)
            assert np.array_equal(normrt.erf(x), e1)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (64, 128), (5, 1000)])
def test_fused_layer_norm_gelu_matches_float64(shape):
    x = (np.random.default_rng(11).standard_normal(shape) * 3).astype(np.float32)
    y = normrt.layer_norm(x, activation="gelu").astype(np.float64)
    v = x.astype(np.float64)
    n = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, 0.5 * n * _erfc(-n / math.sqrt(2)), rtol=1e-5, atol=1e-6)
