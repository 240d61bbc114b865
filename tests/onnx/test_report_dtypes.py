"""report.value_elem_types (the dtype column of `normrt inspect`): a normrt node's outputs take X's
element type, not its shape, so inference goes on after a product that changes the shape."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

import normrt
from normrt.onnx.report import value_elem_types


def test_types_go_on_past_a_product_that_changes_the_shape():
    """normrt::MatMul (16 -> 32 columns), then a standard MatMul by a fed matrix, whose inference
    checks the inner dims: given X's shape for the product's output it failed ('?' in inspect)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b"),
             numpy_helper.from_array(np.ones(5, np.float32), "g"),
             numpy_helper.from_array(np.zeros(5, np.float32), "beta")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
             helper.make_node("MatMul", ["a", "z"], ["p"], name="fed"),
             helper.make_node("LayerNormalization", ["p", "g", "beta"], ["y"], name="ln", axis=-1)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16]),
              helper.make_tensor_value_info("z", TensorProto.FLOAT, [32, 5])]
    m = helper.make_model(helper.make_graph(nodes, "g", inputs,
                                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    optimized = normrt.optimize(m)
    assert [n.op_type for n in optimized.graph.node] == ["MatMul", "MatMul", "LayerNorm"]
    del optimized.graph.value_info[:]       # as a model saved by another tool may come
    types = value_elem_types(optimized)
    for node in optimized.graph.node:
        for o in node.output:
            if o:
                assert types.get(o) == TensorProto.FLOAT, (node.op_type, o)
