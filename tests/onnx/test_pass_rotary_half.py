"""rotary_half: x * cos + rotate_half(x) * sin with rotate_half's Slice/Neg/Concat -> views of x's halves.
Oracle: onnx.reference on the original model; the fused form is bitwise numpy's float32 formula."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import normrt
from test_fixtures_transformer import DATA, FIXTURES
from test_pass_layer_norm_decomposed import const, feed_for as feed, make_model, run_and_compare, vi

F, D = TensorProto.FLOAT, TensorProto.DOUBLE
PASS = "rotary_half"
BIG = np.iinfo(np.int64).max


def rotated(report):
    return report["passes"].get(PASS, 0)


def rotary_model(x_shape=(1, 4, 12, 16), cs_shape=None, *, split=None, order="neg_first", swap_terms=False,
                 swap_operands=False, runtime_sin=False, runtime_cos=False, elem=F, opset=17, seed=0):
    """y = x * cos + concat(-x[..., h:], x[..., :h]) * sin, written as the TorchScript/dynamo exporters do."""
    rng = np.random.default_rng(seed)
    dtype = np.float32 if elem == F else np.float64
    dim = x_shape[-1]
    h = dim // 2 if split is None else split
    cs_shape = cs_shape or x_shape[-2:]
    inits = [const("lo_s", np.array([0])), const("lo_e", np.array([h])), const("ax", np.array([-1])),
             const("hi_s", np.array([h])), const("hi_e", np.array([BIG]))]
    inputs = [vi("x", list(x_shape), elem)]
    if runtime_cos:
        inputs.append(vi("cos", list(cs_shape), elem))
    else:
        inits.append(const("cos", rng.standard_normal(cs_shape).astype(dtype)))
    if runtime_sin:
        inputs.append(vi("sin", list(cs_shape), elem))
    else:
        inits.append(const("sin", rng.standard_normal(cs_shape).astype(dtype)))
    cat_in = ["neg", "lo"] if order == "neg_first" else ["lo", "neg"]
    xc, rs = (["cos", "x"], ["sin", "cat"]) if swap_operands else (["x", "cos"], ["cat", "sin"])
    terms = ["rot_term", "x_term"] if swap_terms else ["x_term", "rot_term"]
    nodes = [helper.make_node("Slice", ["x", "lo_s", "lo_e", "ax"], ["lo"], name="slice_lo"),
             helper.make_node("Slice", ["x", "hi_s", "hi_e", "ax"], ["hi"], name="slice_hi"),
             helper.make_node("Neg", ["hi"], ["neg"], name="neg"),
             helper.make_node("Concat", cat_in, ["cat"], name="cat", axis=-1),
             helper.make_node("Mul", xc, ["x_term"], name="mul_cos"),
             helper.make_node("Mul", rs, ["rot_term"], name="mul_sin"),
             helper.make_node("Add", terms, ["y"], name="add")]
    return make_model(nodes, inputs, [vi("y", list(x_shape), elem)], inits, opset)



def op_types(sess):
    return sorted(n.op_type for n in sess.optimized_model.graph.node)


@settings(max_examples=25, deadline=None)
@given(lead=st.sampled_from([(5,), (2, 3), (1, 4, 7)]), half=st.integers(1, 40),
       cs=st.sampled_from(["last2", "last1", "full", "column"]), swap_terms=st.booleans(),
       swap_operands=st.booleans())
def test_generated_rotations_become_views(lead, half, cs, swap_terms, swap_operands):
    x_shape = lead + (2 * half,)
    cs_shape = {"last2": x_shape[-2:], "last1": x_shape[-1:], "full": x_shape,
                "column": x_shape[:-1] + (1,)}[cs]
    model = rotary_model(x_shape, cs_shape, swap_terms=swap_terms, swap_operands=swap_operands)
    x = feed(model)
    sess, report = run_and_compare(model, x)
    assert rotated(report) == 1
    # no copy of x's halves left: the views and one elementwise kernel
    assert op_types(sess) == ["Elementwise", "Reshape", "Reshape", "Slice"]
    inits = {t.name: t for t in model.graph.initializer}
    cos, sin = (numpy_helper.to_array(inits[n]) for n in ("cos", "sin"))
    xv = x["x"]
    want = xv * cos + np.concatenate([-xv[..., half:], xv[..., :half]], axis=-1) * sin
    np.testing.assert_array_equal(sess.run(None, x)[0], want)


def test_thread_counts_give_identical_results():
    model = rotary_model((2, 8, 128, 64))
    x = feed(model)
    sess = normrt.InferenceSession(model)
    assert rotated(sess.report) == 1
    with normrt.threads(1):
        one = sess.run(None, x)[0]
    with normrt.threads(2):
        two = sess.run(None, x)[0]
    np.testing.assert_array_equal(one, two)


@settings(max_examples=25, deadline=None)
@given(lead=st.sampled_from([(5,), (2, 3), (1, 4, 7)]), half=st.integers(1, 40),
       cs=st.sampled_from(["last2", "full", "lead1"]), runtime=st.sampled_from(["sin", "both"]),
       symbolic=st.booleans(), seed=st.integers(0, 99))
def test_runtime_cos_sin_and_symbolic_dims_become_views(lead, half, cs, runtime, symbolic, seed):
    """A dynamic-axes export computes cos/sin from the positions at run time and leaves x's
    leading axes symbolic: the same views, bitwise numpy's float32 formula."""
    x_shape = lead + (2 * half,)
    cs_shape = {"last2": x_shape[-2:], "full": x_shape, "lead1": (1,) * (len(lead) - 1) + x_shape[-2:]}[cs]
    model = rotary_model(x_shape, cs_shape, runtime_sin=True, runtime_cos=runtime == "both", seed=seed)
    if symbolic:
        for v in model.graph.input[:1] + list(model.graph.output):
            for axis in range(len(lead)):
                v.type.tensor_type.shape.dim[axis].dim_param = f"d{axis}"
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32),
             "sin": rng.standard_normal(cs_shape).astype(np.float32)}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    feeds["cos"] = inits["cos"] if "cos" in inits else rng.standard_normal(cs_shape).astype(np.float32)
    if "cos" in inits:
        del feeds["cos"]
    sess = normrt.InferenceSession(model)
    assert rotated(sess.report) == 1
    assert "Concat" not in op_types(sess)
    cos = inits["cos"] if "cos" in inits else feeds["cos"]
    xv, sin = feeds["x"], feeds["sin"]
    want = xv * cos + np.concatenate([-xv[..., half:], xv[..., :half]], axis=-1) * sin
    for _ in range(2):              # traced, then the specialized plan
        np.testing.assert_array_equal(sess.run(None, feeds)[0], want)


@pytest.mark.parametrize("kwargs", [dict(order="lo_first"), dict(split=5),
                                    dict(elem=D), dict(x_shape=(1, 4, 12, 15), split=7)],
                         ids=["concat_order", "uneven_split", "float64", "odd_dim"])
def test_refused_forms_stay(kwargs):
    model = rotary_model(**kwargs)
    sess, report = run_and_compare(model, feed(model), atol=1e-9 if kwargs.get("elem") == D else 1e-5)
    assert rotated(report) == 0
    assert "Concat" in op_types(sess)


@pytest.mark.parametrize("entry", [e for e in FIXTURES if e["name"] == "hf_llama"], ids=lambda e: e["file"])
def test_exporter_fixtures_rotate_queries_and_keys(entry):
    # per exporter form (TorchScript 17, dynamo 18/23): Q and K in both layers; outputs vs
    # torch: test_fixture_models
    _, report = normrt.optimize(str(DATA / entry["file"]), report=True)
    assert rotated(report) == 4
