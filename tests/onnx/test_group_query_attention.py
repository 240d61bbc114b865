"""onnxruntime's GroupQueryAttention (passes/group_query_attention.py) in both its forms, the
fused normrt::GroupQueryAttention step (grouped_query_call.py) and the standard ops of its
definition (_gqa_graph.py, softcap's form), against onnxruntime's CPU kernel: prompts, token
generation and a continued prompt, right-padded batches (rows of differing seqlens_k), a static
cache longer than the total length, packed and separate Q/K/V, rotary (halves / interleaved,
full / partial), grouped heads, local windows, softcap, float16; a prompt and three decode
steps feeding present back as past; the standard ops' fusion onto normrt::Attention; the
refusals."""
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import normrt

from graph_builder import vi
from normrt.onnx.passes.group_query_attention import GroupQueryAttention
from ort_contrib import MS, assert_matches_onnxruntime, contrib_model

# a node no pass rewrote and nothing implements: normrt raises NotImplementedError naming it
NOT_LOADED = (normrt.ModelError, NotImplementedError)
NP = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


@contextmanager
def form(fused):
    """Sessions made inside load GQA nodes as the fused step (True) or as standard ops (False)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GroupQueryAttention, "fused", fused)
        yield


def gqa_model(heads, kv_heads, head_size, packed=False, past=True, rotary=None, max_positions=64,
              elem=TensorProto.FLOAT, opset=17, **attrs):
    """A one-node GQA model declared as onnxruntime-genai declares its layers: symbolic batch,
    sequence and cache lengths; `rotary` None or (rotary dim, interleaved) with constant caches."""
    ins = ["query", "" if packed else "key", "" if packed else "value",
           "past_key" if past else "", "past_value" if past else "", "seqlens_k", "total_sequence_length"]
    hidden = (heads + 2 * kv_heads) * head_size if packed else heads * head_size
    inputs = [vi("query", ["batch", "seq", hidden], elem)]
    if not packed:
        inputs += [vi(n, ["batch", "seq", kv_heads * head_size], elem) for n in ("key", "value")]
    if past:
        inputs += [vi(n, ["batch", kv_heads, "past", head_size], elem) for n in ("past_key", "past_value")]
    inputs += [vi("seqlens_k", ["batch"], TensorProto.INT32), vi("total_sequence_length", [], TensorProto.INT32)]
    inits = []
    if rotary is not None:
        dim, interleaved = rotary
        ins += ["cos_cache", "sin_cache"]
        attrs.update(do_rotary=1, rotary_interleaved=int(interleaved))
        angles = np.arange(max_positions)[:, None] / 10000 ** (np.arange(0, dim, 2) / dim)[None]
        inits = [numpy_helper.from_array(np.cos(angles).astype(NP[elem]), "cos_cache"),
                 numpy_helper.from_array(np.sin(angles).astype(NP[elem]), "sin_cache")]
    node = helper.make_node("GroupQueryAttention", ins, ["output", "present_key", "present_value"], name="gqa",
                            domain=MS, num_heads=heads, kv_num_heads=kv_heads, **attrs)
    outputs = [vi("output", ["batch", "seq", heads * head_size], elem)] + \
        [vi(n, ["batch", kv_heads, "total", head_size], elem) for n in ("present_key", "present_value")]
    return contrib_model([node], inputs, outputs, inits, opset=opset)


def gqa_feeds(rng, heads, kv_heads, head_size, seq, past_len, total, lengths, packed=False, past=True,
              elem=TensorProto.FLOAT):
    """Feeds of one step: `lengths` the valid tokens of each batch row after the step
    (seqlens_k = lengths - 1), the past buffer `past_len` long."""
    dtype, batch = NP[elem], len(lengths)
    hidden = (heads + 2 * kv_heads) * head_size if packed else heads * head_size
    feeds = {"query": rng.standard_normal((batch, seq, hidden)).astype(dtype),
             "seqlens_k": np.asarray(lengths, np.int32) - 1, "total_sequence_length": np.array(total, np.int32)}
    if not packed:
        for n in ("key", "value"):
            feeds[n] = rng.standard_normal((batch, seq, kv_heads * head_size)).astype(dtype)
    if past:
        for n in ("past_key", "past_value"):
            feeds[n] = rng.standard_normal((batch, kv_heads, past_len, head_size)).astype(dtype)
    return feeds


def step_lengths(draw_lengths, phase, batch, seq, past_len):
    """(seq, past buffer, total_sequence_length, per-row lengths) of a step onnxruntime accepts."""
    if phase == "prompt":               # first prompt: right-padded rows, the longest fills S
        return seq, 0, seq, [seq] + draw_lengths(batch - 1, 1, seq)
    if phase == "decode":               # one token; rows of a padded batch end before the buffer does
        return 1, past_len, past_len + 1, [past_len + 1] + draw_lengths(batch - 1, 1, past_len + 1)
    if phase == "static":               # a static cache: the buffer longer than the total length
        total = past_len - 1
        return 1, past_len, total, [total] + draw_lengths(batch - 1, 1, total)
    return seq, past_len, past_len + seq, [past_len + seq]       # continued prompt (batch 1)


HEADS = [(4, 4, 16), (4, 2, 16), (4, 1, 16), (6, 2, 32)]
ROTARY = [None, ("full", False), ("full", True), ("half", False), ("half", True)]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(HEADS), st.sampled_from(["prompt", "decode", "static", "continued"]), st.integers(1, 3),
       st.integers(1, 7), st.integers(2, 9), st.booleans(), st.sampled_from(ROTARY),
       st.sampled_from([-1, -1, 1, 3]), st.sampled_from([0.0, 0.0, 2.5]), st.booleans(),
       st.randoms(use_true_random=False))
def test_matches_onnxruntime(ort_cpu_run, heads_cfg, phase, batch, seq, past_len, packed, rotary, window, softcap,
                             fused, rnd):
    heads, kv_heads, head_size = heads_cfg
    if phase == "continued":
        batch = 1
        seq = max(seq, 2)
    rng = np.random.default_rng(rnd.randrange(2**31))
    seq, past_len, total, lengths = step_lengths(
        lambda n, lo, hi: [rnd.randint(lo, hi) for _ in range(n)], phase, batch, seq, past_len)
    rot = None if rotary is None else (head_size if rotary[0] == "full" or head_size < 32 else head_size // 2,
                                       rotary[1])
    m = gqa_model(heads, kv_heads, head_size, packed=packed, rotary=rot, local_window_size=window, softcap=softcap)
    feeds = gqa_feeds(rng, heads, kv_heads, head_size, seq, past_len, total, lengths, packed=packed)
    with form(fused):
        ops, _ = assert_matches_onnxruntime(m, feeds, ort_cpu_run, rtol=1e-4, atol=1e-5)
    if fused and softcap == 0:
        assert ops == {"GroupQueryAttention"}, ops
    else:
        # the attention itself runs on the fused kernel; softcap's Tanh sits inside the chain
        assert ("Attention" in ops) == (softcap == 0), ops


@settings(max_examples=16, deadline=None)
@given(st.sampled_from(HEADS[:3]), st.sampled_from(["prompt", "decode"]), st.integers(1, 3), st.booleans(),
       st.booleans(), st.sampled_from([-1, 2]), st.booleans(), st.randoms(use_true_random=False))
def test_float16_matches_onnxruntime(ort_cpu_run, heads_cfg, phase, batch, interleaved, packed, window, fused,
                                     rnd):
    heads, kv_heads, head_size = heads_cfg
    rng = np.random.default_rng(rnd.randrange(2**31))
    seq, past_len, total, lengths = step_lengths(
        lambda n, lo, hi: [rnd.randint(lo, hi) for _ in range(n)], phase, batch, 5, 6)
    m = gqa_model(heads, kv_heads, head_size, packed=packed, rotary=(head_size, interleaved),
                  elem=TensorProto.FLOAT16, local_window_size=window)
    feeds = gqa_feeds(rng, heads, kv_heads, head_size, seq, past_len, total, lengths, packed=packed,
                      elem=TensorProto.FLOAT16)
    with form(fused):
        assert_matches_onnxruntime(m, feeds, ort_cpu_run, rtol=1e-2, atol=4e-3)


@pytest.mark.parametrize("fused", [True, False])
def test_without_past_matches_onnxruntime(ort_cpu_run, fused):
    m = gqa_model(4, 2, 16, past=False, rotary=(16, False))
    feeds = gqa_feeds(np.random.default_rng(0), 4, 2, 16, 6, 0, 6, [6, 4], past=False)
    with form(fused):
        assert_matches_onnxruntime(m, feeds, ort_cpu_run)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(HEADS), st.sampled_from(["prompt", "decode", "static", "continued"]), st.integers(1, 3),
       st.integers(1, 7), st.integers(2, 9), st.booleans(), st.sampled_from(ROTARY), st.sampled_from([-1, 1, 3]),
       st.randoms(use_true_random=False))
def test_fused_step_computes_the_standard_ops(heads_cfg, phase, batch, seq, past_len, packed, rotary, window, rnd):
    """The fused step and the standard ops of the definition give the same values (the same
    products and roundings, the attention on the same kernel) on the same feeds."""
    heads, kv_heads, head_size = heads_cfg
    if phase == "continued":
        batch, seq = 1, max(seq, 2)
    rng = np.random.default_rng(rnd.randrange(2**31))
    seq, past_len, total, lengths = step_lengths(
        lambda n, lo, hi: [rnd.randint(lo, hi) for _ in range(n)], phase, batch, seq, past_len)
    rot = None if rotary is None else (head_size // 2 if rotary[0] == "half" else head_size, rotary[1])
    m = gqa_model(heads, kv_heads, head_size, packed=packed, rotary=rot, local_window_size=window).SerializeToString()
    feeds = gqa_feeds(rng, heads, kv_heads, head_size, seq, past_len, total, lengths, packed=packed)
    outputs = {}
    for fused in (True, False):
        with form(fused):
            outputs[fused] = normrt.InferenceSession(m).run(None, feeds)
    for name, a, b in zip(("output", "present_key", "present_value"), outputs[True], outputs[False]):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("packed", [False, True])
def test_prompt_then_decode_steps(ort_cpu_run, packed, fused):
    """A right-padded batch of two prompts (5 and 3 tokens), then three generated tokens, present
    fed back as past: both runtimes step by step, each from its own cache."""
    import onnxruntime as ort
    heads, kv_heads, head_size = 4, 2, 16
    m = gqa_model(heads, kv_heads, head_size, packed=packed, rotary=(head_size, False), local_window_size=4)
    with form(fused):
        sess = normrt.InferenceSession(m.SerializeToString())
    ops = {n.op_type for n in sess.optimized_model.graph.node}
    assert ops == {"GroupQueryAttention"} if fused else "Attention" in ops, ops
    reference = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    lengths = [5, 3]
    feeds = gqa_feeds(rng, heads, kv_heads, head_size, 5, 0, 5, lengths, packed=packed)
    ours, theirs = dict(feeds), dict(feeds)
    for step in range(4):
        got, want = sess.run(None, ours), reference.run(None, theirs)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"step {step}")
        lengths = [n + 1 for n in lengths]
        cache = want[1].shape[2]
        new = gqa_feeds(rng, heads, kv_heads, head_size, 1, cache, cache + 1, lengths, packed=packed)
        ours = dict(new, past_key=got[1], past_value=got[2])
        theirs = dict(new, past_key=want[1], past_value=want[2])


def test_seqlens_with_a_trailing_axis(ort_cpu_run):
    """seqlens_k (B, 1), as gemma-4's exports write it: onnxruntime takes it."""
    m = gqa_model(4, 2, 16)
    m.graph.input[5].CopyFrom(vi("seqlens_k", ["batch", 1], TensorProto.INT32))
    feeds = gqa_feeds(np.random.default_rng(2), 4, 2, 16, 1, 4, 5, [5, 3])
    feeds["seqlens_k"] = feeds["seqlens_k"].reshape(-1, 1)
    assert_matches_onnxruntime(m, feeds, ort_cpu_run)


def _with(m, **changes):
    node = m.graph.node[0]
    for key, value in changes.items():
        if key == "inputs":
            del node.input[:]
            node.input.extend(value)
        elif key == "outputs":
            del node.output[:]
            node.output.extend(value)
        else:
            node.attribute.append(helper.make_attribute(key, value))
    return m


def _bias_input(m):
    m.graph.input.append(vi("attention_bias", [1, 1, "seq", "total"]))
    return list(m.graph.node[0].input) + ["", "", "", "attention_bias"]


@pytest.mark.parametrize("change, reason", [
    (lambda m: _with(m, smooth_softmax=1), "smooth softmax"),
    (lambda m: _with(m, local_window_size=0), "local_window_size 0"),
    (lambda m: _with(m, inputs=_bias_input(m)), "attention_bias"),
    (lambda m: _with(m, k_quant_type="PER_TENSOR"), "quantized KV cache"),
    (lambda m: _with(m, some_new_attribute=1), "some_new_attribute"),
    (lambda m: _with(m, inputs=list(m.graph.node[0].input)[:3] + ["past_key", ""] + list(m.graph.node[0].input)[5:]),
     "past_key without past_value"),
])
def test_refused_forms_fail_loading_naming_the_node(change, reason):
    m = gqa_model(4, 2, 16)
    for a in list(m.graph.node[0].attribute):
        if a.name in ("local_window_size",):
            m.graph.node[0].attribute.remove(a)
    m = change(m)
    _, report = normrt.optimize(m, report=True)
    refused = [r for r in report["refused"] if r["pass"] == "group_query_attention"]
    assert refused and reason in refused[0]["reason"], report["refused"]
    with pytest.raises(NOT_LOADED, match="'gqa'"):
        normrt.InferenceSession(m.SerializeToString())


def test_heads_not_grouping_evenly_are_refused():
    m = gqa_model(6, 4, 16)
    _, report = normrt.optimize(m, report=True)
    assert any("multiple of kv_num_heads" in r["reason"] for r in report["refused"])
    with pytest.raises(NOT_LOADED, match="'gqa'"):
        normrt.InferenceSession(m.SerializeToString())


def test_positions_beyond_the_rotary_caches_name_them():
    """A past longer than the cos/sin caches' positions (a model built for 64 positions, fed 70):
    a clear error naming the caches, from the fused step (onnxruntime reads past its table)."""
    m = gqa_model(4, 2, 16, rotary=(16, False), max_positions=64)
    feeds = gqa_feeds(np.random.default_rng(3), 4, 2, 16, 1, 70, 71, [71])
    sess = normrt.InferenceSession(m.SerializeToString())
    with pytest.raises(ValueError, match="beyond the cos/sin caches' 64 positions"):
        sess.run(None, feeds)
