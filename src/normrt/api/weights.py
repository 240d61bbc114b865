"""Load-time transforms of constant weights: BatchNorm folding, weight norm, weight standardization.

These run once per model load, on initializers, so they are plain numpy: float64
math, results in the weight's own dtype (float32 or float64).

Weight layout (ONNX / PyTorch):
  Conv, Gemm with transB=1, torch Linear   (Cout, Cin/groups, k1, ...) / (Cout, Cin): output channels on axis 0
  ConvTranspose                            (Cin, Cout/groups, k1, ...): output channels on axis 1
  Gemm with transB=0 (y = x @ W)           (Cin, Cout): output channels on axis 1
"""
import numpy as np

from .. import _checks as chk


def _channel_vector(v, name, n):
    """A per-channel parameter: shape (n,), or n values along one axis (e.g. (n, 1, 1))."""
    if not isinstance(v, np.ndarray):
        v = np.asarray(v)
    if v.dtype.kind not in "fiu" or v.dtype.kind == "b":
        raise TypeError(f"{name} must be numeric, got dtype {v.dtype}")
    if v.size != n or (v.ndim > 0 and sorted(v.shape)[:-1] != [1] * (v.ndim - 1)):
        raise ValueError(f"{name} must have shape ({n},) (one value per output channel), got {v.shape}")
    return v.astype(np.float64).reshape(n)


def _along(vec, axis, ndim):
    """vec shaped to broadcast along `axis` of a rank-ndim array."""
    shape = [1] * ndim
    shape[axis] = vec.shape[0]
    return vec.reshape(shape)


def fold_batch_norm(weight, bias, scale, shift, mean, var, *, eps, axis=0, groups=1):
    """Fold an inference BatchNorm into the Conv/Gemm that feeds it.

    With a = scale / sqrt(var + eps) (per output channel):
        W' = W * a   along the output-channel axis of the weight
        b' = (bias - mean) * a + shift      (bias None counts as 0)
    so that conv(x, W') + b' == batchnorm(conv(x, W) + bias).

    `axis` is the weight's output-channel axis: 0 for Conv and Gemm/Linear
    weights (Cout, Cin/g, k...) / (Cout, Cin), 1 for ConvTranspose weights
    (Cin, Cout/g, k...). A grouped ConvTranspose holds only Cout/groups output
    channels on axis 1: pass `groups` so that group i (rows i*Cin/g ... of axis 0)
    gets the statistics of channels i*Cout/g ... (i+1)*Cout/g - 1.

    Returns (W', b') in the weight's dtype; b' is always an array of Cout values.
    """
    w = chk.tensor(weight, "weight", min_rank=2)
    axis = chk.axis_index(axis, w.ndim)
    eps = chk.eps_value(eps)
    groups = chk.int_value(groups, "groups", min_value=1)
    if groups != 1:
        if axis == 0:
            raise ValueError("groups must be 1 when axis is 0 (Conv weights keep all Cout on axis 0)")
        if w.shape[0] % groups:
            raise ValueError(f"groups must divide weight.shape[0] = {w.shape[0]}, got {groups}")
    cout = w.shape[axis] * groups
    scale = _channel_vector(scale, "scale", cout)
    shift = _channel_vector(shift, "shift", cout)
    mean = _channel_vector(mean, "mean", cout)
    var = _channel_vector(var, "var", cout)
    b = np.zeros(cout) if bias is None else _channel_vector(bias, "bias", cout)
    if not np.all(var >= 0.0):
        raise ValueError("var must be >= 0 everywhere (a variance)")
    if not np.all(var + eps > 0.0):
        raise ValueError("var + eps must be > 0 everywhere; pass eps > 0")

    a = scale / np.sqrt(var + eps)
    new_bias = (b - mean) * a + shift
    w64 = w.astype(np.float64)
    if groups == 1:
        w64 *= _along(a, axis, w.ndim)
    else:
        # weight[(i, r), j] belongs to output channel i * (Cout/g) + j
        per = w.shape[axis]
        grouped = w64.reshape((groups, w.shape[0] // groups) + w.shape[1:])
        a2 = a.reshape(groups, per)
        shape = [1] * grouped.ndim
        shape[0] = groups
        shape[axis + 1] = per
        grouped *= a2.reshape(shape)
    return w64.astype(w.dtype), new_bias.astype(w.dtype)


def _reduce_axes(ndim, axis):
    return tuple(i for i in range(ndim) if i != axis)


def _gain(g, n, ndim, axis):
    """weight_norm's g: shape (n,), or the keepdims shape of the norms (n on `axis`, 1 elsewhere)."""
    if not isinstance(g, np.ndarray):
        g = np.asarray(g)
    if g.dtype.kind not in "fiu" or g.dtype.kind == "b":
        raise TypeError(f"g must be numeric, got dtype {g.dtype}")
    keep = (1,) * ndim if axis is None else tuple(n if i == axis else 1 for i in range(ndim))
    allowed = {(n,), keep} | ({()} if n == 1 else set())
    if g.shape not in allowed:
        want = " or ".join(str(s) for s in sorted(allowed, key=len))
        raise ValueError(f"g must have shape {want} (one gain per normalized slice), got {g.shape}")
    return g.astype(np.float64).reshape(n)


def weight_norm(v, g, *, axis=0):
    """Weight normalization (Salimans & Kingma; torch weight_norm `dim` semantics).

    w = g * v / ||v||, the L2 norm taken over every axis except `axis` (one norm
    per output channel for axis=0), or over the whole tensor for axis=None. `g`
    holds one value per slice: shape (v.shape[axis],) or the keepdims shape
    such as (Cout, 1, 1, 1); a scalar for axis=None. A slice with ||v|| = 0
    gives 0 (not NaN). Returns v's dtype.
    """
    v = chk.tensor(v, "v", min_rank=1)
    if axis is None:
        n, axes = 1, tuple(range(v.ndim))
    else:
        axis = chk.axis_index(axis, v.ndim)
        n, axes = v.shape[axis], _reduce_axes(v.ndim, axis)
    g = _gain(g, n, v.ndim, axis)
    v64 = v.astype(np.float64)
    norm = np.sqrt(np.sum(v64 * v64, axis=axes, keepdims=True))
    if axis is None:
        gb = g.reshape((1,) * v.ndim)
    else:
        gb = _along(g, axis, v.ndim)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(norm == 0.0, 0.0, v64 * (gb / norm))
    return w.astype(v.dtype)


def weight_standardize(w, *, eps=1e-5, axis=0):
    """Weight standardization (Qiao et al.; BiT's StdConv with GroupNorm).

    Per output channel (slice of `axis`): (w - mean) / sqrt(var + eps) with the
    population variance over all other axes, two-pass in float64. A constant
    channel gives 0. Returns w's dtype.
    """
    w = chk.tensor(w, "w", min_rank=2)
    axis = chk.axis_index(axis, w.ndim)
    eps = chk.eps_value(eps)
    axes = _reduce_axes(w.ndim, axis)
    w64 = w.astype(np.float64)
    # deviations from each channel's first value: a constant channel is exactly 0
    idx = [slice(None) if i == axis else slice(0, 1) for i in range(w.ndim)]
    d = w64 - w64[tuple(idx)]
    mean = d.mean(axis=axes, keepdims=True)
    d -= mean
    var = np.mean(d * d, axis=axes, keepdims=True)
    den = np.sqrt(var + eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den == 0.0, 0.0, d / den)
    return out.astype(w.dtype)
