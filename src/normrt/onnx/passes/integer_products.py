"""Dynamically quantized products (onnxruntime's quantize_dynamic) -> float products of the
dequantized operands.

    xq, xz ───────────────────────────┐             (xq, xs, xz: DynamicQuantizeLinear(x),
    W (const), wz (const) ──► MatMulInteger ──► Cast(to=float) ──► Mul ──► y    or any scalar
    xs ──► Mul(xs, ws (const)) ───────────────────────────────────┘           quantization)

    ==>   xq, xs, xz ──► DequantizeLinear ──► xd ──► MatMul(xd, W') ──► y,
          W' = (W - wz) * ws  (a float32 constant, per column when ws / wz are)

    and likewise ConvInteger(xq, W, xz, wz) ──► Cast ──► Mul(xs * ws)  ==>  Conv(xd, W') with the
    ConvInteger's attributes, W' = (W - wz) * ws per output channel (ws one value, or (M, 1, ..., 1)).

What the subgraph computes: y = xs ws (xq - xz) @ (W - wz), the integer product scaled by the
two scales. As a float product of the dequantized operands, ((xq - xz) xs) @ ((W - wz) ws),
it is the same sum of the same terms, up to float32 rounding (each term rounded once, the sum
in the GEMM's order: a float32 Linear layer's error, where the integer route rounds once at the
end). The product then runs on normrt's float32 GEMM with W' packed once, its bias Add / GELU
fuse as a float model's would (matmul_epilogue, conv_epilogue), and Q/K/V products on one input
merge (sibling_matmuls). quantize_dynamic BERT: 12.5 -> 6.3 ms.

Refused (the integer ops then run as written, exactly): a weight or weight zero point that is
not a constant, or a zero point that is not one value or one per column (output channel) of W; a
scale that is not xs * ws with xs one value (per-tensor activation quantization) and ws a
constant of one value or one per column (output channel, shaped to broadcast over the conv's
output); a Cast to another type; middle values read elsewhere; a MatMul weight that is not 2-D.
"""
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from . import GraphPass
from ._queries import constant, is_op, other_input, present, private_reason


@dataclass
class IntegerMatch:
    product: object      # MatMulInteger
    cast: object
    mul: object
    scale_mul: object    # Mul(xs, ws)

    @property
    def nodes(self):
        return [self.product, self.cast, self.mul]


class IntegerProducts(GraphPass):
    name = "integer_products"
    report_refusals = False      # a refused product still runs, exactly, as integer ops

    def run(self, ctx):
        self._dequantized = {}       # (xq, xs, xz) -> its DequantizeLinear output: Q, K, V share one
        return super().run(ctx)

    def matches(self, ctx):
        consumers = ctx.consumers()
        producer = ctx.producer()
        for node in ctx.nodes:
            if not is_op(node, "MatMulInteger", "ConvInteger") or not node.output[0]:
                continue
            readers = consumers.get(node.output[0], [])
            if len(readers) != 1 or not is_op(readers[0], "Cast"):
                continue
            cast = readers[0]
            after = consumers.get(cast.output[0], [])
            if len(after) != 1 or not is_op(after[0], "Mul"):
                continue
            scale = other_input(after[0], cast.output[0])
            scale_mul = producer.get(scale)
            if scale_mul is not None and is_op(scale_mul, "Mul"):
                yield IntegerMatch(node, cast, after[0], scale_mul)

    def describe(self, m):
        return f"{m.product.op_type}+Cast+Mul", [n.name for n in m.nodes]

    def _parts(self, ctx, m):
        """(xs name, ws value) of the scale product, or a reason string."""
        a, b = m.scale_mul.input[0], m.scale_mul.input[1]
        for xs, ws in ((a, b), (b, a)):
            wv = constant(ctx, ws)
            if wv is not None and not ctx.is_constant(xs):
                return xs, wv
        return "the scale is not Mul(activation scale, constant weight scale)"

    def check(self, ctx, m):
        if not present(ctx, m.nodes + [m.scale_mul]):
            return "nodes already rewritten by an earlier match"
        consumers = ctx.consumers()
        for name, allowed in ((m.product.output[0], [m.cast]), (m.cast.output[0], [m.mul])):
            reason = private_reason(ctx, consumers, name, allowed)
            if reason:
                return reason
        to = next((a.i for a in m.cast.attribute if a.name == "to"), None)
        if to != TensorProto.FLOAT:
            return f"Cast to type {to}, not float"
        ins = list(m.product.input) + [""] * (4 - len(m.product.input))
        w, wz = constant(ctx, ins[1]), constant(ctx, ins[3]) if ins[3] else None
        conv = m.product.op_type == "ConvInteger"
        if w is None or (w.ndim != 2 if not conv else w.ndim < 3):
            return f"weight is not a {'conv' if conv else '2-D'} constant"
        if ins[3] and wz is None:
            return "weight zero point is not a constant"
        n = w.shape[0] if conv else w.shape[1]
        if wz is not None and wz.size not in (1, n):
            return f"weight zero point of shape {wz.shape} for {n} output channels"
        parts = self._parts(ctx, m)
        if isinstance(parts, str):
            return parts
        xs, ws = parts
        per_channel = (n,) + (1,) * (w.ndim - 2) if conv else (n,)
        if ws.dtype != np.float32 or (ws.size != 1 and ws.shape != per_channel):
            return f"weight scale of shape {ws.shape} ({ws.dtype}) for {n} output channels"
        xs_shape = ctx.shape(xs)
        if xs_shape is None or int(np.prod([d if isinstance(d, int) else 2 for d in xs_shape])) != 1:
            return f"activation scale {xs!r} is not known to be one value"
        if ctx.elem_type(xs) != TensorProto.FLOAT:
            return f"activation scale {xs!r} is not float32"
        za = ins[2]
        if za and (ctx.shape(za) is None or int(np.prod([d if isinstance(d, int) else 2 for d in ctx.shape(za)])) != 1):
            return "activation zero point is not known to be one value"
        return None

    def rewrite(self, ctx, m):
        ins = list(m.product.input) + [""] * (4 - len(m.product.input))
        xq, w_name, xz, wz_name = ins
        xs, ws = self._parts(ctx, m)
        w = constant(ctx, w_name).astype(np.float32)
        conv = m.product.op_type == "ConvInteger"
        # per output channel: W's axis 0 for a conv, its columns for a MatMul
        channel = (-1,) + (1,) * (w.ndim - 1) if conv else (-1,)
        if wz_name:
            w = w - constant(ctx, wz_name).astype(np.float32).reshape(channel)
        w_float = (w * ws.astype(np.float32).reshape(channel)).astype(np.float32)
        w_const = ctx.add_constant(f"{w_name}_dequantized", w_float)
        # its integer form, for the 8-bit product (quantized_products)
        ctx.dequantized[w_const] = (constant(ctx, w_name), ws, constant(ctx, wz_name) if wz_name else None,
                                    0 if conv else 1)
        mm_name = m.product.name
        xd = self._dequantized.get((xq, xs, xz))
        new = []
        if xd is None:
            xd = ctx.new_name(f"{xq}_dequantized")
            new.append(helper.make_node("DequantizeLinear", [xq, xs] + ([xz] if xz else []), [xd],
                                        name=ctx.new_name(f"{mm_name}_dequantize")))
            self._dequantized[(xq, xs, xz)] = xd
        if conv:
            product = helper.make_node("Conv", [xd, w_const], [m.mul.output[0]], name=mm_name)
            product.attribute.extend(m.product.attribute)          # pads, strides, group... as written
        else:
            product = helper.make_node("MatMul", [xd, w_const], [m.mul.output[0]], name=mm_name)
        new.append(product)
        ctx.replace_nodes(m.nodes, new)
        # the scale product (xs * ws) has no reader left: gone now, so xs is the DequantizeLinear's
        # alone (dynamic_qdq_pairs, next, needs that)
        scale = m.scale_mul.output[0]
        if ctx.contains(m.scale_mul) and not ctx.consumers().get(scale) and scale not in ctx.graph_outputs:
            ctx.replace_nodes([m.scale_mul], [])
