"""BatchNorm (inference), per-channel batch statistics and SPADE over x of shape (N, C, *spatial).

Channel axis 1: x is viewed as (N, C, S), S the product of the spatial sizes
(1 for (N, C) input); the kernels read channel c as the N strided runs x[n, c, :].
"""
import math

import numpy as np

from .. import _checks as chk
from .._kernels import batch_norm as _k
from .._thread_policy import memory_bound
from . import half
from .moments import channel_moments


def _view(x):
    N, C = x.shape[:2]
    return N, C, math.prod(x.shape[2:])


def _channel_vector(p, name, C):
    """A required per-channel parameter as float64 (C,)."""
    if p is None:
        raise ValueError(f"{name} is required: an array of shape {(C,)}")
    return chk.param(p, name, (C,), np.float64)


def _detach(p, y):
    """p, read while y is written element by element: a copy if y overlaps it at another offset."""
    if np.may_share_memory(p, y) and p.__array_interface__["data"][0] != y.__array_interface__["data"][0]:
        return p.copy()
    return p


def _fast(x, scale, bias, mean, var, eps, activation, out):
    """The common float32/float64 call with as few Python checks as a small
    tensor allows (they cost ~2 us, twice the normalization of a few thousand
    elements): y, or None when this path does not apply.

    The kernel checks the dtype, shape and layout of x, out and the four
    parameters (ndarrays of one float type, shape (C,)) and raises before it
    computes; the caller then takes the checked path, which converts what it
    can and names the argument that is wrong. Checked here is what the kernel
    cannot see: out's own shape (the kernel sees the (N, C, S) view), its
    layout (a reshape of a strided out would be a copy) and its overlap with x.
    """
    if type(x) is np.ndarray and x.itemsize == 2:
        return None
    checked = chk.fast_channel_call(x, activation, out, eps, 2)
    if checked is None:
        return None
    act, y = checked
    shape = x.shape
    N, C = shape[0], shape[1]
    S = x.size // (N * C)
    try:
        _k.batch_norm(x.reshape(N, C, S), scale, bias, mean, var, eps, y.reshape(N, C, S), act,
                      memory_bound(x.size))
    except (TypeError, ValueError):
        return None
    return y


def batch_norm(x, scale, bias, mean, var, *, eps=1e-5, activation=None, out=None):
    """Batch normalization with running statistics (ONNX BatchNormalization, inference).

    x has shape (N, C, *spatial) (rank >= 2, channel axis 1); scale, bias, mean
    and var have shape (C,). The statistics are folded once per channel,
    a = scale / sqrt(var + eps), and every element is computed in float64 as
    y = act((x - mean) * a + bias), so a channel equal to its mean gives exactly
    bias. `activation` is None or a name of normrt.ACTIVATIONS. `out` may be x.
    """
    y = _fast(x, scale, bias, mean, var, eps, activation, out)
    if y is not None:
        return y
    x = chk.tensor(x, "x", min_rank=2, half=True)
    N, C, S = _view(x)
    params = (_statistic(scale, "scale", C), _statistic(bias, "bias", C), _statistic(mean, "mean", C),
              _statistic(var, "var", C))
    dt = params[0].dtype
    if params[1].dtype != dt or params[2].dtype != dt or params[3].dtype != dt:
        params = [p.astype(np.float64) for p in params]     # the kernel takes all four in one type
    eps = chk.eps_value(eps)
    act = chk.activation(activation)
    y = chk.output(out, x.shape, x.dtype, x)
    kind = chk.half_kind(x.dtype)
    if x.size:
        # the fold a = scale / sqrt(var + eps) happens in the kernel, in float64
        xk, yk = (half.bits(x), half.bits(y)) if kind >= 0 else (x, y)
        _k.batch_norm(xk.reshape(N, C, S), *params, eps, yk.reshape(N, C, S), act, memory_bound(x.size),
                      max(kind, 0))
    return y


def _statistic(p, name, C):
    """A BatchNorm parameter as it comes (float32/float64 (C,), contiguous), else as float64 (C,).
    (The kernel reads either type exactly in float64: converting here would cost more than the
    normalization of a small tensor.)"""
    if type(p) is np.ndarray and p.shape == (C,) and p.dtype in _STAT_DTYPES and p.flags.c_contiguous:
        return p
    return _channel_vector(p, name, C)


_STAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def batch_norm_stats(x, *, dtype=None):
    """Per-channel batch statistics: (mean, var), each of shape (C,) in x's dtype
    (or `dtype`: float64 keeps the statistics' own precision for float32 x).

    Mean and population variance over every axis but 1 (N and spatial), as
    BatchNormalization computes in training mode; float64 two-pass chunk
    moments merged in a fixed order (bitwise identical for any thread count).
    A channel with no elements (N or a spatial size 0) gives NaN.
    """
    x = chk.tensor(x, "x", min_rank=2, half=True)
    dt = x.dtype if dtype is None else np.dtype(dtype)
    if dt not in chk.FLOAT_DTYPES and dt not in chk.HALF_DTYPES:
        raise TypeError(f"dtype must be float32 or float64 (or float16/bfloat16), got {dt}")
    if x.dtype in chk.HALF_DTYPES:
        x = half.to_float32(x)      # exact; the statistics are float64 as for float32 x
    mean, var = channel_moments(x.reshape(_view(x)))
    return mean.astype(dt), var.astype(dt)


def spade(x, gamma, beta, *, mean=None, var=None, eps=1e-5, out=None):
    """SPADE (spatially-adaptive normalization, Park et al. 2019).

    x has shape (N, C, *spatial). Each channel is normalized, xhat =
    (x - mean[c]) / sqrt(var[c] + eps), with the running statistics `mean` and
    `var` (shape (C,), give both) or, when both are omitted, with the batch
    statistics over N and the spatial axes. Then y = xhat * (1 + gamma) + beta,
    where gamma and beta are full tensors shaped like x (cast to x's dtype).
    Computed in float64 per element. `out` may be x (or gamma or beta).
    """
    x = chk.tensor(x, "x", min_rank=2, half=True)
    N, C, S = _view(x)
    gamma = chk.same_tensor(gamma, x, "gamma")
    beta = chk.same_tensor(beta, x, "beta")
    if (mean is None) != (var is None):
        raise ValueError("mean and var must be given together (running statistics) "
                         "or both omitted (batch statistics)")
    if mean is not None:
        mean = _channel_vector(mean, "mean", C)
        var = _channel_vector(var, "var", C)
    eps = chk.eps_value(eps)
    y = chk.output(out, x.shape, x.dtype, x)
    if x.size == 0:
        return y
    if chk.half_kind(x.dtype) >= 0:
        # gamma, beta (x's dtype) and x widen exactly to float32; y is rounded once
        return half.via_float32(x, y, lambda x32, g32, b32: _spade(x32, g32, b32, x32, mean, var, eps),
                                gamma, beta)
    return _spade(x, _detach(gamma, y), _detach(beta, y), y, mean, var, eps)


def _spade(x, gamma, beta, y, mean, var, eps):
    N, C, S = _view(x)
    x3 = x.reshape(N, C, S)
    if mean is None:
        mean, var = channel_moments(x3)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_std = 1.0 / np.sqrt(var + eps)
    _k.channel_affine(x3, mean, inv_std, np.zeros(C), gamma.reshape(-1), beta.reshape(-1),
                      y.reshape(N, C, S), 0, memory_bound(x.size))
    return y
