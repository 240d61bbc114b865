"""Half-precision steps of a specialized plan: a float32 fast step between two conversions.

A float16/bfloat16 value meeting an op that computes in float32 (a numpy op not
registered `half_native`, a normrt Conv/MatMul/Attention/Elementwise: ops/_half.py,
kernels.py) runs, in the generic plan, as: every half input widened to a fresh
float32 array, the op's float32 implementation on them (its own checks, a fresh
result), the result rounded to a fresh half array. Per run: three allocations and
the op's per-call dispatch -- for a Conv or a MatMul also the generic call instead
of the prepared kernel call float32 models get (fast_steps.py).

Here the step compiles to

    y16 = _narrow_into(<float32 fast step>(_widen_into(x16, xs)), y16_buffer)

* constants are widened once, at specialization (`_half.widen_constant`, the copy the
  generic path caches too), so a Conv/MatMul weight is widened and packed once;
* run-time half inputs are widened into the plan's scratch (compiled._Source.scratch:
  one allocation per plan, shared by the steps);
* the float32 step is the one a float32 model gets (fast_steps: the prepared GEMM and
  conv calls...), writing into scratch too, or, for an op without one, the op's
  float32 implementation called as the generic path calls it;
* its result is rounded into the step's half output buffer.

The conversions are the generic path's (half.h's vectorized loops, exact widening,
one rounding to nearest even) and the float32 step computes bitwise what the
generic op computes, so both plans give the same bits.
"""
import numpy as np

from .._checks import half_kind
from .._kernels import half_convert as _k
from .._thread_policy import memory_bound
from .ops import _half

# the plan's scratch slots (compiled._Source.scratch): each run-time input of a step its own,
# the float32 result another
_IN_SLOT = "half_in{}"
_OUT_SLOT = "half_out"


# buf = x widened to float32 (exact), y = f rounded to y's half type (nearest even): the
# conversions of ops/_half.py, on the plan's own arrays (checked through the numpy C API)
widen_into = _k.widen_into
narrow_into = _k.narrow_into


def _narrow_first(res, y, kind, nt):
    """The generic implementation's result (one array, or a one-element list/tuple) rounded into y."""
    if isinstance(res, (tuple, list)):
        res = res[0]
    return narrow_into(res, y, kind, nt)


def _run_f32(impl, opnode, dead, *args):
    """A numpy op's float32 implementation on the widened args, as ops/_half.run_in_float32 calls it
    (the scratch copies die with the step: an in-place op may write into them)."""
    return impl.fn(opnode, *args, dead=dead) if dead else impl.fn(opnode, *args)


def _result_dtype(ins):
    """ops/_half.result_dtype from the inputs' metas: the first float input's dtype if it is half."""
    for a in ins:
        if a is not None and a[1] is not None and (a[1][1].kind == "f" or _half.is_half(a[1][1])):
            return a[1][1] if _half.is_half(a[1][1]) else None
    return None


def island(src, step, ins, out_meta, buffer, float32_step):
    """The expression of a step whose float32 computation meets half-precision values (see the module
    docstring), or None (the generic call). `ins`, `out_meta`, `buffer`: as fast_steps.fast_step's;
    `float32_step(src, step, ins, out_meta, buffer)` the fast step of the float32 form."""
    shape, dtype = out_meta
    if not _half.is_half(dtype) or _result_dtype(ins) != dtype:
        return None      # the op's results are not rounded to this dtype (mixed types: generic)
    shape = tuple(int(d) for d in shape)
    size = int(np.prod(shape, dtype=np.int64))
    if size == 0:
        return None
    nt = min(src.n_threads, memory_bound(size))
    wide, fresh = [], []
    for i, a in enumerate(ins):
        if a is None:
            wide.append(None)
            continue
        expr, meta, const = a
        if meta is None or not _half.is_half(meta[1]):
            wide.append(a)
            continue
        ashape, adtype = tuple(int(d) for d in meta[0]), meta[1]
        if const is not None:
            c32 = _half.widen_constant(const)
            wide.append((src.bind(c32, "c"), (ashape, np.dtype(np.float32)), c32))
            continue
        n = int(np.prod(ashape, dtype=np.int64))
        buf = src.scratch(_IN_SLOT.format(i), ashape, np.float32)
        conv = (f"{src.bind(widen_into, '_widen_into')}({expr}, {buf}, {half_kind(adtype)}, "
                f"{min(src.n_threads, memory_bound(n))})")
        wide.append((conv, (ashape, np.dtype(np.float32)), None))
        fresh.append(i)
    y = str(buffer) if buffer is not None else f"np.empty({shape!r}, {src.bind(dtype)})"
    f32_buffer = src.scratch(_OUT_SLOT, shape, np.float32)
    expr = float32_step(src, step, wide, (shape, np.dtype(np.float32)), f32_buffer)
    kind = half_kind(dtype)
    if expr is not None:
        return f"{src.bind(narrow_into, '_narrow_into')}({expr}, {y}, {kind}, {nt})"
    impl = getattr(step.run, "impl", None)
    if step.kind != "numpy" or impl is None or len(step.node.output) != 1:
        return None
    dead = tuple(fresh) if impl.inplace else ()
    args = "".join(("None" if a is None else a[0]) + ", " for a in wide)
    call = f"{src.bind(_run_f32, '_run_f32')}({src.bind(impl)}, {src.bind(step.run.opnode)}, {dead!r}, {args})"
    return f"{src.bind(_narrow_first, '_narrow_first')}({call}, {y}, {kind}, {nt})"
