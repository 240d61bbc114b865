"""Per-channel affine constants after a Conv or an inference BatchNorm -> folded into its weights / parameters.

    x ──► Conv(W, b)                           ─┐
    x ──► BatchNormalization(s, B, mean, var)   ├─ y (read only by the op) ──► Mul | Add | Sub | Div (y, c) ──► z
    x ──► normrt::BatchNorm(s, B, mean, var)   ─┘

    ==>   x ──► Conv(W', b') | BatchNorm(s', B', mean, var) ──► z

    c is a constant holding one value per output channel C (shapes (C, 1, 1),
    (1, C, 1, 1), (C,) for a rank-2 BN, or one element), so z = a * y + d per channel:

        Mul(y, c), Mul(c, y)   a = c          Add(y, c), Add(c, y)   d = c
        Div(y, c)              a = 1 / c      Sub(y, c)              d = -c
                                              Sub(c, y)              a = -1, d = c

    Conv:  W' = W * a along W's output-channel axis 0, b' = b * a + d   (b = 0 when absent)
    BN:    s' = s * a,                                  B' = B * a + d

Chains (Caffe2's DenseNet writes BatchNormalization -> Mul -> Add -> Relu) fold
one node per round until nothing is left to fold; the Relu then becomes the
BatchNorm's activation (activation_epilogue) or the Conv's epilogue.

The folded constants are computed in float64 and rounded once to the graph's
type, so the result equals the original up to that rounding (and the order of
the Conv's sum). Runs after fold_batch_norm (a Conv's BN is in its weights
first) and before standard_norms.

Refused (reason in the report; the nodes stay as they are):
- y is read by other nodes or is a graph output;
- c not a constant, or broadcasting along any axis but the channel axis (or
  raising the rank), or of another element type than y;
- Div(c, y) (not affine in y), Div by a zero; non-finite c or folded values;
- Conv weight/bias not constants, element types other than float32/float64;
- a BN in training mode, with statistics outputs or a fused activation, or
  whose rank is unknown.
"""
from dataclasses import dataclass

import numpy as np
import onnx

from . import GraphPass
from ._queries import (NP_FLOAT, WIDE_DTYPES, channel_vector, float_type_reason, is_normrt, is_op, other_input, present,
                     private_reason)
from .fold_batch_norm import FoldBatchNorm

AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


@dataclass
class AffineMatch:
    producer: object          # Conv, BatchNormalization or normrt::BatchNorm
    op: object                # the Mul/Add/Sub/Div reading its output
    scale: np.ndarray = None  # a, float64 (C,)
    shift: np.ndarray = None  # d, float64 (C,)

    @property
    def nodes(self):
        return [self.producer, self.op]


def _is_producer(node):
    return is_op(node, "Conv") or is_op(node, "BatchNormalization") or is_normrt(node, "BatchNorm")


class FoldChannelAffine(GraphPass):
    name = "fold_channel_affine"

    def matches(self, ctx):
        producer, consumers = ctx.producer(), ctx.consumers()
        for node in ctx.nodes:
            if not any(is_op(node, op) for op in AFFINE_OPS) or len(node.input) != 2:
                continue
            for name in node.input:
                prod = producer.get(name)
                # candidates: the op is y's only reader and its other operand is a constant (a SiLU's
                # Mul(y, Sigmoid(y)), an Erf GELU's Div(y, sqrt 2) are other patterns, not refusals)
                if _is_producer(prod) and name == prod.output[0] and len(consumers.get(name, [])) == 1 \
                        and ctx.is_constant(other_input(node, name) or ""):
                    yield AffineMatch(prod, node)
                    break

    def describe(self, m):
        return f"{m.producer.op_type}+{m.op.op_type}", [m.producer.name, m.op.name]

    def run(self, ctx):
        """Rounds of matches until none folds (a chain folds one node per round); each refusal reported once."""
        count = 0
        while True:
            folded = 0
            for m in list(self.matches(ctx)):
                reason = self.check(ctx, m)
                if reason:
                    self.report_refusal(ctx, m, reason)
                    continue
                self.rewrite(ctx, m)
                folded += 1
            count += folded
            if not folded:
                break
        ctx.report.passes[self.name] = ctx.report.passes.get(self.name, 0) + count
        return count

    # -- check ---------------------------------------------------------------
    def check(self, ctx, m):
        if not present(ctx, m.nodes):
            return "nodes already rewritten by an earlier match"
        prod, op = m.producer, m.op
        y = prod.output[0]
        if len([o for o in prod.output if o]) != 1:
            return f"{prod.op_type} has more than one output"
        reason = private_reason(ctx, ctx.consumers(), y, [op])
        if reason:
            return reason
        c_name = other_input(op, y)
        if c_name is None:
            return f"{op.op_type} reads {y!r} twice"
        if not ctx.is_constant(c_name):
            return f"{op.op_type} operand {c_name!r} is not a constant"
        params = self._params(ctx, prod)
        if isinstance(params, str):
            return params
        C, rank, names = params
        reason = float_type_reason(ctx, [y], WIDE_DTYPES)
        if reason:
            return reason
        dtype = NP_FLOAT[ctx.elem_type(y)]
        c = ctx.constants[c_name]
        # constants by their values: those folded earlier in this pass have no inferred type yet
        if c.dtype != dtype or any(ctx.constants[n].dtype != dtype for n in names):
            return f"constants of element types other than {dtype} (that of {y!r})"
        vec, reason = channel_vector(c, C, rank)
        if reason:
            return f"{op.op_type} operand {c_name!r}: {reason}"
        vec = vec.astype(np.float64)
        if not np.all(np.isfinite(vec)):
            return f"{op.op_type} operand {c_name!r} has non-finite values"
        ones, zeros = np.ones(C), np.zeros(C)
        c_first = op.input[0] == c_name
        if op.op_type == "Mul":
            a, d = vec, zeros
        elif op.op_type == "Add":
            a, d = ones, vec
        elif op.op_type == "Sub":
            a, d = (-ones, vec) if c_first else (ones, -vec)
        else:
            if c_first:
                return "Div(c, y) is not affine in y"
            if np.any(vec == 0):
                return f"Div by {c_name!r} which has zeros"
            a, d = 1.0 / vec, zeros
        m.scale, m.shift = a, d
        folded = self._folded(ctx, m)
        if not all(np.all(np.isfinite(v)) for v in folded if v is not None):
            return f"folded values overflow {dtype}"
        return None

    @staticmethod
    def _params(ctx, prod):
        """(C, rank of y, names of the constants folded into) or a refusal reason."""
        if is_op(prod, "Conv"):
            if len(prod.input) < 2 or not ctx.is_constant(prod.input[1]):
                return "Conv weight is not a constant"
            W = ctx.constants[prod.input[1]]
            if W.ndim < 3:
                return f"Conv weight of rank {W.ndim}"
            names = [prod.input[1]]
            if len(prod.input) > 2 and prod.input[2]:
                if not ctx.is_constant(prod.input[2]):
                    return "Conv bias is not a constant"
                if ctx.constants[prod.input[2]].shape != (W.shape[0],):
                    return f"Conv bias of shape {ctx.constants[prod.input[2]].shape}, expected ({W.shape[0]},)"
                names.append(prod.input[2])
            return W.shape[0], W.ndim, names
        _, reason = FoldBatchNorm()._bn_reason(ctx, prod)
        if reason:
            return reason
        scale = ctx.constants[prod.input[1]]
        C = scale.shape[0] if scale.ndim == 1 else None
        if C is None or any(ctx.constants[n].shape != (C,) for n in prod.input[1:5]):
            return "BatchNormalization parameters are not all of shape (C,)"
        shape = ctx.shape(prod.input[0])
        if shape is None or len(shape) < 2:
            return f"rank of {prod.input[0]!r} unknown (or < 2)"
        return C, len(shape), list(prod.input[1:5])

    @staticmethod
    def _folded(ctx, m):
        """(new weight or scale, new bias) in the graph's dtype."""
        prod, a, d = m.producer, m.scale, m.shift
        dtype = ctx.constants[prod.input[1]].dtype
        if is_op(prod, "Conv"):
            W = ctx.constants[prod.input[1]].astype(np.float64)
            b = ctx.constants[prod.input[2]].astype(np.float64) if len(prod.input) > 2 and prod.input[2] \
                else np.zeros(W.shape[0])
            W2 = W * a.reshape((-1,) + (1,) * (W.ndim - 1))
        else:
            W2 = ctx.constants[prod.input[1]].astype(np.float64) * a
            b = ctx.constants[prod.input[2]].astype(np.float64)
        with np.errstate(over="ignore"):
            return W2.astype(dtype), (b * a + d).astype(dtype)

    # -- rewrite -------------------------------------------------------------
    def rewrite(self, ctx, m):
        prod, op = m.producer, m.op
        first, bias = self._folded(ctx, m)
        base = prod.name or prod.op_type
        is_conv = is_op(prod, "Conv")
        first_name = ctx.add_constant(f"{base}_{'weight' if is_conv else 'scale'}_affine_folded", first)
        bias_name = ctx.add_constant(f"{base}_bias_affine_folded", bias)
        new = onnx.NodeProto()
        new.CopyFrom(prod)                   # attributes exactly as they were
        inputs = list(prod.input)
        inputs[1] = first_name
        if is_conv:
            inputs[2:] = [bias_name]
        else:
            inputs[2] = bias_name
        del new.input[:], new.output[:]
        new.input.extend(inputs)
        new.output.append(op.output[0])
        ctx.replace_nodes(m.nodes, [new])
        entry = next((e for e in ctx.report.fused if e.get("normrt_node") == prod.name), None)
        if entry is not None and is_normrt(prod, "BatchNorm"):
            entry["nodes"] = list(entry.get("nodes", [])) + [op.name]
            entry["pattern"] = f"{entry.get('pattern') or entry.get('op')}+{op.op_type}"
