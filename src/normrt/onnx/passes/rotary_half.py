"""Rotary embedding's rotate_half -> a reversed view of the halves, no copies.

What the exporters write for `x * cos + rotate_half(x) * sin` (LLaMA, Qwen2,
Gemma; rotate_half(x) = concat(-x[..., D/2:], x[..., :D/2])):

    x ─┬─► Slice(x, 0:h, last axis) ──────────────────┐
       ├─► Slice(x, h:D, last axis) ─► Neg ─► Concat(Neg, lo, last axis) ─► Mul(·, sin) ─┐
       └─► Mul(x, cos) ─────────────────────────────────────────────────────────────────┴─► Add ─► y
  ==>
    x4 = Reshape(x, (..., 2, h))                    the halves as an axis (a view)
    xr = Slice(x4, step -1 along the halves axis)   (hi, lo): a view with a negative stride
    y  = Reshape(x4 * cos4 + xr * sin4', (..., D))  cos4, sin4: cos, sin as (..., 2, h);
                                                    sin4' = sin4 with its first half negated

elementwise_chains then makes the Mul/Mul/Add one normrt::Elementwise reading
x4 and xr in place: the two Slices, the Neg and the Concat (three copies) go.
The result is bitwise the original's: (-a) * b == a * (-b) in IEEE arithmetic.

Taken when x's last axis is a known, even D = 2h (the leading axes may be symbolic: a
dynamic-axes export's); the Slices cut [0, h) and [h, D) of the last axis with step 1;
cos and sin are float32 with no more axes than x: constants (last axis D, 1 or none), or
values computed at run time (a dynamic-axes export computes them from the positions) whose
last axis is D, viewed as (..., 2, h) by a Reshape and sin's halves signed by a Mul that
elementwise_chains takes into the same program; the Concat, the two Muls and the Neg are
read only inside the pattern. Refused (left as it is, not reported): anything else -
another split point, a Concat in the other order (that is not rotate_half), an odd or
unknown D, float16 values.
"""
import numpy as np
from onnx import TensorProto, helper

from . import GraphPass
from ._queries import is_op, other_input, private_reason

_INT64_MIN = np.iinfo(np.int64).min


def _ints(ctx, name):
    v = ctx.constants.get(name) if name else None
    return None if v is None else [int(i) for i in np.asarray(v).reshape(-1)]


def _half_slice(ctx, node, x, rank, dim):
    """(start, end) of a Slice of x along its last axis with step 1, clamped to [0, dim], or None."""
    if not is_op(node, "Slice") or len(node.input) < 4 or node.input[0] != x:
        return None
    starts, ends, axes = (_ints(ctx, node.input[i]) for i in (1, 2, 3))
    steps = _ints(ctx, node.input[4]) if len(node.input) > 4 and node.input[4] else [1]
    if None in (starts, ends, axes, steps) or not (len(starts) == len(ends) == len(axes) == len(steps) == 1):
        return None
    if axes[0] % rank != rank - 1 or steps[0] != 1:
        return None

    def clamp(i):
        return min(max(i + dim if i < 0 else i, 0), dim)
    return clamp(starts[0]), clamp(ends[0])


def _halves(value, rank, h):
    """A cos/sin constant (broadcasting to rank axes, last D or 1) with its last axis as (2, h) or (1, 1)."""
    v = np.asarray(value).reshape((1,) * (rank - value.ndim) + value.shape)
    last = (2, h) if v.shape[-1] == 2 * h else (1, 1)
    return v.reshape(v.shape[:-1] + last)


class RotaryHalf(GraphPass):
    name = "rotary_half"
    report_refusals = False      # refused rotations run as they are

    def matches(self, ctx):
        for node in ctx.nodes:
            if is_op(node, "Add") and len(node.input) == 2 and len(node.output) == 1:
                yield node

    def _match(self, ctx, add):
        """(x, cos, sin, nodes to replace) of a rotary Add, or None."""
        prod = ctx.producer()
        terms = [prod.get(i) for i in add.input]
        if not all(is_op(t, "Mul") and len(t.input) == 2 for t in terms):
            return None
        for rot_mul, x_mul in (terms, terms[::-1]):
            for cat_name in rot_mul.input:
                cat = prod.get(cat_name)
                if not is_op(cat, "Concat") or len(cat.input) != 2:
                    continue
                neg, lo = prod.get(cat.input[0]), prod.get(cat.input[1])
                if not is_op(neg, "Neg") or lo is None:
                    continue
                hi = prod.get(neg.input[0])
                x = lo.input[0] if lo.input else None
                sin, cos = other_input(rot_mul, cat_name), other_input(x_mul, x)
                if hi is None or sin is None or cos is None:
                    continue
                return x, cos, sin, cat, neg, hi, lo, rot_mul, x_mul
        return None

    def check(self, ctx, add):
        if not ctx.contains(add):
            return "already rewritten"
        m = self._match(ctx, add)
        if m is None:
            return "not x * cos + rotate_half(x) * sin"
        x, cos, sin, cat, neg, hi, lo, rot_mul, x_mul = m
        shape = ctx.shape(x)
        if not shape or not isinstance(shape[-1], int) or shape[-1] % 2:
            return "x's last axis is not known and even"
        rank, dim = len(shape), shape[-1]
        if ctx.elem_type(x) != TensorProto.FLOAT:
            return "not float32"
        attrs = {a.name: a.i for a in cat.attribute}
        if attrs.get("axis", 0) % rank != rank - 1:
            return "the Concat is not along the last axis"
        if _half_slice(ctx, lo, x, rank, dim) != (0, dim // 2) or _half_slice(ctx, hi, x, rank, dim) != (dim // 2, dim):
            return "the Slices are not the halves of the last axis"
        for name in (cos, sin):
            v = ctx.constants.get(name)
            if v is not None:
                if v.dtype != np.float32 or v.shape[-1:] not in ((dim,), (1,), ()) or v.ndim > rank:
                    return "cos/sin are not float32 constants of x's last axis"
                continue
            # computed at run time (a dynamic-axes export computes them from the positions): their
            # last axis must be x's, to be split as x is; no more axes than x, so the sum's
            # leading axes are what the Muls broadcast, as before
            s_ = ctx.shape(name)
            if ctx.elem_type(name) != TensorProto.FLOAT or not s_ or len(s_) > rank or s_[-1] != dim:
                return "cos/sin computed at run time without x's last axis"
        consumers = ctx.consumers()
        inner = [cat, rot_mul, x_mul, add]
        for n in (cat, rot_mul, x_mul):
            reason = private_reason(ctx, consumers, n.output[0], inner)
            if reason:
                return reason
        self._found = m
        return None

    def rewrite(self, ctx, add):
        x, cos, sin, cat, neg, hi, lo, rot_mul, x_mul = self._found
        shape = list(ctx.shape(x))
        rank, h = len(shape), shape[-1] // 2
        base = add.name or add.output[0]
        # Reshape's 0 copies a leading dim: the leading axes may be symbolic, and the sum's are
        # those the Muls broadcast (cos/sin have no more axes than x)
        shape4 = ctx.add_constant(base + "_halves_shape", np.array([0] * (rank - 1) + [2, h], np.int64))
        shape_y = ctx.add_constant(base + "_shape", np.array([0] * (rank - 1) + [2 * h], np.int64))
        sign = np.array([[-1.0], [1.0]], np.float32)      # the rotated first half is -x_hi
        nodes = []

        def halves(name, signed):
            v = ctx.constants.get(name)
            if v is not None:
                v4 = _halves(v, rank, h)
                return ctx.add_constant(name + ("_halves_signed" if signed else "_halves"),
                                        np.ascontiguousarray(v4 * sign if signed else v4))
            r = len(ctx.shape(name))
            target = ctx.add_constant(name + "_halves_shape", np.array([0] * (r - 1) + [2, h], np.int64))
            v4 = ctx.new_name(name + "_halves")
            nodes.append(helper.make_node("Reshape", [name, target], [v4], name=v4))
            if not signed:
                return v4
            out = ctx.new_name(name + "_halves_signed")
            nodes.append(helper.make_node("Mul", [v4, ctx.add_constant(base + "_sign", sign)], [out], name=out))
            return out
        cos4, sin4 = halves(cos, False), halves(sin, True)
        starts = ctx.add_constant(base + "_rev_starts", np.array([1], np.int64))
        ends = ctx.add_constant(base + "_rev_ends", np.array([_INT64_MIN], np.int64))
        axes = ctx.add_constant(base + "_rev_axes", np.array([rank - 1], np.int64))   # the (2) axis of rank+1
        steps = ctx.add_constant(base + "_rev_steps", np.array([-1], np.int64))
        x4, xr = ctx.new_name(base + "_x_halves"), ctx.new_name(base + "_x_swapped")
        a, b, y4 = ctx.new_name(base + "_cos_term"), ctx.new_name(base + "_sin_term"), ctx.new_name(base + "_halves")
        nodes += [helper.make_node("Reshape", [x, shape4], [x4], name=x4),
                  helper.make_node("Slice", [x4, starts, ends, axes, steps], [xr], name=xr),
                  helper.make_node("Mul", [x4, cos4], [a], name=a),
                  helper.make_node("Mul", [xr, sin4], [b], name=b),
                  helper.make_node("Add", [a, b], [y4], name=y4),
                  helper.make_node("Reshape", [y4, shape_y], list(add.output), name=base)]
        ctx.replace_nodes([rot_mul, x_mul, add], nodes)
