"""Checks on a model's tensors and subgraphs that do not depend on onnx.checker.

onnx.checker cannot check a model over 2 GB in memory, and normrt does not
give it the weights' data at all (it would serialize them twice, see
normrt.onnx.initializers), so these run on every load, before any tensor is
decoded or any external file read:

* every tensor (initializers, sparse initializers, tensor attributes, in
  subgraphs and local functions too): dims >= 0, a product of dims that fits
  in int64, at most `Limits.max_tensor_bytes` bytes, and exactly as much data
  as the dims declare (raw_data, the typed field, or the external file's
  bytes from its offset);
* subgraphs (If/Loop/Scan bodies) nested at most `Limits.max_subgraph_depth` deep;
* node attributes that describe an initializer agree with it (Conv's
  kernel_shape and group, the hidden_size of LSTM/GRU/RNN, GroupNormalization's
  num_groups).

A failure raises normrt.ModelError naming the tensor and, where there is one, the node.
"""
import os
from dataclasses import dataclass, field

import onnx
from onnx import AttributeProto, TensorProto

from ..errors import ModelError
from ._graph import node_label, opset_versions


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        parsed = int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
    if parsed < 1:
        raise ValueError(f"environment variable {name} must be >= 1, got {parsed}")
    return parsed


DEFAULT_MAX_TENSOR_BYTES = 1 << 34       # 16 GiB: larger than any single weight of today's big models
DEFAULT_MAX_SUBGRAPH_DEPTH = 32


@dataclass(frozen=True)
class Limits:
    """What a model may declare before normrt refuses it (normrt.ModelError).

    max_tensor_bytes: the largest tensor a model may declare (an initializer,
      a sparse initializer's dense form, a tensor attribute such as a Constant's value);
      default 16 GiB, or the environment variable NORMRT_MAX_TENSOR_BYTES.
    max_subgraph_depth: how deep If/Loop/Scan bodies may nest (the main graph is depth 0);
      default 32, or NORMRT_MAX_SUBGRAPH_DEPTH.
    """
    max_tensor_bytes: int = field(default_factory=lambda: _env_int("NORMRT_MAX_TENSOR_BYTES",
                                                                   DEFAULT_MAX_TENSOR_BYTES))
    max_subgraph_depth: int = field(default_factory=lambda: _env_int("NORMRT_MAX_SUBGRAPH_DEPTH",
                                                                     DEFAULT_MAX_SUBGRAPH_DEPTH))

    def __post_init__(self):
        for name in ("max_tensor_bytes", "max_subgraph_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")


INT64_MAX = 2**63 - 1

# Bits per element of the types stored packed (several elements per byte).
_PACKED_BITS = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.FLOAT4E2M1: 4}
for _name in ("INT2", "UINT2"):
    if hasattr(TensorProto, _name):
        _PACKED_BITS[getattr(TensorProto, _name)] = 2


def _bits(data_type):
    """Bits per element, or None for a type whose storage size is not fixed here (string, unknown)."""
    if data_type in _PACKED_BITS:
        return _PACKED_BITS[data_type]
    if data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except (KeyError, ValueError, TypeError):
        return None
    if dtype.kind == "O":
        return None
    return dtype.itemsize * 8


def _known_type(data_type):
    try:
        onnx.helper.tensor_dtype_to_np_dtype(data_type)
        return True
    except (KeyError, ValueError, TypeError):
        return False


def _type_name(data_type):
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return str(data_type)


_COUNT_FIELD = {   # typed field -> values per element (complex types hold two)
    TensorProto.FLOAT: ("float_data", 1), TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1), TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1), TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1), TensorProto.STRING: ("string_data", 1),
}


def element_count(dims, what):
    """Product of `dims`, a ModelError for a negative dim or a product past int64."""
    n = 1
    for d in dims:
        d = int(d)
        if d < 0:
            raise ModelError(f"{what} has a negative dimension in dims {list(dims)}")
        n *= d
        if n > INT64_MAX:
            raise ModelError(f"{what}: the product of dims {list(dims)} overflows int64")
    return n


def _typed_values(tensor):
    """(field name, number of values) of the typed data field in use, or (None, 0)."""
    name = _COUNT_FIELD.get(tensor.data_type, ("int32_data", 1))[0]
    count = len(getattr(tensor, name))
    return name, count


# Reading raw_data copies it (protobuf has no view of its bytes; ByteSize() serializes the message):
# a top-level initializer this big has its length checked when initializers.detach reads it.
READ_LATER_MIN_BYTES = 1 << 20


def check_tensor(tensor, what, limits, base_dir=None, read_later=False):
    """One TensorProto: dims, size limit and data length (see the module docstring).

    `read_later`: a top-level initializer, whose raw_data length initializers.detach
    checks as it reads the bytes (for big ones; see READ_LATER_MIN_BYTES)."""
    what = f"{what} {tensor.name!r}" if tensor.name else what
    if not _known_type(tensor.data_type):
        raise ModelError(f"{what} has no known data type (data_type {tensor.data_type})")
    n = element_count(tensor.dims, what)
    bits = _bits(tensor.data_type)
    if bits is not None:
        nbytes = (n * bits + 7) // 8
        if nbytes > limits.max_tensor_bytes:
            raise ModelError(f"{what} declares {nbytes} bytes ({_type_name(tensor.data_type)} dims "
                             f"{list(tensor.dims)}), over the limit of {limits.max_tensor_bytes} bytes "
                             f"(normrt.Limits.max_tensor_bytes / NORMRT_MAX_TENSOR_BYTES)")
    if tensor.data_location == TensorProto.EXTERNAL:
        _check_external(tensor, what, n, bits, base_dir)
        return
    if tensor.HasField("raw_data"):
        if bits is None:
            raise ModelError(f"{what}: raw_data cannot hold {_type_name(tensor.data_type)} values")
        expected = (n * bits + 7) // 8
        if read_later and expected > READ_LATER_MIN_BYTES:
            return      # checked where its bytes are read anyway (initializers.detach): no extra copy
        got = len(tensor.raw_data)
        if got != expected:
            raise ModelError(f"{what}: raw_data holds {got} bytes, but dims {list(tensor.dims)} of "
                             f"{_type_name(tensor.data_type)} need {expected}")
        return
    field_name, count = _typed_values(tensor)
    per = _COUNT_FIELD.get(tensor.data_type, ("int32_data", 1))[1]
    if tensor.data_type in _PACKED_BITS:
        expected = (n * _PACKED_BITS[tensor.data_type] + 7) // 8
    else:
        expected = n * per
    if count != expected:
        raise ModelError(f"{what}: {field_name} holds {count} values, but dims {list(tensor.dims)} of "
                         f"{_type_name(tensor.data_type)} need {expected}")


def _external_info(tensor):
    info = {e.key: e.value for e in tensor.external_data}
    out = {"location": info.get("location", "")}
    for key in ("offset", "length"):
        if key in info:
            try:
                out[key] = int(info[key])
            except ValueError:
                raise ModelError(f"external data {key} {info[key]!r} is not an integer") from None
            if out[key] < 0:
                raise ModelError(f"external data {key} {out[key]} is negative")
    return out


def _check_external(tensor, what, n, bits, base_dir):
    """Declared length and the file's size cover the tensor (path safety is onnx's load check)."""
    try:
        info = _external_info(tensor)
    except ModelError as e:
        raise ModelError(f"{what}: {e}") from None
    if bits is None:
        raise ModelError(f"{what}: external data cannot hold {_type_name(tensor.data_type)} values")
    expected = (n * bits + 7) // 8
    if "length" in info and info["length"] != expected:
        raise ModelError(f"{what}: its external data length is {info['length']} bytes, but dims "
                         f"{list(tensor.dims)} of {_type_name(tensor.data_type)} need {expected}")
    if base_dir is None or not info["location"]:
        return      # the loader refuses it (no directory to read from / no location)
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, info["location"]))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        return      # outside the model's folder, or missing: onnx's loader refuses it with its message
    available = os.path.getsize(path) - info.get("offset", 0)
    if available < expected:
        raise ModelError(f"{what}: external file {info['location']!r} holds {max(available, 0)} bytes "
                         f"from offset {info.get('offset', 0)}, but dims {list(tensor.dims)} of "
                         f"{_type_name(tensor.data_type)} need {expected}")


def check_sparse(sp, what, limits, base_dir=None):
    """A SparseTensorProto: its values and indices, and its dense form under the size limit."""
    name = sp.values.name or "<unnamed>"
    check_tensor(sp.values, f"{what} (values)", limits, base_dir)
    check_tensor(sp.indices, f"{what} {name!r} (indices)", limits, base_dir)
    n = element_count(sp.dims, f"{what} {name!r}")
    bits = _bits(sp.values.data_type) or 8
    nbytes = (n * bits + 7) // 8
    if nbytes > limits.max_tensor_bytes:
        raise ModelError(f"{what} {name!r}: its dense form (dims {list(sp.dims)}) needs {nbytes} bytes, over "
                         f"the limit of {limits.max_tensor_bytes} bytes (normrt.Limits.max_tensor_bytes)")


def _attribute_tensors(node):
    for a in node.attribute:
        if a.type == AttributeProto.TENSOR:
            yield a.name, a.t
        elif a.type == AttributeProto.TENSORS:
            for t in a.tensors:
                yield a.name, t
        elif a.type == AttributeProto.SPARSE_TENSOR:
            yield a.name, a.sparse_tensor
        elif a.type == AttributeProto.SPARSE_TENSORS:
            for t in a.sparse_tensors:
                yield a.name, t


def _check_nodes(nodes, where, limits, base_dir, depth):
    for node in nodes:
        for attr_name, t in _attribute_tensors(node):
            what = f"attribute {attr_name!r} of node {node_label(node)}{where}"
            if isinstance(t, onnx.SparseTensorProto):
                check_sparse(t, what, limits, base_dir)
            else:
                check_tensor(t, what, limits, base_dir)
        for a in node.attribute:
            graphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS else []
            for g in graphs:
                if depth + 1 > limits.max_subgraph_depth:
                    raise ModelError(
                        f"node {node_label(node)}{where}: subgraph {a.name!r} nests {depth + 1} deep, over the "
                        f"limit of {limits.max_subgraph_depth} (normrt.Limits.max_subgraph_depth / "
                        f"NORMRT_MAX_SUBGRAPH_DEPTH)")
                _check_graph(g, limits, base_dir, depth + 1)


def _check_graph(graph, limits, base_dir, depth):
    where = "" if depth == 0 else f" (in subgraph {graph.name!r})"
    for t in graph.initializer:
        check_tensor(t, f"initializer{where}", limits, base_dir, read_later=depth == 0)
    for sp in graph.sparse_initializer:
        check_sparse(sp, f"sparse initializer{where}", limits, base_dir)
    _check_nodes(graph.node, where, limits, base_dir, depth)


def check_model_data(proto, limits, base_dir=None):
    """Tensors and subgraph depth of a whole model (graph and local functions); ModelError on the first problem."""
    _check_graph(proto.graph, limits, base_dir, 0)
    for f in proto.functions:
        _check_nodes(f.node, f" (in function {f.name!r})", limits, base_dir, 0)


# ---- node attributes against the initializers they describe ---------------------------------

_RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _dims(initializers, node, i):
    if i < len(node.input) and node.input[i] in initializers:
        return [int(d) for d in initializers[node.input[i]].dims]
    return None


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _disagree(node, attr, value, tensor, dims, expected):
    return ModelError(f"node {node_label(node)}: attribute {attr}={value!r} disagrees with its initializer "
                      f"{tensor!r} of shape {dims} ({expected})")


# Attribute values the ONNX spec rules out and onnx's own C++ shape inference does not check
# (it reads out of bounds on them: found by fuzzing, tests/data/fuzz/): (op, attribute) -> minimum.
_ATTRIBUTE_MINIMUM = {("GatherND", "batch_dims"): 0}


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _all_nodes(g)


# (op, attribute) that must equal the node's number of outputs (Split-18's num_outputs against
# 3 outputs aborted onnx's shape inference: an out-of-range std::vector index).
_ATTRIBUTE_IS_OUTPUT_COUNT = {("Split", "num_outputs")}


def check_attribute_ranges(proto):
    """Attribute values outside what the spec allows, which onnx's shape inference would trip on."""
    for node in _all_nodes(proto.graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        for a in node.attribute:
            low = _ATTRIBUTE_MINIMUM.get((node.op_type, a.name))
            if low is not None and a.type == AttributeProto.INT and a.i < low:
                raise ModelError(f"node {node_label(node)}: attribute {a.name}={a.i} must be >= {low}")
            if (node.op_type, a.name) in _ATTRIBUTE_IS_OUTPUT_COUNT and a.type == AttributeProto.INT \
                    and a.i != len(node.output):
                raise ModelError(f"node {node_label(node)}: attribute {a.name}={a.i} must equal its number of "
                                 f"outputs ({len(node.output)})")


def check_attributes(proto):
    """Attributes that describe an initializer (its shape, its channel grouping) agree with it,
    and attributes within the ranges onnx's shape inference relies on."""
    check_attribute_ranges(proto)
    opset = opset_versions(proto).get("", 0)
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        op = node.op_type
        if op in ("Conv", "ConvTranspose"):
            w = _dims(inits, node, 1)
            if w is None:
                continue
            if len(w) < 3:
                raise ModelError(f"node {node_label(node)}: weight {node.input[1]!r} has shape {w}; "
                                 f"{op} needs (M, C/group, *kernel)")
            ks = _attr(node, "kernel_shape")
            if ks is not None and list(ks) != w[2:]:
                raise _disagree(node, "kernel_shape", list(ks), node.input[1], w, "expected its dims[2:]")
            group = _attr(node, "group", 1)
            if group < 1:
                raise ModelError(f"node {node_label(node)}: attribute group={group} must be >= 1")
            if op == "Conv" and w[0] % group:
                raise _disagree(node, "group", group, node.input[1], w,
                                "its output channels dims[0] must be a multiple of group")
            if op == "ConvTranspose" and w[0] % group:
                raise _disagree(node, "group", group, node.input[1], w,
                                "its input channels dims[0] must be a multiple of group")
        elif op in _RNN_GATES:
            hidden = _attr(node, "hidden_size")
            direction = _attr(node, "direction", b"forward")
            directions = 2 if (direction.decode() if isinstance(direction, bytes) else direction) == "bidirectional" else 1
            gates = _RNN_GATES[op]
            for i, label in ((1, "W"), (2, "R")):
                d = _dims(inits, node, i)
                if d is None:
                    continue
                if len(d) != 3 or d[0] != directions:
                    raise ModelError(f"node {node_label(node)}: {label} {node.input[i]!r} has shape {d}; expected "
                                     f"({directions}, {gates}*hidden_size, ...) for direction {direction!r}")
                if hidden is not None and d[1] != gates * hidden:
                    raise _disagree(node, "hidden_size", hidden, node.input[i], d,
                                    f"dims[1] must be {gates} * hidden_size")
                if label == "R" and d[2] != d[1] // gates:
                    raise ModelError(f"node {node_label(node)}: R {node.input[i]!r} has shape {d}; "
                                     f"dims[2] must be dims[1] / {gates}")
        elif op == "GroupNormalization":
            groups = _attr(node, "num_groups")
            if groups is None:
                continue
            if groups < 1:
                raise ModelError(f"node {node_label(node)}: attribute num_groups={groups} must be >= 1")
            for i in (1, 2):
                d = _dims(inits, node, i)
                if d is None:
                    continue
                if opset < 21:
                    if d != [groups]:
                        raise _disagree(node, "num_groups", groups, node.input[i], d,
                                        "GroupNormalization-18 takes one scale/bias per group")
                elif len(d) != 1 or d[0] % groups:
                    raise _disagree(node, "num_groups", groups, node.input[i], d,
                                    "one scale/bias per channel, channels a multiple of num_groups")
