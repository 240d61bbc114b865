"""Conv/ConvTranspose whose weight, bias or attributes do not fit the input raise a clear
ValueError naming the node, instead of reading past x (a fuzzed model crashed the im2col
path: tests/data/fuzz/crash-f1e6665be04d)."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import normrt

RNG = np.random.default_rng(7)


def conv_model(op, w_shape, b_shape=None, elem=TensorProto.FLOAT, **attrs):
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    inits = [numpy_helper.from_array(RNG.standard_normal(w_shape).astype(dtype), "W")]
    inputs = ["x", "W"]
    if b_shape is not None:
        inits.append(numpy_helper.from_array(RNG.standard_normal(b_shape).astype(dtype), "B"))
        inputs.append("B")
    node = helper.make_node(op, inputs, ["y"], name="the_conv", **attrs)
    # dynamic dims: nothing can be checked at load, the run-time check must catch it
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, ["n", "c", "h", "w"])],
                          [helper.make_tensor_value_info("y", elem, ["n", "m", "oh", "ow"])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


CASES = [
    ("Conv", (8, 58, 3, 3), None, {}, "X has 3 channels"),              # the fuzz crasher's weight
    ("Conv", (8, 2, 3, 3), None, {}, "X has 3 channels"),
    ("Conv", (8, 1, 3, 3), None, {"group": 2}, "X has 3 channels"),
    ("Conv", (7, 1, 3, 3), None, {"group": 3}, "multiple of group"),
    ("Conv", (8, 3, 3, 3), (7,), {}, "B must have shape"),
    ("Conv", (8, 3, 3), None, {}, "same rank"),
    ("Conv", (8, 3, 3, 3), None, {"strides": [1]}, "strides must be 2"),
    ("Conv", (8, 3, 3, 3), None, {"dilations": [1, 0]}, "dilations must be 2"),
    ("Conv", (8, 3, 3, 3), None, {"pads": [1, 1]}, "pads must have 4"),
    ("ConvTranspose", (5, 4, 3, 3), None, {}, "X has 3 channels"),
    ("ConvTranspose", (3, 4, 3, 3), (5,), {}, "B must have shape"),
]


@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16])
@pytest.mark.parametrize("op, w_shape, b_shape, attrs, message", CASES)
def test_mismatched_operands_raise_naming_the_node(op, w_shape, b_shape, attrs, message, elem):
    try:
        sess = normrt.InferenceSession(conv_model(op, w_shape, b_shape, elem, **attrs))
    except normrt.ModelError as e:     # what the loader sees in the initializers alone
        assert "the_conv" in str(e) and message == "multiple of group"
        return
    x = RNG.standard_normal((1, 3, 9, 9)).astype(helper.tensor_dtype_to_np_dtype(elem))
    for _ in range(2):                 # the first run and the one after it (specialized plan)
        with pytest.raises(ValueError, match=message) as info:
            sess.run(None, {"x": x})
        assert "the_conv" in " ".join(getattr(info.value, "__notes__", []))


@pytest.mark.parametrize("op, w_shape", [("Conv", (8, 3, 3, 3)), ("ConvTranspose", (3, 4, 3, 3))])
def test_fitting_operands_still_run(op, w_shape):
    from onnx.reference import ReferenceEvaluator
    model = conv_model(op, w_shape, (w_shape[0] if op == "Conv" else w_shape[1],))
    x = RNG.standard_normal((1, 3, 9, 9)).astype(np.float32)
    got = normrt.InferenceSession(model).run(None, {"x": x})[0]
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
