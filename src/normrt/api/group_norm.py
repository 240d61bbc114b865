"""GroupNorm, InstanceNorm (plain and conditional) and AdaIN over x of shape (N, C, *spatial).

Each statistics group, (n, group) or (n, c), is a contiguous block of a
C-contiguous x, so the kernels see x as rows of one group each.
"""
import math
import numbers

import numpy as np

from .. import _checks as chk
from .._kernels import group_norm as _k
from .._thread_policy import memory_bound
from . import half


def _num_groups(num_groups, C):
    if type(num_groups) is int and num_groups > 0 and C % num_groups == 0:
        return num_groups       # (the common call, without the ABC check below: ~0.7 us)
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise ValueError(f"num_groups must be an int, got {type(num_groups).__name__}")
    G = int(num_groups)
    if G <= 0:
        raise ValueError(f"num_groups must be >= 1, got {G}")
    if C % G:
        raise ValueError(f"num_groups must divide the number of channels C={C}, got {G}")
    return G


def _channel_param(p, name, N, C, dtype):
    """scale/bias of instance norm: per channel (C,) or per sample and channel (N, C)."""
    if p is None:
        return None
    if not isinstance(p, np.ndarray):
        p = np.asarray(p)
    if p.shape == (N, C):
        return chk.param(p, name, (N, C), dtype)
    if p.shape != (C,):
        raise ValueError(f"{name} must have shape {(C,)} or {(N, C)}, got {p.shape}")
    return chk.param(p, name, (C,), dtype)


def _flat(p, dtype):
    return chk.empty1(dtype) if p is None else p.reshape(-1)


_F32 = np.dtype(np.float32)


def _fast(x, groups, scale, bias, eps, activation, out, min_rank):
    """The common call (ndarrays; scale and bias (C,) or None) with as few Python checks as a
    small tensor allows: y, or None when this path does not apply. A diffusion UNet's GroupNorm
    on a 16 x 8 x 8 map normalizes in ~1.5 us; the checked path below spent ~5 us before it.

    The kernel checks the dtype, rank, shape, layout and writability of x, out and the
    parameters' dtype and layout, and raises before it computes; the caller then takes the
    checked path, which converts what it can and names the argument that is wrong. Checked
    here is what the kernel cannot see: out's own shape and layout (the kernel sees its
    (R, L) reshape), its overlap with x, the parameters' length (the kernel reads any period)
    and the group count."""
    checked = chk.fast_channel_call(x, activation, out, eps, min_rank)
    if checked is None:
        return None
    act, y = checked
    shape = x.shape
    C = shape[1]
    if type(groups) is not int or groups <= 0 or C % groups:
        return None
    pdt = _F32 if x.itemsize == 2 else x.dtype
    for p in (scale, bias):
        if p is not None and (type(p) is not np.ndarray or p.shape != (C,) or p.dtype != pdt):
            return None     # (half-precision parameters are widened by the checked path)
    kind = 0
    if x.itemsize == 2:
        # the kernel sees 16-bit words: out's dtype is checked here
        kind = chk.half_kind(x.dtype)
        if kind < 0 or y.dtype != x.dtype:
            return None
        xk, yk = half.bits(x), half.bits(y)
    else:
        xk, yk = x, y
    R = shape[0] * groups
    L = x.size // R
    try:
        _k.group_norm(xk.reshape(R, L), scale, bias, yk.reshape(R, L), C // groups, eps, act,
                      memory_bound(x.size), kind)
    except (TypeError, ValueError):
        return None
    return y


def group_norm(x, num_groups, scale=None, bias=None, *, eps=1e-5, activation=None, out=None):
    """Group normalization (ONNX GroupNormalization-21 / torch.nn.GroupNorm semantics).

    x has shape (N, C, *spatial); the C channels are split into `num_groups`
    groups and each (sample, group) is normalized over its C/num_groups
    channels and all spatial positions. `scale` and `bias` are per channel, (C,).
    `activation` (None or a name of normrt.ACTIVATIONS) is applied to the result.
    """
    y = _fast(x, num_groups, scale, bias, eps, activation, out, 2)
    if y is not None:
        return y
    x = chk.tensor(x, "x", min_rank=2, half=True)
    N, C = x.shape[:2]
    S = math.prod(x.shape[2:])
    G = _num_groups(num_groups, C)
    dt = x.dtype
    pdt = _param_dtype(dt)
    scale = chk.param(scale, "scale", (C,), pdt)
    bias = chk.param(bias, "bias", (C,), pdt)
    eps = chk.eps_value(eps)
    act = chk.activation(activation)
    y = chk.output(out, x.shape, dt, x)
    R, L = N * G, (C // G) * S
    if R and L:
        _rows_kernel(x, y, R, L, _flat(scale, pdt), _flat(bias, pdt), C // G, eps, act)
    return y


def _param_dtype(dt):
    """scale/bias of a half-precision x are float32 (they may come as float32 or x's dtype)."""
    return np.dtype(np.float32) if chk.half_kind(dt) >= 0 else dt


def _rows_kernel(x, y, R, L, scale, bias, nseg, eps, act):
    kind = chk.half_kind(x.dtype)
    if kind >= 0:       # the kernel reads float16/bfloat16 as their 16-bit words
        x, y = half.bits(x), half.bits(y)
    _k.group_norm(x.reshape(R, L), scale, bias, y.reshape(R, L), nseg, eps, act, memory_bound(x.size),
                  max(kind, 0))


def instance_norm(x, scale=None, bias=None, *, eps=1e-5, activation=None, out=None):
    """Instance normalization: each (sample, channel) normalized over its spatial axes.

    x has shape (N, C, *spatial) with at least one spatial axis. `scale` and
    `bias` are per channel, (C,), or per sample and channel, (N, C) (conditional
    instance norm: each sample picks its own affine).
    """
    if type(x) is np.ndarray and x.ndim >= 3:
        # instance norm is GroupNorm with one channel per group
        y = _fast(x, x.shape[1], scale, bias, eps, activation, out, 3)
        if y is not None:
            return y
    x = chk.tensor(x, "x", min_rank=3, half=True)
    N, C = x.shape[:2]
    S = math.prod(x.shape[2:])
    dt = x.dtype
    pdt = _param_dtype(dt)
    scale = _channel_param(scale, "scale", N, C, pdt)
    bias = _channel_param(bias, "bias", N, C, pdt)
    eps = chk.eps_value(eps)
    act = chk.activation(activation)
    y = chk.output(out, x.shape, dt, x)
    R = N * C
    if R and S:
        _rows_kernel(x, y, R, S, _flat(scale, pdt), _flat(bias, pdt), 1, eps, act)
    return y


def adain(content, style, *, eps=1e-5, unbiased=False, out=None):
    """Adaptive instance normalization (Huang & Belongie 2017).

    y = std(style) * (content - mean(content)) / std(content) + mean(style), with
    mean and population variance per (sample, channel) over the spatial axes and
    std = sqrt(var + eps) for both. With `unbiased=True` var is the unbiased
    (Bessel-corrected) variance m2 / (n - 1), torch's default `.var()` as in the
    reference AdaIN code; a group of one element then has a NaN variance, like
    torch. style must share content's N and C; its spatial size may differ.
    style is cast to content's dtype.
    """
    content = chk.tensor(content, "content", min_rank=3, half=True)
    style = chk.tensor(style, "style", min_rank=3, half=True)
    N, C = content.shape[:2]
    if style.shape[:2] != (N, C):
        raise ValueError(f"style must have N, C = {(N, C)} like content, got shape {style.shape}")
    dt = content.dtype
    style = np.ascontiguousarray(style, dtype=dt)
    eps = chk.eps_value(eps)
    if not isinstance(unbiased, (bool, np.bool_)):
        raise TypeError(f"unbiased must be a bool, got {type(unbiased).__name__}")
    y = chk.output(out, content.shape, dt, content)
    R, L, Ls = N * C, math.prod(content.shape[2:]), math.prod(style.shape[2:])
    if R and L and chk.half_kind(dt) >= 0:
        def compute(c32, s32):
            _k.adain(c32.reshape(R, L), s32.reshape(R, Ls), c32.reshape(R, L), eps, bool(unbiased),
                     memory_bound(c32.size + s32.size))
            return c32
        half.via_float32(content, y, compute, style)
    elif R and L:
        if np.may_share_memory(y, style):
            # rows of y are written while later style rows are still to be read
            style = style.copy()
        _k.adain(content.reshape(R, L), style.reshape(R, Ls), y.reshape(R, L), eps,
                 bool(unbiased), memory_bound(content.size + style.size))
    return y
