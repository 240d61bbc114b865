"""A linear layer's tail -> one normrt::MatMul (bias, residual and activation applied by the GEMM's store).

    X ──► MatMul(X, W) ──► [Add(·, bias)] ──► [Add(·, R)] ──► [activation] ──► out
          or Gemm(X, W, bias)                                  Relu | Sigmoid | SiLU | Gelu | Erf GELU |
                                                               ReLU6 | HardSigmoid | HardSwish
                                                               (the forms activation_epilogue reads)
                                                               | LeakyRelu(alpha > 0), the GEMM's own
  ==>
    X ──► normrt::MatMul(X, W, bias, R, activation=act) ──► out       out = act(X @ W + bias + R)

W is a 2-D constant (the kernel packs it once); X is of rank >= 2 (leading
dims are rows); X, W, bias and R are all float32, or all one half type
(float16/bfloat16: computed in float32 and rounded once, _queries.PRODUCT_DTYPES).
bias is a constant of N values that broadcasts along the last axis only ((N,),
(1, N), ...). R is a value not computed from the MatMul's own output, of the output's shape in
the kernel's fused store; a residual whose shape differs at run time (dims shape inference could
not prove alike, a broadcast) is added by the call as the Add would (kernel_calls.matmul). Gemm needs alpha = beta = 1, transA = 0 (transB is folded
into the constant) and a bias C of N values. Each step after the product is
taken only if the value before it has no other reader and is no graph output;
a MatMul with nothing after it to fuse is left alone (numpy/BLAS runs it).

Refused (reason in the report): anything else in the matched chain — a
non-constant or broadcasting-over-rows bias, a residual of unknown rank,
float64/mixed types, an activation form activation_epilogue
would refuse.
"""
from dataclasses import dataclass, field

import numpy as np

from .._graph import decode_attributes
from ..domain import make_node
from . import GraphPass
from ._queries import (PRODUCT_DTYPES, float_type_reason, is_op, leaky_alpha, only_consumer, other_input,
                       private_reason)
from .activation_epilogue import ACTIVATION_OPS as ACTIVATIONS_STARTING, PATTERN_NAMES, match_activation
from .residual_norm import _reads_downstream_of
from ._queries import Graph

# an activation, or the Div/Mul that starts an Erf GELU
ACTIVATION_OPS = ACTIVATIONS_STARTING + ("Div", "Mul", "LeakyRelu")


@dataclass
class Match:
    mm: object                      # the MatMul / Gemm
    nodes: list = field(default_factory=list)
    bias: str = ""
    bias_from_gemm: bool = False
    trans_b: bool = False           # Gemm transB: the constant is stored (N, K)
    residual: str = ""
    activation: str = ""
    alpha: float = 0.0              # the LeakyRelu's
    output: str = ""


class MatMulEpilogue(GraphPass):
    name = "matmul_epilogue"
    report_refusals = False      # a refused candidate still runs, unfused

    def matches(self, ctx):
        consumers = ctx.consumers()
        for node in ctx.nodes:
            if not (is_op(node, "MatMul") or is_op(node, "Gemm")) or not node.output or not node.output[0]:
                continue
            readers = consumers.get(node.output[0], [])
            gemm_bias = is_op(node, "Gemm") and len(node.input) > 2 and bool(node.input[2])
            if gemm_bias or any(is_op(r, op) for r in readers for op in ("Add",) + ACTIVATION_OPS):
                yield node

    def describe(self, node):
        return f"{node.op_type}+epilogue", [node.name]

    # -- check ---------------------------------------------------------------
    def check(self, ctx, node):
        if not ctx.contains(node):
            return "node already rewritten"
        a, w = node.input[0], node.input[1]
        reason = float_type_reason(ctx, [a, w], PRODUCT_DTYPES)
        if reason:
            return reason
        weight = ctx.constants.get(w)
        if weight is None or weight.ndim != 2:
            return f"weight {w!r} is not a 2-D constant"
        a_shape = ctx.shape(a)
        if a_shape is None or len(a_shape) < 2:
            return f"input {a!r} has unknown rank or rank < 2"
        m = Match(node)
        if is_op(node, "Gemm"):
            reason = self._check_gemm(ctx, node, m, weight)
            if reason:
                return reason
        n_out = weight.shape[0] if m.trans_b else weight.shape[1]
        consumers = ctx.consumers()
        y = node.output[0]
        y_shape = ctx.shape(y)
        # bias
        reader = only_consumer(ctx, consumers, y)
        if not m.bias and is_op(reader, "Add"):
            other = other_input(reader, y)
            bias = ctx.constants.get(other) if other else None
            if bias is not None and bias.dtype == weight.dtype and bias.size == n_out \
                    and bias.ndim <= len(a_shape) and all(d == 1 for d in bias.shape[:-1]):
                m.nodes.append(reader)
                m.bias = other
                y = reader.output[0]
                reader = only_consumer(ctx, consumers, y)
        # residual
        if is_op(reader, "Add"):
            other = other_input(reader, y)
            if other is not None and other not in ctx.constants:
                # a residual whose shape may differ from the product's (dims shape inference
                # could not prove alike, or a broadcast) fuses too: the call adds it as the Add
                # would when the shapes differ at run time (kernel_calls.matmul)
                r_shape = ctx.shape(other)
                if r_shape is None or y_shape is None:
                    return "residual Add: rank of a summand unknown"
                if ctx.elem_type(other) != ctx.elem_type(a):
                    return f"residual {other!r} is not of the product's element type"
                if _reads_downstream_of(Graph(ctx), [other], node):
                    return f"residual {other!r} is computed from the product"
                m.nodes.append(reader)
                m.residual = other
                y = reader.output[0]
                reader = only_consumer(ctx, consumers, y)
        # activation
        readers = consumers.get(y, [])
        if readers and y not in ctx.graph_outputs and any(r.op_type in ACTIVATION_OPS for r in readers):
            found = match_activation(ctx, consumers, y, readers, leaky=True)
            if not isinstance(found, str):
                act, act_nodes, out = found
                reason = private_reason(ctx, consumers, y, act_nodes)
                if reason:
                    return reason
                m.nodes += act_nodes
                m.activation = act
                m.alpha = leaky_alpha(act_nodes[0]) if act == "leaky_relu" else 0.0
                y = out
        if not m.nodes and not m.bias:
            return "nothing to fuse after the product"
        # every middle value must be private to the chain
        chain = [node] + m.nodes
        for n in chain:
            if n.output[0] != y:
                reason = private_reason(ctx, consumers, n.output[0], chain)
                if reason:
                    return reason
        m.output = y
        self._found = m
        return None

    def _check_gemm(self, ctx, node, m, weight):
        try:
            attrs = decode_attributes(node)
        except ValueError as e:
            return f"attribute not constant: {e}"
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return "Gemm with alpha or beta != 1"
        if attrs.get("transA", 0):
            return "Gemm with transA=1"
        m.trans_b = bool(attrs.get("transB", 0))
        if len(node.input) > 2 and node.input[2]:
            c = ctx.constants.get(node.input[2])
            n_out = weight.shape[0] if m.trans_b else weight.shape[1]
            if c is None or c.dtype != weight.dtype or c.size != n_out or not all(d == 1 for d in c.shape[:-1]):
                return f"Gemm bias {node.input[2]!r} is not a constant of {n_out} values along the last axis"
            m.bias, m.bias_from_gemm = node.input[2], True
        return None

    # -- rewrite -------------------------------------------------------------
    def rewrite(self, ctx, node):
        m = self._found
        w = node.input[1]
        if m.trans_b:
            w = ctx.add_constant(w + "_t", np.ascontiguousarray(ctx.constants[w].T))
        bias = m.bias
        if bias and ctx.constants[bias].ndim != 1:
            bias = ctx.add_constant(bias + "_row", ctx.constants[bias].reshape(-1))
        inputs = [node.input[0], w, bias, m.residual]
        extra = {"alpha": m.alpha} if m.activation == "leaky_relu" else {}
        new = make_node("MatMul", inputs, [m.output], node.name, activation=m.activation, **extra)
        ctx.replace_nodes([node] + m.nodes, [new])
        parts = [node.op_type] + (["Bias"] if m.bias else []) + (["Residual"] if m.residual else []) \
            + ([PATTERN_NAMES[m.activation]] if m.activation else [])
        ctx.report.fused.append({
            "pass": self.name, "op": "+".join(parts), "pattern": "+".join(parts),
            "nodes": [node.name] + [n.name for n in m.nodes], "normrt_op": "MatMul", "normrt_node": new.name,
            "kernel": "matmul", "activation": m.activation or None, "residual": bool(m.residual)})
