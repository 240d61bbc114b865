"""Softmax family (numpy): Softmax, LogSoftmax, Hardmax.

Opset < 13 coerces the input to 2D at `axis` (default 1) and normalises over
the flattened trailing block; opset >= 13 normalises along the single `axis`
(default -1).
"""
import numpy as np

from ...api import softmax as _softmax
from ._util import norm_axis, op, reusable


def _softmax_axes(node, x):
    if node.version < 13:
        axis = norm_axis(node.attrs.get("axis", 1), max(x.ndim, 1))
        return tuple(range(axis, x.ndim))
    return (norm_axis(node.attrs.get("axis", -1), max(x.ndim, 1)),)


def _shifted(x, axes, out=None):
    m = np.max(x, axis=axes, keepdims=True)
    # an all -inf slice would give nan through (-inf) - (-inf); keep 0 there
    if x.dtype.kind == "f" and not np.isfinite(m).all():
        m = np.where(np.isfinite(m), m, 0).astype(x.dtype, copy=False)
    return np.subtract(x, m, out=out)


@op("Softmax", since=1, inplace=True)
def softmax(node, x, dead=()):
    if x.ndim == 0:
        return np.ones_like(x)
    axes = _softmax_axes(node, x)
    if x.dtype in (np.float32, np.float64) and axes[-1] == x.ndim - 1:
        # the trailing block is one axis (or flattened, opset < 13): kernel rows
        out = reusable(dead, 0, x)
        if out is not None and not out.flags.c_contiguous:
            out = None   # a reshape of it would be a copy
        rows = x.reshape(-1, int(np.prod(x.shape[axes[0]:])))
        y = _softmax.softmax(rows, out=None if out is None else out.reshape(rows.shape))
        return y.reshape(x.shape)
    e = _shifted(x, axes, reusable(dead, 0, x) if x.dtype.kind == "f" else None)
    np.exp(e, out=e)
    s = e.sum(axis=axes, keepdims=True)
    np.reciprocal(s, out=s)
    e *= s
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
