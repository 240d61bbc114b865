"""Lp normalization (ONNX LpNormalization): y = x / ||x||_p along one axis."""
import math

import numpy as np

from .. import _checks as chk
from .._kernels import lp_norm as _k
from .._thread_policy import memory_bound
from . import half


def lp_norm(x, *, p=2, axis=-1, eps=0.0, nan_on_zero=False, out=None):
    """Divide x by its L1 (p=1) or L2 (p=2) norm along `axis`.

    ONNX LpNormalization: ||x||_1 = sum |x|, ||x||_2 = sqrt(sum x**2),
    accumulated in float64. With eps > 0 the divisor is max(||x||, eps), which is
    torch.nn.functional.normalize (its default eps is 1e-12); with eps = 0 (the
    default, ONNX) a vector whose norm is 0 gives 0, not NaN - unless
    `nan_on_zero`: then it gives NaN, as the plain division x / ||x|| does (a
    model's h / h.norm(), or F.normalize in float16, whose eps of 1e-12 rounds
    to 0). A NaN stays in its own vector.
    Results are bitwise identical for any thread count. `out` may be x.
    """
    x = chk.tensor(x, "x", min_rank=1, half=True)
    p = chk.int_value(p, "p", choices=(1, 2))
    a = chk.axis_index(axis, x.ndim)
    eps = chk.eps_value(eps)
    if type(nan_on_zero) is not bool:
        raise TypeError(f"nan_on_zero must be True or False, got {nan_on_zero!r}")
    y = chk.output(out, x.shape, x.dtype, x)
    if x.size == 0:
        return y
    if chk.half_kind(x.dtype) >= 0:
        return half.via_float32(x, y, lambda x32: _lp(x32, p, a, eps, nan_on_zero, x32))
    return _lp(x, p, a, eps, nan_on_zero, y)


def _lp(x, p, a, eps, nan_on_zero, y):
    # view x as (K1, L, K2): the norm runs over L, K2 is the contiguous inner extent
    K1 = math.prod(x.shape[:a])
    L = x.shape[a]
    K2 = math.prod(x.shape[a + 1:])
    if K2 == 1:
        _k.lp_rows(x.reshape(K1, L), y.reshape(K1, L), p, eps, memory_bound(x.size), nan_on_zero)
    else:
        _k.lp_cols(x.reshape(K1, L, K2), y.reshape(K1, L, K2), p, eps, memory_bound(x.size), nan_on_zero)
    return y


def grn(x, gamma, beta, *, eps=1e-6, out=None):
    """Global response normalization (ConvNeXt V2) of a channels-last x (N, *spatial, C):

        G = ||x||_2 over the spatial axes, per (n, c);  Nx = G / (mean over c of G + eps)
        y = gamma * (x * Nx) + beta + x

    gamma, beta: (C,) (or any shape that broadcasts to it, the (1, 1, 1, C) of the modules).
    The sums of squares and the mean are float64; y is computed in float64 and rounded once.
    float32, float16 or bfloat16 x (half through float32, gamma and beta in float32 or x's
    dtype). A NaN spreads over its sample, as the formula's mean over the channels does.
    Results are bitwise identical for any thread count. `out` may be x.
    """
    x = chk.tensor(x, "x", min_rank=2, half=True)
    if x.dtype == np.float64:
        raise TypeError("x must be a float32, float16 or bfloat16 array, got dtype float64")
    C = x.shape[-1]
    gamma = chk.param(_channel_vector(gamma), "gamma", (C,), np.float32, broadcast=True)
    beta = chk.param(_channel_vector(beta), "beta", (C,), np.float32, broadcast=True)
    if gamma is None or beta is None:
        raise TypeError("gamma and beta must be arrays of shape (C,), got None")
    eps = chk.eps_value(eps)
    y = chk.output(out, x.shape, x.dtype, x)
    if x.size == 0:
        return y
    N, L = x.shape[0], math.prod(x.shape[1:-1])

    def run(x32, y32):
        _k.grn(x32.reshape(N, L, C), gamma, beta, eps, y32.reshape(N, L, C), memory_bound(x.size))
        return y32
    if chk.half_kind(x.dtype) >= 0:
        return half.via_float32(x, y, lambda x32: run(x32, x32))
    return run(x, y)


def _channel_vector(p):
    """The modules' (1, 1, 1, C) parameters as (C,) (leading axes of 1 dropped); others as given."""
    if p is not None and not isinstance(p, np.ndarray):
        p = np.asarray(p)
    if p is not None and p.ndim > 1 and all(d == 1 for d in p.shape[:-1]):
        return p.reshape(p.shape[-1])
    return p
