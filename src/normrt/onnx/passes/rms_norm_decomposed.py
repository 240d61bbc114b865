"""RMSNorm written out in elementary ops -> one normrt::RMSNorm.

The forms exporters write for nn.RMSNorm before opset 23 and for the
hand-written RMSNorms of LLaMA and T5 (`transformers` modeling code):

    X ──┬──► Pow(X, 2) | Mul(X, X) ─► ReduceMean(axes) ─► Add(·, epsilon) ─► Sqrt ── std
        │                                                                          │
        │      dynamo, LLaMA:   Mul(X, Reciprocal(std))  ◄──────────────────────────┤
        │      legacy LLaMA:    Mul(X, Div(1, std))      ◄──────────────────────────┤
        │      T5:              Div(X, std)              ◄──────────────────────────┘
        │      (also Mul(X, Pow(mean + eps, -0.5)))
        └──────────────────────────► normalized ─► [Cast] ─► [Mul(·, scale)] ─► Y

    ==>   X ─► normrt::RMSNorm(X, scale; axis=a, epsilon) ─► Y

Identity Casts (to the type the value already has: LLaMA's `.to(float32)`
before the statistics and `.to(input_dtype)` after, on float32 models) are
absorbed; an input-side Cast other nodes also read stays for them. A Cast to
another type ends the chain: the norm is fused up to it and the Cast (and
whatever follows) stays. The Mul by scale is taken when its operand broadcasts
over the normalized axes only; otherwise it stays as it is.

A chain normalizing Sub(v, ReduceMean(v)) is a LayerNorm: it is left to
layer_norm_decomposed, and left alone if that pass refused it.

Refused (reason in the report): a ReduceMean not over trailing axes [a, rank)
(unknown rank refuses); epsilon, the exponents, the 1 of Div(1, ·) not 1-element
constants; a middle value read by another node or a graph output; element types
other than one of float32/float64 throughout.
"""
from dataclasses import dataclass, field

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._chain import (Graph, absorb_affine, chain_nodes_reason, dtype_reason, fused_name, in_graph_order,
                     match_normalizer, param_input, removable_casts, stats_reason)


@dataclass
class Match:
    anchor: object               # the Div / Mul dividing X by the root mean square
    x: str
    stats: object
    input_casts: list
    plan: dict = field(default_factory=dict)


class RMSNormDecomposed(GraphPass):
    name = "rms_norm_decomposed"
    pattern = "decomposed RMSNorm"

    def matches(self, ctx):
        g = Graph(ctx)
        for node in ctx.nodes:
            found = match_normalizer(g, node)
            if found is None:
                continue
            numerator, stats = found
            input_casts = []
            x = g.root(numerator, input_casts)
            if g.root(stats.base, input_casts) != x or self._centered(g, x):
                continue
            yield Match(node, x, stats, input_casts)

    @staticmethod
    def _centered(g, x):
        """x = Sub(v, ReduceMean(v)): a LayerNorm chain, left to layer_norm_decomposed (which refused it)."""
        sub = g.prod(x, "Sub")
        if sub is None or len(sub.input) != 2:
            return False
        mean = g.deep(sub.input[1], [], "ReduceMean")
        return mean is not None and g.root(mean.input[0]) == g.root(sub.input[0])

    def describe(self, m):
        return self.pattern, [n.name for n in m.stats.nodes]

    def check(self, ctx, m):
        g = Graph(ctx)
        shape = ctx.shape(m.x)
        if shape is None:
            return f"rank of X ({m.x!r}) unknown"
        rank = len(shape)
        core = list(m.stats.nodes)
        reason = dtype_reason(ctx, [m.x] + [o for n in core for o in n.output if o])
        if reason:
            return reason
        reason = stats_reason(ctx, m.stats, rank)
        if reason:
            return reason
        tail = absorb_affine(ctx, g, m.anchor.output[0], shape, m.stats.axis, [m.x], with_bias=False)
        chain = core + m.stats.casts + tail["nodes"]
        reason = chain_nodes_reason(g, chain, tail["output"])
        if reason:
            return reason
        m.plan = {"tail": tail, "shape": shape, "removed": chain + removable_casts(g, m.input_casts, chain)}
        return None

    def rewrite(self, ctx, m):
        tail, rank = m.plan["tail"], len(m.plan["shape"])
        scale = param_input(ctx, tail["scale"], tail["scale_shape"], (tail["scale"] or "") + "_rms_scale")
        removed = in_graph_order(ctx, m.plan["removed"])
        new = make_node("RMSNorm", [m.x, scale or ""], [tail["output"]], fused_name(ctx, removed, "RMSNorm"),
                        axis=m.stats.axis - rank, epsilon=m.stats.epsilon)
        ctx.replace_nodes(removed, [new])
        ctx.report.fused.append({
            "pass": self.name, "op": self.pattern, "pattern": "-".join(n.op_type for n in removed),
            "nodes": [n.name for n in removed], "normrt_op": "RMSNorm", "normrt_node": new.name,
            "kernel": NORM_OPS["RMSNorm"].kernel, "activation": None, "residual": False,
        })
