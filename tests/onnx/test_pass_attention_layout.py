"""attention_layout: the head split/merge Transposes around an attention become layouts of
normrt::Attention (the kernel reads Q, K, V and writes Y through strides).

Each variant is a small graph built here, in the two forms exporters write: the standard
Attention op (opset 23, torch's dynamo exporter) and MatMul/Softmax attention (fused by
attention_decomposed first). The oracle is onnx.reference on the original model, and a
float64 numpy formula.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from normrt.onnx.domain import NORM_OPS, make_node
from graph_builder import const, vi

RNG = np.random.default_rng(29)
F = TensorProto.FLOAT
PASS = "attention_layout"


def heads_model(B=1, Sq=70, Skv=90, H=3, Hkv=3, D=7, Dv=5, *, form="onnx", k_form="bshd", mask=None,
                shared=(), y_out=False, opset=23, elem=F, **attrs):
    """X (B, S, H*D) -> Reshape -> Transpose(0,2,1,3) per input -> attention -> Transpose -> Reshape.

    form "onnx": the standard Attention op; "matmul": MatMul(Q, Kt) * scale -> Softmax -> MatMul(., V).
    k_form (matmul): "bshd" forms Kt with one Transpose(0,2,3,1), "two" with (0,2,1,3) then (0,1,3,2).
    shared: names of Transpose outputs ("q", "k", "v") also made graph outputs (read elsewhere).
    y_out: the attention's output (B, H, Sq, Dv) is a graph output too.
    """
    ins = [vi("Xq", [B, Sq, H * D], elem), vi("Xk", [B, Skv, Hkv * D], elem), vi("Xv", [B, Skv, Hkv * Dv], elem)]
    inits = [const("sq", np.array([B, Sq, H, D], np.int64)), const("sk", np.array([B, Skv, Hkv, D], np.int64)),
             const("sv", np.array([B, Skv, Hkv, Dv], np.int64)), const("sy", np.array([B, Sq, H * Dv], np.int64))]
    nodes = [helper.make_node("Reshape", ["Xq", "sq"], ["q4"], name="rq"),
             helper.make_node("Reshape", ["Xk", "sk"], ["k4"], name="rk"),
             helper.make_node("Reshape", ["Xv", "sv"], ["v4"], name="rv"),
             helper.make_node("Transpose", ["q4"], ["q"], name="tq", perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["v4"], ["v"], name="tv", perm=[0, 2, 1, 3])]
    scale = attrs.get("scale", 1 / np.sqrt(D))
    if form == "onnx":
        nodes.append(helper.make_node("Transpose", ["k4"], ["k"], name="tk", perm=[0, 2, 1, 3]))
        ins_att = ["q", "k", "v"]
        if mask is not None:
            elem = TensorProto.BOOL if mask == "bool" else F
            if mask == "bool_const":
                inits.append(numpy_helper.from_array(RNG.random((Sq, Skv)) > 0.3, "M"))
            else:
                ins.append(vi("M", [Sq, Skv], elem))
            ins_att.append("M")
        nodes.append(helper.make_node("Attention", ins_att, ["y"], name="attention", **attrs))
    else:
        if k_form == "bshd":
            nodes.append(helper.make_node("Transpose", ["k4"], ["kt"], name="tkt", perm=[0, 2, 3, 1]))
        else:
            nodes += [helper.make_node("Transpose", ["k4"], ["k"], name="tk", perm=[0, 2, 1, 3]),
                      helper.make_node("Transpose", ["k"], ["kt"], name="tkt", perm=[0, 1, 3, 2])]
        inits.append(const("c", np.array(scale, np.float32)))
        nodes += [helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
                  helper.make_node("Mul", ["s", "c"], ["ss"], name="scale"),
                  helper.make_node("Softmax", ["ss"], ["p"], name="softmax", axis=-1),
                  helper.make_node("MatMul", ["p", "v"], ["y"], name="pv")]
    nodes += [helper.make_node("Transpose", ["y"], ["yt"], name="ty", perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["yt", "sy"], ["Y"], name="ry")]
    shapes = {"q": [B, H, Sq, D], "k": [B, Hkv, Skv, D], "v": [B, Hkv, Skv, Dv], "y": [B, H, Sq, Dv]}
    outs = [vi("Y", [B, Sq, H * Dv], elem)] + [vi(n, shapes[n]) for n in shared] \
        + ([vi("y", shapes["y"])] if y_out else [])
    g = helper.make_graph(nodes, "heads", ins, outs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def feeds_for(model, mask_values=None):
    out = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        dtype = np.float64 if i.type.tensor_type.elem_type == TensorProto.DOUBLE else np.float32
        out[i.name] = RNG.standard_normal(shape).astype(dtype)
    if mask_values is not None:
        out["M"] = mask_values
    return out


def numpy_heads(feeds, B, Sq, Skv, H, Hkv, D, Dv, scale, bias=None):
    """float64: split the heads, softmax(q k^T * scale + bias) v per head, merge them."""
    q = feeds["Xq"].astype(np.float64).reshape(B, Sq, H, D).transpose(0, 2, 1, 3)
    k = feeds["Xk"].astype(np.float64).reshape(B, Skv, Hkv, D).transpose(0, 2, 1, 3)
    v = feeds["Xv"].astype(np.float64).reshape(B, Skv, Hkv, Dv).transpose(0, 2, 1, 3)
    k, v = np.repeat(k, H // Hkv, axis=1), np.repeat(v, H // Hkv, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) * scale
    if bias is not None:
        s = s + bias
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    y = (e / e.sum(axis=-1, keepdims=True)) @ v
    return y.transpose(0, 2, 1, 3).reshape(B, Sq, H * Dv)


def run_both(model, feeds):
    sess = normrt.InferenceSession(model)
    got = sess.run(None, feeds)
    want = ReferenceEvaluator(model).run(None, feeds)
    return sess, got, want


def op_types(sess):
    return sorted(n.op_type for n in sess.optimized_model.graph.node)


def attention_node(sess):
    (node,) = [n for n in sess.optimized_model.graph.node if n.op_type == "Attention"]
    return node


def layouts(node):
    """The node's four layouts (attributes left out are at their defaults)."""
    out = {k: v for k, v in NORM_OPS["Attention"].defaults.items() if k.endswith("_layout")}
    out.update({a.name: a.s.decode() for a in node.attribute if a.name.endswith("_layout")})
    return out


def heads(node):
    """(q_heads, kv_heads, merge_heads): the heads the node splits / merges itself."""
    a = {x.name: x.i for x in node.attribute}
    return a.get("q_heads", 0), a.get("kv_heads", 0), a.get("merge_heads", 0)


def refused(sess):
    return [e["reason"] for e in sess.report["refused"] if e["pass"] == PASS]


BSHD = {"q_layout": "BSHD", "k_layout": "BSHD", "v_layout": "BSHD", "y_layout": "BSHD"}
SIZES = [dict(), dict(B=2, Sq=64, Skv=64, H=2, Hkv=2, D=8, Dv=8), dict(B=1, Sq=130, Skv=33, H=4, Hkv=2, D=16, Dv=24),
         dict(B=1, Sq=1, Skv=1, H=1, Hkv=1, D=1, Dv=1)]


@pytest.mark.parametrize("size", range(len(SIZES)))
def test_standard_attention_takes_every_transpose(size):
    dims = dict(B=1, Sq=70, Skv=90, H=3, Hkv=3, D=7, Dv=5) | SIZES[size]
    model = heads_model(**dims)
    feeds = feeds_for(model)
    sess, got, want = run_both(model, feeds)
    # no Transpose left, nor the Reshapes splitting and merging the heads
    assert op_types(sess) == ["Attention"]
    node = attention_node(sess)
    assert node.domain == "normrt" and layouts(node) == BSHD
    assert heads(node) == (dims["H"], dims["Hkv"], 1)
    assert list(node.input) == ["Xq", "Xk", "Xv"] and list(node.output) == ["Y"]
    assert abs(next(a.f for a in node.attribute if a.name == "scale") - 1 / np.sqrt(dims["D"])) < 1e-7
    (entry,) = [e for e in sess.report["fused"] if e["pass"] == PASS]
    assert entry["normrt_op"] == "Attention"
    assert sorted(entry["nodes"]) == ["attention", "rk", "rq", "rv", "ry", "tk", "tq", "tv", "ty"]
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got[0], numpy_heads(feeds, scale=1 / np.sqrt(dims["D"]), **dims),
                               rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("k_form", ["bshd", "two"])
def test_decomposed_attention_takes_every_transpose(k_form):
    dims = dict(B=2, Sq=70, Skv=90, H=3, Hkv=3, D=7, Dv=5)
    model = heads_model(form="matmul", k_form=k_form, scale=0.3, **dims)
    feeds = feeds_for(model)
    sess, got, want = run_both(model, feeds)
    assert op_types(sess) == ["Attention"]
    assert layouts(attention_node(sess)) == BSHD and heads(attention_node(sess)) == (3, 3, 1)
    (entry,) = [e for e in sess.report["fused"] if e["normrt_op"] == "Attention"]
    assert entry["pass"] == "attention_decomposed" and entry["pattern"].endswith("+layouts")
    assert {"tq", "tkt", "tv", "ty", "rq", "rk", "rv", "ry"} <= set(entry["nodes"])
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got[0], numpy_heads(feeds, scale=0.3, **dims), rtol=2e-5, atol=2e-6)


def test_same_bits_as_untransposed_graph_and_any_thread_count():
    """The layouts change the addresses the kernel reads, never its arithmetic."""
    dims = dict(B=1, Sq=200, Skv=150, H=2, Hkv=2, D=16, Dv=16)
    model = heads_model(**dims)
    feeds = feeds_for(model)
    outs = []
    for n in (1, 2, 3):
        with normrt.threads(n):
            outs.append(normrt.InferenceSession(model).run(None, feeds)[0])
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    q = feeds["Xq"].reshape(1, 200, 2, 16).transpose(0, 2, 1, 3)
    k = feeds["Xk"].reshape(1, 150, 2, 16).transpose(0, 2, 1, 3)
    v = feeds["Xv"].reshape(1, 150, 2, 16).transpose(0, 2, 1, 3)
    y = normrt.attention(*(np.ascontiguousarray(t) for t in (q, k, v)), scale=float(np.float32(0.25)))
    assert np.array_equal(outs[0], y.transpose(0, 2, 1, 3).reshape(1, 200, 32))


@pytest.mark.parametrize("mask", ["float", "bool", "bool_const"])
def test_standard_attention_masks(mask):
    model = heads_model(mask=mask, is_causal=0, scale=0.4)
    m = None
    if mask == "float":
        m = RNG.standard_normal((70, 90)).astype(np.float32)
    elif mask == "bool":
        m = RNG.random((70, 90)) > 0.3
    feeds = feeds_for(model, m)
    sess, got, want = run_both(model, feeds)
    assert layouts(attention_node(sess)) == BSHD
    assert "Transpose" not in op_types(sess)
    # a boolean input mask becomes Where(M, 0, -inf); a constant one a constant bias
    assert op_types(sess).count("Where") == (1 if mask == "bool" else 0)
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)
    if mask == "float":
        np.testing.assert_allclose(got[0], numpy_heads(feeds, 1, 70, 90, 3, 3, 7, 5, 0.4, bias=m),
                                   rtol=2e-5, atol=2e-6)


def test_grouped_query_heads_and_causal():
    dims = dict(B=1, Sq=40, Skv=40, H=4, Hkv=2, D=8, Dv=8)
    model = heads_model(is_causal=1, **dims)
    sess, got, want = run_both(model, feeds_for(model))
    assert layouts(attention_node(sess)) == BSHD and "Transpose" not in op_types(sess)
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)


def test_transpose_read_elsewhere_stays_and_the_others_go():
    model = heads_model(shared=("k",))
    sess, got, want = run_both(model, feeds_for(model))
    assert op_types(sess).count("Transpose") == 1
    node = attention_node(sess)
    assert layouts(node) == BSHD | {"k_layout": "BHSD"} and node.input[1] == "k"
    # Q's Reshape goes; K's stays (its Transpose does), so V's stays too (K and V go together)
    assert heads(node) == (3, 0, 1) and op_types(sess).count("Reshape") == 2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


def test_output_read_elsewhere_keeps_its_transpose():
    model = heads_model(y_out=True)
    sess, got, want = run_both(model, feeds_for(model))
    assert op_types(sess).count("Transpose") == 1
    assert layouts(attention_node(sess)) == BSHD | {"y_layout": "BHSD"}
    assert heads(attention_node(sess)) == (3, 3, 0) and op_types(sess).count("Reshape") == 1
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("attrs,reason", [
    (dict(softcap=5.0), "softcap"),
    (dict(qk_matmul_output_mode=1), "qk_matmul_output_mode"),
    (dict(softmax_precision=TensorProto.DOUBLE), "softmax_precision"),
])
def test_refused_standard_attention_stays(attrs, reason):
    model = heads_model(**attrs)
    sess = normrt.InferenceSession(model)
    assert any(reason in r for r in refused(sess))
    assert [n.domain for n in sess.optimized_model.graph.node if n.op_type == "Attention"] == [""]
    assert op_types(sess).count("Transpose") == 4
    if "softmax_precision" in attrs:
        feeds = feeds_for(model)
        np.testing.assert_allclose(sess.run(None, feeds)[0], ReferenceEvaluator(model).run(None, feeds)[0],
                                   rtol=2e-5, atol=2e-6)


def test_every_transpose_read_elsewhere_is_refused():
    model = heads_model(shared=("q", "k", "v"), y_out=True)
    sess, got, want = run_both(model, feeds_for(model))
    assert any("also read elsewhere" in r for r in refused(sess))
    assert op_types(sess).count("Transpose") == 4
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


def test_unknown_layout_attribute_is_a_clear_error():
    node = make_node("Attention", ["Q", "Kt", "V"], ["Y"], "att", scale=1.0, q_layout="SBHD")
    g = helper.make_graph([node], "bad", [vi("Q", [1, 2, 3, 4]), vi("Kt", [1, 2, 4, 3]), vi("V", [1, 2, 3, 4])],
                          [vi("Y", [1, 2, 3, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("normrt", 1)])
    feeds = {n: np.zeros(s, np.float32) for n, s in (("Q", (1, 2, 3, 4)), ("Kt", (1, 2, 4, 3)), ("V", (1, 2, 3, 4)))}
    with pytest.raises(Exception, match="unknown layout 'SBHD'"):
        normrt.InferenceSession(model).run(None, feeds)


def test_float64_standard_attention_stays():
    """float64 keeps the standard op's float64 path (normrt's scale attribute is a float32)."""
    dims = dict(B=1, Sq=70, Skv=90, H=3, Hkv=3, D=7, Dv=5)
    model = heads_model(elem=TensorProto.DOUBLE, **dims)
    feeds = feeds_for(model)
    sess, got, want = run_both(model, feeds)
    assert any("not all float32" in r for r in refused(sess))
    assert attention_node(sess).domain == "" and op_types(sess).count("Transpose") == 4
    assert got[0].dtype == np.float64
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[0], numpy_heads(feeds, scale=1 / np.sqrt(7), **dims), rtol=1e-12, atol=1e-12)


def test_transpose_also_read_as_the_bias_is_refused():
    nodes = [helper.make_node("Transpose", ["Xq"], ["q"], name="tq", perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["Xk"], ["k"], name="tk", perm=[0, 2, 1, 3]),
             helper.make_node("Attention", ["q", "k", "V", "q"], ["Y"], name="attention")]
    g = helper.make_graph(nodes, "bias_is_q", [vi("Xq", [1, 5, 2, 6]), vi("Xk", [1, 6, 2, 6]), vi("V", [1, 2, 6, 4])],
                          [vi("Y", [1, 2, 5, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])
    sess, got, want = run_both(model, feeds_for(model))
    assert any("as the bias" in r for r in refused(sess))
    assert op_types(sess).count("Transpose") == 2
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)


def test_head_reshapes_of_unknown_shape_stay():
    """Reshapes whose shapes inference cannot tell (a runtime shape) stay; the Transposes still go
    (with a scale attribute: the default 1/sqrt(D) would need Q's head dim)."""
    model = heads_model(scale=0.3)
    g = model.graph
    g.initializer.remove(next(t for t in g.initializer if t.name == "sq"))
    g.input.append(vi("sq", [4], TensorProto.INT64))
    feeds = feeds_for(model)
    feeds["sq"] = np.array([1, 70, 3, 7], np.int64)
    sess, got, want = run_both(model, feeds)
    node = attention_node(sess)
    assert layouts(node) == BSHD and "Transpose" not in op_types(sess)
    # Q's split stays, and the merge (the output's shape follows Q's); K's and V's go
    assert heads(node) == (0, 3, 0) and op_types(sess).count("Reshape") == 2
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)


def test_merged_heads_that_do_not_divide_are_a_clear_error():
    node = make_node("Attention", ["Q", "Kt", "V"], ["Y"], "att", scale=1.0, q_layout="BSHD", k_layout="BSHD",
                     v_layout="BSHD", y_layout="BSHD", q_heads=4, kv_heads=2, merge_heads=1)
    g = helper.make_graph([node], "bad", [vi("Q", [1, 3, 6]), vi("Kt", [1, 3, 6]), vi("V", [1, 3, 6])],
                          [vi("Y", [1, 3, 6])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("normrt", 1)])
    feeds = {n: np.zeros((1, 3, 6), np.float32) for n in ("Q", "Kt", "V")}
    with pytest.raises(Exception, match=r"Q must be \(B, S, 4 \* D\)"):
        normrt.InferenceSession(model).run(None, feeds)


@pytest.mark.parametrize("form", ["matmul", "onnx"])
def test_attention_layout_one_transpose_read_as_k_and_v(form):
    """K and V one Transpose's output (a fuzz crasher): absorbing it for K must not remove it
    while V still reads it; the result matches onnx.reference."""
    B, S, H, D = 1, 6, 2, 6
    nodes = [helper.make_node("Transpose", ["Xq"], ["q"], name="tq", perm=[0, 2, 1, 3])]
    ins = [vi("Xq", [B, S, H, D]), vi("Xk", [B, S, H, D])]
    if form == "matmul":
        nodes += [helper.make_node("Transpose", ["Xk"], ["kt"], name="tkt", perm=[0, 2, 3, 1]),
                  helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
                  helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
                  helper.make_node("MatMul", ["p", "kt"], ["Y"], name="pv")]     # V is Kt (S == D)
    else:
        nodes += [helper.make_node("Transpose", ["Xk"], ["k"], name="tk", perm=[0, 2, 1, 3]),
                  helper.make_node("Attention", ["q", "k", "k"], ["Y"], name="attention")]
    g = helper.make_graph(nodes, "k_is_v", ins, [vi("Y", [B, H, S, D])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])
    sess, got, want = run_both(model, feeds_for(model))
    assert "Attention" in op_types(sess)
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5, atol=2e-6)
