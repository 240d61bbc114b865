"""Constant folding: nodes that read only constants are evaluated once, at load.

    initializer ─┐
    initializer ─┴─► node ─► value      ==>      value (a new initializer)
      (or values folded before)

Nodes are visited in topological order, so chains of constant-only nodes
(ConstantOfShape -> weights, Constant -> Reshape shape, ...) fold entirely.
A CastLike of a constant folds too when the type of its `target_type` input is
known (its values are not read): the dynamo exporter writes the weights of a
bfloat16 GroupNorm as CastLike(w, x).
The node is evaluated by the executor's own node binding (the same code
that runs it at inference time).

Shape arithmetic folds too where the shapes are fixed: a Shape (or Size) of a
value whose shape inference knows every dim (a session checks the fed shapes
against the model's static dims, so they cannot change) is that constant:

    x (1, 64, 8, 8) ─► Shape ─► Gather(2) ─► Unsqueeze ─► Concat ─► Reshape(y, ·)
    ==>  Reshape(y, constant)

after which the folded values make more shapes known (a Reshape's output, a
Pad's pads, ...), so while a sweep folds something and Shapes are left, the
types are refreshed and the graph swept again (at most MAX_SHAPE_ROUNDS times). Symbolic dims (dim_param)
are never folded: the specialized plan folds those per input shape.
Within a sweep every node left in the graph is typed by onnx's inference of that
one node (PassContext.infer_node_types) as soon as its inputs are: Reshape-13
reads a constant target only, so in a legacy opset-13 export each GroupNorm's
Reshape(., Shape(x)) made the next one's shape known only one refresh later,
and 12 rounds left a UNet's last GroupNorms unfused.

Refused (left in the graph):
- non-deterministic ops (RandomNormal, RandomUniform, *Like, Multinomial, Bernoulli);
- nodes whose outputs are not plain tensors (sequences, optionals, maps);
- nodes whose outputs are huge (> MAX_FOLDED_BYTES) *and* much larger than their
  inputs (ConstantOfShape, Expand, Tile...): folding them would bloat the model;
- nodes writing a graph output (the output must stay produced by a node);
- nodes whose evaluation fails (the error surfaces when the model runs).
"""
import numpy as np
import onnx

from .._graph import implicit_inputs
from ..executor import evaluate_node
from . import GraphPass
from ._queries import is_op

NON_DETERMINISTIC = {
    ("", "RandomNormal"), ("", "RandomUniform"), ("", "RandomNormalLike"), ("", "RandomUniformLike"),
    ("", "Multinomial"), ("", "Bernoulli"),
}
MAX_FOLDED_BYTES = 1 << 24       # 16 MiB
MAX_GROWTH = 4                   # ... unless the output is no more than 4x its inputs
MAX_SHAPE_ROUNDS = 12            # sweeps: each refreshes the types over the whole model


def static_shape_value(ctx, node):
    """The constant a Shape / Size node computes when its input's shape is fully known, else None."""
    if not is_op(node, "Shape", "Size") or len(node.input) != 1:
        return None
    shape = ctx.shape(node.input[0])
    if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(shape, dtype=np.int64)), np.int64)
    start, end = 0, len(shape)
    for a in node.attribute:          # Shape-15: start/end, clamped like Python slices
        if a.name == "start":
            start = a.i
        elif a.name == "end":
            end = a.i
    return np.array(shape[slice(start, end)], np.int64)


def partial_shape_value(ctx, node):
    """The constant a Gather / Slice of a Shape's output computes when the dims it picks are
    known though others are not (a dynamic-axes export's `x.shape[-1] // 2` with a symbolic
    batch: Shape -> Gather(-1)), else None."""
    if not is_op(node, "Gather", "Slice") or not node.input or not node.output or ctx.is_constant(node.input[0]):
        return None
    source = ctx.producer().get(node.input[0])
    if not is_op(source, "Shape") or len(source.input) != 1:
        return None
    dims = ctx.shape(source.input[0])
    if dims is None or any(not ctx.is_constant(n) for n in node.input[1:] if n):
        return None
    start, end = 0, len(dims)
    for a in source.attribute:        # Shape-15: start/end
        if a.name == "start":
            start = a.i
        elif a.name == "end":
            end = a.i
    dims = list(dims)[slice(start, end)]
    # the positions the node picks, from the node itself run on 0 .. n-1
    args = [np.arange(len(dims), dtype=np.int64)] + [ctx.constants[n] if n else None for n in node.input[1:]]
    try:
        (picked,), _ = evaluate_node(node, ctx.opsets, args)
    except Exception:  # noqa: BLE001 - not foldable here: run time names the error
        return None
    picked = np.asarray(picked)
    if not all(isinstance(dims[i], int) and dims[i] >= 0 for i in picked.reshape(-1)):
        return None
    return np.array([dims[i] for i in picked.reshape(-1)], np.int64).reshape(picked.shape)


def _record_dequantized(ctx, node, args, name):
    """A folded DequantizeLinear's integer input, scale, zero point and axis, kept beside its float
    value (ctx.dequantized): quantized_products runs the products on those 8-bit weights."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if "block_size" in attrs and attrs["block_size"]:
        return
    q, scale = args[0], args[1]
    zero = args[2] if len(args) > 2 else None
    ctx.dequantized[name] = (q, scale, zero, int(attrs.get("axis", 1)))


class ConstantFolding(GraphPass):
    name = "constant_folding"

    def __init__(self, max_folded_bytes=MAX_FOLDED_BYTES):
        self.max_folded_bytes = max_folded_bytes

    def check_node(self, ctx, node, outputs_needed):
        if (node.domain, node.op_type) in NON_DETERMINISTIC:
            return "non-deterministic op"
        if any(o in outputs_needed for o in node.output):
            return "writes a graph output"
        return None

    def _declares_huge_output(self, ctx, node, reads):
        """Whether shape inference already says the outputs are too big to fold (see run)."""
        out_bytes = 0
        for o in node.output:
            shape, elem = ctx.shape(o), ctx.elem_type(o)
            if not o or shape is None or not elem or not all(isinstance(d, int) for d in shape):
                continue
            try:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize
            except (KeyError, TypeError, ValueError):
                continue
            out_bytes += float(np.prod([max(d, 0) for d in shape], dtype=np.float64)) * itemsize
        in_bytes = sum(ctx.constants[n].nbytes for n in reads)
        return out_bytes > self.max_folded_bytes and out_bytes > MAX_GROWTH * max(in_bytes, 1)

    @staticmethod
    def _cast_like_as_cast(ctx, node):
        """CastLike(constant, value of a known type) as the Cast it is (foldable), else the node."""
        if node.op_type != "CastLike" or node.domain not in ("", "ai.onnx") or len(node.input) != 2 or \
                not ctx.is_constant(node.input[0]) or ctx.is_constant(node.input[1]):
            return node
        to = ctx.elem_type(node.input[1])
        if not to:
            return node
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "saturate"}
        return onnx.helper.make_node("Cast", [node.input[0]], list(node.output), name=node.name, to=to, **attrs)

    def run(self, ctx):
        count = 0
        for _ in range(MAX_SHAPE_ROUNDS):
            folded = self._sweep(ctx)
            count += folded
            if not folded or not any(is_op(n, "Shape", "Size") for n in ctx.nodes):
                break
            ctx.refresh_types()       # the folded values may make the Shapes' input shapes known
        if count:
            ctx.mark_types_stale()      # folded shape computations: inference may now know more shapes
        ctx.commit()
        ctx.report.passes[self.name] = ctx.report.passes.get(self.name, 0) + count
        return count

    def _sweep(self, ctx):
        """The number of nodes folded in one pass over the graph."""
        count = 0
        graph_outputs = set(ctx.graph_outputs)
        kept = []
        for node in ctx.nodes:
            node = self._cast_like_as_cast(ctx, node)
            if node.output and node.output[0] not in graph_outputs:
                value = static_shape_value(ctx, node)
                if value is None:
                    value = partial_shape_value(ctx, node)
                if value is not None:
                    ctx.constants[node.output[0]] = value
                    count += 1
                    continue
            reads = [n for n in node.input if n]
            implicit = implicit_inputs(node)
            if not all(ctx.is_constant(n) for n in reads + implicit) or not node.output:
                ctx.infer_node_types(node)     # so a Shape further on reads a known shape in this sweep
                kept.append(node)
                continue
            if self.check_node(ctx, node, graph_outputs):
                kept.append(node)
                continue
            if self._declares_huge_output(ctx, node, reads + implicit):
                kept.append(node)     # not even evaluated: a crafted ConstantOfShape could ask for terabytes
                continue
            args = [ctx.constants[n] if n else None for n in node.input]
            try:
                outs, _ = evaluate_node(node, ctx.opsets, args, {n: ctx.constants[n] for n in implicit})
            except Exception:  # noqa: BLE001 - leave it to run time, where the error names the node
                kept.append(node)
                continue
            names = [o for o in node.output if o]
            if len(outs) != len(names) or not all(isinstance(v, np.ndarray) for v in outs):
                kept.append(node)
                continue
            in_bytes = sum(ctx.constants[n].nbytes for n in reads + implicit)
            out_bytes = sum(v.nbytes for v in outs)
            if out_bytes > self.max_folded_bytes and out_bytes > MAX_GROWTH * max(in_bytes, 1):
                kept.append(node)
                continue
            for name, value in zip(names, outs):
                ctx.constants[name] = value
            if is_op(node, "DequantizeLinear"):
                _record_dequantized(ctx, node, args, names[0])
            count += 1
        ctx.nodes = kept
        ctx.commit()
        return count
