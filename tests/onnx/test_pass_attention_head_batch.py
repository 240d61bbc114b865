"""attention_head_batch: an attention over (batch * heads), its inputs Reshapes of rank-4
(B, H, S, D) values, becomes the rank-4 normrt::Attention (then attention_layout takes the
head-split Transposes). Oracle: onnx.reference on the original model and a float64 numpy
attention; hypothesis draws the sizes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from test_pass_attention_decomposed import numpy_attention
from test_pass_layer_norm_decomposed import const, make_model, vi

PASS = "attention_head_batch"


def head_batch_model(b, h, sq, skv, d, dv, *, k_form="transpose", split=False, back=None, extra_outputs=(),
                     mask=False, scale=0.35):
    """diffusers' head_to_batch_dim attention as the opset-13 TorchScript export writes it.
    k_form 'transpose': Kt = Transpose(Reshape(k (B,H,Skv,D)), (0,2,1)); 'reshape': Kt = Reshape(kt (B,H,D,Skv)).
    split: q/k/v come as (B, S, H*D), split by Reshape + Transpose(0,2,1,3) (and merged back).
    back: the shape the output Reshape writes (default (B, H, Sq, Dv))."""
    nodes, inits, ins = [], [const("scale", np.array(scale, np.float32))], []

    def rank4(name, s, last):
        if not split:
            ins.append(vi(name, [b, h, s, last]))
            return name
        ins.append(vi(name, [b, s, h * last]))
        inits.append(const(name + "_split", np.array([b, s, h, last], np.int64)))
        nodes.extend([helper.make_node("Reshape", [name, name + "_split"], [name + "_s"], name=name + "_split"),
                      helper.make_node("Transpose", [name + "_s"], [name + "_h"], name=name + "_heads",
                                       perm=[0, 2, 1, 3])])
        return name + "_h"

    def merged(name, s, last):
        inits.append(const(name + "_m", np.array([b * h, s, last], np.int64)))
        nodes.append(helper.make_node("Reshape", [name, name + "_m"], [name + "_bh"], name=name + "_merge"))
        return name + "_bh"

    q = merged(rank4("q", sq, d), sq, d)
    v = merged(rank4("v", skv, dv), skv, dv)
    if k_form == "transpose":
        k = merged(rank4("k", skv, d), skv, d)
        nodes.append(helper.make_node("Transpose", [k], ["kt3"], name="kt", perm=[0, 2, 1]))
    else:
        ins.append(vi("kt", [b, h, d, skv]))
        k = merged("kt", d, skv)
        nodes.append(helper.make_node("Identity", [k], ["kt3"], name="kt_id"))
    nodes += [helper.make_node("MatMul", [q, "kt3"], ["scores"], name="qk"),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale")]
    s = "scaled"
    if mask:
        inits.append(const("M", np.random.default_rng(9).standard_normal((b * h, sq, skv)).astype(np.float32)))
        nodes.append(helper.make_node("Add", [s, "M"], ["masked"], name="mask"))
        s = "masked"
    nodes += [helper.make_node("Softmax", [s], ["P"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["P", v], ["o3"], name="pv")]
    back = list(back or (b, h, sq, dv))
    inits.append(const("back", np.array(back, np.int64)))
    nodes.append(helper.make_node("Reshape", ["o3", "back"], ["o4"], name="unmerge"))
    y, y_shape = "o4", back
    if split:
        inits.append(const("y_merge", np.array([b, sq, h * dv], np.int64)))
        nodes += [helper.make_node("Transpose", ["o4"], ["o_s"], name="y_heads", perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["o_s", "y_merge"], ["o_m"], name="y_merge")]
        y, y_shape = "o_m", [b, sq, h * dv]
    nodes.append(helper.make_node("Neg", [y], ["y"], name="neg"))
    outs = [vi("y", y_shape)] + [vi(n, shape) for n, shape in extra_outputs]
    return make_model(nodes, ins, outs, inits, opset=13)


def feeds_for(model, seed=0):
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def attention_nodes(sess):
    return [n for n in sess.optimized_model.graph.node if n.domain == "normrt" and n.op_type == "Attention"]


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 3), sq=st.integers(1, 20), skv=st.integers(1, 20),
       d=st.sampled_from([4, 8]), dv=st.sampled_from([4, 8]), k_form=st.sampled_from(["transpose", "reshape"]),
       split=st.booleans())
def test_head_batch_attention_runs_as_rank_4(b, h, sq, skv, d, dv, k_form, split):
    if split and k_form == "reshape":
        k_form = "transpose"
    model = head_batch_model(b, h, sq, skv, d, dv, k_form=k_form, split=split)
    feeds = feeds_for(model)
    sess = normrt.InferenceSession(model.SerializeToString())
    (node,) = attention_nodes(sess)
    assert not [e for e in sess.report["refused"] if e["pass"] == PASS]
    left = [n.op_type for n in sess.optimized_model.graph.node]
    # the merges and the output Reshape are gone; with the split form the head Transposes too
    assert "Reshape" not in left and left.count("Transpose") == 0, left
    got = sess.run(None, feeds)[0]
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    one = normrt.InferenceSession(model.SerializeToString(), num_threads=1).run(None, feeds)[0]
    np.testing.assert_array_equal(one, normrt.InferenceSession(model.SerializeToString(), num_threads=2)
                                  .run(None, feeds)[0])
    if not split:
        q, v = feeds["q"], feeds["v"]
        kt = np.swapaxes(feeds["k"], -1, -2) if k_form == "transpose" else feeds["kt"]
        np.testing.assert_allclose(got, -numpy_attention(q, kt, v, 0.35), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("kwargs,reason", [
    (dict(back=(3, 2, 5, 4)), "differ"),                   # (B, H) = (2, 3) merged, unmerged as (3, 2)
    (dict(extra_outputs=(("q_bh", [6, 5, 4]),)), "graph output"),
    (dict(mask=True), "a bias over the merged batch*heads"),
])
def test_refused_forms_stay_rank_3(kwargs, reason):
    model = head_batch_model(2, 3, 5, 6, 4, 4, **kwargs)
    feeds = feeds_for(model)
    sess = normrt.InferenceSession(model.SerializeToString())
    refused = [e["reason"] for e in sess.report["refused"] if e["pass"] == PASS]
    assert any(reason in r for r in refused), refused
    assert "Reshape" in [n.op_type for n in sess.optimized_model.graph.node]
    for g, w in zip(sess.run(None, feeds), ReferenceEvaluator(model).run(None, feeds)):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
