"""Hand-written AdaIN (content, style) -> normrt::AdaIN.

    content (N, C, *S)                                  style (N, C, *S')
       │                                                   │
       ├──► mean_c = ReduceMean over S ─┐                  ├──► mean_s ─────────────────────────┐
       ├──► std_c = Sqrt(var_c + eps) ──┼──┐               └──► std_s = Sqrt(var_s + eps) ──┐   │
       ▼                                │  │                                                │   │
    Sub(content, mean_c) ──► Div(·, std_c) ──► Mul(·, std_s) ──────────────────────────► Add(·, mean_s) ──► Y

    ==>  content, style ──► normrt::AdaIN(epsilon=eps, unbiased=0|1) ──► Y

    y = std_s * (content - mean_c) / std_c + mean_s, statistics per (n, c) over the
    spatial axes, std = sqrt(var + eps).

The statistics are recognized by `_stats` in the forms both exporters write:
ReduceMean over the spatial axes of X or over the last axis of view(N, C, -1);
var = ReduceMean((src - ReduceMean(src, keepdims=1))^2) (Mul or Pow), optionally
made unbiased (torch's default `.var()`) by * n / (n - 1) with n either a constant
equal to the group size (dynamo) or Cast(ReduceProd(Gather(Shape(src), axes)))
with n - 1 = Sub(n, 1) (legacy); Reshape/Unsqueeze/Squeeze/float Casts between
the steps and a final Expand (legacy: Reshape to (N, C, 1, 1) then Expand to X's
shape). Add and Mul are matched in either operand order. A Sub of content and
mean_c may be shared with content's variance (dynamo, keepdim means).

Refused (reason in the report):
- any statistic not exactly of that form (axes other than the spatial ones, a
  count that is not the group size, eps not a constant scalar >= 0, ...);
- content and style statistics with different eps, or one unbiased and one not
  (the kernel takes one eps and one variance kind);
- static shapes unknown, style with other N, C than content, a statistic that
  does not line up per (n, c) with content, an output not shaped like content;
- a middle value read elsewhere or a graph output; content, style and Y of different
  element types or of a type no kernel takes (the statistics may be computed in float32
  from float16 data: dynamo's half `.var()` widens X with a Cast, see `_stats`).
"""
from dataclasses import dataclass, field

from ..domain import NORM_OPS, make_node
from . import GraphPass
from . import _stats as st
from ._queries import Graph, chain_nodes_reason, dtype_reason, fused_name, is_op

PATTERN = "AdaIN(ReduceMean/Sub/Sqrt/Div/Mul/Add)"


@dataclass
class AdainMatch:
    add: object
    mul: object
    div: object
    sub: object
    mean_s: str       # the operands, as the top nodes read them
    std_s: str
    std_c: str
    nodes: list = field(default_factory=list)     # filled by check
    info: dict = field(default_factory=dict)


def _leads_to(ctx, g, name, op):
    return g.prod(st.strip_layout(ctx, g, name, [], allow_expand=True), op) is not None


class AdaIN(GraphPass):
    name = "adain"

    def matches(self, ctx):
        g = Graph(ctx)
        for add in ctx.nodes:
            if not is_op(add, "Add") or len(add.input) != 2:
                continue
            found = None
            for p, ms in (add.input, add.input[::-1]):
                mul = g.prod(p, "Mul")
                if mul is None or len(mul.input) != 2 or not _leads_to(ctx, g, ms, "ReduceMean"):
                    continue
                for q, ss in (mul.input, mul.input[::-1]):
                    div = g.prod(q, "Div")
                    sub = div and g.prod(div.input[0], "Sub")
                    if sub is None or not _leads_to(ctx, g, ss, "Sqrt") \
                            or not _leads_to(ctx, g, div.input[1], "Sqrt"):
                        continue
                    found = AdainMatch(add, mul, div, sub, ms, ss, div.input[1])
                    break
                if found:
                    break
            if found:
                yield found

    def describe(self, m):
        nodes = m.nodes or [m.sub, m.div, m.mul, m.add]
        return PATTERN, [n.name for n in nodes]

    def check(self, ctx, m):
        g = Graph(ctx)
        content, y = m.sub.input[0], m.add.output[0]
        stats = {"mean_c": st.mean(ctx, g, m.sub.input[1]), "std_c": st.std(ctx, g, m.std_c),
                 "std_s": st.std(ctx, g, m.std_s), "mean_s": st.mean(ctx, g, m.mean_s)}
        for label, s in stats.items():
            if isinstance(s, str):
                return f"{label}: {s}"
        mean_c, std_c, std_s, mean_s = stats.values()
        if mean_c.x != content or std_c.x != content:
            return f"the content statistics are of {mean_c.x!r} and {std_c.x!r}, not of {content!r}"
        style = std_s.x
        if mean_s.x != style:
            return f"the style mean is of {mean_s.x!r}, its std of {style!r}"
        if std_c.eps != std_s.eps:
            return f"content eps {std_c.eps} and style eps {std_s.eps} differ"
        if std_c.unbiased != std_s.unbiased:
            return "one variance is unbiased and the other not"
        reason = st.float_attr_reason("eps", std_c.eps)
        if reason:
            return reason
        x_shape, s_shape = ctx.shape(content), ctx.shape(style)
        if not st.static(x_shape) or not st.static(s_shape):
            return "static shapes of content and style unknown"
        if len(x_shape) < 3 or len(s_shape) < 3 or tuple(s_shape[:2]) != tuple(x_shape[:2]):
            return f"content {list(x_shape)} and style {list(s_shape)} are not (N, C, *spatial) alike"
        for name in (m.sub.input[1], m.std_c, m.std_s, m.mean_s):
            reason = st.per_channel_shape_reason(ctx, name, x_shape)
            if reason:
                return reason
        if tuple(ctx.shape(y) or ()) != tuple(x_shape):
            return f"the output {y!r} is not shaped like content {list(x_shape)}"
        reason = dtype_reason(ctx, [content, style, y])
        if reason:
            return reason
        nodes, seen = [], set()
        for n in mean_c.nodes + std_c.nodes + std_s.nodes + mean_s.nodes + [m.sub, m.div, m.mul, m.add]:
            if id(n) not in seen:
                seen.add(id(n))
                nodes.append(n)
        m.nodes = ctx.in_graph_order(nodes)
        reason = chain_nodes_reason(g, m.nodes, y)
        if reason:
            return reason
        m.info = {"content": content, "style": style, "eps": std_c.eps, "unbiased": int(std_c.unbiased)}
        return None

    def rewrite(self, ctx, m):
        info = m.info
        new = make_node("AdaIN", [info["content"], info["style"]], [m.add.output[0]],
                        fused_name(ctx, m.nodes, "AdaIN"), epsilon=info["eps"], unbiased=info["unbiased"])
        ctx.replace_nodes(m.nodes, [new])
        ctx.report.fused.append({
            "pass": self.name, "op": PATTERN, "pattern": PATTERN, "nodes": [n.name for n in m.nodes],
            "normrt_op": "AdaIN", "normrt_node": new.name, "kernel": NORM_OPS["AdaIN"].kernel,
            "activation": None, "residual": False,
        })
