"""Nodes that hand their input on unchanged -> gone; a Transpose of a Transpose -> one Transpose.

Once shape arithmetic is folded (constant_folding), exporters' generic code
leaves nodes that do nothing for the model's actual shapes: Swin pads its
feature maps to whole windows with a Pad whose pads are all 0, Slices cut
[0, dim), Reshapes reshape to the shape they already have. Each still costs a
step (a Pad copies the tensor):

    x ─► Pad(pads = 0) | Slice(whole axes) | Reshape(to x's shape) | Transpose(identity)
         | Expand(to x's shape) | Identity | Cast(to x's own type) | Mul(x, 1) | Div(x, 1)
         | Cast(to x's type) of a Cast of x to a type holding all of x's values
         | Resize(to x's shape, scale 1)
         | normrt::FakeQuant(g) of a value already on grid g (fake_quant_grid) ─► y ─► readers
         (diffusers' residual `/ output_scale_factor` of 1.0: x * 1 and x / 1 are bitwise x)
    ==>  x ─► readers

    x ─► Transpose(p1) ─► Transpose(p2) ─► y     ==>  x ─► Transpose(p1[p2]) ─► y
         (the first read only by the second)         (dropped by the rule above when the
                                                      composition is the identity)

A Cast to a wider type and straight back (float16 -> float -> float16) is the identity too.
Identity Casts go too: the pass runs after the norm recognizers, which absorb them
with the norm they surround; what is left (the TorchScript exporter's
Softmax -> Cast(float) -> Cast(float) before attention's second MatMul at opset
13) would only hide a pattern from the later passes.

Refused (not reported, the nodes then run as they are): y a graph output; a
reader carrying subgraphs (their inner names are not renamed); shapes or
parameters not known as constants.
"""
import numpy as np
from onnx import TensorProto, helper

from . import GraphPass
from ._queries import is_normrt, is_op, is_static, node_attrs
from .fake_quant_grid import on_own_grid
from .._graph import subgraphs


def _ints(ctx, name):
    v = ctx.constants.get(name) if name else None
    return None if v is None else [int(i) for i in np.asarray(v).reshape(-1)]


def _whole_slice(ctx, node, shape):
    starts, ends = _ints(ctx, node.input[1]), _ints(ctx, node.input[2])
    axes = _ints(ctx, node.input[3]) if len(node.input) > 3 and node.input[3] else list(range(len(starts or ())))
    steps = _ints(ctx, node.input[4]) if len(node.input) > 4 and node.input[4] else [1] * len(starts or ())
    if None in (starts, ends, axes, steps) or not (len(starts) == len(ends) == len(axes) == len(steps)):
        return False
    for s, e, a, st in zip(starts, ends, axes, steps):
        if not -len(shape) <= a < len(shape):
            return False
        d = shape[a]
        if st != 1 or (s if s >= 0 else s + d) > 0 or (e if e >= 0 else e + d) < d:
            return False
    return True


def _times_one(ctx, node):
    """The input a Mul by ones / Div by ones hands on bitwise unchanged (x * 1 and x / 1 are x in
    IEEE arithmetic, NaN, infinities and -0 included), or None. The ones must not broadcast x
    to a bigger shape, and the element type must stay."""
    if not is_op(node, "Mul", "Div") or len(node.input) != 2 or len(node.output) != 1:
        return None
    sides = [(0, 1), (1, 0)] if node.op_type == "Mul" else [(0, 1)]
    y = node.output[0]
    for xi, ci in sides:
        x, c = node.input[xi], node.input[ci]
        one = ctx.constants.get(c) if c else None
        if one is None or ctx.is_constant(x) or one.dtype.kind not in "fiu" or not np.all(one == 1):
            continue
        shape_x = ctx.shape(x)
        if is_static(shape_x) and shape_x == ctx.shape(y) and ctx.elem_type(x) == ctx.elem_type(y) != 0 \
                and one.ndim <= len(shape_x):
            return x
    return None


def passed_input(ctx, node):
    """The input `node` (one output) returns unchanged, or None."""
    if len(node.output) != 1 or not node.input or not node.input[0]:
        return None
    if is_op(node, "Mul", "Div"):
        return _times_one(ctx, node)
    if is_op(node, "Cast"):
        back = _round_trip(ctx, node)
        if back is not None:
            return back
    return node.input[0] if _hands_on_first(ctx, node) else None


# element types each type converts to exactly (every value representable): a Cast there and
# back is the identity (NaN, infinities and -0.0 included)
_EXACT_WIDENINGS = {
    TensorProto.FLOAT16: {TensorProto.FLOAT, TensorProto.DOUBLE},
    TensorProto.BFLOAT16: {TensorProto.FLOAT, TensorProto.DOUBLE},
    TensorProto.FLOAT: {TensorProto.DOUBLE},
    TensorProto.INT8: {TensorProto.INT16, TensorProto.INT32, TensorProto.INT64},
    TensorProto.INT16: {TensorProto.INT32, TensorProto.INT64},
    TensorProto.INT32: {TensorProto.INT64},
    TensorProto.UINT8: {TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT16,
                        TensorProto.UINT32, TensorProto.UINT64},
}


def _round_trip(ctx, node):
    """x for `Cast(to=T)(Cast(to=W)(x))` with x of type T and T -> W exact, else None: HF's
    `softmax(scores, dtype=float32).to(float16)` exported from a half model as Softmax in half,
    Cast(float), Cast(float16) - a round trip that hid the attention from attention_decomposed."""
    first = ctx.producer().get(node.input[0])
    if not is_op(first, "Cast") or not first.input or not first.input[0]:
        return None
    (a1, r1), (a2, r2) = node_attrs(first), node_attrs(node)
    x = first.input[0]
    t = ctx.elem_type(x)
    if r1 or r2 or not t or a2.get("to") != t or a1.get("to") not in _EXACT_WIDENINGS.get(t, ()):
        return None
    return x


def is_no_op(ctx, node):
    """Whether `node` (one output) returns one of its inputs unchanged."""
    return passed_input(ctx, node) is not None


def _hands_on_first(ctx, node):
    x, y = node.input[0], node.output[0]
    shape_x, shape_y = ctx.shape(x), ctx.shape(y)
    same_shape = is_static(shape_x) and shape_x == shape_y
    op = node.op_type
    if is_op(node, "Identity"):
        return True
    if is_normrt(node, "FakeQuant"):
        return on_own_grid(ctx, node)
    if is_op(node, "Cast"):
        attrs, reason = node_attrs(node)
        return reason is None and ctx.elem_type(x) != 0 and attrs.get("to") == ctx.elem_type(x)
    if is_op(node, "Pad"):
        attrs, reason = node_attrs(node)
        if reason:
            return False
        pads = attrs.get("pads") if ctx.opsets.get("", 1) < 11 else _ints(ctx, node.input[1] if len(node.input) > 1 else "")
        return pads is not None and all(p == 0 for p in pads)
    if is_op(node, "Slice") and len(node.input) >= 3 and ctx.opsets.get("", 1) >= 10:
        return is_static(shape_x) and _whole_slice(ctx, node, shape_x)
    if is_op(node, "Transpose"):
        attrs, reason = node_attrs(node)
        perm = (attrs or {}).get("perm")
        return reason is None and perm is not None and list(perm) == list(range(len(perm)))
    if op in ("Reshape", "Expand", "Squeeze", "Unsqueeze", "Flatten") and is_op(node, op):
        return same_shape and ctx.elem_type(x) == ctx.elem_type(y) != 0
    if is_op(node, "Resize"):
        return same_shape and _unit_resize(ctx, node, shape_x)
    return False


# coordinate transformations that map output index y to source coordinate y at scale 1
# (half_pixel: (y + 0.5) / 1 - 0.5 and the others are exact in floating point; not
# tf_half_pixel_for_nn, whose y + 0.5 a ceil would move, nor tf_crop_and_resize's roi)
_UNIT_CTM = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"}


def _unit_resize(ctx, node, shape):
    """A nearest/linear Resize (opset 11+) to x's own size at scale exactly 1 on every axis: each
    output element is its own source element (segformer's decode head resizes its 16x16 level to
    16x16). Scales of 1.01 still give x's size (int(16 * 1.01) = 16) but move the coordinates:
    not taken. A linear one passes infinities and NaN as they are, as onnxruntime does (it copies
    the input when every scale is 1), where a literal interpolation would weight the neighbour
    by 0 and make 0 * inf = NaN."""
    attrs, reason = node_attrs(node)
    if reason or ctx.opsets.get("", 1) < 11:
        return False
    mode = attrs.get("mode", "nearest")
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear") or ctm not in _UNIT_CTM or attrs.get("antialias", 0):
        return False
    axes = attrs.get("axes")
    axes = list(range(len(shape))) if axes is None else [a % len(shape) for a in axes]
    scales = ctx.constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = _ints(ctx, node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if sizes is not None:
        return sizes == [shape[a] for a in axes]
    return scales is not None and np.asarray(scales).size == len(axes) and bool(np.all(np.asarray(scales) == 1.0))


class NoOpViews(GraphPass):
    name = "no_op_views"
    report_refusals = False       # a refused node runs as it is

    def __init__(self, only=None):
        """`only`: the op types to drop (default every one above, and Transpose pairs composed).
        An early run drops the whole-axis Slices of padding helpers only (EnCodec's
        `padded[..., :end]` between a reflect Pad and its Conv): the norm recognizers' templates
        still see the other no-ops they match (a zero Pad before LRN's AveragePool)."""
        self.only = None if only is None else frozenset(only)

    def matches(self, ctx):
        for node in ctx.nodes:
            if self.only is not None and node.op_type not in self.only:
                continue
            x = passed_input(ctx, node)
            if x is not None:
                # (x decided now: a FakeQuant's grid is traced through producers this run may drop)
                yield ("drop", node, x)
            elif is_op(node, "Transpose") and len(node.output) == 1:
                first = ctx.producer().get(node.input[0]) if node.input else None
                if is_op(first, "Transpose") and len(ctx.readers(first.output[0])) == 1:
                    yield ("compose", first, node)

    @staticmethod
    def _nodes(m):
        return m[1:] if m[0] == "compose" else m[1:2]

    def describe(self, m):
        return m[1].op_type, [n.name for n in self._nodes(m)]

    def check(self, ctx, m):
        if not all(ctx.contains(n) for n in self._nodes(m)):
            return "already rewritten"
        if m[0] == "compose":
            if m[1].output[0] in ctx.graph_outputs:
                return "the first Transpose's output is a graph output"
            (a1, r1), (a2, r2) = node_attrs(m[1]), node_attrs(m[2])
            if r1 or r2 or a1.get("perm") is None or a2.get("perm") is None:
                return "a Transpose without a perm attribute (reverses axes of unknown rank)"
            return None
        node = m[1]
        if node.output[0] in ctx.graph_outputs:
            return "its output is a graph output"
        if any(any(True for _ in subgraphs(r)) for r in ctx.readers(node.output[0])):
            return "read inside a subgraph"
        return None

    def rewrite(self, ctx, m):
        """A compose rewrites at once; a drop is collected (see run): chains of no-ops
        then cost one renaming of their readers."""
        if m[0] == "compose":
            first, second = m[1], m[2]
            p1, p2 = node_attrs(first)[0]["perm"], node_attrs(second)[0]["perm"]
            new = helper.make_node("Transpose", [first.input[0]], list(second.output), name=second.name,
                                   perm=[int(p1[i]) for i in p2])
            ctx.replace_nodes([first, second], [new])
            return
        node, x = m[1], m[2]
        y = node.output[0]
        self._alias[y] = self._alias.get(x, x)     # graph order: x's own alias is already resolved
        gone = [node]
        first = ctx.producer().get(node.input[0])
        if x != node.input[0] and is_op(first, "Cast") and first.output[0] not in ctx.graph_outputs and \
                all(r is node for r in ctx.readers(first.output[0])):
            gone.append(first)    # a round trip's way out, read by nothing else: a dead reader of x
        ctx.replace_nodes(gone, [])

    def run(self, ctx):
        # a composed Transpose may be the identity, a dropped node may expose a Transpose pair: repeat
        total = 0
        for _ in range(8):
            self._alias = {}
            n = super().run(ctx)
            ctx.rename_reads(self._alias)
            total += n
            if not n:
                break
        return total
