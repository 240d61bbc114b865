"""Load-time weight transforms: fold_batch_norm, weight_norm, weight_standardize."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import normrt


# ------------------------------------------------------- small numpy layers

def conv2d(x, w, b=None, groups=1):
    """Cross-correlation, stride 1, no padding. x (N, Cin, H, W), w (Cout, Cin/g, kh, kw)."""
    N, Cin, H, W = x.shape
    Cout, cg, kh, kw = w.shape
    og = Cout // groups
    patches = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))  # N, Cin, Ho, Wo, kh, kw
    ys = []
    for g in range(groups):
        ys.append(np.einsum("nchwij,ocij->nohw", patches[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og]))
    y = np.concatenate(ys, axis=1)
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def conv_transpose2d(x, w, b=None, groups=1):
    """Transposed convolution, stride 1, no padding. w (Cin, Cout/g, kh, kw)."""
    N, Cin, H, W = x.shape
    _, og, kh, kw = w.shape
    cg = Cin // groups
    y = np.zeros((N, og * groups, H + kh - 1, W + kw - 1))
    for g in range(groups):
        xs = x[:, g * cg:(g + 1) * cg]
        ws = w[g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                y[:, g * og:(g + 1) * og, i:i + H, j:j + W] += np.einsum("nchw,co->nohw", xs, ws[:, :, i, j])
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def batchnorm(y, scale, shift, mean, var, eps, axis=1):
    shape = [1] * y.ndim
    shape[axis] = -1
    r = lambda v: np.asarray(v, np.float64).reshape(shape)  # noqa: E731
    return (y - r(mean)) / np.sqrt(r(var) + eps) * r(scale) + r(shift)


def bn_params(rng, c):
    return (rng.uniform(0.5, 2.0, c), rng.standard_normal(c), rng.standard_normal(c),
            rng.uniform(0.1, 3.0, c))


# ------------------------------------------------------------ fold_batch_norm

@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_fold_conv(groups, with_bias):
    rng = np.random.default_rng(groups)
    Cin, Cout, eps = 8, 12, 1e-3
    x = rng.standard_normal((2, Cin, 7, 6))
    w = rng.standard_normal((Cout, Cin // groups, 3, 2))
    b = rng.standard_normal(Cout) if with_bias else None
    scale, shift, mean, var = bn_params(rng, Cout)
    w2, b2 = normrt.fold_batch_norm(w, b, scale, shift, mean, var, eps=eps)
    assert w2.shape == w.shape and b2.shape == (Cout,)
    expected = batchnorm(conv2d(x, w, b, groups), scale, shift, mean, var, eps)
    np.testing.assert_allclose(conv2d(x, w2, b2, groups), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_gemm(with_bias):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((5, 7))
    w = rng.standard_normal((4, 7))   # torch Linear / Gemm transB=1: (Cout, Cin)
    b = rng.standard_normal(4) if with_bias else None
    scale, shift, mean, var = bn_params(rng, 4)
    w2, b2 = normrt.fold_batch_norm(w, b, scale, shift, mean, var, eps=1e-5)
    y = x @ w.T + (0 if b is None else b)
    np.testing.assert_allclose(x @ w2.T + b2, batchnorm(y, scale, shift, mean, var, 1e-5), rtol=1e-10, atol=1e-10)
    # Gemm with transB=0 keeps W as (Cin, Cout): output channels on axis 1
    w2t, b2t = normrt.fold_batch_norm(w.T, b, scale, shift, mean, var, eps=1e-5, axis=1)
    np.testing.assert_allclose(x @ w2t + b2t, batchnorm(y, scale, shift, mean, var, 1e-5), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_fold_conv_transpose(groups):
    rng = np.random.default_rng(20 + groups)
    Cin, Cout, eps = 8, 12, 1e-5
    x = rng.standard_normal((2, Cin, 4, 5))
    w = rng.standard_normal((Cin, Cout // groups, 3, 3))
    b = rng.standard_normal(Cout)
    scale, shift, mean, var = bn_params(rng, Cout)
    w2, b2 = normrt.fold_batch_norm(w, b, scale, shift, mean, var, eps=eps, axis=1, groups=groups)
    expected = batchnorm(conv_transpose2d(x, w, b, groups), scale, shift, mean, var, eps)
    np.testing.assert_allclose(conv_transpose2d(x, w2, b2, groups), expected, rtol=1e-10, atol=1e-10)


def test_fold_formula_and_dtype():
    rng = np.random.default_rng(30)
    w = rng.standard_normal((3, 2, 1, 1)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    scale, shift, mean, var = bn_params(rng, 3)
    w2, b2 = normrt.fold_batch_norm(w, b, scale, shift, mean, var, eps=0.01)
    assert w2.dtype == np.float32 and b2.dtype == np.float32
    a = scale / np.sqrt(var + 0.01)
    np.testing.assert_allclose(w2, w * a.reshape(3, 1, 1, 1), rtol=1e-6)
    np.testing.assert_allclose(b2, b * a + shift - mean * a, rtol=1e-5, atol=1e-6)
    # inputs untouched
    w_before = w.copy()
    normrt.fold_batch_norm(w, b, scale, shift, mean, var, eps=0.01)
    np.testing.assert_array_equal(w, w_before)


def test_fold_accepts_lists_and_column_params():
    w = np.ones((2, 3))
    w2, b2 = normrt.fold_batch_norm(w, None, [1.0, 2.0], [0.0, 1.0], [0.0, 0.0], [[1.0], [4.0]], eps=0)
    np.testing.assert_allclose(w2, [[1, 1, 1], [1, 1, 1]])
    np.testing.assert_allclose(b2, [0.0, 1.0])


W = np.ones((4, 3, 3, 3), np.float32)
P4 = np.ones(4)


def fold(**kw):
    args = dict(weight=W, bias=P4, scale=P4, shift=P4, mean=P4, var=P4)
    eps = kw.pop("eps", 1e-5)
    args.update(kw)
    return normrt.fold_batch_norm(args.pop("weight"), args.pop("bias"), args.pop("scale"), args.pop("shift"),
                                  args.pop("mean"), args.pop("var"), eps=eps, **args)


@pytest.mark.parametrize("name", ["bias", "scale", "shift", "mean", "var"])
@pytest.mark.parametrize("bad", [np.ones(3), np.ones(5), np.ones((2, 2)), np.ones((4, 2))])
def test_fold_bad_param_shape(name, bad):
    with pytest.raises(ValueError, match=f"{name} must have shape \\(4,\\)"):
        fold(**{name: bad})


@pytest.mark.parametrize("name", ["bias", "scale", "shift", "mean", "var"])
def test_fold_non_numeric_param(name):
    with pytest.raises(TypeError, match=f"{name} must be numeric"):
        fold(**{name: np.array(["a"] * 4)})


def test_fold_bad_weight():
    with pytest.raises(TypeError, match="weight must be a float32 or float64"):
        fold(weight=np.ones((4, 3), np.int32))
    with pytest.raises(ValueError, match="weight must have rank >= 2"):
        fold(weight=np.ones(4, np.float32))


def test_fold_bad_var_and_eps():
    with pytest.raises(ValueError, match="var must be >= 0"):
        fold(var=np.array([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="var must be >= 0"):
        fold(var=np.array([1.0, np.nan, 1.0, 1.0]))
    with pytest.raises(ValueError, match="var \\+ eps must be > 0"):
        fold(var=np.zeros(4), eps=0.0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        fold(eps=-1e-5)
    with pytest.raises(TypeError, match="eps must be a real number"):
        fold(eps="1e-5")
    with pytest.raises(TypeError, match="eps"):
        normrt.fold_batch_norm(W, P4, P4, P4, P4, P4)  # eps is required


def test_fold_bad_axis_and_groups():
    with pytest.raises(ValueError, match="axis must be in"):
        fold(axis=4)
    with pytest.raises(ValueError, match="groups must be 1 when axis is 0"):
        fold(groups=2)
    with pytest.raises(ValueError, match="groups must divide"):
        fold(weight=np.ones((3, 2, 3, 3), np.float32), axis=1, groups=2)
    with pytest.raises(ValueError, match="groups must be an int >= 1"):
        fold(groups=0)
    with pytest.raises(ValueError, match="scale must have shape \\(6,\\)"):
        fold(weight=np.ones((4, 3, 3, 3), np.float32), axis=1, groups=2)


# ---------------------------------------------------------------- weight_norm

def ref_weight_norm(v, g, axis):
    v = np.asarray(v, np.float64)
    g = np.asarray(g, np.float64).reshape(-1)
    if axis is None:
        return g[0] * v / np.sqrt((v ** 2).sum())
    vm = np.moveaxis(v, axis, 0)
    out = np.empty_like(vm)
    for i in range(vm.shape[0]):
        out[i] = g[i] * vm[i] / np.sqrt((vm[i] ** 2).sum())
    return np.moveaxis(out, 0, axis)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((6, 3, 3, 3), 0), ((6, 3, 3, 3), 1), ((5, 7), 0), ((5, 7), 1),
                                        ((5, 7), -1), ((8,), 0), ((4, 3, 2), None)])
def test_weight_norm_formula(shape, axis, dtype):
    rng = np.random.default_rng(40)
    v = rng.standard_normal(shape).astype(dtype)
    n = 1 if axis is None else shape[axis]
    g = rng.uniform(0.5, 2, n)
    w = normrt.weight_norm(v, g, axis=axis)
    assert w.dtype == dtype and w.shape == v.shape
    np.testing.assert_allclose(w, ref_weight_norm(v, g, axis), rtol=1e-6 if dtype == np.float32 else 1e-13)
    # the per-slice norms of w are |g|
    if axis is not None:
        norms = np.sqrt((np.moveaxis(w.astype(np.float64), axis, 0).reshape(n, -1) ** 2).sum(1))
        np.testing.assert_allclose(norms, np.abs(g), rtol=1e-5)


def test_weight_norm_keepdims_gain_and_default_axis():
    rng = np.random.default_rng(41)
    v = rng.standard_normal((6, 3, 3, 3))
    g = rng.uniform(0.5, 2, (6, 1, 1, 1))  # torch's weight_g shape
    np.testing.assert_allclose(normrt.weight_norm(v, g), ref_weight_norm(v, g, 0), rtol=1e-13)
    np.testing.assert_allclose(normrt.weight_norm(v, g.reshape(6)), ref_weight_norm(v, g, 0), rtol=1e-13)
    g1 = g.reshape(1, 6, 1, 1)
    np.testing.assert_allclose(normrt.weight_norm(v.transpose(1, 0, 2, 3), g1, axis=1),
                               ref_weight_norm(v.transpose(1, 0, 2, 3), g1, 1), rtol=1e-13)


def test_weight_norm_zero_slice_gives_zero():
    v = np.ones((3, 4))
    v[1] = 0
    w = normrt.weight_norm(v, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(w, [[0.5] * 4, [0.0] * 4, [1.5] * 4])


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5),
                  elements=st.floats(0.01, 100) | st.floats(-100, -0.01)), st.data())
def test_weight_norm_property(v, data):
    axis = data.draw(st.integers(0, v.ndim - 1))
    g = data.draw(hnp.arrays(np.float64, (v.shape[axis],), elements=st.floats(-10, 10)))
    np.testing.assert_allclose(normrt.weight_norm(v, g, axis=axis), ref_weight_norm(v, g, axis),
                               rtol=1e-12, atol=1e-300)


def test_weight_norm_bad_input():
    v = np.ones((4, 3), np.float32)
    with pytest.raises(TypeError, match="v must be a float32 or float64"):
        normrt.weight_norm(np.ones((4, 3), np.int64), np.ones(4))
    with pytest.raises(ValueError, match="v must have rank >= 1"):
        normrt.weight_norm(np.float32(1), np.ones(1))
    for bad in (np.ones(3), np.ones((1, 4)), np.ones((4, 3)), np.ones((4, 1, 1))):
        with pytest.raises(ValueError, match="g must have shape"):
            normrt.weight_norm(v, bad)
    with pytest.raises(TypeError, match="g must be numeric"):
        normrt.weight_norm(v, np.array(["a"] * 4))
    with pytest.raises(ValueError, match="axis must be in"):
        normrt.weight_norm(v, np.ones(4), axis=2)
    with pytest.raises(TypeError, match="axis must be an int"):
        normrt.weight_norm(v, np.ones(4), axis=0.0)


# --------------------------------------------------------- weight_standardize

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (5, 7), (3, 2, 5)])
def test_weight_standardize_moments(shape, dtype):
    rng = np.random.default_rng(50)
    w = (rng.standard_normal(shape) * 0.1 + 3.0).astype(dtype)
    y = normrt.weight_standardize(w, eps=0.0)
    assert y.dtype == dtype and y.shape == w.shape
    flat = y.astype(np.float64).reshape(shape[0], -1)
    np.testing.assert_allclose(flat.mean(1), 0.0, atol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(flat.var(1), 1.0, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_weight_standardize_formula(axis):
    rng = np.random.default_rng(51)
    w = rng.standard_normal((6, 4, 3, 3))
    eps = 1e-3
    axes = tuple(i for i in range(4) if i != axis % 4)
    m = w.mean(axes, keepdims=True)
    v = w.var(axes, keepdims=True)  # population variance
    np.testing.assert_allclose(normrt.weight_standardize(w, eps=eps, axis=axis), (w - m) / np.sqrt(v + eps),
                               rtol=1e-12, atol=1e-14)
    if axis == 0:
        np.testing.assert_allclose(normrt.weight_standardize(w), (w - m) / np.sqrt(v + 1e-5), rtol=1e-12)


def test_weight_standardize_constant_channel_gives_zero():
    w = np.random.default_rng(52).standard_normal((3, 10))
    w[1] = 0.1
    for eps in (0.0, 1e-5):
        y = normrt.weight_standardize(w, eps=eps)
        assert (y[1] == 0).all() and np.isfinite(y).all()


def test_weight_standardize_bad_input():
    with pytest.raises(TypeError, match="w must be a float32 or float64"):
        normrt.weight_standardize(np.ones((3, 3), np.int8))
    with pytest.raises(ValueError, match="w must have rank >= 2"):
        normrt.weight_standardize(np.ones(3))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        normrt.weight_standardize(np.ones((3, 3)), eps=-1.0)
    with pytest.raises(ValueError, match="axis must be in"):
        normrt.weight_standardize(np.ones((3, 3)), axis=2)


def test_fortran_and_strided_weights():
    rng = np.random.default_rng(60)
    base = rng.standard_normal((6, 8, 3, 3))
    for w in (np.asfortranarray(base), base[:, ::2], base[::-1]):
        scale, shift, mean, var = bn_params(rng, w.shape[0])
        w2, _ = normrt.fold_batch_norm(w, None, scale, shift, mean, var, eps=1e-5)
        np.testing.assert_allclose(w2, w * (scale / np.sqrt(var + 1e-5)).reshape(-1, 1, 1, 1), rtol=1e-14)
        g = rng.uniform(1, 2, w.shape[0])
        np.testing.assert_allclose(normrt.weight_norm(w, g), ref_weight_norm(w, g, 0), rtol=1e-13)
        y = normrt.weight_standardize(w, eps=0)
        np.testing.assert_allclose(y.reshape(w.shape[0], -1).var(1), 1.0, rtol=1e-12)
