"""Transformer-style fixtures (real torch.onnx.export output in tests/data): every LayerNorm and
RMSNorm -- standard op or written out -- becomes a normrt node, residual Adds into them are fused
where legal, and normrt.InferenceSession reproduces the stored torch output.

Expected counts per case name (the same at every exporter and opset present in fixtures.json):
NORMS    normrt LayerNorm/RMSNorm nodes;
RESIDUAL norms with the skip-connection Add fused. Left unfused, legally: BERT's embeddings
         (word + position embeddings: the position term broadcasts over the batch), LLaMA's
         first input_layernorm (reads the embedding Gather, no Add), ConvNeXt (a Transpose sits
         between each residual Add and the next norm).
"""
import collections
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import normrt

DATA = Path(__file__).parent.parent / "data"
FIXTURES = json.loads((DATA / "fixtures.json").read_text())["fixtures"]

NORMS = {
    "layernorm": {"LayerNorm": 1}, "residual_layernorm": {"LayerNorm": 1}, "rmsnorm": {"RMSNorm": 1},
    "rmsnorm_llama": {"RMSNorm": 1}, "rmsnorm_t5": {"RMSNorm": 1}, "preln_block": {"LayerNorm": 2},
    "preln_block_eager": {"LayerNorm": 2}, "hf_bert": {"LayerNorm": 5}, "hf_llama": {"RMSNorm": 5},
    "hf_vit": {"LayerNorm": 5}, "hf_convnext": {"LayerNorm": 1, "ChannelNorm": 4},
}
# hf_bert: the embeddings' Add too (word + position embeddings, broadcast over the batch: the
# norm's call adds that residual as the Add would)
RESIDUAL = {"residual_layernorm": 1, "preln_block": 1, "preln_block_eager": 1, "hf_bert": 5, "hf_llama": 4,
            "hf_vit": 5}
CASES = [e for e in FIXTURES if e["name"] in NORMS]
STANDARD = {"LayerNormalization", "RMSNormalization"}


def test_every_case_is_present():
    assert {e["name"] for e in CASES} == set(NORMS)


@pytest.fixture(scope="module", params=CASES, ids=[e["file"].removesuffix(".onnx") for e in CASES])
def case(request):
    entry = request.param
    sess = normrt.InferenceSession(str(DATA / entry["file"]))
    return entry, sess


def test_norms_become_normrt_nodes(case):
    entry, sess = case
    graph = sess.optimized_model.graph
    # (the norms only: attention and GEMM fusions add other normrt ops; ConvNeXt's channels-last
    # LayerNorms run channels-first, channels_first_blocks)
    ops = collections.Counter(n.op_type for n in graph.node if n.domain == "normrt"
                              and n.op_type in ("LayerNorm", "RMSNorm", "ChannelNorm"))
    assert dict(ops) == NORMS[entry["name"]]
    assert not [n.name for n in graph.node if n.domain in ("", "ai.onnx") and n.op_type in STANDARD]
    # no norm statistic is left: the only ReduceMean left is ConvNeXt's pooler (keepdims=0, no norm)
    for n in graph.node:
        if n.op_type == "ReduceMean":
            assert entry["name"] == "hf_convnext"
            assert any(a.name == "keepdims" and a.i == 0 for a in n.attribute), n.name
    report = sess.report
    fused = [e for e in report["fused"] if e["normrt_op"] in ("LayerNorm", "RMSNorm", "ChannelNorm")]
    assert len(fused) == sum(NORMS[entry["name"]].values())
    for e in fused:
        assert e["nodes"] and e["kernel"] in ("layer_norm", "rms_norm", "layer_norm_2d") and e["normrt_node"]
    mine = ("recognized_norms",)
    assert not [e for e in report["refused"] if e["pass"] in mine]


def test_residual_adds_are_fused_where_legal(case):
    entry, sess = case
    graph = sess.optimized_model.graph
    norms = [n for n in graph.node if n.domain == "normrt" and n.op_type in ("LayerNorm", "RMSNorm")]
    slot = {"LayerNorm": 3, "RMSNorm": 2}
    with_residual = [n for n in norms if len(n.input) > slot[n.op_type] and n.input[slot[n.op_type]]]
    assert len(with_residual) == RESIDUAL.get(entry["name"], 0)
    assert sum(1 for e in sess.report["fused"]
               if e.get("residual") and e.get("normrt_op") in ("LayerNorm", "RMSNorm")) == len(with_residual)
    # any Add still feeding a norm without residual was refused with a reason
    producer = {o: n for n in graph.node for o in n.output}
    refused = {tuple(e["nodes"]) for e in sess.report["refused"] if e["pass"] == "residual_norm"}
    for n in norms:
        if n in with_residual:
            continue
        p = producer.get(n.input[0])
        if p is not None and p.op_type == "Add" and p.domain == "":
            assert (p.name, n.name) in refused
    for e in sess.report["refused"]:
        if e["pass"] == "residual_norm":
            assert e["reason"], e


def test_reproduces_torch(case):
    entry, sess = case
    data = np.load(DATA / entry["data"])
    feeds = {k.removeprefix("input:"): data[k] for k in data.files if k.startswith("input:")}
    outs = sess.run(None, feeds)
    for meta, got in zip(sess.get_outputs(), outs):
        want = data["output:" + meta.name]
        assert got.shape == want.shape
        err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
        assert err <= 1e-4 * max(1.0, float(np.max(np.abs(want)))), (meta.name, err)


def test_optimized_model_is_valid_and_stable(case):
    entry, sess = case
    onnx.checker.check_model(sess.optimized_model)
    again = normrt.optimize(sess.optimized_model)
    assert [n.op_type for n in again.graph.node] == [n.op_type for n in sess.optimized_model.graph.node]
