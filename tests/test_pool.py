"""MaxPool / AveragePool / GlobalAveragePool on the plane kernels (pyx/pool.pyx) vs a float64 reference."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import normrt
from normrt._kernels import pool as kpool

rng = np.random.default_rng(5)


def out_len(n, pb, pe, k, s, d, ceil_mode):
    span = (k - 1) * d + 1
    num = n + pb + pe - span
    if not ceil_mode:
        return num // s + 1
    o = -(-num // s) + 1
    return o - 1 if (o - 1) * s >= n + pb else o


def ref_pool(x, kernel, strides, pads, dil, ceil_mode, is_max, include_pad=False):
    """One output pixel at a time, in float64, from the ONNX definition."""
    x = x.astype(np.float64)
    H, W = x.shape[2:]
    oh_n = out_len(H, pads[0], pads[2], kernel[0], strides[0], dil[0], ceil_mode)
    ow_n = out_len(W, pads[1], pads[3], kernel[1], strides[1], dil[1], ceil_mode)
    y = np.empty(x.shape[:2] + (oh_n, ow_n))
    for oh in range(oh_n):
        for ow in range(ow_n):
            hs = [oh * strides[0] - pads[0] + i * dil[0] for i in range(kernel[0])]
            ws = [ow * strides[1] - pads[1] + j * dil[1] for j in range(kernel[1])]
            vals = [x[:, :, h, w] for h in hs for w in ws if 0 <= h < H and 0 <= w < W]
            if is_max:
                y[:, :, oh, ow] = np.max(vals, axis=0) if vals else -np.inf
                continue
            if include_pad:   # padding counts, ceil_mode's overhang past it does not
                cnt = sum(-pads[0] <= h < H + pads[2] for h in hs) * sum(-pads[1] <= w < W + pads[3] for w in ws)
            else:
                cnt = len(vals)
            y[:, :, oh, ow] = np.sum(vals, axis=0) / cnt
    return y


def run(op, x, opset=19, **attrs):
    node = helper.make_node(op, ["X"], ["Y"], **attrs)
    dt = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.DOUBLE
    g = helper.make_graph([node], "pool", [helper.make_tensor_value_info("X", dt, list(x.shape))],
                          [helper.make_tensor_value_info("Y", dt, ["n", "c", "h", "w"][:x.ndim])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    sess = normrt.InferenceSession(model)
    assert sess.executor.counts()["reference"] == 0
    return sess.run(None, {"X": x})[0]


CASES = [  # shape, kernel, strides, pads (hb, wb, he, we), dilations, ceil_mode
    ((1, 64, 112, 112), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0),   # light_resnet50's stem pool
    ((2, 3, 17, 19), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    ((1, 5, 16, 33), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0),
    ((1, 2, 15, 14), (3, 2), (3, 3), (2, 1, 0, 1), (1, 1), 1),      # stride 3 (generic loop), uneven pads
    ((1, 3, 20, 21), (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 0),      # dilations, stride 1
    ((2, 2, 9, 40), (5, 4), (2, 2), (0, 3, 1, 0), (1, 2), 1),
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 0),
    ((1, 1, 3, 70), (3, 7), (1, 2), (2, 3, 2, 3), (1, 1), 1),       # windows made only of padding rows
    # 2x2 / stride 2 without padding: the streaming path (pool_2x2_plane)
    ((1, 9, 56, 56), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0),      # DenseNet's transition pool
    ((2, 3, 15, 75), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0),      # odd H and W: the last row/column unread
    ((1, 4, 2, 2), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0),
    ((1, 3, 9, 13), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 1),       # ceil_mode overhang: the generic path
    ((1, 2, 8, 64), (2, 2), (2, 2), (0, 1, 0, 1), (1, 1), 0),       # padded: the generic path
    # 3x3 / stride 2 / left pad 1 (MaxPool: the stem path, maxpool_3s2p1)
    ((1, 2, 9, 33), (3, 3), (2, 2), (0, 1, 1, 0), (1, 1), 1),
    ((1, 3, 6, 64), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0),
    ((2, 2, 5, 65), (3, 3), (2, 2), (2, 1, 2, 2), (1, 1), 1),
    ((1, 1, 1, 2), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_max_pool(case, dtype):
    shape, k, s, p, d, ceil = CASES[case]
    x = rng.standard_normal(shape).astype(dtype)
    y = run("MaxPool", x, kernel_shape=k, strides=s, pads=p, dilations=d, ceil_mode=ceil)
    want = ref_pool(x, k, s, p, d, ceil, True)
    assert y.dtype == dtype and y.shape == want.shape
    np.testing.assert_array_equal(y, want.astype(dtype))


@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-6), (np.float64, 1e-14)])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_average_pool(case, dtype, rtol, include_pad):
    shape, k, s, p, d, ceil = CASES[case]
    x = rng.standard_normal(shape).astype(dtype)
    y = run("AveragePool", x, kernel_shape=k, strides=s, pads=p, dilations=d, ceil_mode=ceil,
            count_include_pad=include_pad)
    want = ref_pool(x, k, s, p, d, ceil, False, bool(include_pad))
    assert y.dtype == dtype and y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=rtol, atol=rtol)


def test_max_pool_nan_and_inf():
    x = rng.standard_normal((1, 2, 8, 40)).astype(np.float32)
    x[0, 0, 3, 5] = np.nan
    x[0, 1, 0, 0] = np.inf
    x[0, 1, 6] = -np.inf
    x[0, 0, 7, 39] = np.nan          # the last column: the last chunk's tail
    x[0, 1, 2, 31] = np.nan          # an odd column at a chunk's end: the next chunk's left tap
    y = run("MaxPool", x, kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
    want = ref_pool(x, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0, True)
    np.testing.assert_array_equal(y, want.astype(np.float32))       # NaN where the window has one
    assert np.isnan(y[0, 0, 1:3, 2:4]).all() and y[0, 1, 0, 0] == np.inf
    assert np.isnan(y[0, 0, 3, 19]) and np.isnan(y[0, 1, 1, 15:17]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_2x2_nan_inf_and_extremes(dtype):
    x = rng.standard_normal((1, 3, 10, 70)).astype(dtype)
    x[0, 0, 3, 5] = np.nan           # one window of row 1, column 2
    x[0, 0, 6, 68] = np.nan          # the last vector's tail
    x[0, 1, 0, 0] = np.inf
    x[0, 1, 4] = -np.inf             # output row 2 of plane 1: -inf (max), -inf or nan (mean)
    x[0, 2] = np.finfo(dtype).max    # sums overflow to inf, as the float64 reference's do not
    for op, is_max in (("MaxPool", True), ("AveragePool", False)):
        y = run(op, x, kernel_shape=(2, 2), strides=(2, 2))
        with np.errstate(over="ignore"):
            want = ref_pool(x, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0, is_max)
        if is_max:
            np.testing.assert_array_equal(y[0, :2], want[0, :2].astype(dtype))
        else:
            np.testing.assert_allclose(y[0, :2], want[0, :2], rtol=1e-6, atol=1e-6, equal_nan=True)
        assert np.isnan(y[0, 0, 1, 2]) and np.isnan(y[0, 0, 3, 34]) and y[0, 1, 0, 0] == np.inf
    assert np.isinf(y[0, 2]).all()   # (max + max) overflows before the * 0.25, as the plane kernel's sum


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 3, 9, 15), (2, 2, 5, 7), (1, 2, 7, 41)])
def test_pool_2x2_ignores_the_unread_last_row_and_column(shape, dtype):
    # odd H / W: the last row and column belong to no window; the kernel's full-width loads
    # read past a row's windows (into those and the next row), which must never reach an output
    x = rng.standard_normal(shape).astype(dtype)
    x[:, :, -1, :] = np.nan
    x[:, :, :, -1] = np.inf
    for op, is_max in (("MaxPool", True), ("AveragePool", False)):
        y = run(op, x, kernel_shape=(2, 2), strides=(2, 2))
        assert np.isfinite(y).all()
        want = ref_pool(x[:, :, :-1, :-1], (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0, is_max)
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_pool_2x2_same_bits_for_any_thread_count():
    x = rng.standard_normal((2, 16, 512, 520)).astype(np.float32)   # > 2^23 elements: split over threads
    outs = []
    for n in (1, 2, 3):
        with normrt.threads(n):
            outs.append((run("MaxPool", x, kernel_shape=(2, 2), strides=(2, 2)),
                         run("AveragePool", x, kernel_shape=(2, 2), strides=(2, 2))))
    for o in outs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(outs[0], o))


@pytest.mark.parametrize("shape", [(1, 2048, 7, 7), (2, 3, 33, 65), (1, 1, 1, 1), (2, 5, 300),
                                   # short planes (< 256): the float64-lane sum and its tails
                                   (2, 3, 1, 7), (1, 4, 2, 4), (1, 3, 3, 5), (1, 2, 16), (2, 2, 3, 8),
                                   (1, 2, 5, 51), (1, 3, 17)])
def test_global_average_pool(shape):
    x = (rng.standard_normal(shape) + 3).astype(np.float32)
    y = run("GlobalAveragePool", x)
    want = x.astype(np.float64).mean(axis=tuple(range(2, x.ndim)), keepdims=True)
    assert y.shape == want.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_same_bits_for_any_thread_count():
    x = rng.standard_normal((2, 37, 381, 301)).astype(np.float32)   # > 2^23 elements: split over threads
    outs = []
    for n in (1, 2, 3):
        with normrt.threads(n):
            outs.append((run("MaxPool", x, kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
                         run("AveragePool", x, kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
                         run("GlobalAveragePool", x)))
    for o in outs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(outs[0], o))


def test_kernel_bad_input():
    x = np.zeros((2, 5, 5), np.float32)
    none = np.empty(0, np.int64)
    with pytest.raises(ValueError, match="out must have x's number of planes"):
        kpool.pool2d(x, np.empty((3, 2, 2), np.float32), 2, 2, 2, 2, 0, 0, 1, 1, True, none, none, 1)
    with pytest.raises(ValueError, match="kernel, strides and dilations must be >= 1"):
        kpool.pool2d(x, np.empty((2, 2, 2), np.float32), 2, 2, 0, 2, 0, 0, 1, 1, True, none, none, 1)
    with pytest.raises(ValueError, match="row_count / col_count"):
        kpool.pool2d(x, np.empty((2, 2, 2), np.float32), 2, 2, 2, 2, 0, 0, 1, 1, False, none, none, 1)
    with pytest.raises(ValueError, match="out must have one entry per plane"):
        kpool.global_average(x.reshape(2, -1), np.empty(3, np.float32), 1)


@pytest.mark.parametrize("shape", [(1, 2048, 7, 7), (2, 3, 20, 17)])
def test_average_pool_over_the_whole_plane(shape):
    # ResNet's final AveragePool(7x7) on 7x7: one mean per plane (the global-average kernel)
    x = (rng.standard_normal(shape) + 2).astype(np.float32)
    k = shape[2:]
    y = run("AveragePool", x, opset=9, kernel_shape=k, strides=(1, 1))
    assert y.shape == shape[:2] + (1, 1)
    np.testing.assert_allclose(y, ref_pool(x, k, (1, 1), (0, 0, 0, 0), (1, 1), 0, False), rtol=1e-6)
