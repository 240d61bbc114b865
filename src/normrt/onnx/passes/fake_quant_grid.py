"""Which values of a static QDQ model already sit on a quantization grid (for no_op_views).

onnxruntime's quantize_static puts a QuantizeLinear -> DequantizeLinear pair (a
normrt::FakeQuant after qdq_pairs) on the input and the output of nearly every op, also
of ops that only move values around, so the same grid is applied twice:

    x ─► FakeQuant(g) ─► a ─► Reshape ─► b ─► FakeQuant(g) ─► y ─► MatMul
                              (or Transpose, Pad, MaxPool, Relu, Slice, Concat ...)

Each value of `b` is a value of `a`, already on grid g, and FakeQuant is the identity on
its own grid (below), so the second FakeQuant hands `b` on unchanged: no_op_views drops it,
and the views and zero Pads between it and its neighbours become visible to the fusions
(a Pad -> FakeQuant -> Conv becomes Pad -> Conv, which pad_into_conv takes). A DistilBERT
layer has 12 FakeQuants, 8 of them after Reshapes and Transposes.

The identity, exactly: a grid value is v = k * s (k = q - zero_point, an integer with
|k| <= 65535 for the 8/16-bit types), rounded to float32. FakeQuant computes
round(v / s): v / s is k within a relative 2^-23 twice (|error| < 65535 * 2.4e-7 < 0.5),
so round gives k; k + zero_point is an exact integer inside [lo, hi], so the clamp keeps
it; (k + zp - zp) * s is v's own product, rounded the same way. A NaN stays NaN. No grid
value is -0.0 (k * s with k = 0 is +0.0), so the comparison-based ops below do not create
one.

Values on grid g (`grid_of`): a FakeQuant(g)'s output; the output of an op that only
copies, selects or reorders values of an input on g (views, Gather, Slice, Split, Tile,
Expand, Transpose, DepthToSpace/SpaceToDepth, MaxPool, a nearest Resize);
Relu of a value on g (0 is on the grid: k = 0, as lo <= zero_point <= hi); Concat, Max and Min
of values all on g, and a Where choosing between such values - constants among them count when
FakeQuant(g) leaves them unchanged (the 0 of attention's Where(IsNaN(p), 0, p));
a Pad of a value on g whose fill is on g (edge / reflect / wrap, or a constant fill that
FakeQuant(g) leaves unchanged).
"""
import numpy as np

from ._queries import is_normrt, is_op, node_attrs

# ops whose output values are values of their first input (any other inputs are indices,
# shapes or axes): the output is on the first input's grid
_COPIES_FIRST = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Gather",
                 "GatherElements", "GatherND", "Split", "Tile", "Expand", "DepthToSpace", "SpaceToDepth")
# ops whose output values are values of their inputs, all of which must be on one grid
_COPIES_ALL = ("Concat", "Max", "Min")
# walks back at most this many producers (a chain of views; grids are found near)
_MAX_DEPTH = 32


def grid(node):
    """(scale, zero_point, lo, hi) of a normrt::FakeQuant node, else None."""
    if not is_normrt(node, "FakeQuant"):
        return None
    attrs, reason = node_attrs(node)
    if reason or attrs.get("scale") is None or attrs.get("lo") is None or attrs.get("hi") is None:
        return None
    return (float(attrs["scale"]), float(attrs.get("zero_point", 0.0)), float(attrs["lo"]), float(attrs["hi"]))


def fake_quant(values, g):
    """float32 values through FakeQuant(g) (pyx/elementwise.pyx fake_quant's arithmetic)."""
    scale, zero, lo, hi = (np.float32(v) for v in g)
    v = np.asarray(values, np.float32)
    with np.errstate(all="ignore"):
        q = np.clip(np.rint(v / scale) + zero, lo, hi)
        return ((q - zero) * scale).astype(np.float32)


def _pad_keeps_grid(ctx, node, g):
    attrs, reason = node_attrs(node)
    if reason:
        return False
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode in ("edge", "reflect", "wrap"):
        return True
    if mode != "constant":
        return False
    if ctx.opsets.get("", 1) < 11:
        fill = np.float32(attrs.get("value", 0.0))
    elif len(node.input) > 2 and node.input[2]:
        value = ctx.constants.get(node.input[2])
        if value is None or value.size != 1:
            return False
        fill = np.float32(np.asarray(value).reshape(()))
    else:
        fill = np.float32(0.0)
    return bool(fake_quant(fill, g).view(np.uint32) == np.asarray(fill).view(np.uint32))


def _max_pool_copies(node):
    return is_op(node, "MaxPool") and node.output[0] and all(not o for o in node.output[1:])


def _nearest_resize(node):
    if not is_op(node, "Resize", "Upsample"):
        return False
    attrs, reason = node_attrs(node)
    mode = attrs.get("mode", b"nearest") if not reason else b""
    return (mode.decode() if isinstance(mode, bytes) else mode) == "nearest"


def grid_of(ctx, name, depth=0):
    """The grid (scale, zero_point, lo, hi) every element of value `name` is on, or None."""
    node = ctx.producer().get(name) if name else None
    if node is None or depth > _MAX_DEPTH:
        return None
    own = grid(node)
    if own is not None:
        return own
    if not node.input or not node.input[0]:
        return None
    first = node.input[0]
    if any(is_op(node, op) for op in _COPIES_FIRST) or _max_pool_copies(node) or _nearest_resize(node):
        if is_op(node, "MaxPool") and name != node.output[0]:
            return None           # the indices output
        return grid_of(ctx, first, depth + 1)
    if is_op(node, "Relu"):
        g = grid_of(ctx, first, depth + 1)
        return g if g is not None and g[2] <= g[1] <= g[3] else None
    if is_op(node, "Pad"):
        g = grid_of(ctx, first, depth + 1)
        return g if g is not None and _pad_keeps_grid(ctx, node, g) else None
    if any(is_op(node, op) for op in _COPIES_ALL):
        return _common_grid(ctx, [i for i in node.input if i], depth)
    if is_op(node, "Where") and len(node.input) == 3:
        return _common_grid(ctx, list(node.input[1:]), depth)
    return None


def _common_grid(ctx, names, depth):
    """The grid all of `names` are on: the non-constant ones' one grid, the constants among them
    fixed points of it (Where(IsNaN(p), 0, p): the 0 is on every grid), else None."""
    grids = {grid_of(ctx, n, depth + 1) for n in names if not ctx.is_constant(n)}
    if len(grids) != 1 or None in grids:
        return None
    g = grids.pop()
    for n in names:
        if ctx.is_constant(n):
            c = ctx.constants.get(n)
            if c is None or c.dtype != np.float32 or not np.array_equal(
                    fake_quant(c, g).view(np.uint32), np.asarray(c, np.float32).view(np.uint32)):
                return None
    return g


def on_own_grid(ctx, node):
    """Whether `node` is a normrt::FakeQuant whose input is already on its grid (it then hands
    its input on unchanged, bitwise: see the module docstring)."""
    g = grid(node)
    if g is None or len(node.input) != 1 or len(node.output) != 1:
        return False
    # the argument above needs |k| <= 65535 and every k * s a normal float32
    exact = 2.0 ** -100 <= g[0] <= 2.0 ** 100 and max(abs(g[2] - g[1]), abs(g[3] - g[1])) <= 65535
    return exact and grid_of(ctx, node.input[0]) == g
