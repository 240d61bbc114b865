"""A constant per-channel affine in front of a padding-free Conv -> folded into its weights.

torchvision's input standardization `(x - mean) / std` with constant per-channel
mean and std, right before the first Conv:

    X ─► [Sub / Add / Mul / Div by per-channel constants, any order] ─► Conv(·, W, b) ─► Y

    ==>  X ─► Conv(·, W·a, b + Σ W·d) ─► Y          (the chain is X·a + d per channel)

since Conv(a ⊙ X + d) = Conv_{W·a}(X) + Σ_{c,k} W[m, c, k]·d_c + b_m. That holds at every
output position only when the Conv reads no zero padding (a padded border sees 0, not
d): Convs with pads or auto_pad SAME are refused with that reason, and the affine stays.

Not taken: an affine right after a product of two run-time values (x * g(x)): that is the
tail of an activation written out (torch's legacy Erf GELU ends `Mul(x, 1 + erf) -> Mul(0.5)`,
a SiLU or hardswish is `x * g(x)`), and folding its constant factor into the next Conv would
leave the rest unrecognizable to the epilogue passes, which fuse the whole activation.

Refused (reason in the report): padding; group > 1; constants that vary along other
axes than the channel axis; a middle value read elsewhere or a graph output; W or b
not constants; element types other than float32/float64; shapes not static.
"""
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import GraphPass
from ._queries import WIDE_DTYPES, chain_nodes_reason, dtype_reason, Graph
from ._dataflow import Dataflow, is_op
from ._queries import channel_vector, node_attrs, private_reason

PATTERN = "per-channel affine before Conv"


@dataclass
class Match:
    conv: object
    chain: list = field(default_factory=list)    # the affine ops, X first
    x: str = None
    plan: dict = field(default_factory=dict)


class AffineBeforeConv(GraphPass):
    name = "affine_before_conv"
    # most refused chains are plain arithmetic (a residual scale before a padded Conv), no
    # normalization: only an input standardization (a per-channel shift) reports its refusal
    report_refusals = False

    def matches(self, ctx):
        df = Dataflow(ctx)
        for conv in ctx.nodes:
            if not is_op(conv, "Conv") or len(conv.input) < 2:
                continue
            chain, value = [], conv.input[0]
            while True:
                node = df.producer.get(value)
                if not is_op(node, "Add", "Sub", "Mul", "Div") or len(node.input) != 2:
                    break
                runtime = [i for i in node.input if df.const(i) is None]
                if len(runtime) != 1 or (node.op_type == "Div" and node.input[0] != runtime[0]):
                    break
                chain.insert(0, node)
                value = runtime[0]
            if chain and not _gated_product(df, value):
                yield Match(conv, chain, value)

    def describe(self, m):
        return PATTERN, [n.name for n in m.chain + [m.conv]]

    def check(self, ctx, m):
        if not all(ctx.contains(n) for n in m.chain + [m.conv]):
            return "node already rewritten"
        attrs, reason = node_attrs(m.conv)
        if reason:
            return reason
        if any(attrs.get("pads", [0])) or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            reason = ("the Conv pads its input with zeros: the folded bias would be wrong at the border "
                      "(the affine stays as it is)")
            if self._standardizes(ctx, m):
                op, names = self.describe(m)
                ctx.report.refused.append({"pass": self.name, "op": op, "nodes": names, "reason": reason})
            return reason
        if attrs.get("group", 1) != 1:
            return "grouped Conv"
        W = ctx.constants.get(m.conv.input[1])
        b = ctx.constants.get(m.conv.input[2]) if len(m.conv.input) > 2 and m.conv.input[2] else None
        if W is None or (len(m.conv.input) > 2 and m.conv.input[2] and b is None):
            return "Conv weights or bias are not constants"
        shape = ctx.shape(m.x)
        if shape is None or len(shape) != W.ndim or not isinstance(shape[1], int):
            return f"shape of {m.x!r} unknown"
        C, rank = shape[1], len(shape)
        if W.shape[1] != C:
            return f"Conv weight of {W.shape[1]} input channels, X has {C}"
        reason = dtype_reason(ctx, [m.x, m.conv.output[0]] + [n.output[0] for n in m.chain], WIDE_DTYPES)
        if reason:
            return reason
        a, d = np.ones(C), np.zeros(C)
        value = m.x
        for node in m.chain:
            other = node.input[1] if node.input[0] == value else node.input[0]
            vec, reason = channel_vector(np.asarray(ctx.constants[other], np.float64), C, rank)
            if reason:
                return reason
            if node.op_type == "Mul":
                a, d = a * vec, d * vec
            elif node.op_type == "Div":
                a, d = a / vec, d / vec
            elif node.op_type == "Add":
                d = d + vec
            elif node.input[0] == value:          # Sub(v, c)
                d = d - vec
            else:                                 # Sub(c, v)
                a, d = -a, vec - d
            if tuple(ctx.shape(node.output[0]) or ()) != tuple(shape):
                return f"{node.name!r} broadcasts X up"
            value = node.output[0]
        reason = chain_nodes_reason(Graph(ctx), m.chain, m.conv.input[0])
        if reason:
            return reason
        # the chain's last value goes too: the Conv must be its only reader (a residual Add reading
        # it as well - a QDQ ResNet's dequantized block input - would be left dangling)
        reason = private_reason(ctx, ctx.consumers(), m.conv.input[0], [m.conv])
        if reason:
            return reason
        W64 = W.astype(np.float64)
        bias = (np.zeros(W.shape[0]) if b is None else b.astype(np.float64)) + \
            (W64.reshape(W.shape[0], C, -1).sum(axis=2) @ d)
        m.plan = {"W": (W64 * a.reshape((1, C) + (1,) * (W.ndim - 2))).astype(W.dtype),
                  "b": bias.astype(W.dtype)}
        return None

    @staticmethod
    def _standardizes(ctx, m):
        """Whether the chain shifts by a per-channel (not one-element) constant: (x - mean) / std."""
        return any(n.op_type in ("Sub", "Add") and any(ctx.constants.get(i) is not None and
                                                       ctx.constants[i].size > 1 for i in n.input)
                   for n in m.chain)

    def rewrite(self, ctx, m):
        conv = m.conv
        base = conv.name or "Conv"
        new = onnx.NodeProto()
        new.CopyFrom(conv)                       # attributes exactly as they were
        del new.input[:]
        new.input.extend([m.x, ctx.add_constant(base + "_weight_input_affine", m.plan["W"]),
                          ctx.add_constant(base + "_bias_input_affine", m.plan["b"])])
        ctx.replace_nodes(m.chain + [conv], [new])
        ctx.report.fused.append({
            "pass": self.name, "op": PATTERN, "pattern": "-".join(n.op_type for n in m.chain) + "-Conv",
            "nodes": [n.name for n in m.chain + [conv]], "normrt_op": None, "normrt_node": None,
            "kernel": "folded into the Conv's weights and bias", "activation": None, "residual": False,
        })


def _gated_product(df, value):
    """Whether `value` is a Mul of two run-time values (an activation's x * g(x) product)."""
    node = df.producer.get(value)
    return is_op(node, "Mul") and len(node.input) == 2 and all(df.const(i) is None for i in node.input)
