"""Argument checking shared by the functional API.

Everything is validated here, once, in Python; the kernels trust what they get.
Errors name the argument and say what was expected.
"""
import math
import numbers

import ml_dtypes
import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# half precision the normalization kernels take: storage only, they compute in
# float32/float64 (ml_dtypes' bfloat16 is the numpy dtype onnx itself uses)
HALF_DTYPES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
_HALF_KIND = {HALF_DTYPES[0]: 0, HALF_DTYPES[1]: 1}   # half.h's NRT_F16, NRT_BF16

# the kernels' activation epilogues (moments.pxd's ACT_*): relu6 = min(max(v, 0), 6),
# hardsigmoid = min(max(v / 6 + 0.5, 0), 1) (torch's; ONNX HardSigmoid(alpha=1/6)),
# hardswish = v * hardsigmoid(v), gelu_tanh = GELU's tanh approximation
ACTIVATIONS = {None: 0, "relu": 1, "silu": 2, "gelu": 3, "sigmoid": 4, "relu6": 5, "hardsigmoid": 6,
               "hardswish": 7, "gelu_tanh": 8, "elu": 9}
# the names, as normrt.ACTIVATIONS
ACTIVATION_NAMES = tuple(a for a in ACTIVATIONS if a)

# length-0 stand-ins for absent optional buffers (kernels test shape[0] == 0)
_EMPTY1 = {dt: np.empty(0, dt) for dt in FLOAT_DTYPES}
_EMPTY2 = {dt: np.empty((0, 0), dt) for dt in FLOAT_DTYPES}
_EMPTY_F64 = np.empty(0, np.float64)


def empty1(dtype):
    return _EMPTY1[dtype]


def empty2(dtype):
    return _EMPTY2[dtype]


def empty_f64():
    return _EMPTY_F64


def half_kind(dtype):
    """half.h's kind code of a float16 (0) or bfloat16 (1) dtype; -1 for any other."""
    return _HALF_KIND.get(dtype, -1)


def tensor(x, name="x", min_rank=0, half=False):
    """x as a C-contiguous float32/float64 ndarray (a copy only if it is not one);
    with half=True float16 and bfloat16 too."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype not in FLOAT_DTYPES and not (half and x.dtype in HALF_DTYPES):
        also = " (or float16/bfloat16)" if half else ""
        raise TypeError(f"{name} must be a float32 or float64 array{also}, got dtype {x.dtype}")
    if x.ndim < min_rank:
        raise ValueError(f"{name} must have rank >= {min_rank}, got shape {x.shape}")
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x


def same_tensor(x, ref, name):
    """A second input that must match ref's shape; cast to ref's dtype."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if (x.dtype.kind not in "fiu" or x.dtype.kind == "b") and x.dtype not in HALF_DTYPES:
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if x.shape != ref.shape:
        raise ValueError(f"{name} must have shape {ref.shape} (like x), got {x.shape}")
    return np.ascontiguousarray(x, dtype=ref.dtype)


def param(p, name, shape, dtype, broadcast=False):
    """An optional parameter (None passes through) as a contiguous array of `shape`.

    With broadcast=True any shape that broadcasts to `shape` is accepted
    (ONNX's unidirectional broadcasting of scale/bias).
    """
    if p is None:
        return None
    if type(p) is np.ndarray and p.dtype == dtype and p.shape == tuple(shape) and p.flags.c_contiguous:
        return p  # already right: the common case costs no conversion
    if not isinstance(p, np.ndarray):
        p = np.asarray(p)
    if p.dtype.kind not in "fiu" and p.dtype not in HALF_DTYPES:
        raise TypeError(f"{name} must be numeric, got dtype {p.dtype}")
    shape = tuple(shape)
    if p.shape != shape:
        ok = False
        if broadcast and p.ndim <= len(shape):
            try:
                p = np.broadcast_to(p, shape)
                ok = True
            except ValueError:
                ok = False
        if not ok:
            how = " (or a shape that broadcasts to it)" if broadcast else ""
            raise ValueError(f"{name} must have shape {shape}{how}, got {p.shape}")
    return np.ascontiguousarray(p, dtype=dtype)


def output(out, shape, dtype, x=None, name="out"):
    """The caller's out= buffer checked (or a fresh one). It may be x itself."""
    shape = tuple(shape)
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    flags = out.flags
    if not flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not flags.writeable:
        raise ValueError(f"{name} must be writeable, got a read-only array")
    # two arrays that own their memory cannot overlap: skip the costlier test
    if x is not None and out is not x and (out.base is not None or x.base is not None) \
            and np.may_share_memory(out, x):
        same = (out.__array_interface__["data"][0] == x.__array_interface__["data"][0]
                and out.strides == x.strides)
        if not same:
            raise ValueError(f"{name} partially overlaps the input; pass the input itself or a separate buffer")
    return out


def fast_output(x, out, eps):
    """For a kernel's unchecked fast path: the buffer y goes to, or None when the fast path does not
    apply (the checked path then names what is wrong). x must be a non-empty ndarray and eps a
    non-negative float; y is fresh, or `out` when it is an ndarray that is x itself or owns its
    memory while x does too (two such arrays cannot overlap; views may overlap partially, which
    output() checks). The kernel checks dtypes, shapes and layouts itself."""
    if type(x) is not np.ndarray or type(eps) is not float or not eps >= 0.0 or not x.size:
        return None
    if out is None:
        return np.empty(x.shape, x.dtype)
    if type(out) is np.ndarray and (out is x or (out.base is None and x.base is None)):
        return out
    return None


def fast_channel_call(x, activation, out, eps, min_rank):
    """The checks the channel-norm fast paths (batch_norm, group_norm) share: (act, y) with act
    the activation's kernel code and y as fast_output gives it, or None when the fast path does
    not apply - x not a C-contiguous ndarray of rank >= min_rank, an unknown activation, or an
    out the kernel's (N, C, S) reshape would copy or reshape (a strided or differently shaped
    out)."""
    if type(x) is not np.ndarray or x.ndim < min_rank or not x.flags.c_contiguous:
        return None
    act = 0 if activation is None else (ACTIVATIONS.get(activation, -1) if type(activation) is str else -1)
    if act < 0:
        return None
    y = fast_output(x, out, eps)
    if y is None or (y is out and (out.shape != x.shape or not out.flags.c_contiguous)):
        return None
    return act, y


def activation(act):
    try:
        return ACTIVATIONS[act]
    except (KeyError, TypeError):
        valid = ", ".join(repr(a) for a in ACTIVATIONS)
        raise ValueError(f"activation must be one of {valid}; got {act!r}") from None


def eps_value(eps, name="eps"):
    if type(eps) is float and eps >= 0.0:
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not eps >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {eps}")
    return eps


def axis_index(axis, ndim, name="axis"):
    """Normalize a possibly negative axis for a tensor of rank ndim."""
    if type(axis) is int and -ndim <= axis < ndim:
        return axis % ndim
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(axis).__name__}")
    a = int(axis)
    if not -ndim <= a < ndim:
        raise ValueError(f"{name} must be in [{-ndim}, {ndim - 1}] for rank {ndim}, got {axis}")
    return a % ndim


def int_value(v, name, *, min_value=None, choices=None):
    """An integer attribute (ONNX ints such as LRN's size, LpNormalization's p).

    Anything else -- a bool, a non-integral float, an int outside `choices` or
    below `min_value` -- is a ValueError naming the argument.
    """
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        ok = False
    elif isinstance(v, numbers.Integral):
        ok = True
    else:
        ok = math.isfinite(v) and float(v).is_integer()
    iv = int(v) if ok else None
    if ok and min_value is not None and iv < min_value:
        ok = False
    if ok and choices is not None and iv not in choices:
        ok = False
    if not ok:
        if choices is not None:
            want = " or ".join(str(c) for c in choices)
        elif min_value is not None:
            want = f"an int >= {min_value}"
        else:
            want = "an int"
        raise ValueError(f"{name} must be {want}, got {v!r}")
    return iv


def finite_real(v, name):
    """A finite real scalar attribute (alpha, beta, ...) as a Python float."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def axes_tuple(axes, ndim, name="axes"):
    """An int or a sequence of ints as a sorted tuple of distinct non-negative axes."""
    if isinstance(axes, (bool, np.bool_)) or axes is None:
        raise ValueError(f"{name} must be an int or a tuple of ints, got {axes!r}")
    if isinstance(axes, numbers.Integral):
        axes = (axes,)
    try:
        items = tuple(axes)
    except TypeError:
        raise ValueError(f"{name} must be an int or a tuple of ints, got {axes!r}") from None
    out = []
    for a in items:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, numbers.Integral):
            raise ValueError(f"{name} must contain ints, got {a!r}")
        if not -ndim <= int(a) < ndim:
            raise ValueError(f"{name} entry {a} is out of range for rank {ndim}")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} has duplicate entries: {items}")
    return tuple(sorted(out))
