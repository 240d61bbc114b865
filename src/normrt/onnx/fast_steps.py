"""Fast steps of a specialized plan: the common ops as direct calls, arguments checked once.

`fast_step(src, step, ins, out_meta, buffer)` is called by
compiled.compile_specialized for each single-output step once the input
shapes are known (a traced run). It returns the Python expression computing
the step's output from its inputs (`ins[i]`: (expression, (shape, dtype),
constant value or None), None for an omitted input), or None to keep the
generic call. `buffer`, when given, names a preallocated array of the output's
shape and dtype that the expression may write into (`out=`); it is reused by
every run, so only results no graph output can alias get one.

Every fast step computes exactly what the op's generic implementation
(normrt.onnx.ops, kernels.py) computes for those shapes and dtypes: the same
numpy ufunc or kernel call on the same operands, so the specialized and the
generic plan give bitwise-identical results (tests/onnx/test_compiled_plan.py).
A specialized run executes under np.errstate(all="ignore") (the generic ops
silence the same warnings one by one). What it drops is the per-run work around that call: dtype/shape dispatch,
attribute decoding, the OpNode/_as_arrays wrappers, list packing.
"""
import numpy as np

from .._kernels import activations as _act_kernel
from .._kernels import softmax as _softmax_kernel
from .._checks import ACTIVATIONS as _ACT_CODES
from .._checks import half_kind
from ..api.layer_norm import layer_norm, rms_norm
from ._graph import canonical_domain
from . import half_steps
from . import kernel_calls as _calls
from .concat_chain import GrowingConcat
from .ops import _half
from .ops._half import is_half
from .._thread_policy import MEMORY_BOUND_MIN_ELEMENTS as ELEMENTWISE_MIN  # bigger: the threaded kernel path
from .._thread_policy import memory_bound, softmax_rows

_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
_UNARY = {"Neg": np.negative, "Abs": np.abs, "Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt,
          "Reciprocal": np.reciprocal, "Floor": np.floor, "Ceil": np.ceil, "Tanh": np.tanh,
          "Sin": np.sin, "Cos": np.cos}
_RESHAPES = frozenset(("Reshape", "Flatten", "Squeeze", "Unsqueeze"))


def _snake(op_type):
    """'_group_norm' for 'GroupNorm': the name a prepared call is bound under in the plan's source."""
    return "".join("_" + c.lower() if c.isupper() else c for c in op_type)


def _plain(meta):
    return meta is not None and (meta[1].isbuiltin == 1 or is_half(meta[1]))


def _widened(step, ins, dtype):
    """Whether the generic call runs this numpy step in float32 (a half-precision value meets an op
    that is not `half_native`, ops/_half.py): no fast step, the generic call does the conversions."""
    if getattr(step.run.impl, "half_native", False):
        return False
    return is_half(dtype) or any(a is not None and is_half(a[1][1]) for a in ins)


def _copy_into(out, x):
    np.copyto(out, x)
    return out


def _transpose_into(x, perm, out):
    np.copyto(out, x.transpose(perm))
    return out


def _pad_into(x, crop, inner, fill, out):
    """A constant Pad into `out`: the value everywhere, then x (cropped first) inside."""
    out[...] = fill
    out[inner] = x if crop is None else x[crop]
    return out


def _scatter_into(x, key, updates, shape, out):
    """ScatterND by constant indices (`key`, from ops.indexing.constant_scatter): the generic op's
    copy and assignment, the indices' decoding done once."""
    if out is None:
        out = x.copy()
    else:
        np.copyto(out, x)
    out[key] = updates.reshape(shape)
    return out


def _softmax_into(x, y, n, nt):
    # the generic Softmax's kernel call (ops/softmax.py -> api.softmax) on (rows, n)
    _softmax_kernel.softmax_rows(np.ascontiguousarray(x.reshape(-1, n)), y.reshape(-1, n), False, nt)
    return y


def _reduce_mean_into(x, axes, keepdims, count, out):
    # np.mean's arithmetic (the generic ReduceMean, ops/reduce.py) without its per-call
    # bookkeeping: the sum in x's dtype, then a true division by the count as an intp
    total = np.add.reduce(x, axis=axes, dtype=x.dtype, keepdims=keepdims, out=out)
    return np.true_divide(total, count, out=total, casting="unsafe")


def _sum_squares_into(x, axes, keepdims, root, out):
    # the generic ReduceSumSquare / ReduceL2 (ops/reduce.py): np.sum(x * x), its square root
    r = np.add.reduce(x * x, axis=axes, keepdims=keepdims, out=out)
    return np.sqrt(r, out=r) if root else r


def _sigmoid(x, out):
    # the generic Sigmoid's sequence (activations.sigmoid), into `out`
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1
    np.reciprocal(out, out=out)
    return out


def _activation_into(x, act, out, nt):
    _act_kernel.activation(x.reshape(-1), out.reshape(-1), act, nt)
    return out


def _kernel_activation(opnode, args, dtype):
    """The activation kernel's name for a standalone HardSwish / HardSigmoid(1/6, 1/2) / Clip(0, 6) /
    Clip(0) whose generic numpy op computes the same operations (so the same bits), else None:
    HardSigmoid in float32 only (its float32 alpha widened to float64 is not the kernel's 1/6),
    Clip's bounds constants of the trace."""
    op = opnode.op_type
    if op == "HardSwish" and len(args) == 1:
        return "hardswish"
    if op == "Elu" and len(args) == 1:       # (likewise ops/activations.elu)
        from .ops.activations import elu_is_kernel
        return "elu" if elu_is_kernel(opnode) else None
    if op == "Gelu" and len(args) == 1:      # (the generic op is this kernel call: ops/activations.gelu)
        return "gelu_tanh" if opnode.attrs.get("approximate", b"none") in (b"tanh", "tanh") else "gelu"
    if op == "HardSigmoid" and len(args) == 1 and dtype == np.float32 and \
            np.float32(opnode.attrs.get("alpha", 0.2)) == np.float32(1.0 / 6.0) and \
            np.float32(opnode.attrs.get("beta", 0.5)) == np.float32(0.5):
        return "hardsigmoid"
    if op == "Clip" and opnode.version >= 11 and 2 <= len(args) <= 3 and all(a is not None for a in args[1:]):
        bounds = [a[2] for a in args[1:]]
        if any(b is None or np.asarray(b).size != 1 for b in bounds):
            return None
        lo = float(np.asarray(bounds[0]).reshape(()))
        hi = float(np.asarray(bounds[1]).reshape(())) if len(bounds) > 1 else None
        return {(0.0, 6.0): "relu6", (0.0, None): "relu"}.get((lo, hi))
    return None


def _numpy_step(src, step, ins, out_meta, buffer):
    node = step.node
    op = node.op_type
    opnode = getattr(step.run, "opnode", None)
    if opnode is None:
        return None
    shape, dtype = out_meta
    args = ins
    if any(a is not None and not _plain(a[1]) for a in args) or _widened(step, args, dtype):
        return None
    size = int(np.prod(shape, dtype=np.int64))
    if op in ("Max", "Min") and opnode.version >= 8 and len(args) == 2 and None not in args:
        # the generic variadic op's first (only) step for two inputs: np.maximum / np.minimum
        (ea, (_, da), _), (eb, (_, db), _) = args
        if da != db or da.kind not in "fiu" or da != dtype or not shape:
            return None
        fn = src.bind(np.maximum if op == "Max" else np.minimum, "_" + op.lower())
        return f"{fn}({ea}, {eb}" + (f", out={buffer})" if buffer is not None else ")")
    if op in _BINARY and opnode.version >= 7 and len(args) == 2:
        (ea, (_, da), _), (eb, (_, db), _) = args
        kinds = "f" if op == "Div" else "fiu"
        if da != db or da.kind not in kinds or da != dtype or not shape or size >= ELEMENTWISE_MIN:
            return None             # mixed dtypes, integer division, 0-d results, the threaded big adds
        fn = src.bind(_BINARY[op], "_" + op.lower())
        return f"{fn}({ea}, {eb}" + (f", out={buffer})" if buffer is not None else ")")
    if op in _UNARY and len(args) == 1:
        (ex, (_, dx), _), = args
        if dx.kind != "f" or dx != dtype or not shape or buffer is None:
            return None
        return f"{src.bind(_UNARY[op], '_' + op.lower())}({ex}, out={buffer})"
    if op == "Pow" and len(args) == 2 and args[1][2] is not None and opnode.version >= 7:
        (ea, (_, da), _), (_, (eshape, _), e) = args
        # the generic Pow's exponent-2 case (elementwise.pow_): np.square
        if da.kind == "f" and da == dtype and len(eshape) == 0 and float(e) == 2.0 and shape:
            return f"np.square({ea}" + (f", out={buffer})" if buffer is not None else ")")
        return None
    if op == "Expand" and len(args) == 2 and args[1][2] is not None and shape:
        ex, (xshape, dx), _ = args[0]
        if dx != dtype:
            return None
        # the generic Expand (shape_ops.expand) copies the broadcast view; here into the buffer
        target = tuple(int(d) for d in shape)
        if buffer is None:
            return f"np.broadcast_to({ex}, {target!r}).copy()"
        # (np.copyto broadcasts x to the buffer's shape itself: np.broadcast_to costs ~2 us more)
        return f"{src.bind(_copy_into, '_copy_into')}({buffer}, {ex})"
    if op == "Relu" and len(args) == 1:
        (ex, (_, dx), _), = args
        if not shape or size >= ELEMENTWISE_MIN or dx != dtype:
            return None
        zero = src.bind(dx.type(0))
        return f"np.maximum({ex}, {zero}" + (f", out={buffer})" if buffer is not None else ")")
    if op in ("HardSwish", "HardSigmoid", "Clip", "Gelu", "Elu") and args and args[0] is not None and shape:
        ex, (_, dx), _ = args[0]
        act = _kernel_activation(opnode, args, dx) if dx in (np.float32, np.float64) and dx == dtype else None
        if act is None:
            return None
        out = str(buffer) if buffer is not None else f"np.empty({tuple(int(d) for d in shape)!r}, {src.bind(dx)})"
        nt = min(src.n_threads, memory_bound(size))
        return f"{src.bind(_activation_into, '_activation_into')}({ex}, {_ACT_CODES[act]}, {out}, {nt})"
    if op == "GatherElements" and len(args) == 2 and None not in args and opnode.version >= 11:
        # the generic op's kernel call (shape_ops.gather_elements_into) into the buffer
        (ex, (xshape, dx), _), (ei, (ishape, di), _) = args
        if dx != dtype or di.kind != "i" or len(xshape) != len(ishape) or not shape:
            return None
        from .ops._util import norm_axis
        from .ops.shape_ops import gather_elements_into
        try:
            axis = norm_axis(opnode.attrs.get("axis", 0), len(xshape))
        except ValueError:
            return None             # (the generic call raises)
        out = str(buffer) if buffer is not None else "None"
        return f"{src.bind(gather_elements_into, '_gather_elements')}({ex}, {ei}, {axis}, {out})"
    if op == "LeakyRelu" and len(args) == 1:
        # the generic op's float32 path (activations.leaky_relu_float32: one pass of the
        # elementwise kernel) into the buffer: a vocoder's LeakyRelu before each conv paid the
        # generic call's ~4 us around a kernel of 1
        (ex, (_, dx), _), = args
        alpha = float(opnode.attrs.get("alpha", 0.01))
        if dx != np.float32 or dtype != np.float32 or not shape or not size or not alpha > 0.0:
            return None
        from .ops.activations import leaky_relu_float32
        out = str(buffer) if buffer is not None else "None"
        return f"{src.bind(leaky_relu_float32, '_leaky_relu')}({ex}, {alpha!r}, {out})"
    if op == "Sigmoid" and len(args) == 1:
        (ex, (_, dx), _), = args
        if dx.kind != "f" or buffer is None:
            return None
        return f"{src.bind(_sigmoid, '_sigmoid')}({ex}, {buffer})"
    if op in _RESHAPES and args and args[0] is not None:
        return f"{args[0][0]}.reshape({tuple(int(d) for d in shape)!r})"
    if op == "Identity" and len(args) == 1:
        return args[0][0]
    if op == "Transpose" and len(args) == 1:
        perm = opnode.attrs.get("perm")
        ex, (xshape, dx), _ = args[0]
        perm = tuple(int(p) for p in perm) if perm is not None else tuple(range(len(xshape)))[::-1]
        from .ops.shape_ops import tiled_transpose
        tiled = tiled_transpose(tuple(xshape), perm, np.dtype(dx).itemsize) \
            if size and not np.dtype(dx).hasobject and np.dtype(dx).itemsize in (1, 2, 4, 8) else None
        if tiled is not None:
            # the tiled kernel (the generic Transpose's, ops/shape_ops.transpose_into), its
            # simplified permutation and threads decided now
            from .._kernels import transpose as _ktranspose
            out = str(buffer) if buffer is not None else \
                f"np.empty({tuple(int(d) for d in shape)!r}, {src.bind(np.dtype(dx))})"
            return (f"{src.bind(_ktranspose.transpose_into, '_tiled_transpose')}(np.ascontiguousarray({ex}), "
                    f"{out}, {src.bind(list(tiled[0]))}, {src.bind(list(tiled[1]))}, {memory_bound(size)})")
        if buffer is None:
            return f"np.ascontiguousarray({ex}.transpose({perm!r}))"
        return f"{src.bind(_transpose_into, '_transpose_into')}({ex}, {perm!r}, {buffer})"
    if op == "Cast" and len(args) == 1:
        ex, (_, dx), _ = args[0]
        # float32 <-> float16/bfloat16: the generic Cast's conversion loop (ops/_half.cast: widen /
        # narrow), called through the numpy C API on an array made here (~0.2 us where the
        # generic call's checks and memoryviews cost ~3: a half RWKV's 301 Casts of 64 values)
        if dx == np.float32 and is_half(dtype) or is_half(dx) and dtype == np.float32:
            conv, kind = (half_steps.narrow_into, half_kind(dtype)) if is_half(dtype) else \
                (half_steps.widen_into, half_kind(dx))
            y = str(buffer) if buffer is not None else \
                f"np.empty({tuple(int(d) for d in shape)!r}, {src.bind(np.dtype(dtype))})"
            name = "_narrow_into" if is_half(dtype) else "_widen_into"
            return f"{src.bind(conv, name)}({ex}, {y}, {kind}, {memory_bound(size)})"
        if is_half(dx) or is_half(dtype):       # the generic Cast's vectorized conversion
            return f"{src.bind(_half.cast, '_cast')}({ex}, {src.bind(dtype)})"
        return f"{ex}.astype({src.bind(dtype)})"
    if op == "Slice" and len(args) >= 3 and all(a is None or a[2] is not None for a in args[1:]):
        from .ops._util import ints_of
        from .ops.shape_ops import slice_index
        ex, (xshape, _), _ = args[0]
        vals = [None if a is None else ints_of(a[2]) for a in args[1:]] + [None] * (5 - len(args))
        index = slice_index(xshape, *vals[:4])
        return f"{ex}[{src.bind(index)}]"
    if op == "Pad" and opnode.version >= 11 and len(args) >= 2 and None not in args[:2] and shape \
            and all(a is None or a[2] is not None for a in args[1:]):
        from .ops._util import attr_str, ints_of
        from .ops.shape_ops import pad_amounts
        ex, (xshape, dx), _ = args[0]
        value = args[2][2] if len(args) > 2 and args[2] is not None and args[2][2].size else None
        axes = ints_of(args[3][2]) if len(args) > 3 and args[3] is not None else None
        if attr_str(opnode, "mode", "constant") != "constant" or dx != dtype:
            return None
        crop, before, _ = pad_amounts(xshape, ints_of(args[1][2]), axes)
        # the generic Pad's fill and copy (shape_ops._pad), its amounts decided now
        fill = np.asarray(value.reshape(-1)[0] if value is not None else 0).astype(dx)
        inner = tuple(slice(b, b + (c.stop - c.start)) for b, c in zip(before, crop)) if crop is not None else \
            tuple(slice(b, b + s) for b, s in zip(before, xshape))
        out = str(buffer) if buffer is not None else f"np.empty({tuple(int(d) for d in shape)!r}, {src.bind(dx)})"
        return (f"{src.bind(_pad_into, '_pad_into')}({ex}, {src.bind(crop)}, {src.bind(inner)}, "
                f"{src.bind(fill)}, {out})")
    if op == "ScatterND" and len(args) == 3 and args[1][2] is not None and None not in (args[0], args[2]):
        from .ops.indexing import constant_scatter
        ex, (xshape, dx), _ = args[0]
        eu, (_, du), _ = args[2]
        prepared = constant_scatter(opnode, xshape, args[1][2]) if du == dx == dtype else None
        if prepared is None:
            return None
        key, upd_shape = prepared
        out = str(buffer) if buffer is not None else "None"
        return f"{src.bind(_scatter_into, '_scatter_into')}({ex}, {src.bind(key)}, {eu}, {upd_shape!r}, {out})"
    if op == "Gather" and len(args) == 2 and args[1][2] is not None:
        ex, (xshape, _), _ = args[0]
        axis = int(opnode.attrs.get("axis", 0)) % max(len(xshape), 1)
        k = np.asarray(args[1][2])
        if k.ndim == 0 and k.dtype.kind in "iu" and xshape and -int(xshape[axis]) <= int(k) < int(xshape[axis]):
            # one constant index (an unrolled scan's step t, a CLS token): basic indexing, a view
            # (Gather's outputs may be views of its input: executor.aliasing) where np.take copied,
            # ~1 us a step of Mamba's 96 per run
            index = (slice(None),) * axis + (int(k) % int(xshape[axis]),)
            return f"{ex}[{src.bind(index)}]"
        idx = src.bind(k.astype(np.intp, copy=False))
        return f"np.take({ex}, {idx}, axis={axis})"
    if op == "Gather" and len(args) == 2 and args[0] is not None and args[1] is not None:
        # an embedding lookup (run-time token ids): the generic op's np.take, its axis read once
        # (negative ids wrap, out-of-range ones raise IndexError, as there)
        ex, (xshape, dx), _ = args[0]
        ei, (_, di), _ = args[1]
        if di.kind != "i" or dx != dtype or not len(xshape):
            return None
        axis = int(opnode.attrs.get("axis", 0)) % len(xshape)
        return f"np.take({ex}, {ei}, axis={axis}" + (f", out={buffer})" if buffer is not None else ")")
    if op == "Concat" and all(a is not None for a in args) and not isinstance(step.run, GrowingConcat):
        axis = int(opnode.attrs.get("axis", 1)) % max(len(args[0][1][0]), 1)
        if buffer is not None and all(a[1][1] == dtype for a in args):
            return f"np.concatenate(({''.join(a[0] + ', ' for a in args)}), axis={axis}, out={buffer})"
        return f"np.concatenate(({''.join(a[0] + ', ' for a in args)}), axis={axis})"
    if op == "Softmax" and len(args) == 1 and args[0][1][1] in (np.float32, np.float64) and shape:
        ex, (xshape, dx), _ = args[0]
        if opnode.version < 13:
            first = int(opnode.attrs.get("axis", 1)) % len(xshape)
        else:
            first = int(opnode.attrs.get("axis", -1)) % len(xshape)
            if first != len(xshape) - 1:
                return None
        n = int(np.prod(xshape[first:], dtype=np.int64))
        if n == 0 or size == 0:
            return None
        y = str(buffer) if buffer is not None else f"np.empty({tuple(int(d) for d in shape)!r}, {src.bind(dx)})"
        nt = min(src.n_threads, softmax_rows(size))     # as the generic Softmax (api.softmax)
        return f"{src.bind(_softmax_into, '_softmax_into')}({ex}, {y}, {n}, {nt})"
    if op == "GlobalAveragePool" and len(args) == 1 and args[0] is not None:
        ex, (xshape, dx), _ = args[0]
        if dx not in (np.float32, np.float64) or dx != dtype or len(xshape) < 3 or 0 in xshape:
            return None
        from .ops.pool import _global_average          # the generic op's kernel call, into a buffer
        out = str(buffer) if buffer is not None else f"np.empty({tuple(int(d) for d in shape)!r}, {src.bind(dx)})"
        return f"{src.bind(_global_average, '_global_average')}({ex}, {out})"
    if op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare") and args \
            and args[0] is not None and shape:
        # (a 0-d result is a numpy scalar on np.mean's other branch: the generic call)
        ex, (xshape, dx), _ = args[0]
        if dx not in (np.float32, np.float64) or dx != dtype or 0 in xshape:
            return None
        if len(args) > 1 and args[1] is not None:      # axes as an input: a constant one only
            if args[1][2] is None:
                return None
            axes = [int(a) for a in np.asarray(args[1][2]).reshape(-1)]
        else:
            axes = opnode.attrs.get("axes")
            axes = None if axes is None else [int(a) for a in axes]
        if not axes:                                    # all axes, or noop_with_empty_axes
            return None
        axes = tuple(sorted(a % len(xshape) for a in axes))
        keepdims = bool(opnode.attrs.get("keepdims", 1))
        out = str(buffer) if buffer is not None else "None"
        if op == "ReduceSum":
            return f"np.add.reduce({ex}, axis={axes!r}, dtype={src.bind(dx)}, keepdims={keepdims}, out={out})"
        if op in ("ReduceMax", "ReduceMin"):       # (x is not empty: no `initial` needed)
            fn = "np.maximum" if op == "ReduceMax" else "np.minimum"
            return f"{fn}.reduce({ex}, axis={axes!r}, keepdims={keepdims}, out={out})"
        if op in ("ReduceL2", "ReduceSumSquare"):
            return f"{src.bind(_sum_squares_into, '_sum_squares')}({ex}, {axes!r}, {keepdims}, {op == 'ReduceL2'}, {out})"
        count = src.bind(np.intp(int(np.prod([xshape[a] for a in axes], dtype=np.int64))))
        return f"{src.bind(_reduce_mean_into, '_reduce_mean')}({ex}, {axes!r}, {keepdims}, {count}, {out})"
    if op in ("MaxPool", "AveragePool"):
        from .ops import pool as _pool_ops
        return _pool_ops.fast_pool(src, opnode, args, out_meta, buffer, src.n_threads)
    if op == "Resize" and opnode.version >= 11:
        from .ops import resize as _resize_ops
        return _resize_ops.fast_resize(src, opnode, args, out_meta, src.n_threads)
    if op == "Conv":
        from .ops import conv as _conv_ops
        return _conv_ops.fast_conv_node(src, opnode, args, out_meta, buffer, src.n_threads)
    if op == "ConvTranspose":
        from .ops import conv as _conv_ops
        return _conv_ops.fast_conv_transpose_node(src, opnode, args, out_meta, buffer, src.n_threads)
    if op == "Gemm":
        from .ops import matmul as _mm_ops
        return _mm_ops.fast_gemm_node(src, opnode, args, out_meta, buffer, src.n_threads)
    if op == "MatMul" and len(args) == 2:
        from .ops import matmul as _mm_ops
        return _mm_ops.fast_matmul(src, args, out_meta, buffer, src.n_threads)
    return None


def _kernel_step(src, step, ins, out_meta, buffer):
    """normrt-domain norms straight into their normrt function (no KernelNode layers)."""
    run = getattr(step.run, "inner", step.run)
    op = step.node.op_type
    attrs = run.attrs
    if run.n_out != 1 or (not run.spec.half_native and any(a is not None and is_half(a[1][1]) for a in ins)):
        return None           # the products widen half inputs in KernelNode (kernels.py)
    args = [None if a is None else a[0] for a in ins]
    args += [None] * (len(run.spec.inputs) - len(args))
    if op == "Elementwise" and ins and all(a is not None and a[1][1] == np.float32 for a in ins) \
            and out_meta[1] == np.float32 and len(out_meta[0]):
        # the program compiled and its threads decided now, the result into the plan's buffer
        shape = tuple(int(d) for d in out_meta[0])
        run_ = _calls.prepared_elementwise(attrs, len(ins), int(np.prod(shape, dtype=np.int64)))
        y = str(buffer) if buffer is not None else f"np.empty({shape!r}, np.float32)"
        return f"{src.bind(run_, '_elementwise')}(({''.join(a[0] + ', ' for a in ins)}), {y})"
    residual_at = {"RMSNorm": 2, "LayerNorm": 3}.get(op)
    if residual_at is not None and len(ins) > residual_at and ins[residual_at] is not None \
            and (ins[0] is None or tuple(ins[residual_at][1][0]) != tuple(ins[0][1][0])):
        return None           # a residual of another shape: the generic call adds it as the Add would
    if op == "RMSNorm":
        fn = src.bind(rms_norm, "_rms_norm")
        return (f"{fn}({args[0]}, {args[1]}, axis={int(attrs.get('axis', -1))}, "
                f"eps={float(attrs.get('epsilon', 1e-5))!r}, residual={args[2]})")
    if op == "LayerNorm" and not attrs.get("_stats"):
        fn = src.bind(layer_norm, "_layer_norm")
        act = attrs.get("activation") or None
        return (f"{fn}({args[0]}, {args[1]}, {args[2]}, axis={int(attrs.get('axis', -1))}, "
                f"eps={float(attrs.get('epsilon', 1e-5))!r}, residual={args[3]}, activation={act!r})")
    if op == "MatMul" and run.weight_is_constant and len(ins) >= 2 and ins[0] is not None \
            and _plain(ins[0][1]) and (len(ins) < 3 or ins[2] is None or ins[2][2] is not None):
        from .ops import matmul as _mm_ops
        expr = _mm_ops.fast_gemm(src, ins[0], run.packer(ins[1][2], attrs), out_meta, buffer,
                                 bias=ins[2][2] if len(ins) > 2 and ins[2] is not None else None,
                                 residual=ins[3] if len(ins) > 3 else None,
                                 activation=attrs.get("activation") or None, n_threads=src.n_threads,
                                 alpha=attrs.get("alpha", 0.01))
        if expr is not None:
            return expr
    if op == "Conv" and run.weight_is_constant and len(ins) >= 2 and ins[0] is not None \
            and _plain(ins[0][1]) and (len(ins) < 3 or ins[2] is None or ins[2][2] is not None):
        from .ops import conv as _conv_ops
        expr = _conv_ops.fast_conv_kernel_step(src, ins, attrs, run.packer(ins[1][2], attrs), out_meta, buffer,
                                               src.n_threads, into_residual=3 in run.dead)
        if expr is not None:
            return expr
    if run.spec.prepare is not None and ins[0] is not None and _plain(ins[0][1]) \
            and tuple(out_meta[0]) == tuple(ins[0][1][0]) and out_meta[1] == ins[0][1][1] \
            and all(p is None or p[2] is not None for p in ins[1:]):
        consts = [None if p is None else p[2] for p in ins[1:]]
        consts += [None] * (len(run.spec.inputs) - 1 - len(consts))
        prepared = run.spec.prepare(attrs, ins[0][1][0], ins[0][1][1], *consts, src.n_threads)
        if prepared is not None:
            shape, dtype = out_meta
            y = str(buffer) if buffer is not None else \
                f"np.empty({tuple(int(d) for d in shape)!r}, {src.bind(np.dtype(dtype))})"
            return f"{src.bind(prepared, _snake(op))}({args[0]}, {y})"
    if op == "Attention" and 3 <= len(ins) <= 4 and all(a is not None for a in ins[:3]) \
            and all(_plain(a[1]) and a[1][1] == np.float32 for a in ins[:3]):
        bias = ins[3] if len(ins) > 3 else None
        # a bias computed at run time (a padding mask): its shape is the plan's, its values each run's
        runtime_bias = bias is not None and bias[2] is None
        if not runtime_bias or (_plain(bias[1]) and bias[1][1] == np.float32):
            prepared = _calls.prepared_attention(attrs, ins[0][1][0], ins[1][1][0], ins[2][1][0],
                                                 None if bias is None else bias[2], src.n_threads,
                                                 bias_shape=tuple(bias[1][0]) if runtime_bias else None)
            if prepared is not None:
                return f"{src.bind(prepared, '_attention')}({', '.join(args[:4 if runtime_bias else 3])})"
    # any other kernel: its call, with a constant weight packed now rather than looked up per run
    call = src.bind(run.call, "_call")
    at = src.bind(attrs)
    extra = ""
    if run.packer is not None and run.weight_is_constant:
        extra = f", packed={src.bind(run.packer(ins[1][2], attrs))}"
    return f"{call}({at}, 1, {', '.join(a or 'None' for a in args[:len(ins)])}{extra})[0]"


def _kernel_multi_step(src, step, ins, out_metas):
    """normrt LayerNorm/RMSNorm whose outputs are Y and the residual sum (pre-LN transformers):
    the kernel call prepared once (kernel_calls.prepared_norm_with_sum)."""
    run = getattr(step.run, "inner", step.run)
    op, names = step.node.op_type, list(step.node.output)
    if op == "LayerNorm":
        wanted = len(names) == 4 and names[0] and not names[1] and not names[2] and names[3]
        x, scale, bias, residual = (list(ins) + [None] * 4)[:4]
    elif op == "RMSNorm":
        wanted = len(names) == 2 and names[0] and names[1]
        x, scale, residual = (list(ins) + [None] * 3)[:3]
        bias = None
    else:
        return None
    if not wanted or x is None or residual is None or any(p is not None and p[2] is None for p in (scale, bias)):
        return None
    (ex, (xshape, dx), _), (er, (rshape, dr), _) = x, residual
    if not (_plain(x[1]) and _plain(residual[1])) or tuple(rshape) != tuple(xshape) or dr != dx \
            or any(m != (xshape, dx) and (tuple(m[0]), m[1]) != (tuple(xshape), dx) for m in out_metas):
        return None
    prepared = _calls.prepared_norm_with_sum(op, run.attrs, xshape, dx, None if scale is None else scale[2],
                                             None if bias is None else bias[2], src.n_threads)
    if prepared is None:
        return None
    return f"{src.bind(prepared, '_norm_sum')}({ex}, {er})"


_RECURRENT = frozenset(("LSTM", "GRU", "RNN"))


def _recurrent_step(src, step, ins, as_tuple):
    """LSTM / GRU / RNN with constant W and R (and B, P): ops.recurrent.Recurrent, which packs the
    weights and folds the biases, built once and called each run with X and the run-time
    sequence lengths and states; its outputs picked as the step's. A streaming model's one-step
    LSTM (a voice detector's 64 units) spent ~30 us a call around its kernel in the generic op."""
    from operator import itemgetter
    from .ops.recurrent import Recurrent
    opnode = getattr(step.run, "opnode", None)
    if opnode is None or canonical_domain(step.node.domain) or len(ins) < 3 or ins[0] is None \
            or ins[1] is None or ins[2] is None or not _plain(ins[0][1]) or _widened(step, ins, ins[0][1][1]):
        return None
    ins = list(ins) + [None] * (8 - len(ins))
    consts = [None if ins[i] is None else ins[i][2] for i in (1, 2, 3, 7)]
    if consts[0] is None or consts[1] is None or any(ins[i] is not None and c is None
                                                     for i, c in zip((3, 7), consts[2:])):
        return None
    dx = ins[0][1][1]
    if dx.kind != "f":
        return None
    try:
        prepared = Recurrent(opnode, *consts, dx).prepare(tuple(int(d) for d in ins[0][1][0]), src.n_threads)
    except ValueError:
        return None                     # (the generic call raises it, each run)
    keep = [i for i, name in enumerate(step.node.output) if name]
    args = ", ".join(ins[0][0] if i == 0 else ("None" if ins[i] is None else ins[i][0]) for i in (0, 4, 5, 6))
    expr = f"{src.bind(itemgetter(*keep), '_outputs')}({src.bind(prepared, '_' + step.node.op_type.lower())}({args}))"
    # (as_tuple: the step's non-empty outputs, which compiled.py unpacks; one of them too)
    return f"({expr},)" if as_tuple and len(keep) == 1 else expr


def _split_step(src, step, ins):
    """A Split by constant sizes (or none: equal parts): the generic op's views of its input, their
    indexes decided once (a LeViT's Q/K/V split cost ~4.5 us through the generic call)."""
    opnode = getattr(step.run, "opnode", None)
    if opnode is None or canonical_domain(step.node.domain) or not ins or ins[0] is None \
            or ins[0][1] is None or any(a is not None and a[2] is None for a in ins[1:]):
        return None
    from .ops._util import attr_ints, ints_of
    from .ops.shape_ops import split_indexes
    ex, (xshape, _), _ = ins[0]
    split = ints_of(ins[1][2]) if len(ins) > 1 and ins[1] is not None else \
        (attr_ints(opnode, "split") if opnode.version < 13 else None)
    indexes = split_indexes(opnode, tuple(int(d) for d in xshape), None if split is None else list(split))
    if len(indexes) != len(step.node.output):
        return None
    return "(" + "".join(f"{ex}[{src.bind(index)}], " for index in indexes) + ")"


def _computes_in_float32(step, ins, dtype):
    """Whether the generic call widens this step's half-precision values to float32 and rounds
    its result back (ops/_half.py, kernels.py): then it runs as a half_steps island."""
    if any(a is not None and a[1] is None for a in ins):
        return False
    if step.kind == "numpy" and not canonical_domain(step.node.domain):
        # (a numpy step run by something else than its op, a GrowingConcat: no island)
        return getattr(step.run, "impl", None) is not None and _widened(step, ins, dtype)
    if step.kind == "kernel":
        run = getattr(step.run, "inner", step.run)
        return not run.spec.half_native and any(a is not None and is_half(a[1][1]) for a in ins)
    return False


def fast_step(src, step, ins, out_meta, buffer):
    """The expression for one step of a specialized plan, or None (generic call): a single
    output's, or for several outputs (`out_meta` their list of metas) the tuple of them."""
    if step.kind == "numpy" and step.node.op_type in _RECURRENT:
        return _recurrent_step(src, step, ins, isinstance(out_meta, list))
    if isinstance(out_meta, list):
        if len(step.outputs) < 2:
            return None
        if step.kind == "kernel":
            return _kernel_multi_step(src, step, ins, out_meta)
        return _split_step(src, step, ins) if step.kind == "numpy" and step.node.op_type == "Split" else None
    if step.kind == "numpy" and step.node.op_type == "Split":
        parts = _split_step(src, step, ins)         # one output: the whole input's view
        return None if parts is None else parts[1:-3]
    if _computes_in_float32(step, ins, out_meta[1]):
        return half_steps.island(src, step, ins, out_meta, buffer, _float_step)
    return _float_step(src, step, ins, out_meta, buffer)


def _float_step(src, step, ins, out_meta, buffer):
    if step.kind == "numpy" and not canonical_domain(step.node.domain):
        return _numpy_step(src, step, ins, out_meta, buffer)
    if step.kind == "kernel":
        return _kernel_step(src, step, ins, out_meta, buffer)
    return None
