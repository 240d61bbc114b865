"""Shape vectors computed at run time, evaluated symbolically at load: an element of a Shape's
output is its value's dim, known to shape inference by value or by dim_param name, else named by
the value and axis (`Dim`: an int times a product of such dims).

A dynamic-axes export computes the targets of its Expands and Reshapes from shapes (TorchScript:
Shape -> Gather -> Unsqueeze -> Concat, aten::expand's Where(s == -1, 1, s); dynamo: Shape(start,
end) of another input). `target_dims` evaluates such a vector element by element: Gather / Slice
/ Unsqueeze / Concat / Reshape ... move elements (run on the elements' positions, as
constant_folding's partial_shape_value picks known dims), Mul / Add / Div / Equal / Where compute
on them. `keeps_dim` proves that a value's dim is a given Dim (or that the Dim is 1), walking back
through elementwise ops (broadcasting, a Transpose's permutation followed). A pass then compares
a target's entries with the dims of the tensor it reshapes (attention_grouped_kv).
"""
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..executor import evaluate_node
from ._queries import is_op, node_attrs

MAX_ENTRIES = 16          # longer integer vectors are no shape vectors: not evaluated
MAX_WALK = 64             # values visited evaluating one target, or proving one dim
# ops that only move the elements of their first input (the others constant); Concat moves all
MOVES = ("Gather", "Slice", "Unsqueeze", "Squeeze", "Reshape", "Identity", "Flatten", "Transpose", "Expand",
         "Tile", "Concat")
INTEGER_TYPES = (TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT64,
                 TensorProto.UINT32, TensorProto.UINT16, TensorProto.UINT8)
# ops whose output has its input's dims, and ops broadcasting their inputs' dims (walked back
# proving a dim of k)
SAME_DIMS = ("Identity", "Cast", "CastLike", "Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Exp", "Sqrt", "Erf",
             "Reciprocal", "Softmax")
BROADCASTS = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Where")


@dataclass(frozen=True)
class Dim:
    """An integer: coef times the product of run-time dims (each >= 0), `factors` sorted keys:
    ("param", dim_param) or ("dim", value name, axis) for a dim inference knows no name of."""
    coef: int
    factors: tuple = ()

    def __mul__(self, other):
        return Dim(self.coef * other.coef, tuple(sorted(self.factors + other.factors)))

    @property
    def known(self):
        return not self.factors


ONE = Dim(1)


def value_dim(ctx, name, axis):
    """Dim `axis` of value `name` as a Dim (an int, its dim_param, or the value's own dim)."""
    shape = ctx.shape(name)
    d = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
    if isinstance(d, int) and d >= 0:
        return Dim(d)
    if isinstance(d, str) and d:
        return Dim(1, (("param", d),))
    return Dim(1, (("dim", name, axis % len(shape) if shape else axis),))


def _objects(items, shape):
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out.reshape(shape)


def _equal(a, b):
    if not isinstance(a, Dim) or not isinstance(b, Dim):
        return None
    if a == b:
        return True
    if a.known and b.known:
        return False
    sym, n = (a, b) if b.known else (b, a)
    if n.known and (sym.coef >= 0 > n.coef or sym.coef <= 0 < n.coef):
        return False          # a product of dims has the sign of its coefficient
    return None


def _add(a, b, sign=1):
    if not isinstance(a, Dim) or not isinstance(b, Dim):
        return None
    if a.known and b.known:
        return Dim(a.coef + sign * b.coef)
    if b == Dim(0):
        return a
    return None


def _div(a, b):
    """a / b when exact (ONNX's integer Div truncates: an exact quotient is what it gives)."""
    if not isinstance(a, Dim) or not isinstance(b, Dim) or b.coef == 0 or a.coef % b.coef:
        return None
    rest = list(a.factors)
    for f in b.factors:
        if f not in rest:
            return None
        rest.remove(f)
    return Dim(a.coef // b.coef, tuple(rest))


ARITHMETIC = {
    "Mul": (2, lambda a, b: a * b if isinstance(a, Dim) and isinstance(b, Dim) else None),
    "Add": (2, _add),
    "Sub": (2, lambda a, b: _add(a, b, -1)),
    "Div": (2, _div),
    "Equal": (2, _equal),
    "Where": (3, lambda c, a, b: (a if c else b) if isinstance(c, bool) else None),
}


def target_dims(ctx, name, _seen=None):
    """The integer vector `name` (a Reshape's or Expand's target) as an object array of Dims
    (bools for comparisons) in its shape, or None where an element is not known in these terms."""
    seen = {} if _seen is None else _seen
    if name in seen:
        return seen[name]
    if len(seen) >= MAX_WALK:
        return None
    seen[name] = None           # a cycle reads None
    seen[name] = out = _evaluate(ctx, name, seen)
    return out


def _evaluate(ctx, name, seen):
    if ctx.is_constant(name):
        v = np.asarray(ctx.constants[name])
        if v.dtype.kind not in "iub" or v.size > MAX_ENTRIES:
            return None
        return _objects([bool(i) if v.dtype.kind == "b" else Dim(int(i)) for i in v.reshape(-1)], v.shape)
    node = ctx.producer().get(name)
    if node is None or not is_op(node, node.op_type):
        return None
    attrs, reason = node_attrs(node)
    if reason:
        return None
    if node.op_type == "Shape":
        shape = ctx.shape(node.input[0])
        if shape is None:
            return None
        axes = range(len(shape))[slice(attrs.get("start", 0), attrs.get("end", len(shape)))]
        return _objects([value_dim(ctx, node.input[0], a) for a in axes], (len(axes),))
    if node.op_type == "ConstantOfShape":     # torch's ones_like(size), unless folded already
        shape = target_dims(ctx, node.input[0], seen)
        fill = np.asarray(attrs.get("value", np.zeros(1, np.float32))).reshape(-1)
        if shape is None or fill.dtype.kind not in "iu" or \
                not all(isinstance(e, Dim) and e.known and e.coef >= 0 for e in shape.reshape(-1)):
            return None
        shape = tuple(e.coef for e in shape.reshape(-1))
        return _objects([Dim(int(fill[0]))] * int(np.prod(shape)), shape) if np.prod(shape) <= MAX_ENTRIES else None
    if node.op_type == "Cast" and attrs.get("to") in INTEGER_TYPES:
        return target_dims(ctx, node.input[0], seen)
    if node.op_type in MOVES:
        return _moved(ctx, node, seen)
    if node.op_type in ARITHMETIC and len(node.input) == ARITHMETIC[node.op_type][0]:
        args = [target_dims(ctx, i, seen) for i in node.input]
        if any(a is None for a in args):
            return None
        arity, f = ARITHMETIC[node.op_type]
        out = np.asarray(np.frompyfunc(f, arity, 1)(*args), dtype=object)
        return None if any(e is None for e in out.reshape(-1)) else out
    return None


def _moved(ctx, node, seen):
    """A node moving elements: run on the elements' positions, then picked from them."""
    data = range(len(node.input)) if node.op_type == "Concat" else (0,)
    pool, args = [], []
    for i, name in enumerate(node.input):
        if not name:
            args.append(None)
        elif i in data:
            elements = target_dims(ctx, name, seen)
            if elements is None:
                return None
            args.append(np.arange(len(pool), len(pool) + elements.size, dtype=np.int64).reshape(elements.shape))
            pool += list(elements.reshape(-1))
        elif ctx.is_constant(name):
            args.append(ctx.constants[name])
        else:
            return None
    try:
        (picked,), _ = evaluate_node(node, ctx.opsets, args)
    except Exception:  # noqa: BLE001 - an invalid index: run time names the error
        return None
    picked = np.asarray(picked)
    if picked.size > MAX_ENTRIES:
        return None
    return _objects([pool[i] for i in picked.reshape(-1)], picked.shape)


def keeps_dim(ctx, name, axis, size, _walk=None):
    """Whether dim `axis` of value `name` is `size` or `size` is 1 (so an Expand to `size` leaves
    that axis as it is): the same Dim, or through elementwise producers whose broadcast output
    dim is the dim of an input that is `size` (or `size` is 1)."""
    walk = [0] if _walk is None else _walk
    if size == ONE or value_dim(ctx, name, axis) == size:
        return True
    walk[0] += 1
    node = ctx.producer().get(name)
    shape = ctx.shape(name)
    if walk[0] > MAX_WALK or node is None or shape is None or not is_op(node, node.op_type):
        return False
    axis %= len(shape)
    if node.op_type in SAME_DIMS:
        return keeps_dim(ctx, node.input[0], axis, size, walk)
    if node.op_type == "Transpose":
        attrs, reason = node_attrs(node)
        perm = list((attrs or {}).get("perm") or range(len(shape))[::-1])
        return not reason and len(perm) == len(shape) and keeps_dim(ctx, node.input[0], perm[axis], size, walk)
    if node.op_type in BROADCASTS:
        for i in node.input:
            rank = len(ctx.shape(i)) if i and ctx.shape(i) is not None else -1
            j = axis - (len(shape) - rank)
            if rank >= 0 and j >= 0 and keeps_dim(ctx, i, j, size, walk):
                return True
    return False
