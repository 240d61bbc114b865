"""LayerNorm and RMSNorm: statistics over the trailing axes [axis, rank)."""
import numpy as np

from .. import _checks as chk
from .. import _thread_policy as _policy
from .._kernels import layer_norm as _k
from .._thread_policy import memory_bound
from . import half


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


def _fast(x, out, scale, bias, eps, residual, act, rms):
    """The common call over the last axis (ndarrays, out= given or not), with as
    few Python checks as the small calls allow: y, or None when this path does
    not apply. The kernel gets (G, L) rows (float16/bfloat16 as their 16-bit
    words, `kind` saying which).

    The kernel checks every array's dtype, shape, layout and writability and
    raises before it computes; the caller then takes the checked path, which
    converts what it can and names the argument that is wrong. What the kernel
    cannot see is checked here: overlap of out with x, and - where a reshape to
    rows could copy or hide a shape - out's shape and layout.
    """
    if out is not None and residual is not None:
        return None                                      # out vs residual overlap: checked path
    y = chk.fast_output(x, out, eps)
    if y is None:
        return None
    kind = 0
    if x.itemsize == 2:
        # the kernel sees 16-bit words: the dtypes of out and residual are checked here
        kind = chk.half_kind(x.dtype)
        if kind < 0 or y.dtype != x.dtype or (residual is not None and (type(residual) is not np.ndarray
                                                                          or residual.dtype != x.dtype)):
            return None             # int16 and the like: the checked path names the problem
        x, y2 = half.bits(x), half.bits(y)
        residual = None if residual is None else half.bits(residual)
    else:
        y2 = y
    if x.ndim != 2:
        # rows of a reshape: a view only for C-contiguous arrays of x's shape
        if x.ndim == 0 or y2.shape != x.shape or not y2.flags.c_contiguous or (
                residual is not None and (type(residual) is not np.ndarray or residual.shape != x.shape)):
            return None
        L = x.shape[-1]
        x, y2 = x.reshape(-1, L), y2.reshape(-1, L)
        residual = None if residual is None else residual.reshape(-1, L)
    try:
        if rms:
            _k.rms_norm(x, y2, scale, residual, None, eps, act, memory_bound(x.size), kind)
        else:
            _k.layer_norm(x, y2, scale, bias, residual, None, None, eps, act, memory_bound(x.size), kind)
    except (TypeError, ValueError, BufferError):
        return None
    return y


def _words(a, G, L):
    """a as (G, L) rows of the kernel's element: float16/bfloat16 as their 16-bit words."""
    if a is None:
        return None
    return _as_rows(half.bits(a) if a.dtype.itemsize == 2 else a, G, L)


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
    if activation is None and axis == -1 and not return_stats and residual_out is None:
        # a small call (one thread): every check in C (_k.small_call), or None
        y = _k.small_call(x, scale, bias, residual, eps, out, False, _policy.MEMORY_BOUND_MIN_ELEMENTS)
        if y is not None:
            return y
    act = 0 if activation is None else (chk.ACTIVATIONS.get(activation, -1) if type(activation) is str else -1)
    if axis == -1 and act >= 0 and not return_stats and residual_out is None:
        y = _fast(x, out, scale, bias, eps, residual, act, False)
        if y is not None:
            return y
    x = chk.tensor(x, "x", min_rank=1, half=True)
    a, G, L = _rows(x, axis)
    dt = x.dtype
    kind = chk.half_kind(dt)
    norm_shape = x.shape[a:]
    pdt = np.float32 if kind >= 0 else dt      # half precision: float32 parameters
    scale = chk.param(scale, "scale", norm_shape, pdt, broadcast=True)
    bias = chk.param(bias, "bias", norm_shape, pdt, broadcast=True)
    eps = chk.eps_value(eps)
    act = chk.activation(activation)
    r = _residual(residual, x, out)
    y = chk.output(out, x.shape, dt, x)
    s = None if residual_out is None else _residual_out(residual_out, x, r, y)
    stats = np.empty((2, G), np.float64) if return_stats else None
    if G and L:
        _k.layer_norm(_words(x, G, L), _words(y, G, L), _flat(scale), _flat(bias), _words(r, G, L),
                      _words(s, G, L), stats, eps, act, memory_bound(x.size), max(kind, 0))
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
    if axis == -1 and residual_out is None:
        y = _k.small_call(x, scale, None, residual, eps, out, True, _policy.MEMORY_BOUND_MIN_ELEMENTS)
        if y is not None:
            return y
        y = _fast(x, out, scale, None, eps, residual, 0, True)
        if y is not None:
            return y
    x = chk.tensor(x, "x", min_rank=1, half=True)
    a, G, L = _rows(x, axis)
    dt = x.dtype
    kind = chk.half_kind(dt)
    scale = chk.param(scale, "scale", x.shape[a:], np.float32 if kind >= 0 else dt, broadcast=True)
    eps = chk.eps_value(eps)
    r = _residual(residual, x, out)
    y = chk.output(out, x.shape, dt, x)
    s = None if residual_out is None else _residual_out(residual_out, x, r, y)
    if G and L:
        _k.rms_norm(_words(x, G, L), _words(y, G, L), _flat(scale), _words(r, G, L), _words(s, G, L),
                    eps, 0, memory_bound(x.size), max(kind, 0))
    return y
