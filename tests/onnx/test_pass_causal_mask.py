"""causal_mask: a constant attention mask that is the causal one becomes is_causal=1 on the
attention node (ONNX Attention's attn_mask, normrt::Attention's bias), with the same results.

Oracles: a float64 numpy attention on the original mask, and the kernel itself run both ways
(with the mask as a bias, and with is_causal): bitwise equal.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

import normrt
from graph_builder import const, vi
from normrt.onnx.passes.causal_mask import causal_pattern_reason

PASS = "causal_mask"
F, D = TensorProto.FLOAT, TensorProto.DOUBLE


def causal(n, kind, dtype=np.float32):
    above = np.triu(np.ones((n, n), bool), 1)
    if kind == "bool":
        return ~above
    masked = -np.inf if kind == "-inf" else np.finfo(dtype).min
    return np.where(above, masked, 0).astype(dtype)


def reference(q, k, v, mask, scale):
    """float64 softmax(q k^T * scale + mask) v, heads of k/v repeated for grouped queries; a fully
    masked row gives zeros (normrt::Attention's and the fused kernel's convention)."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    bias = np.where(mask, 0.0, -np.inf) if mask.dtype == np.bool_ else mask.astype(np.float64)
    s = q @ np.swapaxes(k, -1, -2) * scale + bias
    top = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isneginf(top), 0, top))
    total = p.sum(-1, keepdims=True)
    return (p / np.where(total == 0, 1, total)) @ v           # a row that sees no key: zeros


def onnx_attention(mask, b, hq, hkv, s, d, elem=F, is_causal=0, mask_input=False):
    ins = [vi("Q", [b, hq, s, d], elem), vi("K", [b, hkv, s, d], elem), vi("V", [b, hkv, s, d], elem)]
    inits = []
    if mask_input:
        ins.append(vi("M", list(mask.shape), TensorProto.BOOL if mask.dtype == np.bool_ else elem))
    else:
        inits.append(const("M", mask))
    node = helper.make_node("Attention", ["Q", "K", "V", "M"], ["Y"], name="att", scale=0.3, is_causal=is_causal)
    graph = helper.make_graph([node], "g", ins, [vi("Y", [b, hq, s, d], elem)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def attention_nodes(sess):
    return [n for n in sess.optimized_model.graph.node if n.op_type == "Attention"]


def is_causal_attr(node):
    return {a.name: a.i for a in node.attribute if a.name == "is_causal"}.get("is_causal", 0)


@settings(max_examples=25, deadline=None)
@given(s=st.integers(1, 80), heads=st.sampled_from([(1, 1), (2, 2), (4, 2), (3, 1)]),
       b=st.integers(1, 2), d=st.sampled_from([4, 16, 33]), kind=st.sampled_from(["-inf", "lowest", "bool"]),
       lead=st.sampled_from(["2d", "4d", "batch"]), seed=st.integers(0, 2 ** 16))
def test_constant_causal_mask_becomes_is_causal(s, heads, b, d, kind, lead, seed):
    hq, hkv = heads
    mask = causal(s, kind)
    if lead == "4d":
        mask = mask[None, None]
    elif lead == "batch":
        mask = np.broadcast_to(mask, (b, 1, s, s)).copy()
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(shape).astype(np.float32) * 2
               for shape in ((b, hq, s, d), (b, hkv, s, d), (b, hkv, s, d)))
    sess = normrt.InferenceSession(onnx_attention(mask, b, hq, hkv, s, d).SerializeToString())
    assert sess.report["passes"][PASS] == 1
    (node,) = attention_nodes(sess)
    assert list(node.input) == ["Q", "K", "V"] and is_causal_attr(node) == 1
    y = sess.run(None, {"Q": q, "K": k, "V": v})[0]
    np.testing.assert_allclose(y, reference(q, k, v, mask, 0.3), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind", ["-inf", "lowest"])
@pytest.mark.parametrize("s", [1, 63, 64, 65, 130])
def test_kernel_gives_the_same_bits_either_way(kind, s):
    """The claim the rewrite rests on: the kernel with the mask as a bias and with is_causal agree
    bitwise (fused float32 kernel), and so do the float64 path's."""
    rng = np.random.default_rng(s)
    for dtype in (np.float32, np.float64):
        q, k, v = (rng.standard_normal((2, 4, s, 16)).astype(dtype) * 3 for _ in range(3))
        mask = causal(s, kind, dtype)
        sess_mask = normrt.InferenceSession(onnx_attention(mask, 2, 4, 4, s, 16, elem=F if dtype == np.float32 else D,
                                                           mask_input=True).SerializeToString())
        assert sess_mask.report["passes"][PASS] == 0          # a runtime mask: refused
        masked = sess_mask.run(None, {"Q": q, "K": k, "V": v, "M": mask})[0]
        rewritten = normrt.InferenceSession(onnx_attention(mask, 2, 4, 4, s, 16,
                                                           elem=F if dtype == np.float32 else D).SerializeToString())
        assert rewritten.report["passes"][PASS] == 1
        assert np.array_equal(masked, rewritten.run(None, {"Q": q, "K": k, "V": v})[0])


def _refused(mask, s=6):
    sess = normrt.InferenceSession(onnx_attention(mask, 1, 2, 2, s, 8).SerializeToString())
    assert sess.report["passes"][PASS] == 0
    (node,) = attention_nodes(sess)
    assert len(node.input) == 4 and is_causal_attr(node) == 0
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 2, s, 8)).astype(np.float32) for _ in range(3))
    y = sess.run(None, {"Q": q, "K": k, "V": v})[0]
    if mask.shape[-1] == s:
        np.testing.assert_allclose(y, reference(q, k, v, mask, 0.3), rtol=2e-5, atol=2e-5)


def test_refuses_what_is_not_the_causal_mask():
    n = 6
    window = causal(n, "-inf")
    window[np.tril(np.ones((n, n), bool), -3)] = -np.inf                  # a sliding window
    _refused(window)
    penalty = np.where(np.triu(np.ones((n, n), bool), 1), -1e4, 0).astype(np.float32)   # finite penalties
    _refused(penalty)
    shifted = np.where(np.triu(np.ones((n, n), bool), 2), -np.inf, 0).astype(np.float32)   # offset diagonal
    _refused(shifted)
    padded = np.broadcast_to(causal(n, "-inf"), (1, 2, n, n)).copy()
    padded[0, 1, :, 0] = -np.inf                                           # one head also masks key 0
    padded[0, 1, 0, 0] = 0
    _refused(padded)
    not_bool = ~causal(n, "bool")
    _refused(not_bool)


def test_reasons():
    assert causal_pattern_reason(np.zeros((4, 5), np.float32)).startswith("the mask's last two axes")
    assert causal_pattern_reason(np.zeros((4, 4), np.int64)) == "the mask is neither float nor bool"
    assert "visible entry" in causal_pattern_reason(np.full((3, 3), -np.inf, np.float32))
    assert causal_pattern_reason(causal(5, "lowest", np.float64)) is None
    assert causal_pattern_reason(causal(1, "bool")) is None


def test_decomposed_attention_with_a_causal_mask():
    """MatMul -> Mul(scale) -> Add(causal constant) -> Softmax -> MatMul, as an eager decoder
    export writes it: attention_decomposed makes a normrt::Attention with the mask as its bias,
    then this pass drops the bias for is_causal."""
    s, d = 70, 16
    mask = causal(s, "lowest")
    nodes = [helper.make_node("Transpose", ["K"], ["Kt"], name="kt", perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["Q", "Kt"], ["qk"], name="qk"),
             helper.make_node("Mul", ["qk", "c"], ["scaled"], name="scale"),
             helper.make_node("Add", ["scaled", "M"], ["masked"], name="mask"),
             helper.make_node("Softmax", ["masked"], ["P"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["P", "V"], ["Y"], name="pv")]
    graph = helper.make_graph(nodes, "g", [vi("Q", [1, 2, s, d]), vi("K", [1, 2, s, d]), vi("V", [1, 2, s, d])],
                              [vi("Y", [1, 2, s, d])], [const("c", np.array(0.25, np.float32)), const("M", mask)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    sess = normrt.InferenceSession(model.SerializeToString())
    assert sess.report["passes"][PASS] == 1
    (node,) = attention_nodes(sess)
    assert node.domain == "normrt" and len(node.input) == 3 and is_causal_attr(node) == 1
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, s, d)).astype(np.float32) for _ in range(3))
    y = sess.run(None, {"Q": q, "K": k, "V": v})[0]
    np.testing.assert_allclose(y, reference(q, k, v, mask, 0.25), rtol=2e-5, atol=2e-5)


def test_a_causal_mask_built_from_shapes_runs_the_causal_kernel(monkeypatch):
    """A decoder exported with dynamic axes builds its causal mask at run time (Range over the
    sequence, Greater, Where(-inf, 0)): causal_mask cannot take it at load, but the plan
    specialized to the input shape folds it, and the prepared attention call then recognizes the
    pattern and runs the kernel's causal loop instead of reading the bias."""
    from normrt._kernels import attention as _ka
    calls = []
    real = _ka.attention_fwd

    def spy(*args):
        calls.append(args[6])            # the causal flag
        return real(*args)
    monkeypatch.setattr(_ka, "attention_fwd", spy)
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [helper.make_node("Shape", ["q"], ["qs"]),
             helper.make_node("Gather", ["qs", "two"], ["s"], axis=0),
             helper.make_node("Range", ["zero", "s", "one"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "ax1"], ["rows"]),
             helper.make_node("Unsqueeze", ["r", "ax0"], ["cols"]),
             helper.make_node("Greater", ["cols", "rows"], ["hidden"]),
             helper.make_node("Where", ["hidden", "minf", "fzero"], ["mask"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"]),
             helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "mask"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    inits = [const("two", np.array(2, np.int64)), const("zero", np.array(0, np.int64)),
             const("one", np.array(1, np.int64)), const("ax0", np.array([0], np.int64)),
             const("ax1", np.array([1], np.int64)), const("minf", np.array(-np.inf, np.float32)),
             const("fzero", np.array(0.0, np.float32)), const("scale", np.array(0.25, np.float32))]
    shape = ["batch", 2, "seq", 16]
    graph = helper.make_graph(nodes, "g", [vi("q", shape), vi("k", shape), vi("v", shape)],
                              [vi("y", shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = normrt.InferenceSession(model.SerializeToString(), adaptive_threads=False)
    assert [n.op_type for n in sess.optimized_model.graph.node if n.domain == "normrt"] == ["Attention"]
    rng = np.random.default_rng(0)
    for b, s in ((1, 7), (2, 12)):
        q, k, v = (rng.standard_normal((b, 2, s, 16)).astype(np.float32) for _ in range(3))
        want = reference(q, k, v, causal(s, "-inf")[None, None], 0.25)
        calls.clear()
        first = sess.run(None, {"q": q, "k": k, "v": v})[0]          # traced: the bias
        second = sess.run(None, {"q": q, "k": k, "v": v})[0]         # specialized: causal
        for got in (first, second):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert calls[-1] is True, calls
