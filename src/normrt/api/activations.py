"""Elementwise erf and activations on the kernels (for graphs whose activations
stand alone; after a normalization they are fused into the norm's own pass)."""

from .. import _checks as chk
from .._kernels import activations as _k
from .._thread_policy import memory_bound


def _flat(x, out):
    x = chk.tensor(x, "x")
    y = chk.output(out, x.shape, x.dtype, x)
    return x, y


def erf(x, *, out=None):
    """The error function, elementwise (float32: polynomial, ~3e-7 relative error)."""
    x, y = _flat(x, out)
    if x.size:
        _k.erf(x.reshape(-1), y.reshape(-1), memory_bound(x.size))
    return y


def activate(x, activation, *, out=None):
    """One of normrt.ACTIVATIONS ("gelu": the erf form; "relu6", "hardsigmoid", "hardswish" as torch
    defines them), elementwise."""
    act = chk.activation(activation)
    x, y = _flat(x, out)
    if x.size:
        _k.activation(x.reshape(-1), y.reshape(-1), act, memory_bound(x.size))
    return y
