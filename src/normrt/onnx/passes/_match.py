"""Small graph-matching helpers shared by the pattern fusions (no rewriting here).

Every helper answers a yes/no question about the graph as it is now (the
passes re-run them in `check`, after earlier rewrites of the same run).
"""
import numpy as np
from onnx import TensorProto

from .._graph import NORMRT_DOMAIN, canonical_domain, decode_attributes

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE)
NP_FLOAT = {TensorProto.FLOAT: np.dtype(np.float32), TensorProto.DOUBLE: np.dtype(np.float64)}


def is_op(node, op_type, domain=""):
    return node is not None and node.op_type == op_type and canonical_domain(node.domain) == domain


def is_normrt(node, op_type):
    return is_op(node, op_type, NORMRT_DOMAIN)


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


def float_type_reason(ctx, names):
    """None if every value is float32, or every value float64; else why not."""
    types = set()
    for name in names:
        t = ctx.elem_type(name)
        if t == 0:
            return f"element type of {name!r} is unknown"
        if t not in FLOAT_TYPES:
            return f"element type of {name!r} is not float32/float64"
        types.add(t)
    if len(types) > 1:
        return "values of mixed element types (float32 and float64)"
    return None


def scalar_constant(ctx, name, rank=None):
    """The value of a one-element constant that broadcasts without raising the rank, else None."""
    if not ctx.is_constant(name):
        return None
    v = ctx.constants[name]
    if v.size != 1 or v.dtype.kind != "f":
        return None
    if v.ndim > (1 if rank is None else rank):
        return None
    return float(v.reshape(()))


def close_to(value, target, rel=1e-6):
    return value is not None and abs(value - target) <= rel * abs(target)


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
