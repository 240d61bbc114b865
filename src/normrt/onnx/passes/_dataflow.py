"""What a value computes: the statistics vocabulary of the normalization recognizer.

Each `read_*` function walks back from a value and says which statistic of
which tensor it holds -- whatever ops spell it -- or None. Every node it walked
through is added to `nodes` (the caller removes them when it fuses), so a match
costs the size of the subgraph it names, never the size of the graph.

    mean of X over axes A        ReduceMean(X, A) | ReduceSum(X, A) / n | ReduceSum(X, A) * (1/n)
    second moment over A         the mean (any spelling above, or ReduceSumSquare / n,
                                 ReduceL2² / n) of square(v), square = Pow(v, 2) | Mul(v, v);
                                 v = X - mean(X, A): "centred" (the variance), v = X: "raw"
    standard deviation           Sqrt(m2 + eps) | Pow(m2 + eps, 0.5)
    inverse standard deviation   c / std: Reciprocal(std) | Div(c, std) | Pow(m2 + eps, -0.5) |
                                 Sqrt(Reciprocal(m2 + eps)) | Sqrt(Div(1, m2 + eps))

n is the number of elements reduced (static dims only). Between the statistics
and their use any float-to-float Cast and view (Reshape to a constant shape,
Unsqueeze, Squeeze, Expand) may sit, so keepdims=0 + Unsqueeze reads as
keepdims=1: views keep the row-major order of the kept axes, and whether the
statistic lines up with X is decided by its shape where it meets X
(`lines_up`). On X's side only identity Casts are looked through.

Statistics computed in another precision than the data are the same statistics:
torch's decompositions of var / std / var_mean in float16 (the dynamo exporter)
compute them from Cast(X, float) and Cast the result back down, while the data
stays in half:

    X16 ──► Cast(float) ──► ReduceMean ─► Sub ─► Mul ─► ReduceMean ─► Cast(float16) ─► Add(eps) ─► Sqrt
     └─────────────────────────────────────────────── Sub(X16, ReduceMean(X16)) ──────────────────► Div

Two tensors hold the same values (`same_values`) when they differ only by exact
widening Casts (float16 / bfloat16 -> float32 -> float64: every value survives),
and a Cast of a statistic to another float type is looked through: normrt computes
the statistics in float64, which is what both precisions approximate.
"""
from dataclasses import dataclass

import numpy as np

from onnx import TensorProto

from .._graph import decode_attributes
from ._queries import KERNEL_DTYPES, constant_rel_tol, is_number, is_op

VIEW_OPS = ("Reshape", "Unsqueeze", "Squeeze", "Expand", "Flatten")
# Casts that keep every value: (from, to) float types of the kernels, `to` at least as wide
_F16, _BF16, _F32, _F64 = TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE
EXACT_WIDENING = {(_F16, _F32), (_F16, _F64), (_BF16, _F32), (_BF16, _F64), (_F32, _F64)}


@dataclass(frozen=True)
class Moment:
    """A second moment of X over `axes`: kind "centred" (the population variance) or "raw" (mean of X²)."""
    kind: str
    x: str
    axes: tuple


class Dataflow:
    """Queries over the context's live use-def index and its constants and types."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.producer = ctx.producer()
        self.why = None     # the last reason a read failed on an op it did recognize (for reports)

    # -- basic reads ---------------------------------------------------------
    def const(self, name):
        return self.ctx.constants.get(name) if name else None

    def scalar(self, name):
        """The float value of a one-element float/int constant, or None."""
        v = self.const(name)
        if v is None or v.size != 1 or not is_number(v.dtype):
            return None
        return float(np.asarray(v).reshape(-1)[0])

    def op(self, name, *op_types):
        node = self.producer.get(name)
        return node if is_op(node, *op_types) else None

    def is_identity_cast(self, node):
        if not is_op(node, "Cast") or len(node.input) != 1:
            return False
        try:
            to = decode_attributes(node).get("to")
        except ValueError:
            return False
        t_in = self.ctx.elem_type(node.input[0])
        return t_in != 0 and to == t_in

    def _cast_types(self, node):
        """(from, to) element types of a one-input Cast, or None."""
        if not is_op(node, "Cast") or len(node.input) != 1:
            return None
        try:
            to = decode_attributes(node).get("to")
        except ValueError:
            return None
        return self.ctx.elem_type(node.input[0]), to

    def is_float_cast(self, node):
        """A Cast between two float kernel types (a statistic kept at another precision)."""
        types = self._cast_types(node)
        return types is not None and types[0] in KERNEL_DTYPES and types[1] in KERNEL_DTYPES

    def widened_from(self, name):
        """[name, its source, ...]: `name` and the values it was Cast from without losing any value
        (identity and exact widening Casts), narrowest last."""
        chain = [name]
        while True:
            node = self.producer.get(chain[-1])
            types = self._cast_types(node)
            if types is None or not (types[0] == types[1] != 0 or types in EXACT_WIDENING):
                return chain
            chain.append(node.input[0])

    def same_values(self, a, b):
        """Whether a and b hold the same values, maybe at different precisions (exact widening Casts)."""
        return a == b or self.widened_from(a)[-1] == self.widened_from(b)[-1]

    def typed_source(self, name, elem_type):
        """The value of `elem_type` among `name` and the exact sources it was widened from (the tensor a
        fused node reads in the data's type), or `name` itself if none has that type."""
        for v in self.widened_from(name):
            if self.ctx.elem_type(v) == elem_type:
                return v
        return name

    def data(self, name, nodes):
        """`name` with identity Casts stripped going back (X's side: values, not views)."""
        while True:
            node = self.producer.get(name)
            if not self.is_identity_cast(node):
                return name
            nodes.append(node)
            name = node.input[0]

    def view_source(self, name, nodes):
        """`name` with float Casts and views stripped going back (statistics' side).

        A view whose shape is computed at run time (a symbolic batch: the dynamo exporter's
        Reshape(var, Concat(Shape(X)[:1], ...)) + Expand) is taken when the whole chain keeps
        the statistic's dims in order, only axes of size 1 added or dropped: views keep the
        row-major order and equal counts mean no Expand broadcast anything."""
        inner, source, runtime = [], name, False
        while True:
            node = self.producer.get(source)
            if is_op(node, *VIEW_OPS):
                runtime |= any(i not in self.ctx.constants for i in node.input[1:] if i)
            elif not self.is_float_cast(node):
                break
            inner.append(node)
            source = node.input[0]
        if runtime and not self._unit_axes_apart(name, source):
            return self._constant_view_source(name, nodes)
        nodes += inner
        return source

    def _unit_axes_apart(self, a, b):
        """Whether the known shapes of a and b are the same dims in the same order, 1s aside."""
        sa, sb = self.ctx.shape(a), self.ctx.shape(b)
        if sa is None or sb is None or any(d is None for d in tuple(sa) + tuple(sb)):
            return False
        return [d for d in sa if d != 1] == [d for d in sb if d != 1]

    def _constant_view_source(self, name, nodes):
        """view_source stopping at the first view whose shape is not a constant."""
        while True:
            node = self.producer.get(name)
            if self.is_float_cast(node):
                pass
            elif is_op(node, *VIEW_OPS):
                if any(i not in self.ctx.constants for i in node.input[1:] if i):
                    return name
            else:
                return name
            nodes.append(node)
            name = node.input[0]

    def static_shape(self, name):
        s = self.ctx.shape(name)
        return tuple(s) if s is not None and all(isinstance(d, int) for d in s) else None

    # -- reductions ----------------------------------------------------------
    def reduce_axes(self, node):
        """Sorted non-negative axes a Reduce* node reduces its input over, or None."""
        shape = self.ctx.shape(node.input[0])
        if shape is None:
            self.why = f"rank of {node.input[0]!r} unknown"
            return None
        rank = len(shape)
        try:
            attrs = decode_attributes(node)
        except ValueError:
            return None
        if len(node.input) > 1 and node.input[1]:
            v = self.const(node.input[1])
            if v is None:
                self.why = f"{node.name!r}: axes are not a constant"
                return None
            axes = [int(a) for a in np.asarray(v).reshape(-1)]
        else:
            axes = attrs.get("axes")
            axes = [] if axes is None else [int(a) for a in axes]
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return None
            axes = list(range(rank))
        if not all(-rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
            return None
        return tuple(sorted(a % rank for a in axes))

    def count(self, src, axes):
        """The number of elements reduced over `axes` of `src` (None unless those dims are static)."""
        shape = self.ctx.shape(src)
        if shape is None or not all(isinstance(shape[a], int) for a in axes):
            return None
        return int(np.prod([shape[a] for a in axes])) if axes else 1

    def _is_count(self, name, n, inverse):
        v = self.scalar(name)
        if v is None or not n:          # unknown, or an empty reduction (no mean to speak of)
            return False
        want = 1.0 / n if inverse else float(n)
        # a half-precision constant holds 1/n (or an n above 2048) only to its own rounding
        return abs(v - want) <= constant_rel_tol(self.ctx.elem_type(name)) * abs(want)

    def read_mean_of(self, name, nodes, reducers=("ReduceMean",), sum_reducers=("ReduceSum",)):
        """(reduce node, its source, axes) if `name` is a mean spelled as one of the reducers, or
        a sum reducer divided by n / multiplied by 1/n; else None."""
        node = self.producer.get(name)
        if is_op(node, *reducers):
            axes = self.reduce_axes(node)
            return None if axes is None else (node, node.input[0], axes, [node])
        if is_op(node, "Div", "Mul") and len(node.input) == 2:
            for s_name, c_name in ((node.input[0], node.input[1]),) + \
                    (((node.input[1], node.input[0]),) if node.op_type == "Mul" else ()):
                inner = []
                s = self.producer.get(self.view_source(s_name, inner))
                if not is_op(s, *sum_reducers):
                    continue
                axes = self.reduce_axes(s)
                if axes is None:
                    continue
                n = self.count(s.input[0], axes)
                if self._is_count(c_name, n, inverse=node.op_type == "Mul"):
                    return s, s.input[0], axes, [node] + inner + [s]
        return None

    def read_mean(self, name, nodes):
        """(X, axes) if `name` holds the mean of X over axes (any spelling), else None."""
        inner = []
        found = self.read_mean_of(self.view_source(name, inner), inner)
        if found is None:
            return None
        _, src, axes, red = found
        nodes += inner + red
        return self.data(src, nodes), axes

    def read_centred(self, name, nodes):
        """(X, axes) if `name` is X - mean(X, axes) with the mean lined up with X, else None."""
        inner = []
        sub = self.producer.get(self.data(name, inner))
        if not is_op(sub, "Sub") or len(sub.input) != 2:
            return None
        inner.append(sub)
        x = self.data(sub.input[0], inner)
        mean = self.read_mean(sub.input[1], inner)
        if mean is None or not self.same_values(mean[0], x) or not self.lines_up(sub.input[1], x, mean[1]):
            return None
        nodes += inner
        return x, mean[1]

    def read_square(self, name, nodes):
        """v if `name` is Pow(v, 2) or Mul(v, v) (identity Casts aside), else None."""
        node = self.producer.get(name)
        if is_op(node, "Pow") and len(node.input) == 2:
            if self.scalar(node.input[1]) == 2.0:
                nodes.append(node)
                return node.input[0]
            self.why = f"{node.name!r}: the exponent {node.input[1]!r} is not a constant 2"
        if is_op(node, "Mul") and len(node.input) == 2:
            a, b = self.data(node.input[0], []), self.data(node.input[1], [])
            if a == b:
                nodes.append(node)
                self.data(node.input[0], nodes)
                self.data(node.input[1], nodes)
                return a
        return None

    def read_second_moment(self, name, nodes):
        """Moment if `name` is the mean of a square (centred or raw), any spelling; else None."""
        inner = []
        name = self.view_source(name, inner)
        found = self.read_mean_of(name, inner)
        squared = None
        if found is not None:
            _, src, axes, red = found
            inner += red
            squared = self.read_square(self.data(src, inner), inner)
        else:
            found = self.read_mean_of(name, inner, reducers=(), sum_reducers=("ReduceSumSquare",))
            if found is not None:
                _, squared, axes, red = found
                inner += red
            else:
                found = self._read_l2_squared_mean(name, inner)
                if found is not None:
                    squared, axes = found
        if squared is None:
            return None
        centred = self.read_centred(squared, inner)
        if centred is not None:
            x, mean_axes = centred
            if tuple(mean_axes) != tuple(axes):
                self.why = (f"the mean is over axes {list(mean_axes)}, the variance over {list(axes)}: "
                            f"statistics that do not line up")
                return None
            nodes += inner
            return Moment("centred", x, tuple(axes))
        nodes += inner
        return Moment("raw", self.data(squared, nodes), tuple(axes))

    def _read_l2_squared_mean(self, name, nodes):
        """(v, axes) for ReduceL2(v, axes)² / n (or * 1/n), else None."""
        node = self.producer.get(name)
        if not is_op(node, "Div", "Mul") or len(node.input) != 2:
            return None
        for sq_name, c_name in ((node.input[0], node.input[1]),) + \
                (((node.input[1], node.input[0]),) if node.op_type == "Mul" else ()):
            inner = [node]
            base = self.read_square(self.view_source(sq_name, inner), inner)
            l2 = self.producer.get(self.view_source(base, inner)) if base else None
            if not is_op(l2, "ReduceL2"):
                continue
            axes = self.reduce_axes(l2)
            if axes is None:
                continue
            if self._is_count(c_name, self.count(l2.input[0], axes), inverse=node.op_type == "Mul"):
                nodes += inner + [l2]
                return l2.input[0], axes
        return None

    # -- standard deviations -------------------------------------------------
    def read_shifted(self, name, nodes):
        """(Moment, eps) if `name` is m2 + eps (eps a constant >= 0) or m2 itself (eps 0), else None."""
        inner = []
        name = self.view_source(name, inner)
        node = self.producer.get(name)
        if is_op(node, "Add") and len(node.input) == 2:
            for m_name, e_name in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
                eps = self.scalar(e_name)
                if eps is None:
                    if self.read_second_moment(m_name, []) is not None:
                        self.why = f"epsilon {e_name!r} is not a one-element constant"
                    continue
                moment = self.read_second_moment(m_name, inner + [node])
                if moment is not None:
                    if not (np.isfinite(eps) and eps >= 0):
                        self.why = f"epsilon {eps} (needs a finite value >= 0)"
                        return None
                    nodes += inner + [node]
                    self.read_second_moment(m_name, nodes)
                    return moment, eps
            return None
        moment = self.read_second_moment(name, inner)
        if moment is None:
            return None
        nodes += inner
        return moment, 0.0

    def read_std(self, name, nodes):
        """(Moment, eps) if `name` is sqrt(m2 + eps), else None."""
        inner = []
        node = self.producer.get(self.view_source(name, inner))
        if is_op(node, "Sqrt"):
            arg = node.input[0]
        elif is_op(node, "Pow") and len(node.input) == 2 and self.scalar(node.input[1]) == 0.5:
            arg = node.input[0]
        else:
            return None
        found = self.read_shifted(arg, inner + [node])
        if found is not None:
            nodes += inner + [node]
            self.read_shifted(arg, nodes)
        return found

    def read_inverse_std(self, name, nodes):
        """(Moment, eps, c) if `name` is c / sqrt(m2 + eps) with a constant c, else None."""
        inner = []
        node = self.producer.get(self.view_source(name, inner))
        inner.append(node)
        if is_op(node, "Reciprocal"):
            found, c = self.read_std(node.input[0], inner), 1.0
        elif is_op(node, "Div") and len(node.input) == 2 and self.scalar(node.input[0]) is not None:
            found, c = self.read_std(node.input[1], inner), self.scalar(node.input[0])
        elif is_op(node, "Pow") and len(node.input) == 2 and self.scalar(node.input[1]) == -0.5:
            found, c = self.read_shifted(node.input[0], inner), 1.0
        elif is_op(node, "Sqrt"):
            inv = self.producer.get(self.view_source(node.input[0], inner))
            inner.append(inv)
            if is_op(inv, "Reciprocal"):
                found = self.read_shifted(inv.input[0], inner)
            elif is_op(inv, "Div") and len(inv.input) == 2 and self.scalar(inv.input[0]) == 1.0:
                found = self.read_shifted(inv.input[1], inner)
            else:
                found = None
            c = 1.0
        else:
            return None
        if found is None:
            return None
        nodes += [n for n in inner if n is not None]
        return found[0], found[1], c

    def reduces_upstream(self, name, depth=8):
        """Whether a Reduce* node feeds `name` within `depth` nodes (a statistic, maybe misspelled)."""
        todo, seen = [(name, 0)], set()
        while todo:
            n, d = todo.pop()
            node = self.producer.get(n)
            if node is None or id(node) in seen or d > depth:
                continue
            seen.add(id(node))
            if node.op_type.startswith("Reduce"):
                return True
            todo += [(i, d + 1) for i in node.input if i]
        return False

    def lines_up(self, stat_name, x, axes):
        """Whether the statistic `stat_name` broadcasts against X as one value per kept position:
        its shape is X's with the reduced axes 1 (keepdims), or X's own shape (an Expand)."""
        s, xs = self.ctx.shape(stat_name), self.ctx.shape(x)
        if s is None or xs is None or len(s) != len(xs):
            return False
        for i, (d, dx) in enumerate(zip(s, xs)):
            if i in axes:
                if d != 1 and d != dx:
                    return False
            elif d != dx and not (isinstance(d, int) and d == 1 and dx == 1):
                return False
        if any(i in axes and d != 1 for i, d in enumerate(s)):
            # expanded statistics are the full tensor: only an Expand makes that
            return self.ctx.shape(stat_name) == xs
        return True
