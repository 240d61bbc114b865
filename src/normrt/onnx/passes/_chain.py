"""Chain queries shared by the pattern fusions: producer/reader lookups over the
context's live use-def index, identity Casts (Cast to the type the value already
has: exporters put them around statistics), element types, and the privacy of a
matched chain's middle values (no value the fusion removes may be read elsewhere).
"""
import os

import numpy as np
from onnx import TensorProto

from .._graph import canonical_domain, decode_attributes
from ._match import other_input  # noqa: F401 - re-exported for the passes using _chain

KERNEL_DTYPES = (TensorProto.FLOAT, TensorProto.DOUBLE)


def is_op(node, *op_types):
    return node is not None and canonical_domain(node.domain) == "" and node.op_type in op_types


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


def scalar(ctx, name, max_rank):
    """The float value of a 1-element constant of rank <= max_rank (it broadcasts to nothing), or None."""
    v = constant(ctx, name)
    if v is None or v.size != 1 or v.ndim > max_rank or v.dtype.kind not in "fiu":
        return None
    return float(v.reshape(-1)[0])


def dtype_reason(ctx, names):
    """Why these values do not all share one kernel dtype (float32/float64), or None."""
    types = {ctx.elem_type(n) for n in names}
    if 0 in types:
        unknown = [n for n in names if ctx.elem_type(n) == 0]
        return f"element type of {unknown[0]!r} is unknown"
    if len(types) > 1:
        return "values of mixed element types"
    (t,) = types
    if t not in KERNEL_DTYPES:
        return f"element type {TensorProto.DataType.Name(t)} (kernels take float32/float64)"
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


