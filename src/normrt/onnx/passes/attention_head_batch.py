"""A rank-3 attention over (batch * heads) -> the rank-4 attention it computes.

diffusers' older attention processor folds the heads into the batch
(head_to_batch_dim / batch_to_head_dim) and the TorchScript exporter writes the
merge as Reshapes of the rank-4 per-head tensors. Merging (B, H) into B*H is a
view (row-major: batch b*H + h), so the rank-3 attention is the rank-4 one on the
unmerged tensors; as rank 4, attention_layout then absorbs the head-split
Transposes around it (and their Reshapes), as it does for the opset-17 export:

    q (B,H,Sq,D)  ─► Reshape(B*H,Sq,D) ───────────────────────┐ Q
    k (B,H,Skv,D) ─► Reshape(B*H,Skv,D) ─► Transpose(0,2,1) ───┤ Kt   (or kt (B,H,D,Skv) ─► Reshape(B*H,D,Skv))
    v (B,H,Skv,Dv) ─► Reshape(B*H,Skv,Dv) ─────────────────────┤ V
                            normrt::Attention ─► (B*H,Sq,Dv) ─► Reshape(B,H,Sq,Dv) ─► y

    ==>  q, Transpose(k, (0,1,3,2)) | kt, v ─► normrt::Attention ─► y (B,H,Sq,Dv)

Refused (reason in the report): an attention with a bias (a mask of the merged
shape), non-default layouts or head attributes; a Q/Kt/V that is no such
Reshape of a rank-4 value, shapes not static, (B, H) differing between Q, K, V
and the output's Reshape; a middle value read elsewhere or a graph output.
"""
from dataclasses import dataclass, field

from onnx import helper

from ..domain import NORM_OPS
from . import GraphPass
from ._queries import Graph, chain_nodes_reason, in_graph_order, is_normrt, is_op, node_attrs, take_fused_entry

PATTERN = "attention over batch*heads"
TRANSPOSE_LAST = (0, 2, 1)


@dataclass
class Match:
    node: object
    plan: dict = field(default_factory=dict)


def _static(shape, rank):
    return shape is not None and len(shape) == rank and all(isinstance(d, int) and d > 0 for d in shape)


def _perm(node):
    attrs, _ = node_attrs(node)
    perm = (attrs or {}).get("perm")
    return tuple(perm) if perm is not None else None


def _merged(ctx, g, name):
    """(the rank-4 value (B, H, a, b), (B, H), the Reshape) if `name` is Reshape(value) to (B*H, a, b)."""
    r = g.prod(name, "Reshape")
    if r is None:
        return None
    src, dst = ctx.shape(r.input[0]), ctx.shape(name)
    if not _static(src, 4) or not _static(dst, 3) or dst[0] != src[0] * src[1] or tuple(dst[1:]) != tuple(src[2:]):
        return None
    return r.input[0], (src[0], src[1]), r


class AttentionHeadBatch(GraphPass):
    name = "attention_head_batch"

    def matches(self, ctx):
        for node in ctx.nodes:
            if is_normrt(node, "Attention") and len(ctx.shape(node.input[0]) or ()) == 3:
                yield Match(node)

    def describe(self, m):
        return PATTERN, [m.node.name]

    def check(self, ctx, m):
        g = Graph(ctx)
        node = m.node
        attrs, reason = node_attrs(node)
        if reason:
            return reason
        defaults = NORM_OPS["Attention"].defaults
        if any(attrs.get(k, defaults[k]) != defaults[k] for k in defaults if k not in ("scale", "is_causal")):
            return "layouts or head attributes already set"
        if len(node.input) > 3 and node.input[3]:
            return "a bias over the merged batch*heads"
        q, kt, v = node.input[:3]
        found = {}
        for slot, name in (("q", q), ("v", v)):
            found[slot] = _merged(ctx, g, name)
        k_transpose = g.prod(kt, "Transpose")
        if k_transpose is not None and len(k_transpose.input) == 1 and _perm(k_transpose) == TRANSPOSE_LAST:
            found["k"] = _merged(ctx, g, k_transpose.input[0])
        else:
            k_transpose, found["k"] = None, _merged(ctx, g, kt)
        missing = [s for s, f in found.items() if f is None]
        if missing:
            return f"{'/'.join(missing)} not a Reshape of a static rank-4 (B, H, S, D) value to (B*H, S, D)"
        heads = {found[s][1] for s in found}
        readers = g.consumers.get(node.output[0], [])
        back = readers[0] if len(readers) == 1 and is_op(readers[0], "Reshape") else None
        y_shape = ctx.shape(node.output[0])
        out_shape = ctx.shape(back.output[0]) if back is not None else None
        if back is None or node.output[0] in g.outputs or not _static(y_shape, 3) or not _static(out_shape, 4) \
                or tuple(out_shape[2:]) != tuple(y_shape[1:]) or out_shape[0] * out_shape[1] != y_shape[0]:
            return "the output is not read by one Reshape to (B, H, Sq, Dv) alone"
        heads.add((out_shape[0], out_shape[1]))
        if len(heads) != 1:
            return f"(B, H) differ between Q, K, V and the output: {sorted(heads)}"
        inner = [found[s][2] for s in found] + ([k_transpose] if k_transpose is not None else [])
        reason = chain_nodes_reason(g, inner + [node], node.output[0])
        if reason:
            return reason
        m.plan = {"q": found["q"][0], "k": found["k"][0], "v": found["v"][0], "k_transposed": k_transpose is not None,
                  "removed": inner + [back], "output": back.output[0], "attrs": attrs}
        return None

    def rewrite(self, ctx, m):
        p, node = m.plan, m.node
        added, kt = [], p["k"]
        if p["k_transposed"]:
            kt = ctx.new_name(p["k"] + "_t")
            added.append(helper.make_node("Transpose", [p["k"]], [kt], name=ctx.new_name(node.name + "/kt"),
                                          perm=[0, 1, 3, 2]))
        new = helper.make_node("Attention", [p["q"], kt, p["v"]], [p["output"]], name=node.name,
                               domain=node.domain)
        new.attribute.extend(node.attribute)
        ctx.replace_nodes(in_graph_order(ctx, [node] + p["removed"]), added + [new])
        entry = take_fused_entry(ctx, node.name) or {
            "pass": self.name, "op": PATTERN, "pattern": "Attention", "nodes": [node.name],
            "normrt_op": "Attention", "kernel": NORM_OPS["Attention"].kernel, "activation": None, "residual": False}
        entry["normrt_node"] = new.name
        entry["nodes"] = list(entry["nodes"]) + [n.name for n in p["removed"]]
        entry["pattern"] = f"{entry['pattern']}+heads"
        ctx.report.fused.append(entry)
