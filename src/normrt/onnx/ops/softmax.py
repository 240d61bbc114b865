"""Softmax family (numpy): Softmax, LogSoftmax, Hardmax.

Opset < 13 coerces the input to 2D at `axis` (default 1) and normalises over
the flattened trailing block; opset >= 13 normalises along the single `axis`
(default -1).
"""
import numpy as np

from ._util import norm_axis, op


def _softmax_axes(node, x):
    if node.version < 13:
        axis = norm_axis(node.attrs.get("axis", 1), max(x.ndim, 1))
        return tuple(range(axis, x.ndim))
    return (norm_axis(node.attrs.get("axis", -1), max(x.ndim, 1)),)


def _shifted(x, axes):
    m = np.max(x, axis=axes, keepdims=True)
    # an all -inf slice would give nan through (-inf) - (-inf); keep 0 there
    if x.dtype.kind == "f":
        m = np.where(np.isfinite(m), m, 0).astype(x.dtype, copy=False)
    return np.subtract(x, m)


@op("Softmax", since=1)
def softmax(node, x):
    if x.ndim == 0:
        return np.ones_like(x)
    axes = _softmax_axes(node, x)
    e = _shifted(x, axes)
    np.exp(e, out=e)
    e /= e.sum(axis=axes, keepdims=True)
    return e


@op("LogSoftmax", since=1)
def log_softmax(node, x):
    if x.ndim == 0:
        return np.zeros_like(x)
    axes = _softmax_axes(node, x)
    s = _shifted(x, axes)
    lse = np.log(np.exp(s).sum(axis=axes, keepdims=True))
    s -= lse
    return s


@op("Hardmax", since=1)
def hardmax(node, x):
    axes = _softmax_axes(node, x)
    shape = x.shape
    if len(axes) > 1:
        x = x.reshape(shape[: axes[0]] + (-1,))
        ax = x.ndim - 1
    else:
        ax = axes[0]
    idx = np.expand_dims(np.argmax(x, axis=ax), ax)
    out = np.zeros_like(x)
    np.put_along_axis(out, idx, 1, axis=ax)
    return out.reshape(shape)
