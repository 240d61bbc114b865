"""Pooling (numpy): MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

Windows are reduced by accumulating one strided slice per kernel tap over
the whole output (no loops over output pixels).  ceil_mode follows the ONNX
spec / onnxruntime / PyTorch: the last window must start inside the input or
its left padding, and the overhang past the right padding never counts.

2-D float32/float64 NCHW MaxPool / AveragePool and GlobalAveragePool run the
plane kernels of pyx/pool.pyx instead (one pass, OpenMP over N*C planes).
"""
import functools

import numpy as np

from ..._kernels import pool as _kpool
from ..._thread_policy import memory_bound
from ._spatial import auto_pad_ok, forward_pads, out_size, pad_to, tap_slices
from ._util import attr_ints, attr_str, compute_dtype, low_precision, op


def _pool_geometry(node, shape):
    nsp = len(shape) - 2
    kernel = attr_ints(node, "kernel_shape")
    strides = attr_ints(node, "strides") or [1] * nsp
    dil = attr_ints(node, "dilations") or [1] * nsp
    ceil_mode = bool(node.attrs.get("ceil_mode", 0))
    in_sp = tuple(shape[2:])
    pb, pe = forward_pads(node, in_sp, kernel, strides, dil)
    out_sp = [out_size(in_sp[i], pb[i], pe[i], kernel[i], strides[i], dil[i], ceil_mode) for i in range(nsp)]
    need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out_sp, strides, kernel, dil)]
    return kernel, strides, dil, pb, pe, out_sp, need


def _maxpool_supported(node):
    return (
        node.n_outputs == 1
        and auto_pad_ok(node)
        and node.attrs.get("kernel_shape") is not None
        # the reference ignores dilations when sizing SAME padding; we follow
        # the spec only where both agree
        and not (attr_str(node, "auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER")
                 and any(d != 1 for d in (attr_ints(node, "dilations") or [])))
    )


def _lowest(dtype):
    if dtype.kind in "fV":
        return -np.inf
    return np.iinfo(dtype).min


# the plane kernel's row / column tap counts when there are none (MaxPool)
_NO_COUNTS = np.empty(0, np.int64)


def _planes_ok(x):
    return x.ndim == 4 and x.dtype in (np.float32, np.float64) and x.size > 0


def _pool2d(x, kernel, strides, dil, pb, out_sp, is_max, row_count=None, col_count=None):
    """The plane kernel on (N*C, H, W); padding/ceil_mode are fill in its row buffer."""
    n, c, h, w = x.shape
    xc = np.ascontiguousarray(x).reshape(n * c, h, w)
    y = np.empty((n * c,) + tuple(out_sp), x.dtype)
    _kpool.pool2d(xc, y, kernel[0], kernel[1], strides[0], strides[1], pb[0], pb[1], dil[0], dil[1],
                  is_max, _NO_COUNTS if row_count is None else row_count, _NO_COUNTS if col_count is None else col_count,
                  memory_bound(xc.size))
    return y.reshape((n, c) + tuple(out_sp))


def fast_pool(src, node, args, out_meta, buffer, n_threads):
    """A specialized plan's 2-D MaxPool / AveragePool on the plane kernel, its geometry (pads,
    output size, the average's tap counts) worked out once from the trace's static shape instead
    of on every run (~8 us of Python for a ResNet stem's pool), or None where the generic op
    takes another path (its global-average special cases, negative pads, other ranks/dtypes)."""
    is_max = node.op_type == "MaxPool"
    if len(args) != 1 or args[0] is None or not (_maxpool_supported(node) if is_max else _avgpool_supported(node)):
        return None
    ex, (xshape, dx), _ = args[0]
    xshape = tuple(int(d) for d in xshape)
    if len(xshape) != 4 or dx not in (np.float32, np.float64) or 0 in xshape:
        return None
    kernel, strides, dil, pb, pe, out_sp, _ = _pool_geometry(node, xshape)
    if min(pb) < 0 or min(out_sp) < 1 or tuple(out_meta[0]) != xshape[:2] + tuple(out_sp):
        return None
    if not is_max and list(out_sp) == [1, 1]:
        # one window over the whole plane (ResNet's 7x7 AveragePool): the generic op's plane means,
        # its geometry and tap counts checked here once (they cost ~90 us of Python a run)
        include_pad = bool(node.attrs.get("count_include_pad", 0))
        if dx != np.float32 and dx != np.float64 or any(pb) or list(dil) != [1, 1] \
                or any(kernel[i] < xshape[2 + i] for i in range(2)):
            return None
        counts = [int(_tap_counts(xshape[2 + i], pb[i], pe[i], kernel[i], strides[i], dil[i], 1, include_pad)[0])
                  for i in range(2)]
        if counts[0] * counts[1] != xshape[2] * xshape[3]:
            return None                 # a rescaled mean: the generic op
        return f"{src.bind(_global_average, '_global_average')}({ex}, {buffer if buffer is not None else 'None'})"
    counts = (_NO_COUNTS, _NO_COUNTS)
    if not is_max:
        include_pad = bool(node.attrs.get("count_include_pad", 0))
        counts = tuple(_tap_counts(xshape[2 + i], pb[i], pe[i], kernel[i], strides[i], dil[i], out_sp[i],
                                   include_pad) for i in range(2))
    planes = xshape[0] * xshape[1]
    geometry = (kernel[0], kernel[1], strides[0], strides[1], pb[0], pb[1], dil[0], dil[1], is_max) + counts \
        + (min(n_threads, memory_bound(planes * xshape[2] * xshape[3])),)
    x_planes, y_planes = (planes,) + xshape[2:], (planes,) + tuple(out_sp)
    out_shape = xshape[:2] + tuple(out_sp)

    def pool_into(x, out):
        y = np.empty(out_shape, x.dtype) if out is None else out
        _kpool.pool2d(np.ascontiguousarray(x).reshape(x_planes), y.reshape(y_planes), *geometry)
        return y
    return f"{src.bind(pool_into, '_pool_into')}({ex}, {buffer if buffer is not None else 'None'})"


@op("MaxPool", since=1, supports=_maxpool_supported)
def max_pool(node, x):
    kernel, strides, dil, pb, pe, out_sp, need = _pool_geometry(node, x.shape)
    if _planes_ok(x) and min(pb) >= 0:
        return _pool2d(x, kernel, strides, dil, pb, out_sp, True)
    xp = pad_to(x, pb, need, _lowest(x.dtype))
    out = None
    for _, sl in tap_slices(kernel, strides, dil, out_sp):
        v = xp[(slice(None), slice(None)) + sl]
        if out is None:
            out = v.copy()
        else:
            np.maximum(out, v, out=out)
    return out


def _avgpool_supported(node):
    return (
        auto_pad_ok(node)
        and node.attrs.get("kernel_shape") is not None
        and not (attr_str(node, "auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER")
                 and any(d != 1 for d in (attr_ints(node, "dilations") or [])))
    )


@functools.lru_cache(maxsize=256)
def _tap_counts(in_len, pb, pe, k, s, d, o, include_pad):
    """Per output position along one axis: how many taps count in the mean
    (int64, read-only: cached, a graph asks for the same geometry every run)."""
    lo, hi = (-pb, in_len + pe) if include_pad else (0, in_len)
    starts = np.arange(o) * s - pb
    taps = starts[:, None] + np.arange(k)[None, :] * d
    counts = ((taps >= lo) & (taps < hi)).sum(axis=1).astype(np.int64)
    counts.flags.writeable = False
    return counts


@op("AveragePool", since=1, supports=_avgpool_supported)
def average_pool(node, x):
    kernel, strides, dil, pb, pe, out_sp, need = _pool_geometry(node, x.shape)
    include_pad = bool(node.attrs.get("count_include_pad", 0))
    if _planes_ok(x) and list(kernel) == list(x.shape[2:]) and not any(pb) and not any(pe) \
            and list(out_sp) == [1, 1]:
        return _global_average(x)       # ResNet's final 7x7 average: one mean per plane
    if _planes_ok(x) and list(out_sp) == [1, 1] and not any(pb) and list(dil) == [1, 1] \
            and all(kernel[i] >= x.shape[2 + i] for i in range(2)):
        # one window holding the whole plane, larger than it (EfficientNet's pooler: 320x320 over
        # 2x2, ceil_mode): the plane's mean, rescaled if the divisor counts other than its h*w taps
        counts = [int(_tap_counts(x.shape[2 + i], pb[i], pe[i], kernel[i], strides[i], dil[i], 1, include_pad)[0])
                  for i in range(2)]
        y = _global_average(x)
        plane = x.shape[2] * x.shape[3]
        if counts[0] * counts[1] != plane:
            y = (y.astype(np.float64) * (plane / (counts[0] * counts[1]))).astype(x.dtype)
        return y
    if _planes_ok(x) and min(pb) >= 0:
        counts = [_tap_counts(x.shape[2 + i], pb[i], pe[i], kernel[i], strides[i], dil[i], out_sp[i], include_pad)
                  for i in range(2)]
        return _pool2d(x, kernel, strides, dil, pb, out_sp, False, *counts)
    acc_dtype = compute_dtype(x.dtype)
    xp = pad_to(x, pb, need, 0)
    out = np.zeros(x.shape[:2] + tuple(out_sp), dtype=acc_dtype)
    for _, sl in tap_slices(kernel, strides, dil, out_sp):
        out += xp[(slice(None), slice(None)) + sl]
    nsp = len(kernel)
    div = None
    for i in range(nsp):
        cnt = _tap_counts(x.shape[2 + i], pb[i], pe[i], kernel[i], strides[i], dil[i], out_sp[i], include_pad)
        cnt = cnt.reshape((-1,) + (1,) * (nsp - 1 - i))
        div = cnt if div is None else div * cnt
    if div is not None:
        out /= div.astype(acc_dtype)
    return out.astype(x.dtype, copy=False)


def _global_average(x, out=None):
    """The mean of each (n, c) plane on the kernel (float64 lanes), shape (N, C, 1, ...); written
    into `out` (C-contiguous, that shape and x's dtype: a specialized plan's buffer) when given."""
    y = np.empty(x.shape[0] * x.shape[1], x.dtype) if out is None else out.reshape(-1)
    _kpool.global_average(np.ascontiguousarray(x).reshape(y.size, -1), y, memory_bound(x.size))
    return y.reshape(x.shape[:2] + (1,) * (x.ndim - 2)) if out is None else out


@op("GlobalAveragePool", since=1)
def global_average_pool(node, x):
    axes = tuple(range(2, x.ndim))
    if x.ndim >= 3 and x.dtype in (np.float32, np.float64) and x.size > 0:
        return _global_average(x)
    if low_precision(x.dtype):
        return x.mean(axis=axes, keepdims=True, dtype=np.float32).astype(x.dtype)
    return x.mean(axis=axes, keepdims=True)


@op("GlobalMaxPool", since=1)
def global_max_pool(node, x):
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)
