"""Shared helpers for half-precision models: their float64 twin as the reference, and the check
that a normrt session's outputs match it within the rounding of the output dtype.

The twin is the same graph with every float tensor (inputs, outputs, initializers,
Constant values, Cast targets) in float64: onnx.reference then computes what the
half model means -- its half constants and inputs, exactly -- without the half
rounding of every intermediate that running the half model itself would add.
"""
import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

from dtype_checks import assert_close_in_dtype

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
HALF_NP = {TensorProto.FLOAT16: np.dtype(np.float16), TensorProto.BFLOAT16: np.dtype(ml_dtypes.bfloat16)}
NORM_OPS = ("BatchNorm", "LayerNorm", "RMSNorm", "ChannelNorm", "InstanceNorm", "GroupNorm",
            "MeanVarianceNorm", "LpNorm", "LRN", "AdaIN")
# what a norm left to onnx.reference looks like: a standard op, or the reductions of a decomposed
# one (a Sqrt alone may be attention's scale)
STATISTICS_OPS = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2",
                  "InstanceNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization",
                  "BatchNormalization")


def _retyped_tensor(t, np_dtype):
    if t.data_type not in FLOAT_TYPES:
        return t
    a = numpy_helper.to_array(t)
    if np_dtype in HALF_NP.values():
        # finite values beyond the half range (attention masks of float32's lowest value) clamp to
        # its largest finite value, as onnxconverter-common does, rather than becoming infinities
        big = float(ml_dtypes.finfo(np_dtype).max)
        a = np.where(np.isfinite(a), np.clip(a, -big, big), a)
    return numpy_helper.from_array(a.astype(np_dtype), t.name)


def _retype(value_infos, elem):
    for vi in value_infos:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in FLOAT_TYPES:
            vi.type.tensor_type.elem_type = elem


# float inputs whose type is not the data's (Resize's roi and scales are float32 in any model)
OWN_TYPE_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}


def _retype_graph(g, elem, np_dtype):
    keep = {node.input[i] for node in g.node for i in OWN_TYPE_INPUTS.get(node.op_type, ())
            if i < len(node.input)}
    for i, t in enumerate(g.initializer):
        if t.name not in keep:
            g.initializer[i].CopyFrom(_retyped_tensor(t, np_dtype))
    _retype(g.input, elem)
    _retype(g.output, elem)
    del g.value_info[:]
    for node in g.node:
        if any(o in keep for o in node.output):
            continue
        for a in node.attribute:
            if a.name in ("value", "value_float", "value_floats") and node.op_type in ("Constant", "ConstantOfShape"):
                if a.type == onnx.AttributeProto.FLOAT:       # Constant(value_float=...): a float32 scalar
                    a.CopyFrom(onnx.helper.make_attribute("value", numpy_helper.from_array(
                        np.asarray(a.f, np_dtype))))
                elif a.type == onnx.AttributeProto.FLOATS:
                    a.CopyFrom(onnx.helper.make_attribute("value", numpy_helper.from_array(
                        np.asarray(list(a.floats), np_dtype))))
                else:
                    a.t.CopyFrom(_retyped_tensor(a.t, np_dtype))
            elif node.op_type == "Cast" and a.name == "to" and a.i in FLOAT_TYPES:
                a.i = elem
            elif a.name == "stash_type" and a.i in FLOAT_TYPES and elem == TensorProto.DOUBLE:
                a.i = elem
            elif a.type == onnx.AttributeProto.GRAPH:
                _retype_graph(a.g, elem, np_dtype)


def retyped_model(model, elem):
    """A copy of `model` with every float tensor (inputs, outputs, initializers, Constant values,
    Cast targets, subgraphs) of type `elem`: its float64 twin, or a float32 export made half."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    np_dtype = HALF_NP.get(elem) or onnx.helper.tensor_dtype_to_np_dtype(elem)
    _retype_graph(m.graph, elem, np_dtype)
    return m


def to_half(model, dtype):
    """A copy of `model` as a float16 export or onnxconverter-common's
    `convert_float_to_float16(keep_io_types=False)` gives it: every float tensor in `dtype`
    (np.float16 or ml_dtypes.bfloat16), Resize/Upsample scales kept float32 (`bench/half_models.py`)."""
    dtype = np.dtype(dtype)
    elem = {v: k for k, v in HALF_NP.items()}[dtype]
    return retyped_model(model, elem)


def float64_model(model):
    """A copy of `model` computing in float64 throughout."""
    return retyped_model(model, TensorProto.DOUBLE)


def reference64(model, feeds):
    """The outputs of `model`'s float64 twin for `feeds` (any float dtype, converted exactly)."""
    feeds64 = {k: np.asarray(v).astype(np.float64) if np.asarray(v).dtype.kind in "fV" else v
               for k, v in feeds.items()}
    return ReferenceEvaluator(float64_model(model)).run(None, feeds64)


def assert_matches_float64(got, model, feeds, ulps=1.0, scale=None, f32_rel=2.0 ** -20):
    """Each output in `got` (in the model's declared output dtype) matches the float64 twin within
    `ulps` roundings of that dtype (relative) plus `f32_rel` times `scale` (max |output| by
    default): float32 arithmetic, or a half rounding the model does before its last terms cancel."""
    want = reference64(model, feeds)
    for out, g, w in zip(model.graph.output, got, want):
        elem = out.type.tensor_type.elem_type
        dtype = HALF_NP.get(elem, onnx.helper.tensor_dtype_to_np_dtype(elem))
        assert_close_in_dtype(g, w, dtype, ulps=ulps, scale=scale, f32_rel=f32_rel)


def norm_nodes(model):
    return [n.op_type for n in model.graph.node if n.domain == "normrt" and n.op_type in NORM_OPS]


def statistics_left(model):
    """Standard-domain nodes of a normalization's statistics still in the graph (not fused)."""
    return [n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx") and n.op_type in STATISTICS_OPS]
