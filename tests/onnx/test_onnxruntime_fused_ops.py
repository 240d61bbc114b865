"""onnxruntime's fused ops as its optimizer saves them (passes/onnxruntime_fused_ops.py): Skip /
Simplified LayerNormalization on normrt's norm kernels, BiasGelu / Gelu / FastGelu / QuickGelu as
their definitions' programs; against onnxruntime (which defines them) on generated shapes, a
chain of them whose types only appear once each is rewritten, and the refusal."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import helper, numpy_helper

import normrt

from graph_builder import vi
from ort_contrib import MS, assert_matches_onnxruntime, contrib_model as model


def check(m, feeds, ort_cpu_run, atol=2e-5):
    return assert_matches_onnxruntime(m, feeds, ort_cpu_run, atol=atol)[0]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"]),
       st.integers(1, 3), st.integers(1, 9), st.sampled_from([8, 33, 64, 768]), st.booleans(), st.booleans(),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_skip_norms_run_on_the_norm_kernels(ort_cpu_run, op, batch, seq, hidden, with_beta, with_bias, with_sum,
                                            seed):
    rng = np.random.default_rng(seed)
    layer = op == "SkipLayerNormalization"
    shape = [batch, seq, hidden]
    inits = [numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "gamma")]
    ins = ["x", "skip", "gamma"]
    if layer:
        ins.append("beta" if with_beta else "")
        if with_beta:
            inits.append(numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "beta"))
    if with_bias:
        ins.append("bias")
        inits.append(numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "bias"))
    outs = ["y"] + (["", "", "sum"] if with_sum else [])
    node = helper.make_node(op, ins, outs, name="n", domain=MS, epsilon=1e-5)
    m = model([node], [vi("x", shape), vi("skip", shape)],
              [vi("y", shape)] + ([vi("sum", shape)] if with_sum else []), inits)
    feeds = {"x": (rng.standard_normal(shape) * 3 + 1).astype(np.float32),
             "skip": rng.standard_normal(shape).astype(np.float32)}
    ops = check(m, feeds, ort_cpu_run)
    assert ("LayerNorm" if layer else "RMSNorm") in ops


def test_simplified_layer_norm_in_the_standard_domain(ort_cpu_run):
    """onnxruntime registers SimplifiedLayerNormalization in the standard domain, where the checker
    does not know it: the model loads, and the node runs as normrt::RMSNorm."""
    rng = np.random.default_rng(1)
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y"], name="n", axis=-1, epsilon=1e-6)
    m = model([node], [vi("x", [2, 5, 48])], [vi("y", [2, 5, 48])],
              [numpy_helper.from_array(rng.standard_normal(48).astype(np.float32), "scale")])
    assert "RMSNorm" in check(m, {"x": rng.standard_normal((2, 5, 48)).astype(np.float32)}, ort_cpu_run)


@pytest.mark.parametrize("op, with_bias, attrs", [("BiasGelu", True, {}), ("Gelu", False, {}),
                                                  ("FastGelu", True, {}), ("FastGelu", False, {}),
                                                  ("QuickGelu", False, {"alpha": 1.702})])
def test_gelus_are_their_definitions(ort_cpu_run, op, with_bias, attrs):
    rng = np.random.default_rng(2)
    ins, inits = ["x"], []
    if with_bias:
        ins.append("b")
        inits.append(numpy_helper.from_array(rng.standard_normal(40).astype(np.float32), "b"))
    node = helper.make_node(op, ins, ["y"], name="n", domain=MS, **attrs)
    m = model([node], [vi("x", [3, 7, 40])], [vi("y", [3, 7, 40])], inits)
    x = (rng.standard_normal((3, 7, 40)) * 4).astype(np.float32)
    x[0, 0, :4] = [0.0, -0.0, 30.0, -30.0]
    check(m, {"x": x}, ort_cpu_run, atol=1e-5)


@pytest.mark.parametrize("gelu", ["BiasGelu", "Gelu"])
def test_a_chain_of_them_types_through_and_fuses(ort_cpu_run, gelu):
    """Embeddings -> SkipLayerNormalization -> MatMul -> BiasGelu -> MatMul -> SkipLayerNormalization,
    as onnxruntime's optimizer saves a BERT layer: shape inference knows nothing past the first
    contrib op until it is rewritten; then the products take their epilogues."""
    rng = np.random.default_rng(4)
    h, f = 32, 64

    def const(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
    inits = [const(n, h) for n in ("g1", "b1", "g2", "b2", "bias2")] + [const("w1", h, f), const("bf", f),
                                                                        const("w2", f, h)]
    nodes = [helper.make_node("SkipLayerNormalization", ["x", "pos", "g1", "b1"], ["n1"], name="sln1", domain=MS,
                              epsilon=1e-12),
             helper.make_node("MatMul", ["n1", "w1"], ["m1"], name="mm1"),
             *([helper.make_node("BiasGelu", ["m1", "bf"], ["a1"], name="gelu", domain=MS)] if gelu == "BiasGelu" else
               # a Gelu whose input's type is known only once the norm before it is rewritten
               [helper.make_node("Add", ["m1", "bf"], ["m1b"], name="bias"),
                helper.make_node("Gelu", ["m1b"], ["a1"], name="gelu", domain=MS)]),
             helper.make_node("MatMul", ["a1", "w2"], ["m2"], name="mm2"),
             helper.make_node("SkipLayerNormalization", ["m2", "n1", "g2", "b2", "bias2"], ["y"], name="sln2",
                              domain=MS, epsilon=1e-12)]
    m = model(nodes, [vi("x", [1, 6, h]), vi("pos", [1, 6, h])], [vi("y", None)], inits)
    feeds = {"x": rng.standard_normal((1, 6, h)).astype(np.float32),
             "pos": rng.standard_normal((1, 6, h)).astype(np.float32)}
    ops = check(m, feeds, ort_cpu_run)
    assert ops <= {"LayerNorm", "MatMul", "Add"}, ops       # GELU and biases in the products' epilogues


def test_mean_output_read_is_refused():
    rng = np.random.default_rng(0)
    node = helper.make_node("SkipLayerNormalization", ["x", "skip", "g"], ["y", "mean"], name="n", domain=MS)
    m = model([node], [vi("x", [1, 2, 8]), vi("skip", [1, 2, 8])], [vi("y", None), vi("mean", None)],
              [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "g")])
    # the load error names the node and says why the rewrite refused it
    with pytest.raises(NotImplementedError, match="'n'.*onnxruntime_fused_ops pass refused it: output 1"):
        normrt.InferenceSession(m.SerializeToString())
    _, report = normrt.optimize(m, report=True)
    assert any(r["pass"] == "onnxruntime_fused_ops" and "output 1" in r["reason"] for r in report["refused"])
