"""GroupNorm as torch exports it below opset 21: Reshape -> InstanceNormalization -> Reshape [-> Mul -> Add].

              x (N, C, *spatial)
              │ ╲
              │  Shape ──────────────────────┐ (legacy exporter; dynamo writes the
              ▼                              │  constant shape of x instead)
    Reshape(x, [0 or N, G, -1])              │
              │  (N, G, C/G * prod(spatial)) │
              ▼                              │
    InstanceNormalization(ones(G), zeros(G), epsilon)
              │                              │
              ▼                              │
    Reshape(·, Shape(x) or shape of x) ◄─────┘
              │  (N, C, *spatial)
              ▼
    Mul(·, scale)        scale: constant per channel, (C, 1, 1) / (1, C, 1, 1) / (C, 1) ...  (optional)
              │
              ▼
    Add(·, bias)         bias: likewise                                                  (optional)
              │
              ▼
              y          ==>   x ──► normrt::GroupNorm(scale (C,), bias (C,), num_groups=G, epsilon) ──► y

The InstanceNormalization may already be a normrt::InstanceNorm (standard_norms
ran first): both forms are matched. A Mul/Add whose operand is not a per-channel
constant is simply left after the GroupNorm (the GroupNorm is then without affine).

Refused (reason in the report):
- the first Reshape's target is not [0 or N, G, -1] (a constant), or G does not divide C;
- the InstanceNormalization's scale/bias are not constant ones/zeros of shape (G,);
- the second Reshape does not restore x's shape (neither Shape(x) nor a constant
  that equals x's static shape, with 0/-1 only where they reproduce it);
- a middle value is read elsewhere or is a graph output;
- x's rank, channel count or element type unknown, or not float32/float64.
"""
from dataclasses import dataclass, field

import numpy as np

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import (NP_FLOAT, channel_vector, param_dtype, float_type_reason, is_normrt, is_op, node_attrs,
                     only_consumer, present, private_reason, take_fused_entry)

PATTERN = "GroupNorm(Reshape/InstanceNormalization/Reshape)"


@dataclass
class GroupNormMatch:
    reshape_in: object
    inorm: object
    reshape_out: object
    mul: object = None
    add: object = None
    # filled by check
    info: dict = field(default_factory=dict)

    @property
    def nodes(self):
        return [n for n in (self.reshape_in, self.inorm, self.reshape_out, self.mul, self.add) if n is not None]


def _is_instance_norm(node):
    return is_op(node, "InstanceNormalization") or is_normrt(node, "InstanceNorm")


class GroupNormInstance(GraphPass):
    name = "group_norm_instance"

    def matches(self, ctx):
        producer = ctx.producer()
        consumers = ctx.consumers()
        for node in ctx.nodes:
            if not _is_instance_norm(node) or not node.input:
                continue
            first = producer.get(node.input[0])
            if not is_op(first, "Reshape"):
                continue
            readers = consumers.get(node.output[0], [])
            if len(readers) != 1 or not is_op(readers[0], "Reshape") or readers[0].input[0] != node.output[0]:
                continue
            m = GroupNormMatch(first, node, readers[0])
            # the affine Mul -> Add, taken when they are per-channel constants (else left as they are)
            x = first.input[0]
            rank = len(ctx.shape(x) or ())
            out = m.reshape_out.output[0]
            nxt = only_consumer(ctx, consumers, out)
            if is_op(nxt, "Mul") and self._affine_operand(ctx, nxt, out, x, rank) is not None:
                m.mul = nxt
                out = nxt.output[0]
                nxt = only_consumer(ctx, consumers, out)
            if is_op(nxt, "Add") and self._affine_operand(ctx, nxt, out, x, rank) is not None:
                m.add = nxt
            yield m

    def describe(self, match):
        return PATTERN, [n.name for n in match.nodes]

    @staticmethod
    def _affine_operand(ctx, node, value, x, rank):
        """The per-channel (C,) constant `node` applies to `value`, or None."""
        ins = list(node.input)
        if len(ins) != 2 or ins.count(value) != 1:
            return None
        other = ins[1] if ins[0] == value else ins[0]
        shape = ctx.shape(x)
        if not ctx.is_constant(other) or shape is None or len(shape) < 2 or not isinstance(shape[1], int):
            return None
        const = ctx.constants[other]
        if NP_FLOAT.get(ctx.elem_type(x)) != const.dtype:
            return None
        vec, _ = channel_vector(const, shape[1], rank)
        return vec

    # -- check ---------------------------------------------------------------
    def check(self, ctx, m):
        if not present(ctx, m.nodes):
            return "nodes already rewritten by an earlier match"
        x = m.reshape_in.input[0]
        shape = ctx.shape(x)
        if shape is None:
            return f"shape of {x!r} unknown"
        rank = len(shape)
        if rank < 2 or not isinstance(shape[1], int):
            return f"{x!r} of shape {shape}: rank >= 2 with a known channel count needed"
        C = shape[1]
        reason = float_type_reason(ctx, [x])
        if reason:
            return reason

        # Reshape(x, [0 or N, G, -1])
        attrs, reason = node_attrs(m.reshape_in)
        if reason:
            return reason
        target_name = m.reshape_in.input[1] if len(m.reshape_in.input) > 1 else ""
        if not ctx.is_constant(target_name):
            return "first Reshape's target shape is not a constant"
        target = ctx.constants[target_name]
        if target.ndim != 1 or target.shape[0] != 3 or target.dtype.kind not in "iu":
            return f"first Reshape's target {target.tolist()} is not [N, G, -1]"
        n0, G, last = (int(v) for v in target)
        allowzero = attrs.get("allowzero", 0)
        if not ((n0 == 0 and not allowzero) or (isinstance(shape[0], int) and n0 == shape[0] and n0 > 0)):
            return f"first Reshape's target {target.tolist()} does not keep the batch axis of {x!r} {shape}"
        if last != -1 or G < 1:
            return f"first Reshape's target {target.tolist()} is not [N, G, -1]"
        if C % G:
            return f"{G} groups do not divide C = {C}"

        # InstanceNormalization(ones(G), zeros(G))
        inorm = m.inorm
        iattrs, reason = node_attrs(inorm)
        if reason:
            return reason
        if is_op(inorm, "InstanceNormalization") and ctx.opsets.get("", 0) < 6:
            return "InstanceNormalization-1 (consumed_inputs form)"
        if is_normrt(inorm, "InstanceNorm") and iattrs.get("activation", ""):
            return "the InstanceNorm already has a fused activation"
        if len(inorm.input) < 3 or not all(ctx.is_constant(n) for n in inorm.input[1:3]):
            return "InstanceNormalization scale/bias are not constants"
        s, b = (ctx.constants[n] for n in inorm.input[1:3])
        if s.shape != (G,) or b.shape != (G,):
            return f"InstanceNormalization scale/bias of shapes {s.shape}/{b.shape}, expected ({G},)"
        if not (np.all(s == 1) and np.all(b == 0)):
            return "InstanceNormalization scale/bias are not all ones/zeros"
        if s.dtype != NP_FLOAT[ctx.elem_type(x)] or b.dtype != s.dtype:
            return "InstanceNormalization scale/bias dtype differs from x"

        # Reshape back to x's shape
        reason = self._restores_shape(ctx, m.reshape_out, x, shape)
        if reason:
            return reason

        consumers = ctx.consumers()
        for value, node in ((m.reshape_in.output[0], inorm), (inorm.output[0], m.reshape_out)):
            reason = private_reason(ctx, consumers, value, [node])
            if reason:
                return reason
        if len([o for o in inorm.output if o]) != 1:
            return "InstanceNormalization has extra outputs"

        scale = bias = None
        value = m.reshape_out.output[0]
        for node in (m.mul, m.add):
            if node is None:
                continue
            reason = private_reason(ctx, consumers, value, [node])
            if reason:
                return reason
            vec = self._affine_operand(ctx, node, value, x, rank)
            if vec is None:
                return f"{node.op_type} operand is not a per-channel constant"
            if node is m.mul:
                scale = vec
            else:
                bias = vec
            value = node.output[0]
        m.info = {"x": x, "groups": G, "epsilon": iattrs.get("epsilon", 1e-5), "scale": scale, "bias": bias,
                  "output": value}
        return None

    @staticmethod
    def _restores_shape(ctx, reshape, x, shape):
        if len(reshape.input) < 2:
            return "second Reshape has no shape input"
        attrs, reason = node_attrs(reshape)
        if reason:
            return reason
        target_name = reshape.input[1]
        producer = ctx.producer().get(target_name)
        if is_op(producer, "Shape"):
            pattrs, reason = node_attrs(producer)
            if reason:
                return reason
            start, end = pattrs.get("start", 0), pattrs.get("end")
            if producer.input[0] != x or start != 0 or (end is not None and end < len(shape)):
                return "second Reshape's target is not Shape(x)"
            return None
        if not ctx.is_constant(target_name):
            return "second Reshape's target is neither Shape(x) nor a constant"
        target = [int(v) for v in np.asarray(ctx.constants[target_name]).reshape(-1)]
        if len(target) != len(shape):
            return f"second Reshape's target {target} does not match x's shape {shape}"
        allowzero = attrs.get("allowzero", 0)
        free = 0
        for t, d in zip(target, shape):
            if t == -1:
                free += 1
            elif t == 0 and not allowzero:
                continue
            elif not (isinstance(d, int) and t == d):
                return f"second Reshape's target {target} does not restore x's shape {shape}"
        if free > 1:
            return f"second Reshape's target {target} has more than one -1"
        return None

    # -- rewrite -------------------------------------------------------------
    def rewrite(self, ctx, m):
        info = m.info
        dtype = param_dtype(ctx.elem_type(info["x"]))
        inputs = [info["x"], "", ""]
        if info["scale"] is not None:
            inputs[1] = ctx.add_constant(f"{m.reshape_in.name or 'group_norm'}_scale", info["scale"].astype(dtype))
        if info["bias"] is not None:
            inputs[2] = ctx.add_constant(f"{m.reshape_in.name or 'group_norm'}_bias", info["bias"].astype(dtype))
        name = (m.add or m.mul or m.reshape_out).name or ctx.new_name("group_norm")   # that node goes away
        new = make_node("GroupNorm", inputs, [info["output"]], name,
                        num_groups=info["groups"], epsilon=info["epsilon"])
        if is_normrt(m.inorm, "InstanceNorm"):
            take_fused_entry(ctx, m.inorm.name)
        ctx.replace_nodes(m.nodes, [new])
        ctx.report.fused.append({
            "pass": self.name, "op": PATTERN, "pattern": PATTERN, "nodes": [n.name for n in m.nodes],
            "normrt_op": "GroupNorm", "normrt_node": new.name, "kernel": NORM_OPS["GroupNorm"].kernel,
            "activation": None, "residual": False,
        })
