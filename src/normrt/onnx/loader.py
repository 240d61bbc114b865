"""Model loading: a path, bytes or ModelProto -> a checked ModelProto of our own.

    path ──onnx.load(base dir of path)──┐
    bytes ──ModelProto.ParseFromString──┼─► model_checks (tensors' dims, data lengths, size and
    ModelProto ──copy───────────────────┘   nesting limits) ─► external data ─► structure (plan:
        cycles, dangling inputs) ─► attributes vs initializers ─► detach (weights -> arrays,
        the parsed proto freed) ─► onnx.checker (without the weights' data)

`load_detached` returns the stub proto and the arrays (what InferenceSession
keeps), `load_model` a whole ModelProto. Everything that makes the model
unusable raises normrt.ModelError saying what is wrong (and, where there is
one, which tensor or node).
"""
import os

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..errors import ModelError
from ._graph import name_unnamed_nodes, subgraphs
from .initializers import attach, big_initializer_names, detach, without_initializers
from .model_checks import Limits, check_attributes, check_model_data
from .plan import topological_order


def _read(model):
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy, None
    if isinstance(model, (bytes, bytearray, memoryview)):
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(bytes(model))
        except (DecodeError, ValueError, RuntimeError) as e:
            raise ModelError(f"bytes are not a valid ONNX model (truncated or not ONNX): {e}") from None
        return proto, None
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise ModelError(f"model file not found: {path!r}")
        if os.path.isdir(path):
            raise ModelError(f"model path is a directory, not an ONNX file: {path!r}")
        try:
            proto = onnx.load(path, load_external_data=False)
        except (DecodeError, ValueError, RuntimeError, OSError) as e:
            raise ModelError(f"{path!r} is not a valid ONNX model (truncated or not ONNX): {e}") from None
        return proto, os.path.dirname(os.path.abspath(path))
    raise TypeError(f"model must be a path, bytes or onnx.ModelProto, got {type(model).__name__}")


def _load_external(proto, base_dir, what):
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data
    if not any(uses_external_data(t) for t in _all_tensors(proto)):
        return
    if base_dir is None:
        raise ModelError(f"{what} references external data files; load it from its path instead")
    try:
        load_external_data_for_model(proto, base_dir)
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise ModelError(f"cannot read the external data of {what} (base directory {base_dir!r}): {e}") from None


def _all_tensors(proto):
    from onnx.external_data_helper import _get_all_tensors
    return _get_all_tensors(proto)


def _graphs(graph):
    yield graph
    for node in graph.node:
        for g in subgraphs(node):
            yield from _graphs(g)


def _sparse_to_dense(sp):
    """The dense initializer of a (checked: model_checks.check_sparse) SparseTensorProto."""
    name = sp.values.name
    values = numpy_helper.to_array(sp.values).reshape(-1)
    indices = numpy_helper.to_array(sp.indices)
    dims = tuple(int(d) for d in sp.dims)
    size = int(np.prod(dims)) if dims else 1
    if indices.dtype.kind not in "iu":
        raise ModelError(f"sparse initializer {name!r}: indices must be integers, got {indices.dtype}")
    indices = indices.astype(np.int64)
    flat_ok = indices.ndim == 1 and indices.shape[0] == values.shape[0]
    coord_ok = indices.ndim == 2 and indices.shape == (values.shape[0], len(dims))
    if not (flat_ok or coord_ok):
        raise ModelError(f"sparse initializer {name!r}: indices of shape {list(indices.shape)} do not match "
                         f"{values.shape[0]} values of a tensor of dims {list(dims)} "
                         f"(expected [{values.shape[0]}] or [{values.shape[0]}, {len(dims)}])")
    bound = np.array(dims if coord_ok else [size], np.int64)
    if indices.size and (np.any(indices < 0) or np.any(indices >= bound)):
        raise ModelError(f"sparse initializer {name!r}: an index is outside its dims {list(dims)}")
    dense = np.zeros(size, dtype=values.dtype)
    if flat_ok:
        dense[indices] = values
    else:
        dense = dense.reshape(dims)
        dense[tuple(indices.T)] = values
    return numpy_helper.from_array(dense.reshape(dims), name)


def _normalize(proto):
    """Canonical form the rest of normrt relies on (names, dense initializers, '' domain)."""
    for graph in _graphs(proto.graph):
        for node in graph.node:
            if node.domain == "ai.onnx":
                node.domain = ""
        if len(graph.sparse_initializer):
            dense = [_sparse_to_dense(sp) for sp in graph.sparse_initializer]
            del graph.sparse_initializer[:]
            graph.initializer.extend(dense)
    name_unnamed_nodes(proto.graph)


def check_structure(proto):
    """ModelError for a cycle or a dangling input; puts the nodes in topological order."""
    graph = proto.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    available |= {t.values.name for t in graph.sparse_initializer}
    nodes, _ = topological_order(list(graph.node), available, [o.name for o in graph.output])
    if [id(n) for n in nodes] != [id(n) for n in graph.node]:
        ordered = [type(n)() for n in nodes]
        for new, old in zip(ordered, nodes):
            new.CopyFrom(old)
        del graph.node[:]
        graph.node.extend(ordered)


def _mask_deprecated(proto):
    """A copy whose nodes of deprecated standard ops (e.g. GroupNormalization-18) are renamed into a
    private domain, so onnx.checker checks everything else; None if there are none."""
    version = {o.domain or "": o.version for o in proto.opset_import}.get("", 0)
    deprecated = set()
    for node in proto.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type not in deprecated:
            try:
                if onnx.defs.get_schema(node.op_type, version, "").deprecated:
                    deprecated.add(node.op_type)
            except onnx.defs.SchemaError:
                pass
    if not deprecated:
        return None
    masked = onnx.ModelProto()
    masked.CopyFrom(proto)
    for node in masked.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in deprecated:
            node.domain = "normrt.deprecated"
    masked.opset_import.append(onnx.helper.make_opsetid("normrt.deprecated", 1))
    return masked


def _graphs(graph):
    """graph and every subgraph of its nodes' attributes (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


def _mask_unranked(proto):
    """A copy whose graph inputs and outputs of unknown rank (a tensor type without a `shape` field,
    as `helper.make_tensor_value_info(name, type, None)` writes them, and onnxruntime runs them)
    carry an empty shape, so onnx.checker, which requires the field, checks everything else; None
    if there are none. Only the check sees the copy: the session keeps the rank unknown."""
    def unranked(graph):
        return [v for v in list(graph.input) + list(graph.output)
                if v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")]
    if not any(unranked(g) for g in _graphs(proto.graph)):
        return None
    masked = onnx.ModelProto()
    masked.CopyFrom(proto)
    for g in _graphs(masked.graph):
        for v in unranked(g):
            v.type.tensor_type.shape.SetInParent()
    return masked


# onnxruntime's own ops that its optimizer writes in the standard domain
# (passes/onnxruntime_fused_ops.py rewrites them)
ONNXRUNTIME_STANDARD_DOMAIN_OPS = {"SimplifiedLayerNormalization"}


def _mask_onnxruntime_ops(proto):
    """A copy with onnxruntime's standard-domain ops (SimplifiedLayerNormalization) in a domain of
    their own, so the checker checks the rest; None if there are none."""
    if not any(n.domain in ("", "ai.onnx") and n.op_type in ONNXRUNTIME_STANDARD_DOMAIN_OPS
               for g in _graphs(proto.graph) for n in g.node):
        return None
    masked = onnx.ModelProto()
    masked.CopyFrom(proto)
    for g in _graphs(masked.graph):
        for node in g.node:
            if node.domain in ("", "ai.onnx") and node.op_type in ONNXRUNTIME_STANDARD_DOMAIN_OPS:
                node.domain = "normrt.onnxruntime"
    masked.opset_import.append(onnx.helper.make_opsetid("normrt.onnxruntime", 1))
    return masked


# (what an onnx.checker message says, the copy of the model that lets the checker see past it)
_MASKS = ((lambda message: "No Op registered for" in message, _mask_onnxruntime_ops),
          (lambda message: "deprecated" in message, _mask_deprecated),
          (lambda message: "'shape'" in message and "required but missing" in message, _mask_unranked))


def check(proto, what="model"):
    """onnx.checker, its failure as ModelError.

    Deprecated standard ops (GroupNormalization-18 is deprecated in onnx 1.23,
    yet exported models carry it), onnxruntime's SimplifiedLayerNormalization (its optimizer
    writes it in the standard domain) and graph inputs/outputs of unknown rank (which
    onnxruntime runs) are accepted: the rest of the model is checked.
    """
    # the checker serializes the model and parses it again: without the weights' data (checked by
    # model_checks on every path) that costs kilobytes, not twice the model
    proto = without_initializers(proto, big_initializer_names(proto.graph))
    if proto.ByteSize() > 2**31 - 2**20:
        return  # in-memory checking of >2GB protos is not possible; the structure was checked
    try:
        onnx.checker.check_model(proto)
        return
    except onnx.checker.ValidationError as e:
        error = e
    # each mask once, in whatever order the checker reports what they cover (it stops at the
    # first problem: an unranked output found before a SimplifiedLayerNormalization node)
    unused = list(_MASKS)
    while True:
        hit = next((m for m in unused if m[0](str(error))), None)
        masked = None if hit is None else hit[1](proto)
        if masked is None:
            break
        unused.remove(hit)
        proto = masked               # (the next mask applies on top of this one)
        try:
            onnx.checker.check_model(proto)
            return
        except onnx.checker.ValidationError as e:
            error = e
    first = str(error).strip().splitlines()
    raise ModelError(f"{what} fails onnx.checker: {' '.join(first[:6])}")


def load_model(model, limits=None):
    """A path (external data read from its directory), bytes or ModelProto as a checked ModelProto.

    The result is a copy in canonical form: unnamed nodes named, sparse
    initializers densified, nodes in topological order. `limits`
    (model_checks.Limits; default: its defaults / environment) bounds the
    tensors the model may declare and how deep its subgraphs may nest.
    """
    proto, arrays = load_detached(model, limits)
    return attach(proto, arrays)


def load_detached(model, limits=None):
    """load_model's checked model as (ModelProto with stub initializers, {name: ndarray}):
    the weights held once, as arrays (see normrt.onnx.initializers)."""
    if limits is None:
        limits = Limits()
    elif not isinstance(limits, Limits):
        raise TypeError(f"limits must be a normrt.Limits, got {type(limits).__name__}")
    proto, base_dir = _read(model)
    what = f"model {os.fspath(model)!r}" if base_dir is not None else "model"
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise ModelError(f"{what} is not a valid ONNX model (truncated or not ONNX): "
                         f"it has no {'graph' if not proto.HasField('graph') else 'ir_version'}")
    # before anything is decoded or read from disk: onnx.checker does not see the weights' data
    check_model_data(proto, limits, base_dir)
    _load_external(proto, base_dir, what)
    _normalize(proto)
    check_structure(proto)
    check_attributes(proto)
    proto, arrays = detach(proto)     # the parsed proto (and its weights' bytes) is freed here
    check(proto, what)
    return proto, arrays
