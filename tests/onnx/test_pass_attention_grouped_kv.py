"""attention_grouped_kv: repeat_kv's Unsqueeze/Expand/Reshape of K and V -> the attention
reads the shared heads. Oracle: onnx.reference on the original model."""
import numpy as np
from hypothesis import given, settings, strategies as st
from onnx import helper
from onnx.reference import ReferenceEvaluator

import normrt
from test_pass_layer_norm_decomposed import const, make_model, vi

PASS = "attention_grouped_kv"


def repeat_kv(x, n_rep, shape, tag):
    """transformers' repeat_kv on x (B, Hkv, S, D) as the exporters write it."""
    b, h, s, d = shape
    return ([helper.make_node("Unsqueeze", [x, "ax2"], [tag + "_u"], name=tag + "_unsq"),
             helper.make_node("Expand", [tag + "_u", tag + "_shape5"], [tag + "_e"], name=tag + "_expand"),
             helper.make_node("Reshape", [tag + "_e", tag + "_shape4"], [tag + "_r"], name=tag + "_reshape")],
            [const(tag + "_shape5", np.array([b, h, n_rep, s, d], np.int64)),
             const(tag + "_shape4", np.array([b, h * n_rep, s, d], np.int64))])


def gqa_model(b, hkv, n_rep, s, d, *, repeat_v=True, v_rep=None):
    q_shape, kv_shape = [b, hkv * n_rep, s, d], [b, hkv, s, d]
    nodes, inits = [], [const("ax2", np.array([2], np.int64)), const("scale", np.array(d ** -0.5, np.float32))]
    kn, ki = repeat_kv("k", n_rep, kv_shape, "k")
    nodes += kn
    inits += ki
    v = "v"
    if repeat_v:
        vn, vi_ = repeat_kv("v", v_rep or n_rep, kv_shape, "v")
        nodes += vn
        inits += vi_
        v = "v_r"
    nodes += [helper.make_node("Transpose", ["k_r"], ["kt"], name="kt", perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["qk"], name="qk"),
              helper.make_node("Mul", ["qk", "scale"], ["sc"], name="scale_mul"),
              helper.make_node("Softmax", ["sc"], ["p"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["p", v], ["y"], name="pv")]
    v_shape = kv_shape if repeat_v else [b, hkv * n_rep, s, d]
    return make_model(nodes, [vi("q", q_shape), vi("k", kv_shape), vi("v", v_shape)], [vi("y", q_shape)],
                      inits, opset=17), q_shape, kv_shape, v_shape


def run(model, shapes):
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal(sh).astype(np.float32) for n, sh in zip("qkv", shapes)}
    sess = normrt.InferenceSession(model.SerializeToString())
    np.testing.assert_allclose(sess.run(None, feed)[0], ReferenceEvaluator(model).run(None, feed)[0],
                               rtol=1e-4, atol=1e-5)
    return sess


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 2), hkv=st.integers(1, 3), n_rep=st.integers(2, 4), s=st.integers(1, 9),
       d=st.sampled_from([4, 8, 16]))
def test_repeated_heads_are_read_shared(b, hkv, n_rep, s, d):
    model, *shapes = gqa_model(b, hkv, n_rep, s, d)
    sess = run(model, shapes)
    ops = [n.op_type for n in sess.optimized_model.graph.node]
    assert ops == ["Attention"], ops
    att = sess.optimized_model.graph.node[0]
    assert list(att.input[1:3]) == ["k", "v"]
    assert sess.report["passes"][PASS] == 1


def test_only_k_repeated_is_refused():
    from normrt.onnx.passes import PassContext
    from normrt.onnx.passes.attention_grouped_kv import AttentionGroupedKV
    model, *shapes = gqa_model(1, 2, 2, 5, 8, repeat_v=False)
    sess = run(model, shapes)
    assert sess.report["passes"][PASS] == 0 and "Expand" in [n.op_type for n in sess.optimized_model.graph.node]
    opt = sess.optimized_model
    ctx = PassContext(opt)
    (att,) = list(AttentionGroupedKV().matches(ctx))
    assert AttentionGroupedKV().check(ctx, att) == "only one of K and V is repeated"


def test_different_repeat_counts_are_refused():
    # K repeated 2x from 2 heads, V 4x from 1 head (both 4 heads): valid attention, not one grouping
    model, q_shape, kv_shape, _ = gqa_model(1, 2, 2, 5, 8, repeat_v=False)
    g = model.graph
    vn, vi_ = repeat_kv("v", 4, [1, 1, 5, 8], "v")
    g.node[-1].input[1] = "v_r"
    for n in reversed(vn):
        g.node.insert(0, n)
    g.initializer.extend(vi_)
    g.input[2].CopyFrom(vi("v", [1, 1, 5, 8]))
    sess = run(model, [q_shape, kv_shape, [1, 1, 5, 8]])
    assert sess.report["passes"][PASS] == 0
