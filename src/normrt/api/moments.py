"""Mean and variance over arbitrary axes, and ONNX MeanVarianceNormalization.

A reduction is planned on x's layout: size-1 axes are dropped and adjacent
axes of the same kind (reduced or kept) merged. When the kept axes then form
one block (reduced* kept* reduced*), x is viewed as (R1, K, R2) and the
strided kernel reads it in place; otherwise the reduced axes are moved last
into a contiguous copy viewed as (1, K, R).
"""
import math

import numpy as np

from .. import _checks as chk
from .._kernels import batch_norm as _k
from .._thread_policy import memory_bound
from . import half


def channel_moments(x3):
    """float64 (mean, population var) of each channel k of a C-contiguous (R1, K, R2) array.

    NaN for an empty reduction (R1 * R2 == 0), without numpy's warnings.
    """
    R1, K, R2 = x3.shape
    mean = np.empty(K, np.float64)
    var = np.empty(K, np.float64)
    if K and R1 * R2 == 0:
        mean.fill(np.nan)
        var.fill(np.nan)
    elif K:
        _k.strided_moments(x3, mean, var, memory_bound(x3.size))
    return mean, var


def reduction_plan(shape, axes):
    """(R1, K, R2, perm) for a reduction of a tensor of `shape` over sorted distinct `axes`.

    perm is None when x itself can be viewed as (R1, K, R2); otherwise it is the
    transpose that puts the kept axes first and the reduced axes last, and the
    copy x.transpose(perm) is viewed as (1, K, R2).
    """
    segments = []  # [reduced?, size] after dropping size-1 axes and merging neighbours
    for i, n in enumerate(shape):
        if n == 1:
            continue
        reduced = i in axes
        if segments and segments[-1][0] == reduced:
            segments[-1][1] *= n
        else:
            segments.append([reduced, n])
    kept = [i for i, (reduced, _) in enumerate(segments) if not reduced]
    if len(kept) <= 1:
        if not kept:
            return 1, 1, math.prod(shape), None
        s = kept[0]
        R1 = math.prod(n for _, n in segments[:s])
        R2 = math.prod(n for _, n in segments[s + 1:])
        return R1, segments[s][1], R2, None
    kept_axes = [i for i in range(len(shape)) if i not in axes]
    K = math.prod(shape[i] for i in kept_axes)
    R2 = math.prod(shape[i] for i in axes)
    return 1, K, R2, tuple(kept_axes) + tuple(axes)


def _stats_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


def moments(x, axes, *, keepdims=False):
    """Mean and population variance of x over `axes`: returns (mean, var).

    `axes` is an int or a tuple of ints (negative values count from the end;
    duplicates are a ValueError). Statistics are computed in float64 with
    chunked two-pass moments and Chan merges in a fixed order, so they are
    bitwise identical for any thread count, then returned in x's dtype. With
    keepdims=True the reduced axes are kept with size 1. An empty reduction
    gives NaN (like numpy, without its warnings).
    """
    x = chk.tensor(x, "x", half=True)
    axes = chk.axes_tuple(axes, x.ndim)
    shape = _stats_shape(x.shape, axes, keepdims)
    K = math.prod(x.shape[i] for i in range(x.ndim) if i not in axes)
    if x.size == 0:
        fill = np.nan if K else 0.0
        return np.full(shape, fill, x.dtype), np.full(shape, fill, x.dtype)
    R1, K, R2, perm = reduction_plan(x.shape, axes)
    dt = x.dtype
    if perm is not None:
        x = np.ascontiguousarray(x.transpose(perm))
    if dt in chk.HALF_DTYPES:
        x = half.to_float32(x)      # exact; float64 statistics as for float32 x
    mean, var = channel_moments(x.reshape(R1, K, R2))
    return mean.astype(dt).reshape(shape), var.astype(dt).reshape(shape)


def mean_variance_norm(x, *, axes=(0, 2, 3), eps=1e-9, out=None):
    """ONNX MeanVarianceNormalization: y = (x - mean) / (sqrt(var) + eps) over `axes`.

    Matches the ONNX function body (opsets 13 and 18): eps is added to the
    standard deviation, not to the variance, and is 1e-9 by default (ONNX fixes
    it; here it is a keyword). ONNX's body computes var as E[x^2] - E[x]^2;
    normrt uses the robust two-pass population variance instead, which equals it
    in exact arithmetic but does not cancel when |mean| >> std. The result is
    evaluated in float64 as (x - mean) * (1 / (std + eps)). A constant group
    gives exactly 0 (NaN when eps == 0, as in ONNX). `out` may be x.
    """
    x = chk.tensor(x, "x", half=True)
    axes = chk.axes_tuple(axes, x.ndim)
    eps = chk.eps_value(eps)
    y = chk.output(out, x.shape, x.dtype, x)
    if x.size == 0:
        return y
    if chk.half_kind(x.dtype) >= 0:
        return half.via_float32(x, y, lambda x32: _mvn(x32, axes, eps, x32))
    return _mvn(x, axes, eps, y)


def _mvn(x, axes, eps, y):
    R1, K, R2, perm = reduction_plan(x.shape, axes)
    if perm is None:
        x3, y3 = x.reshape(R1, K, R2), y.reshape(R1, K, R2)
    else:
        # the copy is normalized in place, then written back through the inverse transpose
        x3 = np.ascontiguousarray(x.transpose(perm)).reshape(1, K, R2)
        y3 = x3
    mean, var = channel_moments(x3)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / (np.sqrt(var) + eps)
    empty = chk.empty1(x.dtype)
    _k.channel_affine(x3, mean, inv, np.zeros(K), empty, empty, y3, 0, memory_bound(x3.size))
    if perm is not None:
        moved = tuple(x.shape[i] for i in perm)
        np.copyto(y, x3.reshape(moved).transpose(np.argsort(perm)))
    return y
