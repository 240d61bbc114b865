"""Activation after a normrt norm -> the norm's `activation` attribute (applied by the kernel on the way out).

    normrt::{BatchNorm, LayerNorm, InstanceNorm, GroupNorm, ...}   (any normrt op with an `activation` attribute)
          │ y
          ├──► Relu ──► out                                          relu
          ├──► Sigmoid ──► out                                       sigmoid
          ├──► Sigmoid ──► s ─┐
          └──────────────────► Mul(y, s) ──► out  (either order)     silu
          ├──► Gelu(approximate="none") ──► out                      gelu   (opset 20)
          ├──► Clip(0, 6) ──► out                                    relu6  (torch's ReLU6)
          ├──► Clip(0) ──► out    (no upper bound)                   relu
          ├──► HardSigmoid(alpha=1/6, beta=1/2) ──► out              hardsigmoid
          ├──► HardSigmoid(1/6, 1/2) ──► h ─┐
          └──────────────────► Mul(y, h) ──► out  (either order)     hardswish (opset < 14 exports)
          ├──► HardSwish ──► out                                     hardswish
          │
          │   GELU in its Erf form, as torch writes it:
          ├──► Div(y, 1.4142135) or Mul(y, 0.70710678)
          │        └─► Erf ─► Add(·, 1) ─► p
          └──► one of                                                gelu
                 legacy:  Mul(y, p) ─► Mul(·, 0.5) ─► out
                 dynamo:  Mul(0.5, p) ─► q ;  Mul(y, q) ─► out
                 other:   Mul(y, 0.5) ─► h ;  Mul(h, p) ─► out
                 (operands of Mul/Add in either order)

    ==>  normrt::Norm(..., activation=act) ──► out

Refused (reason in the report):
- y (or a middle value of the activation) is read by other nodes or is a graph
  output: it would have to be materialized;
- the norm already has an activation, or has outputs besides y (statistics);
- Gelu with approximate="tanh"; Erf-form constants that are not sqrt(2), 1, 0.5;
- a Clip whose bounds are not constant scalars or are other than (0, 6) / (0, none);
  a HardSigmoid with other alpha/beta than torch's (1/6, 1/2) (Keras' 0.2 stays a node).
"""
import math

import numpy as np

from .._graph import NORMRT_DOMAIN, canonical_domain
from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import (clip_bounds, close_to, constant_rel_tol, is_op, leaky_alpha, node_attrs, present,
                       private_reason, scalar_constant)

SQRT2 = math.sqrt(2.0)
PATTERN_NAMES = {"relu": "Relu", "sigmoid": "Sigmoid", "silu": "SiLU", "gelu": "GELU", "relu6": "ReLU6",
                 "hardsigmoid": "HardSigmoid", "hardswish": "HardSwish", "gelu_tanh": "GELU(tanh)",
                 "leaky_relu": "LeakyRelu", "elu": "ELU"}
# ops that can start an activation match_activation takes (the Erf GELU starts with a Div/Mul:
# the epilogue passes add those to their own candidate lists)
ACTIVATION_OPS = ("Relu", "Sigmoid", "Gelu", "Clip", "HardSigmoid", "HardSwish", "Elu")
# torch's hardsigmoid, relu6(x + 3) / 6, as exporters write HardSigmoid's attributes
HARD_SIGMOID = (1.0 / 6.0, 0.5)


def _has_activation_attr(node):
    if canonical_domain(node.domain) != NORMRT_DOMAIN:
        return False
    spec = NORM_OPS.get(node.op_type)
    return spec is not None and "activation" in spec.defaults


class ActivationEpilogue(GraphPass):
    name = "activation_epilogue"

    def matches(self, ctx):
        consumers = ctx.consumers()
        for node in ctx.nodes:
            if not _has_activation_attr(node) or not node.output or not node.output[0]:
                continue
            readers = consumers.get(node.output[0], [])
            ops = ACTIVATION_OPS + (("LeakyRelu",) if "leaky_relu" in NORM_OPS[node.op_type].activations else ())
            if any(is_op(r, op) for r in readers for op in ops) or \
                    any(self._erf_head(ctx, consumers, r, node.output[0]) for r in readers):
                yield node

    def describe(self, node):
        return f"{node.op_type}+activation", [node.name]

    @staticmethod
    def _erf_head(ctx, consumers, node, y):
        """Whether `node` is the Div/Mul by sqrt(2) feeding an Erf (the start of an Erf GELU)."""
        if not (is_op(node, "Div") or is_op(node, "Mul")):
            return False
        readers = consumers.get(node.output[0], [])
        return len(readers) == 1 and is_op(readers[0], "Erf") and y in node.input

    # -- check ---------------------------------------------------------------
    def check(self, ctx, node):
        if not present(ctx, [node]):
            return "node already rewritten"
        attrs, reason = node_attrs(node)
        if reason:
            return reason
        if attrs.get("activation", ""):
            return f"the norm already has activation {attrs['activation']!r}"
        if len([o for o in node.output if o]) != 1:
            return "the norm has outputs besides Y (statistics)"
        y = node.output[0]
        consumers = ctx.consumers()
        readers = consumers.get(y, [])
        if y in ctx.graph_outputs:
            return f"norm output {y!r} is a graph output"
        found = match_activation(ctx, consumers, y, readers,
                                 leaky="leaky_relu" in NORM_OPS[node.op_type].activations)
        if isinstance(found, str):
            return found
        act, nodes, out = found
        reason = private_reason(ctx, consumers, y, nodes)
        if reason:
            return f"norm output {y!r} has other consumers ({reason})"
        for n in nodes:
            if n.output[0] != out:
                reason = private_reason(ctx, consumers, n.output[0], nodes)
                if reason:
                    return reason
        self._found = (act, nodes, out)
        return None

    @staticmethod
    def _match_erf_gelu(ctx, consumers, y, head, other, rank):
        def const_of(node, value):
            ins = list(node.input)
            if len(ins) != 2 or ins.count(value) != 1:
                return None
            return scalar_constant(ctx, ins[1] if ins[0] == value else ins[0], rank)

        rel = constant_rel_tol(ctx.elem_type(y))     # a half model's sqrt(2) is rounded to half

        def single(name):
            r = consumers.get(name, [])
            return r[0] if len(r) == 1 else None

        if is_op(head, "Div"):
            if list(head.input)[0] != y or not close_to(scalar_constant(ctx, head.input[1], rank), SQRT2, rel):
                return "Erf GELU: Div is not x / sqrt(2)"
        elif not close_to(const_of(head, y), 1.0 / SQRT2, rel):
            return "Erf GELU: Mul is not x * (1 / sqrt(2))"
        erf = single(head.output[0])
        add = single(erf.output[0]) if erf is not None else None
        if not is_op(add, "Add") or not close_to(const_of(add, erf.output[0]), 1.0, rel):
            return "Erf GELU: Erf is not followed by Add(., 1)"
        p = add.output[0]
        mul_p = single(p)
        if not is_op(mul_p, "Mul") or p not in mul_p.input:
            return "Erf GELU: 1 + Erf is not multiplied"
        chain = [head, erf, add]
        if other is mul_p:                                   # legacy: (y * p) * 0.5
            if sorted(mul_p.input) != sorted([y, p]):
                return "Erf GELU: unexpected Mul operands"
            last = single(mul_p.output[0])
            if not is_op(last, "Mul") or not close_to(const_of(last, mul_p.output[0]), 0.5, rel):
                return "Erf GELU: y * (1 + erf) is not multiplied by 0.5"
            return "gelu", chain + [mul_p, last], last.output[0]
        if not is_op(other, "Mul"):
            return "Erf GELU: y is not multiplied"
        if close_to(const_of(mul_p, p), 0.5, rel):                # dynamo: y * (0.5 * p)
            q = mul_p.output[0]
            if sorted(other.input) != sorted([y, q]):
                return "Erf GELU: y is not multiplied by 0.5 * (1 + erf)"
            return "gelu", chain + [mul_p, other], other.output[0]
        if close_to(const_of(other, y), 0.5, rel):                # (y * 0.5) * p
            h = other.output[0]
            if sorted(mul_p.input) != sorted([h, p]):
                return "Erf GELU: y * 0.5 is not multiplied by 1 + erf"
            return "gelu", chain + [other, mul_p], mul_p.output[0]
        return "Erf GELU: the 0.5 factor is missing"

    # -- rewrite -------------------------------------------------------------
    def rewrite(self, ctx, node):
        act, nodes, out = self._found
        attrs, _ = node_attrs(node)
        attrs["activation"] = act
        if act == "leaky_relu":
            attrs["alpha"] = leaky_alpha(nodes[0])
        outputs = list(node.output)
        outputs[0] = out
        new = make_node(node.op_type, list(node.input), outputs, node.name, **attrs)
        ctx.replace_nodes([node] + nodes, [new])
        report_activation(ctx, self.name, node, act, [n.name for n in nodes])


def report_activation(ctx, pass_name, node, act, names):
    """The report entry of normrt node `node` (made if it has none) given activation `act` and
    the names of the nodes it absorbed."""
    entry = next((e for e in ctx.report.fused if e.get("normrt_node") == node.name), None)
    if entry is None:
        entry = {"pass": pass_name, "op": node.op_type, "pattern": node.op_type, "nodes": [node.name],
                 "normrt_op": node.op_type, "normrt_node": node.name, "kernel": NORM_OPS[node.op_type].kernel,
                 "activation": None, "residual": False}
        ctx.report.fused.append(entry)
    entry["activation"] = act
    entry["nodes"] = list(entry.get("nodes", [])) + list(names)
    entry["pattern"] = f"{entry.get('pattern') or entry.get('op')}+{PATTERN_NAMES[act]}"


def match_activation(ctx, consumers, y, readers, leaky=False):
    """(activation, its nodes, its output) for the activation reading `y` (readers: every node
    reading y), or why there is none (a str). Shared by the norm, Conv and MatMul epilogues.
    With `leaky` (the GEMM's epilogues: Conv, MatMul) also a LeakyRelu of alpha > 0,
    "leaky_relu", whose alpha is leaky_alpha(nodes[0])."""
    rank = len(ctx.shape(y)) if ctx.shape(y) is not None else None
    ops = sorted(r.op_type for r in readers)
    leaky_nodes = [r for r in readers if is_op(r, "LeakyRelu")]
    if leaky_nodes:
        if not leaky:
            return "LeakyRelu: not an activation of this kernel"
        if len(readers) != 1:
            return "norm output has other consumers"
        if leaky_alpha(leaky_nodes[0]) is None:
            return "LeakyRelu with alpha <= 0 (not the kernel's max(v, alpha v))"
        return "leaky_relu", leaky_nodes, leaky_nodes[0].output[0]
    relu = [r for r in readers if is_op(r, "Relu")]
    if relu:
        return ("relu", relu, relu[0].output[0]) if len(readers) == 1 else "norm output has other consumers"
    for op in ("Gelu", "Elu"):
        node = next((r for r in readers if is_op(r, op)), None)
        if node is None:
            continue
        if len(readers) != 1:
            return "norm output has other consumers"
        attrs, reason = node_attrs(node)
        if reason:
            return reason
        if op == "Elu":
            if float(np.float32(attrs.get("alpha", 1.0))) != 1.0:
                return f"Elu alpha={attrs['alpha']} (the kernels' ELU has alpha 1)"
            return "elu", [node], node.output[0]
        approximate = attrs.get("approximate", "none")
        if approximate not in ("none", "tanh"):
            return f"Gelu approximate={approximate!r} (the kernels compute the Erf and tanh forms)"
        return "gelu" if approximate == "none" else "gelu_tanh", [node], node.output[0]
    sig = [r for r in readers if is_op(r, "Sigmoid")]
    if sig:
        s = sig[0]
        s_readers = consumers.get(s.output[0], [])
        if len(readers) == 1:
            return "sigmoid", [s], s.output[0]
        if len(readers) == 2 and len(s_readers) == 1 and is_op(s_readers[0], "Mul"):
            mul = s_readers[0]
            if sorted(mul.input) == sorted([y, s.output[0]]) and any(r is mul for r in readers):
                return "silu", [s, mul], mul.output[0]
        return "norm output has other consumers"
    clip = [r for r in readers if is_op(r, "Clip")]
    if clip:
        if len(readers) != 1:
            return "norm output has other consumers"
        bounds = clip_bounds(ctx, clip[0])
        if isinstance(bounds, str):
            return bounds
        if bounds == (0.0, 6.0):
            return "relu6", clip, clip[0].output[0]
        if bounds == (0.0, None):
            return "relu", clip, clip[0].output[0]
        return f"Clip{bounds}: neither ReLU6 (0, 6) nor ReLU (0, none)"
    swish = [r for r in readers if is_op(r, "HardSwish")]
    if swish:
        if len(readers) != 1:
            return "norm output has other consumers"
        return "hardswish", swish, swish[0].output[0]
    hsig = [r for r in readers if is_op(r, "HardSigmoid")]
    if hsig:
        h = hsig[0]
        attrs, reason = node_attrs(h)
        if reason:
            return reason
        rel = constant_rel_tol(ctx.elem_type(y))
        ab = (float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5)))
        if not (close_to(ab[0], HARD_SIGMOID[0], rel) and close_to(ab[1], HARD_SIGMOID[1], rel)):
            return f"HardSigmoid(alpha={ab[0]}, beta={ab[1]}): the kernels have torch's (1/6, 1/2) only"
        if len(readers) == 1:
            return "hardsigmoid", [h], h.output[0]
        h_readers = consumers.get(h.output[0], [])
        if len(readers) == 2 and len(h_readers) == 1 and is_op(h_readers[0], "Mul"):
            mul = h_readers[0]
            if sorted(mul.input) == sorted([y, h.output[0]]) and any(r is mul for r in readers):
                return "hardswish", [h, mul], mul.output[0]
        return "norm output has other consumers"
    heads = [r for r in readers if ActivationEpilogue._erf_head(ctx, consumers, r, y)]
    if heads:
        if len(readers) != 2:
            return f"norm output read by {ops}: not an Erf GELU alone"
        return ActivationEpilogue._match_erf_gelu(ctx, consumers, y, heads[0], [r for r in readers if r is not heads[0]][0],
                                    rank)
    return f"no activation among the consumers {ops}"

