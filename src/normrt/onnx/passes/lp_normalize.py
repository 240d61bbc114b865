"""torch.nn.functional.normalize as the exporters write it -> normrt::LpNorm with epsilon.

    X ──┬──────────────────────────────────────────────────────────────► Div(X, ·) ──► Y
        ├──► ReduceL2(axes=[a], keepdims=1) ──► Clip(min=eps) ──► Expand ──┘
        │    (ReduceL1 for p=1)                 (or Max(·, eps))    ▲  (Expand optional)
        └──► Shape ─────────────────────────────────────────────────┘  legacy: Shape(X);
                                                                        dynamo: X's static shape
    ==>  X ──► normrt::LpNorm(p=2 or 1, axis=a, epsilon=eps) ──► Y
         (eps 0: normrt::LpNorm(p, axis=a, nan_on_zero=1))

torch's formula is x / max(||x||_p, eps) (eps = 1e-12 by default); ONNX
LpNormalization has no eps, so the epsilon attribute of normrt::LpNorm carries it
(the kernel divides by max(norm, epsilon)). An eps of 0 - float16's 1e-12, which
rounds to 0 - makes the model's divisor the plain norm, so a zero vector is 0 / 0,
NaN: nan_on_zero=1 keeps that (the kernel's default gives ONNX's zeros).

Refused (reason in the report):
- more than one reduced axis, keepdims=0, axes not constant;
- Clip with a max, or a min that is not a constant scalar >= 0; Max with anything
  but such a constant;
- an Expand whose shape is neither Shape(X) nor a constant that leaves X's shape as it
  is (or a Shape with start/end); a Div that would broadcast X up;
- a middle value read elsewhere or a graph output;
- element types other than float32/float64/float16/bfloat16.
- a float64 constant that a float32 attribute cannot hold exactly (it would change results).
"""
from dataclasses import dataclass

import numpy as np

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import Graph, chain_nodes_reason, dtype_reason, fused_name, is_float, is_op
from ._queries import clip_bounds, node_attrs
from ._stats import float_attr_reason

PATTERN = "F.normalize(ReduceL2/Clip/Expand/Div)"


@dataclass
class LpMatch:
    div: object
    reduce: object
    clip: object
    expand: object = None
    shape: object = None

    @property
    def nodes(self):
        return [n for n in (self.reduce, self.clip, self.shape, self.expand, self.div) if n is not None]


def clip_min(ctx, node):
    """(eps, None) for a Clip/Max that bounds its input below by a constant eps >= 0, or (None, reason)."""
    if is_op(node, "Max"):
        if len(node.input) != 2:
            return None, f"{node.name!r}: Max of {len(node.input)} inputs"
        other = node.input[1]
        v = ctx.constants.get(other)
    else:
        bounds = clip_bounds(ctx, node)       # (activation_epilogue's reading of Clip's bounds)
        if isinstance(bounds, str):
            return None, bounds
        lo, hi = bounds
        if hi is not None:
            return None, f"{node.name!r}: Clip with max={hi}"
        if lo is None:
            return None, f"{node.name!r}: Clip without a min"
        v = np.float64(lo)
    if v is None:
        return None, f"{node.name!r}: the lower bound is not a constant"
    v = np.asarray(v)
    if v.size != 1 or not is_float(v.dtype):
        return None, f"{node.name!r}: the lower bound is not a float scalar"
    eps = float(v.reshape(()))
    if not eps >= 0.0 or not np.isfinite(eps):
        return None, f"{node.name!r}: lower bound {eps} (needs a finite eps >= 0)"
    return eps, None


def single_axis(ctx, node, rank):
    """(axis, None) of a keepdims=1 ReduceL2/ReduceL1 over one constant axis, or (None, reason)."""
    attrs, reason = node_attrs(node)
    if reason:
        return None, reason
    if attrs.get("keepdims", 1) != 1:
        return None, f"{node.name!r}: keepdims=0"
    if len(node.input) > 1 and node.input[1]:
        v = ctx.constants.get(node.input[1])
        if v is None:
            return None, f"{node.name!r}: axes are not a constant"
        axes = [int(a) for a in np.asarray(v).reshape(-1)]
    else:
        axes = attrs.get("axes")
    if not axes or len(axes) != 1:
        return None, f"{node.name!r}: reduces over axes {axes} (F.normalize reduces one axis)"
    a = axes[0]
    if not -rank <= a < rank:
        return None, f"{node.name!r}: axis {a} out of range for rank {rank}"
    return a % rank, None


class LpNormalize(GraphPass):
    name = "lp_normalize"

    def matches(self, ctx):
        g = Graph(ctx)
        for div in ctx.nodes:
            if not is_op(div, "Div") or len(div.input) != 2:
                continue
            x, d = div.input
            expand = shape = None
            node = g.prod(d, "Expand")
            if node is not None:
                expand = node
                shape = g.prod(node.input[1], "Shape")
                node = g.prod(node.input[0], "Clip", "Max")
            else:
                node = g.prod(d, "Clip", "Max")
            if node is None:
                continue
            reduce = g.prod(node.input[0], "ReduceL2", "ReduceL1")
            if reduce is None or reduce.input[0] != x:
                continue
            if shape is not None and shape.input[0] != x:
                shape = None
            yield LpMatch(div, reduce, node, expand, shape)

    def describe(self, m):
        return PATTERN, [n.name for n in m.nodes]

    def check(self, ctx, m):
        g = Graph(ctx)
        x = m.div.input[0]
        reason = chain_nodes_reason(g, m.nodes, m.div.output[0])
        if reason:
            return reason
        reason = dtype_reason(ctx, [x, m.div.output[0]])
        if reason:
            return reason
        x_shape = ctx.shape(x)
        if x_shape is None:
            return f"rank of {x!r} unknown"
        rank = len(x_shape)
        axis, reason = single_axis(ctx, m.reduce, rank)
        if reason:
            return reason
        eps, reason = clip_min(ctx, m.clip)
        if reason:
            return reason
        reason = float_attr_reason("eps", eps)
        if reason:
            return reason
        if m.expand is not None:
            if m.shape is not None:
                attrs, reason = node_attrs(m.shape)
                if reason:
                    return reason
                if attrs.get("start", 0) != 0 or attrs.get("end") is not None:
                    return f"{m.shape.name!r}: Shape with start/end"
            else:
                target = ctx.constants.get(m.expand.input[1])
                if target is None:
                    return f"{m.expand.name!r}: the Expand shape is neither Shape(X) nor a constant"
                if not all(isinstance(d, int) for d in x_shape):
                    return f"shape of {x!r} not static: cannot tell what the Expand does"
                norm_shape = list(x_shape)
                norm_shape[axis] = 1
                try:
                    out = np.broadcast_shapes(tuple(norm_shape), tuple(int(v) for v in target.reshape(-1)))
                except ValueError:
                    return f"{m.expand.name!r}: Expand to {target.tolist()} does not broadcast"
                if tuple(out) != tuple(x_shape):
                    return f"{m.expand.name!r}: Expand to {target.tolist()} changes X's shape {list(x_shape)}"
        y_shape = ctx.shape(m.div.output[0])
        if y_shape is not None and len(y_shape) != rank:
            return f"the Div broadcasts X of rank {rank} to rank {len(y_shape)}"
        if y_shape is not None and all(isinstance(d, int) for d in list(y_shape) + list(x_shape)) \
                and tuple(y_shape) != tuple(x_shape):
            return f"the Div broadcasts X {list(x_shape)} to {list(y_shape)}"
        m.info = {"p": 2 if m.reduce.op_type == "ReduceL2" else 1, "axis": axis, "eps": eps}
        return None

    def rewrite(self, ctx, m):
        info = m.info
        attrs = {"p": info["p"], "axis": info["axis"], "epsilon": info["eps"]}
        if info["eps"] == 0.0:
            attrs["nan_on_zero"] = 1      # the model's x / max(norm, 0): a zero vector is NaN
        new = make_node("LpNorm", [m.div.input[0]], [m.div.output[0]], fused_name(ctx, m.nodes, "LpNorm"),
                        **attrs)
        ctx.replace_nodes(m.nodes, [new])
        ctx.report.fused.append({
            "pass": self.name, "op": PATTERN, "pattern": PATTERN, "nodes": [n.name for n in m.nodes],
            "normrt_op": "LpNorm", "normrt_node": new.name, "kernel": NORM_OPS["LpNorm"].kernel,
            "activation": None, "residual": False,
        })
