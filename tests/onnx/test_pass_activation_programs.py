"""activation_programs: an elementwise program computing GELU (either form, any spelling) right
after a normrt MatMul, Conv or norm becomes that kernel's activation epilogue; look-alikes and
programs whose input is needed elsewhere stay programs. Oracle: onnxruntime on the original model."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import normrt
from graph_builder import gelu_nodes

mk = helper.make_node


def host_nodes(host, rng):
    """(nodes writing 'x' from graph input 'a', initializers, a's shape)."""
    init = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)   # noqa: E731
    if host == "matmul":
        return [mk("MatMul", ["a", "w"], ["hp"], name="host"), mk("Add", ["hp", "b"], ["x"], name="bias")], \
            [init("w", rng.standard_normal((12, 20)) * 0.6), init("b", rng.standard_normal(20))], (2, 5, 12)
    if host == "conv":
        return [mk("Conv", ["a", "w", "b"], ["x"], name="host", pads=[1] * 4)], \
            [init("w", rng.standard_normal((6, 3, 3, 3)) * 0.5), init("b", rng.standard_normal(6))], (1, 3, 7, 9)
    return [mk("LayerNormalization", ["a", "ln_s", "ln_b"], ["x"], name="host", axis=-1)], \
        [init("ln_s", 1 + rng.standard_normal(33)), init("ln_b", rng.standard_normal(33))], (3, 4, 33)


def build(host, form, order, cube, scale_by_div, seed, extra_reader=False, **change):
    rng = np.random.default_rng(seed)
    h_nodes, h_inits, shape = host_nodes(host, rng)
    g_nodes, g_inits = gelu_nodes(form, order, cube, scale_by_div, **change)
    nodes = h_nodes + g_nodes
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(mk("Neg", ["x"], ["x_neg"], name="other"))
        outputs.append(helper.make_tensor_value_info("x_neg", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "gelu_after", [helper.make_tensor_value_info("a", TensorProto.FLOAT, shape)],
                              outputs, h_inits + g_inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, {"a": (rng.standard_normal(shape) * 2).astype(np.float32)}


def activations(sess):
    return {n.name: a.s.decode() for n in sess.optimized_model.graph.node if n.domain == "normrt"
            for a in n.attribute if a.name == "activation" and a.s}


@settings(max_examples=40, deadline=None)
@given(host=st.sampled_from(["matmul", "conv", "layernorm"]), form=st.sampled_from(["erf", "tanh"]),
       order=st.integers(0, 2), cube=st.sampled_from(["pow", "mul", "sq"]), scale_by_div=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_gelu_programs_become_the_epilogue(ort_cpu_run, host, form, order, cube, scale_by_div, seed):
    model, feeds = build(host, form, order, cube, scale_by_div, seed)
    sess = normrt.InferenceSession(model)
    got = sess.run(None, feeds)[0]
    want = ort_cpu_run(model.SerializeToString(), feeds)[0]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert "Elementwise" not in {n.op_type for n in sess.optimized_model.graph.node}
    assert list(activations(sess).values()) == ["gelu" if form == "erf" else "gelu_tanh"]
    # the specialized plan and the generic run agree bitwise
    assert np.array_equal(sess.run(None, feeds)[0], sess.executor.run(feeds, specialize=False)[0])


@pytest.mark.parametrize("change", [dict(k=0.0447), dict(s=0.8), dict(half=0.49)])
def test_look_alikes_stay_programs(ort_cpu_run, change):
    model, feeds = build("matmul", "tanh", 0, "pow", False, 3, **change)
    sess = normrt.InferenceSession(model)
    np.testing.assert_allclose(sess.run(None, feeds)[0], ort_cpu_run(model.SerializeToString(), feeds)[0],
                               rtol=2e-5, atol=2e-5)
    assert "Elementwise" in {n.op_type for n in sess.optimized_model.graph.node}
    assert not activations(sess)


def test_input_read_elsewhere_stays_a_program(ort_cpu_run):
    model, feeds = build("layernorm", "tanh", 1, "mul", False, 5, extra_reader=True)
    sess = normrt.InferenceSession(model)
    for g, w in zip(sess.run(None, feeds), ort_cpu_run(model.SerializeToString(), feeds)):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)
    assert "Elementwise" in {n.op_type for n in sess.optimized_model.graph.node}
    assert not activations(sess)


def test_report_names_the_fused_nodes():
    model, _ = build("matmul", "tanh", 0, "pow", False, 7)
    sess = normrt.InferenceSession(model)
    (entry,) = [e for e in sess.report["fused"] if e.get("activation") == "gelu_tanh"]
    assert entry["normrt_op"] == "MatMul" and "GELU(tanh)" in entry["pattern"]
    assert "host" in entry["nodes"] and len(entry["nodes"]) > 5


def test_a_constant_of_higher_rank_keeps_the_program(ort_cpu_run):
    # GELU whose 0.5 is a (1, 1, 1, 1) constant: the program's output has rank 4 where the
    # LayerNorm's has 3, so it is not the LayerNorm's epilogue
    model, feeds = build("layernorm", "tanh", 0, "pow", False, 11)
    for init in model.graph.initializer:
        if init.name == "half":
            init.CopyFrom(numpy_helper.from_array(np.full((1, 1, 1, 1), 0.5, np.float32), "half"))
    sess = normrt.InferenceSession(model)
    got = sess.run(None, feeds)[0]
    want = ort_cpu_run(model.SerializeToString(), feeds)[0]
    assert got.shape == want.shape == (1, 3, 4, 33)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert not activations(sess)
