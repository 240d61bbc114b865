"""3-D Conv as 2-D convs on normrt's kernels, one per depth tap (onnx/ops/conv.py's _conv3d_float32):
generated geometries (pads, strides, dilations, groups, taps that miss every output depth) against
onnx.reference, and the same bits for any thread count."""
import numpy as np
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt


@st.composite
def geometries(draw):
    group = draw(st.sampled_from([1, 1, 2]))
    cg, mg = draw(st.integers(1, 9)), draw(st.integers(1, 5))
    k = [draw(st.integers(1, 3)) for _ in range(3)]
    strides = [draw(st.integers(1, 3)) for _ in range(3)]
    dil = [draw(st.integers(1, 2)) for _ in range(3)]
    pads = [draw(st.integers(0, 2)) for _ in range(6)]
    sp = [draw(st.integers(1, 8)) for _ in range(3)]
    out = [(s + pads[i] + pads[i + 3] - d * (kk - 1) - 1) // st_ + 1
           for i, (s, kk, st_, d) in enumerate(zip(sp, k, strides, dil))]
    return dict(group=group, cg=cg, mg=mg, k=k, strides=strides, dil=dil, pads=pads, sp=sp, out=out,
                n=draw(st.integers(1, 2)), bias=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=40, deadline=None)
@given(g=geometries())
def test_generated_3d_convs_against_onnx_reference(g):
    if min(g["out"]) < 1:
        return                                  # (no output: the model is invalid)
    rng = np.random.default_rng(g["seed"])
    c, m = g["cg"] * g["group"], g["mg"] * g["group"]
    w = rng.standard_normal((m, g["cg"], *g["k"])).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    ins = ["x", "w"]
    if g["bias"]:
        inits.append(numpy_helper.from_array(rng.standard_normal(m).astype(np.float32), "b"))
        ins.append("b")
    node = helper.make_node("Conv", ins, ["y"], strides=g["strides"], dilations=g["dil"], pads=g["pads"],
                            group=g["group"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [g["n"], c, *g["sp"]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((g["n"], c, *g["sp"])).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    sess = normrt.InferenceSession(model)
    runs = []
    for threads in (1, 2):
        with normrt.threads(threads):
            runs += [sess.run(None, {"x": x})[0] for _ in range(2)]
    assert runs[0].shape == want.shape
    np.testing.assert_allclose(runs[0], want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    for got in runs[1:]:
        assert np.array_equal(got, runs[0])
