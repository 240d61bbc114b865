"""Statistics written out with ReduceMean, recognized exactly (adain.py; mvn_decomposed.py uses mean_axes).

A statistic of a tensor X of shape (N, C, *spatial) over its spatial axes, as
exporters write it, is one of

    mean   ReduceMean(src, spatial axes)
    std    Sqrt(Add(var, eps))
    var    ReduceMean(Mul(d, d) or Pow(d, 2), axes)      d = Sub(src, ReduceMean(src, axes, keepdims=1))
           unbiased: Div(Mul(var, n), n - 1) with n, n - 1 constants equal to the group size,
                     or (legacy exporter) n = Cast(ReduceProd(Gather(Shape(src), axes))), n - 1 = Sub(n, 1)

where src is X itself reduced over axes 2..r-1, or a Reshape of X (e.g. view(N,
C, -1)) whose trailing reduced axes hold exactly X's spatial elements. Between
these nodes any number of layout ops may sit (Reshape to a constant shape,
Unsqueeze, Squeeze, a Cast between float types), and an Expand may come last: every such value
holds the N*C statistics in row-major (n, c) order (the Adds/Muls with constants
use one-element constants), so whether it lines up with X is decided by its shape
at the point of use (`per_channel_shape_reason`).

src may be X (or its view) widened by exact Casts (float16 -> float32): torch's float16
`.var()` / `.std()` (dynamo exporter) compute from Cast(X, float) and Cast the statistic
back down; it is a statistic of X's values all the same (`_dataflow.EXACT_WIDENING`).
"""
from dataclasses import dataclass, field

import numpy as np

from .._graph import decode_attributes
from ._dataflow import EXACT_WIDENING
from ._queries import KERNEL_DTYPES, is_op, other_input, scalar

LAYOUT = ("Reshape", "Unsqueeze", "Squeeze", "Cast")


@dataclass
class Stat:
    kind: str                 # "mean", "var" or "std"
    x: str                    # the tensor whose statistic it is
    nodes: list = field(default_factory=list)
    eps: float = None         # std: added to the variance
    unbiased: bool = False    # var/std: divided by n - 1
    expanded: bool = False


def static(shape):
    return shape is not None and all(isinstance(d, int) for d in shape)


def mean_axes(ctx, node):
    """(sorted non-negative axes, keepdims) of a ReduceMean, or a reason (str)."""
    try:
        attrs = decode_attributes(node)
    except ValueError as e:
        return f"attribute not constant: {e}"
    shape = ctx.shape(node.input[0])
    if shape is None:
        return f"rank of {node.input[0]!r} unknown"
    rank = len(shape)
    if len(node.input) > 1 and node.input[1]:
        v = ctx.constants.get(node.input[1])
        if v is None:
            return f"{node.name!r}: axes are not a constant"
        axes = [int(a) for a in np.asarray(v).reshape(-1)]
    else:
        axes = attrs.get("axes")
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return f"{node.name!r}: empty axes with noop_with_empty_axes=1"
        axes = list(range(rank))
    if not all(-rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        return f"{node.name!r}: axes {axes} invalid for rank {rank}"
    return sorted(a % rank for a in axes), int(attrs.get("keepdims", 1))


def group_source(ctx, g, src, axes):
    """(x, [reshape node] or []) if reducing `src` over `axes` gives X's per-(n, c) groups, else a reason."""
    shape = ctx.shape(src)
    if shape is None:
        return f"rank of {src!r} unknown"
    rank = len(shape)
    if not axes or axes != list(range(axes[0], rank)) or axes[0] < 1:
        return f"reduction of {src!r} over axes {axes} (not trailing axes)"
    k = axes[0]
    reshape = g.prod(src, "Reshape")
    if reshape is not None and reshape.input[1] in ctx.constants:
        x = reshape.input[0]
        xs = ctx.shape(x)
        if static(xs) and static(shape) and len(xs) >= 3 and \
                int(np.prod(shape[k:])) == int(np.prod(xs[2:])) and \
                int(np.prod(shape[:k])) == xs[0] * xs[1]:
            return x, [reshape]
    if k != 2 or rank < 3:
        return f"reduction of {src!r} over axes {axes} (statistics per (n, c) reduce axes 2..{rank - 1})"
    return src, []


def _cast_types(ctx, node):
    """(from, to) element types of a Cast."""
    return ctx.elem_type(node.input[0]), decode_attributes(node).get("to")


def widened_source(ctx, g, name, nodes):
    """`name` with exact widening Casts (float16 -> float32, ...) stripped going back: the same values."""
    while True:
        node = g.producer.get(name)
        if not is_op(node, "Cast") or len(node.input) != 1 or _cast_types(ctx, node) not in EXACT_WIDENING:
            return name
        nodes.append(node)
        name = node.input[0]


def strip_layout(ctx, g, name, nodes, allow_expand=False):
    """`name` with layout ops (and a last Expand if allowed) stripped going backwards."""
    node = g.producer.get(name)
    if allow_expand and is_op(node, "Expand"):
        nodes.append(node)
        name = node.input[0]
    while True:
        node = g.producer.get(name)
        if not is_op(node, *LAYOUT):
            return name
        if node.op_type == "Cast":
            # a statistic kept at another float precision is the same statistic
            if not g.is_identity_cast(node) and not all(t in KERNEL_DTYPES for t in _cast_types(ctx, node)):
                return name
        elif node.op_type == "Reshape" and node.input[1] not in ctx.constants:
            return name
        elif len(node.input) > 1 and node.input[1] and node.input[1] not in ctx.constants:
            return name
        nodes.append(node)
        name = node.input[0]


def mean(ctx, g, name, allow_expand=True):
    """Stat(kind='mean') if `name` is a per-(n, c) mean, else a reason."""
    nodes = []
    name = strip_layout(ctx, g, name, nodes, allow_expand)
    red = g.prod(name, "ReduceMean")
    if red is None:
        return f"{name!r} is not a ReduceMean"
    ax = mean_axes(ctx, red)
    if isinstance(ax, str):
        return ax
    widening = []
    src = group_source(ctx, g, widened_source(ctx, g, red.input[0], widening), ax[0])
    if isinstance(src, str):
        return src
    x, extra = src
    return Stat("mean", x, nodes + [red] + widening + extra)


def _group_size(ctx, x):
    xs = ctx.shape(x)
    return int(np.prod(xs[2:])) if static(xs) else None


def _count_nodes(ctx, g, name, src, axes):
    """Nodes of n = Cast(ReduceProd(Gather(Shape(src), axes))) (legacy exporter), or a reason."""
    cast = g.prod(name, "Cast")
    prod = cast and g.prod(cast.input[0], "ReduceProd")
    gather = prod and g.prod(prod.input[0], "Gather")
    shape = gather and g.prod(gather.input[0], "Shape")
    if shape is None:
        return f"{name!r} is neither a constant nor Cast(ReduceProd(Gather(Shape(...))))"
    if shape.input[0] != src:
        return f"the count {name!r} is the shape of {shape.input[0]!r}, not of {src!r}"
    try:
        sattrs, gattrs, pattrs = (decode_attributes(n) for n in (shape, gather, prod))
    except ValueError as e:
        return f"attribute not constant: {e}"
    if sattrs.get("start", 0) != 0 or sattrs.get("end") is not None:
        return f"{shape.name!r}: Shape with start/end"
    if gattrs.get("axis", 0) != 0:
        return f"{gather.name!r}: Gather axis {gattrs.get('axis')}"
    idx = ctx.constants.get(gather.input[1])
    rank = len(ctx.shape(src))
    if idx is None or idx.ndim != 1 or sorted(int(i) % rank for i in idx) != axes:
        return f"{gather.name!r}: the count multiplies dims {None if idx is None else idx.tolist()}, not {axes}"
    if (len(prod.input) > 1 and prod.input[1]) or pattrs.get("axes") or pattrs.get("keepdims", 1) != 0:
        return f"{prod.name!r}: ReduceProd must take all of its (1-D) input with keepdims=0"
    if decode_attributes(cast).get("to") != ctx.elem_type(src):
        return f"{cast.name!r}: the count is cast to another type"
    return [shape, gather, prod, cast]


def variance(ctx, g, name):
    """Stat(kind='var') of the population or unbiased variance per (n, c), else a reason."""
    nodes = []
    name = strip_layout(ctx, g, name, nodes)
    unbiased = False
    div = g.prod(name, "Div")
    if div is not None:
        mul = g.prod(div.input[0], "Mul")
        if mul is None:
            return f"{div.name!r} does not divide a product (var * n / (n - 1))"
        red_name = None
        for cand in mul.input:
            inner = []
            base = strip_layout(ctx, g, cand, inner)
            if g.prod(base, "ReduceMean") is not None:
                red_name, count = cand, other_input(mul, cand)
                nodes += [div, mul] + inner
                break
        if red_name is None:
            return f"{mul.name!r} does not scale a ReduceMean"
        name = strip_layout(ctx, g, red_name, nodes)
        unbiased = (count, div.input[1])
    red = g.prod(name, "ReduceMean")
    if red is None:
        return f"{name!r} is not a ReduceMean"
    ax = mean_axes(ctx, red)
    if isinstance(ax, str):
        return ax
    axes = ax[0]
    sq = g.prod(red.input[0], "Mul", "Pow")
    if sq is None:
        return f"{red.name!r} does not average a square"
    d = sq.input[0]
    if sq.op_type == "Mul" and sq.input[1] != d:
        return f"{sq.name!r} is not a square"
    if sq.op_type == "Pow" and scalar(ctx, sq.input[1], 8) != 2.0:
        return f"{sq.name!r} is not a square"
    sub = g.prod(d, "Sub")
    if sub is None:
        return f"{d!r} is not a deviation from the mean"
    src = sub.input[0]
    inner = g.prod(sub.input[1], "ReduceMean")
    if inner is None or inner.input[0] != src:
        return f"{sub.name!r} does not subtract a mean of {src!r}"
    iax = mean_axes(ctx, inner)
    if isinstance(iax, str):
        return iax
    if iax != (axes, 1):
        return f"{inner.name!r}: the inner mean is over axes {iax[0]} keepdims={iax[1]}, the variance over {axes}"
    if red.input[0] != sq.output[0]:
        return "the variance does not reduce the square"
    widening = []
    grp = group_source(ctx, g, widened_source(ctx, g, src, widening), axes)
    if isinstance(grp, str):
        return grp
    x, extra = grp
    nodes += [red, sq, sub, inner] + widening + extra
    if unbiased:
        count, count_m1 = unbiased
        n_const, m1_const = scalar(ctx, count, 8), scalar(ctx, count_m1, 8)
        if n_const is not None or m1_const is not None:
            L = _group_size(ctx, x)
            if L is None:
                return f"shape of {x!r} not static: cannot check the count constants"
            if n_const != float(L) or m1_const != float(L - 1):
                return f"var * {n_const} / {m1_const} is not the unbiased variance of groups of {L}"
        else:
            cnodes = _count_nodes(ctx, g, count, src, axes)
            if isinstance(cnodes, str):
                return cnodes
            sub1 = g.prod(count_m1, "Sub")
            if sub1 is None or sub1.input[0] != count or scalar(ctx, sub1.input[1], 8) != 1.0:
                return f"{count_m1!r} is not {count!r} - 1"
            nodes += cnodes + [sub1]
        unbiased = True
    return Stat("var", x, nodes, unbiased=unbiased)


def std(ctx, g, name, allow_expand=True):
    """Stat(kind='std') for sqrt(var + eps) per (n, c), else a reason."""
    nodes = []
    name = strip_layout(ctx, g, name, nodes, allow_expand)
    sqrt = g.prod(name, "Sqrt")
    if sqrt is None:
        return f"{name!r} is not a Sqrt"
    nodes.append(sqrt)
    name = strip_layout(ctx, g, sqrt.input[0], nodes)
    add = g.prod(name, "Add")
    if add is None:
        return f"{sqrt.name!r}: no eps added to the variance"
    eps = var = None
    for cand in add.input:
        e = scalar(ctx, other_input(add, cand) or "", 8)
        if e is not None:
            var = variance(ctx, g, cand)
            eps = e
            if not isinstance(var, str):
                break
    if var is None:
        return f"{add.name!r} does not add a constant eps"
    if isinstance(var, str):
        return var
    if not (np.isfinite(eps) and eps >= 0):
        return f"eps {eps} (needs a finite value >= 0)"
    return Stat("std", var.x, nodes + [add] + var.nodes, eps=eps, unbiased=var.unbiased)


def per_channel_shape_reason(ctx, name, x_shape):
    """Why `name` (holding N*C statistics in (n, c) order) does not line up with X per (n, c), or None."""
    shape = ctx.shape(name)
    if not static(shape):
        return f"shape of {name!r} not static"
    if len(shape) != len(x_shape) or tuple(shape[:2]) != tuple(x_shape[:2]) or \
            any(s not in (1, d) for s, d in zip(shape[2:], x_shape[2:])):
        return f"{name!r} of shape {list(shape)} is not one value per (n, c) of X {list(x_shape)}"
    return None


def float_attr_reason(label, value):
    """Why `value` cannot become a float attribute (float32) of a normrt node without changing it, or None.

    Constants of a float32 graph always can; a float64 graph's 1e-5 cannot (float32(1e-5) != 1e-5).
    """
    if float(np.float32(value)) != float(value):
        return f"{label} {value!r} is not exactly a float32 (normrt float attributes are float32)"
    return None
