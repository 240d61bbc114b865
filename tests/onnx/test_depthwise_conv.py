"""Depthwise Conv on the small_conv kernel against onnx.reference, generated shapes."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 9), mult=st.integers(1, 3), kh=st.integers(1, 7), kw=st.integers(1, 7),
       sh=st.integers(1, 3), sw=st.integers(1, 3), dil=st.integers(1, 2), pads=st.lists(st.integers(0, 3), min_size=4,
                                                                                          max_size=4),
       h=st.integers(1, 12), w=st.integers(1, 12), batch=st.integers(1, 2), bias=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_depthwise_conv_matches_reference_and_threads(c, mult, kh, kw, sh, sw, dil, pads, h, w, batch, bias, seed):
    oh = (h + pads[0] + pads[2] - dil * (kh - 1) - 1) // sh + 1
    ow = (w + pads[1] + pads[3] - dil * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1 or c < 2:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c * mult, 1, kh, kw)).astype(np.float32)
    inits = [numpy_helper.from_array(wt, "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c * mult).astype(np.float32), "b"))
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], group=c, strides=[sh, sw],
                            pads=pads, dilations=[dil, dil])
    graph = helper.make_graph([node], "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m", "oh", "ow"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    sess = normrt.InferenceSession(model)
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    one = normrt.InferenceSession(model, num_threads=1).run(None, {"x": x})[0]
    assert np.array_equal(got, one)


@settings(max_examples=40, deadline=None)
@given(groups=st.integers(1, 4), cg=st.integers(1, 10), mg=st.integers(1, 3), k=st.integers(1, 12),
       s=st.integers(1, 5), dil=st.integers(1, 2), pads=st.lists(st.integers(0, 6), min_size=2, max_size=2),
       length=st.integers(1, 80), batch=st.integers(1, 2), bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_conv1d_matches_reference(groups, cg, mg, k, s, dil, pads, length, batch, bias, seed):
    """1-D Conv (run as 2-D with one row: few channels per group on small_conv, the rest on the GEMM)."""
    if (length + sum(pads) - dil * (k - 1) - 1) // s + 1 < 1:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, groups * cg, length)).astype(np.float32)
    wt = rng.standard_normal((groups * mg, cg, k)).astype(np.float32)
    inits = [numpy_helper.from_array(wt, "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(groups * mg).astype(np.float32), "b"))
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], group=groups, strides=[s],
                            pads=pads, dilations=[dil])
    graph = helper.make_graph([node], "c1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m", "l"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = normrt.InferenceSession(model).run(None, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(one_d=st.booleans(), c=st.sampled_from([4, 8, 12]), k=st.integers(1, 7), s=st.integers(1, 3),
       batches=st.lists(st.integers(1, 3), min_size=2, max_size=3), size=st.integers(7, 20),
       seed=st.integers(0, 2 ** 16))
def test_conv_chain_specialized_plan_bitwise_generic(one_d, c, k, s, batches, size, seed):
    """Depthwise -> grouped (2 channels per group) -> dense Conv, 1-D or 2-D: the specialized plan's direct
    kernel calls give bitwise the generic plan's results, for each new batch size too."""
    rng = np.random.default_rng(seed)
    sp = [size] if one_d else [size, size]
    ks = [k] * len(sp)
    convs = [("dw", c, 1, c), ("grouped", c, 2, c // 2), ("dense", c, c, 1)]
    nodes, inits, cur = [], [], "x"
    for name, m, cg, group in convs:
        inits.append(numpy_helper.from_array(rng.standard_normal([m, cg] + ks).astype(np.float32), f"w_{name}"))
        inits.append(numpy_helper.from_array(rng.standard_normal(m).astype(np.float32), f"b_{name}"))
        nodes.append(helper.make_node("Conv", [cur, f"w_{name}", f"b_{name}"], [name], group=group,
                                      strides=[s] * len(sp) if name == "dw" else [1] * len(sp),
                                      pads=[k // 2] * (2 * len(sp))))
        cur = name
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", c] + sp)],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["b", c] + ["o"] * len(sp))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ref = ReferenceEvaluator(model)
    sess = normrt.InferenceSession(model)
    for b in batches:
        x = rng.standard_normal([b, c] + sp).astype(np.float32)
        generic = sess.executor.run({"x": x}, specialize=False)[0]
        traced = sess.run(None, {"x": x})[0]
        special = sess.run(None, {"x": x})[0]
        assert np.array_equal(generic, traced) and np.array_equal(generic, special)
        want = ref.run(None, {"x": x})[0]
        # three float32 convs in a row: errors relative to the output's scale
        np.testing.assert_allclose(special, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    assert len(sess.executor.specialized) == len(set(batches))
