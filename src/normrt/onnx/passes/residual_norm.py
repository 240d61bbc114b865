"""Skip connection into a norm: Add(a, b) -> LayerNorm/RMSNorm becomes the norm's `residual` input.

    a ──┐
        ├─► Add ── h ──► normrt::LayerNorm | RMSNorm ──► Y
    b ──┘          │
                   └──► other readers (or a graph output)
  ==>
    a ──┐
        ├─► normrt::LayerNorm | RMSNorm (X=a, …, residual=b) ──► Y
    b ──┘                    │
                             └── residual_sum = h ──► other readers (or a graph output)

The norm reads the two summands and adds them itself, in the same pass over
memory as its statistics. When h has other readers (the usual pre-LN
transformer: the sum also feeds the next skip connection) or is a graph output,
the norm writes it too, as its `residual_sum` output under h's name.

Runs after the standard and decomposed norms are normrt nodes. Summands whose
shapes differ or may differ (a dynamic-axes export's dims that shape inference
names differently, ViT's position table broadcast over the batch) fuse too: the
norm's call adds such a residual as the Add would before its kernel
(kernel_calls._broadcast_residual). Refused (reason in the report): summands of
unknown shape, or neither of the sum's rank; summands of different or
non-kernel element types (float32/float64), a norm
that also reads h, or a value computed from h, as another input. Norms that
already have a residual are not candidates.
"""
from dataclasses import dataclass

from .._graph import NORMRT_DOMAIN, canonical_domain, decode_attributes, node_reads
from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import Graph, dtype_reason

RESIDUAL_SLOT = {"LayerNorm": 3, "RMSNorm": 2}      # input position of `residual`
SUM_SLOT = {"LayerNorm": 3, "RMSNorm": 1}           # output position of `residual_sum`


@dataclass
class Match:
    norm: object
    add: object


def _reads_downstream_of(g, names, node):
    """Whether any of `names` is computed (transitively) from an output of `node`: fusing would
    then make the norm wait for its own output.

    The walk goes up from `names` and stops at nodes placed before `node` (they cannot depend
    on it while the graph is in topological order), so it costs the nodes between them, not
    the whole prefix of the graph; an order not yet restored (ctx.mark_unordered) walks it all.
    """
    ctx = g.ctx
    stop = ctx.order_key(node) if not ctx._unordered else None
    seen, stack = set(), list(names)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        producer = g.producer.get(name)
        if producer is None:
            continue
        if producer is node:
            return True
        if stop is not None and ctx.order_key(producer) < stop:
            continue
        stack.extend(node_reads(producer))
    return False


class ResidualNorm(GraphPass):
    name = "residual_norm"

    def matches(self, ctx):
        g = Graph(ctx)
        for node in ctx.nodes:
            if node.domain != NORMRT_DOMAIN or node.op_type not in RESIDUAL_SLOT or not node.input:
                continue
            slot = RESIDUAL_SLOT[node.op_type]
            if len(node.input) > slot and node.input[slot]:
                continue          # already fused: its X may well be another Add (a bias), not a skip
            add = g.prod(node.input[0], "Add")
            if add is not None:
                yield Match(node, add)

    def describe(self, m):
        return f"Add -> {m.norm.op_type}", [m.add.name, m.norm.name]

    def check(self, ctx, m):
        g = Graph(ctx)
        if id(m.norm) not in g.ids or id(m.add) not in g.ids:
            return "node already rewritten"
        slot = RESIDUAL_SLOT[m.norm.op_type]
        if len(m.norm.input) > slot and m.norm.input[slot]:
            return "the norm already has a residual input"
        h = m.add.output[0]
        if h in m.norm.input[1:]:
            return f"the norm also reads the sum {h!r} as a parameter"
        if _reads_downstream_of(g, [n for n in m.norm.input[1:] if n], m.add):
            return f"a parameter of the norm is computed from the sum {h!r}"
        if len(m.add.input) != 2 or canonical_domain(m.add.domain) != "":
            return "not a two-input Add"
        a, b = m.add.input
        reason = dtype_reason(ctx, [a, b, h])
        if reason:
            return reason
        # summands that may differ in shape (dims shape inference could not prove alike, a table
        # broadcast over the batch) fuse too: the norm's call adds a residual of another shape as
        # the Add would (kernel_calls._broadcast_residual). The summand of h's shape is X.
        shapes = [ctx.shape(n) for n in (a, b, h)]
        if any(s is None for s in shapes):
            return "shape of a summand unknown"
        if len(shapes[0]) != len(shapes[2]) and len(shapes[1]) != len(shapes[2]):
            return f"neither summand has the sum's rank ({list(shapes[0])} + {list(shapes[1])})"
        return None

    def rewrite(self, ctx, m):
        norm, add = m.norm, m.add
        op = norm.op_type
        h = add.output[0]
        g = Graph(ctx)
        keep_sum = h in g.outputs or any(r is not norm for r in g.consumers.get(h, []))
        inputs = list(norm.input) + [""] * (RESIDUAL_SLOT[op] + 1 - len(norm.input))
        inputs[0], inputs[RESIDUAL_SLOT[op]] = add.input[0], add.input[1]
        outputs = list(norm.output)
        if keep_sum:
            outputs += [""] * (SUM_SLOT[op] + 1 - len(outputs))
            outputs[SUM_SLOT[op]] = h
        new = make_node(op, inputs, outputs, norm.name, **decode_attributes(norm))
        ctx.replace_nodes([add, norm], [new])
        if keep_sum:
            # readers of h between the Add and the norm now wait for the norm: the
            # topological order is restored once, when the pass commits
            ctx.mark_unordered()
        entry = next((e for e in ctx.report.fused if e.get("normrt_node") == norm.name), None)
        if entry is None:
            entry = {"pass": self.name, "op": op, "pattern": op, "nodes": [norm.name], "normrt_op": op,
                     "normrt_node": new.name, "kernel": NORM_OPS[op].kernel, "activation": None}
            ctx.report.fused.append(entry)
        entry["nodes"] = [add.name] + list(entry["nodes"])
        entry["pattern"] = f"Add-{entry['pattern']}"
        entry["residual"] = True
        entry["residual_sum"] = keep_sum

