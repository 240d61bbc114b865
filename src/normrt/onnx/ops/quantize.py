"""Quantization ops (numpy): QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv.

What onnxruntime's own quantization tools write: `quantize_static` QDQ models (a
QuantizeLinear -> DequantizeLinear pair on every activation, DequantizeLinear on every
int8 weight), `quantize_dynamic` models (DynamicQuantizeLinear -> MatMulInteger/ConvInteger
-> Cast -> Mul), and QOperator models (QLinearConv, QLinearMatMul). onnx.reference knows
DequantizeLinear only from opset 19, so such a model did not even load.

Semantics are the spec's, computed exactly where the spec is exact: integer products and
convolutions accumulate in float64 (exact for int8/uint8 operands up to 2^37 terms) and are
returned as int32; quantization rounds half to even and saturates. Requantization (QLinear*)
multiplies the exact integer result by a_scale * b_scale / y_scale in float64. Weights
dequantized from constants are folded into float constants at load (passes.constant_folding),
so a QDQ model's Conv and MatMul then run on normrt's float32 kernels.

Implemented: int8, uint8, int16, uint16 and int32 (DequantizeLinear's bias) tensors;
per-tensor, per-axis (`axis`) and blocked (`block_size`) scales; `saturate` (it only concerns
float8); `output_dtype`. Refused (onnx.reference runs them): float8/int4/float4 types
(`output_dtype` naming one; such input tensors are routed there by the executor anyway) and
QuantizeLinear's `precision`.
"""
import numpy as np

from ...api.gemm import matmul as _kernel_matmul
from . import _blas
from ._util import TENSOR_TYPES, op

_INT_TYPES = {2, 3, 4, 5, 6}                   # uint8, int8, uint16, int16, int32
_OUT_FLOATS = {1, 10, 11, 16}                  # float, float16, double, bfloat16
_RANGES = {np.dtype(t): (np.iinfo(t).min, np.iinfo(t).max)
           for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32)}


def _expand_scale(v, x, node):
    """A scale or zero point shaped to broadcast against x: scalar, per-axis (1-D along `axis`)
    or blocked (x's rank, `block_size` consecutive elements along `axis` sharing one value)."""
    if v.ndim == 0 or v.size == 1 and v.ndim <= 1:
        return v.reshape(())
    axis = int(node.attrs.get("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < x.ndim:
        raise ValueError(f"{node.op_type}: axis {node.attrs.get('axis')} out of range for x of rank {x.ndim}")
    block = int(node.attrs.get("block_size", 0) or 0)
    if block > 0:
        want = list(x.shape)
        want[axis] = -(-x.shape[axis] // block)
        if v.ndim != x.ndim or list(v.shape) != want:
            raise ValueError(f"{node.op_type}: blocked scale / zero point of shape {v.shape} does not fit x "
                             f"{x.shape} with block_size {block} on axis {axis} (expected {tuple(want)})")
        return np.repeat(v, block, axis=axis)[(slice(None),) * axis + (slice(0, x.shape[axis]),)]
    if v.ndim != 1 or v.shape[0] != x.shape[axis]:
        raise ValueError(f"{node.op_type}: per-axis scale / zero point of shape {v.shape} must have "
                         f"x's {x.shape[axis]} elements of axis {axis}")
    shape = [1] * x.ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def _dequantize_supported(node):
    dtype = node.attrs.get("output_dtype")
    return dtype is None or int(dtype) in _OUT_FLOATS


@op("DequantizeLinear", since=10, supports=_dequantize_supported, half_native=True)
def dequantize_linear(node, x, scale, zero_point=None):
    """(x - zero_point) * scale, in scale's type (or output_dtype)."""
    if x.dtype not in _RANGES:
        raise ValueError(f"DequantizeLinear: x must be an integer tensor (int8/uint8/int16/uint16/int32), got {x.dtype}")
    dtype = TENSOR_TYPES[int(node.attrs["output_dtype"])] if node.attrs.get("output_dtype") else scale.dtype
    # 8/16-bit values and their difference are exact in float32; int32 (a bias) in float64
    wide = np.float64 if scale.dtype == np.float64 or x.dtype == np.int32 else np.float32
    q = x.astype(wide)
    if zero_point is not None:
        q -= _expand_scale(zero_point, x, node).astype(wide)
    q *= _expand_scale(scale, x, node).astype(np.float32 if scale.dtype != np.float64 else np.float64)
    with np.errstate(over="ignore"):        # beyond float16's range: inf, as the spec's float16 product
        return q.astype(dtype, copy=False)


def _quantize_supported(node):
    if node.attrs.get("precision"):
        return False
    dtype = node.attrs.get("output_dtype")
    return dtype is None or int(dtype) in _INT_TYPES - {6}


def _saturate_round(v, dtype):
    lo, hi = _RANGES[np.dtype(dtype)]
    return np.clip(np.rint(v), lo, hi).astype(dtype)


@op("QuantizeLinear", since=10, supports=_quantize_supported, half_native=True)
def quantize_linear(node, x, scale, zero_point=None):
    """saturate(round_half_even(x / scale) + zero_point), in zero_point's type (or output_dtype,
    default uint8)."""
    if zero_point is not None:
        dtype = zero_point.dtype
    elif node.attrs.get("output_dtype"):
        dtype = TENSOR_TYPES[int(node.attrs["output_dtype"])]
    else:
        dtype = np.dtype(np.uint8)
    if dtype not in _RANGES or dtype == np.int32:
        raise ValueError(f"QuantizeLinear: output type {dtype} is not one of int8/uint8/int16/uint16")
    wide = np.float64 if x.dtype == np.float64 or x.dtype == np.int32 else np.float32
    v = np.asarray(np.divide(x, _expand_scale(scale, x, node).astype(wide), dtype=wide))   # 0-d: an array
    np.rint(v, out=v)
    if zero_point is not None:
        v += _expand_scale(zero_point, x, node).astype(wide)
    lo, hi = _RANGES[np.dtype(dtype)]
    np.clip(v, lo, hi, out=v)
    with np.errstate(invalid="ignore"):     # a NaN input has no quantized value; numpy picks one
        return v.astype(dtype)


def dynamic_range(x):
    """(scale, zero point) as float32 scalars: DynamicQuantizeLinear's uint8 grid for float32 x,
    the range [min(x, 0), max(x, 0)] onto 0..255 (scale 1 when it is empty), in float32 as the
    spec writes it. Also the fused DequantizeLinear(DynamicQuantizeLinear(x)) (kernel_calls)."""
    # Python floats rounded to float32 after each operation: +, -, * and / of float32 values
    # computed in double and rounded once more are the float32 operations' results exactly
    # (53 >= 2 * 24 + 2 bits), at a fraction of numpy scalars' cost (small models call this
    # once per quantized activation)
    hi = max(0.0, float(x.max())) if x.size else 0.0
    lo = min(0.0, float(x.min())) if x.size else 0.0
    scale = _f32(_f32(1.0 if hi == lo else hi - lo) / 255.0)
    if scale == 0.0:
        # a range narrower than float32's subnormals: -lo / scale is +inf (saturating to 255) or,
        # lo = 0, 0 / 0 (the spec's NaN, which numpy's cast to uint8 makes 0)
        zp = 255.0 if lo < 0.0 else 0.0
    else:
        zp = round(min(max(-_f32(lo / scale), 0.0), 255.0))      # round(): half to even, as rint
    return np.float32(scale), np.float32(zp)


def _f32(v):
    """A Python float rounded to the nearest float32."""
    return float(np.float32(v))


@op("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(node, x):
    """uint8 y with the scale and zero point that map [min(x, 0), max(x, 0)] onto 0..255."""
    x = x.astype(np.float32, copy=False)
    scale, zp = dynamic_range(x)
    v = np.asarray(np.divide(x, scale, dtype=np.float32))
    np.rint(v, out=v)
    v += zp
    np.clip(v, 0, 255, out=v)
    with np.errstate(invalid="ignore"):
        return v.astype(np.uint8), np.array(scale, np.float32), np.array(zp, np.uint8)


def _exact(a, zero_point=None, axis=None):
    """a - zero_point as float64 (exact for these integers); zero_point scalar or along `axis`."""
    v = a.astype(np.float64)
    if zero_point is not None and zero_point.size:
        z = zero_point.astype(np.float64)
        if z.size > 1 and axis is not None:
            shape = [1] * a.ndim
            shape[axis] = z.size
            z = z.reshape(shape)
        v = v - z.reshape(z.shape if z.size > 1 else ())
    return v


def _int_result(v):
    """An exact float64 integer product as int32 (the spec's accumulator type, wrapping as it would)."""
    return v.astype(np.int64).astype(np.int32)


def _bound(dtype, zero_point):
    """The largest |v - zero_point| of an 8/16-bit integer type."""
    lo, hi = _RANGES[np.dtype(dtype)]
    z = 0 if zero_point is None else int(zero_point)
    return max(abs(lo - z), abs(hi - z))


@op("MatMulInteger", since=10, gemm=True)
def matmul_integer(node, a, b, a_zero_point=None, b_zero_point=None):
    """(a - a_zero_point) @ (b - b_zero_point) in int32; a_zero_point per row of a's last-but-one
    axis, b_zero_point per column, or scalars.

    A constant 2-D b with a scalar a_zero_point (quantize_dynamic's Linear layers) runs on
    normrt's float32 GEMM, K split so that every partial sum is an integer below 2^24 (exact:
    _blas.integer_chunks), the ranges summed in int64; the rest in float64 (exact too)."""
    scalar_azp = a_zero_point is None or a_zero_point.size == 1
    if (not b.flags.writeable and b.ndim == 2 and a.ndim >= 1 and scalar_azp and a.size
            and a.dtype in (np.int8, np.uint8) and b.dtype in (np.int8, np.uint8)):
        azp = None if a_zero_point is None else a_zero_point.reshape(())
        af = a.astype(np.float32)
        if azp is not None:
            af -= np.float32(azp)
        acc = None
        for k0, k1, packed in _blas.packed_integer_weight(b, b_zero_point, _bound(a.dtype, azp)):
            part = _kernel_matmul(np.ascontiguousarray(af[..., k0:k1]), packed)
            acc = part.astype(np.int64) if acc is None else acc + part.astype(np.int64)
        return acc.astype(np.int32)
    av = _exact(a, a_zero_point, axis=a.ndim - 2 if a.ndim >= 2 else 0)
    bv = _exact(b, b_zero_point, axis=b.ndim - 1)
    return _int_result(np.matmul(av, bv))


def _conv_exact(node, x, w, x_zero_point, w_zero_point, bias=None):
    from .conv import conv
    xv = _exact(x, x_zero_point)
    wv = _exact(w, w_zero_point, axis=0)
    return conv(node, xv, wv, None if bias is None else bias.astype(np.float64))


@op("ConvInteger", since=10, gemm=True)
def conv_integer(node, x, w, x_zero_point=None, w_zero_point=None):
    """(x - x_zero_point) conv (w - w_zero_point) in int32 (w_zero_point per output channel or scalar)."""
    return _int_result(_conv_exact(node, x, w, x_zero_point, w_zero_point))


def _requantize(acc, a_scale, b_scale, y_scale, y_zero_point, b_axis, rank):
    """acc * a_scale * b_scale / y_scale + y_zero_point, rounded and saturated to y_zero_point's type."""
    bs = b_scale.astype(np.float64)
    if bs.size > 1:
        shape = [1] * rank
        shape[b_axis] = bs.size
        bs = bs.reshape(shape)
    v = acc * (a_scale.astype(np.float64).reshape(()) * bs / y_scale.astype(np.float64).reshape(()))
    v = np.rint(v)
    if y_zero_point is not None:
        v = v + y_zero_point.astype(np.float64).reshape(())
    return _saturate_round(v, y_zero_point.dtype if y_zero_point is not None else np.uint8)


@op("QLinearMatMul", since=10)
def qlinear_matmul(node, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    acc = np.matmul(_exact(a, a_zero_point, axis=a.ndim - 2), _exact(b, b_zero_point, axis=b.ndim - 1))
    return _requantize(acc, a_scale, b_scale, y_scale, y_zero_point, acc.ndim - 1, acc.ndim)


@op("QLinearConv", since=10, gemm=True)
def qlinear_conv(node, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, bias=None):
    acc = _conv_exact(node, x, w, x_zero_point, w_zero_point, bias)
    return _requantize(acc, x_scale, w_scale, y_scale, y_zero_point, 1, acc.ndim)
