"""Constant-producing ops (numpy): Constant, ConstantOfShape, Range, EyeLike."""
import numpy as np

from ._util import TENSOR_TYPES, tensor_attr_supported, low_precision, op, tensor_attr

_NUMERIC_VALUE_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def _constant_supported(node):
    keys = [k for k in node.attrs if k.startswith("value") or k == "sparse_value"]
    if len(keys) != 1 or keys[0] not in _NUMERIC_VALUE_ATTRS:
        return False        # sparse_value, value_string(s) fall back
    if keys[0] == "value":
        return tensor_attr_supported(node.attrs["value"])
    return True


@op("Constant", since=1, supports=_constant_supported)
def constant(node):
    a = node.attrs
    if "value" in a:
        return np.array(tensor_attr(a["value"]))
    if "value_float" in a:
        return np.array(a["value_float"], dtype=np.float32)
    if "value_floats" in a:
        return np.array(list(a["value_floats"]), dtype=np.float32)
    if "value_int" in a:
        return np.array(a["value_int"], dtype=np.int64)
    return np.array(list(a["value_ints"]), dtype=np.int64)


def _cos_supported(node):
    v = node.attrs.get("value")
    return v is None or tensor_attr_supported(v)


@op("ConstantOfShape", since=9, supports=_cos_supported)
def constant_of_shape(node, shape):
    v = node.attrs.get("value")
    if v is None:
        return np.zeros(tuple(int(i) for i in shape.reshape(-1)), dtype=np.float32)
    v = tensor_attr(v)
    return np.full(tuple(int(i) for i in shape.reshape(-1)), v.reshape(-1)[0], dtype=v.dtype)


def _range_supported(node):
    return int(node.attrs.get("stash_type", 1)) in (1, 11)


@op("Range", since=11, supports=_range_supported, half_native=True)
def range_(node, start, limit, delta):
    dtype = start.dtype
    s, l, d = start.item(), limit.item(), delta.item()
    if low_precision(dtype) and node.version >= 27:
        # opset 27 `stash_type`: float16/bfloat16 ranges are computed in
        # float32 (1, the default) or float64 (11), then rounded
        cd = {1: np.float32, 11: np.float64}[int(node.attrs.get("stash_type", 1))]
        return np.arange(np.asarray(s).astype(cd).item(), float(l), float(d), dtype=cd).astype(dtype)
    # same construction as the reference (np.arange fills by start + i*step')
    return np.arange(s, l, d).astype(dtype)


def _eyelike_supported(node):
    dt = node.attrs.get("dtype")
    return dt is None or dt in TENSOR_TYPES


@op("EyeLike", since=9, supports=_eyelike_supported, half_native=True)
def eye_like(node, x):
    dt = node.attrs.get("dtype")
    dtype = x.dtype if dt is None else TENSOR_TYPES[dt]
    return np.eye(x.shape[0], x.shape[1], k=int(node.attrs.get("k", 0)), dtype=dtype)
