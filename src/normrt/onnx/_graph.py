"""Small helpers over ONNX protos shared by the loader, passes, plan and executor."""
import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

NORMRT_DOMAIN = "normrt"
NORMRT_OPSET = 1


def canonical_domain(domain):
    """'' and 'ai.onnx' name the same (standard) domain."""
    return "" if domain in ("", "ai.onnx") else domain


def opset_versions(model):
    """{domain: version} of the model's opset imports ('' for the standard domain)."""
    return {canonical_domain(o.domain): o.version for o in model.opset_import}


def node_label(node):
    """How error messages and reports name a node."""
    name = node.name or "<unnamed>"
    dom = canonical_domain(node.domain)
    op = f"{dom}::{node.op_type}" if dom else node.op_type
    return f"{name!r} ({op})"


def decode_attribute(attr):
    """An AttributeProto as a plain Python value (tensors as numpy arrays, strings as str)."""
    if attr.ref_attr_name:
        raise ValueError(f"attribute {attr.name!r} refers to a function attribute")
    t = attr.type
    if t == AttributeProto.TENSOR:
        return numpy_helper.to_array(attr.t)
    if t == AttributeProto.TENSORS:
        return [numpy_helper.to_array(x) for x in attr.tensors]
    if t == AttributeProto.STRING:
        return attr.s.decode("utf-8", errors="replace")
    if t == AttributeProto.STRINGS:
        return [s.decode("utf-8", errors="replace") for s in attr.strings]
    if t == AttributeProto.INTS:
        return [int(v) for v in attr.ints]
    if t == AttributeProto.FLOATS:
        return [float(v) for v in attr.floats]
    return helper.get_attribute_value(attr)


def decode_attributes(node):
    return {a.name: decode_attribute(a) for a in node.attribute}


def subgraphs(node):
    """The GraphProtos a node carries as attributes (If/Loop/Scan bodies)."""
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            yield a.g
        elif a.type == AttributeProto.GRAPHS:
            yield from a.graphs


def implicit_inputs(node):
    """Outer-scope names a node's subgraphs read (sorted, for determinism)."""
    found = set()
    for g in subgraphs(node):
        found |= _graph_free_names(g)
    return sorted(found)


def all_nodes(graph):
    """graph's nodes and its subgraphs' (If branches, Loop / Scan bodies), depth first."""
    for node in graph.node:
        yield node
        for g in subgraphs(node):
            yield from all_nodes(g)


def free_names(graph):
    """The outer-scope names subgraph `graph` reads (a set)."""
    return _graph_free_names(graph)


def _graph_free_names(graph):
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    free = set()
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                free.add(name)
        for name in implicit_inputs(node):
            if name not in defined:
                free.add(name)
        defined.update(o for o in node.output if o)
    for o in graph.output:
        if o.name not in defined:
            free.add(o.name)
    return free


def node_reads(node):
    """Every value name a node reads: explicit inputs (non-empty) then implicit ones."""
    names = [n for n in node.input if n]
    names += [n for n in implicit_inputs(node) if n not in names]
    return names


TENSOR_TYPE_NAMES = {
    v: k.lower() for k, v in onnx.TensorProto.DataType.items() if k != "UNDEFINED"
}


def type_string(tp):
    """onnxruntime-style type string of a TypeProto: 'tensor(float)', 'seq(tensor(int64))', ..."""
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        return f"tensor({TENSOR_TYPE_NAMES.get(tp.tensor_type.elem_type, 'undefined')})"
    if which == "sparse_tensor_type":
        return f"sparse_tensor({TENSOR_TYPE_NAMES.get(tp.sparse_tensor_type.elem_type, 'undefined')})"
    if which == "sequence_type":
        return f"seq({type_string(tp.sequence_type.elem_type)})"
    if which == "optional_type":
        return f"optional({type_string(tp.optional_type.elem_type)})"
    if which == "map_type":
        key = TENSOR_TYPE_NAMES.get(tp.map_type.key_type, "undefined")
        return f"map({key},{type_string(tp.map_type.value_type)})"
    return "unknown"


def shape_list(tp):
    """Dims of a tensor TypeProto: ints, dim_param strings, None for unknown; [] if no shape."""
    if tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.HasField("shape"):
        return []
    dims = []
    for d in tp.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def np_dtype(elem_type):
    """numpy dtype for a TensorProto elem_type, or None if numpy has none."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None


class NameGen:
    """Fresh value/node names that collide with nothing in the graph."""

    def __init__(self, graph):
        self.used = set()
        self._collect(graph)
        self.counter = 0

    def _collect(self, graph):
        self.used.update(i.name for i in graph.input)
        self.used.update(o.name for o in graph.output)
        self.used.update(t.name for t in graph.initializer)
        for node in graph.node:
            self.used.add(node.name)
            self.used.update(node.input)
            self.used.update(node.output)
            for g in subgraphs(node):
                self._collect(g)

    def __call__(self, base):
        base = base or "v"
        name = base
        while name in self.used:
            self.counter += 1
            name = f"{base}__{self.counter}"
        self.used.add(name)
        return name


def name_unnamed_nodes(graph):
    """Give every node of the graph a unique name (errors and reports refer to nodes by name)."""
    gen = NameGen(graph)
    seen = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = gen(f"{node.op_type}_{i}")
        seen.add(node.name)
