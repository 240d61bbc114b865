"""A QuantizeLinear -> DequantizeLinear pair (static QDQ models) -> one normrt::FakeQuant pass.

    x ──► QuantizeLinear(s, zp) ──► q ──► DequantizeLinear(s, zp) ──► y       (q read by nothing else)

    ==>   x ──► normrt::FakeQuant(scale=s, zero_point=zp, lo, hi) ──► y     ([lo, hi]: q's type's range)

onnxruntime's quantize_static puts such a pair on every activation: "fake quantization", the
value rounded to the integer grid and back. Q computes saturate(round(x / s) + zp) and DQ
(q - zp) * s; in float32 every step after the division is exact until the last product
(integers below 2^24, the clamp to the type's range), so one float32 pass,
(min(max(round(x / s) + zp, lo), hi) - zp) * s, gives the pair's values bitwise (a NaN stays
NaN instead of some integer): the kernel `fake_quant` (pyx/elementwise.pyx) instead of two
numpy ops with an integer tensor between them; beside other elementwise ops, elementwise_chains
takes the node into their program as those seven float ops. A 1x64x56x56 pair: 170 us on the elementwise
interpreter's seven passes per tile, 33 us on the kernel at one thread (onnxruntime's pair
43 us). The weights' DequantizeLinears are constants and fold at load (constant_folding).

Refused (the pair then runs as written): scales or zero points that are not constants, differ
between the two nodes, or hold more than one value (per-axis, blocked); x not float32; an
output type other than int8/uint8/int16/uint16; q read by another node or a graph output.
"""
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import constant, fused_name, is_op, present, private_reason

PATTERN = "static fake quantization"

_TYPES = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT16: np.int16,
          TensorProto.UINT16: np.uint16}


@dataclass
class PairMatch:
    quantize: object
    dequantize: object

    @property
    def nodes(self):
        return [self.quantize, self.dequantize]


def pairs(ctx, quantize_op):
    """PairMatch(quantize node, dequantize node) for each `quantize_op` node whose quantized
    output is read by one node only, a DequantizeLinear reading it as its x (also
    dynamic_qdq_pairs')."""
    consumers = ctx.consumers()
    for node in ctx.nodes:
        if not is_op(node, quantize_op) or not node.output or not node.output[0]:
            continue
        readers = consumers.get(node.output[0], [])
        if len(readers) == 1 and is_op(readers[0], "DequantizeLinear") and readers[0].input[0] == node.output[0]:
            yield PairMatch(node, readers[0])


def _params(ctx, node):
    """(scale, zero point or None) constants of a Q/DQ node, or None when not constants."""
    ins = list(node.input) + [""] * (3 - len(node.input))
    scale = constant(ctx, ins[1])
    zp = constant(ctx, ins[2]) if ins[2] else None
    if scale is None or (ins[2] and zp is None):
        return None
    return scale, zp


class QdqPairs(GraphPass):
    name = "qdq_pairs"
    report_refusals = False       # a refused pair runs as written

    def matches(self, ctx):
        return pairs(ctx, "QuantizeLinear")

    def describe(self, m):
        return "QuantizeLinear+DequantizeLinear", [n.name for n in m.nodes]

    def _grid(self, ctx, m):
        """(scale, zero point, integer type) of the pair, or a reason string."""
        qp, dp = _params(ctx, m.quantize), _params(ctx, m.dequantize)
        if qp is None or dp is None:
            return "scale or zero point is not a constant"
        (qs, qz), (ds, dz) = qp, dp
        if qs.size != 1 or ds.size != 1 or (qz is not None and qz.size != 1) or (dz is not None and dz.size != 1):
            return "per-axis or blocked quantization"
        if qs.dtype != np.float32 or ds.dtype != np.float32 or qs.reshape(()) != ds.reshape(()):
            return "the two scales differ or are not float32"
        attrs = {a.name: helper.get_attribute_value(a) for a in m.quantize.attribute}
        if qz is not None:
            itype = qz.dtype
        else:
            itype = np.dtype(_TYPES.get(attrs.get("output_dtype", TensorProto.UINT8), np.float32))
        if itype not in [np.dtype(t) for t in _TYPES.values()]:
            return f"integer type {itype}"
        q_zero = 0 if qz is None else int(qz.reshape(()))
        d_zero = 0 if dz is None else int(dz.reshape(()))
        if q_zero != d_zero or (dz is not None and dz.dtype != itype):
            return "the two zero points differ"
        return float(qs.reshape(())), q_zero, itype

    def check(self, ctx, m):
        if not present(ctx, m.nodes):
            return "nodes already rewritten by an earlier match"
        reason = private_reason(ctx, ctx.consumers(), m.quantize.output[0], [m.dequantize])
        if reason:
            return reason
        if ctx.elem_type(m.quantize.input[0]) != TensorProto.FLOAT:
            return "x is not float32"
        if any(a.name == "precision" for a in m.quantize.attribute):
            return "QuantizeLinear precision attribute"
        grid = self._grid(ctx, m)
        return grid if isinstance(grid, str) else None

    def rewrite(self, ctx, m):
        scale, zero, itype = self._grid(ctx, m)
        info = np.iinfo(itype)
        replace_pair(ctx, self.name, PATTERN, m, "FakeQuant", scale=scale, zero_point=float(zero),
                     lo=float(info.min), hi=float(info.max))


def replace_pair(ctx, pass_name, pattern, m, op_type, **attrs):
    """The pair `m` -> one normrt `op_type` node from the quantizer's input to the dequantized
    value, and its report entry (also dynamic_qdq_pairs')."""
    new = make_node(op_type, [m.quantize.input[0]], [m.dequantize.output[0]], fused_name(ctx, m.nodes, op_type),
                    **attrs)
    ctx.replace_nodes(m.nodes, [new])
    ctx.report.fused.append({
        "pass": pass_name, "op": pattern, "pattern": "-".join(n.op_type for n in m.nodes),
        "nodes": [n.name for n in m.nodes], "normrt_op": op_type, "normrt_node": new.name,
        "kernel": NORM_OPS[op_type].kernel, "activation": None, "residual": False,
    })
