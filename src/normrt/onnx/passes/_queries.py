"""What the rewrite passes ask of a graph: one small vocabulary.

- ops and values: `is_op`, `is_normrt`, `other_input`, constants (`scalar`,
  `scalar_constant`, `channel_vector`), attributes (`node_attrs`);
- producers and readers over the context's live use-def index: `Graph` (prod,
  deep and root through identity Casts -- Cast to the type the value already has:
  exporters put them around statistics --, single readers), `only_consumer`;
- shapes: `is_static` (every dim a known int);
- refusing checks, each returning the reason or None: `dtype_reason` /
  `float_type_reason` (one kernel float type throughout), `private_reason` and
  `chain_nodes_reason` (no value a fusion removes may be read elsewhere or be a
  graph output), `present` (nodes not yet rewritten);
- rewriting helpers: `fused_name`, `in_graph_order`, `take_fused_entry`.

Every helper answers a question about the graph as it is now (passes re-ask in
`check`, after earlier rewrites of the same run). Statistics are read by
`_dataflow` (the recognizer) and `_stats` (AdaIN's and MVN's templates).
"""
import os

import ml_dtypes
import numpy as np
from onnx import TensorProto

from .._graph import NORMRT_DOMAIN, canonical_domain, decode_attributes

# The element types the normalization kernels read and write. Half-precision norms keep their
# constant parameters in float32 (`param_dtype`): the kernels take float32 scale/bias with half X.
HALF_DTYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
KERNEL_DTYPES = (TensorProto.FLOAT, TensorProto.DOUBLE) + HALF_DTYPES
# What the weight-folding passes (a BN or an affine into Conv/Gemm weights) take: folding into
# half weights would round the products to half once more than the model does
WIDE_DTYPES = (TensorProto.FLOAT, TensorProto.DOUBLE)
# What the float32 fused kernels (normrt MatMul, Attention, Elementwise: domain.py's
# half_native=False) take: float16/bfloat16 values are widened to float32 exactly and the result
# rounded once to their type (kernels.py, half_steps.py) -- the fused chain rounds once where the
# model's ops round after each op, so its result is the closer one to the exact value
PRODUCT_DTYPES = (TensorProto.FLOAT,) + HALF_DTYPES
_TYPE_NAMES = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64",
               TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}


def is_op(node, *op_types, domain=""):
    """Whether `node` is one of op_types of `domain` (the standard one by default)."""
    return node is not None and node.op_type in op_types and canonical_domain(node.domain) == domain


class _DistinctReaders:
    """{value name: distinct nodes reading it}, read through to the context's live index."""

    def __init__(self, ctx):
        self.ctx = ctx

    def get(self, name, default=None):
        readers = self.ctx.readers(name)
        return readers if readers else ([] if default is None else default)


class _Present:
    """`id(node) in g.ids`: whether the node is in the graph now."""

    def __init__(self, ctx):
        self.ctx = ctx

    def __contains__(self, node_id):
        return node_id in self.ctx._node_of


class Graph:
    """Producer/consumer queries over the context's live use-def index (O(1) to build)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.producer = ctx.producer()
        self.consumers = _DistinctReaders(ctx)
        self.outputs = set(ctx.graph_outputs)
        self.ids = _Present(ctx)

    def prod(self, name, *op_types):
        """The node producing `name` if it is one of op_types (standard domain), else None."""
        node = self.producer.get(name)
        return node if is_op(node, *op_types) else None

    def is_identity_cast(self, node):
        if not is_op(node, "Cast") or len(node.input) != 1:
            return False
        to = decode_attributes(node).get("to")
        t_in = self.ctx.elem_type(node.input[0])
        return t_in != 0 and to == t_in

    def root(self, name, casts=None):
        """`name` with identity Casts stripped going backwards; the Casts are appended to `casts`."""
        while True:
            node = self.producer.get(name)
            if node is None or not self.is_identity_cast(node):
                return name
            if casts is not None:
                casts.append(node)
            name = node.input[0]

    def deep(self, name, casts, *op_types):
        """The op_types node producing `name`, looking through identity Casts (added to casts)."""
        found = []
        node = self.prod(self.root(name, found), *op_types)
        if node is not None:
            casts.extend(found)
        return node

    def single_reader(self, name):
        """(the one node reading `name` and the identity Casts passed on the way), or (None, [])."""
        casts = []
        while True:
            readers = self.consumers.get(name, [])
            if len(readers) != 1 or name in self.outputs:
                return None, []
            node = readers[0]
            if not self.is_identity_cast(node):
                return node, casts
            casts.append(node)
            name = node.output[0]


def constant(ctx, name):
    return ctx.constants.get(name) if name else None


def is_static(shape, rank=None):
    """True when every dim of `shape` is a known int (and, given `rank`, there are that many)."""
    return shape is not None and (rank is None or len(shape) == rank) and all(isinstance(d, int) for d in shape)


def is_float(dtype):
    """Whether a numpy dtype is a floating type (bfloat16, ml_dtypes' numpy type, has kind 'V')."""
    return dtype.kind == "f" or dtype == ml_dtypes.bfloat16


def is_number(dtype):
    return dtype.kind in "iu" or is_float(dtype)


def scalar(ctx, name, max_rank):
    """The float value of a 1-element constant of rank <= max_rank (it broadcasts to nothing), or None."""
    v = constant(ctx, name)
    if v is None or v.size != 1 or v.ndim > max_rank or not is_number(v.dtype):
        return None
    return float(v.reshape(-1)[0])


def type_names(types):
    return "/".join(_TYPE_NAMES[t] for t in types)


def dtype_reason(ctx, names, allowed=KERNEL_DTYPES):
    """Why these values do not all share one kernel dtype (of `allowed`), or None."""
    types = {ctx.elem_type(n) for n in names}
    if 0 in types:
        unknown = [n for n in names if ctx.elem_type(n) == 0]
        return f"element type of {unknown[0]!r} is unknown"
    if len(types) > 1:
        return "values of mixed element types"
    (t,) = types
    if t not in allowed:
        return f"element type {TensorProto.DataType.Name(t)} (kernels take {type_names(allowed)})"
    return None


def chain_nodes_reason(g, inner, output, keep_outputs=()):
    """Why the chain `inner` (all but its output are middle values) can't be removed, or None.

    Every value a chain node writes, other than `output`, must be read only by
    chain nodes and be no graph output.
    """
    ids = {id(n) for n in inner}
    for node in inner:
        if id(node) not in g.ids:
            return f"node {node.name!r} already rewritten"
        for o in node.output:
            if not o or o == output or o in keep_outputs:
                continue
            if o in g.outputs:
                return f"middle value {o!r} is a graph output"
            for reader in g.consumers.get(o, []):
                if id(reader) not in ids:
                    return f"middle value {o!r} is also read by {reader.name!r} ({reader.op_type})"
    return None


def in_graph_order(ctx, nodes):
    """The distinct `nodes` in graph order."""
    return ctx.in_graph_order(nodes)


def fused_name(ctx, nodes, suffix):
    """A node name for the fused node: the matched nodes' common '/scope/' + suffix."""
    prefix = os.path.commonprefix([n.name for n in nodes])
    prefix = prefix[:prefix.rfind("/") + 1] if "/" in prefix else ""
    return ctx.new_name(prefix + suffix)


NP_FLOAT = {TensorProto.FLOAT: np.dtype(np.float32), TensorProto.DOUBLE: np.dtype(np.float64),
            TensorProto.FLOAT16: np.dtype(np.float16), TensorProto.BFLOAT16: np.dtype(ml_dtypes.bfloat16)}


def param_dtype(elem_type):
    """The numpy dtype a fused norm's constant parameters are written in for X of `elem_type`:
    X's own, float32 for half X (mixed-precision exports keep norm weights in float32, and the
    scale and bias an affine chain folds into are products no half value holds exactly)."""
    return np.dtype(np.float32) if elem_type in HALF_DTYPES else NP_FLOAT[elem_type]


def is_normrt(node, op_type):
    return is_op(node, op_type, domain=NORMRT_DOMAIN)


def present(ctx, nodes):
    """Whether every node is still in the graph (an earlier rewrite may have replaced it)."""
    return all(ctx.contains(n) for n in nodes)


def only_consumer(ctx, consumers, name):
    """The one node reading `name` if exactly one does and it is not a graph output, else None."""
    if name in ctx.graph_outputs:
        return None
    readers = consumers.get(name, [])
    if len(readers) != 1:
        return None
    return readers[0]


def private_reason(ctx, consumers, name, allowed):
    """Why the middle value `name` may not disappear: read by nodes outside `allowed`, or a graph output."""
    if name in ctx.graph_outputs:
        return f"middle value {name!r} is a graph output"
    ids = {id(n) for n in allowed}
    others = [n.name for n in consumers.get(name, []) if id(n) not in ids]
    if others:
        return f"middle value {name!r} is also read by {others}"
    return None


def other_input(node, name):
    """The input of a binary node that is not `name` (None if `name` is not exactly one of them)."""
    ins = list(node.input)
    if len(ins) != 2 or ins.count(name) != 1:
        return None
    return ins[1] if ins[0] == name else ins[0]


def float_type_reason(ctx, names, allowed=KERNEL_DTYPES):
    """None if every value has one element type of `allowed`; else why not."""
    types = set()
    for name in names:
        t = ctx.elem_type(name)
        if t == 0:
            return f"element type of {name!r} is unknown"
        if t not in allowed:
            return f"element type of {name!r} is not {type_names(allowed)}"
        types.add(t)
    if len(types) > 1:
        return f"values of mixed element types ({', '.join(type_names([t]) for t in sorted(types))})"
    return None


def scalar_constant(ctx, name, rank=None):
    """The value of a one-element constant that broadcasts without raising the rank, else None."""
    if not ctx.is_constant(name):
        return None
    v = ctx.constants[name]
    if v.size != 1 or not is_float(v.dtype):
        return None
    if v.ndim > (1 if rank is None else rank):
        return None
    return float(v.reshape(()))


def close_to(value, target, rel=1e-6):
    return value is not None and abs(value - target) <= rel * abs(target)


def constant_rel_tol(elem_type):
    """How far a constant of `elem_type` may be from the value it stands for (sqrt(2), 1/n):
    half a unit in the last place of a half type, 1e-6 for float32/float64."""
    return {TensorProto.FLOAT16: 2.0 ** -11, TensorProto.BFLOAT16: 2.0 ** -8}.get(elem_type, 1e-6)


def channel_vector(value, C, rank):
    """A constant operand of a binary op on a (N, C, ...) tensor of rank `rank` as its (C,) values.

    Accepted when it broadcasts over every axis but the channel axis 1 (its
    right-aligned shape is 1 everywhere except C or 1 on axis 1): (C, 1, 1) and
    (1, C, 1, 1) for rank 4, (C, 1) for rank 3, (C,) for rank 2, and one-element
    constants. Returns (vector or None, reason or None).
    """
    shape = tuple(value.shape)
    if len(shape) > rank:
        return None, f"constant of shape {shape} has a higher rank than the tensor ({rank})"
    if value.size == 1:
        return np.full(C, value.reshape(()), dtype=value.dtype), None
    offset = rank - len(shape)          # axis of shape[0]
    for i, d in enumerate(shape):
        axis = offset + i
        if axis == 1:
            if d != C:
                return None, f"constant of shape {shape} has {d} values on the channel axis (C = {C})"
        elif d != 1:
            return None, f"constant of shape {shape} varies along axis {axis} (not per channel)"
    return value.reshape(C).copy(), None


def node_attrs(node):
    try:
        return decode_attributes(node), None
    except ValueError as e:
        return None, f"attribute not constant: {e}"


def take_fused_entry(ctx, normrt_node_name):
    """Remove and return the report entry of an existing normrt node (a fusion absorbing it re-reports it)."""
    for i, e in enumerate(ctx.report.fused):
        if e.get("normrt_node") == normrt_node_name:
            return ctx.report.fused.pop(i)
    return None


# float32's largest value: Clip's default bounds before opset 11
FLT_MAX = float(np.finfo(np.float32).max)


def clip_bounds(ctx, node):
    """(lo, hi) of a Clip whose bounds are constant float scalars (None: no bound), or why not (a str).

    Opset < 11 has them as attributes (opset 6-10 default to -+FLT_MAX, read as no bound),
    later opsets as optional inputs. (activation_epilogue's ReLU6, lp_normalize's eps.)"""
    attrs, reason = node_attrs(node)
    if reason:
        return reason
    if ctx.opsets.get("", 0) < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        values = []
        for i in (1, 2):
            name = node.input[i] if len(node.input) > i else ""
            if not name:
                values.append(None)
                continue
            if not ctx.is_constant(name):
                return f"Clip {node.name!r}: bound {name!r} is not a constant"
            v = ctx.constants[name]
            if v.size != 1 or not is_float(v.dtype):
                return f"Clip {node.name!r}: bound {name!r} is not a float scalar"
            values.append(float(np.asarray(v).reshape(())))
        lo, hi = values
    lo = None if lo is None or lo <= -FLT_MAX else float(lo)
    hi = None if hi is None or hi >= FLT_MAX else float(hi)
    return lo, hi


def leaky_alpha(node):
    """A LeakyRelu's alpha, rounded to float32, when positive and finite (the form the kernels run
    as max(v, alpha v) / min(v, alpha v) with the op's exact values), else None (alpha 0: 0 * inf
    is NaN where the op gives +inf)."""
    attrs, reason = node_attrs(node)
    if reason:
        return None
    alpha = float(np.float32(attrs.get("alpha", 0.01)))
    return alpha if 0.0 < alpha < float("inf") else None
