"""The half-precision fixtures in tests/data/half (scripts/make_fixtures.py --half: torch
exports of half models, legacy and dynamo exporters): every normalization runs on a normrt
kernel -- none left to onnx.reference, no reduction of a decomposed one left around --, the
Cast islands of the mixed-precision model each become one half node, and the outputs match
the stored reference (torch in float32 on the half weights and inputs) within a few roundings
of the output dtype. Non-norm ops may run on any path (another issue makes them fast).
"""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import normrt
from dtype_checks import assert_same_bits_for_threads
from half_models import HALF_NP, norm_nodes, statistics_left

HALF_NP_BY_NAME = {v.name: v for v in HALF_NP.values()}
DATA = Path(__file__).resolve().parent.parent / "data" / "half"
INDEX = json.loads((DATA / "fixtures.json").read_text())
FIXTURES = INDEX["fixtures"]
TOL_ULPS = 4             # the index's "tolerance", in units of eps(dtype) * max(|reference|, 1)
EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}
# normalizations per model (each must be one normrt node)
NORMS = {"conv_gn_ln": ["GroupNorm", "LayerNorm"], "preln_block": ["LayerNorm", "LayerNorm"],
         "llama_block": ["RMSNorm", "RMSNorm"], "mixed_fp32_norms": ["GroupNorm", "LayerNorm", "RMSNorm"]}
ISLANDS = {"mixed_fp32_norms": 3}       # GroupNorm32, FP32LayerNorm, LLaMA's RMSNorm


def test_index_covers_the_issue_models():
    have = {(e["name"], e["dtype"]) for e in FIXTURES}
    assert {("conv_gn_ln", "float16"), ("conv_gn_ln", "bfloat16"), ("preln_block", "float16"),
            ("llama_block", "float16"), ("mixed_fp32_norms", "float16"), ("mixed_fp32_norms", "bfloat16")} <= have
    assert str(TOL_ULPS) in INDEX["tolerance"]
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 512 * 1024      # kept small


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda e: e["file"])
def fixture_run(request):
    entry = request.param
    data = np.load(DATA / entry["data"])
    # numpy stores ml_dtypes.bfloat16 as raw 2-byte values (|V2): viewed back
    half = HALF_NP_BY_NAME[entry["dtype"]]
    feeds = {k.split(":", 1)[1]: data[k].view(half) for k in data.files if k.startswith("input:")}
    sess = normrt.InferenceSession(str(DATA / entry["file"]))
    return entry, sess, feeds, data["output:y"]


def test_every_norm_on_a_kernel(fixture_run):
    entry, sess, _, _ = fixture_run
    model = sess.optimized_model
    assert sorted(norm_nodes(model)) == sorted(NORMS[entry["name"]]), [n.op_type for n in model.graph.node]
    assert statistics_left(model) == []
    assert not [e for e in sess.report["refused"] if e["pass"] in ("standard_norms", "recognized_norms")]
    islands = [e for e in sess.report["fused"] if e.get("cast_island")]
    assert len(islands) >= ISLANDS.get(entry["name"], 0), sess.report["refused"]
    assert all(e["cast_island"] == entry["dtype"] for e in islands)


def test_outputs_match_torch(fixture_run):
    entry, sess, feeds, want = fixture_run
    for k, v in feeds.items():
        assert v.dtype == HALF_NP_BY_NAME[entry["dtype"]], k
    (got,) = sess.run(None, feeds)
    # the model's declared output type (the legacy exporter ends the half LLaMA block in float32)
    declared = onnx.load(str(DATA / entry["file"]), load_external_data=False).graph.output[0].type.tensor_type
    assert got.dtype == ELEM_NP[declared.elem_type] and got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want) / (EPS[entry["dtype"]] * np.maximum(np.abs(want), 1.0))
    assert err.max() <= TOL_ULPS, f"{entry['file']}: {err.max():.2f} ulps"


ELEM_NP = {**HALF_NP, TensorProto.FLOAT: np.dtype(np.float32)}


def test_same_bits_for_any_thread_count(fixture_run):
    _, sess, feeds, _ = fixture_run
    assert_same_bits_for_threads(lambda: sess.run(None, feeds)[0])
