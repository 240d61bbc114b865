"""Grouped-query attention's repeated K/V heads -> the attention reads the shared heads.

transformers' eager attention repeats each K/V head n_rep times before the
product (`repeat_kv`), copying K and V n_rep times over:

    k (B, Hkv, S, D) ─► Unsqueeze(axes=[2]) ─► Expand(B, Hkv, n_rep, S, D) ─► Reshape(B, Hkv·n_rep, S, D) ─┐
    v (B, Hkv, S, D) ─► Unsqueeze(axes=[2]) ─► Expand(B, Hkv, n_rep, S, D) ─► Reshape(B, Hkv·n_rep, S, D) ─┤
                                                                                  q (B, Hkv·n_rep, Sq, D) ─┴─► normrt::Attention

    ==>  q, k, v ─► normrt::Attention ─► (the kernel's query head h reads kv head h // n_rep,
                                          the head repeat_kv put there)

K may come as Kt (B, Hkv, D, S) (k_layout BHDS) the same way. The repeat nodes
stay for other readers, else they go with the rewrite.

Refused (reason returned by `check`; the attention then reads the repeated
heads, as before): K and V not both repeated, or by different counts; shapes
not static; an Expand that broadcasts other axes; heads merged or interleaved
(q_heads / kv_heads, a BSHD K or V layout).
"""
import numpy as np
from onnx import helper

from . import GraphPass
from ._queries import is_normrt, is_op, node_attrs


def _const_ints(ctx, name):
    v = ctx.constants.get(name) if name else None
    return None if v is None else [int(i) for i in np.asarray(v).reshape(-1)]


def repeated_heads(ctx, name):
    """(the un-repeated tensor, n_rep) if `name` is repeat_kv's Reshape(Expand(Unsqueeze(x, 2))), else None."""
    producer = ctx.producer()
    reshape = producer.get(name)
    if not is_op(reshape, "Reshape") or len(reshape.input) < 2:
        return None
    expand = producer.get(reshape.input[0])
    if not is_op(expand, "Expand") or len(expand.input) != 2:
        return None
    unsq = producer.get(expand.input[0])
    if not is_op(unsq, "Unsqueeze") or not unsq.input:
        return None
    attrs, reason = node_attrs(unsq)
    axes = _const_ints(ctx, unsq.input[1]) if len(unsq.input) > 1 else list((attrs or {}).get("axes") or [])
    x = unsq.input[0]
    xs, target, out = ctx.shape(x), _const_ints(ctx, expand.input[1]), ctx.shape(name)
    if reason or axes not in ([2], [-3]) or xs is None or len(xs) != 4 or target is None or len(target) != 5 \
            or out is None or not all(isinstance(d, int) for d in tuple(xs) + tuple(out)):
        return None
    n_rep = target[2]
    kept = [target[i] for i in (0, 1, 3, 4)]
    if n_rep < 1 or any(t not in (d, 1) for t, d in zip(kept, xs)):
        return None                  # the Expand broadcasts another axis too
    if tuple(out) != (xs[0], xs[1] * n_rep, xs[2], xs[3]):
        return None
    return x, n_rep


class AttentionGroupedKV(GraphPass):
    name = "attention_grouped_kv"
    report_refusals = False       # refused: the attention reads the repeated heads, as before

    def matches(self, ctx):
        for node in ctx.nodes:
            if is_normrt(node, "Attention") and len(node.input) >= 3 \
                    and (repeated_heads(ctx, node.input[1]) or repeated_heads(ctx, node.input[2])):
                yield node

    def check(self, ctx, node):
        attrs, reason = node_attrs(node)
        if reason:
            return reason
        layouts = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items() if k.endswith("_layout")}
        if attrs.get("q_heads", 0) or attrs.get("kv_heads", 0):
            return "heads merged into one axis"
        if layouts.get("k_layout", "BHDS") not in ("BHDS", "BHSD") or layouts.get("v_layout", "BHSD") != "BHSD":
            return "K or V with interleaved heads (BSHD)"
        k, v = repeated_heads(ctx, node.input[1]), repeated_heads(ctx, node.input[2])
        if k is None or v is None:
            return "only one of K and V is repeated"
        if k[1] != v[1]:
            return f"K and V repeated {k[1]} and {v[1]} times"
        return None

    def rewrite(self, ctx, node):
        k, v = repeated_heads(ctx, node.input[1])[0], repeated_heads(ctx, node.input[2])[0]
        repeated = [node.input[1], node.input[2]]
        new = helper.make_node(node.op_type, [node.input[0], k, v] + list(node.input[3:]), list(node.output),
                               name=node.name, domain=node.domain)
        new.attribute.extend(node.attribute)
        ctx.replace_nodes([node], [new])
        # the repeat chains nobody reads now go at once: attention_layout, run again after this
        # pass, absorbs a head-split Transpose only when the fused node is its one reader
        for name in repeated:
            for _ in range(3):          # Reshape, Expand, Unsqueeze
                producer = ctx.producer().get(name)
                if producer is None or name in ctx.graph_outputs or ctx.readers(name):
                    break
                ctx.replace_nodes([producer], [])
                name = producer.input[0]
