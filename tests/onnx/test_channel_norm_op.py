"""normrt::ChannelNorm in models: LayerNorm2d / PixelNorm graphs become one node (with the
activation after it, and per-channel runtime parameters), matching onnx.reference."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt

RNG = np.random.default_rng(11)


def layer_norm_2d_model(shape, dtype=np.float32, *, runtime_affine=False, act=None, rms=False):
    """u = x.mean(1); s = (x - u)^2.mean(1); y = w * (x - u) / sqrt(s + eps) + b [then act]."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    C, rank = shape[1], len(shape)
    pshape = (C,) + (1,) * (rank - 2)
    inits = [numpy_helper.from_array(np.array([1], np.int64), "ax"),
             numpy_helper.from_array(np.array(2.0, dtype), "two"),
             numpy_helper.from_array(np.array(1e-6, dtype), "eps")]
    inputs = [helper.make_tensor_value_info("x", elem, list(shape))]
    for name in ("w", "b"):
        if runtime_affine:
            inputs.append(helper.make_tensor_value_info(name, elem, list(pshape)))
        else:
            inits.append(numpy_helper.from_array(RNG.uniform(-2, 2, pshape).astype(dtype), name))
    nodes = []
    if rms:
        data = "x"
        nodes.append(helper.make_node("Pow", ["x", "two"], ["sq"]))
    else:
        data = "d"
        nodes += [helper.make_node("ReduceMean", ["x", "ax"], ["u"]),
                  helper.make_node("Sub", ["x", "u"], ["d"]),
                  helper.make_node("Pow", ["d", "two"], ["sq"])]
    nodes += [helper.make_node("ReduceMean", ["sq", "ax"], ["s"]),
              helper.make_node("Add", ["s", "eps"], ["se"]),
              helper.make_node("Sqrt", ["se"], ["std"]),
              helper.make_node("Div", [data, "std"], ["n"]),
              helper.make_node("Mul", ["w", "n"], ["wn"]),
              helper.make_node("Add", ["wn", "b"], ["y" if act is None else "pre"])]
    if act is not None:
        nodes.append(helper.make_node(act, ["pre"], ["y"]))
    graph = helper.make_graph(nodes, "ln2d", inputs, [helper.make_tensor_value_info("y", elem, list(shape))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model, dtype):
    feeds = {i.name: (RNG.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]) * 2 + 0.5)
             .astype(dtype) for i in model.graph.input}
    sess = normrt.InferenceSession(model)
    np.testing.assert_allclose(sess.run(None, feeds)[0], ReferenceEvaluator(model).run(None, feeds)[0],
                               rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(sess.optimized_model)
    return sess


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 8, 5, 6), (1, 16, 33), (2, 4, 3, 2, 5)])
@pytest.mark.parametrize("rms", [False, True])
def test_constant_affine_becomes_one_node(dtype, shape, rms):
    sess = run(layer_norm_2d_model(shape, dtype, rms=rms), dtype)
    nodes = list(sess.optimized_model.graph.node)
    assert [n.op_type for n in nodes] == ["ChannelNorm"]
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs.get("mode", b"layer") == (b"rms" if rms else b"layer")
    assert sess.report["fused"][0]["kernel"] == ("rms_norm_2d" if rms else "layer_norm_2d")


@pytest.mark.parametrize("act,name", [("Relu", "relu"), ("Sigmoid", "sigmoid")])
def test_activation_after_it_is_fused(act, name):
    sess = run(layer_norm_2d_model((2, 8, 4, 4), act=act), np.float32)
    nodes = list(sess.optimized_model.graph.node)
    assert [n.op_type for n in nodes] == ["ChannelNorm"]
    assert {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}["activation"] == name.encode()


def test_runtime_per_channel_affine_is_read_as_it_is():
    sess = run(layer_norm_2d_model((2, 8, 4, 4), runtime_affine=True), np.float32)
    node, = sess.optimized_model.graph.node
    assert node.op_type == "ChannelNorm" and list(node.input) == ["x", "w", "b"]


def test_unknown_mode_is_a_clear_error():
    node = helper.make_node("ChannelNorm", ["x"], ["y"], domain="normrt", mode="l1")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("normrt", 1)])
    with pytest.raises(normrt.ModelError, match="mode must be 'layer' or 'rms'"):
        normrt.InferenceSession(model).run(None, {"x": np.ones((1, 2, 3), np.float32)})
