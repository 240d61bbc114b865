"""InferenceSession: API, model sources, external data, dynamic dims, fallbacks, release of intermediates.

onnx.reference.ReferenceEvaluator is the oracle throughout.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from normrt.onnx.executor import Executor

RNG = np.random.default_rng(7)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def model_two_in_two_out(opset=17):
    """x[N,8], y[N,8] -> LayerNorm(x + y) (symbolic N), and MatMul(x, W) with W = A + B folded."""
    inits = [numpy_helper.from_array(f32(8), "ln_scale"), numpy_helper.from_array(f32(8), "ln_bias"),
             numpy_helper.from_array(f32(8, 3), "A"), numpy_helper.from_array(f32(8, 3), "B")]
    nodes = [
        helper.make_node("Add", ["x", "y"], ["s"], name="add_xy"),
        helper.make_node("LayerNormalization", ["s", "ln_scale", "ln_bias"], ["ln"], name="ln", epsilon=1e-4),
        helper.make_node("Add", ["A", "B"], ["W"], name="fold_me"),
        helper.make_node("MatMul", ["x", "W"], ["proj"], name="proj"),
    ]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
                       helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("ln", TensorProto.FLOAT, ["N", 8]),
         helper.make_tensor_value_info("proj", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feeds(n=4):
    return {"x": f32(n, 8), "y": f32(n, 8)}


def check_against_reference(model, feed, sess=None, rtol=1e-5, atol=1e-5):
    sess = sess or normrt.InferenceSession(model)
    got = sess.run(None, feed)
    want = ReferenceEvaluator(model).run(None, feed)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return sess


def test_get_inputs_outputs():
    sess = normrt.InferenceSession(model_two_in_two_out())
    ins, outs = sess.get_inputs(), sess.get_outputs()
    assert [(a.name, a.shape, a.type) for a in ins] == [("x", ["N", 8], "tensor(float)"),
                                                        ("y", ["N", 8], "tensor(float)")]
    assert [(a.name, a.shape, a.type) for a in outs] == [("ln", ["N", 8], "tensor(float)"),
                                                         ("proj", ["N", 3], "tensor(float)")]


def test_type_strings_and_unknown_dims():
    graph = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["d"], to=TensorProto.DOUBLE)], "g",
        [helper.make_tensor_value_info("i", TensorProto.INT64, [None, 2])],
        [helper.make_tensor_value_info("d", TensorProto.DOUBLE, ["M", 2])])
    sess = normrt.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    (i,), (d,) = sess.get_inputs(), sess.get_outputs()
    assert (i.type, i.shape) == ("tensor(int64)", [None, 2])
    assert (d.type, d.shape) == ("tensor(double)", ["M", 2])
    (out,) = sess.run(None, {"i": np.arange(6).reshape(3, 2)})
    assert out.dtype == np.float64 and out.tolist() == [[0, 1], [2, 3], [4, 5]]


def test_run_all_and_named_outputs_with_symbolic_dims():
    model = model_two_in_two_out()
    sess = normrt.InferenceSession(model)
    for n in (1, 5, 32):
        check_against_reference(model, feeds(n), sess)
    f = feeds(3)
    (proj,) = sess.run(["proj"], f)
    ln, proj2 = sess.run(["ln", "proj"], f)
    np.testing.assert_array_equal(proj, proj2)
    assert ln.shape == (3, 8)
    proj_first = sess.run(["proj", "ln"], f)
    np.testing.assert_array_equal(proj_first[0], proj)


def test_model_from_path_bytes_and_proto(tmp_path):
    model = model_two_in_two_out()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path)
    f = feeds()
    results = [normrt.InferenceSession(src).run(None, f)
               for src in (model, model.SerializeToString(), str(path), path)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_external_data(tmp_path):
    big = f32(64, 256)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("LayerNormalization", ["h", "g"], ["y"], axis=-1)], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
        [numpy_helper.from_array(big, "W"), numpy_helper.from_array(f32(256), "g")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "sub" / "model.onnx"
    path.parent.mkdir()
    saved = onnx.ModelProto()
    saved.CopyFrom(model)     # save_model moves the tensors of the proto it is given to external refs
    onnx.save_model(saved, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (path.parent / "weights.bin").stat().st_size >= big.nbytes
    assert path.stat().st_size < big.nbytes
    sess = normrt.InferenceSession(str(path))
    x = f32(5, 64)
    check_against_reference(model, {"x": x}, sess, rtol=1e-4, atol=1e-4)
    assert [k for _, k, _ in sess.kernel_nodes()] == ["LayerNorm"]


def test_num_threads():
    model = model_two_in_two_out()
    f = feeds(6)
    one = normrt.InferenceSession(model, num_threads=1).run(None, f)
    two = normrt.InferenceSession(model, num_threads=2).run(None, f)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="num_threads"):
        normrt.InferenceSession(model, num_threads=0)


def test_num_threads_is_in_force_during_run(monkeypatch):
    seen = []
    real = normrt.layer_norm

    def spy(*args, **kwargs):
        seen.append(normrt.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(normrt, "layer_norm", spy)
    normrt.InferenceSession(model_two_in_two_out(), num_threads=1).run(None, feeds())
    assert seen == [1]


def test_constant_folding_happens():
    sess = normrt.InferenceSession(model_two_in_two_out())
    ops = [n.op_type for n in sess.optimized_model.graph.node]
    assert "fold_me" not in [n.name for n in sess.optimized_model.graph.node]
    assert ops.count("Add") == 0      # A + B is folded; x + y is fused into the LayerNorm (residual)
    assert sess.report["passes"]["constant_folding"] == 1
    inits = {t.name for t in sess.optimized_model.graph.initializer}
    assert "W" in inits and not {"A", "B"} & inits


def test_intermediates_are_released():
    """A 30-node chain keeps at most a few values alive; the end holds only the outputs."""
    nodes = [helper.make_node("Relu" if i % 2 else "Neg", [f"v{i}"], [f"v{i + 1}"]) for i in range(30)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1000])],
                              [helper.make_tensor_value_info("v30", TensorProto.FLOAT, [1000])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = normrt.InferenceSession(model)
    x = f32(1000)
    check_against_reference(model, {"v0": x}, sess)
    stats = sess.executor.last_run_stats
    assert stats["peak_live_values"] <= 3
    assert stats["live_values_at_end"] == 1
    assert stats["peak_live_bytes"] <= 3 * x.nbytes
    # the plan: each value is released right after its only reader
    release = sess.executor.plan.release_after
    assert all(len(r) == 1 for r in release[1:-1])


def test_if_loop_scan_through_fallback():
    """If and Loop run their subgraphs on nested executors (control_flow.py), reading outer-scope
    values (an explicit condition: onnx.reference 1.x runs no iteration when it is omitted, where
    the specification and onnxruntime run M; test_control_flow.py checks that case)."""
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "x"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("If", ["c"], ["branch"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Loop", ["trips", "go", "branch"], ["looped"], body=body),
        helper.make_node("InstanceNormalization", ["x4", "s", "b"], ["inorm"]),
    ]
    graph = helper.make_graph(
        nodes, "sub",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("go", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("x4", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("looped", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("inorm", TensorProto.FLOAT, [2, 3, 4, 4])],
        [numpy_helper.from_array(np.array(3, np.int64), "trips"),
         numpy_helper.from_array(f32(3), "s"), numpy_helper.from_array(f32(3), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = normrt.InferenceSession(model)
    for c in (True, False):
        check_against_reference(model, {"c": np.array(c), "go": np.array(True), "x": f32(3),
                                        "x4": f32(2, 3, 4, 4)}, sess)
    kinds = {s.node.op_type: s.kind for s in sess.executor.steps}
    assert kinds["If"] == "subgraph" and kinds["Loop"] == "subgraph" and kinds["InstanceNorm"] == "kernel"


def test_model_local_functions_are_inlined():
    fn = helper.make_function(
        "custom", "NormAct", ["X", "S", "B"], ["Y"],
        [helper.make_node("LayerNormalization", ["X", "S", "B"], ["n"]), helper.make_node("Relu", ["n"], ["Y"])],
        opset_imports=[helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("NormAct", ["x", "s", "b"], ["y"], domain="custom")], "f",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        [numpy_helper.from_array(f32(5), "s"), numpy_helper.from_array(f32(5), "b")])
    model = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 17),
                                                                    helper.make_opsetid("custom", 1)])
    sess = check_against_reference(model, {"x": f32(2, 5)})
    assert [k for _, k, _ in sess.kernel_nodes()] == ["LayerNorm"]


def test_sequence_input_goes_to_reference():
    graph = helper.make_graph(
        [helper.make_node("SequenceAt", ["seq", "i"], ["t"]), helper.make_node("Identity", ["seq"], ["seq_out"])],
        "seq", [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None),
                helper.make_tensor_value_info("i", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["k"]),
         helper.make_tensor_sequence_value_info("seq_out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = normrt.InferenceSession(model)
    assert sess.get_inputs()[0].type == "seq(tensor(float))"
    seq = [f32(2), f32(3)]
    t, seq_out = sess.run(None, {"seq": seq, "i": np.array(1)})
    np.testing.assert_array_equal(t, seq[1])
    assert isinstance(seq_out, list) and len(seq_out) == 2


def test_profile_times_every_op_type():
    """profile(): {op type: seconds per run}, normrt kernels under 'normrt::<op>'; no timing thresholds."""
    model = model_two_in_two_out()
    sess = normrt.InferenceSession(model)
    prof = sess.profile(feeds(), repeat=3)
    ops = {s.node.op_type if s.kind != "kernel" else "normrt::" + s.node.op_type for s in sess.executor.steps}
    assert set(prof) == ops
    assert "normrt::LayerNorm" in prof and "MatMul" in prof    # x + y is fused into the LayerNorm
    assert all(isinstance(v, float) and v >= 0 for v in prof.values())
    # profiling runs the model like run(): later runs are unaffected
    check_against_reference(model, feeds(), sess, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="repeat"):
        sess.profile(feeds(), repeat=0)
    with pytest.raises(ValueError, match="missing"):
        sess.profile({"x": f32(4, 8)})


def test_profile_nodes_times_every_node_run_by_run():
    """profile_nodes(): one row per executed node, in plan order, with the shapes the values had
    (checked against the outputs of run) and one time per run; no timing thresholds."""
    model = model_two_in_two_out()
    sess = normrt.InferenceSession(model)
    rows = sess.profile_nodes(feeds(), repeat=3)
    steps = sess.executor.steps
    assert [r.name for r in rows] == [s.node.name for s in steps]
    assert all(len(r.seconds) == 3 and all(t >= 0 for t in r.seconds) for r in rows)
    outs = dict(zip(sess.executor.output_names, sess.run(None, feeds())))
    given = {k: v.shape for k, v in feeds().items()}
    for row, step in zip(rows, steps):
        for name, shape in zip(step.outputs, row.output_shapes):
            if name in outs:
                assert shape == outs[name].shape
        for name, shape in zip(step.inputs, row.input_shapes):
            if name in given:
                assert shape == given[name]
    with pytest.raises(ValueError, match="repeat"):
        sess.profile_nodes(feeds(), repeat=0)


def test_in_place_hints_respect_views_and_outputs():
    """Ops may write into an input nobody reads later - never into a graph input, an
    initializer, a graph output, nor memory a live view (Reshape) still shows."""
    nodes = [
        helper.make_node("Neg", ["x"], ["a"]),                 # a: fresh
        helper.make_node("Reshape", ["a", "shape"], ["r"]),    # r: a view of a
        helper.make_node("Relu", ["a"], ["b"]),                # a still seen through r: not in place
        helper.make_node("Sigmoid", ["b"], ["c"]),             # b dies here: in place
        helper.make_node("Add", ["c", "r2"], ["d"]),           # c dies: in place
        helper.make_node("Reshape", ["r", "shape2"], ["r2"]),  # r2: another view of a
        helper.make_node("Mul", ["d", "w"], ["y"]),            # w is an initializer
        helper.make_node("Relu", ["y"], ["z"]),                # y is a graph output: not in place
    ]
    # topological order: r2 before Add
    nodes = nodes[:4] + [nodes[5], nodes[4]] + nodes[6:]
    inits = [numpy_helper.from_array(np.array([12], np.int64), "shape"),
             numpy_helper.from_array(np.array([3, 4], np.int64), "shape2"),
             numpy_helper.from_array(f32(3, 4), "w")]
    graph = helper.make_graph(nodes, "alias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [3, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # the executor on the graph as written (a session would fuse Relu..Mul into one node)
    ex = Executor(model)
    dead = {s.node.output[0]: getattr(s.run, "dead", ()) for s in ex.steps}
    assert dead["a"] == ()            # reads the graph input
    assert dead["b"] == ()            # a is still visible through r/r2
    assert dead["c"] == (0,)
    assert dead["d"] == (0, 1) or dead["d"] == (0,)
    assert dead["z"] == ()            # y is returned to the caller
    x = f32(3, 4)
    x_copy = x.copy()
    want = ReferenceEvaluator(model).run(None, {"x": x})
    for _ in range(2):
        for g, w in zip(ex.run({"x": x}), want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(x, x_copy)   # the caller's input is never written


def test_shapes_that_never_come_back_stop_being_specialized():
    """A generation loop's shapes never repeat: after MAX_UNUSED_SPECIALIZED plans none of which ran
    again, new shapes run the generic plan (no tracing per step), and one that comes back gets its
    plan; once a shape recurs, shapes are specialized up to MAX_SPECIALIZED. Outputs the same
    either way."""
    from normrt.onnx import executor as ex
    model = model_two_in_two_out()
    sess = normrt.InferenceSession(model)
    for n in range(1, 7):
        check_against_reference(model, feeds(n), sess)
    assert len(sess.executor.specialized) == ex.MAX_UNUSED_SPECIALIZED
    sess.run(None, feeds(6))                      # shape 6 again (it ran without a plan): planned now
    assert len(sess.executor.specialized) == ex.MAX_UNUSED_SPECIALIZED + 1
    sess.run(None, feeds(1))                      # shape 1 again: its plan is reused
    for n in range(7, 11):
        check_against_reference(model, feeds(n), sess)
    assert len(sess.executor.specialized) == ex.MAX_SPECIALIZED
