"""The head-split / head-merge Transposes around an attention -> the attention's layouts.

Exporters split heads with Reshape + Transpose and merge them back with
Transpose + Reshape; each Transpose copies the whole tensor. The fused kernel
reads Q, K, V and writes Y through strides, so the Transposes become layout
attributes of the normrt::Attention node (see domain.py) and disappear:

    Xq (B,Sq,H,D) ─► Transpose(0,2,1,3) ─┐ Q
    Xk (B,Skv,H,D) ─► Transpose(0,2,3,1) ─┤ Kt   (normrt::Attention; an ONNX Attention
                      [or (0,2,1,3) ─► Transpose(0,1,3,2)]     reads K: Transpose(0,2,1,3))
    Xv (B,Skv,H,Dv) ─► Transpose(0,2,1,3) ─┤ V
                               [bias] ─────┴─► Attention ─► Y (B,H,Sq,Dv) ─► Transpose(0,2,1,3) ─► Z

    ==>  Xq, Xk, Xv [, bias] ─► normrt::Attention(q_layout=BSHD, k_layout=BSHD,
                                                  v_layout=BSHD, y_layout=BSHD) ─► Z (B,Sq,H,Dv)

Z is written contiguous in its (B, Sq, H, Dv) order. Each Transpose is absorbed
on its own (the others stay): a chain of Transposes on one input is composed,
and taken when the composition is a layout the kernel reads (q/v: BHSD, BSHD;
kt: BHDS, BHSD, BSHD). The Reshapes that split the heads before the absorbed
Transposes, (B, S, H*D) -> (B, S, H, D), and the one merging them after Z,
(B, Sq, H, Dv) -> (B, Sq, H*Dv), go too when their shapes are known and nothing
else reads their outputs (q_heads / kv_heads / merge_heads: the kernel views
the merged tensors as split; K's and V's are taken together or not at all):

    Xq, Xk, Xv (B, S, H*D) ─► normrt::Attention(..., q_heads=H, kv_heads=Hkv, merge_heads=1) ─► (B, Sq, H*Dv)

Matched: normrt::Attention nodes with rank-4 inputs (attention_decomposed's),
and the standard Attention (opset 23+) with 4-D Q/K/V, which becomes a
normrt::Attention when a Transpose is absorbed.

Refused (reason in the report): a Transpose whose output another node reads
or is a graph output (it must stay; the others are still absorbed, so this is
reported only when nothing is left to absorb); an ONNX Attention with
attributes the kernel does not implement (softcap, qk_matmul_output_mode,
head counts for 3-D inputs, a softmax precision other than float), a kv cache,
several outputs, elements other than float32 (float64 keeps the op's float64
path: the scale attribute is a float32), or no scale and an unknown head dim
(the default scale is 1/sqrt(D)); a Transpose's output also read as the bias.
A boolean mask becomes the float bias normrt's op adds, Where(mask, 0, -inf),
as the standard op defines it (a constant mask: a constant bias).
"""
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto, helper

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import Graph, fused_name, in_graph_order, is_op
from ._queries import is_normrt, node_attrs, take_fused_entry

PATTERN = "attention layouts"

# layout -> how the kernel views the stored array: Q/V/Y as (B, H, S, D), Kt as (B, H, D, S)
ROWS = {"BHSD": (0, 1, 2, 3), "BSHD": (0, 2, 1, 3)}
KT = {"BHDS": (0, 1, 2, 3), "BHSD": (0, 1, 3, 2), "BSHD": (0, 2, 3, 1)}
# the standard op reads K (B, H, S, D): its layouts are normrt's k_layout BHSD / BSHD
ONNX_K = {"BHSD": (0, 1, 2, 3), "BSHD": (0, 2, 1, 3)}
HEADS_SWAP = (0, 2, 1, 3)
ONNX_ATTRS = {"scale", "is_causal", "qk_matmul_output_mode", "softcap", "softmax_precision",
              "q_num_heads", "kv_num_heads"}


@dataclass
class Match:
    node: object                     # normrt::Attention or the standard Attention
    standard: bool
    plan: dict = field(default_factory=dict)


def _same(a, b):
    """Two dims known equal (equal ints, or the same symbolic name)."""
    return a is not None and a == b


def _perm(node):
    attrs, _ = node_attrs(node)
    perm = (attrs or {}).get("perm")
    return tuple(perm) if perm is not None else None


class AttentionLayout(GraphPass):
    name = "attention_layout"

    def matches(self, ctx):
        g = Graph(ctx)
        for node in ctx.nodes:
            standard = is_op(node, "Attention")
            if not standard and not is_normrt(node, "Attention"):
                continue
            ins = [g.prod(x, "Transpose") for x in node.input[:3] if x]
            outs = [r for r in g.consumers.get(node.output[0], []) if is_op(r, "Transpose")] \
                if node.output and node.output[0] else []
            if any(t is not None and len(t.input) == 1 and _perm(t) is not None and len(_perm(t)) == 4
                   for t in ins + outs):
                yield Match(node, standard)

    def describe(self, m):
        return PATTERN, [m.node.name]

    def _absorb(self, g, name, view, table, taken):
        """Walk the Transposes producing `name` (seen by the kernel through `view`): (the
        source value, its layout, the Transposes taken, why a Transpose stayed or None)."""
        layout = next(k for k, v in table.items() if v == view)
        found, reason = [], None
        while True:
            t = g.prod(name, "Transpose")
            if t is None or len(t.input) != 1 or _perm(t) is None or len(_perm(t)) != 4:
                break
            composed = tuple(_perm(t)[i] for i in view)
            if composed not in table.values():
                reason = reason or f"{t.name!r}: perm {list(_perm(t))} gives no layout the kernel reads"
                break
            readers = g.consumers.get(name, [])
            if name in g.outputs or any(id(r) not in taken for r in readers):
                reason = reason or f"the Transpose {t.name!r}'s output is also read elsewhere"
                break
            found.append(t)
            taken.add(id(t))
            name, view = t.input[0], composed
            layout = next(k for k, v in table.items() if v == view)
        return name, layout, found, reason

    def _split_reshape(self, ctx, g, name, taken):
        """(its input, H, the Reshape) if `name` (B, S, H, D) is a Reshape of (B, S, H*D)
        whose output only taken nodes read, else None."""
        r = g.prod(name, "Reshape")
        if r is None or name in g.outputs or any(id(x) not in taken for x in g.consumers.get(name, [])):
            return None
        src, dst = ctx.shape(r.input[0]), ctx.shape(name)
        if src is None or dst is None or len(src) != 3 or len(dst) != 4:
            return None
        h, d, e = dst[2], dst[3], src[2]
        if not all(isinstance(x, (int, np.integer)) and x > 0 for x in (h, d, e)) or e != h * d:
            return None
        if not (_same(src[0], dst[0]) and _same(src[1], dst[1])):
            return None
        taken.add(id(r))
        return r.input[0], int(h), r

    def _merge_reshape(self, ctx, g, name):
        """The one reader of `name` (B, Sq, H, Dv) if it is a Reshape to (B, Sq, H*Dv), else None."""
        readers = g.consumers.get(name, [])
        r = readers[0] if len(readers) == 1 else None
        if not is_op(r, "Reshape") or name in g.outputs or r.input[0] != name:
            return None
        src, dst = ctx.shape(name), ctx.shape(r.output[0])
        if src is None or dst is None or len(src) != 4 or len(dst) != 3:
            return None
        h, d, e = src[2], src[3], dst[2]
        if not all(isinstance(x, (int, np.integer)) and x > 0 for x in (h, d, e)) or e != h * d:
            return None
        return r if _same(src[0], dst[0]) and _same(src[1], dst[1]) else None

    def _standard_reason(self, ctx, node):
        """(why the standard Attention node cannot become a normrt::Attention, None) or
        (None, (its normrt attributes, the dtype a boolean mask becomes or None))."""
        attrs, reason = node_attrs(node)
        if reason:
            return reason, None
        unknown = set(attrs) - ONNX_ATTRS
        if unknown:
            return f"attribute(s) {sorted(unknown)} not handled", None
        if int(attrs.get("qk_matmul_output_mode", 0)) != 0 or float(attrs.get("softcap", 0.0) or 0.0) != 0.0:
            return "softcap / qk_matmul_output_mode not handled by the kernel", None
        if "q_num_heads" in attrs or "kv_num_heads" in attrs:
            return "q_num_heads / kv_num_heads (3-D inputs) not handled", None
        if int(attrs.get("softmax_precision", TensorProto.FLOAT)) not in (TensorProto.FLOAT, 0):
            return "softmax_precision other than float", None
        if len(node.input) > 4 and any(node.input[4:]):
            return "a kv cache (past_key / past_value / nonpad_kv_seqlen)", None
        if len([o for o in node.output if o]) != 1 or len(node.output) > 1 and any(node.output[1:]):
            return "extra outputs (present_key / present_value / qk_matmul_output)", None
        if len(node.input) < 3:
            return "fewer than three inputs", None
        types = {ctx.elem_type(x) for x in node.input[:3]}
        bool_mask = False
        if len(node.input) > 3 and node.input[3]:
            mt = ctx.elem_type(node.input[3])
            bool_mask = mt == TensorProto.BOOL
            if not bool_mask:
                types.add(mt)
        types.add(ctx.elem_type(node.output[0]))
        if types != {TensorProto.FLOAT}:
            # float64 stays on the op's float64 path: normrt's scale attribute is a float32
            return "elements not all float32 (the fused kernel is float32; a mask may be bool)", None
        scale = attrs.get("scale")
        if scale is None:
            q_shape = ctx.shape(node.input[0])
            d = q_shape[-1] if q_shape is not None and len(q_shape) == 4 else None
            if not isinstance(d, (int, np.integer)) or d <= 0:
                return "no scale attribute and the head dim of Q is unknown (default scale 1/sqrt(D))", None
            scale = 1.0 / np.sqrt(d)
        if not np.isfinite(scale):
            return f"scale {scale} is not finite", None
        plan = {"scale": float(np.float32(scale)), "is_causal": int(attrs.get("is_causal", 0))}
        # a boolean mask: the dtype of the float bias it becomes
        mask_dtype = np.float32 if bool_mask else None
        return None, (plan, mask_dtype)

    def check(self, ctx, m):
        g = Graph(ctx)
        node = m.node
        if id(node) not in g.ids:
            return f"node {node.name!r} already rewritten"
        if m.standard:
            reason, plan = self._standard_reason(ctx, node)
            if reason:
                return reason
            attrs, bool_mask = plan
            layouts = {"q_layout": "BHSD", "k_layout": "BHSD", "v_layout": "BHSD", "y_layout": "BHSD"}
        else:
            attrs, reason = node_attrs(node)
            if reason:
                return reason
            layouts = {k: attrs.get(k, NORM_OPS["Attention"].defaults[k])
                       for k in ("q_layout", "k_layout", "v_layout", "y_layout")}
            if layouts["q_layout"] not in ROWS or layouts["v_layout"] not in ROWS \
                    or layouts["k_layout"] not in KT or layouts["y_layout"] not in ROWS:
                return f"unknown layouts {layouts}"
            attrs = {k: v for k, v in attrs.items() if k not in layouts}
            bool_mask = None
        taken = {id(node)}
        k_table = ONNX_K if m.standard else KT
        inputs, removed, reasons = list(node.input), [], []
        for i, (key, table) in enumerate((("q_layout", ROWS), ("k_layout", k_table), ("v_layout", ROWS))):
            src, layout, found, reason = self._absorb(g, inputs[i], table[layouts[key]], table, taken)
            inputs[i], layouts[key] = src, layout
            removed += found
            if reason:
                reasons.append(reason)
        output = node.output[0]
        if layouts["y_layout"] == "BHSD":
            readers = g.consumers.get(output, [])
            t = readers[0] if len(readers) == 1 else None
            if output not in g.outputs and is_op(t, "Transpose") and _perm(t) == HEADS_SWAP:
                output, layouts["y_layout"] = t.output[0], "BSHD"
                removed.append(t)
            elif any(is_op(r, "Transpose") and _perm(r) == HEADS_SWAP for r in readers):
                reasons.append(f"the output {output!r} is also read elsewhere than by its Transpose")
        if not removed:
            return "; ".join(reasons) or "no Transpose to absorb"
        if any(t.output[0] in node.input[3:] for t in removed):
            return "a Transpose's output read both as Q/K/V and as the bias"
        attrs = dict(attrs)
        # the head split / merge Reshapes next to the absorbed Transposes
        splits = {}
        for i, key in ((0, "q_layout"), (1, "k_layout"), (2, "v_layout")):
            if layouts[key] == "BSHD" and inputs[i] not in node.input[3:]:
                splits[i] = self._split_reshape(ctx, g, inputs[i], taken)
        if splits.get(0):
            inputs[0], attrs["q_heads"] = splits[0][0], splits[0][1]
            removed.append(splits[0][2])
        if splits.get(1) and splits.get(2) and splits[1][1] == splits[2][1]:
            inputs[1], inputs[2], attrs["kv_heads"] = splits[1][0], splits[2][0], splits[1][1]
            removed += [splits[1][2], splits[2][2]]
        if layouts["y_layout"] == "BSHD":
            merge = self._merge_reshape(ctx, g, output)
            if merge is not None:
                output, attrs["merge_heads"] = merge.output[0], 1
                removed.append(merge)
        # one value read in two slots (K and V both the same Transpose's output): absorbing it for one
        # slot removes the Transpose the other still reads
        gone = {o for n in removed for o in n.output}
        if any(i in gone for i in inputs):
            return "a removed node's output is still read by the fused node (one value in two of Q/K/V/bias)"
        m.plan = {"inputs": inputs, "output": output, "layouts": layouts, "attrs": attrs, "removed": removed,
                  "bool_mask": bool_mask}
        return None

    def rewrite(self, ctx, m):
        p = m.plan
        old = in_graph_order(ctx, [m.node] + p["removed"])
        name = fused_name(ctx, old, "Attention") if m.standard else m.node.name
        inputs, added = list(p["inputs"]), []
        if p["bool_mask"] is not None:
            # the standard op's boolean mask (True: attend) -> the additive bias normrt's op takes
            dtype, mask = p["bool_mask"], inputs[3]
            if ctx.is_constant(mask):       # folded here, as constant folding would
                inputs[3] = ctx.add_constant(mask + "_bias", np.where(ctx.constants[mask], dtype(0), dtype(-np.inf)))
            else:
                inputs[3] = ctx.new_name(mask + "_bias")
                added.append(helper.make_node(
                    "Where", [mask, ctx.add_constant("attn_keep", dtype(0)),
                              ctx.add_constant("attn_mask_out", dtype(-np.inf))],
                    [inputs[3]], name=ctx.new_name(name + "/mask_bias")))
        new = make_node("Attention", inputs, [p["output"]], name, **p["attrs"], **p["layouts"])
        ctx.replace_nodes(old, added + [new])
        entry = take_fused_entry(ctx, m.node.name) or {
            "pass": self.name, "op": "Attention", "pattern": "Attention", "nodes": [m.node.name],
            "normrt_op": "Attention", "kernel": NORM_OPS["Attention"].kernel, "activation": None,
            "residual": False}
        entry["normrt_node"] = new.name
        entry["nodes"] = list(entry["nodes"]) + [t.name for t in p["removed"]]
        entry["pattern"] = f"{entry['pattern']}+layouts"
        ctx.report.fused.append(entry)
