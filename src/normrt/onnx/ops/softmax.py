"""Softmax family (numpy): Softmax, LogSoftmax, Hardmax.

Opset < 13 coerces the input to 2D at `axis` (default 1) and normalises over
the flattened trailing block; opset >= 13 normalises along the single `axis`
(default -1).
"""
import numpy as np

from ._parallel import for_each
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


# Rows of a big last-axis softmax are done this many bytes at a time, so the
# max/exp/sum/scale passes run in cache (attention scores: 1024 x 1024 per head).
BLOCK_BYTES = 256 << 10


def _softmax_rows(x, out):
    """Softmax over the last axis of C-contiguous float x, in blocks of rows, into out."""
    n = x.shape[-1]
    x2, o2 = x.reshape(-1, n), out.reshape(-1, n)
    rows = max(1, BLOCK_BYTES // max(1, n * x.itemsize))
    starts = range(0, x2.shape[0], rows)

    def block(i):
        r0 = starts[i]
        xb, ob = x2[r0:r0 + rows], o2[r0:r0 + rows]
        m = xb.max(axis=1, keepdims=True)
        if not np.isfinite(m).all():
            m = np.where(np.isfinite(m), m, 0).astype(x.dtype, copy=False)
        np.subtract(xb, m, out=ob)
        np.exp(ob, out=ob)
        s = ob.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.reciprocal(s, out=s)
            ob *= s

    for_each(block, len(starts))          # two threads when the setting allows
    return out


@op("Softmax", since=1, inplace=True)
def softmax(node, x, dead=()):
    if x.ndim == 0:
        return np.ones_like(x)
    axes = _softmax_axes(node, x)
    if (axes == (x.ndim - 1,) and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous
            and x.nbytes > 2 * BLOCK_BYTES):
        out = reusable(dead, 0, x)
        return _softmax_rows(x, np.empty_like(x) if out is None else out)
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
