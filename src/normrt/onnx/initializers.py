"""Weights held once: big initializers live as numpy arrays, the ModelProto keeps stubs.

    loaded ModelProto ──detach──► stub initializers (name, dims, data_type; no data)
                          └─────► {name: ndarray}  (the one copy: passes, then the executor)
    optimize()/session.optimized_model ──attach──► a full ModelProto again, on request

A protobuf tensor cannot lend its bytes to numpy (reading `raw_data` copies),
so a session that kept both the optimized ModelProto and the executor's
arrays held every weight twice, and onnx.checker (which serializes the whole
model, then parses it again in C++) briefly held it twice more. Stubs make the
proto small: the checker and shape inference see the big initializers as typed
graph inputs (`without_initializers`), and their data is checked by
normrt.onnx.model_checks instead.
"""
import numpy as np
import onnx
from onnx import numpy_helper

# Initializers with more elements than this are detached (weights); shape/axes
# constants stay in the proto, where shape inference's data propagation reads them.
DETACH_MIN_ELEMENTS = 1 << 12


def is_stub(tensor):
    """True for an initializer whose data was detached (see `detach`)."""
    return tensor.HasField("doc_string") and tensor.doc_string == _STUB_MARK


_STUB_MARK = "normrt:detached"


def stub(name, value):
    """A data-less TensorProto standing for `value` (its name, dims and data type)."""
    t = onnx.TensorProto(name=name, dims=list(value.shape),
                         data_type=onnx.helper.np_dtype_to_tensor_dtype(value.dtype))
    t.doc_string = _STUB_MARK
    return t


def detachable(value):
    """Whether an array is big enough to live outside the proto (and has an ONNX data type)."""
    if value.size <= DETACH_MIN_ELEMENTS or value.dtype == object:
        return False
    try:
        onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def detach(model):
    """(a new ModelProto whose big top-level initializers are stubs, {name: ndarray} of their values).

    A new proto, not `model` edited: protobuf keeps a message's bytes until the
    whole message is freed, so only dropping `model` (the caller's last
    reference) gives the weights' bytes back.
    """
    graph = model.graph
    kept, arrays = [], {}
    for t in graph.initializer:
        n = 1
        for d in t.dims:
            n *= int(d)
        if n > DETACH_MIN_ELEMENTS:
            value = _read(t, n)
            if detachable(value):
                arrays[t.name] = value
                kept.append(stub(t.name, value))
                continue
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        kept.append(copy)
    del graph.initializer[:]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.initializer.extend(kept)
    return out, arrays


def _read(tensor, n):
    """numpy_helper.to_array, its size checked (model_checks leaves big raw_data to this read)."""
    try:
        value = numpy_helper.to_array(tensor)
        if value.size == n:
            return value
    except ValueError:
        pass
    from ..errors import ModelError
    got = len(tensor.raw_data) if tensor.HasField("raw_data") else "?"
    raise ModelError(f"initializer {tensor.name!r}: raw_data holds {got} bytes, which do not make the "
                     f"{n} {onnx.TensorProto.DataType.Name(tensor.data_type)} values its dims "
                     f"{list(tensor.dims)} declare")


def attach(model, arrays):
    """Fill `model`'s stub initializers (top-level graph) from `arrays` {name: ndarray}, in place."""
    graph = model.graph
    for i, t in enumerate(graph.initializer):
        if is_stub(t):
            graph.initializer[i].CopyFrom(numpy_helper.from_array(np.asarray(arrays[t.name]), t.name))
    return model


def without_initializers(model, names):
    """A shallow copy of `model` whose top-level initializers `names` are typed graph inputs instead.

    For onnx.checker and shape inference: they serialize the model they are
    given, which without the weights is kilobytes instead of gigabytes.
    """
    if not names:
        return model
    m = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(m, field, getattr(model, field))
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    m.metadata_props.extend(model.metadata_props)
    g, src = m.graph, model.graph
    g.name = src.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(g, field).extend(getattr(src, field))
    g.initializer.extend(t for t in src.initializer if t.name not in names)
    have = {i.name for i in g.input}
    for t in src.initializer:
        if t.name in names and t.name not in have:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return m


def big_initializer_names(graph):
    """Names of the top-level initializers with more than DETACH_MIN_ELEMENTS elements (or stubs)."""
    out = set()
    for t in graph.initializer:
        n = 1
        for d in t.dims:
            n *= int(d)
        if n > DETACH_MIN_ELEMENTS or is_stub(t):
            out.add(t.name)
    return out
