"""Checks the loader makes itself, on every path (onnx.checker never sees the weights' data):
tensor data lengths, dims, external data, sparse indices, size and nesting limits, attributes
that disagree with their initializer."""
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from normrt.onnx.initializers import is_stub
from graph_builder import vi


def add_model(w):
    """y = x + w, w an initializer TensorProto."""
    shape = [int(d) for d in w.dims]
    graph = helper.make_graph([helper.make_node("Add", ["x", w.name], ["y"], name="add")], "g",
                              [vi("x", shape, w.data_type)], [vi("y", shape, w.data_type)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


DTYPES = [np.float32, np.float64, np.float16, np.int8, np.int32, np.int64, np.uint8]


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(DTYPES), dims=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       delta=st.integers(-9, 9))
def test_raw_data_length_must_match_dims(dtype, dims, delta):
    w = numpy_helper.from_array(np.ones(dims, dtype), "w")
    data = w.raw_data
    w.raw_data = data[:len(data) + delta] if delta < 0 else data + b"\x01" * delta
    model = add_model(w)
    if len(w.raw_data) == int(np.prod(dims)) * np.dtype(dtype).itemsize:
        x = np.zeros(dims, dtype)
        (y,) = normrt.InferenceSession(model).run(None, {"x": x})
        np.testing.assert_array_equal(y, ReferenceEvaluator(model).run(None, {"x": x})[0])
        return
    with pytest.raises(normrt.ModelError, match=r"initializer 'w'.*raw_data holds"):
        normrt.InferenceSession(model)
    if delta < 0:     # onnx.checker agrees on a short one (it lets a long one through)
        with pytest.raises(onnx.checker.ValidationError):
            onnx.checker.check_model(model)


def test_typed_field_length_must_match_dims():
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 3], [1.0] * 6)
    del w.float_data[-1]
    with pytest.raises(normrt.ModelError, match=r"'w'.*float_data holds 5 values.*need 6"):
        normrt.InferenceSession(add_model(w))
    empty = onnx.TensorProto(name="w", dims=[2, 3], data_type=TensorProto.FLOAT)
    with pytest.raises(normrt.ModelError, match=r"'w'.*holds 0 values"):
        normrt.InferenceSession(add_model(empty))


@pytest.mark.parametrize("dims,match", [([2**40, 2**40], "overflows int64"), ([4, -1], "negative dimension"),
                                        ([2**62, 2], "overflows int64")])
def test_bad_dims(dims, match):
    w = onnx.TensorProto(name="w", dims=dims, data_type=TensorProto.FLOAT, raw_data=b"\0" * 16)
    with pytest.raises(normrt.ModelError, match=f"'w'.*{match}"):
        normrt.InferenceSession(add_model(w).SerializeToString())


def test_tensor_size_limit_and_its_configuration(monkeypatch):
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")       # 16 KiB
    model = add_model(w)
    with pytest.raises(normrt.ModelError, match=r"'w' declares 16384 bytes.*limit of 10000 bytes"):
        normrt.InferenceSession(model, limits=normrt.Limits(max_tensor_bytes=10000))
    normrt.InferenceSession(model, limits=normrt.Limits(max_tensor_bytes=16384))
    monkeypatch.setenv("NORMRT_MAX_TENSOR_BYTES", "4096")
    with pytest.raises(normrt.ModelError, match="limit of 4096 bytes"):
        normrt.optimize(model)
    monkeypatch.setenv("NORMRT_MAX_TENSOR_BYTES", "lots")
    with pytest.raises(ValueError, match="NORMRT_MAX_TENSOR_BYTES must be an integer"):
        normrt.Limits()
    with pytest.raises(ValueError, match="max_subgraph_depth must be a positive int"):
        normrt.Limits(max_tensor_bytes=1, max_subgraph_depth=0)
    with pytest.raises(TypeError, match="limits must be a normrt.Limits"):
        normrt.InferenceSession(model, limits={"max_tensor_bytes": 1})


def sparse_model(dims, indices, values):
    sp = helper.make_sparse_tensor(numpy_helper.from_array(np.asarray(values, np.float32), "w"),
                                   numpy_helper.from_array(np.asarray(indices, np.int64), "w_idx"), dims)
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"], name="id")], "g", [],
                              [vi("y", list(dims))], sparse_initializer=[sp])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sparse_initializers():
    (y,) = normrt.InferenceSession(sparse_model([2, 3], [1, 5], [7.0, 8.0])).run(None, {})
    np.testing.assert_array_equal(y, [[0, 7, 0], [0, 0, 8]])
    with pytest.raises(normrt.ModelError, match=r"'w'.*dense form.*over the limit"):
        normrt.InferenceSession(sparse_model([10**11], [3], [1.0]))
    with pytest.raises(normrt.ModelError, match=r"'w'.*index is outside its dims"):
        normrt.InferenceSession(sparse_model([2, 3], [1, 6], [7.0, 8.0]))
    with pytest.raises(normrt.ModelError, match=r"'w'.*index is outside"):
        normrt.InferenceSession(sparse_model([2, 3], [-1], [7.0]))
    with pytest.raises(normrt.ModelError, match=r"'w'.*indices of shape \[3\] do not match 2 values"):
        normrt.InferenceSession(sparse_model([2, 3], [0, 1, 2], [7.0, 8.0]))


def external_model(tmp_path, shape=(32, 32)):
    w = numpy_helper.from_array(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), "w")
    path = tmp_path / "m.onnx"
    onnx.save_model(add_model(w), path, save_as_external_data=True, location="w.bin", size_threshold=0)
    return path


def test_external_data_shorter_than_declared(tmp_path):
    path = external_model(tmp_path)
    x = np.ones((32, 32), np.float32)
    (y,) = normrt.InferenceSession(str(path)).run(None, {"x": x})
    np.testing.assert_array_equal(y, x + np.arange(1024, dtype=np.float32).reshape(32, 32))
    data = (tmp_path / "w.bin").read_bytes()
    (tmp_path / "w.bin").write_bytes(data[:-4])
    with pytest.raises(normrt.ModelError, match=r"'w': external file 'w.bin' holds 4092 bytes.*need 4096"):
        normrt.InferenceSession(str(path))


def test_external_data_length_field_disagrees(tmp_path):
    path = external_model(tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    for e in model.graph.initializer[0].external_data:
        if e.key == "length":
            e.value = "100"
    onnx.save_model(model, path)
    with pytest.raises(normrt.ModelError, match=r"'w': its external data length is 100 bytes.*need 4096"):
        normrt.InferenceSession(str(path))


def test_external_data_offset_past_the_end(tmp_path):
    path = external_model(tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    t = model.graph.initializer[0]
    t.external_data.add(key="offset", value="4000")
    onnx.save_model(model, path)
    with pytest.raises(normrt.ModelError, match=r"'w': external file 'w.bin' holds 96 bytes from offset 4000"):
        normrt.InferenceSession(str(path))


def test_external_data_outside_the_folder_is_still_refused(tmp_path):
    (tmp_path / "inner").mkdir()
    path = external_model(tmp_path / "inner")
    model = onnx.load(str(path), load_external_data=False)
    for e in model.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "../w.bin"
    (tmp_path / "w.bin").write_bytes((tmp_path / "inner" / "w.bin").read_bytes())
    onnx.save_model(model, path)
    with pytest.raises(normrt.ModelError, match="external data"):
        normrt.InferenceSession(str(path))


def test_constant_attribute_with_short_data_names_the_node():
    t = numpy_helper.from_array(np.ones((4, 4), np.float32), "")
    t.raw_data = t.raw_data[:-8]
    graph = helper.make_graph([helper.make_node("Constant", [], ["y"], name="const_w", value=t)], "g", [],
                              [vi("y", [4, 4])])
    with pytest.raises(normrt.ModelError, match=r"attribute 'value' of node 'const_w'.*raw_data holds 56 bytes"):
        normrt.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def nested_if_model(depth):
    """y = x + 1 through `depth` nested If nodes if1..if<depth> (the innermost body `depth` deep)."""
    def body(level):
        out = f"o{level}"
        if level == depth:
            node = helper.make_node("Add", ["x", "one"], [out], name=f"add{level}")
        else:
            node = helper.make_node("If", ["cond"], [out], name=f"if{level + 1}",
                                    then_branch=body(level + 1), else_branch=body(level + 1))
        return helper.make_graph([node], f"body{level}", [], [vi(out, [2])])
    outer = helper.make_node("If", ["cond"], ["y"], name="if1", then_branch=body(1), else_branch=body(1))
    graph = helper.make_graph([outer], "g", [vi("x", [2]), vi("cond", [], TensorProto.BOOL)], [vi("y", [2])],
                              [numpy_helper.from_array(np.ones(2, np.float32), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_subgraph_nesting_limit():
    model = nested_if_model(4)
    feed = {"x": np.zeros(2, np.float32), "cond": np.array(True)}
    (y,) = normrt.InferenceSession(model, limits=normrt.Limits(max_subgraph_depth=4)).run(None, feed)
    np.testing.assert_array_equal(y, ReferenceEvaluator(model).run(None, feed)[0])
    with pytest.raises(normrt.ModelError, match=r"node 'if4' \(If\).*subgraph '(then|else)_branch' nests 4 deep.*limit of 3"):
        normrt.InferenceSession(model, limits=normrt.Limits(max_subgraph_depth=3))


def conv_model(w_shape, **attrs):
    w = numpy_helper.from_array(np.ones(w_shape, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)], "g",
                              [vi("x", [1, 4, 8, 8])], [vi("y", [1, 8, 6, 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_conv_attributes_must_agree_with_the_weight():
    normrt.InferenceSession(conv_model([8, 4, 3, 3], kernel_shape=[3, 3]))
    with pytest.raises(normrt.ModelError, match=r"'conv' \(Conv\): attribute kernel_shape=\[5, 5\].*'w' of shape \[8, 4, 3, 3\]"):
        normrt.InferenceSession(conv_model([8, 4, 3, 3], kernel_shape=[5, 5]))
    with pytest.raises(normrt.ModelError, match=r"'conv' \(Conv\): attribute group=3.*multiple of group"):
        normrt.InferenceSession(conv_model([8, 4, 3, 3], group=3))
    with pytest.raises(normrt.ModelError, match=r"'conv' \(Conv\): weight 'w' has shape \[8, 4\]"):
        normrt.InferenceSession(conv_model([8, 4]))


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_rnn_hidden_size_must_agree_with_the_weights(op, gates):
    hidden, features = 5, 3
    w = numpy_helper.from_array(np.zeros((1, gates * hidden, features), np.float32), "W")
    r = numpy_helper.from_array(np.zeros((1, gates * hidden, hidden), np.float32), "R")

    def model(h):
        node = helper.make_node(op, ["x", "W", "R"], ["", "y_h"], name="rnn", hidden_size=h)
        graph = helper.make_graph([node], "g", [vi("x", [2, 1, features])], [vi("y_h", [1, 1, hidden])], [w, r])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    x = np.random.default_rng(0).standard_normal((2, 1, features)).astype(np.float32)
    (y,) = normrt.InferenceSession(model(hidden)).run(None, {"x": x})
    np.testing.assert_allclose(y, ReferenceEvaluator(model(hidden)).run(None, {"x": x})[0], atol=1e-6)
    with pytest.raises(normrt.ModelError, match=rf"'rnn' \({op}\): attribute hidden_size=4 disagrees.*'W'"):
        normrt.InferenceSession(model(4))


def test_group_norm_num_groups_must_agree_with_scale():
    def model(groups, opset, channels=4):
        scale = numpy_helper.from_array(np.ones(channels, np.float32), "scale")
        bias = numpy_helper.from_array(np.zeros(channels, np.float32), "bias")
        node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], name="gn", num_groups=groups)
        graph = helper.make_graph([node], "g", [vi("x", [1, 4, 3])], [vi("y", [1, 4, 3])], [scale, bias])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    normrt.InferenceSession(model(2, 21))
    with pytest.raises(normrt.ModelError, match=r"'gn' \(GroupNormalization\): attribute num_groups=3.*'scale'"):
        normrt.InferenceSession(model(3, 21))
    normrt.InferenceSession(model(4, 18))
    with pytest.raises(normrt.ModelError, match=r"num_groups=2.*GroupNormalization-18 takes one scale/bias per group"):
        normrt.InferenceSession(model(2, 18))


def test_session_holds_its_weights_once():
    w = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    model = add_model(numpy_helper.from_array(w, "w"))
    sess = normrt.InferenceSession(model)
    # the session's own proto keeps a data-less stub; the executor's array is the weight
    (stub,) = sess._model.graph.initializer
    assert is_stub(stub) and stub.ByteSize() < 100
    np.testing.assert_array_equal(sess.executor.constants["w"], w)
    # the public optimized_model is whole again: checkable, savable, runs the same
    full = sess.optimized_model
    onnx.checker.check_model(full)
    np.testing.assert_array_equal(numpy_helper.to_array(full.graph.initializer[0]), w)
    x = np.ones((256, 256), np.float32)
    (y,) = normrt.InferenceSession(full.SerializeToString()).run(None, {"x": x})
    np.testing.assert_array_equal(y, x + w)
    optimized = normrt.optimize(model)
    assert not any(is_stub(t) for t in optimized.graph.initializer)
    onnx.checker.check_model(optimized)


def test_attribute_values_onnx_inference_would_trip_on():
    """Found by fuzzing (tests/data/fuzz/): onnx's C++ shape inference reads out of bounds on these."""
    x, idx = vi("x", [2, 3]), vi("i", [2, 1], TensorProto.INT64)
    gather = helper.make_node("GatherND", ["x", "i"], ["y"], name="gnd", batch_dims=-1)
    model = helper.make_model(helper.make_graph([gather], "g", [x, idx], [vi("y", None)]),
                              opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(normrt.ModelError, match=r"'gnd' \(GatherND\): attribute batch_dims=-1 must be >= 0"):
        normrt.InferenceSession(model)
    split = helper.make_node("Split", ["x"], ["a", "b", "c"], name="split", axis=1, num_outputs=2)
    model = helper.make_model(helper.make_graph([split], "g", [x], [vi("a", None), vi("b", None), vi("c", None)]),
                              opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(normrt.ModelError, match=r"'split' \(Split\): attribute num_outputs=2 must equal its number "
                                                r"of outputs \(3\)"):
        normrt.InferenceSession(model)


@pytest.mark.parametrize("where", ["output", "input", "both", "subgraph"])
def test_inputs_and_outputs_of_unknown_rank_run_as_in_onnxruntime(where):
    # make_tensor_value_info(name, type, None) writes a tensor type without a shape field:
    # onnx.checker requires the field, onnxruntime runs such models, and so does normrt
    # (the check sees past it; every other check still applies)
    unranked = helper.make_tensor_value_info
    x_in = unranked("x", TensorProto.FLOAT, None if where in ("input", "both") else [2, 3])
    if where == "subgraph":
        then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                                 [unranked("t", TensorProto.FLOAT, None)])
        other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                                  [unranked("e", TensorProto.FLOAT, None)])
        nodes = [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
        inputs = [x_in, unranked("c", TensorProto.BOOL, [])]
    else:
        nodes = [helper.make_node("Relu", ["x"], ["y"])]
        inputs = [x_in]
    y_out = unranked("y", TensorProto.FLOAT, None if where in ("output", "both", "subgraph") else [2, 3])
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, [y_out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(onnx.checker.ValidationError, match="shape"):
        onnx.checker.check_model(model)
    feeds = {"x": np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], np.float32)}
    if where == "subgraph":
        feeds["c"] = np.array(True)
    got = normrt.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_array_equal(got, ReferenceEvaluator(model).run(None, feeds)[0])
    # the rest of the model is still checked: an unknown op stays an error
    nodes[0].op_type = "NoSuchOp" if where != "subgraph" else nodes[0].op_type
    if where != "subgraph":
        bad = helper.make_model(helper.make_graph(nodes, "g", inputs, [y_out]),
                                opset_imports=[helper.make_opsetid("", 17)])
        with pytest.raises(normrt.ModelError):
            normrt.InferenceSession(bad.SerializeToString())
