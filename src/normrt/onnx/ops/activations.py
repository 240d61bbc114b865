"""Activation functions (numpy): Relu, LeakyRelu, PRelu, Sigmoid,
HardSigmoid, HardSwish, Softplus, Softsign, Elu, Selu, Celu, ThresholdedRelu,
Mish, Gelu, Clip.

Scalar attributes are applied in the input dtype (float32 stays float32).
"""
import functools

import numpy as np

from ..._checks import ACTIVATIONS
from ..._kernels import activations as _act_kernel
from ..._kernels import elementwise as _kelementwise
from ..._thread_policy import memory_bound
from ..elementwise_program import compile_program, leaky_relu_select
from ._util import attr_str, op, reusable
from .elementwise import erf_array


def _f(node, name, default):
    return float(node.attrs.get(name, default))


@op("Relu", since=1, inplace=True)
def relu(node, x, dead=()):
    out = reusable(dead, 0, x)
    return np.maximum(x, x.dtype.type(0), out=out)


@op("LeakyRelu", since=1)
def leaky_relu(node, x):
    alpha = _f(node, "alpha", 0.01)
    if x.dtype == np.float32 and x.size and 0.0 < alpha:
        return leaky_relu_float32(x, alpha)
    a = x.dtype.type(alpha)
    return np.where(x > 0, x, x * a)


def leaky_relu_float32(x, alpha, out=None):
    """LeakyRelu of a float32 array, alpha > 0, in one pass of the elementwise kernel: max(x,
    alpha x) (min for alpha > 1) is x where x > 0 and alpha x elsewhere, the same values as
    np.where(x > 0, x, alpha x) for any x (+-0, +-inf, NaN), which took three passes and two
    temporaries (YOLO's, GANs' and vocoders' Conv -> LeakyRelu on 3 MB maps). Into `out` (a
    float32 array of x's shape; may be x) or a new array."""
    program = _leaky_program(np.float32(alpha).item())
    out = np.empty(x.shape, np.float32) if out is None else out
    _kelementwise.run_program(program.code, program.constants, program.n_registers, (x,), out,
                              memory_bound(out.size), program.grids)
    return out


@functools.lru_cache(maxsize=64)
def _leaky_program(alpha):
    """The elementwise kernel's program of LeakyRelu(alpha), alpha > 0: mul(x, alpha), then
    max(x, that) (alpha <= 1) or min (alpha > 1)."""
    return compile_program(["mul", leaky_relu_select(alpha)], [0, 1, 0, 2], [alpha], 1, where="LeakyRelu")


@op("PRelu", since=7)
def prelu(node, x, slope):
    r = np.where(x > 0, x, x * slope)
    return r if r.dtype == x.dtype else r.astype(x.dtype)


@op("Sigmoid", since=1, inplace=True)
def sigmoid(node, x, dead=()):
    if x.dtype.kind != "f":
        return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype)
    with np.errstate(over="ignore"):
        out = reusable(dead, 0, x)
        out = np.negative(x, out=np.empty_like(x) if out is None else out)   # out=: stays an array for 0-d x
        np.exp(out, out=out)
        out += 1
        np.reciprocal(out, out=out)
    return out


@op("HardSigmoid", since=1)
def hard_sigmoid(node, x):
    t = x.dtype.type
    out = np.multiply(x, t(_f(node, "alpha", 0.2)), out=np.empty_like(x))
    out += t(_f(node, "beta", 0.5))
    np.clip(out, t(0), t(1), out=out)
    return out


@op("HardSwish", since=14)
def hard_swish(node, x):
    t = x.dtype.type
    out = np.multiply(x, t(1.0 / 6.0), out=np.empty_like(x))
    out += t(0.5)
    np.clip(out, t(0), t(1), out=out)
    out *= x
    return out


@op("Softplus", since=1)
def softplus(node, x):
    return np.logaddexp(x, x.dtype.type(0))


@op("Softsign", since=1)
def softsign(node, x):
    return x / (np.abs(x) + x.dtype.type(1))


def _on_kernel(x, code):
    """The activation kernel's `code` over float32/float64 x, into a new C-ordered array (its flat
    view is the array itself, whatever x's layout)."""
    out = np.empty(x.shape, x.dtype)
    _act_kernel.activation(np.ascontiguousarray(x).reshape(-1), out.reshape(-1), code, memory_bound(x.size))
    return out


def elu_is_kernel(node):
    """Whether an Elu node is the activation kernel's "elu" (alpha 1, torch's nn.ELU default)."""
    return float(np.float32(_f(node, "alpha", 1.0))) == 1.0


@op("Elu", since=1)
def elu(node, x):
    if x.dtype in (np.float32, np.float64) and x.size and elu_is_kernel(node):
        # the activation kernel's ELU, as a Conv / MatMul / norm epilogue computes it (EnCodec's
        # SEANet: 17 us per (1, 8, 800) numpy ELU, 7 of them between its convs)
        return _on_kernel(x, ACTIVATIONS["elu"])
    alpha = x.dtype.type(_f(node, "alpha", 1.0))
    with np.errstate(over="ignore"):
        return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


@op("Selu", since=1)
def selu(node, x):
    t = x.dtype.type
    alpha = t(_f(node, "alpha", 1.67326319217681884765625))
    gamma = t(_f(node, "gamma", 1.05070102214813232421875))
    return np.where(x > 0, gamma * x, gamma * alpha * np.expm1(np.minimum(x, 0)))


@op("Celu", since=12)
def celu(node, x):
    alpha = x.dtype.type(_f(node, "alpha", 1.0))
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(np.minimum(x, 0) / alpha))


@op("ThresholdedRelu", since=10)
def thresholded_relu(node, x):
    alpha = x.dtype.type(_f(node, "alpha", 1.0))
    return np.where(x > alpha, x, x.dtype.type(0))


@op("Mish", since=18)
def mish(node, x):
    return x * np.tanh(np.logaddexp(x, x.dtype.type(0)))


def _gelu_supported(node):
    return attr_str(node, "approximate", "none") in ("none", "tanh")


def gelu_code(node):
    """The activation kernel's code for a Gelu node's form."""
    return ACTIVATIONS["gelu_tanh" if attr_str(node, "approximate", "none") == "tanh" else "gelu"]


@op("Gelu", since=20, supports=_gelu_supported)
def gelu(node, x):
    t = x.dtype.type
    if x.dtype in (np.float32, np.float64) and x.size:
        # the activation kernel's GELU, as a Conv / MatMul / norm epilogue computes it (float32:
        # the vectorized polynomial within a few ulp; float64: libm's erf / tanh): dynamo's
        # opset-20 exports write nn.GELU as this op, often after a Transpose no epilogue reaches
        # (PVTv2's Mix-FFN: 45 us per (1, 256, 64) numpy GELU)
        return _on_kernel(x, gelu_code(node))
    if attr_str(node, "approximate", "none") == "tanh":
        inner = np.multiply(x, x, out=np.empty_like(x))
        inner *= t(0.044715)
        inner += t(1)
        inner *= x
        inner *= t(np.sqrt(2.0 / np.pi))
        np.tanh(inner, out=inner)
    else:
        inner = np.asarray(erf_array(x * t(1.0 / np.sqrt(2.0))))
        if inner.dtype != x.dtype:
            inner = inner.astype(x.dtype)
    inner += t(1)
    inner *= x
    inner *= t(0.5)
    return inner


@op("Clip", since=1, until=10)
def clip6(node, x):
    # opset 6 defaults to +-FLT_MAX; opset 1 leaves an absent bound open
    flt_max = 3.4028234663852886e38 if node.version >= 6 else None
    lo = node.attrs.get("min", None if flt_max is None else -flt_max)
    hi = node.attrs.get("max", flt_max)
    out = x.copy()
    with np.errstate(over="ignore"):
        if lo is not None:
            np.maximum(out, x.dtype.type(lo), out=out)
        if hi is not None:
            np.minimum(out, x.dtype.type(hi), out=out)
    return out


@op("Clip", since=11, inplace=True)
def clip(node, x, lo=None, hi=None, dead=()):
    out = reusable(dead, 0, x)
    out = x.copy() if out is None else out
    if lo is not None and lo.size:
        np.maximum(out, lo.astype(x.dtype, copy=False), out=out)
    if hi is not None and hi.size:
        np.minimum(out, hi.astype(x.dtype, copy=False), out=out)
    return out
