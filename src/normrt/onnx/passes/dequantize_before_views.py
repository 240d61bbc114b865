"""A per-tensor DequantizeLinear after ops that only move values -> before them.

    q ──► Reshape / Transpose / Squeeze / Unsqueeze / Flatten / Identity (one or more) ──► DequantizeLinear(s, z) ──► y

    ==>   q ──► DequantizeLinear(s, z) ──► the same views, on float values ──► y

QOperator models (qlinear_operators) and QDQ models whose quantizer left views between the
integer tensors move 8-bit values through Reshape and Transpose (attention's head split) before
the next op dequantizes them. A per-tensor DequantizeLinear, (q - z) * s, is elementwise with
one scale and zero point: applied before or after a view, it gives every element the same value,
so the two orders are the same values. Moved before the views, it meets the QuantizeLinear that
made q: a private Quantize -> Dequantize pair, which qdq_pairs makes one FakeQuant pass (and
the float views then take the attention fusions).

Refused: a scale or zero point of more than one value (per-axis: the axis would move); an
intermediate value read by another node or a graph output (it would then be needed as integers);
views whose other inputs (Reshape's shape) are not constants.
"""
import numpy as np
from onnx import helper

from . import GraphPass
from ._queries import constant, is_op, present

VIEWS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")


class DequantizeBeforeViews(GraphPass):
    name = "dequantize_before_views"
    report_refusals = False       # a refused chain runs as written

    def matches(self, ctx):
        producer = ctx.producer()
        consumers = ctx.consumers()
        for node in ctx.nodes:
            if not is_op(node, "DequantizeLinear"):
                continue
            chain, value = [], node.input[0]
            while True:
                p = producer.get(value)
                if p is None or not is_op(p, *VIEWS) or p.output[0] != value \
                        or len(consumers.get(value, [])) != 1 or value in ctx.graph_outputs:
                    break
                chain.insert(0, p)
                value = p.input[0]
            if chain:
                yield node, chain

    def describe(self, match):
        node, chain = match
        return "views+DequantizeLinear", [n.name for n in chain + [node]]

    def check(self, ctx, match):
        node, chain = match
        if not present(ctx, chain + [node]):
            return "nodes already rewritten"
        ins = list(node.input) + [""] * (3 - len(node.input))
        for name in ins[1:]:
            if not name:
                continue
            v = constant(ctx, name)
            if v is None or v.size != 1:
                return f"{name!r} is not one constant value (per-axis quantization)"
        for view in chain:
            if any(i and not ctx.is_constant(i) for i in view.input[1:]):
                return f"{view.name}'s shape or axes are not constants"
        return None

    def rewrite(self, ctx, match):
        node, chain = match
        value = ctx.new_name(f"{chain[0].input[0]}_dequantized")
        new = [helper.make_node("DequantizeLinear", [chain[0].input[0]] + list(node.input[1:]), [value],
                                name=node.name, domain=node.domain)]
        new[0].attribute.extend(a for a in node.attribute if a.name != "axis")
        for k, view in enumerate(chain):
            out = node.output[0] if k == len(chain) - 1 else ctx.new_name(f"{view.output[0]}_float")
            moved = helper.make_node(view.op_type, [value] + list(view.input[1:]), [out], name=view.name)
            moved.attribute.extend(view.attribute)
            new.append(moved)
            value = out
        ctx.replace_nodes(chain + [node], new)
        ctx.mark_types_stale()
