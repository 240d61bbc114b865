"""float16 / bfloat16 tensors in the executor: computed in float32, converted once each way.

numpy has no BLAS for float16 and runs its float16 ufuncs one element at a
time through float32 (an Add of 1M float16 takes ~25x the float32 time here);
ml_dtypes' bfloat16 ufuncs are emulated in the same way. So an op meeting a
half-precision tensor does not loop numpy over it. Unless its implementation
handles half precision itself (registered `half_native`: ops that only move or
select elements, Cast), the op's half inputs are widened to float32 once by
half.h's vectorized loops (normrt.api.half, exact), its float32 implementation
runs, and its float32 results are rounded once (nearest even) to the half dtype
its data input had. One rounding per op, as onnx.reference's per-op numpy
arithmetic in that dtype, and the float32 kernels (GEMM, conv, softmax,
pooling, resize...) run as they do for float32 models.

Constant inputs (the executor's read-only initializers) are widened once and
the float32 copy kept while the constant lives, so a Conv or MatMul weight is
converted, then packed, once.
"""
import weakref

import numpy as np

from ..._checks import HALF_DTYPES
from ...api import half as _convert


def is_half(dtype):
    """float16 or bfloat16."""
    return dtype in HALF_DTYPES


def widen(a):
    """A float32 copy of a float16/bfloat16 array (exact; any layout)."""
    return _convert.to_float32(a)


def narrow(f, dtype):
    """float32 `f` rounded to the half dtype `dtype` (nearest even), a new array."""
    return _convert.store(np.ascontiguousarray(f, np.float32), np.empty(np.shape(f), dtype))


# read-only half arrays (initializers) -> their float32 copy, dropped with the array
_widened = {}


def widen_constant(a):
    """widen(a), once per read-only array (a writeable one may change under the same identity)."""
    if a.flags.writeable:
        return widen(a)
    ent = _widened.get(id(a))
    if ent is not None and ent[0]() is a:
        return ent[1]
    f = widen(a)
    f.flags.writeable = False
    ident = id(a)

    def drop(ref, ident=ident, table=_widened):     # bound now: module globals are gone at exit
        cur = table.get(ident)
        if cur is not None and cur[0] is ref:
            del table[ident]

    _widened[ident] = (weakref.ref(a, drop), f)
    return f


def widen_args(args):
    """(args with every half array widened to float32, the positions of fresh copies)."""
    out, fresh = [], []
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray) and a.dtype in HALF_DTYPES:
            if a.flags.writeable:
                fresh.append(i)
                a = widen(a)
            else:
                a = widen_constant(a)
        out.append(a)
    return out, fresh


def result_dtype(args):
    """The half dtype an op's float results take: its first float input's, if that is half; else None.

    (ONNX ops type their float outputs like their data input: Where's X after the bool
    condition, Resize's X before the float32 scales, Pow's base, not its exponent.)"""
    for a in args:
        if isinstance(a, np.ndarray) and (a.dtype.kind == "f" or a.dtype in HALF_DTYPES):
            return a.dtype if a.dtype in HALF_DTYPES else None
    return None


def narrow_results(results, dtype):
    """The float32 arrays of `results` (a list) rounded to `dtype`; other results as they are."""
    return [narrow(r, dtype) if isinstance(r, np.ndarray) and r.dtype == np.float32 else r for r in results]


def run_in_float32(impl, opnode, args, dead):
    """A registered numpy op on half-precision args: widened, run in float32, results rounded.

    Returns what the op returns (one array, or a tuple). `dead`: the input positions the op may overwrite;
    the fresh float32 copies die here too, so an in-place op may write into them."""
    dtype = result_dtype(args)
    wide, fresh = widen_args(args)
    if impl.inplace:
        dead = tuple(sorted(set(dead) | set(fresh)))
        res = impl.fn(opnode, *wide, dead=dead) if dead else impl.fn(opnode, *wide)
    else:
        res = impl.fn(opnode, *wide)
    if dtype is None:
        return res
    if isinstance(res, (tuple, list)):
        return tuple(narrow_results(res, dtype))
    return narrow_results([res], dtype)[0]


def cast(x, dtype):
    """x.astype(dtype) (a new array), through the vectorized converters where a half type meets float32.

    float32 <-> float16/bfloat16 and float16 <-> bfloat16 go through float32 (exact widening,
    one rounding); a half type from float64 or an integer is rounded directly by numpy /
    ml_dtypes (through float32 it could round twice); half to anything else widens exactly
    first."""
    dtype = np.dtype(dtype)
    src = x.dtype
    if dtype in HALF_DTYPES:
        if src == np.float32:
            return narrow(x, dtype)
        if src in HALF_DTYPES:
            return x.copy() if src == dtype else narrow(widen(x), dtype)
        return x.astype(dtype)
    if src in HALF_DTYPES:
        f = widen(x)
        return f if dtype == np.float32 else f.astype(dtype)
    if src.kind == "f" and dtype.kind in "iub":
        # NaN and +-inf have no integer: ONNX leaves the value undefined, as C does, and models
        # mask it later (WavLM's and T5's relative-position buckets take log(0) = -inf, cast it,
        # and pick the exact bucket there with Where): numpy's warning would only be noise
        with np.errstate(invalid="ignore"):
            return x.astype(dtype)
    return x.astype(dtype)
