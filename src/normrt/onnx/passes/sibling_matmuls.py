"""Linear layers reading the same input -> one product over their concatenated weights, split.

Attention's Q/K/V projections (and a gated MLP's gate/up, when the gate's
activation is not one the GEMM applies) are separate products of one input
with different constant weights:

    X ──┬─► MatMul(X, W1) ─► [Add(·, b1)] ─► y1        (or Gemm(X, W1[, b1]), transB folded)
        ├─► MatMul(X, W2) ─► [Add(·, b2)] ─► y2
        └─► ...                                         any number >= 2 of siblings
  ==>
    X ─► MatMul(X, [W1 | W2 | ...]) ─► [Add(·, [b1 | b2 | ...])] ─► Split(axis=-1) ─► y1, y2, ...

One GEMM call instead of several: X is packed once, the weight is packed once
(at the first run, like any constant MatMul weight), the work splits better
across threads, and the per-call cost is paid once. The Split's outputs are
views of the product's columns (the Split op slices, it does not copy); the
readers of y1, y2 (Reshapes, attention, elementwise kernels) take strided rows.
Later passes see ordinary ONNX: matmul_epilogue folds the concatenated bias
into the GEMM's store. Siblings whose weights are a quantized model's int8 ones
(ctx.dequantized) leave the merged weight's integers recorded too: quantized_products
then runs the one product on the 8-bit kernel.

A product whose output (after its bias) feeds an activation matmul_epilogue
fuses into the GEMM's store (LLaMA's gate: SiLU) does not merge: split off,
its activation would run as a separate elementwise kernel over the strided
view, which cost more than the merge saved (llama128, 1 thread: +5% CPU time
with gate/up merged, -0.3% with Q/K/V only). Measured again with SiLU(g) * u as
one one-exp silu_mul instruction of the elementwise kernel (commit e4a754b has
the merge and its refusing checks): llama128 -0.3..+1.1%, a 24-token qwen2
+6.5% (1 thread, interleaved CPU time): the merged GEMM saves little at one
thread, and the Split plus a generic-path Elementwise cost more per layer than
the fast-path Mul they replace.

Siblings merge when each is a float32 MatMul or Gemm (alpha = beta = 1,
transA = 0) whose weight is a 2-D float32 constant with the same K, read the
same X of known rank >= 2, and either all or none of them have a bias: a
constant of N_i values broadcasting along the last axis only, whose Add is the
product's only reader (a Gemm's C of that form counts too). Siblings with a
bias and siblings without form separate groups (filling zeros would turn a -0
into +0).

Refused (left as they are, not reported: they run unmerged): a weight that is
not a constant (a runtime value, or a batched 3-D weight), a K that differs
(rows of different inputs), another input, float16/float64 products, a Gemm
with alpha/beta != 1 or transA, a product followed by an activation the GEMM's
store takes. A product that is a graph output merges without its bias Add
(the Add then reads the Split's view).
"""
from collections import defaultdict

import numpy as np
from onnx import TensorProto, helper

from .._graph import decode_attributes
from . import GraphPass
from ._queries import is_op, only_consumer, other_input
from .activation_epilogue import match_activation
from .matmul_epilogue import ACTIVATION_OPS
from .quantized_products import int8_weight


class _Sibling:
    """One linear layer of a group: its nodes, weight (K, N) and bias (N,) or None, output."""

    def __init__(self, nodes, weight, bias, output):
        self.nodes, self.weight, self.bias, self.output = nodes, weight, bias, output


def _row_bias(ctx, add, y, n, rank):
    """The (N,) bias an Add of the product `y` adds along the last axis, or None."""
    other = other_input(add, y)
    b = ctx.constants.get(other) if other else None
    if b is None or b.dtype != np.float32 or b.size != n or b.ndim > rank or any(d != 1 for d in b.shape[:-1]):
        return None
    return b.reshape(-1)


def _gemm_form(ctx, node):
    """(weight as (K, N), bias (N,) or None) of a Gemm this pass can take, or None."""
    try:
        attrs = decode_attributes(node)
    except ValueError:
        return None
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
        return None
    w = ctx.constants.get(node.input[1])
    if w is None or w.ndim != 2:
        return None
    if attrs.get("transB", 0):
        w = w.T
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = ctx.constants.get(node.input[2])
        if c is None or c.dtype != np.float32 or c.size != w.shape[1] or c.ndim > 2 \
                or any(d != 1 for d in c.shape[:-1]):
            return None
        bias = c.reshape(-1)
    return w, bias


def _activated(ctx, consumers, y):
    """Whether an activation matmul_epilogue would fuse into the product's store reads `y`."""
    readers = consumers.get(y, [])
    if y in ctx.graph_outputs or not any(r.op_type in ACTIVATION_OPS for r in readers):
        return False
    return not isinstance(match_activation(ctx, consumers, y, readers), str)


def sibling(ctx, consumers, node):
    """The node as a _Sibling (with its bias Add, if any), or None if it cannot or should not merge."""
    if not (is_op(node, "MatMul") or is_op(node, "Gemm")) or len(node.output) != 1 or len(node.input) < 2:
        return None
    x = node.input[0]
    shape = ctx.shape(x)
    if shape is None or len(shape) < 2 or ctx.elem_type(x) != TensorProto.FLOAT \
            or ctx.elem_type(node.input[1]) != TensorProto.FLOAT:
        return None
    y = node.output[0]
    if is_op(node, "Gemm"):
        form = _gemm_form(ctx, node)
        if form is None or len(shape) != 2 or _activated(ctx, consumers, y):
            return None
        return _Sibling([node], form[0], form[1], y)
    w = ctx.constants.get(node.input[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    add = only_consumer(ctx, consumers, y)
    if is_op(add, "Add") and len(add.output) == 1:
        bias = _row_bias(ctx, add, y, w.shape[1], len(shape))
        if bias is not None:
            return None if _activated(ctx, consumers, add.output[0]) else _Sibling([node, add], w, bias, add.output[0])
    return None if _activated(ctx, consumers, y) else _Sibling([node], w, None, y)


# Merging pays from this many rows of X (static shapes): the merged product's
# Split gives strided views, and on a few rows the Reshapes and kernels reading
# them cost more than the GEMM calls saved. Measured, 1 thread, specialized plan,
# interleaved in one process: gemma (24 tokens) 0.157 ms merged vs 0.140 apart,
# qwen2 (24) 0.141 vs 0.131; bert128 (128 rows) -1.6%, llama128 -0.3..+1.1%.
MIN_ROWS = 128


class SiblingMatMuls(GraphPass):
    name = "sibling_matmuls"
    report_refusals = False      # unmerged products run as they are

    def matches(self, ctx):
        consumers = ctx.consumers()
        for x in list(consumers):
            groups = defaultdict(list)
            for node in ctx.readers(x):
                if node.input and node.input[0] == x and x not in node.input[1:]:
                    s = sibling(ctx, consumers, node)
                    if s is not None:
                        groups[(s.weight.shape[0], s.bias is not None)].append(s)
            for group in groups.values():
                if len(group) >= 2:
                    yield group

    def describe(self, group):
        return "sibling MatMuls", [n.name for s in group for n in s.nodes]

    def check(self, ctx, group):
        if not all(ctx.contains(n) for s in group for n in s.nodes):
            return "already rewritten"
        shape = ctx.shape(group[0].nodes[0].input[0])
        rows = shape[:-1] if shape is not None else [None]
        if not all(isinstance(d, int) and d > 0 for d in rows) or int(np.prod(rows)) < MIN_ROWS:
            return f"fewer than {MIN_ROWS} rows known: the Split's strided views cost more than the calls saved"
        return None

    def rewrite(self, ctx, group):
        first = group[0].nodes[0]
        x, name = first.input[0], first.name
        weight = ctx.add_constant(name + "_siblings_w", np.concatenate([s.weight for s in group], axis=1))
        # int8 siblings (a quantized model's Q/K/V): the merged weight keeps its integers too, so the
        # one product runs on the 8-bit kernel (quantized_products) and quantizes X once
        forms = [int8_weight(ctx, s.nodes[0]) for s in group]
        if not any(isinstance(f, str) for f in forms):
            ctx.dequantized[weight] = (np.concatenate([f[0] for f in forms], axis=1),
                                       np.concatenate([f[1] for f in forms]), None, 1)
        product = ctx.new_name(name + "_siblings")
        nodes = [helper.make_node("MatMul", [x, weight], [product], name=product)]
        if group[0].bias is not None:
            bias = ctx.add_constant(name + "_siblings_b", np.concatenate([s.bias for s in group]))
            summed = ctx.new_name(name + "_siblings_biased")
            nodes.append(helper.make_node("Add", [product, bias], [summed], name=summed))
            product = summed
        sizes = [s.weight.shape[1] for s in group]
        outputs = [s.output for s in group]
        split_name = ctx.new_name(name + "_siblings_split")
        axis = len(ctx.shape(x)) - 1           # negative axes only from opset 11
        if ctx.opsets.get("", 1) >= 13:
            sizes_name = ctx.add_constant(name + "_siblings_sizes", np.array(sizes, np.int64))
            nodes.append(helper.make_node("Split", [product, sizes_name], outputs, name=split_name, axis=axis))
        else:
            nodes.append(helper.make_node("Split", [product], outputs, name=split_name, axis=axis, split=sizes))
        # the merged nodes go where the last sibling was; readers of the earlier siblings may
        # sit before it (q's Reshape before k's MatMul): commit restores the order
        ctx.replace_nodes([n for s in group for n in s.nodes], nodes)
        ctx.mark_unordered()
