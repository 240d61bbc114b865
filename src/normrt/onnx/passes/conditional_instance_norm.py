"""Instance norm with its affine written after it: conditional (per-sample) or constant (per-channel).

    x (N, C, *spatial)
    │
    ▼
    InstanceNormalization(s, b)            (or normrt::InstanceNorm without activation)
    │
    ▼
    Mul(·, gamma)          gamma: per (sample, channel), e.g.                         (optional)
    │                        Gather(table_gamma (T, C), idx (N,)) ─► Unsqueeze([2, 3])      (N, C, 1, 1)
    │                        GatherND(table_gamma, idx[:, None]) ─► Reshape([-1, C, 1, 1])
    │                      or a per-channel constant (C, 1, 1) / (1, C, 1, 1) ...
    ▼
    Add(·, beta)           beta: likewise                                             (optional)
    │
    ▼
    y       ==>   x ──► normrt::InstanceNorm(scale, B, epsilon) ──► y

      per-sample gamma/beta: Reshape(gamma, [-1, C]) ─► scale (N, C)   (instance_norm takes (N, C))
      constants:             scale = s * gamma, B = b * gamma + beta     (C,)

Per-sample operands are recognized by their inferred shape (N, C, 1, ..., 1),
whatever computes them (an embedding lookup, an MLP on a style code, ...).
Operands varying over spatial positions (SPADE) are not this pattern and are
not matched: the InstanceNormalization alone becomes a normrt node.

Refused (reason in the report):
- per-sample operands while the InstanceNormalization has a non-trivial s/b
  (s not all ones or b not all zeros: the product would need extra nodes);
- operand shapes that are unknown, not (N, C, 1...) with x's own N, or constants
  that are not per channel; operand dtype differing from x;
- a middle value read elsewhere or a graph output; x not float32/float64.
"""
from dataclasses import dataclass, field

import numpy as np
from onnx import helper

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import (NP_FLOAT, channel_vector, param_dtype, float_type_reason, is_normrt, is_op, node_attrs, only_consumer,
                     other_input, present, private_reason, take_fused_entry)

PATTERN_CONDITIONAL = "ConditionalInstanceNorm"
PATTERN_AFFINE = "InstanceNorm+affine"


@dataclass
class CondMatch:
    inorm: object
    mul: object = None
    add: object = None
    info: dict = field(default_factory=dict)

    @property
    def nodes(self):
        return [n for n in (self.inorm, self.mul, self.add) if n is not None]


def _is_instance_norm(node):
    return is_op(node, "InstanceNormalization") or is_normrt(node, "InstanceNorm")


def _same_dim(a, b):
    return a is not None and a == b and (isinstance(a, int) or isinstance(a, str))


class ConditionalInstanceNorm(GraphPass):
    name = "conditional_instance_norm"

    def matches(self, ctx):
        consumers = ctx.consumers()
        for node in ctx.nodes:
            if not _is_instance_norm(node) or not node.input or not node.output:
                continue
            x_shape = ctx.shape(node.input[0])
            m = CondMatch(node)
            value = node.output[0]
            nxt = only_consumer(ctx, consumers, value)
            if is_op(nxt, "Mul") and self._looks_affine(ctx, nxt, value, x_shape):
                m.mul = nxt
                value = nxt.output[0]
                nxt = only_consumer(ctx, consumers, value)
            if is_op(nxt, "Add") and self._looks_affine(ctx, nxt, value, x_shape):
                m.add = nxt
            if m.mul is not None or m.add is not None:
                yield m

    @staticmethod
    def _looks_affine(ctx, node, value, x_shape):
        """Structurally an affine operand: constant, or of a shape that is 1 past the channel axis (or unknown)."""
        other = other_input(node, value)
        if other is None:
            return False
        shape = ctx.shape(other)
        if shape is None or x_shape is None:
            return True
        if len(shape) > len(x_shape):
            return False
        if ctx.is_constant(other):
            return True
        return all(d == 1 or d is None for d in shape[2:])

    def describe(self, m):
        return PATTERN_CONDITIONAL, [n.name for n in m.nodes]

    # -- check ---------------------------------------------------------------
    def check(self, ctx, m):
        if not present(ctx, m.nodes):
            return "nodes already rewritten by an earlier match"
        inorm = m.inorm
        x = inorm.input[0]
        shape = ctx.shape(x)
        if shape is None or len(shape) < 3 or not isinstance(shape[1], int):
            return f"{x!r} of shape {shape}: rank >= 3 with a known channel count needed"
        rank, C = len(shape), shape[1]
        attrs, reason = node_attrs(inorm)
        if reason:
            return reason
        if is_op(inorm, "InstanceNormalization") and ctx.opsets.get("", 0) < 6:
            return "InstanceNormalization-1 (consumed_inputs form)"
        if is_normrt(inorm, "InstanceNorm") and attrs.get("activation", ""):
            return "the InstanceNorm already has a fused activation"
        if len([o for o in inorm.output if o]) != 1:
            return "InstanceNormalization has extra outputs"
        reason = float_type_reason(ctx, [x])
        if reason:
            return reason
        dtype = NP_FLOAT[ctx.elem_type(x)]
        params = list(inorm.input[1:3]) + [""] * (3 - len(inorm.input))
        if not all(n and ctx.is_constant(n) for n in params):
            return "InstanceNormalization scale/B are not constants"
        s, b = (ctx.constants[n] for n in params)
        if s.shape != (C,) or b.shape != (C,) or s.dtype != dtype or b.dtype != dtype:
            return f"InstanceNormalization scale/B of shapes {s.shape}/{b.shape} (expected ({C},) {dtype})"
        scale, bias = s.astype(np.float64), b.astype(np.float64)    # each: (C,) array, or a runtime value name
        trivial = bool(np.all(s == 1) and np.all(b == 0))

        consumers = ctx.consumers()
        value = inorm.output[0]
        for node in (m.mul, m.add):
            if node is None:
                continue
            reason = private_reason(ctx, consumers, value, [node])
            if reason:
                return reason
            other = other_input(node, value)
            if ctx.is_constant(other):
                const = ctx.constants[other]
                if const.dtype != dtype:
                    return f"{node.op_type} operand {other!r} of dtype {const.dtype} (x is {dtype})"
                vec, reason = channel_vector(const, C, rank)
                if reason:
                    return f"{node.op_type} operand: {reason}"
                vec = vec.astype(np.float64)
                if node is m.mul:
                    scale, bias = scale * vec, bias * vec
                elif isinstance(bias, str):
                    return "constant Add after a per-sample Add"
                else:
                    bias = bias + vec
            else:
                oshape = ctx.shape(other)
                if oshape is None or len(oshape) < 2 or oshape[0] is None or oshape[1] is None:
                    return f"shape of {node.op_type} operand {other!r} unknown ({oshape})"
                if ctx.elem_type(other) != ctx.elem_type(x):
                    return f"{node.op_type} operand {other!r} has another element type than x"
                if not (len(oshape) == rank and _same_dim(oshape[0], shape[0]) and oshape[1] == C
                        and all(d == 1 for d in oshape[2:])):
                    return (f"{node.op_type} operand {other!r} of shape {oshape} is not per (sample, channel) "
                            f"for x of shape {shape}")
                if node is m.mul:
                    if not trivial:
                        return "per-sample Mul after an InstanceNormalization with its own scale/B"
                    scale = other
                else:
                    if isinstance(bias, str) or np.any(bias != 0):
                        return "per-sample Add onto a non-zero bias"
                    bias = other
            value = node.output[0]
        m.info = {"x": x, "epsilon": attrs.get("epsilon", 1e-5), "scale": scale, "bias": bias, "output": value,
                  "C": C, "dtype": param_dtype(ctx.elem_type(x))}
        return None

    # -- rewrite -------------------------------------------------------------
    def rewrite(self, ctx, m):
        info = m.info
        base = m.inorm.name or "instance_norm"
        new_nodes, inputs, runtime = [], [info["x"]], False
        for what, p in (("scale", info["scale"]), ("bias", info["bias"])):
            if isinstance(p, str):
                runtime = True
                shape = ctx.add_constant(f"{base}_{what}_shape", np.array([-1, info["C"]], dtype=np.int64))
                out = ctx.new_name(f"{base}_{what}_per_sample")
                new_nodes.append(helper.make_node("Reshape", [p, shape], [out], name=ctx.new_name(f"{base}_{what}_2d")))
                inputs.append(out)
            else:
                inputs.append(ctx.add_constant(f"{base}_{what}", p.astype(info["dtype"])))
        name = m.inorm.name if m.inorm.name else ctx.new_name("instance_norm")
        new = make_node("InstanceNorm", inputs, [info["output"]], name, epsilon=info["epsilon"])
        if is_normrt(m.inorm, "InstanceNorm"):
            take_fused_entry(ctx, m.inorm.name)
        ctx.replace_nodes(m.nodes, new_nodes + [new])
        pattern = PATTERN_CONDITIONAL if runtime else PATTERN_AFFINE
        ctx.report.fused.append({
            "pass": self.name, "op": pattern, "pattern": pattern, "nodes": [n.name for n in m.nodes],
            "normrt_op": "InstanceNorm", "normrt_node": new.name, "kernel": NORM_OPS["InstanceNorm"].kernel,
            "activation": None, "residual": False,
        })
