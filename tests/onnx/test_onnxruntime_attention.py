"""onnxruntime's Attention and MultiHeadAttention (passes/onnxruntime_attention.py) as the
standard ops of their definitions, fused onto normrt::Attention: against onnxruntime (which
defines them) over generated batches, lengths, heads, head sizes, mask forms and contents
(rows fully masked included), unidirectional, asymmetric qkv_hidden_sizes, attention_bias,
past/present, float16; the fusion itself for the common forms; the refusals."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import normrt

from graph_builder import vi
from ort_contrib import MS, assert_matches_onnxruntime, contrib_model

# a row whose keys are all masked is softmax(scores - 10000): the scores rounded to float32's
# grid at 10000 (~1e-3), by onnxruntime and normrt each in its own order of operations
MASKED_ROW_ATOL = 3e-3


def _mask(rng, form, batch, seq, total, fully_masked):
    """A mask_index / key_padding_mask of `form` (None, "1d", "2b", "2d", "3d")."""
    if form is None:
        return None
    if form == "1d":
        lengths = rng.integers(1, total + 2, batch)
        if fully_masked:
            lengths[0] = 0
        return lengths.astype(np.int32)
    if form == "2b":
        ends = rng.integers(1, total + 1, batch)
        starts = np.minimum(rng.integers(0, total, batch), ends - 1)
        if fully_masked:
            starts[0] = ends[0]
        return np.concatenate([ends, starts]).astype(np.int32)
    shape = (batch, total) if form == "2d" else (batch, seq, total)
    mask = rng.integers(-1, 3, shape).astype(np.int32)      # > 0 keeps: 2 keeps too, -1 masks
    if fully_masked:
        mask[0, ...] = 0
    else:
        mask[..., 0] = 1        # every row keeps a key (the first: unidirectional sees it too)
    return mask


def _symbolic(shape, names):
    return [n if n else d for d, n in zip(shape, names)]


def _attention_model(rng, batch, seq, din, heads, hq, hv, form, uni, fully_masked, with_bias, attn_bias,
                     past_len, scale, symbolic, dtype=np.float32):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    dq, dv = heads * hq, heads * hv
    weight = (rng.standard_normal((din, 2 * dq + dv)) / np.sqrt(din)).astype(dtype)
    inits = [numpy_helper.from_array(weight, "W")]
    ins = ["x", "W", ""]
    if with_bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(2 * dq + dv).astype(dtype), "b"))
        ins[2] = "b"
    x = rng.standard_normal((batch, seq, din)).astype(dtype)
    feeds = {"x": x}
    inputs = [vi("x", _symbolic(x.shape, ["batch", "seq", None] if symbolic else [None] * 3), elem)]
    total = seq + past_len
    mask = _mask(rng, form, batch, seq, total, fully_masked)
    ins.append("")
    if mask is not None:
        ins[3] = "mask"
        feeds["mask"] = mask
        total_name = "seq" if not past_len else None
        names = {1: ["batch" if form == "1d" else None], 2: ["batch", total_name],
                 3: ["batch", "seq", total_name]}[mask.ndim]
        inputs.append(vi("mask", _symbolic(mask.shape, names) if symbolic else list(mask.shape), TensorProto.INT32))
    outputs = [vi("y", None, elem)]
    ins += ["", ""]
    outs = ["y"]
    if past_len:
        past = rng.standard_normal((2, batch, heads, past_len, hq)).astype(dtype)
        ins[4] = "past"
        feeds["past"] = past
        inputs.append(vi("past", list(past.shape), elem))
        outs.append("present")
        outputs.append(vi("present", None, elem))
    if attn_bias:
        bias = (rng.standard_normal((attn_bias[0], attn_bias[1], seq, total)) * 2).astype(dtype)
        ins[5] = "attn_bias"
        feeds["attn_bias"] = bias
        inputs.append(vi("attn_bias", list(bias.shape), elem))
    attrs = {"num_heads": heads, "unidirectional": int(uni)}
    if hq != hv:
        attrs["qkv_hidden_sizes"] = [dq, dq, dv]
    if scale is not None:
        attrs["scale"] = scale
    node = helper.make_node("Attention", ins, outs, name="attn", domain=MS, **attrs)
    return contrib_model([node], inputs, outputs, inits), feeds


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 7), st.sampled_from([4, 12]), st.integers(1, 3), st.sampled_from([2, 5, 8]),
       st.sampled_from([None, 3]), st.sampled_from([None, "1d", "2b", "2d", "3d"]), st.booleans(), st.booleans(),
       st.booleans(), st.sampled_from([None, (1, 1), (1, "N"), ("B", "N")]), st.sampled_from([None, 0.3]),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_attention_matches_onnxruntime(ort_cpu_run, batch, seq, din, heads, hq, hv, form, uni, fully_masked,
                                       with_bias, attn_bias, scale, symbolic, seed):
    rng = np.random.default_rng(seed)
    hv = hv or hq
    if attn_bias:
        attn_bias = (batch if attn_bias[0] == "B" else 1, heads if attn_bias[1] == "N" else 1)
    m, feeds = _attention_model(rng, batch, seq, din, heads, hq, hv, form, uni, fully_masked, with_bias,
                                attn_bias, 0, scale, symbolic)
    assert_matches_onnxruntime(m, feeds, ort_cpu_run, atol=_atol(form, uni, fully_masked), rtol=1e-4)


def _atol(form, uni, fully_masked):
    # left padding (2B's starts) masks every key a row sees when it is also unidirectional
    masked_rows = form is not None and (fully_masked or (form == "2b" and uni))
    return MASKED_ROW_ATOL if masked_rows else 2e-5


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), st.integers(1, 3), st.sampled_from([2, 4]),
       st.sampled_from([None, "1d", "2b", "2d", "3d"]), st.booleans(), st.integers(0, 2**31 - 1))
def test_attention_past_and_present(ort_cpu_run, batch, seq, past_len, heads, hq, form, uni, seed):
    """past (2, B, N, P, H) is concatenated before the new keys/values; present is both, stacked;
    the masks cover the P + S keys, unidirectional sees keys j <= i + P."""
    rng = np.random.default_rng(seed)
    m, feeds = _attention_model(rng, batch, seq, 8, heads, hq, hq, form, uni, False, True, None, past_len, None,
                                False)
    assert_matches_onnxruntime(m, feeds, ort_cpu_run, atol=_atol(form, uni, False), rtol=1e-4)


def _mha_model(rng, batch, seq, kv_seq, heads, hq, hv, form, uni, fully_masked, with_bias, attn_bias, past_len,
               per_head, symbolic, dtype=np.float32, present=False):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    dq, dv = heads * hq, heads * hv
    query = rng.standard_normal((batch, seq, dq)).astype(dtype)
    if per_head:
        key = rng.standard_normal((batch, heads, kv_seq, hq)).astype(dtype)
        value = rng.standard_normal((batch, heads, kv_seq, hv)).astype(dtype)
    else:
        key = rng.standard_normal((batch, kv_seq, dq)).astype(dtype)
        value = rng.standard_normal((batch, kv_seq, dv)).astype(dtype)
    feeds = {"q": query, "k": key, "v": value}
    seq_names = ["batch", "seq", None]
    kv = "seq" if kv_seq == seq else "kv"
    kv_names = ["batch", None, kv, None] if per_head else ["batch", kv, None]
    inputs = [vi("q", _symbolic(query.shape, seq_names) if symbolic else list(query.shape), elem),
              vi("k", _symbolic(key.shape, kv_names) if symbolic else list(key.shape), elem),
              vi("v", _symbolic(value.shape, kv_names) if symbolic else list(value.shape), elem)]
    ins = ["q", "k", "v", "", "", "", "", ""]
    inits = []
    if with_bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(2 * dq + dv).astype(dtype), "bias"))
        ins[3] = "bias"
    total = kv_seq + past_len
    mask = _mask(rng, form, batch, seq, total, fully_masked)
    if mask is not None:
        ins[4] = "mask"
        feeds["mask"] = mask
        total_name = kv if symbolic and not past_len else None
        names = {1: ["batch" if form == "1d" else None], 2: ["batch", total_name],
                 3: ["batch", "seq", total_name]}[mask.ndim]
        inputs.append(vi("mask", _symbolic(mask.shape, names) if symbolic else list(mask.shape), TensorProto.INT32))
    if attn_bias:
        bias = (rng.standard_normal((attn_bias[0], attn_bias[1], seq, total)) * 2).astype(dtype)
        ins[5] = "attn_bias"
        feeds["attn_bias"] = bias
        inputs.append(vi("attn_bias", list(bias.shape), elem))
    outs = ["y"]
    outputs = [vi("y", None, elem)]
    if past_len:
        for i, name in ((6, "past_key"), (7, "past_value")):
            feeds[name] = rng.standard_normal((batch, heads, past_len, hq)).astype(dtype)
            ins[i] = name
            inputs.append(vi(name, list(feeds[name].shape), elem))
    if past_len or present:
        outs += ["present_key", "present_value"]
        outputs += [vi("present_key", None, elem), vi("present_value", None, elem)]
    node = helper.make_node("MultiHeadAttention", ins, outs, name="mha", domain=MS, num_heads=heads,
                            unidirectional=int(uni))
    return contrib_model([node], inputs, outputs, inits), feeds


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 3), st.sampled_from([2, 5, 8]),
       st.sampled_from([None, 3]), st.sampled_from([None, "1d", "2d", "3d"]), st.booleans(), st.booleans(),
       st.booleans(), st.sampled_from([None, (1, 1), (1, "N"), ("B", "N")]), st.booleans(), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_multihead_attention_matches_onnxruntime(ort_cpu_run, batch, seq, kv_seq, heads, hq, hv, form, uni,
                                                 fully_masked, with_bias, attn_bias, per_head, symbolic, seed):
    """(MultiHeadAttention rejects Attention's 2B mask form.)"""
    rng = np.random.default_rng(seed)
    hv = hq if per_head else (hv or hq)
    if uni:
        kv_seq = seq        # onnxruntime's causal mask is defined for equal lengths only (refused otherwise)
    if attn_bias:
        attn_bias = (batch if attn_bias[0] == "B" else 1, heads if attn_bias[1] == "N" else 1)
    m, feeds = _mha_model(rng, batch, seq, kv_seq, heads, hq, hv, form, uni, fully_masked, with_bias, attn_bias, 0,
                          per_head, symbolic, present=per_head)
    assert_matches_onnxruntime(m, feeds, ort_cpu_run, atol=_atol(form, uni, fully_masked), rtol=1e-4)


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.sampled_from([None, "1d", "2d"]),
       st.booleans(), st.booleans(), st.integers(0, 2**31 - 1))
def test_multihead_attention_past_and_present(ort_cpu_run, batch, seq, past_len, heads, form, uni, with_bias, seed):
    rng = np.random.default_rng(seed)
    m, feeds = _mha_model(rng, batch, seq, seq, heads, 4, 4, form, uni, False, with_bias, None, past_len, False,
                          False)
    assert_matches_onnxruntime(m, feeds, ort_cpu_run, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("op", ["Attention", "MultiHeadAttention"])
@pytest.mark.parametrize("form", [None, "1d", "2d"])
def test_float16(ort_cpu_run, op, form):
    rng = np.random.default_rng(5)
    if op == "Attention":
        m, feeds = _attention_model(rng, 2, 6, 16, 2, 8, 8, form, False, False, True, None, 0, None, True,
                                    dtype=np.float16)
    else:
        m, feeds = _mha_model(rng, 2, 6, 6, 2, 8, 8, form, False, False, True, None, 0, False, True,
                              dtype=np.float16)
    ops, _ = assert_matches_onnxruntime(m, feeds, ort_cpu_run, atol=3e-3, rtol=3e-3)
    assert "Attention" in ops


def _fused(m):
    sess = normrt.InferenceSession(m.SerializeToString())
    return [(n.domain, n.op_type) for n in sess.optimized_model.graph.node]


@pytest.mark.parametrize("form", [None, "1d", "2b", "2d", "3d"])
@pytest.mark.parametrize("uni", [False, True])
@pytest.mark.parametrize("symbolic", [False, True])
def test_attention_fuses_onto_normrt_attention(form, uni, symbolic):
    """BERT's and GPT-2's forms (static or symbolic batch / length): one normrt::Attention, no
    Softmax left, the head Transposes absorbed."""
    rng = np.random.default_rng(0)
    m, _ = _attention_model(rng, 2, 5, 16, 2, 8, 8, form, uni, False, True, None, 0, None, symbolic)
    ops = _fused(m)
    assert ("normrt", "Attention") in ops, ops
    assert not any(op in ("Softmax", "Transpose") for _, op in ops), ops


@pytest.mark.parametrize("form", [None, "1d", "2d", "3d"])
@pytest.mark.parametrize("per_head", [False, True])
def test_multihead_attention_fuses_onto_normrt_attention(form, per_head):
    rng = np.random.default_rng(0)
    m, _ = _mha_model(rng, 2, 5, 7, 2, 8, 8, form, False, False, True, None, 0, per_head, True)
    ops = _fused(m)
    assert ("normrt", "Attention") in ops, ops
    assert ("", "Softmax") not in ops, ops


def test_constant_causal_mask_becomes_is_causal():
    """unidirectional with static lengths: the causal bias is a constant of the lowest float, which
    causal_mask turns into the kernel's is_causal."""
    rng = np.random.default_rng(0)
    m, _ = _attention_model(rng, 1, 6, 16, 2, 8, 8, None, True, False, True, None, 0, None, False)
    sess = normrt.InferenceSession(m.SerializeToString())
    attn = [n for n in sess.optimized_model.graph.node if n.op_type == "Attention"]
    assert len(attn) == 1 and any(a.name == "is_causal" and a.i == 1 for a in attn[0].attribute)


def test_non_finite_attention_bias_keeps_onnxruntime_nan(ort_cpu_run):
    """An attention_bias fed at run time may hold a row of -inf, which onnxruntime turns into NaN
    (the fused kernel's own choice is zeros): the fused node marks it nan_rows and gives NaN there."""
    rng = np.random.default_rng(3)
    m, feeds = _mha_model(rng, 1, 3, 3, 2, 4, 4, None, False, False, False, (1, 2), 0, False, False)
    feeds["attn_bias"][0, 0, 1, :] = -np.inf
    ops, got = assert_matches_onnxruntime(m, feeds, ort_cpu_run)
    assert "Attention" in ops and "Softmax" not in ops
    assert np.isnan(got[0][0, 1, :4]).all()


def _refused(m, match):
    # the node stays, and nothing runs it: loading fails naming it (as onnxruntime_fused_ops' refusals)
    with pytest.raises((normrt.ModelError, NotImplementedError), match=match):
        normrt.InferenceSession(m.SerializeToString())


def _attention_node(attrs=None, ins=("x", "W", "b"), outs=("y",)):
    node = helper.make_node("Attention", list(ins), list(outs), name="attn_node", domain=MS, num_heads=2,
                            **(attrs or {}))
    inits = [numpy_helper.from_array(np.ones((8, 24), np.float32), "W"),
             numpy_helper.from_array(np.zeros(24, np.float32), "b")]
    return node, inits


@pytest.mark.parametrize("attrs, extra_inputs", [
    ({"do_rotary": 1}, []),
    ({"past_present_share_buffer": 1}, []),
    ({}, [("mask4d", [2, 1, 6, 6], TensorProto.INT32)]),
    ({}, [("mask_3b2", [8], TensorProto.INT32)]),
])
def test_attention_refusals_name_the_node(attrs, extra_inputs):
    ins = ["x", "W", "b"] + [name for name, _, _ in extra_inputs]
    node, inits = _attention_node(attrs, ins)
    inputs = [vi("x", [2, 4, 8])] + [vi(n, s, t) for n, s, t in extra_inputs]
    _refused(contrib_model([node], inputs, [vi("y", None)], inits), "attn_node")


def test_past_sequence_length_is_refused():
    node, inits = _attention_node({}, ["x", "W", "b", "", "past", "", "past_len"], ["y", "present"])
    inputs = [vi("x", [2, 4, 8]), vi("past", [2, 2, 2, 8, 4]), vi("past_len", [1], TensorProto.INT32)]
    _refused(contrib_model([node], inputs, [vi("y", None), vi("present", None)], inits), "attn_node")


@pytest.mark.parametrize("case", ["packed_qkv", "packed_kv", "uni_cross", "qk_output", "cache_indirection"])
def test_multihead_attention_refusals_name_the_node(case):
    ins, outs = ["q", "k", "v"], ["y"]
    inputs = [vi("q", [2, 4, 8]), vi("k", [2, 6, 8]), vi("v", [2, 6, 8])]
    attrs = {}
    if case == "packed_qkv":
        ins, inputs = ["q"], [vi("q", [2, 4, 2, 3, 4])]
    elif case == "packed_kv":
        ins, inputs = ["q", "k"], [vi("q", [2, 4, 8]), vi("k", [2, 6, 2, 2, 4])]
    elif case == "uni_cross":
        attrs["unidirectional"] = 1
    elif case == "qk_output":
        outs = ["y", "", "", "qk"]
    else:
        ins += ["", "", "", "", "", "", "beams"]
        inputs.append(vi("beams", [2, 1, 6], TensorProto.INT32))
    node = helper.make_node("MultiHeadAttention", ins, outs, name="mha_node", domain=MS, num_heads=2, **attrs)
    outputs = [vi(o, None) for o in outs if o]
    _refused(contrib_model([node], inputs, outputs), "mha_node")
