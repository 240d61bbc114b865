"""LayerNorm and RMSNorm: statistics over the trailing axes [axis, rank)."""
import numpy as np

from .. import _checks as chk
from .._kernels import layer_norm as _k
from .._threads import get_num_threads


def _rows(x, axis):
    """(first normalized axis, G rows, L elements per row) of x viewed as (G, L)."""
    shape = x.shape
    if axis == -1 and type(axis) is int:   # the common case, without the loop
        L = shape[-1]
        return len(shape) - 1, (x.size // L if L else 0), L
    a = chk.axis_index(axis, x.ndim)
    L = 1
    for d in shape[a:]:
        L *= d
    return a, (x.size // L if L else 0), L


def _as_rows(arr, G, L):
    return arr if arr.shape == (G, L) else arr.reshape(G, L)


def _flat(p):
    return None if p is None else (p if p.ndim == 1 else p.reshape(-1))


def _residual(residual, x, out):
    if residual is None:
        return None
    r = chk.same_tensor(residual, x, "residual")
    if out is not None:
        chk.output(out, x.shape, x.dtype, r, name="out")  # out may be residual, not overlap it
    return r


def _residual_out(residual_out, x, r, y):
    """The caller's residual_out buffer, checked: it receives x + residual."""
    if r is None:
        raise ValueError("residual_out needs residual (it receives x + residual)")
    s = chk.output(residual_out, x.shape, x.dtype, x, name="residual_out")   # may be x itself
    chk.output(s, x.shape, x.dtype, r, name="residual_out")                  # ... or residual itself
    if np.may_share_memory(s, y):
        raise ValueError("residual_out must not overlap out (both are written)")
    return s


def _fast(kernel, x, out, params, eps):
    """The common small call, (G, L) arrays and out= given, with no Python checks.

    The kernel itself refuses any buffer of the wrong dtype, layout or size by
    raising before it computes; the caller then takes the checked path, which
    converts what it can and names the argument that is wrong. Returns False
    when this path does not apply.
    """
    if (type(x) is not np.ndarray or type(out) is not np.ndarray or x.ndim != 2 or out.ndim != 2
            or type(eps) is not float or not eps >= 0.0):
        return False
    if out is not x and (out.base is not None or x.base is not None):
        return False   # views may overlap partially: the checked path tests that
    try:
        kernel(x, out, *params, eps, 0, get_num_threads())
    except (TypeError, ValueError, BufferError):
        return False
    return True


def layer_norm(x, scale=None, bias=None, *, axis=-1, eps=1e-5, residual=None, activation=None,
               out=None, return_stats=False, residual_out=None):
    """Layer normalization with ONNX LayerNormalization semantics.

    Normalizes over axes [axis, rank); `scale` and `bias` broadcast over those
    axes. With `residual`, normalizes `x + residual` (skip connection). With
    `return_stats=True` returns `(y, mean, inv_std_dev)`, the statistics shaped
    like x with the normalized axes set to 1.

    `residual_out` (needs `residual`): an array of x's shape and dtype, C-contiguous,
    which receives the sum `x + residual` (in x's dtype) -- the pre-LN transformer's
    next skip connection, computed in the same pass. It may be x or residual itself
    but must not overlap `out`. It is modified in place; the return value is unchanged.
    """
    if (axis == -1 and residual is None and activation is None and not return_stats
            and residual_out is None and (scale is None or type(scale) is np.ndarray)
            and (bias is None or type(bias) is np.ndarray)
            and _fast(_k.layer_norm, x, out, (scale, bias, None, None, None), eps)):
        return out
    x = chk.tensor(x, "x", min_rank=1)
    a, G, L = _rows(x, axis)
    dt = x.dtype
    norm_shape = x.shape[a:]
    scale = chk.param(scale, "scale", norm_shape, dt, broadcast=True)
    bias = chk.param(bias, "bias", norm_shape, dt, broadcast=True)
    eps = chk.eps_value(eps)
    act = chk.activation(activation)
    r = _residual(residual, x, out)
    y = chk.output(out, x.shape, dt, x)
    s = None if residual_out is None else _residual_out(residual_out, x, r, y)
    stats = np.empty((2, G), np.float64) if return_stats else None
    if G and L:
        _k.layer_norm(
            _as_rows(x, G, L), _as_rows(y, G, L),
            _flat(scale), _flat(bias),
            None if r is None else _as_rows(r, G, L),
            None if s is None else _as_rows(s, G, L), stats, eps, act, get_num_threads(),
        )
    elif return_stats:
        stats.fill(np.nan)
    if return_stats:
        stats_shape = x.shape[:a] + (1,) * (x.ndim - a)
        return y, stats[0].astype(dt).reshape(stats_shape), stats[1].astype(dt).reshape(stats_shape)
    return y


def rms_norm(x, scale=None, *, axis=-1, eps=1e-5, residual=None, out=None, residual_out=None):
    """RMS normalization: y = x / sqrt(mean(x**2) + eps) * scale over axes [axis, rank).

    With `residual`, normalizes `x + residual`; `residual_out` (needs `residual`)
    then receives that sum, as in `layer_norm`.
    """
    if (axis == -1 and residual is None and residual_out is None
            and (scale is None or type(scale) is np.ndarray)
            and _fast(_k.rms_norm, x, out, (scale, None, None), eps)):
        return out
    x = chk.tensor(x, "x", min_rank=1)
    a, G, L = _rows(x, axis)
    dt = x.dtype
    scale = chk.param(scale, "scale", x.shape[a:], dt, broadcast=True)
    eps = chk.eps_value(eps)
    r = _residual(residual, x, out)
    y = chk.output(out, x.shape, dt, x)
    s = None if residual_out is None else _residual_out(residual_out, x, r, y)
    if G and L:
        _k.rms_norm(
            _as_rows(x, G, L), _as_rows(y, G, L),
            _flat(scale),
            None if r is None else _as_rows(r, G, L),
            None if s is None else _as_rows(s, G, L), eps, 0, get_num_threads(),
        )
    return y
