"""attention_decomposed on a masked_fill of the scores: Where(cond, fill, S) / Where(cond, S, fill),
with or without a mask Add inside or outside it (nanoGPT's `att.masked_fill(mask == 0, -inf)`,
GPT-2's `torch.where(causal, S, finfo.min) + attention_mask`, the annotated transformer's -1e9).

Generated variants; the oracle is onnx.reference on the original model (in the model's own float
type, so S + finfo.min rounds to finfo.min as in torch), and the rule of which fills the pass may
take is restated here from the arithmetic, not read from the pass.
"""
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import const, vi

PASS = "attention_decomposed"
B, H, SQ, SKV, DH = 2, 2, 6, 9, 8
MIN32 = float(np.finfo(np.float32).min)


def masked_fill_model(fill, keep, add, cond_kind, elem, seed, skv=SKV):
    """Q (B, H, SQ, DH) @ K^T * 0.35 -> Where(cond, fill, S) (keep=2) or Where(cond, S, fill)
    (keep=1), a mask (SQ, skv) added inside the Where, outside it or not at all -> Softmax -> @ V.
    cond_kind: 'causal' (a constant lower triangle), 'const' (a random constant with one row
    masked throughout) or 'input' (a run-time bool input)."""
    rng = np.random.default_rng(seed)
    dtype = np.float32 if elem == TensorProto.FLOAT else np.float16
    ins = [vi("Q", [B, H, SQ, DH], elem), vi("K", [B, H, skv, DH], elem), vi("V", [B, H, skv, DH], elem)]
    inits = [const("c", np.array(0.35, dtype)), const("fill", np.array(fill, dtype))]
    nodes = [helper.make_node("Transpose", ["K"], ["Kt"], name="kt", perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["Q", "Kt"], ["S"], name="qk"),
             helper.make_node("Mul", ["S", "c"], ["scaled"], name="scale")]
    visible = np.tril(np.ones((SQ, skv), bool))
    if cond_kind == "const":
        visible = rng.random((SQ, skv)) > 0.4
        visible[2] = False
    cond = visible if keep == 1 else ~visible
    if cond_kind == "input":
        ins.append(vi("cond", [SQ, skv], TensorProto.BOOL))
    else:
        inits.append(const("cond", cond))
    if add != "none":
        inits.append(const("M", rng.standard_normal((SQ, skv)).astype(dtype)))
    s = "scaled"
    if add == "inside":
        nodes.append(helper.make_node("Add", [s, "M"], ["inner"], name="mask"))
        s = "inner"
    nodes.append(helper.make_node("Where", ["cond", s, "fill"] if keep == 1 else ["cond", "fill", s], ["filled"],
                                  name="masked_fill"))
    s = "filled"
    if add == "outside":
        nodes.append(helper.make_node("Add", ["M", s], ["outer"], name="mask"))
        s = "outer"
    nodes += [helper.make_node("Softmax", [s], ["P"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["P", "V"], ["Y"], name="pv")]
    g = helper.make_graph(nodes, "masked_fill", ins, [vi("Y", [B, H, SQ, DH], elem)], initializer=inits)
    feeds = {n: rng.standard_normal(shape).astype(dtype)
             for n, shape in (("Q", (B, H, SQ, DH)), ("K", (B, H, skv, DH)), ("V", (B, H, skv, DH)))}
    if cond_kind == "input":
        feeds["cond"] = cond
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), feeds, visible


def may_fuse(fill, add, cond_kind, elem, visible):
    """The fills with an exact additive form (S + fill == fill: -inf, or at or below -2^127), and
    the far finite ones (<= -1e4) that softmax treats as -inf unless a row is masked throughout
    (then a fill the kernel keeps finite, finfo.min, gives the same equal weights; float16 has
    none, so there the condition must be a constant leaving every row a key); a mask added
    outside a far fill would no longer be absorbed."""
    if fill == -np.inf or fill <= -2.0 ** 127:
        return True
    if fill > -1e4 or add == "outside":
        return False
    return elem == TensorProto.FLOAT or (cond_kind != "input" and visible.any(axis=-1).all())


FILLS = {TensorProto.FLOAT: [-np.inf, MIN32, -1e9, -1e4, -100.0], TensorProto.FLOAT16: [-np.inf, -65504.0, -1e4, -100.0]}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([TensorProto.FLOAT, TensorProto.FLOAT16]).flatmap(
           lambda elem: st.tuples(st.just(elem), st.sampled_from(FILLS[elem]))),
       st.sampled_from([1, 2]), st.sampled_from(["none", "inside", "outside"]),
       st.sampled_from(["causal", "const", "input"]), st.integers(0, 2 ** 16))
def test_generated_masked_fills_fuse_where_exact_and_match_the_reference(elem_fill, keep, add, cond_kind, seed):
    elem, fill = elem_fill
    model, feeds, visible = masked_fill_model(fill, keep, add, cond_kind, elem, seed)
    # float16: each op rounds to float16 as the reference's do (by default the Where and the Add
    # would compute in float32, where S + fill is not fill)
    sess = normrt.InferenceSession(model, half_compute="per_op" if elem == TensorProto.FLOAT16 else "float32")
    fused = [e for e in sess.report["fused"] if e["pass"] == PASS]
    assert bool(fused) == may_fuse(fill, add, cond_kind, elem, visible), sess.report["refused"]
    if not fused:
        assert any(e["pass"] == PASS and "masked_fill" in e["reason"] for e in sess.report["refused"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # the reference's rows of -inf: NaN
        want = ReferenceEvaluator(model).run(None, feeds)[0]
    got, again = sess.run(None, feeds)[0], sess.run(None, feeds)[0]
    # float16: the reference sums in float16, the kernel in float32
    tol = 1e-5 if elem == TensorProto.FLOAT else 4e-3
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)
    assert np.array_equal(got, again, equal_nan=True)
    dead = ~visible.any(axis=-1)
    if dead.any() and fill != -np.inf and add == "none":
        # a row masked throughout: equal weights on every key (the mean of V), not zeros
        mean_v = feeds["V"].astype(np.float64).mean(axis=2)
        np.testing.assert_allclose(got[:, :, dead].astype(np.float64), np.repeat(mean_v[:, :, None], dead.sum(), 2),
                                   rtol=tol, atol=tol)


@pytest.mark.parametrize("cond_kind", ["causal", "input"])
def test_causal_masked_fill_becomes_the_kernels_causal_loop(cond_kind):
    """nanoGPT's constant tril buffer: the folded bias is causal, so causal_mask drops it for the
    kernel's causal loop (is_causal=1, no bias input; causal_mask takes square masks); a run-time
    condition keeps a bias."""
    model, feeds, _ = masked_fill_model(-np.inf, 2, "none", cond_kind, TensorProto.FLOAT, 0, skv=SQ)
    sess = normrt.InferenceSession(model)
    node = next(n for n in sess.optimized_model.graph.node if n.op_type == "Attention")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if cond_kind == "causal":
        assert attrs.get("is_causal") == 1 and len([i for i in node.input if i]) == 3
    else:
        assert not attrs.get("is_causal") and len([i for i in node.input if i]) == 4
    np.testing.assert_allclose(sess.run(None, feeds)[0], ReferenceEvaluator(model).run(None, feeds)[0],
                               rtol=1e-5, atol=1e-6)


def test_a_fill_that_is_not_one_constant_or_a_non_bool_condition_is_refused():
    model, feeds, _ = masked_fill_model(-np.inf, 1, "none", "causal", TensorProto.FLOAT, 0)
    fill = next(t for t in model.graph.initializer if t.name == "fill")
    fill.CopyFrom(const("fill", np.array([-np.inf, -1e30] * (SKV // 2) + [-np.inf], np.float32)))
    sess = normrt.InferenceSession(model)
    assert not any(e["pass"] == PASS for e in sess.report["fused"])
    assert any("not one value" in e["reason"] for e in sess.report["refused"] if e["pass"] == PASS)
    np.testing.assert_allclose(sess.run(None, feeds)[0], ReferenceEvaluator(model).run(None, feeds)[0],
                               rtol=1e-5, atol=1e-6)
