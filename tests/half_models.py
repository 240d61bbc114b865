"""Half-precision copies of float32 ONNX models, for the tests and the benchmarks (`bench/half_models.py`).

`to_half(model, dtype)` does what a float16 export or onnxconverter-common's
`convert_float_to_float16(keep_io_types=False)` gives: every float32 tensor of
the graph becomes `dtype` (float16 or bfloat16): initializers, Constant /
ConstantOfShape values, graph inputs, outputs and value_info, Cast targets.
Inputs the ONNX schema types float32 whatever the data (Resize's `scales`,
Upsample's `scales`) keep float32, with the constants and Casts that make them;
finite constants beyond the half range clamp to its largest value.
"""
import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HALF_TYPES = {np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(ml_dtypes.bfloat16): TensorProto.BFLOAT16}

# (op_type, input position) typed tensor(float) by the schema, not T
_FLOAT32_INPUTS = {("Resize", 2), ("Upsample", 1)}


def _half_tensor(t, dtype):
    # finite values beyond the half range (attention masks of float32's lowest value) clamp to
    # its largest finite value, as onnxconverter-common does, rather than becoming infinities
    a = numpy_helper.to_array(t)
    big = float(ml_dtypes.finfo(dtype).max)
    a = np.where(np.isfinite(a), np.clip(a, -big, big), a)
    return numpy_helper.from_array(a.astype(dtype), t.name)


def to_half(model, dtype):
    """A copy of `model` with its float32 tensors in `dtype` (np.float16 or ml_dtypes.bfloat16)."""
    dtype = np.dtype(dtype)
    elem = HALF_TYPES[dtype]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    keep = {node.input[i] for node in g.node for op, i in _FLOAT32_INPUTS
            if node.op_type == op and len(node.input) > i and node.input[i]}
    for k, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT and t.name not in keep:
            g.initializer[k].CopyFrom(_half_tensor(t, dtype))
    for node in g.node:
        if any(o in keep for o in node.output):
            continue
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = elem
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(_half_tensor(a.t, dtype))
            elif node.op_type == "Constant" and a.name in ("value_float", "value_floats"):
                vals = np.array(a.f if a.name == "value_float" else list(a.floats), np.float32)
                t = numpy_helper.from_array(vals.astype(dtype))
                node.attribute.remove(a)
                node.attribute.append(helper.make_attribute("value", t))
                break
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT and vi.name not in keep:
            vi.type.tensor_type.elem_type = elem
    return m
