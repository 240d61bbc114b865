"""torch.nn.LocalResponseNorm as the exporters write it -> normrt::LRN.

torch computes (torch/nn/functional.py, local_response_norm, input of rank >= 3):

    X (N, C, *S) ──► Mul(X, X) or Pow(X, 2)
                 ──► view (N, 1, C, S1, -1)  [Reshape]     (rank 3: unsqueeze(1) [Unsqueeze])
                 ──► Pad(zeros: size//2 before and (size-1)//2 after, on axis 2 only)
                 ──► AveragePool(kernel [size, 1, ...], strides 1, no own padding)
                 ──► back to X's shape:
                       dynamo:  Squeeze(·, [1])  [──► Reshape(X's shape)]
                       legacy:  If(Equal(Gather(Shape(·), [1]), [1]),
                                   then: Squeeze(·, [1]), else: Identity(·)) ──► Reshape(X's shape)
                 ──► Mul(·, alpha) ──► Add(·, k) ──► Pow(·, beta)
    X ──────────────────────────────────────────────────────────────────► Div(X, ·) ──► Y

    ==>  X ──► normrt::LRN(size, alpha, beta, bias=k) ──► Y

Why it is ONNX LRN exactly: the average over the zero-padded window of `size`
channels counts the pad (the Pad node pads, the pool itself has none), so it is
sum(x[c']^2 for c' in [c - size//2, c + (size-1)//2] ∩ [0, C)) / size and the
denominator is (k + alpha/size * sum)^beta -- ONNX LRN's (bias + alpha/size *
square_sum)^beta over [c - floor((size-1)/2), c + ceil((size-1)/2)]. The two
windows agree for odd sizes; for an even size torch's window is ONNX's mirrored,
so an even size is refused (a Pad with ONNX's window, (size-1)//2 before and
size//2 after, is accepted for any size). The layout nodes (view, Squeeze,
Identity, If, Reshape) all keep the row-major element order, and the value
reaching the Mul has X's static shape, so element (n, c, s) is channel c's sum.
In the legacy If both branches are such layout ops of the pooled value, so the
condition (a Shape/Gather/Equal of the pooled value) does not matter.

Refused (reason in the report):
- a Pad or pool other than the above (mode, pads on other axes, strides,
  dilations, a pool with its own padding), an even size with torch's window;
- alpha, k, beta not constant scalars; an If branch doing anything but
  Squeeze/Identity/Reshape of the pooled value, or an If condition computed from
  anything but the pooled value and constants;
- X's shape not static past the batch axis (a symbolic N is compared by name), or the
  value reaching the Mul not shaped like X;
- a middle value read elsewhere or a graph output; element types other than float32/float64.
- a float64 constant that a float32 attribute cannot hold exactly (it would change results).
"""
from dataclasses import dataclass, field

import numpy as np

from .._graph import implicit_inputs, subgraphs
from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import Graph, chain_nodes_reason, dtype_reason, fused_name, is_op, other_input, scalar
from ._queries import node_attrs
from ._stats import float_attr_reason

PATTERN = "LocalResponseNorm(Pow/Pad/AveragePool/Div)"
LAYOUT_OPS = ("Squeeze", "Reshape", "Identity", "Unsqueeze", "If")
COND_OPS = ("Shape", "Gather", "Equal", "Cast", "Squeeze", "Unsqueeze", "Not", "Size")


@dataclass
class LrnMatch:
    div: object
    pow: object
    add: object
    mul: object
    layout: list            # nodes between the pool and the Mul (output side first)
    pool: object
    pad: object
    view: object
    square: object
    cond: list = field(default_factory=list)     # nodes computing an If condition
    info: dict = field(default_factory=dict)

    @property
    def nodes(self):
        return ([self.square, self.view, self.pad, self.pool] + self.cond + self.layout[::-1]
                + [self.mul, self.add, self.pow, self.div])


def _ints(ctx, name):
    v = ctx.constants.get(name) if name else None
    return None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]


def _branch_reason(branch, pooled):
    """Why an If branch is not a pure layout op (Squeeze/Identity/Reshape) of `pooled`, or None."""
    if len(branch.output) != 1:
        return "an If branch with several outputs"
    defined = {pooled}
    for node in branch.node:
        if node.op_type == "Constant":
            defined.update(node.output)
            continue
        if node.op_type not in ("Squeeze", "Identity", "Reshape", "Unsqueeze") or node.domain not in ("", "ai.onnx"):
            return f"an If branch computes {node.op_type}"
        data = node.input[0]
        if data not in defined:
            return f"an If branch reads {data!r}, not the pooled value"
        defined.update(node.output)
    if branch.output[0].name not in defined:
        return "an If branch output is not derived from the pooled value"
    return None


class LrnDecomposed(GraphPass):
    name = "lrn_decomposed"

    def matches(self, ctx):
        g = Graph(ctx)
        for div in ctx.nodes:
            if not is_op(div, "Div") or len(div.input) != 2:
                continue
            x = div.input[0]
            pw = g.prod(div.input[1], "Pow")
            add = pw and g.prod(pw.input[0], "Add")
            if add is None:
                continue
            mul = None
            for operand in add.input:
                mul = g.prod(operand, "Mul")
                if mul is not None:
                    break
            if mul is None:
                continue
            # the Mul's non-constant operand leads back through layout ops to the pool
            value = next((i for i in mul.input if i not in ctx.constants), None)
            layout, cond, pool, bad_cond = [], [], None, None
            while value is not None:
                node = g.producer.get(value)
                if is_op(node, "AveragePool"):
                    pool = node
                    break
                if not is_op(node, *LAYOUT_OPS):
                    break
                layout.append(node)
                if node.op_type == "If":
                    value = self._if_source(g, node)
                    cond = self._cond_nodes(ctx, g, node.input[0], value)
                    if cond is None:
                        bad_cond, cond = node.name, []
                else:
                    value = node.input[0]
            if pool is None:
                continue
            pad = g.prod(pool.input[0], "Pad")
            view = pad and g.prod(pad.input[0], "Reshape", "Unsqueeze")
            square = view and g.prod(view.input[0], "Mul", "Pow")
            if square is None or square.input[0] != x:
                continue
            yield LrnMatch(div, pw, add, mul, layout, pool, pad, view, square, cond,
                           info={"bad_cond": bad_cond} if bad_cond else {})

    @staticmethod
    def _if_source(g, node):
        """The outer value an If's branches read (the one implicit input), or None."""
        names = implicit_inputs(node)
        return names[0] if len(names) == 1 else None

    @staticmethod
    def _cond_nodes(ctx, g, cond, pooled):
        """The nodes computing an If condition from `pooled` and constants only, or None."""
        nodes, todo, seen = [], [cond], set()
        while todo:
            name = todo.pop()
            if name in seen or name == pooled or name in ctx.constants:
                continue
            seen.add(name)
            node = g.producer.get(name)
            if not is_op(node, *COND_OPS):
                return None
            nodes.append(node)
            todo.extend(i for i in node.input if i)
        return ctx.in_graph_order(nodes)

    def describe(self, m):
        return PATTERN, [n.name for n in m.nodes]

    def check(self, ctx, m):
        if m.info.get("bad_cond"):
            return (f"{m.info['bad_cond']!r}: the If condition is computed from other values than "
                    f"the pooled sums and constants")
        g = Graph(ctx)
        x = m.div.input[0]
        reason = chain_nodes_reason(g, m.nodes, m.div.output[0])
        if reason:
            return reason
        reason = dtype_reason(ctx, [x, m.div.output[0]])
        if reason:
            return reason
        x_shape = ctx.shape(x)
        # the batch axis may be symbolic (an export with a dynamic batch): the kernel takes any N,
        # and the checks below only compare it by name; C and the spatial axes must be static
        if x_shape is None or x_shape[0] is None or not all(isinstance(d, int) for d in x_shape[1:]):
            return f"shape of {x!r} not static past the batch axis"
        rank = len(x_shape)
        if rank < 3:
            return f"X of rank {rank} (LRN needs N, C and a spatial axis)"
        N, C = x_shape[:2]
        # X squared
        if m.square.op_type == "Mul":
            if list(m.square.input) != [x, x]:
                return f"{m.square.name!r} is not X * X"
        elif scalar(ctx, m.square.input[1], rank) != 2.0:
            return f"{m.square.name!r} is not X ** 2"
        # the view (N, 1, C, ...) keeping the spatial elements in order
        view_shape = ctx.shape(m.view.output[0])
        if view_shape is None or not all(isinstance(d, int) for d in view_shape[1:]):
            return f"shape of {m.view.output[0]!r} not static past the batch axis"
        vr = len(view_shape)
        if vr != rank + 1 and not (m.view.op_type == "Reshape" and vr >= 4):
            return f"{m.view.name!r}: view of rank {vr}"
        if list(view_shape[:3]) != [N, 1, C] or int(np.prod(view_shape[3:])) != int(np.prod(x_shape[2:])):
            return f"{m.view.name!r}: view {list(view_shape)} is not (N, 1, C, spatial...) of X {list(x_shape)}"
        # the pad: zeros on axis 2 only
        attrs, reason = node_attrs(m.pad)
        if reason:
            return reason
        if attrs.get("mode", "constant") != "constant":
            return f"{m.pad.name!r}: mode {attrs.get('mode')!r}"
        if ctx.opsets.get("", 0) < 11:
            pads = attrs.get("pads")
            value = attrs.get("value", 0.0)
        else:
            pads = _ints(ctx, m.pad.input[1] if len(m.pad.input) > 1 else "")
            value = 0.0
            if len(m.pad.input) > 2 and m.pad.input[2]:
                value = scalar(ctx, m.pad.input[2], vr)
            if len(m.pad.input) > 3 and m.pad.input[3]:
                return f"{m.pad.name!r}: Pad with axes"
        if pads is None or len(pads) != 2 * vr:
            return f"{m.pad.name!r}: pads not a constant of length {2 * vr}"
        if value != 0.0:
            return f"{m.pad.name!r}: pads with {value}, not zeros"
        before, after = pads[:vr], pads[vr:]
        if any(before[i] or after[i] for i in range(vr) if i != 2):
            return f"{m.pad.name!r}: pads {pads} touch axes other than the channel axis"
        # the pool: a window of `size` channels, nothing else
        attrs, reason = node_attrs(m.pool)
        if reason:
            return reason
        kernel = attrs.get("kernel_shape")
        if not kernel or len(kernel) != vr - 2 or any(k != 1 for k in kernel[1:]):
            return f"{m.pool.name!r}: kernel_shape {kernel} (expected [size, 1, ...])"
        size = int(kernel[0])
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return f"{m.pool.name!r}: auto_pad {attrs.get('auto_pad')}"
        if any(attrs.get("pads", [0]) ) or any(s != 1 for s in attrs.get("strides", [1])) \
                or any(d != 1 for d in attrs.get("dilations", [1])):
            return f"{m.pool.name!r}: pool with its own padding, strides or dilations"
        lo, hi = before[2], after[2]
        if (lo, hi) != ((size - 1) // 2, size // 2):
            if (lo, hi) == (size // 2, (size - 1) // 2):
                return (f"size {size} is even: torch's window [c-{lo}, c+{hi}] is ONNX LRN's "
                        f"[c-{hi}, c+{lo}] mirrored")
            return f"{m.pad.name!r}: channel pads ({lo}, {hi}) for a window of {size}"
        # the layout ops back to X's shape
        for node in m.layout:
            if node.op_type == "If":
                for branch in subgraphs(node):
                    reason = _branch_reason(branch, m.pool.output[0])
                    if reason:
                        return f"{node.name!r}: {reason}"
            elif node.op_type == "Reshape" and ctx.constants.get(node.input[1]) is None:
                return f"{node.name!r}: Reshape to a non-constant shape"
        before_mul = m.layout[0].output[0] if m.layout else m.pool.output[0]
        if tuple(ctx.shape(before_mul) or ()) != tuple(x_shape):
            return f"the pooled sums reach the Mul with shape {ctx.shape(before_mul)}, not X's {list(x_shape)}"
        # the constants
        alpha = scalar(ctx, other_input(m.mul, before_mul), rank)
        k = scalar(ctx, other_input(m.add, m.mul.output[0]), rank)
        beta = scalar(ctx, m.pow.input[1], rank)
        for label, v in (("alpha", alpha), ("k", k), ("beta", beta)):
            if v is None or not np.isfinite(v):
                return f"{label} is not a constant finite scalar"
            reason = float_attr_reason(label, v)
            if reason:
                return reason
        if m.pow.input[0] != m.add.output[0]:
            return f"{m.pow.name!r} does not raise the sum"
        y_shape = ctx.shape(m.div.output[0])
        if y_shape is not None and tuple(y_shape) != tuple(x_shape):
            return f"the Div broadcasts X {list(x_shape)} to {list(y_shape)}"
        m.info = {"size": size, "alpha": alpha, "beta": beta, "bias": k}
        return None

    def rewrite(self, ctx, m):
        new = make_node("LRN", [m.div.input[0]], [m.div.output[0]], fused_name(ctx, m.nodes, "LRN"), **m.info)
        ctx.replace_nodes(m.nodes, [new])
        ctx.report.fused.append({
            "pass": self.name, "op": PATTERN, "pattern": PATTERN, "nodes": [n.name for n in m.nodes],
            "normrt_op": "LRN", "normrt_node": new.name, "kernel": NORM_OPS["LRN"].kernel,
            "activation": None, "residual": False,
        })
