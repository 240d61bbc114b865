"""LayerNorm written out in elementary ops -> one normrt::LayerNorm.

What the legacy exporter writes for nn.LayerNorm below opset 17 (and what
hand-written layer norms look like at any opset):

         X ──────────────┬──────────────────────┐
         │               │                      │
         ▼               │                      │
    ReduceMean(axes) ──► Sub(X, mean) ─── d ────┼──────────────┐
                              │                 │              │
                              ▼                 │              │
                      Pow(d, 2) | Mul(d, d)     │              │
                              │                 │              │
                              ▼                 │              ▼
                      ReduceMean(axes)          │     Div(d, std)
                              │                 │       | Mul(d, Reciprocal(std))
                              ▼                 │       | Mul(d, Div(1, std))
                      Add(·, epsilon)           │       | Mul(d, Pow(var + eps, -0.5))
                              │                 │              │
                              ▼                 │              ▼
                      Sqrt ──── std ────────────┘     [Mul(·, scale)] ─► [Add(·, bias)] ─► Y

    ==>   X ─► normrt::LayerNorm(X, scale, bias; axis=a, epsilon) ─► Y

Identity Casts (to the type the value already has) may sit anywhere on these
edges, e.g. a Cast to float before the statistics and one back after; they are
absorbed (an input-side Cast other nodes also read is left for them). Mul by
scale and Add bias are taken when their operand broadcasts over the normalized
axes only; otherwise the norm is fused without them and they stay as they are.
ReduceMean axes may be an attribute (opset < 18) or a constant input (18+),
negative or not.

Refused (reason in the report): both ReduceMeans not over the same trailing
axes [a, rank) (the rank comes from shape inference: unknown rank refuses);
epsilon, the exponent 2, the 1 of Div(1, ·) not 1-element constants; a middle
value read by another node or a graph output; element types other than one of
float32/float64 throughout.
"""
from dataclasses import dataclass, field

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._chain import (Graph, absorb_affine, chain_nodes_reason, dtype_reason, fused_name, in_graph_order,
                     match_normalizer, param_input, reduce_axes, removable_casts, stats_reason, trailing_axis)


@dataclass
class Match:
    anchor: object               # the Div / Mul dividing d by the standard deviation
    x: str                       # X (identity Casts stripped)
    sub: object
    mean: object                 # ReduceMean of X
    stats: object                # _chain.Stats of d
    input_casts: list
    inner_casts: list
    plan: dict = field(default_factory=dict)   # filled by check


class LayerNormDecomposed(GraphPass):
    name = "layer_norm_decomposed"
    pattern = "decomposed LayerNorm"

    def matches(self, ctx):
        g = Graph(ctx)
        for node in ctx.nodes:
            m = self._match(g, node)
            if m is not None:
                yield m

    def _match(self, g, node):
        found = match_normalizer(g, node)
        if found is None:
            return None
        numerator, stats = found
        inner = list(stats.casts)
        sub = g.deep(numerator, inner, "Sub")
        if sub is None or len(sub.input) != 2:
            return None
        if g.root(stats.base, inner) != sub.output[0]:
            return None
        mean = g.deep(sub.input[1], inner, "ReduceMean")
        if mean is None:
            return None
        input_casts = []
        x = g.root(sub.input[0], input_casts)
        if g.root(mean.input[0], input_casts) != x:
            return None
        return Match(node, x, sub, mean, stats, input_casts, inner)

    def describe(self, m):
        return self.pattern, [n.name for n in [m.mean, m.sub] + m.stats.nodes]

    def check(self, ctx, m):
        g = Graph(ctx)
        shape = ctx.shape(m.x)
        if shape is None:
            return f"rank of X ({m.x!r}) unknown"
        rank = len(shape)
        core = [m.mean, m.sub] + m.stats.nodes
        reason = dtype_reason(ctx, [m.x] + [o for n in core for o in n.output if o])
        if reason:
            return reason
        reason = stats_reason(ctx, m.stats, rank)
        if reason:
            return reason
        axes, reason = reduce_axes(ctx, m.mean, rank)
        if reason:
            return reason
        if trailing_axis(axes, rank) != m.stats.axis:
            return (f"the mean ({m.mean.name!r}) is over axes {axes}, the variance "
                    f"({m.stats.reduce.name!r}) over [{m.stats.axis}, {rank})")
        tail = absorb_affine(ctx, g, m.anchor.output[0], shape, m.stats.axis, [m.x], with_bias=True)
        chain = core + m.inner_casts + tail["nodes"]
        reason = chain_nodes_reason(g, chain, tail["output"])
        if reason:
            return reason
        m.plan = {"tail": tail, "chain": chain, "shape": shape,
                  "removed": chain + removable_casts(g, m.input_casts, chain)}
        return None

    def rewrite(self, ctx, m):
        tail, rank = m.plan["tail"], len(m.plan["shape"])
        scale = param_input(ctx, tail["scale"], tail["scale_shape"], (tail["scale"] or "") + "_ln_scale")
        bias = param_input(ctx, tail["bias"], tail["bias_shape"], (tail["bias"] or "") + "_ln_bias")
        removed = in_graph_order(ctx, m.plan["removed"])
        new = make_node("LayerNorm", [m.x, scale or "", bias or ""], [tail["output"]],
                        fused_name(ctx, removed, "LayerNorm"), axis=m.stats.axis - rank,
                        epsilon=m.stats.epsilon)
        ctx.replace_nodes(removed, [new])
        ctx.report.fused.append({
            "pass": self.name, "op": self.pattern, "pattern": "-".join(n.op_type for n in removed),
            "nodes": [n.name for n in removed], "normrt_op": "LayerNorm", "normrt_node": new.name,
            "kernel": NORM_OPS["LayerNorm"].kernel, "activation": None, "residual": False,
        })
