"""Grouped-query attention's repeated K/V heads -> the attention reads the shared heads.

transformers' eager attention repeats each K/V head n_rep times before the
product (`repeat_kv`), copying K and V n_rep times over:

    k (B, Hkv, S, D) ─► Unsqueeze(axes=[2]) ─► Expand(e) ─► Reshape(r) ─┐
    v (B, Hkv, S, D) ─► Unsqueeze(axes=[2]) ─► Expand(e) ─► Reshape(r) ─┤
                                          q (B, Hkv·n_rep, Sq, D) ─┴─► normrt::Attention

    ==>  q, k, v ─► normrt::Attention ─► (the kernel's query head h reads kv head h // n_rep,
                                          the head repeat_kv put there)

A static export writes e = [B, Hkv, n_rep, S, D] and r = [B, Hkv·n_rep, S, D] as
constants. A dynamic-axes export computes them at run time from the shapes; TorchScript:

    k ─► Shape ─► Gather(0 | 1 | 2 | 3) ─► Unsqueeze ─┐
                                     n_rep (constant) ─┴─► Concat ─► Reshape([-1]) ─► s
    s ─► Where(s == -1, 1, s) ─► e          (aten::expand's export: -1 keeps a dim in torch)
    k ─► Shape ─► Gather(1) ─► Mul(n_rep) ─► Unsqueeze ─┐
    k ─► Shape ─► Gather(0 | 2 | 3) ─► Unsqueeze ───────┴─► Concat ─► r

(the Gathers of known dims folded by constant_folding); the dynamo exporter:

    input_ids ─► Shape(start, end) ─┬─► Concat(B, Hkv, n_rep, S, D) ─► e
                                    └─► Concat(B, Hkv·n_rep, S, D) ─► r

`target_dims` (_symbolic_dims.py) evaluates such a vector element by element as `Dim`s: an int, or a product of
the run-time dims it reads (a Shape's element is its value's dim, known to shape inference by
value or by dim_param name, else named by the value and axis); Gather / Slice / Unsqueeze /
Concat / Reshape ... move elements (run on the elements' positions, as constant_folding's
partial_shape_value picks known dims), Mul / Add / Div / Equal / Where compute on them. Taken
when it proves:

- the Unsqueeze inserts axis 2 of a rank-4 k;
- e[2] is an int (n_rep) and every other entry of e leaves k's dim: the entry is 1, or k's dim
  is that entry. k's dim is the entry when it is the same Dim (equal ints, the same dim_param,
  the same value's dim), or when k is computed by elementwise ops (broadcasting, a Transpose's
  permutation followed) from a value whose dim is that entry: the broadcast of a dim equal to
  the entry is the entry, or the entry is 1 (a dynamo export's RoPE'd k, its sequence dim named
  apart from the input ids' 'sequence' the target reads);
- r merges axes 1 and 2 of the expanded (B, Hkv, n_rep, S, D): r = [B, Hkv·n_rep, S, D] in the
  same sense (0 copies the expanded dim; with a -1 the other entries are equal Dims, else a run
  whose Reshape keeps the element count has r's B, S, D entries equal to k's).

K may come as Kt (B, Hkv, D, S) (k_layout BHDS) the same way. The repeat nodes, and the shape
arithmetic only they read, go with the rewrite; what other nodes read stays.

Refused (reason returned by `check`; the attention then reads the repeated heads, as before):
K and V not both repeated, or by different counts; any of the above not proven (the reason
names the entry); a query not of rank 4, or whose head count is known and is not the repeated
heads' (a one-headed query broadcast over them); heads merged or interleaved (q_heads /
kv_heads, a BSHD K or V layout). A query whose head count is symbolic is taken as having
repeat_kv's Hkv·n_rep heads: not proven (a one-headed query, which the MatMul would broadcast
over the repeated heads, is the other valid case; no exporter pairs one with repeat_kv).
"""
from onnx import helper

from . import GraphPass
from ._queries import is_normrt, is_op, node_attrs
from ._symbolic_dims import ONE, Dim, keeps_dim, target_dims, value_dim


def repeat_chain(ctx, name):
    """(Reshape, Expand, Unsqueeze) when `name` is written by Reshape(Expand(Unsqueeze(x))), else None."""
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
    return reshape, expand, unsq


def repeated_heads(ctx, name):
    """((the un-repeated tensor x, n_rep), None) if `name` is repeat_kv's Reshape(Expand(Unsqueeze(x, 2)))
    of a rank-4 x, else (None, why not)."""
    chain = repeat_chain(ctx, name)
    if chain is None:
        return None, "not a Reshape(Expand(Unsqueeze))"
    reshape, expand, unsq = chain
    attrs, reason = node_attrs(unsq)
    if reason:
        return None, reason
    axes = (attrs or {}).get("axes")
    if len(unsq.input) > 1:
        axes = target_dims(ctx, unsq.input[1])
        axes = None if axes is None else [a.coef if isinstance(a, Dim) and a.known else None
                                          for a in axes.reshape(-1)]
    x = unsq.input[0]
    xs = ctx.shape(x)
    if xs is None or len(xs) != 4:
        return None, "the repeated value's rank is not known to be 4"
    if axes is None or list(axes) not in ([2], [-3]):
        return None, f"the Unsqueeze inserts axes {axes}, not axis 2"
    x_dims = [value_dim(ctx, x, a) for a in range(4)]
    # the Expand: n_rep on the new axis, every other axis left as x's (a shorter target
    # broadcasts from the right: its missing leading entries are 1s)
    target = target_dims(ctx, expand.input[1])
    if target is None or target.ndim != 1 or target.size > 5:
        return None, "the Expand's target is not known"
    target = [ONE] * (5 - target.size) + list(target)
    n_rep = target[2]
    if not isinstance(n_rep, Dim) or not n_rep.known or n_rep.coef < 1:
        return None, "the Expand's count on the new axis is not a known int"
    for t_axis, x_axis in ((0, 0), (1, 1), (3, 2), (4, 3)):
        if not isinstance(target[t_axis], Dim) or not keeps_dim(ctx, x, x_axis, target[t_axis]):
            return None, f"the Expand may broadcast axis {t_axis} (target entry {target[t_axis]})"
    # the Reshape: the expanded (B, Hkv, n_rep, S, D) with axes 1 and 2 merged
    r = target_dims(ctx, reshape.input[1])
    if r is None or r.ndim != 1 or r.size != 4 or not all(isinstance(e, Dim) for e in r):
        return None, "the Reshape's target is not 4 known entries"
    rattrs, reason = node_attrs(reshape)
    if reason:
        return None, reason
    expanded = [x_dims[0], x_dims[1], n_rep, x_dims[2], x_dims[3]]
    r = [expanded[i] if e == Dim(0) and not rattrs.get("allowzero", 0) else e for i, e in enumerate(r)]
    wanted = [x_dims[0], x_dims[1] * n_rep, x_dims[2], x_dims[3]]
    inferred = [i for i, e in enumerate(r) if e == Dim(-1)]
    if len(inferred) > 1:
        return None, "the Reshape's target has two -1s"
    for i, (e, w) in enumerate(zip(r, wanted)):
        # with a -1 the others must be the wanted dims; without, a B / S / D entry that is k's
        # dim or 1 is k's dim in a run whose Reshape keeps the element count
        if i in inferred or e == w or (not inferred and i != 1 and keeps_dim(ctx, x, i, e)):
            continue
        return None, f"the Reshape does not merge axes 1 and 2 (entry {i}: {e})"
    return (x, n_rep.coef), None


def _heads(dim):
    return dim.coef if isinstance(dim, Dim) and dim.known else None


class AttentionGroupedKV(GraphPass):
    name = "attention_grouped_kv"
    report_refusals = False       # refused: the attention reads the repeated heads, as before

    def matches(self, ctx):
        for node in ctx.nodes:
            if is_normrt(node, "Attention") and len(node.input) >= 3 \
                    and (repeat_chain(ctx, node.input[1]) or repeat_chain(ctx, node.input[2])):
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
        if repeat_chain(ctx, node.input[1]) is None or repeat_chain(ctx, node.input[2]) is None:
            return "only one of K and V is repeated"
        (k, k_why), (v, v_why) = repeated_heads(ctx, node.input[1]), repeated_heads(ctx, node.input[2])
        if k_why or v_why:
            return f"K: {k_why}" if k_why else f"V: {v_why}"
        if k[1] != v[1]:
            return f"K and V repeated {k[1]} and {v[1]} times"
        q_shape = ctx.shape(node.input[0])
        if q_shape is not None and len(q_shape) != 4:
            return f"a rank-{len(q_shape)} query"
        q_axis = 2 if layouts.get("q_layout", "BHSD") == "BSHD" else 1
        q_heads = _heads(value_dim(ctx, node.input[0], q_axis)) if q_shape is not None else None
        kv_heads = _heads(value_dim(ctx, k[0], 1))
        if q_heads is not None and (q_heads == 1 < k[1] or kv_heads is not None and q_heads != kv_heads * k[1]):
            return f"the query's {q_heads} heads broadcast over the {k[1]}x repeated K/V heads"
        return None

    def rewrite(self, ctx, node):
        (k, _), _ = repeated_heads(ctx, node.input[1])
        (v, _), _ = repeated_heads(ctx, node.input[2])
        repeated = [node.input[1], node.input[2]]
        new = helper.make_node(node.op_type, [node.input[0], k, v] + list(node.input[3:]), list(node.output),
                               name=node.name, domain=node.domain)
        new.attribute.extend(node.attribute)
        ctx.replace_nodes([node], [new])
        # the repeat chains and the shape arithmetic nobody reads now go at once: attention_layout,
        # run again after this pass, absorbs a head-split Transpose only when the fused node is
        # its one reader (a Shape of it computing the targets is another)
        unread = list(repeated)
        while unread:
            producer = ctx.producer().get(unread.pop())
            if producer is None or any(o in ctx.graph_outputs or ctx.readers(o) for o in producer.output if o):
                continue
            ctx.replace_nodes([producer], [])
            unread += [i for i in producer.input if i]
