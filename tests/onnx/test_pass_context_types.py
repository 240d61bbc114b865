"""PassContext.refresh_types: shape inference runs on a copy without the big initializers' data, and sees
initializers of IR < 4 models after commit dropped them from graph.input."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from normrt.onnx.passes import BIG_INITIALIZER, PassContext, _without_initializer_data


def model_with_weights(ir_version=8):
    """Conv with a big weight -> Reshape to a constant shape (data propagation needs its value) -> Relu."""
    w = np.zeros((64, 16, 3, 3), np.float32)
    assert w.size > BIG_INITIALIZER
    shape = np.array([2, 64, -1], np.int64)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
             helper.make_node("Relu", ["r"], ["y"], name="relu")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, 5, 5])]
    if ir_version < 4:     # IR 3 lists initializers among the graph inputs
        inputs += [helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)),
                   helper.make_tensor_value_info("shape", TensorProto.INT64, [3])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(shape, "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = ir_version
    return model


def test_copy_without_weight_data():
    model = model_with_weights()
    small = _without_initializer_data(model)
    assert [t.name for t in small.graph.initializer] == ["shape"]
    assert "w" in {i.name for i in small.graph.input}
    assert len(model.graph.initializer) == 2          # the model itself is untouched
    assert small.ByteSize() < 2000 < model.ByteSize()


def test_types_inferred_through_the_stripped_weight():
    ctx = PassContext(model_with_weights())
    assert ctx.shape("c") == (2, 64, 5, 5)
    assert ctx.shape("r") == (2, 64, 25)
    assert ctx.elem_type("y") == TensorProto.FLOAT


def test_ir3_initializers_dropped_from_inputs_still_known():
    ctx = PassContext(model_with_weights(ir_version=3))
    ctx.commit()                                      # drops the initializers from graph.input
    assert not {"w", "shape"} & {i.name for i in ctx.graph.input}
    ctx.refresh_types()
    assert ctx.shape("r") == (2, 64, 25)
    assert ctx.model.ir_version == 3                  # only the inference saw IR 4


def test_a_small_models_declared_types_survive_every_refresh():
    """A model without big initializers: inference works on a copy too, so the file's value_info
    (here the only source of r's type: inference stops at an op it does not know) stays for the
    next refresh. The first refresh used to clear it (the "copy" was the model itself), and a
    pass that refreshed again lost the types (a dynamo VAE's GroupNorms then stayed unfused)."""
    nodes = [helper.make_node("Mystery", ["x"], ["m"], name="mystery", domain="some.domain"),
             helper.make_node("Relu", ["m"], ["r"], name="relu"),
             helper.make_node("Neg", ["r"], ["y"], name="neg")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              value_info=[helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("some.domain", 1)])
    ctx = PassContext(model)
    for _ in range(3):
        assert ctx.elem_type("r") == TensorProto.FLOAT and ctx.shape("r") == (2, 3)
        assert [v.name for v in ctx.graph.value_info] == ["r"]
        ctx.mark_types_stale()
        ctx.refresh_types()
