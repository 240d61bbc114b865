"""Shared pieces of the decomposed-normalization fusions (layer_norm_decomposed, rms_norm_decomposed).

A decomposed normalization is a chain of elementwise ops and ReduceMeans. The
passes match its op skeleton backwards from the node that divides by the
standard deviation (`matches`), then prove in `check` that the chain computes
exactly the normalization (constants, axes, shapes, types, no middle value read
elsewhere). The helpers here read constants and ReduceMean axes, see through
identity Casts (Cast to the type the value already has: exporters put them
around the statistics), and absorb the affine tail (Mul by scale, Add bias).
"""
import os

import numpy as np
from onnx import TensorProto

from .._graph import canonical_domain, decode_attributes
from ._match import other_input  # noqa: F401 - re-exported for the passes using _chain

KERNEL_DTYPES = (TensorProto.FLOAT, TensorProto.DOUBLE)


def is_op(node, *op_types):
    return node is not None and canonical_domain(node.domain) == "" and node.op_type in op_types


class _DistinctReaders:
    """{value name: distinct nodes reading it}, read through to the context's live index."""

    def __init__(self, ctx):
        self.ctx = ctx

    def get(self, name, default=None):
        readers = self.ctx.readers(name)
        return readers if readers else ([] if default is None else default)


class _Present:
    """`id(node) in g.ids`: whether the node is in the graph now."""

    def __init__(self, ctx):
        self.ctx = ctx

    def __contains__(self, node_id):
        return node_id in self.ctx._node_of


class Graph:
    """Producer/consumer queries over the context's live use-def index (O(1) to build)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.producer = ctx.producer()
        self.consumers = _DistinctReaders(ctx)
        self.outputs = set(ctx.graph_outputs)
        self.ids = _Present(ctx)

    def prod(self, name, *op_types):
        """The node producing `name` if it is one of op_types (standard domain), else None."""
        node = self.producer.get(name)
        return node if is_op(node, *op_types) else None

    def is_identity_cast(self, node):
        if not is_op(node, "Cast") or len(node.input) != 1:
            return False
        to = decode_attributes(node).get("to")
        t_in = self.ctx.elem_type(node.input[0])
        return t_in != 0 and to == t_in

    def root(self, name, casts=None):
        """`name` with identity Casts stripped going backwards; the Casts are appended to `casts`."""
        while True:
            node = self.producer.get(name)
            if node is None or not self.is_identity_cast(node):
                return name
            if casts is not None:
                casts.append(node)
            name = node.input[0]

    def deep(self, name, casts, *op_types):
        """The op_types node producing `name`, looking through identity Casts (added to casts)."""
        found = []
        node = self.prod(self.root(name, found), *op_types)
        if node is not None:
            casts.extend(found)
        return node

    def single_reader(self, name):
        """(the one node reading `name` and the identity Casts passed on the way), or (None, [])."""
        casts = []
        while True:
            readers = self.consumers.get(name, [])
            if len(readers) != 1 or name in self.outputs:
                return None, []
            node = readers[0]
            if not self.is_identity_cast(node):
                return node, casts
            casts.append(node)
            name = node.output[0]


def constant(ctx, name):
    return ctx.constants.get(name) if name else None


def scalar(ctx, name, max_rank):
    """The float value of a 1-element constant of rank <= max_rank (it broadcasts to nothing), or None."""
    v = constant(ctx, name)
    if v is None or v.size != 1 or v.ndim > max_rank or v.dtype.kind not in "fiu":
        return None
    return float(v.reshape(-1)[0])


def reduce_axes(ctx, node, rank):
    """(sorted non-negative axes, None) of a keepdims ReduceMean, or (None, reason)."""
    try:
        attrs = decode_attributes(node)
    except ValueError as e:
        return None, f"attribute not constant: {e}"
    if attrs.get("keepdims", 1) != 1:
        return None, f"{node.name!r}: keepdims=0"
    if len(node.input) > 1 and node.input[1]:
        v = constant(ctx, node.input[1])
        if v is None:
            return None, f"{node.name!r}: axes {node.input[1]!r} are not a constant"
        axes = [int(a) for a in np.asarray(v).reshape(-1)]
    else:
        axes = attrs.get("axes")
        axes = None if axes is None else [int(a) for a in axes]
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return None, f"{node.name!r}: empty axes with noop_with_empty_axes=1"
        return list(range(rank)), None
    if not all(-rank <= a < rank for a in axes):
        return None, f"{node.name!r}: axes {axes} out of range for rank {rank}"
    norm = sorted({a % rank for a in axes})
    if len(norm) != len(axes):
        return None, f"{node.name!r}: duplicate axes {axes}"
    return norm, None


def trailing_axis(axes, rank):
    """a if axes are exactly [a, rank), else None."""
    if axes and axes == list(range(axes[0], rank)):
        return axes[0]
    return None


def dtype_reason(ctx, names):
    """Why these values do not all share one kernel dtype (float32/float64), or None."""
    types = {ctx.elem_type(n) for n in names}
    if 0 in types:
        unknown = [n for n in names if ctx.elem_type(n) == 0]
        return f"element type of {unknown[0]!r} is unknown"
    if len(types) > 1:
        return "values of mixed element types"
    (t,) = types
    if t not in KERNEL_DTYPES:
        return f"element type {TensorProto.DataType.Name(t)} (kernels take float32/float64)"
    return None


def param_shape(ctx, name, x_shape, axis):
    """The shape to give a scale/bias operand so it broadcasts over X's axes [axis, rank) only.

    Returns (new shape or None if it can stay as it is, None) or (None, reason).
    The operand must change nothing about X's shape (no broadcasting X up) and
    hold one value per normalized element, or broadcast along them.
    """
    rank = len(x_shape)
    shape = ctx.shape(name)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None, f"shape of {name!r} unknown"
    if len(shape) > rank:
        return None, f"{name!r} of rank {len(shape)} > rank {rank} of X"
    stripped = list(shape)
    while len(stripped) > rank - axis and stripped[0] == 1:
        stripped.pop(0)
    if len(stripped) > rank - axis:
        return None, f"{name!r} of shape {list(shape)} varies along non-normalized axes"
    norm = x_shape[axis:]
    for d, n in zip(reversed(stripped), reversed(norm)):
        if d != 1 and d != n:
            return None, f"{name!r} of shape {list(shape)} does not broadcast to {list(norm)} without growing X"
    return (None if list(stripped) == list(shape) else tuple(stripped)), None


def chain_nodes_reason(g, inner, output, keep_outputs=()):
    """Why the chain `inner` (all but its output are middle values) can't be removed, or None.

    Every value a chain node writes, other than `output`, must be read only by
    chain nodes and be no graph output.
    """
    ids = {id(n) for n in inner}
    for node in inner:
        if id(node) not in g.ids:
            return f"node {node.name!r} already rewritten"
        for o in node.output:
            if not o or o == output or o in keep_outputs:
                continue
            if o in g.outputs:
                return f"middle value {o!r} is a graph output"
            for reader in g.consumers.get(o, []):
                if id(reader) not in ids:
                    return f"middle value {o!r} is also read by {reader.name!r} ({reader.op_type})"
    return None


def removable_casts(g, casts, chain):
    """The input-side identity Casts read only by the chain (the others stay for their readers)."""
    ids = {id(n) for n in chain}
    out, changed = [], True
    pending = list({id(c): c for c in casts}.values())
    while changed:
        changed = False
        for c in list(pending):
            o = c.output[0]
            if o not in g.outputs and all(id(r) in ids for r in g.consumers.get(o, [])):
                ids.add(id(c))
                out.append(c)
                pending.remove(c)
                changed = True
    return out


def in_graph_order(ctx, nodes):
    """The distinct `nodes` in graph order."""
    return ctx.in_graph_order(nodes)


def fused_name(ctx, nodes, suffix):
    """A node name for the fused node: the matched nodes' common '/scope/' + suffix."""
    prefix = os.path.commonprefix([n.name for n in nodes])
    prefix = prefix[:prefix.rfind("/") + 1] if "/" in prefix else ""
    return ctx.new_name(prefix + suffix)


def absorb_affine(ctx, g, value, x_shape, axis, dtype_names, with_bias):
    """Greedily take the affine tail after the normalized `value`.

        value ─► [identity Casts] ─► Mul(·, scale) ─► [identity Casts] ─► Add(·, bias)

    Each step is taken only if `value` has that one reader, the other operand
    broadcasts over the normalized axes only (param_shape) and has X's type.
    Returns dict(nodes, output, scale, scale_shape, bias, bias_shape).
    """
    out = {"nodes": [], "output": value, "scale": None, "scale_shape": None, "bias": None, "bias_shape": None}
    steps = [("Mul", "scale")] + ([("Add", "bias")] if with_bias else [])
    for op, key in steps:
        node, casts = g.single_reader(out["output"])
        if not is_op(node, op) or len(node.input) != 2:
            continue
        param = other_input(node, casts[-1].output[0] if casts else out["output"])
        if param is None:
            continue
        shape, reason = param_shape(ctx, param, x_shape, axis)
        if reason or dtype_reason(ctx, list(dtype_names) + [param]):
            continue
        if shape is not None and param not in ctx.constants:
            continue          # would need a Reshape at run time
        out["nodes"] += casts + [node]
        out["output"] = node.output[0]
        out[key], out[key + "_shape"] = param, shape
    return out


def param_input(ctx, name, shape, base):
    """The name the fused node reads for a scale/bias operand (reshaped if `shape` says so)."""
    if shape is None:
        return name
    value = ctx.constants.get(name)
    if value is None:
        return None
    return ctx.add_constant(base, np.asarray(value).reshape(shape))


class Stats:
    """The statistics half of a decomposed norm: 1/sqrt(ReduceMean(square(base)) + eps)."""

    def __init__(self):
        self.nodes = []          # Pow/Mul square, ReduceMean, Add eps, Sqrt, Reciprocal/Div/Pow
        self.casts = []          # identity Casts between them
        self.square = self.reduce = self.add = None
        self.base = None         # the value squared (as read by the square node)
        self.eps = None          # name of the epsilon operand
        self.constants = []      # (name, wanted value, what), checked by `stats_reason`
        self.epsilon = self.axis = None   # set by `stats_reason`


def _stats_from_denominator(g, name, stats):
    """Fill `stats` from the value that is sqrt(mean(square) + eps) -- or, if it is
    already Pow(var + eps, -0.5), from that (returns 'inverse' then); None if no match."""
    pw = g.deep(name, stats.casts, "Pow")
    inverse = False
    if pw is not None and len(pw.input) == 2:
        stats.nodes.append(pw)
        stats.constants.append((pw.input[1], -0.5, "the exponent of the inverse square root"))
        add_name = pw.input[0]
        inverse = True
    else:
        sqrt = g.deep(name, stats.casts, "Sqrt")
        if sqrt is None:
            return None
        stats.nodes.append(sqrt)
        add_name = sqrt.input[0]
    add = g.deep(add_name, stats.casts, "Add")
    if add is None or len(add.input) != 2:
        return None
    for var_name, eps_name in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        casts = []
        rm = g.deep(var_name, casts, "ReduceMean")
        if rm is not None and var_name != eps_name:
            stats.casts += casts
            break
    else:
        return None
    square = g.deep(rm.input[0], stats.casts, "Pow", "Mul")
    if square is None or len(square.input) != 2:
        return None
    if square.op_type == "Pow":
        stats.constants.append((square.input[1], 2.0, "the exponent of the square"))
    elif g.root(square.input[0]) != g.root(square.input[1]):
        return None
    stats.nodes += [add, rm, square]
    stats.square, stats.reduce, stats.add = square, rm, add
    stats.base, stats.eps = square.input[0], eps_name
    return "inverse" if inverse else "std"


def match_normalizer(g, node):
    """(numerator value, Stats) if `node` divides a value by sqrt(mean(square) + eps), else None.

        Div(n, std)  |  Mul(n, inv)  with  inv = Reciprocal(std) | Div(1, std) | Pow(var + eps, -0.5)
        std = Sqrt(Add(ReduceMean(Pow(b, 2) | Mul(b, b)), eps))
    """
    if is_op(node, "Div") and len(node.input) == 2:
        stats = Stats()
        if _stats_from_denominator(g, node.input[1], stats) == "std":
            stats.nodes.insert(0, node)
            return node.input[0], stats
        return None
    if not is_op(node, "Mul") or len(node.input) != 2:
        return None
    for n_name, inv_name in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        stats = Stats()
        inv = g.deep(inv_name, stats.casts, "Reciprocal", "Div", "Pow")
        if inv is None:
            continue
        if inv.op_type == "Pow":
            kind = _stats_from_denominator(g, inv_name, stats)
            if kind != "inverse":
                continue
        else:
            if inv.op_type == "Div":
                if len(inv.input) != 2:
                    continue
                stats.constants.append((inv.input[0], 1.0, "the numerator of the inverse"))
            kind = _stats_from_denominator(g, inv.input[-1], stats)
            if kind != "std":
                continue
            stats.nodes.insert(0, inv)
        stats.nodes.insert(0, node)
        return n_name, stats
    return None


def stats_reason(ctx, stats, rank):
    """Why the statistics are not those of a norm over trailing axes, or None.

    On success sets stats.epsilon (float) and stats.axis (first normalized axis).
    """
    for name, want, what in stats.constants:
        v = scalar(ctx, name, rank)
        if v is None:
            return f"{what} ({name!r}) is not a 1-element constant"
        if v != want:
            return f"{what} is {v}, not {want}"
    eps = scalar(ctx, stats.eps, rank)
    if eps is None:
        return f"epsilon ({stats.eps!r}) is not a 1-element constant"
    if not eps >= 0:
        return f"epsilon {eps} < 0"
    axes, reason = reduce_axes(ctx, stats.reduce, rank)
    if reason:
        return reason
    axis = trailing_axis(axes, rank)
    if axis is None:
        return f"{stats.reduce.name!r} reduces axes {axes}, not trailing axes [a, {rank})"
    stats.epsilon, stats.axis = eps, axis
    return None
