"""LayerNorm and RMSNorm: statistics over the trailing axes [axis, rank)."""
import math

import numpy as np

from .. import _checks as chk
from .._kernels import layer_norm as _k
from .._threads import get_num_threads


def _rows(x, axis):
    a = chk.axis_index(axis, x.ndim)
    G = math.prod(x.shape[:a])
    L = math.prod(x.shape[a:])
    return a, G, L


def _residual(residual, x):
    return None if residual is None else chk.same_tensor(residual, x, "residual")


def layer_norm(x, scale=None, bias=None, *, axis=-1, eps=1e-5, residual=None, activation=None,
               out=None, return_stats=False):
    """Layer normalization with ONNX LayerNormalization semantics.

    Normalizes over axes [axis, rank); `scale` and `bias` broadcast over those
    axes. With `residual`, normalizes `x + residual` (skip connection). With
    `return_stats=True` returns `(y, mean, inv_std_dev)`, the statistics shaped
    like x with the normalized axes set to 1.
    """
    x = chk.tensor(x, "x", min_rank=1)
    a, G, L = _rows(x, axis)
    norm_shape = x.shape[a:]
    dt = x.dtype
    scale = chk.param(scale, "scale", norm_shape, dt, broadcast=True)
    bias = chk.param(bias, "bias", norm_shape, dt, broadcast=True)
    eps = chk.eps_value(eps)
    act = chk.activation(activation)
    r = _residual(residual, x)
    y = chk.output(out, x.shape, dt, x)
    stats_shape = x.shape[:a] + (1,) * (x.ndim - a)
    if return_stats:
        mean = np.empty(G, np.float64)
        rstd = np.empty(G, np.float64)
    else:
        mean = rstd = chk.empty_f64()
    if G and L:
        _k.layer_norm(
            x.reshape(G, L),
            chk.empty2(dt) if r is None else r.reshape(G, L),
            chk.empty1(dt) if scale is None else scale.reshape(L),
            chk.empty1(dt) if bias is None else bias.reshape(L),
            y.reshape(G, L), chk.empty2(dt), mean, rstd, eps, act, get_num_threads(),
        )
    elif return_stats:
        mean.fill(np.nan)
        rstd.fill(np.nan)
    if return_stats:
        return y, mean.astype(dt).reshape(stats_shape), rstd.astype(dt).reshape(stats_shape)
    return y


def rms_norm(x, scale=None, *, axis=-1, eps=1e-5, residual=None, out=None):
    """RMS normalization: y = x / sqrt(mean(x**2) + eps) * scale over axes [axis, rank)."""
    x = chk.tensor(x, "x", min_rank=1)
    a, G, L = _rows(x, axis)
    dt = x.dtype
    scale = chk.param(scale, "scale", x.shape[a:], dt, broadcast=True)
    eps = chk.eps_value(eps)
    r = _residual(residual, x)
    y = chk.output(out, x.shape, dt, x)
    if G and L:
        _k.rms_norm(
            x.reshape(G, L),
            chk.empty2(dt) if r is None else r.reshape(G, L),
            chk.empty1(dt) if scale is None else scale.reshape(L),
            y.reshape(G, L), chk.empty2(dt), eps, 0, get_num_threads(),
        )
    return y
