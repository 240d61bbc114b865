"""DynamicQuantizeLinear -> DequantizeLinear (a dynamically quantized input, dequantized) -> one
normrt::DynamicFakeQuant node.

    x ──► DynamicQuantizeLinear ──► q, s, z ──► DequantizeLinear(q, s, z) ──► y
                                                   (q, s, z read by nothing else)
    ==>   x ──► normrt::DynamicFakeQuant ──► y

What integer_products leaves of quantize_dynamic's Linear and Conv inputs (and what a
dynamically fake-quantized activation is anyway): x rounded to the uint8 grid of its own range
and back. The node computes the range's scale and zero point as DynamicQuantizeLinear does and
the rest in one pass of the `fake_quant` kernel (pyx/elementwise.pyx), bitwise the pair's
values (kernel_calls.dynamic_fake_quant), instead of two numpy ops with a uint8 tensor between
them (~36 us per pair on a small transformer's (1, 24, 64) activations; 128x768: 92 -> 37 us).

Refused (the pair then runs as written): x not float32; q, s or z read by any other node or a
graph output; a DequantizeLinear reading other values or with an axis-dependent form.
"""
from onnx import TensorProto

from . import GraphPass
from ._queries import present, private_reason
from .qdq_pairs import pairs, replace_pair

PATTERN = "dynamic fake quantization"


class DynamicQdqPairs(GraphPass):
    name = "dynamic_qdq_pairs"
    report_refusals = False       # a refused pair runs as written

    def matches(self, ctx):
        return pairs(ctx, "DynamicQuantizeLinear")

    def describe(self, m):
        return "DynamicQuantizeLinear+DequantizeLinear", [n.name for n in m.nodes]

    def check(self, ctx, m):
        if not present(ctx, m.nodes):
            return "nodes already rewritten by an earlier match"
        if list(m.dequantize.input) != list(m.quantize.output):
            return "the DequantizeLinear does not read the quantized value, its scale and zero point"
        if any(a.name in ("axis", "block_size", "output_dtype") for a in m.dequantize.attribute):
            return "DequantizeLinear with axis / block_size / output_dtype"
        consumers = ctx.consumers()
        for value in m.quantize.output:
            reason = private_reason(ctx, consumers, value, [m.dequantize])
            if reason:
                return reason
        if ctx.elem_type(m.quantize.input[0]) != TensorProto.FLOAT:
            return "x is not float32"
        return None

    def rewrite(self, ctx, m):
        replace_pair(ctx, self.name, PATTERN, m, "DynamicFakeQuant")
