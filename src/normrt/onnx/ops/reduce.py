"""Reductions (numpy): ReduceSum/Mean/Max/Min/Prod/L1/L2/SumSquare/LogSum/
LogSumExp, ArgMax, ArgMin.

`axes` is an attribute before opset 13 (ReduceSum) / 18 (the others) and an
optional input from then on, together with `noop_with_empty_axes`.
Results keep the input dtype (float16 accumulates in float32).
"""
import numpy as np

from ._util import attr_ints, compute_dtype, ints_of, norm_axis, op


def _axes(node, x, axes_in, from_input):
    """Tuple of axes to reduce, None for all, or 'noop'."""
    if from_input:
        axes = ints_of(axes_in)
        if not axes:
            return "noop" if node.attrs.get("noop_with_empty_axes", 0) else None
    else:
        axes = attr_ints(node, "axes")
        if axes is None:
            return None
    return tuple(sorted(norm_axis(a, x.ndim) for a in axes))


def _acc(x):
    return compute_dtype(x.dtype)


def _sum(x, axes, kd):
    return np.sum(x, axis=axes, keepdims=kd, dtype=_acc(x))


def _mean(x, axes, kd):
    return np.mean(x, axis=axes, keepdims=kd, dtype=_acc(x))


def _empty_init(x, lowest):
    """`initial` for max/min over an empty set (the spec: -inf / +inf, else
    the dtype's lowest / highest value); numpy would raise instead."""
    if x.size:
        return {}
    if x.dtype.kind in "fV":
        return {"initial": -np.inf if lowest else np.inf}
    if x.dtype.kind == "b":
        return {"initial": not lowest}
    info = np.iinfo(x.dtype)
    return {"initial": info.min if lowest else info.max}


def _max(x, axes, kd):
    return np.max(x, axis=axes, keepdims=kd, **_empty_init(x, True))


def _min(x, axes, kd):
    return np.min(x, axis=axes, keepdims=kd, **_empty_init(x, False))


def _prod(x, axes, kd):
    return np.prod(x, axis=axes, keepdims=kd, dtype=_acc(x))


def _l1(x, axes, kd):
    return np.sum(np.abs(x), axis=axes, keepdims=kd, dtype=_acc(x))


def _sumsq(x, axes, kd):
    xa = x.astype(_acc(x), copy=False)
    return np.sum(xa * xa, axis=axes, keepdims=kd)


def _l2(x, axes, kd):
    r = np.sqrt(_sumsq(x, axes, kd))
    return r


def _logsum(x, axes, kd):
    with np.errstate(divide="ignore"):
        return np.log(_sum(x, axes, kd))


def _logsumexp(x, axes, kd):
    xa = x.astype(_acc(x), copy=False)
    m = np.max(xa, axis=axes, keepdims=True, **_empty_init(xa, True))
    m = np.where(np.isfinite(m), m, 0)
    s = np.sum(np.exp(xa - m), axis=axes, keepdims=True)
    with np.errstate(divide="ignore"):
        r = np.log(s) + m
    if not kd:
        r = np.squeeze(r, axis=axes) if axes is not None else r.reshape(())
    return r


def _make(name, fn, input_since):
    def run(node, x, axes_in, from_input):
        axes = _axes(node, x, axes_in, from_input)
        if axes == "noop":
            return x.copy()
        kd = bool(node.attrs.get("keepdims", 1))
        r = np.asarray(fn(x, axes, kd))
        return r if r.dtype == x.dtype else r.astype(x.dtype)

    def attr_form(node, x):
        return run(node, x, None, False)

    def input_form(node, x, axes=None):
        return run(node, x, axes, True)

    attr_form.__name__ = attr_form.__qualname__ = name.lower() + "_attr"
    input_form.__name__ = input_form.__qualname__ = name.lower()
    op(name, since=1, until=input_since - 1)(attr_form)
    op(name, since=input_since)(input_form)


_make("ReduceSum", _sum, 13)
_make("ReduceMean", _mean, 18)
_make("ReduceMax", _max, 18)
_make("ReduceMin", _min, 18)
_make("ReduceProd", _prod, 18)
_make("ReduceL1", _l1, 18)
_make("ReduceL2", _l2, 18)
_make("ReduceSumSquare", _sumsq, 18)
_make("ReduceLogSum", _logsum, 18)
_make("ReduceLogSumExp", _logsumexp, 18)


def _arg(fn):
    def impl(node, x):
        axis = norm_axis(node.attrs.get("axis", 0), x.ndim)
        kd = bool(node.attrs.get("keepdims", 1))
        if node.attrs.get("select_last_index", 0):
            r = x.shape[axis] - 1 - fn(np.flip(x, axis=axis), axis=axis)
        else:
            r = fn(x, axis=axis)
        r = r.astype(np.int64, copy=False)
        return np.expand_dims(r, axis) if kd else r
    return impl


op("ArgMax", since=1)(_arg(np.argmax))
op("ArgMin", since=1)(_arg(np.argmin))
