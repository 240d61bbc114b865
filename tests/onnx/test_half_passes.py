"""The rewrite passes on float16 / bfloat16 graphs: the standard norm ops, the semantic and
exporter-pattern fusions (their constants, eps and exponents in half) become half kernel nodes
matching the float64 twin of the model; under half_compute="per_op" the weight-folding passes
refuse half (folding would round the products into half weights once more than the model does),
under the default "float32" they fold into the region's widened float32 weights."""
import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import normrt
from dtype_checks import assert_close_in_dtype
from half_models import assert_matches_float64, norm_nodes, statistics_left

F, H, BF = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16
NP = {F: np.float32, H: np.float16, BF: ml_dtypes.bfloat16, TensorProto.INT64: np.int64}
HALVES = pytest.mark.parametrize("half", [H, BF], ids=["float16", "bfloat16"])
RNG = np.random.default_rng(5)


def model_of(nodes, inputs, outputs, inits, opset=18):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
                              [numpy_helper.from_array(np.asarray(v).astype(NP[t]), n) for n, t, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feed(shape, half, scale=2.0, shift=0.5):
    return (RNG.standard_normal(shape) * scale + shift).astype(NP[half])


def run(model, feeds):
    sess = normrt.InferenceSession(model)
    return sess, sess.run(None, feeds)


@HALVES
@pytest.mark.parametrize("op,shape,attrs,n_params", [
    ("LayerNormalization", (2, 5, 16), {"axis": -1}, 2),
    ("RMSNormalization", (2, 5, 16), {"axis": -1}, 1),
    ("InstanceNormalization", (2, 6, 4, 4), {}, 2),
    ("GroupNormalization", (2, 6, 4, 4), {"num_groups": 3}, 2),
    ("BatchNormalization", (2, 6, 4, 4), {}, 4),
    ("MeanVarianceNormalization", (2, 6, 4, 4), {}, 0),
    ("LpNormalization", (3, 16), {"axis": -1, "p": 2}, 0),
    ("LRN", (2, 6, 4, 4), {"size": 3}, 0),
])
def test_standard_ops_run_on_half_kernels(half, op, shape, attrs, n_params):
    C = shape[-1] if op in ("LayerNormalization", "RMSNormalization") else shape[1]
    values = [1 + 0.3 * RNG.standard_normal(C), 0.5 * RNG.standard_normal(C),
              0.2 * RNG.standard_normal(C), RNG.uniform(0.5, 2.0, C)][:n_params]
    names = [f"p{i}" for i in range(n_params)]
    model = model_of([helper.make_node(op, ["x"] + names, ["y"], name="norm", **attrs)],
                     [("x", half, list(shape))], [("y", half, list(shape))],
                     [(n, half, v) for n, v in zip(names, values)], opset=23)
    x = feed(shape, half)
    sess, got = run(model, {"x": x})
    assert len(norm_nodes(sess.optimized_model)) == 1 and not sess.report["refused"]
    assert got[0].dtype == NP[half]
    if op == "MeanVarianceNormalization":
        # onnx.reference's MVN function body carries a float32 constant: no float64 twin
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=(0, 2, 3), keepdims=True)
        ref = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True) + 1e-9)
        assert_close_in_dtype(got[0], ref, NP[half])
        return
    assert_matches_float64(got, model, {"x": x}, ulps=1)


@HALVES
def test_batch_norm_with_float32_parameters(half):
    """BatchNormalization-15 takes T1/T2 parameters apart from X's T: float32 ones with half X."""
    shape = (2, 6, 3, 3)
    params = [("s", F, 1 + 0.3 * RNG.standard_normal(6)), ("b", F, RNG.standard_normal(6)),
              ("m", F, RNG.standard_normal(6)), ("v", F, RNG.uniform(0.5, 2, 6))]
    model = model_of([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")],
                     [("x", half, list(shape))], [("y", half, list(shape))], params, opset=15)
    x = feed(shape, half)
    sess, got = run(model, {"x": x})
    assert norm_nodes(sess.optimized_model) == ["BatchNorm"]
    assert_matches_float64(got, model, {"x": x})


@HALVES
@pytest.mark.parametrize("form", ["legacy", "dynamo"])
def test_erf_gelu_after_a_half_layer_norm(half, form):
    """GELU's constants sqrt(2), 1, 0.5 rounded to half still read as GELU's."""
    shape = (2, 4, 16)
    nodes = [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], name="ln"),
             helper.make_node("Div", ["y", "sqrt2"], ["d"], name="div"),
             helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["p"], name="add")]
    if form == "legacy":
        nodes += [helper.make_node("Mul", ["y", "p"], ["q"], name="mul"),
                  helper.make_node("Mul", ["q", "half"], ["out"], name="mul_half")]
    else:
        nodes += [helper.make_node("Mul", ["half", "p"], ["q"], name="mul_half"),
                  helper.make_node("Mul", ["y", "q"], ["out"], name="mul")]
    inits = [("s", half, 1 + 0.3 * RNG.standard_normal(16)), ("b", half, RNG.standard_normal(16)),
             ("sqrt2", half, np.sqrt(2.0)), ("one", half, 1.0), ("half", half, 0.5)]
    model = model_of(nodes, [("x", half, list(shape))], [("out", half, list(shape))], inits)
    x = feed(shape, half)
    sess, got = run(model, {"x": x})
    assert [n.op_type for n in sess.optimized_model.graph.node] == ["LayerNorm"]
    assert sess.report["fused"][0]["activation"] == "gelu"
    # the model rounds y to half before the GELU: one rounding on the output's scale
    assert_matches_float64(got, model, {"x": x}, ulps=2, f32_rel=2.0 ** -8 if half == H else 2.0 ** -5)


@HALVES
def test_conditional_instance_norm_in_half(half):
    """InstanceNorm(no affine) * gamma[n, c] + beta[n, c], all in half -> one half InstanceNorm."""
    shape = (2, 4, 5, 5)
    nodes = [helper.make_node("InstanceNormalization", ["x", "ones", "zeros"], ["n"], name="in"),
             helper.make_node("Unsqueeze", ["g", "ax"], ["g4"], name="ug"),
             helper.make_node("Unsqueeze", ["bt", "ax"], ["b4"], name="ub"),
             helper.make_node("Mul", ["n", "g4"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "b4"], ["y"], name="add")]
    model = model_of(nodes, [("x", half, list(shape)), ("g", half, [2, 4]), ("bt", half, [2, 4])],
                     [("y", half, list(shape))],
                     [("ones", half, np.ones(4)), ("zeros", half, np.zeros(4)),
                      ("ax", TensorProto.INT64, np.array([2, 3]))])
    feeds = {"x": feed(shape, half), "g": feed((2, 4), half, 0.5, 1.0), "bt": feed((2, 4), half, 0.5, 0.0)}
    sess, got = run(model, feeds)
    assert norm_nodes(sess.optimized_model) == ["InstanceNorm"] and not statistics_left(sess.optimized_model)
    assert "Mul" not in [n.op_type for n in sess.optimized_model.graph.node]
    assert_matches_float64(got, model, feeds, ulps=2)


@HALVES
def test_cast_like_weights_fold(half):
    """The dynamo exporter's bfloat16 norms apply their weights as Mul(y, CastLike(w, y)): the
    CastLike of a constant folds (constant_folding), whatever y's values."""
    shape = (2, 4, 8)
    nodes = [helper.make_node("LayerNormalization", ["x", "ones", "zeros"], ["n"], name="ln"),
             helper.make_node("CastLike", ["w", "n"], ["wc"], name="cast_w"),
             helper.make_node("Mul", ["n", "wc"], ["y"], name="mul")]
    model = model_of(nodes, [("x", half, list(shape))], [("y", half, list(shape))],
                     [("ones", half, np.ones(8)), ("zeros", half, np.zeros(8)),
                      ("w", F, 1 + 0.3 * RNG.standard_normal(8))], opset=21)
    x = feed(shape, half)
    sess, got = run(model, {"x": x})
    assert sess.report["passes"]["constant_folding"] >= 1
    assert "CastLike" not in [n.op_type for n in sess.optimized_model.graph.node]
    assert_matches_float64(got, model, {"x": x}, ulps=2)


def _conv_bn_mul(half):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Mul", ["n", "k"], ["y"], name="mul")]
    return model_of(nodes, [("x", half, [1, 3, 5, 5])], [("y", half, [1, 4, 3, 3])],
                    [("W", half, 0.3 * RNG.standard_normal((4, 3, 3, 3))), ("s", half, np.ones(4) * 1.5),
                     ("b", half, np.zeros(4) + 0.25), ("m", half, np.zeros(4) + 0.1), ("v", half, np.ones(4)),
                     ("k", half, np.full((4, 1, 1), 2.0))])


@HALVES
def test_weight_folding_passes_refuse_half(half):
    """Conv -> BatchNormalization -> Mul by a per-channel constant, in half under per_op: no weights
    are refolded (fold_batch_norm, fold_channel_affine); the BN runs on its half kernel."""
    model = _conv_bn_mul(half)
    x = feed((1, 3, 5, 5), half)
    sess = normrt.InferenceSession(model, half_compute="per_op")
    got = sess.run(None, {"x": x})
    assert_matches_float64(got, model, {"x": x}, ulps=2.0)
    assert sess.report["passes"]["fold_batch_norm"] == 0 and sess.report["passes"]["fold_channel_affine"] == 0
    assert norm_nodes(sess.optimized_model) == ["BatchNorm"]
    reasons = [e["reason"] for e in sess.report["refused"] if e["pass"] in ("fold_batch_norm", "fold_channel_affine")]
    assert reasons and all("not float32/float64" in r for r in reasons), reasons


@HALVES
def test_weight_folding_passes_fold_float32_regions(half):
    """The same model under half_compute="float32" (the default): half_regions widens the Conv's
    weights to float32 once, so the BN and the Mul fold into them as in a float32 model (no half
    rounding of folded weights); one Conv between the region's two Casts, no stale refusal."""
    model = _conv_bn_mul(half)
    x = feed((1, 3, 5, 5), half)
    sess, got = run(model, {"x": x})
    assert sess.report["passes"]["fold_batch_norm"] == 1 and sess.report["passes"]["fold_channel_affine"] == 1
    assert [n.op_type for n in sess.optimized_model.graph.node] == ["Cast", "Conv", "Cast"]
    assert not [e for e in sess.report["refused"] if e["pass"] in ("fold_batch_norm", "fold_channel_affine")]
    assert got[0].dtype == NP[half]
    assert_matches_float64(got, model, {"x": x})
