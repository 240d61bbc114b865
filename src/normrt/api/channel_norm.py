"""Channels-first LayerNorm and RMSNorm: statistics over axis 1 at each position.

x is (N, C, *spatial); each (n, position) is normalized over its C channels
(ConvNeXt/SAM "LayerNorm2d", StyleGAN PixelNorm). The kernel reads x in place,
vector lanes across positions: no transposed copy.
"""
import numpy as np

from .. import _checks as chk
from .._kernels import channel_norm as _k
from .._thread_policy import memory_bound
from . import half


def _channel_param(p, name, C, dtype, rank):
    """A per-channel parameter as a contiguous (C,) array: given as (C,), or as a
    shape that holds C values on the channel axis of x ((C, 1, 1), (1, C, 1, 1)...)."""
    if p is None:
        return None
    if type(p) is np.ndarray and p.shape == (C,) and p.dtype == dtype and p.flags.c_contiguous:
        return p
    if not isinstance(p, np.ndarray):
        p = np.asarray(p)
    shape = p.shape
    per_channel = (shape == (C,)
                   or (len(shape) == rank - 1 and shape[0] == C and all(d == 1 for d in shape[1:]))
                   or (len(shape) == rank and shape[0] == 1 and shape[1] == C
                       and all(d == 1 for d in shape[2:])))
    if not per_channel:
        raise ValueError(f"{name} must hold one value per channel: shape ({C},) or ({C}, 1, ...), "
                         f"got {shape}")
    return chk.param(p.reshape(C), name, (C,), dtype)


def _channel_norm(x, scale, bias, eps, activation, out, rms):
    x = chk.tensor(x, "x", min_rank=2, half=True)
    N, C = x.shape[0], x.shape[1]
    S = x.size // (N * C) if N and C else 0
    kind = chk.half_kind(x.dtype)
    pdt = np.float32 if kind >= 0 else x.dtype     # half precision: float32 parameters
    scale = _channel_param(scale, "scale", C, pdt, x.ndim)
    bias = _channel_param(bias, "bias", C, pdt, x.ndim)
    eps = chk.eps_value(eps)
    act = chk.activation(activation)
    y = chk.output(out, x.shape, x.dtype, x)
    if not x.size:
        return y

    def compute(x32):
        v = x32.reshape(N, C, S)
        _k.channel_norm(v, v, scale, bias, eps, act, rms, memory_bound(x.size))
        return x32

    if kind >= 0:
        return half.via_float32(x, y, compute)
    _k.channel_norm(x.reshape(N, C, S), y.reshape(N, C, S), scale, bias, eps, act, rms,
                    memory_bound(x.size))
    return y


def layer_norm_2d(x, scale=None, bias=None, *, eps=1e-6, activation=None, out=None):
    """Channels-first LayerNorm (ConvNeXt/SAM LayerNorm2d).

    x is (N, C, *spatial) with rank >= 2; at every (n, position)
    y = act((x - mean) / sqrt(var + eps) * scale[c] + bias[c]), mean and
    (biased) var over the C channels. `scale` and `bias` hold one value per
    channel ((C,) or (C, 1, ...)). float32/float64, or float16/bfloat16 with
    float32 statistics. `out` may be x itself.
    """
    return _channel_norm(x, scale, bias, eps, activation, out, False)


def rms_norm_2d(x, scale=None, bias=None, *, eps=1e-6, activation=None, out=None):
    """Channels-first RMSNorm (StyleGAN PixelNorm when scale and bias are None).

    At every (n, position) y = act(x / sqrt(mean(x**2) + eps) * scale[c] + bias[c]),
    the mean over the C channels of x (N, C, *spatial). Arguments as layer_norm_2d.
    """
    return _channel_norm(x, scale, bias, eps, activation, out, True)
