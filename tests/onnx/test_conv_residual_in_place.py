"""A fused conv's residual buffer reused as its output (the executor's in-place hint).

    r = Relu(Conv0(x))                       ResNet's bottleneck: the residual r is
    y = Relu(Conv2(Relu(Conv1(r))) + r)      read by Conv1 and by the add fused
                                             into Conv2, which is its last reader

After ConvEpilogue the add is Conv2's residual input; nothing reads r after it,
so the specialized plan writes y into r's buffer. It must not when r is a graph
output, a graph input (the caller's array) or read by a later node.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import normrt

C, H = 16, 10


def _block_model(residual_output=False, residual_input=False, read_after=False, seed=0):
    rng = np.random.default_rng(seed)
    inits = []

    def conv(name, src, dst, cin, cout, k):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32), name + "_w"))
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), name + "_b"))
        return helper.make_node("Conv", [src, name + "_w", name + "_b"], [dst], name=name,
                                pads=[k // 2] * 4)

    nodes, inputs = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, H])]
    if residual_input:
        r = "x"
    else:
        nodes += [conv("conv0", "x", "c0", C, C, 3), helper.make_node("Relu", ["c0"], ["r"], name="relu0")]
        r = "r"
    nodes += [conv("conv1", r, "c1", C, C, 1), helper.make_node("Relu", ["c1"], ["a1"], name="relu1"),
              conv("conv2", "a1", "c2", C, C, 3), helper.make_node("Add", ["c2", r], ["s"], name="add"),
              helper.make_node("Relu", ["s"], ["y"], name="relu2")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, H, H])]
    if residual_output:
        outputs.append(helper.make_tensor_value_info(r, TensorProto.FLOAT, [1, C, H, H]))
    if read_after:
        nodes.append(helper.make_node("Mul", ["y", r], ["z"], name="mul_after"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, C, H, H]))
    graph = helper.make_graph(nodes, "block", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _plan_sources(sess):
    return "".join(p.source for p in sess._executor.specialized.values())


@pytest.mark.parametrize("variant", [{}, {"residual_output": True}, {"residual_input": True},
                                     {"read_after": True}])
@pytest.mark.parametrize("threads", [1, 2])
def test_residual_buffer_reused_only_when_dead(variant, threads, ort_cpu_run):
    model = _block_model(**variant)
    sess = normrt.InferenceSession(model, num_threads=threads)
    x = np.random.default_rng(1).standard_normal((1, C, H, H)).astype(np.float32)
    x_before = x.copy()
    want = ort_cpu_run(model, {"x": x})
    first = sess.run(None, {"x": x})
    second = sess.run(None, {"x": x})        # the specialized plan's buffers, reused
    third = sess.run(None, {"x": x})
    for got in (first, second, third):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)
    for a, b in zip(first, third):            # results handed out earlier stay as they were
        assert np.array_equal(a, b)
    assert np.array_equal(x, x_before)        # the caller's input is never written
    # the fused conv writes into its residual only when nothing else reads it
    in_place = "_residual_or_new" in _plan_sources(sess)
    assert in_place == (not variant), _plan_sources(sess)
