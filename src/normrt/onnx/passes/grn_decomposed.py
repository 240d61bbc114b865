"""ConvNeXt V2's global response normalization written out -> one normrt::GRN.

The GRN layer of ConvNeXt V2 (facebookresearch's and transformers' ConvNextV2GRN), on a
channels-last X (N, *spatial, C):

    X ──┬──► ReduceL2(axes = every spatial axis, keepdims=1) ──► G ──┬──► ReduceMean(axes=[-1]) ──► Add(·, eps) ──┐
        │                                                           └──────────────────────────► Div(G, ·) ◄──┘
        │                                                                                          │ Nx
        ├──────────────────────────────────────────────────────────────────────────────► Mul(X, Nx)
        │                                                         Mul(gamma, ·) ──► Add(·, beta) ──► Add(·, X) ──► Y
        └──────────────────────────────────────────────────────────────────────────────────────────────┘
    (Mul, Add: either operand order; gamma, beta constants of C values, the modules' (1, 1, 1, C))

    ==>  X, gamma (C,), beta (C,) ──► normrt::GRN(epsilon=eps) ──► Y

The kernel (lp_norm.pyx's grn) sums the squares in float64 and computes y = x * (gamma * Nx + 1)
+ beta in float64, rounded once: the formula's value, not its float32 roundings (within a few
float32 ulps of them).

Refused (reason in the report): X of unknown rank or rank < 3; a ReduceL2 over other axes than
all the spatial ones, or keepdims=0; a ReduceMean over another axis than the last; eps not a
constant scalar >= 0 (or not exactly a float32); gamma or beta not constants of C (or 1) values
broadcasting along the last axis only; a middle value read elsewhere or a graph output; element
types other than float32/float16/bfloat16 (the kernel computes in float32 and float64).
"""
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import Graph, chain_nodes_reason, dtype_reason, fused_name, is_op
from ._queries import other_input, scalar_constant
from ._stats import float_attr_reason, mean_axes

PATTERN = "GRN(ReduceL2/ReduceMean/Div/Mul/Add)"
GRN_DTYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


@dataclass
class GrnMatch:
    l2: object            # ReduceL2(X) -> G
    mean: object          # ReduceMean(G)
    eps_add: object       # Add(mean, eps)
    div: object           # Div(G, ·) -> Nx
    scale_x: object       # Mul(X, Nx)
    gamma_mul: object     # Mul(gamma, ·)
    beta_add: object      # Add(·, beta)
    out_add: object       # Add(·, X) -> Y

    @property
    def nodes(self):
        return [self.l2, self.mean, self.eps_add, self.div, self.scale_x, self.gamma_mul, self.beta_add,
                self.out_add]


def _only_reader(g, name, op):
    """The one `op` node reading `name` (other readers are chain_nodes_reason's to refuse), or None."""
    readers = [r for r in g.consumers.get(name, []) if is_op(r, op)]
    return readers[0] if len(readers) == 1 else None


def _channel_constant(ctx, name, C):
    """A constant of C (or 1) values along the last axis only, as float32 (C,), or None."""
    v = ctx.constants.get(name)
    if v is None or v.dtype.kind not in "fV" or v.size not in (1, C) or (v.ndim and v.shape[-1] != v.size):
        return None
    return np.broadcast_to(np.asarray(v, np.float32).reshape(-1), (C,)).copy()


class GrnDecomposed(GraphPass):
    name = "grn_decomposed"

    def matches(self, ctx):
        g = Graph(ctx)
        for l2 in ctx.nodes:
            if not is_op(l2, "ReduceL2") or not l2.input:
                continue
            x, gx = l2.input[0], l2.output[0]
            mean, div = _only_reader(g, gx, "ReduceMean"), _only_reader(g, gx, "Div")
            if mean is None or div is None or div.input[0] != gx:
                continue
            eps_add = _only_reader(g, mean.output[0], "Add")
            if eps_add is None or div.input[1] != eps_add.output[0]:
                continue
            scale_x = _only_reader(g, div.output[0], "Mul")
            if scale_x is None or other_input(scale_x, div.output[0]) != x:
                continue
            gamma_mul = _only_reader(g, scale_x.output[0], "Mul")
            beta_add = gamma_mul and _only_reader(g, gamma_mul.output[0], "Add")
            out_add = beta_add and _only_reader(g, beta_add.output[0], "Add")
            if out_add is None or other_input(out_add, beta_add.output[0]) != x:
                continue
            yield GrnMatch(l2, mean, eps_add, div, scale_x, gamma_mul, beta_add, out_add)

    def describe(self, m):
        return PATTERN, [n.name for n in m.nodes]

    def check(self, ctx, m):
        g = Graph(ctx)
        x, y = m.l2.input[0], m.out_add.output[0]
        reason = chain_nodes_reason(g, m.nodes, y)
        if reason:
            return reason
        reason = dtype_reason(ctx, [x, y], GRN_DTYPES)
        if reason:
            return reason
        shape = ctx.shape(x)
        if shape is None or len(shape) < 3:
            return f"rank of {x!r} unknown or below 3 (GRN's X is (N, *spatial, C))"
        rank, C = len(shape), shape[-1]
        if not isinstance(C, int):
            return f"the channel count of {x!r} is not known"
        for node, want, what in ((m.l2, list(range(1, rank - 1)), "every spatial axis"),
                                 (m.mean, [rank - 1], "the channels, the last axis")):
            found = mean_axes(ctx, node)         # (sorted axes, keepdims) of any Reduce node, or why not
            if isinstance(found, str):
                return found
            if found != (want, 1):
                return (f"{node.name!r}: {node.op_type} over axes {found[0]}, keepdims={found[1]} "
                        f"(GRN: {what}, kept)")
        eps = scalar_constant(ctx, other_input(m.eps_add, m.mean.output[0]) or "")
        if eps is None or not 0.0 <= eps < np.inf:
            return f"{m.eps_add.name!r}: eps is not a constant scalar >= 0"
        reason = float_attr_reason("eps", eps)
        if reason:
            return reason
        gamma = _channel_constant(ctx, other_input(m.gamma_mul, m.scale_x.output[0]) or "", C)
        beta = _channel_constant(ctx, other_input(m.beta_add, m.gamma_mul.output[0]) or "", C)
        if gamma is None or beta is None:
            return f"gamma or beta is not a constant of {C} values along the channel axis"
        y_shape = ctx.shape(y)
        if y_shape is not None and len(y_shape) != rank:
            return f"the output {list(y_shape)} is broadcast beyond X {list(shape)}"
        m.info = {"eps": eps, "gamma": gamma, "beta": beta}
        return None

    def rewrite(self, ctx, m):
        name = fused_name(ctx, m.nodes, "GRN")
        gamma = ctx.add_constant(f"{name}_gamma", m.info["gamma"])
        beta = ctx.add_constant(f"{name}_beta", m.info["beta"])
        new = make_node("GRN", [m.l2.input[0], gamma, beta], [m.out_add.output[0]], name, epsilon=m.info["eps"])
        ctx.replace_nodes(m.nodes, [new])
        ctx.report.fused.append({
            "pass": self.name, "op": PATTERN, "pattern": PATTERN, "nodes": [n.name for n in m.nodes],
            "normrt_op": "GRN", "normrt_node": new.name, "kernel": NORM_OPS["GRN"].kernel,
            "activation": None, "residual": False,
        })
