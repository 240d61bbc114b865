"""float16 / bfloat16 tensors on the kernels.

The kernels with a native half path (LayerNorm, RMSNorm, GroupNorm,
InstanceNorm, BatchNorm) read and write the 16-bit words themselves, converting
blocks to float32 in cache. The others run through `via_float32`: x converted
once to a float32 buffer by half.h's vectorized loops, the float32 kernel run
on it in place, the result rounded back into y. Either way the statistics are
float32 blocks accumulated in float64, never half-precision arithmetic.
"""
import numpy as np

from .. import _checks as chk
from .._kernels import half_convert as _k
from .._thread_policy import memory_bound


def bits(a):
    """The 16-bit words of a float16/bfloat16 array (a view: bfloat16 has no buffer format)."""
    return a.view(np.uint16)


def to_float32(a):
    """A float32 copy of a float16/bfloat16 array (exact)."""
    f = np.empty(a.shape, np.float32)
    if not a.flags.c_contiguous:
        # a strided view (a Slice of the last axis in a model): the kernel reads flat words
        a = np.ascontiguousarray(a)
    if a.size:
        _k.to_float32(bits(a).reshape(-1), f.reshape(-1), chk.half_kind(a.dtype), memory_bound(a.size))
    return f


def store(f, y):
    """y[...] = f rounded to y's half dtype (nearest even); f float32 of y's shape."""
    if not (f.flags.c_contiguous and y.flags.c_contiguous):
        # the kernel writes flat words: round into a contiguous buffer, then copy into the view
        y[...] = store(np.ascontiguousarray(f), np.empty(y.shape, y.dtype))
        return y
    if f.size:
        _k.from_float32(f.reshape(-1), bits(y).reshape(-1), chk.half_kind(y.dtype), memory_bound(y.size))
    return y


def param32(p, name, shape, broadcast=False):
    """A parameter of a half-precision call as float32 (it may come as float32 or x's
    dtype; float16/bfloat16 widen exactly)."""
    return chk.param(p, name, shape, np.float32, broadcast=broadcast)


def via_float32(x, y, compute, *others):
    """y = compute(x32, *others32) for half-precision x, y (C-contiguous, same shape).

    compute(x32, *others32) gets float32 copies of x and of the other arrays
    (None passes through) and returns its float32 result, which may be x32
    itself (computed in place); that is rounded into y.
    """
    conv = [None if o is None else (to_float32(o) if o.dtype in chk.HALF_DTYPES
                                    else np.ascontiguousarray(o, np.float32)) for o in others]
    return store(compute(to_float32(x), *conv), y)
