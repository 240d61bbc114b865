"""Mean-variance normalization written out -> normrt::MeanVarianceNorm.

ONNX MeanVarianceNormalization is y = (x - mean) / (sqrt(var) + eps) over `axes`,
eps added to the standard deviation (its function body fixes eps = 1e-9). Two
written-out forms compute it:

  two-pass (torch: (x - x.mean(A, keepdim=True)) / (x.var(A, keepdim=True, unbiased=False).sqrt() + eps)):

    X ──┬──► m = ReduceMean(A, keepdims=1) ──► Sub(X, m) ──┬──────────────────────────────┐
        │                                                  └──► Mul(d, d) | Pow(d, 2)     │
        │                                                        ──► ReduceMean(A) ──► Sqrt ──► Add(·, eps)
        └────────────────────────────────────────────────────────────────────────── Div(d, ·) ──► Y

  the ONNX function body (MeanVarianceNormalization_expanded), one-pass variance:

    X_RM = ReduceMean(X, A)     EX_squared = Pow(X_RM, 2)      X_squared = Pow(X, 2)
    E_Xsquared = ReduceMean(X_squared, A)   Variance = Sub(E_Xsquared, EX_squared)
    STD = Sqrt(Variance)    X_variance = Sub(X, X_RM)    Y = Div(X_variance, Add(STD, eps))

    ==>  X ──► normrt::MeanVarianceNorm(axes=A, epsilon=eps) ──► Y

Any axes are taken (MeanVarianceNorm reduces arbitrary axes). Without the Add,
eps = 0. Squares may be Mul(v, v) or Pow(v, 2); the numerator's Sub may be its
own node on its own ReduceMean (the same axes). normrt's kernel computes the
variance in two passes in float64: equal to the one-pass E[x^2] - E[x]^2 in exact
arithmetic, and without its cancellation when |mean| >> std.

Refused (reason in the report):
- eps inside the square root (sqrt(var + eps): that is LayerNorm over trailing
  axes, left to recognized_norms; over other axes it is no MVN);
- reductions over different axes, keepdims=0, non-constant axes, an unbiased
  variance, eps not a constant scalar >= 0;
- a middle value read elsewhere or a graph output; element types other than float32/float64.
"""
from dataclasses import dataclass, field

import numpy as np

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import Graph, chain_nodes_reason, dtype_reason, fused_name, is_op, other_input, scalar
from ._stats import float_attr_reason, mean_axes

PATTERN = "MeanVarianceNorm(ReduceMean/Sub/Sqrt/Add/Div)"


@dataclass
class MvnMatch:
    div: object
    sub: object
    den: object              # Add(std, eps), or the Sqrt itself
    sqrt: object
    nodes: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


class MvnDecomposed(GraphPass):
    name = "mvn_decomposed"

    def matches(self, ctx):
        g = Graph(ctx)
        for div in ctx.nodes:
            if not is_op(div, "Div") or len(div.input) != 2:
                continue
            sub = g.prod(div.input[0], "Sub")
            if sub is None or g.prod(sub.input[1], "ReduceMean") is None:
                continue
            den = g.producer.get(div.input[1])
            if is_op(den, "Add"):
                sqrt = next((g.prod(i, "Sqrt") for i in den.input if g.prod(i, "Sqrt") is not None), None)
            elif is_op(den, "Sqrt"):
                sqrt = den
                inner = g.prod(den.input[0], "Add")
                if inner is not None and not self._trailing_mean(ctx, g, sub):
                    yield MvnMatch(div, sub, den, sqrt, info={"eps_inside": True})
                    continue
                if inner is not None:
                    continue            # (x - mean) / sqrt(var + eps) over trailing axes: a LayerNorm
            else:
                continue
            if sqrt is not None:
                yield MvnMatch(div, sub, den, sqrt)

    @staticmethod
    def _trailing_mean(ctx, g, sub):
        ax = mean_axes(ctx, g.prod(sub.input[1], "ReduceMean"))
        rank = len(ctx.shape(sub.input[0]) or ())
        return not isinstance(ax, str) and rank and ax[0] == list(range(ax[0][0], rank))

    def describe(self, m):
        nodes = m.nodes or [m.sub, m.sqrt, m.den, m.div]
        return PATTERN, list(dict.fromkeys(n.name for n in nodes))

    @staticmethod
    def _mean_of(ctx, g, name, x):
        """(ReduceMean node, axes) if `name` is a keepdims mean of x, else a reason."""
        red = g.prod(name, "ReduceMean")
        if red is None or red.input[0] != x:
            return f"{name!r} is not a ReduceMean of {x!r}"
        ax = mean_axes(ctx, red)
        if isinstance(ax, str):
            return ax
        if ax[1] != 1:
            return f"{red.name!r}: keepdims=0"
        return red, ax[0]

    @staticmethod
    def _square_of(ctx, g, name):
        """(node, v) if `name` is v * v or v ** 2, else None."""
        sq = g.prod(name, "Mul", "Pow")
        if sq is None:
            return None
        if sq.op_type == "Mul" and sq.input[0] == sq.input[1]:
            return sq, sq.input[0]
        if sq.op_type == "Pow" and scalar(ctx, sq.input[1], 8) == 2.0:
            return sq, sq.input[0]
        return None

    def _variance(self, ctx, g, name, x, axes):
        """The nodes computing the population variance of x over axes (either form), or a reason."""
        red = g.prod(name, "ReduceMean")
        if red is not None:                               # two-pass: mean((x - m)^2)
            ax = mean_axes(ctx, red)
            if isinstance(ax, str):
                return ax
            if ax != (axes, 1):
                return f"{red.name!r}: variance over axes {ax[0]} keepdims={ax[1]}, the mean over {axes}"
            sq = self._square_of(ctx, g, red.input[0])
            if sq is None:
                return f"{red.name!r} does not average a square"
            sub = g.prod(sq[1], "Sub")
            if sub is None or sub.input[0] != x:
                return f"{sq[0].name!r} does not square a deviation of {x!r}"
            mean = self._mean_of(ctx, g, sub.input[1], x)
            if isinstance(mean, str):
                return mean
            if mean[1] != axes:
                return f"{mean[0].name!r}: mean over axes {mean[1]}, not {axes}"
            return [mean[0], sub, sq[0], red]
        sub = g.prod(name, "Sub")                         # one-pass: mean(x^2) - mean(x)^2
        if sub is None:
            return f"{name!r} is neither a mean of squared deviations nor E[x^2] - E[x]^2"
        ex2 = g.prod(sub.input[0], "ReduceMean")
        sq_x = ex2 and self._square_of(ctx, g, ex2.input[0])
        sq_m = self._square_of(ctx, g, sub.input[1])
        if ex2 is None or sq_x is None or sq_x[1] != x or sq_m is None:
            return f"{sub.name!r} is not E[x^2] - E[x]^2 of {x!r}"
        ax = mean_axes(ctx, ex2)
        if isinstance(ax, str):
            return ax
        if ax != (axes, 1):
            return f"{ex2.name!r}: E[x^2] over axes {ax[0]} keepdims={ax[1]}, the mean over {axes}"
        mean = self._mean_of(ctx, g, sq_m[1], x)
        if isinstance(mean, str):
            return mean
        if mean[1] != axes:
            return f"{mean[0].name!r}: mean over axes {mean[1]}, not {axes}"
        return [mean[0], sq_m[0], sq_x[0], ex2, sub]

    def check(self, ctx, m):
        if m.info.get("eps_inside"):
            return ("eps added inside the square root over non-trailing axes: (x - mean) / sqrt(var + eps) "
                    "is no MeanVarianceNormalization (eps on the std); left to recognized_norms")
        g = Graph(ctx)
        x, y = m.sub.input[0], m.div.output[0]
        x_shape = ctx.shape(x)
        if x_shape is None:
            return f"rank of {x!r} unknown"
        mean = self._mean_of(ctx, g, m.sub.input[1], x)
        if isinstance(mean, str):
            return mean
        red, axes = mean
        if m.den is m.sqrt:
            eps, eps_nodes = 0.0, []
        else:
            eps = scalar(ctx, other_input(m.den, m.sqrt.output[0]) or "", 8)
            if eps is None or not np.isfinite(eps) or eps < 0:
                return f"{m.den.name!r} does not add a constant eps >= 0 to the standard deviation"
            eps_nodes = [m.den]
            reason = float_attr_reason("eps", eps)
            if reason:
                return reason
        var = self._variance(ctx, g, m.sqrt.input[0], x, axes)
        if isinstance(var, str):
            return var
        reason = dtype_reason(ctx, [x, y])
        if reason:
            return reason
        y_shape = ctx.shape(y)
        if y_shape is None or len(y_shape) != len(x_shape):
            return f"the output {y!r} is not shaped like {x!r}"
        m.nodes = ctx.in_graph_order([red, m.sub] + var + [m.sqrt] + eps_nodes + [m.div])
        reason = chain_nodes_reason(g, m.nodes, y)
        if reason:
            return reason
        m.info = {"x": x, "axes": axes, "eps": eps}
        return None

    def rewrite(self, ctx, m):
        info = m.info
        new = make_node("MeanVarianceNorm", [info["x"]], [m.div.output[0]],
                        fused_name(ctx, m.nodes, "MeanVarianceNorm"), axes=list(info["axes"]), epsilon=info["eps"])
        ctx.replace_nodes(m.nodes, [new])
        ctx.report.fused.append({
            "pass": self.name, "op": PATTERN, "pattern": PATTERN, "nodes": [n.name for n in m.nodes],
            "normrt_op": "MeanVarianceNorm", "normrt_node": new.name,
            "kernel": NORM_OPS["MeanVarianceNorm"].kernel, "activation": None, "residual": False,
        })
