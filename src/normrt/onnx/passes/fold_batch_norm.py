"""Inference BatchNormalization after a Conv/ConvTranspose/Gemm/MatMul with constant weights -> folded away.

    x ──► Conv(W, b)            ─┐
    x ──► ConvTranspose(W, b)    │  y (consumed only by the BN)
    x ──► Gemm(A=x, B=W, C=b)    ├──► BatchNormalization(scale, shift, mean, var, epsilon) ──► z
    x ──► MatMul(x, W)  (2-D)   ─┘

    ==>   x ──► Conv/ConvTranspose/Gemm(W', b') ──► z          (MatMul becomes Gemm(x, W', b'))

    with a = scale / sqrt(var + epsilon) per output channel (normrt.api.weights.fold_batch_norm):
    W' = W * a along the weight's output-channel axis, b' = (b - mean) * a + shift.

Output-channel axis of the weight: Conv (Cout, Cin/g, k...) axis 0; ConvTranspose
(Cin, Cout/g, k...) axis 1 with groups; Gemm B (Cout, K) with transB=1 (axis 0) or
(K, Cout) with transB=0 (axis 1), alpha kept, beta*C folded into the bias; MatMul
only with a 2-D constant W on the right and a 2-D x (so BN's channel axis 1 is W's
columns).

Refused (reason in the report; the BN then stays and becomes a normrt::BatchNorm):
- the producer's output is read elsewhere or is a graph output;
- weights, bias or BN parameters that are not initializers/constants, of other
  shapes than one value per output channel, or of mixed / non-float dtypes;
- a BN in training mode, with statistics outputs, BatchNormalization < 7 or spatial=0;
- negative var or var + epsilon <= 0; Gemm C not broadcast per column; MatMul x not 2-D.
"""
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from ...api.weights import fold_batch_norm
from . import GraphPass
from ._queries import (NP_FLOAT, WIDE_DTYPES, float_type_reason, is_normrt, is_op, node_attrs, present, private_reason,
                     take_fused_entry)

PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class FoldMatch:
    producer: object
    bn: object
    info: dict = field(default_factory=dict)

    @property
    def nodes(self):
        return [self.producer, self.bn]


def _is_batch_norm(node):
    return is_op(node, "BatchNormalization") or is_normrt(node, "BatchNorm")


class FoldBatchNorm(GraphPass):
    name = "fold_batch_norm"

    def matches(self, ctx):
        producer = ctx.producer()
        for node in ctx.nodes:
            if not _is_batch_norm(node) or not node.input:
                continue
            prod = producer.get(node.input[0])
            if prod is not None and any(is_op(prod, op) for op in PRODUCERS):
                yield FoldMatch(prod, node)

    def describe(self, m):
        return f"{m.producer.op_type}+BatchNormalization", [m.producer.name, m.bn.name]

    # -- check ---------------------------------------------------------------
    def _bn_reason(self, ctx, bn):
        attrs, reason = node_attrs(bn)
        if reason:
            return None, reason
        if is_op(bn, "BatchNormalization"):
            version = ctx.opsets.get("", 0)
            if version < 7:
                return None, f"BatchNormalization-{version} (opset < 7)"
            if version < 9 and attrs.get("spatial", 1) == 0:
                return None, "spatial=0 (per-activation statistics)"
            if version >= 14 and attrs.get("training_mode", 0):
                return None, "training_mode=1 (batch statistics)"
        else:
            if attrs.get("training_mode", 0):
                return None, "training_mode=1 (batch statistics)"
            if attrs.get("activation", ""):
                return None, "the BatchNorm has a fused activation"
        if len([o for o in bn.output if o]) != 1:
            return None, "BatchNormalization with statistics outputs"
        if len(bn.input) < 5 or not all(bn.input[:5]):
            return None, "missing inputs"
        if not all(ctx.is_constant(n) for n in bn.input[1:5]):
            return None, "BatchNormalization parameters are not constants"
        return attrs, None

    def check(self, ctx, m):
        if not present(ctx, m.nodes):
            return "nodes already rewritten by an earlier match"
        prod, bn = m.producer, m.bn
        attrs, reason = self._bn_reason(ctx, bn)
        if reason:
            return reason
        eps = float(attrs.get("epsilon", 1e-5))
        consumers = ctx.consumers()
        if len([o for o in prod.output if o]) != 1:
            return f"{prod.op_type} has more than one output"
        reason = private_reason(ctx, consumers, prod.output[0], [bn])
        if reason:
            return reason
        if len(prod.input) < 2 or not ctx.is_constant(prod.input[1]):
            return f"{prod.op_type} weight is not a constant"
        bias_name = prod.input[2] if len(prod.input) > 2 and prod.input[2] else None
        if bias_name is not None and not ctx.is_constant(bias_name):
            return f"{prod.op_type} bias is not a constant"
        x = prod.input[0]
        names = [x, prod.input[1]] + ([bias_name] if bias_name else []) + list(bn.input[1:5])
        reason = float_type_reason(ctx, names, WIDE_DTYPES)
        if reason:
            return reason
        dtype = NP_FLOAT[ctx.elem_type(x)]
        W = ctx.constants[prod.input[1]]
        pattrs, reason = node_attrs(prod)
        if reason:
            return reason
        spec = self._layout(ctx, prod, pattrs, W, bias_name)
        if isinstance(spec, str):
            return spec
        axis, groups, cout, bias = spec
        params = [ctx.constants[n] for n in bn.input[1:5]]
        if any(p.shape != (cout,) for p in params):
            return f"BatchNormalization parameters of shapes {[p.shape for p in params]}, expected ({cout},)"
        var = params[3].astype(np.float64)
        if not (np.all(var >= 0) and np.all(var + eps > 0)):
            return "var negative or var + epsilon not > 0"
        if any(p.dtype != dtype for p in params) or W.dtype != dtype:
            return "dtypes of weights and BatchNormalization parameters differ"
        m.info = {"axis": axis, "groups": groups, "bias": bias, "eps": eps, "attrs": pattrs}
        return None

    @staticmethod
    def _layout(ctx, prod, attrs, W, bias_name):
        """(output-channel axis, groups, Cout, per-channel bias or None) or a refusal reason."""
        bias = ctx.constants[bias_name] if bias_name else None
        op = prod.op_type
        if op in ("Conv", "ConvTranspose"):
            if W.ndim < 3:
                return f"{op} weight of rank {W.ndim}"
            group = int(attrs.get("group", 1))
            if op == "Conv":
                axis, groups, cout = 0, 1, W.shape[0]
            else:
                if group < 1 or W.shape[0] % group:
                    return f"ConvTranspose group={group} does not divide the weight's {W.shape[0]} input channels"
                axis, groups, cout = 1, group, W.shape[1] * group
            if bias is not None and bias.shape != (cout,):
                return f"{op} bias of shape {bias.shape}, expected ({cout},)"
            return axis, groups, cout, bias
        if op == "Gemm":
            if W.ndim != 2:
                return f"Gemm B of rank {W.ndim}"
            axis = 0 if attrs.get("transB", 0) else 1
            cout = W.shape[axis]
            if bias is not None:
                if bias.ndim > 2 or bias.size not in (1, cout) or (bias.size == cout and bias.shape[-1] != cout):
                    return f"Gemm C of shape {bias.shape} is not one value per output column"
                bias = np.broadcast_to(bias.reshape(-1), (cout,)) * np.asarray(attrs.get("beta", 1.0), bias.dtype)
            return axis, 1, cout, bias
        # MatMul
        if W.ndim != 2:
            return f"MatMul weight of rank {W.ndim} (2-D needed)"
        xshape = ctx.shape(prod.input[0])
        if xshape is None or len(xshape) != 2:
            return f"MatMul input of shape {xshape} (2-D needed: BN's channel axis must be W's columns)"
        if bias is not None:
            return "MatMul with a third input"
        return 1, 1, W.shape[1], None

    # -- rewrite -------------------------------------------------------------
    def rewrite(self, ctx, m):
        prod, bn, info = m.producer, m.bn, m.info
        W = ctx.constants[prod.input[1]]
        scale, shift, mean, var = (ctx.constants[n] for n in bn.input[1:5])
        W2, b2 = fold_batch_norm(W, info["bias"], scale, shift, mean, var, eps=info["eps"],
                                 axis=info["axis"], groups=info["groups"])
        base = prod.name or prod.op_type
        w_name = ctx.add_constant(f"{base}_weight_bn_folded", W2)
        b_name = ctx.add_constant(f"{base}_bias_bn_folded", b2)
        op = prod.op_type
        name = prod.name or ctx.new_name(op)
        if op == "MatMul":
            op = "Gemm"
            new = helper.make_node("Gemm", [prod.input[0], w_name, b_name], [bn.output[0]], name=name)
        else:
            new = onnx.NodeProto()
            new.CopyFrom(prod)               # attributes exactly as they were
            del new.input[:], new.output[:]
            new.input.extend([prod.input[0], w_name, b_name])
            new.output.append(bn.output[0])
            new.name = name
            if op == "Gemm":                 # beta * C is folded into the new bias
                kept = [a for a in new.attribute if a.name != "beta"]
                del new.attribute[:]
                new.attribute.extend(kept)
        if is_normrt(bn, "BatchNorm"):
            take_fused_entry(ctx, bn.name)
        ctx.replace_nodes(m.nodes, [new])
        pattern = f"{prod.op_type}+BatchNormalization"
        ctx.report.fused.append({
            "pass": self.name, "op": "BatchNormalization", "pattern": pattern, "nodes": [prod.name, bn.name],
            "normrt_op": None, "normrt_node": None, "kernel": f"folded into {op} {new.name!r} at load",
            "activation": None, "residual": False,
        })
