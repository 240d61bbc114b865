"""onnxruntime's QOperator-format ops (com.microsoft::QLinearAdd, QLinearMul, QLinearSigmoid,
QLinearLeakyRelu, QLinearSoftmax, QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat,
QLinearReduceMean, QLinearWhere, QGemm; the standard QLinearMatMul and QLinearConv of a model)
-> the QDQ form they compute.

`quantize_static(..., quant_format=QuantFormat.QOperator)` (the older tools' default, and the
form of the ONNX Model Zoo's int8 models) writes each quantized op as one contrib node over 8-bit
tensors; neither the ONNX standard nor onnx.reference has them, so such models failed to load.
Each computes, by its definition, the float op of its dequantized inputs, quantized again:

    a, a_scale, a_zp ──┐
    b, b_scale, b_zp ──┼──► QLinearAdd ──► c                (uint8 / int8 tensors between ops)
    c_scale, c_zp ─────┘

    ==>  a ──► DequantizeLinear(a_scale, a_zp) ──┐
         b ──► DequantizeLinear(b_scale, b_zp) ──┴──► Add ──► QuantizeLinear(c_scale, c_zp) ──► c

(likewise Mul, Sigmoid, LeakyRelu(alpha), Softmax(axis), GlobalAveragePool, AveragePool with its
attributes, Concat(axis) of (x, scale, zp) triples, ReduceMean(axes, keepdims), Where). The
products: QLinearConv / QLinearMatMul / QGemm become Conv / MatMul / Gemm of the dequantized
input and the constant weight's DequantizeLinear (per output channel where its scale is; folded
at load, the 8-bit weight recorded for quantized_products), a conv's int32 bias times x_scale *
w_scale, QGemm's int32 C (added to the integer sums, then scaled with them) times alpha *
a_scale * b_scale, and QGemm without y_scale has its float output. A QLinearMatMul of two
activations (attention) is taken when neither is a graph input. One
DequantizeLinear per quantized value and grid is shared by all its readers, so the Quantize ->
Dequantize pairs between two ops are private and qdq_pairs makes them FakeQuant passes; the
float ops then take normrt's kernels and fusions as in a QDQ model.

What it computes: onnxruntime's kernels compute these in float too (dequantize, operate,
requantize; a few with lookup tables of the same float function, QLinearSigmoid/LeakyRelu), so
results agree to the rounding of a value that lands within float32 error of a half-way point
between two codes (tests: against onnxruntime on generated single ops, codes equal or one
apart at such ties; its QLinearSoftmax reads exp from a table and differs by a code more often,
normrt's is the definition's, checked in float64).

Not taken: a standard QLinearMatMul / QLinearConv of fed tensors (the op as an API, the ONNX
conformance cases): it stays exact integer arithmetic (ops/quantize.py).

Refused (a contrib node then has no implementation and loading fails naming it): channels_last=1
(NHWC pooling, which onnxruntime's own layout transformer writes at run time, not the
quantization tool); QLinearSoftmax whose `opset` semantics (before 13: the trailing block
flattened) differ from the model's Softmax and whose axis is not the last; scales or zero
points of more than one value (but a product's weight); a product's weight, scale, zero point or
bias that is not a constant; per-channel weights below opset 13 (DequantizeLinear's axis).
"""
import numpy as np
from onnx import helper

from . import GraphPass
from ._queries import is_op, present

MS = "com.microsoft"
# op -> (its float op, number of quantized inputs before the output's scale and zero point)
_ONE_FLOAT_OP = {"QLinearAdd": ("Add", 2), "QLinearMul": ("Mul", 2), "QLinearSigmoid": ("Sigmoid", 1),
                "QLinearLeakyRelu": ("LeakyRelu", 1), "QLinearSoftmax": ("Softmax", 1),
                "QLinearGlobalAveragePool": ("GlobalAveragePool", 1), "QLinearAveragePool": ("AveragePool", 1),
                "QLinearReduceMean": ("ReduceMean", 1)}
OPS = set(_ONE_FLOAT_OP) | {"QLinearConcat", "QLinearWhere", "QGemm"}
# the standard ops, taken when their weight is a constant, or (QLinearMatMul) when neither operand
# is a graph input: inside a model, between other quantized ops (attention's products). A product
# of fed tensors (the op used as an API, the conformance cases) stays exact integer arithmetic
# (ops/quantize.py).
STANDARD = {"QLinearMatMul", "QLinearConv"}
PRODUCTS = STANDARD | {"QGemm"}       # a weight dequantized per output channel; _product


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class QLinearOperators(GraphPass):
    name = "qlinear_operators"

    def run(self, ctx):
        self._dequantized = {}      # (value, scale, zero point) -> its shared DequantizeLinear output
        return super().run(ctx)

    def matches(self, ctx):
        return [n for n in ctx.nodes if (n.op_type in OPS and is_op(n, n.op_type, domain=MS))
                or (n.op_type in STANDARD and is_op(n, n.op_type) and len(n.input) > 3
                    and (ctx.is_constant(n.input[3])
                         or (n.op_type == "QLinearMatMul" and not {n.input[0], n.input[3]} & ctx.graph_inputs)))]

    def describe(self, node):
        return node.op_type, [node.name]

    @staticmethod
    def _triples(node):
        """[(x, scale, zero point)] of the quantized inputs, and (scale, zero point) of the output."""
        ins = list(node.input)
        if node.op_type == "QLinearConcat":
            # Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input
            rest = ins[2:]
            return [tuple(rest[i:i + 3]) for i in range(0, len(rest), 3)], (ins[0], ins[1])
        if node.op_type == "QGemm":
            # A, a_scale, a_zp, B, b_scale, b_zp, C (int32), y_scale, y_zp (no y_scale: float output)
            ins += [""] * (9 - len(ins))
            return [tuple(ins[0:3]), tuple(ins[3:6])], (ins[7], ins[8])
        if node.op_type in STANDARD:
            # a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp[, bias]: b is the constant weight
            ins += [""] * (9 - len(ins))
            return [tuple(ins[0:3]), tuple(ins[3:6])], (ins[6], ins[7])
        if node.op_type == "QLinearWhere":
            # condition, X, x_scale, x_zp, Y, y_scale, y_zp, z_scale, z_zp
            return [tuple(ins[1:4]), tuple(ins[4:7])], (ins[7], ins[8] if len(ins) > 8 else "")
        count = _ONE_FLOAT_OP[node.op_type][1]
        ins += [""] * (3 * count + 2 - len(ins))
        return [tuple(ins[3 * i:3 * i + 3]) for i in range(count)], (ins[3 * count], ins[3 * count + 1])

    def check(self, ctx, node):
        if not present(ctx, [node]):
            return "node already rewritten"
        attrs = _attrs(node)
        if attrs.get("channels_last", 0):
            return "channels_last=1 (NHWC pooling)"
        triples, (ys, yz) = self._triples(node)
        if node.op_type == "QLinearConcat" and (len(node.input) - 2) % 3:
            return f"{len(node.input)} inputs: not Y_scale, Y_zero_point and (X, scale, zero point) triples"
        if any(len(t) != 3 or not t[0] or not t[1] for t in triples) or (not ys and node.op_type != "QGemm"):
            return "an input or scale is missing"
        weight_params = []
        if node.op_type == "QGemm" and not ctx.is_constant(triples[1][0]):
            return "B is not a constant"
        if node.op_type in PRODUCTS and ctx.is_constant(triples[1][0]):
            # the weight's scale and zero point may be per output channel (its own DequantizeLinear
            # axis: the conv's axis 0, the MatMul's columns), which needs opset 13's axis
            weight_params = [triples[1][1]] + ([triples[1][2]] if triples[1][2] else [])
            bias_at = 6 if node.op_type == "QGemm" else 8
            if not all(ctx.is_constant(n) for n in weight_params + ([node.input[bias_at]] if len(node.input) > bias_at
                                                                     and node.input[bias_at] else [])):
                return "the weight's scale, zero point or bias is not a constant"
            w = ctx.constants.get(triples[1][0])
            if w is None or (node.op_type != "QLinearConv" and w.ndim != 2):
                return "the weight is not a 2-D constant" if node.op_type != "QLinearConv" else "no weight"
            per_channel = any(np.asarray(ctx.constants[n]).size > 1 for n in weight_params)
            if per_channel and ctx.opsets.get("", 1) < 13:
                return f"per-channel weight scales at opset {ctx.opsets.get('', 1)} (DequantizeLinear's axis is 13's)"
        for name in ([t[1] for t in triples] + [t[2] for t in triples if t[2]] + [ys] + ([yz] if yz else [])):
            if name in weight_params:
                continue
            shape = ctx.shape(name)
            if shape is not None and int(np.prod([d if isinstance(d, int) else 2 for d in shape])) != 1:
                return f"{name!r} holds more than one value (per-axis quantization)"
        if node.op_type == "QLinearSoftmax":
            model_new = ctx.opsets.get("", 1) >= 13
            op_new = int(attrs.get("opset", 13)) >= 13
            rank = ctx.shape(triples[0][0])
            axis = int(attrs.get("axis", -1 if op_new else 1))
            last = axis == -1 or (rank is not None and axis == len(rank) - 1)
            if model_new != op_new and not last:
                return (f"Softmax semantics of opset {attrs.get('opset')} on axis {axis} differ from the "
                        f"model's opset {ctx.opsets.get('', 1)}")
        return None

    def _dequantize(self, ctx, x, scale, zero, new, axis=None):
        key = (x, scale, zero)
        out = self._dequantized.get(key)
        if out is None:
            out = ctx.new_name(f"{x}_dequantized")
            extra = {"axis": axis} if axis is not None else {}
            new.append(helper.make_node("DequantizeLinear", [x, scale] + ([zero] if zero else []), [out],
                                        name=ctx.new_name(f"{x}_DequantizeLinear"), **extra))
            self._dequantized[key] = out
        return out

    def _product(self, ctx, node, attrs, triples, new):
        """The float MatMul / Conv of a standard QLinearMatMul / QLinearConv: its input dequantized
        (shared), its constant weight dequantized per output channel where its scale is (folded at
        load by constant_folding, which records the 8-bit weight for quantized_products), the
        conv's int32 bias times x_scale * w_scale (the spec's bias scale)."""
        (x, xs, xz), (w, ws, wz) = triples
        conv = node.op_type == "QLinearConv"
        gemm = node.op_type == "QGemm"
        per_channel = ctx.is_constant(w) and any(np.asarray(ctx.constants[n]).size > 1
                                                 for n in [ws] + ([wz] if wz else []))
        # the output channels: the conv weight's axis 0, B's columns (its rows when transB)
        axis = 0 if conv or (gemm and attrs.get("transB", 0)) else 1
        xf = self._dequantize(ctx, x, xs, xz, new)
        wf = self._dequantize(ctx, w, ws, wz, new, axis=axis if per_channel else None)
        float_output = gemm and (len(node.input) < 8 or not node.input[7])     # QGemm without y_scale
        result = node.output[0] if float_output else ctx.new_name(f"{node.output[0]}_float")
        if gemm:
            # onnxruntime's QGemm adds the int32 C to the integer sums, then scales all by
            # alpha * a_scale * b_scale: C's float value is C * that scale
            alpha = float(attrs.get("alpha", 1.0))
            inputs = [xf, wf]
            if len(node.input) > 6 and node.input[6]:
                scale = ctx.new_name(f"{node.name}_bias_scale")
                scaled = ctx.new_name(f"{node.name}_bias_scale_alpha")
                bias_float = ctx.new_name(f"{node.name}_bias_float")
                bias = ctx.new_name(f"{node.name}_bias")
                new += [helper.make_node("Mul", [xs, ws], [scale]),
                        helper.make_node("Mul", [scale, ctx.add_constant(f"{node.name}_alpha", np.float32(alpha))],
                                         [scaled]),
                        helper.make_node("Cast", [node.input[6]], [bias_float], to=1),
                        helper.make_node("Mul", [bias_float, scaled], [bias])]
                inputs.append(bias)
            return helper.make_node("Gemm", inputs, [result], alpha=alpha, transA=int(attrs.get("transA", 0)),
                                    transB=int(attrs.get("transB", 0))), result
        if not conv:
            return helper.make_node("MatMul", [xf, wf], [result]), result
        inputs = [xf, wf]
        if len(node.input) > 8 and node.input[8]:
            bias_scale = ctx.new_name(f"{node.name}_bias_scale")
            bias_float = ctx.new_name(f"{node.name}_bias_float")
            bias = ctx.new_name(f"{node.name}_bias")
            new += [helper.make_node("Mul", [xs, ws], [bias_scale]),
                    helper.make_node("Cast", [node.input[8]], [bias_float], to=1),
                    helper.make_node("Mul", [bias_float, bias_scale], [bias])]
            inputs.append(bias)
        kept = {k: v for k, v in attrs.items() if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads",
                                                          "strides")}
        return helper.make_node("Conv", inputs, [result], **kept), result

    def rewrite(self, ctx, node):
        attrs = _attrs(node)
        triples, (ys, yz) = self._triples(node)
        new = []
        op = node.op_type
        if op in PRODUCTS:
            float_node, result = self._product(ctx, node, attrs, triples, new)
        else:
            float_node, result = self._one_float_op(ctx, node, attrs, triples, new)
        float_node.name = node.name
        new.append(float_node)
        if result == node.output[0]:        # QGemm without y_scale: its float output as it is
            ctx.replace_nodes([node], new)
            return
        new.append(helper.make_node("QuantizeLinear", [result, ys] + ([yz] if yz else []), [node.output[0]],
                                    name=ctx.new_name(f"{node.name}_QuantizeLinear")))
        ctx.replace_nodes([node], new)

    def _one_float_op(self, ctx, node, attrs, triples, new):
        """The float op of an elementwise, pooling, Concat or Where contrib op over its dequantized
        inputs, and the name of its result."""
        op = node.op_type
        floats = [self._dequantize(ctx, x, s, z, new) for x, s, z in triples]
        result = ctx.new_name(f"{node.output[0]}_float")
        if op == "QLinearConcat":
            float_node = helper.make_node("Concat", floats, [result], axis=int(attrs.get("axis", 0)))
        elif op == "QLinearWhere":
            float_node = helper.make_node("Where", [node.input[0]] + floats, [result])
        else:
            float_op = _ONE_FLOAT_OP[op][0]
            kept = {}
            if op == "QLinearLeakyRelu":
                kept["alpha"] = float(attrs.get("alpha", 0.01))
            elif op == "QLinearSoftmax":
                kept["axis"] = int(attrs.get("axis", -1 if int(attrs.get("opset", 13)) >= 13 else 1))
                if ctx.opsets.get("", 1) >= 13 and kept["axis"] != -1 and int(attrs.get("opset", 13)) < 13:
                    kept["axis"] = -1      # the last axis (check): both semantics agree there
            elif op == "QLinearAveragePool":
                kept = {k: v for k, v in attrs.items() if k in ("auto_pad", "ceil_mode", "count_include_pad",
                                                                 "kernel_shape", "pads", "strides")}
            elif op == "QLinearReduceMean":
                kept = {k: v for k, v in attrs.items() if k in ("axes", "keepdims")}
                if "axes" in kept and ctx.opsets.get("", 1) >= 18:
                    # from opset 18 ReduceMean takes its axes as an input
                    floats.append(ctx.add_constant(f"{node.name}_axes", np.asarray(kept.pop("axes"), np.int64)))
            float_node = helper.make_node(float_op, floats, [result], **kept)
        return float_node, result
