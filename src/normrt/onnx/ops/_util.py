"""Shared helpers for the numpy op implementations (not ops themselves)."""
import ml_dtypes
import numpy as np

from .registry import register

# Latest opset version whose semantics the implementations below were checked
# against (onnx 1.23 defines up to 28); newer versions fall back until reviewed.
LATEST = 28


def op(op_type, *, since=1, until=LATEST, supports=None, domain="", inplace=False, gemm=False,
       half_native=False):
    """`register`, with results normalised to ndarrays.

    numpy ufuncs turn 0-d arrays into numpy scalars; the executor contract
    asks for arrays, so every registered function goes through `_as_arrays`.
    `inplace=True`: fn takes the keyword `dead` (see registry); `gemm=True`: it runs GEMMs;
    `half_native=True`: it takes float16/bfloat16 inputs as they are (see registry).
    """
    def deco(fn):
        def wrapper(node, *inputs, **kw):
            return _as_arrays(fn(node, *inputs, **kw))
        wrapper.__name__ = fn.__name__
        wrapper.__qualname__ = fn.__qualname__
        wrapper.__doc__ = fn.__doc__
        wrapper.__wrapped__ = fn
        register(op_type, domain=domain, since=since, until=until, supports=supports, inplace=inplace,
                 gemm=gemm, half_native=half_native)(wrapper)
        return fn
    return deco


def _as_arrays(res):
    if isinstance(res, np.ndarray):
        return res
    if isinstance(res, (tuple, list)):
        return tuple(r if (r is None or isinstance(r, np.ndarray)) else np.asarray(r) for r in res)
    return np.asarray(res)


def attr_str(node, name, default=None):
    v = node.attrs.get(name, default)
    if isinstance(v, bytes):
        v = v.decode("utf-8")
    return v


def attr_ints(node, name, default=None):
    v = node.attrs.get(name)
    if v is None:
        return default
    return [int(i) for i in v]


def tensor_attr(v):
    """A tensor-valued attribute as an ndarray (TensorProto or already decoded)."""
    if v is None or isinstance(v, np.ndarray):
        return v
    from onnx import TensorProto, numpy_helper
    if isinstance(v, TensorProto):
        return numpy_helper.to_array(v)
    return np.asarray(v)


def tensor_attr_supported(v):
    """True when a tensor attribute decodes to a dtype the ops take (TENSOR_TYPES)."""
    from onnx import TensorProto
    if isinstance(v, TensorProto):
        return v.data_type in TENSOR_TYPES
    if isinstance(v, np.ndarray):
        return v.dtype in PLAIN_NP_DTYPES or v.dtype == TENSOR_TYPES[16]
    return False


# ONNX TensorProto.DataType -> numpy dtype, only for the types numpy represents
# natively (no strings, bfloat16, float8, int4, complex).
PLAIN_TENSOR_TYPES = {
    1: np.dtype(np.float32), 2: np.dtype(np.uint8), 3: np.dtype(np.int8),
    4: np.dtype(np.uint16), 5: np.dtype(np.int16), 6: np.dtype(np.int32),
    7: np.dtype(np.int64), 9: np.dtype(np.bool_), 10: np.dtype(np.float16),
    11: np.dtype(np.float64), 12: np.dtype(np.uint32), 13: np.dtype(np.uint64),
}
PLAIN_NP_DTYPES = set(PLAIN_TENSOR_TYPES.values())
# ... and with bfloat16 (ml_dtypes, what onnx.numpy_helper decodes it to): every type the ops take
TENSOR_TYPES = {**PLAIN_TENSOR_TYPES, 16: np.dtype(ml_dtypes.bfloat16)}


def norm_axis(axis, rank):
    axis = int(axis)
    if axis < 0:
        axis += rank
    if not 0 <= axis < rank:
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis


def ints_of(arr):
    """A 1-D int tensor (shape/axes/pads input) as a list of Python ints."""
    if arr is None:
        return None
    return np.asarray(arr).reshape(-1).tolist() if getattr(arr, "dtype", None) is not None and arr.dtype.kind in "iu" \
        else [int(i) for i in np.asarray(arr).reshape(-1)]


def is_float(x):
    return x.dtype.kind == "f"


def low_precision(dtype):
    """float16 and the ml_dtypes floats (bfloat16, float8: numpy kind 'V')."""
    return dtype == np.float16 or dtype.kind == "V"


def compute_dtype(dtype):
    """Low-precision floats are computed/accumulated in float32 (numpy has no
    BLAS for them, and bfloat16 matmul would even change the result dtype)."""
    return np.dtype(np.float32) if low_precision(dtype) else dtype


def reusable(dead, i, x, like=None):
    """x (input position i) when the op may write its result into it: the input
    dies here (`dead`), is a writeable ndarray and, if `like` (an array or
    (shape, dtype)) is given, has that shape and dtype. Else None."""
    if i not in dead or not isinstance(x, np.ndarray) or not x.flags.writeable:
        return None
    if like is not None:
        shape, dtype = (like.shape, like.dtype) if isinstance(like, np.ndarray) else like
        if x.shape != tuple(shape) or x.dtype != dtype:
            return None
    return x
