"""Scaled dot-product attention written out in MatMuls and a Softmax -> one normrt::Attention.

The forms the exporters write (torch's F.scaled_dot_product_attention, legacy
and dynamo, and the eager `q @ k.transpose(-2, -1) * scale` of hand-written blocks):

    Q ─► [Mul(·, sq)] ──┐                               sq·sk: torch's sqrt(scale) on each side
                        ├─► MatMul ─► [Mul(·, c) | Div(·, c)] ─► [Add(·, mask)] ─► [Cast] ─► Softmax(axis=-1) ─► [Cast] ─┐
    Kt ─► [Mul(·, sk)] ─┘      (Kt: the keys transposed, (B, H, D, Skv), whatever produced it)         │
                                                                                                       │
         ┌──────────── [Where(IsNaN(P), 0, P)]  (torch's "fully masked row -> 0") ◄───────────────────┘
         └─► MatMul(P, V) ─► Y

    with the Add, or around it, a masked_fill: [Where(cond, fill, ·) | Where(cond, ·, fill)]

    ==>  Q, Kt, V [, bias] ─► normrt::Attention(scale = sq * sk * c (or / c)) ─► Y
         bias: the mask, or Where(cond, fill, 0) [+ mask] (a constant when cond and mask are)

[Cast]: identity Casts (float32 to float32: diffusers' upcast_softmax in a float32
model). A constant mask of zeros (the opset-13 export of diffusers' older
`baddbmm(empty, q, kt, beta=0, alpha=scale)`) is no mask: not read at each run.

A masked_fill of the scores, `Where(cond, fill, S)` or `Where(cond, S, fill)` (nanoGPT's
`att.masked_fill(mask == 0, -inf)`, GPT-2's `torch.where(causal, S, finfo.min)`), before or
after the mask Add, becomes part of the additive bias: bias = Where(cond, fill, 0) (+ the mask),
folded to a constant when cond and the mask are constants (a causal one then goes to the
kernel's causal loop, causal_mask). Exact when S + fill == fill: fill -inf, or finite at or
below -2^127 (torch's finfo(float32 / bfloat16).min: any score under 2^103 is absorbed, and the
kernel keeps such a bias finite, so a row masked throughout averages V as softmax does). A
finite fill above that (-1e9, -1e4, float16's -65504) has no additive form; without a mask
added outside the Where it becomes finfo(float32).min (float16 scores: -inf, where cond is a
constant that masks no row throughout), which differs from the fill only in a row whose
unmasked scores all lie within ~104 of the fill (e**(fill - max) not 0). (A NaN score the Where
masks stays NaN in the fused node.)

The kernel gives a fully masked row (all -inf) zeros, which is what the Where
writes; a plain Softmax gives NaN there: without the Where, a mask that may be -inf
(a run-time mask, a constant with -inf) gives the fused node nan_rows=1, and its
call writes NaN in the rows whose mask is -inf for every key.
(With NaN inputs the fused node keeps NaN where the Where wrote 0.)

A Mul by sq / sk whose output something else reads stays, and the fused node
reads its output (the scale it applies is then not part of the attribute).

Refused (reason in the report): a scale that is not a constant float scalar or
not finite; Softmax over another axis than the last; Q/Kt/V/scores of unknown
rank or rank other than 3/4, or whose batch/head dims are known sizes that cannot broadcast
(dims shape inference could not name, or that broadcast, are taken: the kernel call broadcasts
them as the MatMuls would, kernel_calls._broadcast_attention); a mask of unknown shape or known
dims that cannot broadcast with the scores; a non-zero Where constant; a middle value
read by another node or a graph output; a masked_fill whose value is not one constant, at or
below -1e4 (or is finite above -2^127 with a mask added outside it), or whose condition is not a
bool tensor broadcasting with the scores; element types other than float32 or
one half type (the fused kernel computes in float32: _queries.PRODUCT_DTYPES).
"""
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
from onnx import TensorProto, helper

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import Graph, chain_nodes_reason, fused_name, in_graph_order, is_op
from ._queries import PRODUCT_DTYPES, float_type_reason, is_float, node_attrs, other_input

PATTERN = "decomposed attention"


@dataclass
class Match:
    softmax: object
    qk: object                   # MatMul(Q', Kt')
    pv: object                   # MatMul(P, V)
    scale_node: object = None    # Mul / Div of the scores by a constant
    mask_add: object = None
    mask_side: str = ""          # the input of mask_add that carries the scores
    fill: object = None          # Where(cond, fill, S) / Where(cond, S, fill): a masked_fill
    fill_keep: int = 0           # fill's input index of the scores (1: kept where cond, 2: where not)
    add_inside: bool = False     # the mask Add feeds the Where (Where(cond, S + mask, fill))
    isnan: object = None
    where: object = None
    q_mul: object = None         # Mul(Q, sq) feeding the MatMul
    k_mul: object = None
    casts: list = field(default_factory=list)   # identity Casts around the Softmax
    plan: dict = field(default_factory=dict)

    @property
    def nodes(self):
        return [n for n in (self.q_mul, self.k_mul, self.qk, self.scale_node, self.mask_add, self.fill, self.softmax,
                            self.isnan, self.where, self.pv) if n is not None] + self.casts


def _scalar(ctx, name):
    """The value of a one-element float constant, or None."""
    v = ctx.constants.get(name) if name else None
    if v is None or v.size != 1 or not is_float(v.dtype):
        return None
    return float(np.asarray(v).reshape(()))


def _const_operand(ctx, node):
    """(the non-constant input, the constant scalar's value) of a binary Mul/Div, or (None, None)."""
    if len(node.input) != 2:
        return None, None
    a, b = node.input
    if node.op_type == "Div":
        return (a, _scalar(ctx, b)) if _scalar(ctx, b) is not None else (None, None)
    if _scalar(ctx, b) is not None and not ctx.is_constant(a):
        return a, _scalar(ctx, b)
    if _scalar(ctx, a) is not None and not ctx.is_constant(b):
        return b, _scalar(ctx, a)
    return None, None


def _clash(*dims):
    """Whether the dims are known sizes that cannot broadcast (two different ones, neither 1)."""
    return len({d for d in dims if isinstance(d, int) and d != 1}) > 1


def _scores(g, name):
    """Whether `name` is MatMul's output, or a Mul/Div of one."""
    if g.prod(name, "MatMul") is not None:
        return True
    node = g.prod(name, "Mul", "Div")
    return node is not None and any(g.prod(i, "MatMul") is not None for i in node.input)


def _peel_masks(ctx, g, m, value):
    """The scores under the mask Add and the masked_fill Where above them (each at most once,
    in either order; recorded on m), or None when an Add there does not add to the scores."""
    for _ in range(2):
        node = g.prod(value, "Add", "Where")
        if node is None:
            return value
        if node.op_type == "Add" and m.mask_add is None and len(node.input) == 2:
            # the scores side of Add(scores, mask) is the one a MatMul (maybe scaled) produced
            side = next((i for i in node.input if _scores(g, i)), None)
            if side is None and m.fill is None:
                side = next((i for i in node.input if g.prod(i, "Where")), None)
            if side is None:
                return None
            m.mask_add, m.mask_side, m.add_inside, value = node, side, m.fill is not None, side
        elif node.op_type == "Where" and m.fill is None and len(node.input) == 3:
            # masked_fill: one data input a constant (the fill), the other the scores
            keep = [i for i in (1, 2) if not ctx.is_constant(node.input[i])]
            if len(keep) != 1 or not (_scores(g, node.input[keep[0]])
                                      or (m.mask_add is None and g.prod(node.input[keep[0]], "Add"))):
                return value
            m.fill, m.fill_keep, value = node, keep[0], node.input[keep[0]]
        else:
            return value
    return value


def _broadcast_reason(ctx, what, name, ss):
    """Why `name` (the mask, a masked_fill's condition) cannot broadcast with the scores, or None.
    A value raising the scores' batch, head or query dims is broadcast by the kernel call too."""
    ms = ctx.shape(name)
    if ms is None:
        return f"shape of {what} unknown"
    if len(ms) > len(ss):
        return f"{what} {list(ms)} has a higher rank than the scores {list(ss)}"
    if any(_clash(a, b) for a, b in zip(reversed(ms), reversed(ss))):
        return f"{what} {list(ms)} does not broadcast with the scores {list(ss)}"
    return None


def _keeps_a_key_in_every_row(ctx, m):
    """Whether m's masked_fill condition is a constant that leaves every row a key."""
    cond = ctx.constants.get(m.fill.input[0])
    if cond is None:
        return False
    keep = np.asarray(cond, bool) if m.fill_keep == 1 else ~np.asarray(cond, bool)
    return keep.ndim > 0 and bool(keep.any(axis=-1).all())


def _fill_value(ctx, m, ss):
    """(the value m's masked_fill puts in the additive bias, None), or (None, why it cannot)."""
    cond, given = m.fill.input[0], m.fill.input[3 - m.fill_keep]
    if ctx.elem_type(cond) != TensorProto.BOOL:
        return None, f"{m.fill.name!r}: the masked_fill condition {cond!r} is not a bool tensor"
    reason = _broadcast_reason(ctx, f"the masked_fill condition {cond!r}", cond, ss)
    if reason:
        return None, reason
    f = ctx.constants.get(given)
    if f is None or not is_float(f.dtype) or f.size == 0 or f.ndim > len(ss):
        return None, f"{m.fill.name!r}: the masked_fill value {given!r} is not a float constant"
    f = np.asarray(f, np.float64)
    v = float(f.flat[0])
    if not (f == v).all():
        return None, f"{m.fill.name!r}: the masked_fill value {given!r} is not one value"
    if v == -np.inf or v <= ABSORBED_FILL:
        return v, None      # S + fill == fill: the additive form is exact
    if not v <= FAR_FILL:
        return None, (f"{m.fill.name!r}: masked_fill with {v:g} (the kernel takes -inf, a value at or below "
                      f"-2^127 or, as finfo.min, one at or below {FAR_FILL:g})")
    if m.mask_add is not None and not m.add_inside:
        return None, (f"{m.fill.name!r}: a mask added to a masked_fill of {v:g} (above -2^127, which a score "
                      "would not be absorbed by)")
    lowest = float(ml_dtypes.finfo(helper.tensor_dtype_to_np_dtype(ctx.elem_type(m.qk.output[0]))).min)
    if lowest <= ABSORBED_FILL:
        return lowest, None
    # float16 scores hold no absorbed fill: -inf, where no row is masked throughout
    if _keeps_a_key_in_every_row(ctx, m):
        return -np.inf, None
    return None, (f"{m.fill.name!r}: masked_fill with {v:g} in float16, whose condition may mask a row "
                  "throughout (softmax averages such a row; -inf, float16's only absorbed fill, gives none)")


def _bias_plan(ctx, m, mask, fill, dtype):
    """The fused node's additive bias: None, the mask's name, a constant array, or (for
    _bias_nodes) the Where / Add still to build."""
    if fill is None:
        return mask
    cond = m.fill.input[0]
    inner = mask if m.add_inside else None          # Where(cond, S + mask, fill)
    outer = mask if not m.add_inside else None      # Where(cond, S, fill) + mask
    cond_v, mask_v = ctx.constants.get(cond), ctx.constants.get(mask) if mask else None
    if cond_v is not None and (mask is None or mask_v is not None):
        kept = np.asarray(mask_v if inner else 0, dtype)
        given = np.asarray(fill, dtype)
        bias = np.where(cond_v, kept, given) if m.fill_keep == 1 else np.where(cond_v, given, kept)
        bias = bias.astype(dtype)
        return bias + np.asarray(mask_v, dtype) if outer else bias
    return (cond, m.fill_keep, inner, outer, fill, dtype)


def _bias_nodes(ctx, name, cond, keep, inner, outer, fill, dtype):
    """(the bias's name, the nodes computing it at run time): Where(cond, kept, fill) [+ mask]."""
    given = ctx.add_constant(f"{name}_fill", np.asarray(fill, dtype))
    kept = inner or ctx.add_constant(f"{name}_kept", np.zeros((), dtype))
    where = ctx.new_name(f"{name}_bias")
    nodes = [helper.make_node("Where", [cond, kept, given] if keep == 1 else [cond, given, kept], [where],
                              name=where)]
    if outer is None:
        return where, nodes
    total = ctx.new_name(f"{name}_bias_mask")
    nodes.append(helper.make_node("Add", [where, outer], [total], name=total))
    return total, nodes


# finite fills at or below this are absorbed by any float32 score below 2^103: S + fill == fill
ABSORBED_FILL = -2.0 ** 127
# finite fills above ABSORBED_FILL but at or below this become finfo(float32).min (see above)
FAR_FILL = -1e4


class AttentionDecomposed(GraphPass):
    name = "attention_decomposed"

    def matches(self, ctx):
        g = Graph(ctx)
        for sm in ctx.nodes:
            if not is_op(sm, "Softmax") or len(sm.input) != 1:
                continue
            m = Match(sm, None, None)
            value = _peel_masks(ctx, g, m, g.root(sm.input[0], m.casts))
            if value is None:
                continue
            node = g.prod(value, "Mul", "Div")
            if node is not None:
                # the scores side is the MatMul's; check refuses a scale that is not a constant
                x = next((i for i in node.input[:1 if node.op_type == "Div" else 2] if g.prod(i, "MatMul")), None)
                if x is None:
                    continue
                m.scale_node, value = node, x
            m.qk = g.prod(value, "MatMul")
            if m.qk is None or len(m.qk.input) != 2:
                continue
            # the readers of P: MatMul(P, V), or IsNaN(P) + Where(isnan, 0, P) -> MatMul
            p = sm.output[0]
            reader, casts = g.single_reader(p)
            if reader is not None and casts:
                m.casts += casts
                p = casts[-1].output[0]
            readers = g.consumers.get(p, [])
            if len(readers) == 2:
                isnan = next((r for r in readers if is_op(r, "IsNaN")), None)
                where = next((r for r in readers if is_op(r, "Where")), None)
                if isnan is None or where is None or len(where.input) != 3 \
                        or where.input[0] != isnan.output[0] or where.input[2] != p:
                    continue
                m.isnan, m.where, p = isnan, where, where.output[0]
                readers = g.consumers.get(p, [])
            if len(readers) != 1 or not is_op(readers[0], "MatMul") or readers[0].input[0] != p \
                    or len(readers[0].input) != 2:
                continue
            m.pv = readers[0]
            for attr, name in (("q_mul", m.qk.input[0]), ("k_mul", m.qk.input[1])):
                node = g.prod(name, "Mul")
                if node is not None and _const_operand(ctx, node)[0] is not None:
                    setattr(m, attr, node)
            yield m

    def describe(self, m):
        return PATTERN, [n.name for n in m.nodes]

    def check(self, ctx, m):
        g = Graph(ctx)
        # a scaling Mul on Q / Kt another node also reads stays: the fused node reads its output
        for attr in ("q_mul", "k_mul"):
            node = getattr(m, attr)
            if node is not None and (node.output[0] in g.outputs or len(g.consumers.get(node.output[0], [])) != 1):
                setattr(m, attr, None)
        scale = 1.0
        q, kt = m.qk.input
        for node in (m.q_mul, m.k_mul):
            if node is not None:
                x, c = _const_operand(ctx, node)
                scale *= c
                q, kt = (x, kt) if node is m.q_mul else (q, x)
        if m.scale_node is not None:
            x, c = _const_operand(ctx, m.scale_node)
            if x != m.qk.output[0]:
                return f"{m.scale_node.name!r}: the scores are scaled by a value that is not a constant scalar"
            scale = scale / c if m.scale_node.op_type == "Div" else scale * c
        if not np.isfinite(scale):
            return f"scale {scale} is not finite"
        v = m.pv.input[1]
        scores = m.qk.output[0]
        values = [q, kt, v, scores, m.pv.output[0]]
        reason = float_type_reason(ctx, values + [n.output[0] for n in m.nodes if n is not m.isnan],
                                   PRODUCT_DTYPES)
        if reason:
            return reason
        shapes = {n: ctx.shape(n) for n in (q, kt, v, scores)}
        for name, s in shapes.items():
            if s is None:
                return f"rank of {name!r} unknown"
            if len(s) not in (3, 4):
                return f"{name!r} has rank {len(s)} (handled: 3 or 4)"
        rank = len(shapes[q])
        if any(len(s) != rank for s in shapes.values()):
            return "Q, Kt, V and the scores differ in rank"
        sq_, skt, sv = shapes[q], shapes[kt], shapes[v]
        # batch / head dims: the kernel call broadcasts them as the MatMuls would
        # (kernel_calls._broadcast_attention), so dims shape inference could not name (a
        # dynamic-axes export's heads come from a Reshape of Shape values) are taken; two known
        # different sizes, neither 1, would fail in the MatMuls themselves
        for i in range(rank - 2):
            if _clash(sq_[i], skt[i], sv[i]):
                return (f"batch/head dims of Q {list(sq_)}, Kt {list(skt)}, V {list(sv)} differ (the "
                        "MatMuls cannot broadcast them)")
        ss = ctx.shape(scores)
        mask = None
        if m.mask_add is not None:
            mask = other_input(m.mask_add, m.mask_side)
            if mask is None:
                return "the mask Add adds the scores to themselves"
            reason = _broadcast_reason(ctx, f"the mask {mask!r}", mask, ss)
            if reason:
                return reason
        fill = None
        if m.fill is not None:
            fill, reason = _fill_value(ctx, m, ss)
            if reason:
                return reason
        bias = _bias_plan(ctx, m, mask, fill, helper.tensor_dtype_to_np_dtype(ctx.elem_type(scores)))
        const = bias if isinstance(bias, np.ndarray) else ctx.constants.get(mask) if fill is None else None
        # without the Where(IsNaN), a row the bias sets to -inf for every key is NaN, as Softmax
        # gives it (the kernel's own choice is zeros): unless the bias is a constant without -inf,
        # the fused node says so (nan_rows), checked on the bias at run time (a masked_fill's own
        # Where(cond, 0, fill) holds -inf only where its fill is -inf)
        if const is not None:
            nan_rows = m.where is None and bool(np.isneginf(const).any())
            if not np.any(const):
                bias = None     # torch's baddbmm(empty, q, kt, beta=0) adds a tensor of zeros
        else:
            nan_rows = m.where is None and (mask is not None or fill == -np.inf)
        sm_attrs, reason = node_attrs(m.softmax)
        if reason:
            return reason
        axis = sm_attrs.get("axis", -1 if ctx.opsets.get("", 13) >= 13 else 1)
        if axis not in (-1, len(ctx.shape(scores)) - 1):
            return f"Softmax over axis {axis} (the kernel takes the last)"
        if m.where is not None:
            zero = ctx.constants.get(m.where.input[1])
            if zero is None or zero.size != 1 or float(np.asarray(zero).reshape(())) != 0.0:
                return f"{m.where.name!r}: Where(IsNaN(P), c, P) with c not a constant 0"
        reason = chain_nodes_reason(g, m.nodes, m.pv.output[0])
        if reason:
            return reason
        m.plan = {"q": q, "kt": kt, "v": v, "bias": bias, "scale": float(np.float32(scale)),
                  "nan_rows": int(bool(bias is not None and nan_rows))}
        return None

    def rewrite(self, ctx, m):
        p = m.plan
        removed = in_graph_order(ctx, m.nodes)
        name = fused_name(ctx, removed, "Attention")
        bias, bias_nodes = p["bias"], []
        if isinstance(bias, np.ndarray):
            bias = ctx.add_constant(f"{name}_bias", bias)
        elif isinstance(bias, tuple):
            bias, bias_nodes = _bias_nodes(ctx, name, *bias)
        new = make_node("Attention", [p["q"], p["kt"], p["v"], bias or ""], [m.pv.output[0]],
                        name, scale=p["scale"], nan_rows=p["nan_rows"])
        ctx.replace_nodes(removed, bias_nodes + [new])
        ctx.report.fused.append({
            "pass": self.name, "op": PATTERN, "pattern": "-".join(n.op_type for n in removed),
            "nodes": [n.name for n in removed], "normrt_op": "Attention", "normrt_node": new.name,
            "kernel": NORM_OPS["Attention"].kernel, "activation": None, "residual": False,
        })
