"""Bad models and bad feeds: ModelError / ValueError / NotImplementedError saying what is wrong."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import normrt
from graph_builder import vi


def make(nodes, inputs, outputs, inits=(), opsets=(("", 17),)):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def good_model():
    return make([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                [vi("x", ["N", 3]), vi("i", [2], TensorProto.INT64)], [vi("y", ["N", 3])])


# -- models ------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(normrt.ModelError, match="not found.*nope.onnx"):
        normrt.InferenceSession(str(tmp_path / "nope.onnx"))


def test_truncated_file(tmp_path):
    model = make([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [2, 64])], [vi("y", [2, 64])],
                 [numpy_helper.from_array(np.ones((64, 64), np.float32), "w")])
    data = model.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(normrt.ModelError, match="not a valid ONNX model"):
        normrt.InferenceSession(str(path))
    with pytest.raises(normrt.ModelError, match="not a valid ONNX model"):
        normrt.InferenceSession(data[: len(data) // 2])


def test_not_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 10)
    with pytest.raises(normrt.ModelError, match="not a valid ONNX model"):
        normrt.InferenceSession(str(path))
    with pytest.raises(normrt.ModelError):
        normrt.optimize(b"")


def test_checker_failure():
    bad = make([helper.make_node("Add", ["x"], ["y"], name="lonely_add")], [vi("x", [3])], [vi("y", [3])])
    with pytest.raises(normrt.ModelError, match="onnx.checker.*lonely_add"):
        normrt.InferenceSession(bad)


def test_checker_leniencies_combine():
    """onnxruntime's SimplifiedLayerNormalization in the standard domain and an extra graph output
    of unknown rank (as a user adds one to read an intermediate value) in one model: each is
    accepted, whichever the checker reports first."""
    w = numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(np.float32), "w")
    sln = helper.make_node("SimplifiedLayerNormalization", ["x", "w"], ["h"], name="sln", epsilon=1e-6, axis=-1)
    relu = helper.make_node("Relu", ["h"], ["y"], name="relu")
    model = make([sln, relu], [vi("x", [2, 8])],
                 [vi("y", [2, 8]), helper.make_tensor_value_info("h", TensorProto.FLOAT, None)], [w])
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    y, h = normrt.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * np.linspace(0.5, 1.5, 8)
    np.testing.assert_allclose(h, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y, np.maximum(h, 0))


def test_cycle():
    model = make([helper.make_node("Add", ["x", "c"], ["b"], name="add_b"),
                  helper.make_node("Relu", ["b"], ["c"], name="relu_c"),
                  helper.make_node("Identity", ["c"], ["y"], name="out")],
                 [vi("x", [3])], [vi("y", [3])])
    with pytest.raises(normrt.ModelError, match="cycle.*'add_b'.*'relu_c'|cycle.*'relu_c'.*'add_b'"):
        normrt.InferenceSession(model)


def test_dangling_input():
    model = make([helper.make_node("Add", ["x", "nowhere"], ["y"], name="add_dangling")],
                 [vi("x", [3])], [vi("y", [3])])
    with pytest.raises(normrt.ModelError, match="'add_dangling'.*'nowhere'.*dangling"):
        normrt.InferenceSession(model)


def test_unsorted_graph_is_fine():
    model = make([helper.make_node("Relu", ["a"], ["y"], name="second"),
                  helper.make_node("Neg", ["x"], ["a"], name="first")], [vi("x", [3])], [vi("y", [3])])
    (y,) = normrt.InferenceSession(model).run(None, {"x": np.array([1.0, -2.0, 3.0], np.float32)})
    assert y.tolist() == [0.0, 2.0, 0.0]


def test_op_nobody_implements_is_reported_at_load():
    model = make([helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="com.example")],
                 [vi("x", [3])], [vi("y", [3])], opsets=(("", 17), ("com.example", 3)))
    with pytest.raises(NotImplementedError, match="'Frobnicate'.*'com.example'.*version 3.*'frob'"):
        normrt.InferenceSession(model)
    model = make([helper.make_node("Frobnicate", ["x"], ["y"], name="nfrob", domain="normrt")],
                 [vi("x", [3])], [vi("y", [3])], opsets=(("", 17), ("normrt", 1)))
    with pytest.raises(NotImplementedError, match="'Frobnicate'.*'normrt'.*'nfrob'"):
        normrt.InferenceSession(model)


def test_wrong_model_argument_type():
    with pytest.raises(TypeError, match="path, bytes or onnx.ModelProto"):
        normrt.InferenceSession(42)


# -- feeds -------------------------------------------------------------------
@pytest.fixture(scope="module")
def sess():
    return normrt.InferenceSession(good_model())


def ok_feed():
    return {"x": np.ones((2, 3), np.float32), "i": np.array([1, 2])}


def test_good_feed(sess):
    (y,) = sess.run(None, ok_feed())
    assert y.shape == (2, 3)


def test_missing_feed(sess):
    with pytest.raises(ValueError, match=r"missing input\(s\) \['i'\]"):
        sess.run(None, {"x": np.ones((2, 3), np.float32)})


def test_unknown_input(sess):
    with pytest.raises(ValueError, match=r"unknown input name\(s\) \['z'\].*'x', 'i'"):
        sess.run(None, {**ok_feed(), "z": np.ones(3, np.float32)})


def test_wrong_rank(sess):
    with pytest.raises(ValueError, match=r"input 'x' must have rank 2.*got shape \(6,\)"):
        sess.run(None, {**ok_feed(), "x": np.ones(6, np.float32)})


def test_wrong_static_dim(sess):
    with pytest.raises(ValueError, match=r"input 'x' must have shape \['N', 3\], got \(2, 4\).*dimension 1 must be 3"):
        sess.run(None, {**ok_feed(), "x": np.ones((2, 4), np.float32)})


def test_wrong_dtype(sess):
    with pytest.raises(ValueError, match=r"input 'x' must have type tensor\(float\).*float64"):
        sess.run(None, {**ok_feed(), "x": np.ones((2, 3))})
    with pytest.raises(ValueError, match=r"input 'i' must have type tensor\(int64\).*int32"):
        sess.run(None, {**ok_feed(), "i": np.array([1, 2], np.int32)})


def test_unknown_output_name(sess):
    with pytest.raises(ValueError, match=r"unknown output name\(s\) \['nope'\]"):
        sess.run(["nope"], ok_feed())


def test_initializer_backed_inputs_are_constants():
    """IR < 4 models list initializers among the inputs: they are not feeds."""
    model = make([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [3]), vi("w", [3])], [vi("y", [3])],
                 [numpy_helper.from_array(np.arange(3, dtype=np.float32), "w")])
    model.ir_version = 3
    sess = normrt.InferenceSession(model)
    assert [a.name for a in sess.get_inputs()] == ["x"]
    (y,) = sess.run(None, {"x": np.ones(3, np.float32)})
    assert y.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="unknown input name.*'w'"):
        sess.run(None, {"x": np.ones(3, np.float32), "w": np.ones(3, np.float32)})
    onnx.checker.check_model(sess.optimized_model)


def test_missing_external_data_file(tmp_path):
    model = make([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [2, 64])], [vi("y", [2, 64])],
                 [numpy_helper.from_array(np.ones((64, 64), np.float32), "w")])
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(normrt.ModelError, match="external data"):
        normrt.InferenceSession(str(path))
    # a proto whose tensors live in external files cannot be loaded without its directory
    with pytest.raises(normrt.ModelError, match="external data.*path"):
        normrt.InferenceSession(onnx.load(str(path), load_external_data=False))


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
def test_conv_weight_channels_not_matching_x(dtype):
    """A runtime weight whose channels do not match x's (the fuzzer's 'dims -> [8, 58, 3, 3]'): a clear
    error, never a read past x (the float64 path took x's channel count from the weight)."""
    model = make([helper.make_node("Conv", ["x", "w"], ["y"])],
                 [vi("x", [1, 3, 6, 6], dtype), vi("w", [4, 5, 3, 3], dtype)], [vi("y", [1, 4, 4, 4], dtype)])
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    s = normrt.InferenceSession(model)
    with pytest.raises(ValueError, match="X has 3 channels.*expects 5"):
        s.run(None, {"x": np.ones((1, 3, 6, 6), np_dtype), "w": np.ones((4, 5, 3, 3), np_dtype)})
