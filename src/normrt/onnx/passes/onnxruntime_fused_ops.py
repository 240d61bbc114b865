"""onnxruntime's fused ops, as its transformer optimizer and Optimum save them -> normrt's kernels.

Models optimized by `onnxruntime.transformers.optimizer` (or saved through a session's
`optimized_model_filepath`, or by Optimum's ORTOptimizer) carry onnxruntime's own fused nodes in
place of what the exporter wrote. Neither the standard nor onnx.reference has them, so such
models failed to load. Their normalizations are normrt's norms, and their GELUs its programs:

    input, skip [, bias] ──► SkipLayerNormalization(gamma, beta, epsilon) ──► Y [, -, -, sum]
    ==>  input, skip (+ bias) ──► normrt::LayerNorm(gamma, beta, residual) ──► Y [, residual_sum]

    input, skip [, bias] ──► SkipSimplifiedLayerNormalization(gamma, epsilon) ──► Y [, -, -, sum]
    ==>  normrt::RMSNorm(gamma, residual) ──► Y [, residual_sum]

    X ──► SimplifiedLayerNormalization(scale, axis, epsilon) ──► Y      (onnxruntime registers it
    ==>  X ──► normrt::RMSNorm(scale) ──► Y                             in the standard domain)

    A, B ──► BiasGelu ──► Y     ==>  A + B ──► 0.5 x (1 + erf(x / sqrt 2))
    X ──► Gelu (com.microsoft)  ==>  0.5 x (1 + erf(x / sqrt 2))
    X [, bias] ──► FastGelu     ==>  0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
    X ──► QuickGelu(alpha)      ==>  x sigmoid(alpha x)

The activations are written as the standard ops of their definitions, which elementwise_chains
and activation_programs then recognize (one fused op, or a MatMul's epilogue) as they do an
exporter's spelling. SkipLayerNormalization adds input + skip + bias; normrt adds input +
(skip + bias): the same sum up to the order of two float additions.

Refused (the node then has no implementation, and loading fails naming it): the mean and
inverse-deviation outputs read by another node (the kernels return them for LayerNorm only in
the standard layout); a non-float input; bias of another shape than (hidden,).
"""
import math

import numpy as np
from onnx import helper

from .._graph import canonical_domain, np_dtype
from ..domain import NORM_OPS, make_node
from . import GraphPass, ValueType
from ._queries import KERNEL_DTYPES, present

MS = "com.microsoft"
NORMS = {"SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization"}
ACTIVATIONS = {"BiasGelu", "Gelu", "FastGelu", "QuickGelu"}


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ours(node):
    domain = canonical_domain(node.domain)
    if node.op_type == "SimplifiedLayerNormalization":
        return domain in ("", MS)
    return domain == MS and node.op_type in NORMS | ACTIVATIONS


class OnnxruntimeFusedOps(GraphPass):
    name = "onnxruntime_fused_ops"

    def run(self, ctx):
        self._norms = []        # (X, outputs of X's type and shape) of each norm not yet typed
        self._final = False     # refusals are reported in the last round only
        total = 0
        while True:
            count = super().run(ctx)
            total += count
            if count == 0:
                break
            self._type_norms(ctx)
        # a node whose type never became known: its refusal in the report
        self._final = True
        super().run(ctx)
        return total

    def _type_norms(self, ctx):
        """onnx's inference stops at the contrib ops, and cannot go through normrt's either: a
        norm's outputs take X's type once X's is known, which may take the inference past the
        norms before it (a transformer's chain of them) and to the activations after them: type
        and infer until nothing changes."""
        ctx.commit()
        ctx.refresh_types()
        while self._norms:
            typed = [(x, outs) for x, outs in self._norms if ctx.elem_type(x)]
            if not typed:
                break
            for x, outs in typed:
                for o in outs:
                    ctx.types[o] = ValueType(ctx.elem_type(x), ctx.shape(x))
            self._norms = [n for n in self._norms if not ctx.elem_type(n[0])]
            ctx.refresh_types()

    def report_refusal(self, ctx, match, reason):
        if self._final:
            super().report_refusal(ctx, match, reason)

    def matches(self, ctx):
        return [n for n in ctx.nodes if _ours(n)]

    def describe(self, node):
        return node.op_type, [node.name]

    def _dtype(self, ctx, node):
        """The node's float type: its first input's, or (inference stops at a chain of these ops,
        which it does not know) that of another input, a constant gamma or bias."""
        for name in node.input:
            t = ctx.elem_type(name) if name else 0
            if t:
                return np_dtype(t) if t in KERNEL_DTYPES else None
        return None

    def check(self, ctx, node):
        if not present(ctx, [node]):
            return "node already rewritten"
        if self._dtype(ctx, node) is None:
            return f"no input of a known float type (inputs {list(node.input)})"
        consumers = ctx.consumers()
        if node.op_type in NORMS:
            unused = (1,) if node.op_type == "SimplifiedLayerNormalization" else (1, 2)
            for k in unused:
                if len(node.output) > k and node.output[k] and (consumers.get(node.output[k])
                                                                 or node.output[k] in ctx.graph_outputs):
                    return f"output {k} (mean / inverse deviation) is read"
        if node.op_type.startswith("Skip"):
            bias_at = 4 if node.op_type == "SkipLayerNormalization" else 3
            if len(node.input) > bias_at and node.input[bias_at]:
                shape, x = ctx.shape(node.input[bias_at]), ctx.shape(node.input[0])
                if shape is None or len(shape) != 1 or (x is not None and shape[0] != x[-1]):
                    return f"bias of shape {shape}, not (hidden,)"
        return None

    def _const(self, ctx, node, value):
        return ctx.add_constant(f"{node.name}_c", np.asarray(value, self._dtype(ctx, node)))

    def rewrite(self, ctx, node):
        op, attrs, ins = node.op_type, _attrs(node), list(node.input)
        new = []
        if op in NORMS:
            if op == "SimplifiedLayerNormalization":
                new.append(make_node("RMSNorm", ins[:2], [node.output[0]], node.name,
                                     axis=int(attrs.get("axis", -1)), epsilon=float(attrs.get("epsilon", 1e-5))))
            else:
                layer = op == "SkipLayerNormalization"
                bias_at = 4 if layer else 3
                residual = ins[1]
                if len(ins) > bias_at and ins[bias_at]:
                    residual = ctx.new_name(f"{node.name}_skip_bias")
                    new.append(helper.make_node("Add", [ins[1], ins[bias_at]], [residual],
                                                name=ctx.new_name(f"{node.name}_bias")))
                summed = node.output[3] if len(node.output) > 3 else ""
                if layer:
                    beta = ins[3] if len(ins) > 3 else ""
                    new.append(make_node("LayerNorm", [ins[0], ins[2], beta, residual],
                                         [node.output[0], "", "", summed], node.name,
                                         epsilon=float(attrs.get("epsilon", 1e-12))))
                else:
                    new.append(make_node("RMSNorm", [ins[0], ins[2], residual], [node.output[0], summed],
                                         node.name, epsilon=float(attrs.get("epsilon", 1e-12))))
            ctx.replace_nodes([node], new)
            norm = new[-1]
            # the residual is LayerNorm's input 3, RMSNorm's input 2
            residual = len(norm.input) > (3 if norm.op_type == "LayerNorm" else 2)
            ctx.report.fused.append({
                "pass": self.name, "op": op, "pattern": op, "nodes": [node.name], "normrt_op": norm.op_type,
                "normrt_node": norm.name, "kernel": NORM_OPS[norm.op_type].kernel, "activation": None,
                "residual": residual})
            self._norms.append((ins[0], [o for o in norm.output if o]))
            ctx.mark_types_stale()      # shape inference stopped at the contrib op: it can go on now
            return
        x = ins[0]
        if op in ("BiasGelu", "FastGelu") and len(ins) > 1 and ins[1]:
            x = ctx.new_name(f"{node.name}_biased")
            new.append(helper.make_node("Add", ins[:2], [x], name=ctx.new_name(f"{node.name}_bias")))

        def emit(op_type, inputs, name=None):
            out = name or ctx.new_name(f"{node.name}_{op_type.lower()}")
            new.append(helper.make_node(op_type, inputs, [out], name=ctx.new_name(f"{node.name}_{op_type}")))
            return out
        y = node.output[0]
        if op == "QuickGelu":
            scaled = emit("Mul", [x, self._const(ctx, node, float(attrs.get("alpha", 1.702)))])
            emit("Mul", [x, emit("Sigmoid", [scaled])], y)
        elif op == "FastGelu":
            cube = emit("Mul", [emit("Mul", [x, x]), x])
            inner = emit("Add", [x, emit("Mul", [cube, self._const(ctx, node, 0.044715)])])
            t = emit("Tanh", [emit("Mul", [inner, self._const(ctx, node, math.sqrt(2.0 / math.pi))])])
            half = emit("Mul", [x, self._const(ctx, node, 0.5)])
            emit("Mul", [half, emit("Add", [t, self._const(ctx, node, 1.0)])], y)
        else:       # Gelu, BiasGelu: the erf form
            e = emit("Erf", [emit("Div", [x, self._const(ctx, node, math.sqrt(2.0))])])
            half = emit("Mul", [x, self._const(ctx, node, 0.5)])
            emit("Mul", [half, emit("Add", [e, self._const(ctx, node, 1.0)])], y)
        ctx.replace_nodes([node], new)
        ctx.mark_types_stale()
