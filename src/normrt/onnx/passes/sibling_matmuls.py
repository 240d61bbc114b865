"""Linear layers reading the same input -> one product over their concatenated weights, split.

Attention's Q/K/V projections (and a SwiGLU MLP's gate/up, below) are
separate products of one input with different constant weights:

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
into the GEMM's store.

A product whose output (after its bias) feeds an activation matmul_epilogue
fuses into the GEMM's store does not merge: split off, its activation would run
as one more pass over memory. Except a gated MLP's gate (SwiGLU: LLaMA, Mistral,
Qwen), whose SiLU only feeds a Mul with a sibling of the same width:

    X ──┬─► MatMul(X, Wg) ─► g ─► Sigmoid ─► Mul(g, ·) ─► Mul(·, u) ─► h
        └─► MatMul(X, Wu) ─► u ──────────────────────────────┘
  ==>
    X ─► MatMul(X, [Wg | Wu]) ─► Split ─► g, u ─► (Sigmoid, Mul, Mul as they were)

The product of u is written anyway and read back by the gating Mul; merged,
elementwise_chains fuses SiLU(g) * u into one pass over the two column views
(one silu_mul instruction of the fused elementwise kernel, one exp per element)
in place of that Mul, and the GEMM call, X's packing and the split of work
across threads are shared. Measured (1 thread, interleaved CPU time vs the gate
kept with its SiLU in the GEMM): llama128 +0.3..-1.5%; a 24-token qwen2
(0.15 ms) +7%: at that size the Split's and the Elementwise's per-node cost
(no fast executor step) outweighs the saving.

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
store takes unless it is the SiLU of a SwiGLU gate whose up product is in the
group (another activation; a SiLU read by anything but one Mul, or whose Mul's
other operand is no sibling, or a sibling of another width or itself
activated). A product that is a graph output merges without its bias Add (the
Add then reads the Split's view).
"""
from collections import defaultdict

import numpy as np
from onnx import TensorProto, helper

from .._graph import decode_attributes
from . import GraphPass
from ._queries import is_op, only_consumer, other_input
from .activation_epilogue import match_activation
from .matmul_epilogue import ACTIVATION_OPS


class _Sibling:
    """One linear layer of a group: its nodes, weight (K, N) and bias (N,) or None, output,
    and `gate`: for a SwiGLU gate, the value its SiLU is multiplied by (the up product's)."""

    def __init__(self, nodes, weight, bias, output, gate=None):
        self.nodes, self.weight, self.bias, self.output, self.gate = nodes, weight, bias, output, gate


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


def _activation(ctx, consumers, y):
    """The activation matmul_epilogue would fuse into the store of the product `y`:
    None, or (name, its nodes, its output)."""
    readers = consumers.get(y, [])
    if y in ctx.graph_outputs or not any(r.op_type in ACTIVATION_OPS for r in readers):
        return None
    found = match_activation(ctx, consumers, y, readers)
    return None if isinstance(found, str) else found


def _make(ctx, consumers, nodes, weight, bias, y):
    """The _Sibling of a product ending in `y`: None if an activation would fuse into its
    store, unless a SiLU whose one reader is a Mul (a SwiGLU gate; `matches` pairs it)."""
    found = _activation(ctx, consumers, y)
    if found is None:
        return _Sibling(nodes, weight, bias, y)
    act, _, out = found
    mul = only_consumer(ctx, consumers, out) if act == "silu" else None
    gate = other_input(mul, out) if is_op(mul, "Mul") and len(mul.input) == 2 else None
    return None if gate is None else _Sibling(nodes, weight, bias, y, gate)


def _paired(group):
    """The group without the gates whose SiLU is not multiplied by a plain sibling of the
    same width (the up product): those keep their SiLU in the GEMM's store."""
    plain = {s.output: s for s in group if s.gate is None}
    return [s for s in group if s.gate is None
            or (s.gate in plain and plain[s.gate].weight.shape[1] == s.weight.shape[1])]


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
        if form is None or len(shape) != 2:
            return None
        return _make(ctx, consumers, [node], form[0], form[1], y)
    w = ctx.constants.get(node.input[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    add = only_consumer(ctx, consumers, y)
    if is_op(add, "Add") and len(add.output) == 1:
        bias = _row_bias(ctx, add, y, w.shape[1], len(shape))
        if bias is not None:
            return _make(ctx, consumers, [node, add], w, bias, add.output[0])
    return _make(ctx, consumers, [node], w, None, y)


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
                group = _paired(group)
                if len(group) >= 2:
                    yield group

    def describe(self, group):
        return "sibling MatMuls", [n.name for s in group for n in s.nodes]

    def check(self, ctx, group):
        if not all(ctx.contains(n) for s in group for n in s.nodes):
            return "already rewritten"
        return None

    def rewrite(self, ctx, group):
        first = group[0].nodes[0]
        x, name = first.input[0], first.name
        weight = ctx.add_constant(name + "_siblings_w", np.concatenate([s.weight for s in group], axis=1))
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
