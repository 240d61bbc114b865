"""Elementwise numpy ops: arithmetic with broadcasting, unary math,
comparisons/logic, variadic Min/Max/Sum/Mean, Where, Identity, Cast.

Opsets 1-6 of the binary arithmetic ops carry the legacy `broadcast`/`axis`
attributes (B broadcast onto A, aligned at `axis`), handled by `_legacy_b`;
opset 1's `consumed_inputs` is a memory hint without semantic effect.
"""
import numpy as np

from ..._kernels import elementwise as _kelementwise
from ..._thread_policy import memory_bound
from ...api import activations as _activations
from . import _half
from ._util import PLAIN_NP_DTYPES, TENSOR_TYPES, attr_str, op, reusable

try:  # scipy's erf is vectorised and keeps float32; optional dependency
    from scipy.special import erf as _scipy_erf
except ImportError:  # pragma: no cover
    _scipy_erf = None


# ---------------------------------------------------------------- arithmetic
def _same_dtype(r, a):
    return r if r.dtype == a.dtype else r.astype(a.dtype)


def _legacy_b(node, a, b):
    """Opsets 1-6: with broadcast=1 and `axis`, B's dims align with A's from `axis`."""
    if node.version < 7 and node.attrs.get("broadcast", 0):
        axis = node.attrs.get("axis")
        if axis is not None:
            axis = int(axis) + (a.ndim if int(axis) < 0 else 0)
            b = b.reshape(b.shape + (1,) * (a.ndim - axis - b.ndim))
    return b


def _binary_out(dead, a, b):
    """An input the binary op may write its result into: dead, and already of the
    result's shape and dtype (a's dtype, the one ONNX requires)."""
    if not dead or a.dtype.kind not in "fiu" or b.dtype != a.dtype:
        return None
    shape = a.shape if a.shape == b.shape else np.broadcast_shapes(a.shape, b.shape)
    out = reusable(dead, 0, a, (shape, a.dtype))
    return out if out is not None else reusable(dead, 1, b, (shape, a.dtype))


_KERNEL_OPS = {np.add: 0, np.subtract: 1, np.multiply: 2, np.divide: 3}


def _arith(fn, a, b, out):
    """fn(a, b, out=out): big same-shape float arrays on the kernels' thread team
    (numpy's ufuncs use one thread; same IEEE result per element), else numpy."""
    if (a.dtype == b.dtype and a.dtype in (np.float32, np.float64) and a.shape == b.shape
            and a.flags.c_contiguous and b.flags.c_contiguous):
        nt = memory_bound(a.size)
        if nt > 1:
            if out is None or not out.flags.c_contiguous:
                out = np.empty_like(a)
            _kelementwise.binary(_KERNEL_OPS[fn], a.reshape(-1), b.reshape(-1), out.reshape(-1), nt)
            return out
    return fn(a, b, out=out)


@op("Add", since=1, inplace=True)
def add(node, a, b, dead=()):
    b = _legacy_b(node, a, b)
    return _same_dtype(_arith(np.add, a, b, _binary_out(dead, a, b)), a)


@op("Sub", since=1, inplace=True)
def sub(node, a, b, dead=()):
    b = _legacy_b(node, a, b)
    return _same_dtype(_arith(np.subtract, a, b, _binary_out(dead, a, b)), a)


@op("Mul", since=1, inplace=True)
def mul(node, a, b, dead=()):
    b = _legacy_b(node, a, b)
    return _same_dtype(_arith(np.multiply, a, b, _binary_out(dead, a, b)), a)


def _int_div(a, b):
    # C-style truncation toward zero (the ONNX reference), in integer math.
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.floor_divide(a, b)
        r = np.remainder(a, b)
    if a.dtype.kind == "u":
        return q
    adjust = (r != 0) & ((a < 0) ^ (b < 0))
    q += adjust.astype(q.dtype)
    return q


@op("Div", since=1, inplace=True)
def div(node, a, b, dead=()):
    b = _legacy_b(node, a, b)
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return _same_dtype(np.asarray(_int_div(a, b)), a)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = _binary_out(dead, a, b) if a.dtype.kind == "f" else None
        return _same_dtype(_arith(np.divide, a, b, out), a)


@op("Mod", since=10)
def mod(node, a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        if node.attrs.get("fmod", 0):
            r = np.fmod(a, b)
        else:
            r = np.mod(a, b)
    return _same_dtype(r, a)


@op("Pow", since=1)
def pow_(node, a, b):
    b = _legacy_b(node, a, b)
    if b.ndim == 0 and a.dtype.kind == "f":
        e = float(b)
        if e == 2.0:
            return np.square(a)
        if e == 1.0:
            return a.copy()
        if e == 0.5:
            with np.errstate(invalid="ignore"):
                return np.sqrt(a)
        if e == 3.0:
            return a * a * a
    if a.dtype.kind == "f" and b.dtype.kind in "iu":
        # integer exponents are exact in a's float type; keeps float32 fast
        b = b.astype(a.dtype)
    with np.errstate(all="ignore"):
        return _same_dtype(np.power(a, b), a)


# ---------------------------------------------------------------- unary math
def _unary(name, fn, since=1):
    def impl(node, x, dead=()):
        # in place into contiguous inputs only: NumPy 2.4's float32 negative(x, out=x) on an
        # (n, 1) column view (a Split/Slice of a product's columns) writes n contiguous floats
        out = reusable(dead, 0, x) if x.dtype.kind == "f" and x.ndim and x.flags.c_contiguous else None
        with np.errstate(all="ignore"):
            if out is not None:
                return fn(x, out=out)
            return _same_dtype(np.asarray(fn(x)), x)
    impl.__name__ = impl.__qualname__ = name.lower()
    op(name, since=since, inplace=name not in ("Not", "Sign"))(impl)
    return impl


_unary("Neg", np.negative)
_unary("Abs", np.abs)
_unary("Exp", np.exp)
_unary("Log", np.log)
_unary("Sqrt", np.sqrt)
_unary("Reciprocal", np.reciprocal)
_unary("Floor", np.floor)
_unary("Ceil", np.ceil)
_unary("Tanh", np.tanh)
_unary("Sign", np.sign, since=9)
_unary("Round", np.round, since=11)     # round half to even, like np.round
_unary("Sin", np.sin, since=7)
_unary("Cos", np.cos, since=7)
_unary("Tan", np.tan, since=7)
_unary("Asin", np.arcsin, since=7)
_unary("Acos", np.arccos, since=7)
_unary("Atan", np.arctan, since=7)
_unary("Sinh", np.sinh, since=9)
_unary("Cosh", np.cosh, since=9)
_unary("Asinh", np.arcsinh, since=9)
_unary("Acosh", np.arccosh, since=9)
_unary("Atanh", np.arctanh, since=9)
_unary("Not", np.logical_not, since=1)


def erf_array(x):
    if x.dtype in (np.float32, np.float64):
        return _activations.erf(x)
    if _scipy_erf is not None and x.dtype.kind == "f":
        return _scipy_erf(x)
    from math import erf
    return np.vectorize(erf, otypes=[np.float64])(x)


@op("Erf", since=9)
def erf_(node, x):
    return _same_dtype(np.asarray(erf_array(x)), x)


@op("IsNaN", since=9)
def isnan(node, x):
    return np.isnan(x)


@op("IsInf", since=10)
def isinf(node, x):
    neg = node.attrs.get("detect_negative", 1)
    pos = node.attrs.get("detect_positive", 1)
    if neg and pos:
        return np.isinf(x)
    if neg:
        return np.isneginf(x)
    if pos:
        return np.isposinf(x)
    return np.zeros(x.shape, dtype=bool)


# ---------------------------------------------------------- comparisons/logic
def _binary_bool(name, fn, since):
    def impl(node, a, b):
        return fn(a, b)
    impl.__name__ = impl.__qualname__ = name.lower()
    op(name, since=since)(impl)


_binary_bool("Equal", np.equal, 7)
_binary_bool("Less", np.less, 7)
_binary_bool("Greater", np.greater, 7)
_binary_bool("LessOrEqual", np.less_equal, 12)
_binary_bool("GreaterOrEqual", np.greater_equal, 12)
_binary_bool("And", np.logical_and, 7)
_binary_bool("Or", np.logical_or, 7)
_binary_bool("Xor", np.logical_xor, 7)


def _bitshift_supported(node):
    return attr_str(node, "direction") in ("LEFT", "RIGHT")


@op("BitShift", since=11, supports=_bitshift_supported)
def bitshift(node, x, y):
    if attr_str(node, "direction") == "LEFT":
        return _same_dtype(np.left_shift(x, y), x)
    return _same_dtype(np.right_shift(x, y), x)


@op("Where", since=9, half_native=True)
def where(node, cond, x, y):
    r = np.where(cond, x, y)
    return _same_dtype(r, x)


# ------------------------------------------------------------------ variadic
def _variadic(name, fn):
    def impl(node, *xs):
        xs = [x for x in xs if x is not None]
        if len(xs) == 1:
            return xs[0].copy()
        r = np.asarray(fn(xs[0], xs[1]))
        for x in xs[2:]:
            if np.broadcast_shapes(r.shape, x.shape) == r.shape:
                fn(r, x, out=r)
            else:
                r = fn(r, x)
        return _same_dtype(np.asarray(r), xs[0])
    impl.__name__ = impl.__qualname__ = name.lower()
    op(name, since=1)(impl)


_variadic("Max", np.maximum)
_variadic("Min", np.minimum)
_variadic("Sum", np.add)


@op("Mean", since=1)
def mean(node, *xs):
    xs = [x for x in xs if x is not None]
    if len(xs) == 1:
        return xs[0].copy()
    r = np.add(xs[0], xs[1])
    for x in xs[2:]:
        r = np.add(r, x)
    r = np.divide(r, len(xs))
    return _same_dtype(np.asarray(r), xs[0])


# ------------------------------------------------------------- identity/cast
@op("Identity", since=1, half_native=True)
def identity(node, x):
    return x


def _cast_target(node):
    to = node.attrs.get("to")
    if isinstance(to, (str, bytes)):          # Cast-1 names the type
        to = to.decode() if isinstance(to, bytes) else to
        to = _TYPE_NAMES.get(to.upper())
    return to if isinstance(to, int) and to in TENSOR_TYPES else None


_TYPE_NAMES = {"FLOAT": 1, "UINT8": 2, "INT8": 3, "UINT16": 4, "INT16": 5, "INT32": 6, "INT64": 7,
               "BOOL": 9, "FLOAT16": 10, "DOUBLE": 11, "UINT32": 12, "UINT64": 13, "BFLOAT16": 16}


def _cast_supported(node):
    return _cast_target(node) is not None


@op("Cast", since=1, supports=_cast_supported, half_native=True)
def cast(node, x):
    # Only numeric target types numpy holds (float8 and strings fall back), so
    # `saturate`/`round_mode` (float8 targets only) are irrelevant; from strings,
    # numpy's parse like the reference's astype.
    return _half.cast(x, TENSOR_TYPES[_cast_target(node)])


@op("CastLike", since=15, half_native=True)
def cast_like(node, x, target):
    if target.dtype in PLAIN_NP_DTYPES or _half.is_half(target.dtype):
        return _half.cast(x, target.dtype)
    # exotic target (float8, ...): exactly what the reference does
    from onnx.helper import np_dtype_to_tensor_dtype
    from onnx.reference.ops.op_cast import cast_to
    return cast_to(x, np_dtype_to_tensor_dtype(target.dtype), bool(node.attrs.get("saturate", 1)))
