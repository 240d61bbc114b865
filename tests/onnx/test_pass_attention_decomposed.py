"""attention_decomposed: MatMul(Q, Kt) -> scale -> [mask] -> Softmax -> [Where(IsNaN)] -> MatMul(., V)
becomes normrt::Attention.

Each variant is a small graph built here; the oracle is onnx.reference on the original
model, and a float64 numpy formula.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from normrt.onnx.report import format_report
from graph_builder import const, vi

RNG = np.random.default_rng(17)
F, D = TensorProto.FLOAT, TensorProto.DOUBLE
PASS = "attention_decomposed"


def attention_model(q_shape=(2, 3, 70, 16), kv_shape=None, dv=8, *, form="eager", mask=None, where=False,
                    scale=0.25, axis=-1, elem=F, extra_outputs=(), opset=18, upcast=None, identity_casts=0,
                    round_trip=None):
    """form 'eager': Mul(MatMul(Q, Transpose(K)), scale); 'div': Div(MatMul, 1/scale);
    'sdpa': MatMul(Mul(Q, sqrt(scale)), Mul(Transpose(K), sqrt(scale))); 'runtime_scale': Mul by an input.
    mask: None, 'const' (a finite constant), 'zeros' (a constant of zeros the scores' shape: torch's
    baddbmm(empty, q, kt, beta=0)), 'input' (a runtime input) or an explicit shape for it.
    upcast: a Cast `to` this element type before the Softmax and one after it (diffusers' upcast_softmax).
    identity_casts: Casts to the probabilities' own type after the Softmax (TorchScript at opset 13).
    round_trip: a Cast of the probabilities to this wider type and one straight back (a half model's
    `softmax(scores, dtype=float32).to(float16)`)."""
    dtype = np.float32 if elem == F else np.float64
    kv_shape = kv_shape or q_shape
    rank = len(q_shape)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    sq, skv = q_shape[-2], kv_shape[-2]
    ins = [vi("Q", list(q_shape), elem), vi("K", list(kv_shape), elem),
           vi("V", list(kv_shape[:-1]) + [dv], elem)]
    inits, nodes = [], [helper.make_node("Transpose", ["K"], ["Kt"], name="kt", perm=perm)]
    q, kt = "Q", "Kt"
    if form == "sdpa":
        inits.append(const("sq", np.array(np.sqrt(scale), dtype)))
        nodes += [helper.make_node("Mul", ["Q", "sq"], ["Qs"], name="q_scale"),
                  helper.make_node("Mul", ["Kt", "sq"], ["Kts"], name="k_scale")]
        q, kt = "Qs", "Kts"
    nodes.append(helper.make_node("MatMul", [q, kt], ["scores"], name="qk"))
    s = "scores"
    if form == "eager":
        inits.append(const("c", np.array(scale, dtype)))
        nodes.append(helper.make_node("Mul", [s, "c"], ["scaled"], name="scale"))
        s = "scaled"
    elif form == "div":
        inits.append(const("c", np.array(1.0 / scale, dtype)))
        nodes.append(helper.make_node("Div", [s, "c"], ["scaled"], name="scale"))
        s = "scaled"
    elif form == "runtime_scale":
        ins.append(vi("c", [], elem))
        nodes.append(helper.make_node("Mul", [s, "c"], ["scaled"], name="scale"))
        s = "scaled"
    if mask is not None:
        if mask == "const":
            inits.append(const("M", RNG.standard_normal((sq, skv)).astype(dtype)))
        elif mask == "zeros":
            inits.append(const("M", np.zeros(tuple(q_shape[:-2]) + (sq, skv), dtype)))
        else:
            ins.append(vi("M", [sq, skv] if mask == "input" else list(mask), elem))
        nodes.append(helper.make_node("Add", [s, "M"], ["masked"], name="mask"))
        s = "masked"
    if upcast is not None:
        nodes.append(helper.make_node("Cast", [s], ["up"], name="upcast", to=upcast))
        s = "up"
    nodes.append(helper.make_node("Softmax", [s], ["P"], name="softmax", axis=axis))
    p = "P"
    if upcast is not None:
        nodes.append(helper.make_node("Cast", [p], ["Pc"], name="downcast", to=elem))
        p = "Pc"
    if where:
        inits.append(const("zero", np.array(0.0, dtype)))
        nodes += [helper.make_node("IsNaN", ["P"], ["nan"], name="isnan"),
                  helper.make_node("Where", ["nan", "zero", "P"], ["P0"], name="where")]
        p = "P0"
    if round_trip is not None:
        nodes += [helper.make_node("Cast", [p], ["Pw"], name="widen", to=round_trip),
                  helper.make_node("Cast", ["Pw"], ["Pb"], name="back", to=elem)]
        p = "Pb"
    for i in range(identity_casts):
        nodes.append(helper.make_node("Cast", [p], [f"Pc{i}"], name=f"cast{i}", to=elem))
        p = f"Pc{i}"
    nodes.append(helper.make_node("MatMul", [p, "V"], ["Y"], name="pv"))
    dims = [f"d{i}" for i in range(rank)]
    outs = [vi("Y", dims, elem)] + [vi(n, dims, elem) for n in extra_outputs]
    g = helper.make_graph(nodes, "attention", ins, outs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def feeds_for(model, *, mask_values=None):
    out = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        dtype = np.float32 if i.type.tensor_type.elem_type == F else np.float64
        out[i.name] = RNG.standard_normal(shape).astype(dtype)
    if mask_values is not None:
        out["M"] = mask_values
    return out


def run_both(model, feeds):
    sess = normrt.InferenceSession(model)
    got = sess.run(None, feeds)
    want = ReferenceEvaluator(model).run(None, feeds)
    return sess, got, want


def fused(sess):
    return [e for e in sess.report["fused"] if e["pass"] == PASS]


def refused(sess):
    return [e["reason"] for e in sess.report["refused"] if e["pass"] == PASS]


def n_attention(sess):
    return sum(1 for n in sess.optimized_model.graph.node if n.domain == "normrt" and n.op_type == "Attention")


def numpy_attention(q, kt, v, scale, bias=None):
    s = np.matmul(q.astype(np.float64), kt.astype(np.float64)) * scale
    if bias is not None:
        s = s + bias
    m = s.max(axis=-1, keepdims=True)
    dead = ~np.isfinite(m)
    e = np.exp(s - np.where(dead, 0, m))
    return np.matmul(e / np.where(dead, 1, e.sum(axis=-1, keepdims=True)), v.astype(np.float64))


@pytest.mark.parametrize("form", ["eager", "div", "sdpa"])
@pytest.mark.parametrize("q_shape", [(2, 3, 70, 16), (6, 65, 24)])
def test_forms_fuse_and_match_reference(form, q_shape):
    model = attention_model(q_shape, form=form, scale=0.3)
    feeds = feeds_for(model)
    sess, got, want = run_both(model, feeds)
    assert n_attention(sess) == 1 and len(fused(sess)) == 1 and not refused(sess)
    e = fused(sess)[0]
    assert e["normrt_op"] == "Attention" and e["kernel"] == "attention"
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)
    kt = np.swapaxes(feeds["K"], -1, -2)
    np.testing.assert_allclose(got[0], numpy_attention(feeds["Q"], kt, feeds["V"], 0.3), rtol=2e-5, atol=2e-6)
    # only the Transpose of K is left besides the fused node; of 4-D K the fused node
    # reads K through its layout (attention_layout's k_layout=BHSD) and it goes too
    left = ["Attention"] if len(q_shape) == 4 else ["Attention", "Transpose"]
    assert sorted(n.op_type for n in sess.optimized_model.graph.node) == left


def test_identity_casts_before_the_second_product_fuse():
    # TorchScript at opset 13 writes Softmax -> Cast(float) -> Cast(float) -> MatMul
    model = attention_model((2, 3, 70, 16), identity_casts=2, scale=0.3)
    feeds = feeds_for(model)
    sess, got, want = run_both(model, feeds)
    assert n_attention(sess) == 1 and not refused(sess)
    assert "Cast" not in {n.op_type for n in sess.optimized_model.graph.node}
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)


def test_a_round_trip_through_a_wider_type_before_the_second_product_fuses():
    # HF's softmax(..., dtype=float32).to(query.dtype) in a half model: Softmax -> Cast(float) ->
    # Cast(float16); here float32 -> float64 -> float32, the same identity (no_op_views drops both)
    model = attention_model((2, 3, 70, 16), round_trip=TensorProto.DOUBLE, scale=0.3)
    feeds = feeds_for(model)
    sess, got, want = run_both(model, feeds)
    assert n_attention(sess) == 1 and not refused(sess)
    assert "Cast" not in {n.op_type for n in sess.optimized_model.graph.node}
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)


def test_constant_finite_mask_without_where():
    model = attention_model(form="eager", mask="const")
    sess, got, want = run_both(model, feeds_for(model))
    assert n_attention(sess) == 1
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("form", ["eager", "div", "sdpa"])
@pytest.mark.parametrize("q_shape", [(2, 3, 40, 16), (6, 33, 8)])
def test_baddbmm_form_identity_casts_and_zero_mask(form, q_shape):
    """diffusers' older attention as the opset-13 TorchScript exporter writes it:
    Add(scaled scores, zeros) -> Cast(float) -> Softmax -> Cast(float) -> MatMul. The Casts
    go with the fused node; the zeros are no mask (the node reads none)."""
    model = attention_model(q_shape, form=form, mask="zeros", upcast=F, scale=0.3)
    feeds = feeds_for(model)
    sess, got, want = run_both(model, feeds)
    assert n_attention(sess) == 1 and not refused(sess)
    assert "Cast" not in [n.op_type for n in sess.optimized_model.graph.node]
    node = next(n for n in sess.optimized_model.graph.node if n.op_type == "Attention")
    assert len(node.input) < 4 or node.input[3] == ""
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)
    kt = np.swapaxes(feeds["K"], -1, -2)
    np.testing.assert_allclose(got[0], numpy_attention(feeds["Q"], kt, feeds["V"], 0.3), rtol=2e-5, atol=2e-6)
    one = normrt.InferenceSession(model, num_threads=1).run(None, feeds)[0]
    np.testing.assert_array_equal(one, normrt.InferenceSession(model, num_threads=2).run(None, feeds)[0])


def test_a_cast_that_changes_the_type_or_a_read_zero_mask_stays():
    """Refusing checks: a Cast to double around the Softmax is no identity (the chain is not
    attention in float32); a middle Cast output another node reads keeps the chain."""
    model = attention_model(form="eager", mask="zeros", upcast=D)
    sess, got, want = run_both(model, feeds_for(model))
    assert n_attention(sess) == 0
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    model = attention_model(form="eager", mask="zeros", upcast=F, extra_outputs=("up",))
    sess, got, want = run_both(model, feeds_for(model))
    assert n_attention(sess) == 0 and any("graph output" in r for r in refused(sess)), refused(sess)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the reference's -inf rows
@pytest.mark.parametrize("mask_shape", [(70, 90), (2, 1, 70, 90), (1, 3, 1, 90), (90,), (3, 70, 90)])
def test_runtime_mask_with_where_isnan(mask_shape):
    """torch's SDPA export: a -inf mask and Where(IsNaN(P), 0, P): fully masked rows give zeros."""
    model = attention_model((2, 3, 70, 16), (2, 3, 90, 16), form="sdpa", mask=mask_shape, where=True)
    m = np.where(RNG.random(mask_shape) > 0.4, 0.0, -np.inf).astype(np.float32)
    if len(mask_shape) >= 2 and mask_shape[-2] == 70:
        m[..., 5, :] = -np.inf                     # a fully masked query row
    feeds = feeds_for(model, mask_values=m)
    sess, got, want = run_both(model, feeds)
    assert n_attention(sess) == 1 and not refused(sess)
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)
    if len(mask_shape) >= 2 and mask_shape[-2] == 70:
        assert (got[0][:, :, 5] == 0).all()


def test_one_kv_head_shared_by_all_query_heads():
    model = attention_model((2, 4, 33, 8), (2, 1, 40, 8), form="eager")
    sess, got, want = run_both(model, feeds_for(model))
    assert n_attention(sess) == 1
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)


def test_report_and_inspect_text():
    model = attention_model(form="sdpa", mask="input", where=True)
    opt, report = normrt.optimize(model, report=True)
    (entry,) = [e for e in report["fused"] if e["pass"] == PASS]
    # attention_layout then takes the Transpose forming Kt: the fused node reads K (k_layout=BHSD)
    assert entry["pattern"] == "Mul-Mul-MatMul-Add-Softmax-IsNaN-Where-MatMul+layouts"
    assert entry["nodes"][-1] == "kt"
    assert report["counts"]["Attention"] == 1 and report["passes"][PASS] == 1
    assert report["passes"]["attention_layout"] == 1
    assert "normrt::Attention" in format_report(report)
    node = next(n for n in opt.graph.node if n.op_type == "Attention")
    assert list(node.input) == ["Q", "K", "V", "M"]
    assert next(a.s for a in node.attribute if a.name == "k_layout") == b"BHSD"
    assert abs(next(a.f for a in node.attribute if a.name == "scale") - 0.25) < 1e-7


@pytest.mark.parametrize("kwargs,reason", [
    (dict(axis=2), "Softmax over axis 2"),
    (dict(form="runtime_scale"), "not a constant scalar"),
    (dict(elem=D), "is not float32/float16/bfloat16"),
    (dict(extra_outputs=("P",)), "graph output"),
    (dict(extra_outputs=("scaled",)), "graph output"),
])
def test_refused_variants_stay_unfused(kwargs, reason):
    model = attention_model(**kwargs)
    feeds = feeds_for(model)
    if kwargs.get("mask") == ("rows", 90):
        feeds["M"] = RNG.standard_normal((70, 90)).astype(np.float32)
    if kwargs.get("form") == "runtime_scale":
        feeds["c"] = np.array(0.3, np.float32)
    sess, got, want = run_both(model, feeds)
    assert n_attention(sess) == 0
    assert any(reason in r for r in refused(sess)), refused(sess)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,reason", [
    # (shape inference fails on such a MatMul / Add: the types stay unknown, the refusal says so)
    (dict(mask=(3, 70, 90), q_shape=(2, 4, 70, 16), kv_shape=(2, 4, 90, 16), where=True), "unknown"),
    (dict(q_shape=(2, 3, 70, 16), kv_shape=(4, 3, 70, 16)), "unknown"),
])
def test_known_dims_that_cannot_broadcast_are_refused(kwargs, reason):
    """Sizes the MatMuls or the Add cannot broadcast (the model fails in any runtime): not fused."""
    _, report = normrt.optimize(attention_model(**kwargs), report=True)
    assert not any(e["pass"] == PASS for e in report["fused"])
    assert any(r["pass"] == PASS and reason in r["reason"] for r in report["refused"]), report["refused"]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the reference's -inf rows
@pytest.mark.parametrize("kwargs", [
    dict(mask="input"),                                                   # a run-time mask, no Where
    dict(mask=("rows", 90), q_shape=(2, 3, 70, 16), kv_shape=(2, 3, 90, 16), where=True),   # a dim unnamed
    dict(q_shape=(2, 3, 70, 16), kv_shape=(1, 3, 70, 16)),                # K/V batch broadcast
    dict(q_shape=(1, 3, 70, 16), kv_shape=(2, 3, 70, 16)),                # Q batch broadcast
    dict(q_shape=(2, 1, 70, 16), kv_shape=(2, 3, 70, 16)),                # Q heads broadcast
    dict(mask=(2, 3, 70, 70), q_shape=(2, 3, 1, 16), kv_shape=(2, 3, 70, 16)),   # the mask raises the rows
])
def test_broadcasting_and_runtime_masks_fuse(kwargs):
    """What the MatMuls, the Add and the Softmax compute for any dims that arrive: batch / head dims
    broadcast (kernel_calls._broadcast_attention) and, without the Where, NaN rows where a
    run-time mask is -inf for every key (nan_rows), as the reference's Softmax gives them."""
    model = attention_model(**kwargs)
    feeds = feeds_for(model)
    if kwargs.get("mask") == ("rows", 90):
        feeds["M"] = RNG.standard_normal((70, 90)).astype(np.float32)
    if "M" in feeds:
        feeds["M"][..., 3, :] = -np.inf          # a query seeing no key
        feeds["M"][..., 5, ::2] = -np.inf
    sess, got, want = run_both(model, feeds)
    assert n_attention(sess) == 1, refused(sess)
    again = sess.run(None, feeds)       # the plan specialized to these shapes (its prepared call)
    for g, a, w in zip(got, again, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)      # NaN where the reference has NaN
        assert np.array_equal(a, g, equal_nan=True)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the reference's -inf rows
def test_a_constant_mask_with_a_row_of_minus_inf_gives_nan_there():
    """A constant mask with -inf for every key of a query, no Where: the Softmax's NaN row, in
    the first (generic) run and in the specialized plan's prepared call."""
    from onnx import numpy_helper
    model = attention_model(mask="const")
    m = next(t for t in model.graph.initializer if t.name == "M")
    value = numpy_helper.to_array(m).copy()
    value[3, :] = -np.inf
    m.CopyFrom(numpy_helper.from_array(value, "M"))
    feeds = feeds_for(model)
    sess, got, want = run_both(model, feeds)
    assert n_attention(sess) == 1, refused(sess)
    again = sess.run(None, feeds)
    assert np.isnan(want[0][..., 3, :]).all()
    for g in (got[0], again[0]):
        np.testing.assert_allclose(g, want[0], rtol=1e-5, atol=1e-6)


def test_bundled_transformer_block_fuses():
    from importlib import resources
    path = resources.files("normrt") / "examples" / "transformer_block.onnx"
    opt, report = normrt.optimize(str(path), report=True)
    assert report["counts"].get("Attention") == 1
    assert not [e for e in report["refused"] if e["pass"] == PASS]


FIXTURE_ATTENTION = {"diffusers_unet2d": 4, "diffusers_vae": 2, "hf_bert": 2, "hf_llama": 2, "hf_vit": 2,
                     "preln_block": 1, "preln_block_eager": 1, "mingpt": 2}


def _fixture_files():
    import json
    from pathlib import Path
    data = Path(__file__).parent.parent / "data"
    entries = json.loads((data / "fixtures.json").read_text())["fixtures"]
    return [(data / e["file"], e["name"]) for e in entries if e["name"] in FIXTURE_ATTENTION]


@pytest.mark.parametrize("path,name", _fixture_files(), ids=lambda v: getattr(v, "stem", None) or "")
def test_exporter_fixtures_fuse_every_attention(path, name):
    """Every softmax attention of the exporters' fixtures is fused; the dynamo exporter at
    opset 23 writes ONNX Attention ops, unless the model computes the scores by hand
    (preln_block_eager): with the head-split Transposes around them, attention_layout turns
    those into normrt::Attention nodes too. Their outputs vs torch: test_fixture_models."""
    import onnx
    model = onnx.load(str(path))
    n_softmax = sum(1 for n in model.graph.node if n.op_type == "Softmax")
    n_onnx_attention = sum(1 for n in model.graph.node if n.op_type == "Attention")
    opt, report = normrt.optimize(model, report=True)
    fused_here = report["counts"].get("Attention", 0)
    assert n_softmax + n_onnx_attention == FIXTURE_ATTENTION[name]
    assert fused_here == FIXTURE_ATTENTION[name]
    assert [e["pass"] for e in report["fused"] if e["normrt_op"] == "Attention"].count(PASS) == n_softmax
    assert not [n for n in opt.graph.node if n.op_type == "Attention" and n.domain != "normrt"]
    assert not [e for e in report["refused"] if e["pass"] == PASS]
    assert not [n for n in opt.graph.node if n.op_type == "Softmax"]
