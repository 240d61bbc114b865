"""onnxruntime's transformer and Stable Diffusion contrib ops as standard ops
(passes/onnxruntime_transformer_ops.py, passes/onnxruntime_diffusion_ops.py).

onnxruntime's CPU provider runs EmbedLayerNormalization, FusedMatMul and RotaryEmbedding: those are
compared with it on generated forms. BiasAdd, BiasSplitGelu, BiasSoftmax, GroupNorm and
SkipGroupNorm have CUDA kernels only: they are compared with float64 numpy references of
onnxruntime's spec (docs/ContribOperators.md) written here. The norms must land on normrt's
kernels; forms not taken fail to load, naming the node."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import normrt

from graph_builder import vi
from ort_contrib import MS, assert_matches_onnxruntime, contrib_model

INT32, INT64 = TensorProto.INT32, TensorProto.INT64


def init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def optimized_ops(m):
    sess = normrt.InferenceSession(m.SerializeToString())
    ops = {(n.domain, n.op_type) for n in sess.optimized_model.graph.node}
    assert not any(d == MS for d, _ in ops), ops
    return sess, {op for _, op in ops}


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * gamma + beta


# -- EmbedLayerNormalization (onnxruntime's CPU kernel) ----------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 8), st.sampled_from([8, 32, 96]), st.booleans(),
       st.sampled_from(["none", "0/1", "0/1/2"]), st.sampled_from(["none", "(1, S)", "(B, S)"]), st.booleans(),
       st.sampled_from([1e-12, 1e-5, 1e-3]), st.sampled_from([12, 17]), st.integers(0, 2**31 - 1))
def test_embed_layer_norm_matches_onnxruntime(ort_cpu_run, batch, seq, hidden, segments, mask, positions,
                                              with_sum, eps, opset, seed):
    """opset 12: ReduceSum and Unsqueeze take their axes as attributes."""
    rng = np.random.default_rng(seed)
    vocab, max_pos = 13, 10
    feeds = {"ids": rng.integers(0, vocab, (batch, seq)).astype(np.int32)}
    inits = [init("word", rng.standard_normal((vocab, hidden)).astype(np.float32)),
             init("pos", rng.standard_normal((max_pos, hidden)).astype(np.float32)),
             init("gamma", (1 + 0.3 * rng.standard_normal(hidden)).astype(np.float32)),
             init("beta", rng.standard_normal(hidden).astype(np.float32))]
    ins = ["ids", "segs" if segments else "", "word", "pos", "seg_emb" if segments else "", "gamma", "beta"]
    if segments:
        feeds["segs"] = rng.integers(0, 2, (batch, seq)).astype(np.int32)
        inits.append(init("seg_emb", rng.standard_normal((2, hidden)).astype(np.float32)))
    if mask != "none":
        feeds["mask"] = rng.integers(0, 2 if mask == "0/1" else 3, (batch, seq)).astype(np.int32)
    if positions != "none":
        feeds["position_ids"] = rng.integers(0, max_pos, (1 if positions == "(1, S)" else batch, seq)).astype(np.int32)
    ins += ["mask" if mask != "none" else "", "position_ids" if positions != "none" else ""]
    while not ins[-1]:
        ins.pop()
    outs = ["y", "mask_index"] + (["sum"] if with_sum else [])   # onnxruntime's inference wants mask_index
    node = helper.make_node("EmbedLayerNormalization", ins, outs, name="eln", domain=MS, epsilon=eps)
    m = contrib_model([node], [vi(k, list(v.shape), INT32) for k, v in feeds.items()],
                      [vi("y", [batch, seq, hidden]), vi("mask_index", [batch], INT32)]
                      + ([vi("sum", [batch, seq, hidden])] if with_sum else []), inits, opset=opset)
    ops, _ = assert_matches_onnxruntime(m, feeds, ort_cpu_run, atol=3e-5)
    assert "LayerNorm" in ops


def test_embed_layer_norm_then_skip_layer_norm_types_and_fuses(ort_cpu_run):
    """EmbedLayerNormalization -> MatMul -> SkipLayerNormalization, as onnxruntime's optimizer saves a
    BERT's first layer without attention: inference knows nothing past the first contrib op; both
    norms end on normrt's LayerNorm and the product (with its bias) on its MatMul."""
    rng = np.random.default_rng(3)
    h, vocab = 32, 20
    w = lambda *s: (rng.standard_normal(s) / math.sqrt(s[0])).astype(np.float32)   # noqa: E731
    nodes = [helper.make_node("EmbedLayerNormalization", ["ids", "segs", "word", "pos", "seg_emb", "g0", "b0", "mask"],
                              ["emb", "mask_index"], name="eln", domain=MS, epsilon=1e-12),
             helper.make_node("MatMul", ["emb", "w"], ["product"], name="product"),
             helper.make_node("Add", ["product", "bias"], ["proj"], name="bias"),
             helper.make_node("SkipLayerNormalization", ["proj", "emb", "g1", "b1"], ["y"], name="sln", domain=MS,
                              epsilon=1e-12)]
    inits = [init("word", w(vocab, h)), init("pos", w(16, h)), init("seg_emb", w(2, h)),
             init("w", w(h, h)), init("bias", w(h)),
             init("g0", np.ones(h, np.float32)), init("b0", np.zeros(h, np.float32)),
             init("g1", w(h) + 1), init("b1", w(h))]
    m = contrib_model(nodes, [vi(k, ["b", "s"], INT32) for k in ("ids", "segs", "mask")],
                      [vi("y", ["b", "s", h]), vi("mask_index", ["b"], INT32)], inits)
    feeds = {"ids": rng.integers(0, vocab, (2, 7)).astype(np.int32), "segs": np.zeros((2, 7), np.int32),
             "mask": np.array([[1] * 7, [1] * 4 + [0] * 3], np.int32)}
    ops, _ = assert_matches_onnxruntime(m, feeds, ort_cpu_run, atol=5e-5)
    sess, _ = optimized_ops(m)
    kinds = [n.op_type for n in sess.optimized_model.graph.node if n.domain == "normrt"]
    assert kinds.count("LayerNorm") == 2 and "MatMul" in kinds, kinds


# -- FusedMatMul (onnxruntime's CPU kernel) -----------------------------------------------------
def _stored(effective, trans_batch, trans):
    """The array FusedMatMul reads as `effective` under the flags: the inverse of its transposes."""
    x = np.swapaxes(effective, -1, -2) if trans else effective
    r = x.ndim
    return np.ascontiguousarray(np.transpose(x, [r - 2] + list(range(r - 2)) + [r - 1]) if trans_batch else x)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 4), st.booleans(), st.booleans(), st.booleans(), st.booleans(),
       st.sampled_from([1.0, 0.125, -2.0]), st.booleans(), st.integers(0, 2**31 - 1))
def test_fused_matmul_matches_onnxruntime(ort_cpu_run, rank, ta, tb, tba, tbb, alpha, const_b, seed):
    rng = np.random.default_rng(seed)
    batch = [2, 3][:rank - 2]
    tba, tbb = tba and rank > 2, tbb and rank > 2      # onnxruntime takes transBatch at equal ranks >= 3
    b_batch = batch if (tba or tbb or not const_b) else []    # a constant weight is often 2-D
    a = _stored(rng.standard_normal(batch + [5, 7]).astype(np.float32), tba, ta)
    b = _stored(rng.standard_normal(b_batch + [7, 4]).astype(np.float32), tbb, tb)
    node = helper.make_node("FusedMatMul", ["a", "b"], ["y"], name="fmm", domain=MS, alpha=alpha, transA=int(ta),
                            transB=int(tb), transBatchA=int(tba), transBatchB=int(tbb))
    inputs, inits, feeds = [vi("a", list(a.shape))], [], {"a": a}
    if const_b:
        inits.append(init("b", b))
    else:
        inputs.append(vi("b", list(b.shape)))
        feeds["b"] = b
    m = contrib_model([node], inputs, [vi("y", batch + [5, 4])], inits)
    ops, _ = assert_matches_onnxruntime(m, feeds, ort_cpu_run, atol=3e-5)
    assert "MatMul" in ops
    if const_b and not b_batch:
        assert "Transpose" not in ops or ta      # B's transpose and alpha are folded into the weight


# -- RotaryEmbedding (onnxruntime's CPU kernel) -------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.sampled_from([3, 4]), st.booleans(), st.integers(1, 3), st.sampled_from([4, 8, 16]),
       st.sampled_from(["full", "partial", "partial=full"]), st.sampled_from(["(1)", "scalar", "(B, S)"]),
       st.integers(1, 2), st.integers(1, 6), st.sampled_from([1.0, 0.5]), st.sampled_from([12, 17]),
       st.integers(0, 2**31 - 1))
def test_rotary_embedding_matches_onnxruntime(ort_cpu_run, rank, interleaved, heads, head_size, rotary, positions,
                                              batch, seq, scale, opset, seed):
    """scale only rescales a cache onnxruntime would rebuild: it changes nothing."""
    rng = np.random.default_rng(seed)
    max_seq = 16
    attrs = {"interleaved": int(interleaved), "scale": scale}
    dim = head_size
    if rotary != "full":
        dim = head_size // 2 if rotary == "partial" else head_size
        attrs.update(rotary_embedding_dim=dim, num_heads=heads)
    shape = [batch, seq, heads * head_size] if rank == 3 else [batch, heads, seq, head_size]
    x = rng.standard_normal(shape).astype(np.float32)
    angles = rng.uniform(0, 6, (max_seq, dim // 2))
    pos = {"(1)": np.array([rng.integers(0, max_seq - seq + 1)], np.int64),
           "scalar": np.array(rng.integers(0, max_seq - seq + 1), np.int64),
           "(B, S)": rng.integers(0, max_seq, (batch, seq)).astype(np.int64)}[positions]
    node = helper.make_node("RotaryEmbedding", ["x", "pos", "cos", "sin"], ["y"], name="rope", domain=MS, **attrs)
    m = contrib_model([node], [vi("x", shape), vi("pos", list(pos.shape), INT64)], [vi("y", shape)],
                      [init("cos", np.cos(angles).astype(np.float32)), init("sin", np.sin(angles).astype(np.float32))],
                      opset=opset)
    assert_matches_onnxruntime(m, {"x": x, "pos": pos}, ort_cpu_run, atol=3e-6)


def test_rotary_after_a_skip_simplified_norm_finds_its_rank(ort_cpu_run):
    """onnxruntime-genai's builder: SkipSimplifiedLayerNormalization -> MatMul -> RotaryEmbedding.
    The norm is typed from its input first, so inference gives the rotary its rank."""
    rng = np.random.default_rng(5)
    h, heads, hd = 32, 4, 8
    nodes = [helper.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "g"], ["n"], name="ssln", domain=MS,
                              epsilon=1e-6),
             helper.make_node("MatMul", ["n", "wq"], ["q"], name="q_proj"),
             helper.make_node("RotaryEmbedding", ["q", "pos", "cos", "sin"], ["y"], name="rope", domain=MS)]
    angles = rng.uniform(0, 6, (32, hd // 2))
    inits = [init("g", np.ones(h, np.float32)), init("wq", (rng.standard_normal((h, h)) / 6).astype(np.float32)),
             init("cos", np.cos(angles).astype(np.float32)), init("sin", np.sin(angles).astype(np.float32))]
    m = contrib_model(nodes, [vi("x", ["b", "s", h]), vi("skip", ["b", "s", h]), vi("pos", ["b", "s"], INT64)],
                      [vi("y", ["b", "s", h])], inits)
    feeds = {"x": rng.standard_normal((2, 5, h)).astype(np.float32),
             "skip": rng.standard_normal((2, 5, h)).astype(np.float32),
             "pos": np.tile(np.arange(3, 8, dtype=np.int64), (2, 1))}
    ops, _ = assert_matches_onnxruntime(m, feeds, ort_cpu_run, atol=2e-5)
    assert "RMSNorm" in ops


# -- the Stable Diffusion ops (CUDA only in onnxruntime): float64 references of the spec ---------
def group_norm(x, gamma, beta, groups, eps, channels_last, silu):
    """The spec: channel groups normalized together over the group's channels and space; SiLU after."""
    xc = np.moveaxis(x, -1, 1) if channels_last else x
    n, c = xc.shape[:2]
    g = xc.reshape(n, groups, -1)
    mean = g.mean(-1, keepdims=True)
    y = ((g - mean) / np.sqrt(((g - mean) ** 2).mean(-1, keepdims=True) + eps)).reshape(xc.shape)
    y = y * gamma.reshape((1, c) + (1,) * (xc.ndim - 2)) + beta.reshape((1, c) + (1,) * (xc.ndim - 2))
    if silu:
        y = y / (1 + np.exp(-y))
    return np.moveaxis(y, 1, -1) if channels_last else y


def _run64(m, feeds, want, atol, rtol=1e-4):
    sess, ops = optimized_ops(m)
    got = sess.run(None, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape, (g.shape, w.shape)
        np.testing.assert_allclose(g.astype(np.float64), w, rtol=rtol, atol=atol)
    return ops


@settings(max_examples=60, deadline=None)
@given(st.booleans(), st.booleans(), st.sampled_from([1, 2, 4, 8]), st.integers(1, 2),
       st.sampled_from([(3, 5), (8, 8), (1, 7)]),
       st.sampled_from(["GroupNorm", "SkipGroupNorm"]), st.sampled_from(["NHWC", "N11C", "NC"]), st.booleans(),
       st.booleans(), st.sampled_from([np.float32, np.float16]), st.integers(0, 2**31 - 1))
def test_group_norms_run_on_the_group_norm_kernel(channels_last, silu, groups, batch, hw, op, skip_form, with_bias,
                                                  with_sum, dtype, seed):
    """float16 (the Stable Diffusion optimizer's type): the reference reads the half inputs; the
    model rounds its sums to half, hence the tolerance."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    c = 2 * groups * int(rng.integers(1, 4))
    shape = [batch, *hw, c] if channels_last else [batch, c, *hw]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    gamma, beta = (1 + 0.3 * rng.standard_normal(c)).astype(dtype), rng.standard_normal(c).astype(dtype)
    inits, ins, outs, feeds = [init("gamma", gamma), init("beta", beta)], ["x", "gamma", "beta"], ["y"], {"x": x}
    s = x.astype(np.float64)
    if op == "SkipGroupNorm":
        skip_shape = {"NHWC": shape, "N11C": [batch, 1, 1, c] if channels_last else [batch, c, 1, 1],
                      "NC": [batch, c]}[skip_form]
        feeds["skip"] = rng.standard_normal(skip_shape).astype(dtype)
        ins.append("skip")
        s = s + (feeds["skip"].reshape([batch, 1, 1, c] if channels_last else [batch, c, 1, 1])
                 if skip_form == "NC" else feeds["skip"])
        if with_bias:
            bias = rng.standard_normal(c).astype(dtype)
            inits.append(init("bias", bias))
            ins.append("bias")
            s = s + (bias if channels_last else bias.reshape(c, 1, 1))
        if with_sum:
            outs.append("sum")
    node = helper.make_node(op, ins, outs, name="gn", domain=MS, groups=groups, epsilon=1e-5, activation=int(silu),
                            channels_last=int(channels_last))
    m = contrib_model([node], [vi(k, list(v.shape), elem) for k, v in feeds.items()],
                      [vi(o, shape, elem) for o in outs], inits)
    want = [group_norm(s, gamma.astype(np.float64), beta.astype(np.float64), groups, 1e-5, channels_last, silu)]
    want += [s] if len(outs) > 1 else []
    half = dtype == np.float16
    ops = _run64(m, feeds, want, atol=3e-2 if half else 2e-5, rtol=1e-2 if half else 1e-4)
    assert "GroupNorm" in ops
    assert "Sigmoid" not in ops         # the SiLU is the kernel's epilogue


@pytest.mark.parametrize("dtype, atol", [(np.float32, 1e-5), (np.float16, 2e-2)])
def test_bias_add_and_bias_split_gelu(dtype, atol):
    rng = np.random.default_rng(7)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    x, skip = rng.standard_normal((2, 6, 16)).astype(dtype), rng.standard_normal((2, 6, 16)).astype(dtype)
    bias = rng.standard_normal(16).astype(dtype)
    nodes = [helper.make_node("BiasAdd", ["x", "bias", "skip"], ["added"], name="bias_add", domain=MS),
             helper.make_node("BiasSplitGelu", ["added", "bias"], ["y"], name="split_gelu", domain=MS)]
    m = contrib_model(nodes, [vi("x", [2, 6, 16], elem), vi("skip", [2, 6, 16], elem)],
                      [vi("added", [2, 6, 16], elem), vi("y", [2, 6, 8], elem)], [init("bias", bias)])
    added = x.astype(np.float64) + bias + skip
    h = added + bias
    right = h[..., 8:]
    gelu = 0.5 * right * (1 + np.vectorize(math.erf)(right / math.sqrt(2)))
    _run64(m, {"x": x, "skip": skip}, [added, h[..., :8] * gelu], atol, rtol=1e-2 if dtype == np.float16 else 1e-4)


@pytest.mark.parametrize("bias_shape, inner", [((2, 1, 1, 5), 1), ((1, 1, 4, 5), 0), ((4, 5), 0), ((2, 3, 4, 5), 0)])
def test_bias_softmax(bias_shape, inner):
    rng = np.random.default_rng(8)
    data = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    bias = rng.standard_normal(bias_shape).astype(np.float32)
    node = helper.make_node("BiasSoftmax", ["data", "bias"], ["y"], name="bs", domain=MS, axis=3,
                            is_inner_broadcast=inner)
    m = contrib_model([node], [vi("data", [2, 3, 4, 5]), vi("bias", list(bias_shape))], [vi("y", [2, 3, 4, 5])])
    z = data.astype(np.float64) + bias
    e = np.exp(z - z.max(-1, keepdims=True))
    _run64(m, {"data": data, "bias": bias}, [e / e.sum(-1, keepdims=True)], 1e-6)


# -- refusals: the node stays, and loading names it ------------------------------------------------
def _rope(**attrs):
    return contrib_model([helper.make_node("RotaryEmbedding", ["x", "pos", "cos", "sin"], ["y"], name="the_node",
                                           domain=MS, **attrs)],
                         [vi("x", [1, 4, 16]), vi("pos", [1], INT64)], [vi("y", [1, 4, 16])],
                         [init("cos", np.ones((8, 4), np.float32)), init("sin", np.zeros((8, 4), np.float32))])


@pytest.mark.parametrize("m", [
    _rope(is_packed_batching=1),
    _rope(rotary_embedding_dim=4, num_heads=2),      # the cache is 4 wide: onnxruntime reads it as 2
    contrib_model([helper.make_node("FusedMatMul", ["a", "b"], ["y"], name="the_node", domain=MS, transBatchA=1)],
                  [vi("a", [4, 5]), vi("b", [5, 3])], [vi("y", [4, 3])]),
    contrib_model([helper.make_node("GroupNorm", ["x", "g", "b"], ["y"], name="the_node", domain=MS, groups=2,
                                    activation=2)], [vi("x", [1, 4, 4, 8])], [vi("y", [1, 4, 4, 8])],
                  [init("g", np.ones(8, np.float32)), init("b", np.zeros(8, np.float32))]),
    contrib_model([helper.make_node("GroupNorm", ["x", "g", "b"], ["y"], name="the_node", domain=MS, groups=3,
                                    activation=0)], [vi("x", [1, 4, 4, 8])], [vi("y", [1, 4, 4, 8])],
                  [init("g", np.ones(8, np.float32)), init("b", np.zeros(8, np.float32))]),
    contrib_model([helper.make_node("BiasSoftmax", ["d", "b"], ["y"], name="the_node", domain=MS, axis=1,
                                    is_inner_broadcast=0)],
                  [vi("d", [2, 3, 4]), vi("b", [3, 4])], [vi("y", [2, 3, 4])]),
    contrib_model([helper.make_node("FusedMatMul", ["a", "b"], ["y"], name="the_node", domain=MS)],
                  [vi("a", [4, 5]), vi("b", [5, 3])], [vi("y", [4, 3])], opset=10),
], ids=["packed_batching", "cache_width", "trans_batch_rank_2", "activation_2", "groups_not_dividing",
        "softmax_axes", "opset_10"])
def test_forms_not_taken_fail_naming_the_node(m):
    """The refused node stays: loading fails naming it (normrt raises NotImplementedError for a node
    nothing implements), and the report holds the check's reason."""
    with pytest.raises(NotImplementedError, match="the_node"):
        normrt.InferenceSession(m.SerializeToString())
    _, report = normrt.optimize(m, report=True)
    assert any(r["nodes"] == ["the_node"] and r["reason"] for r in report["refused"]), report["refused"]
