"""The torch exports of tests/data (the exporter fixtures -- transformers BERT/LLaMA/ViT/ConvNeXt,
diffusers UNet2D/VAE included -- and the 30-odd hand-written spellings), their float tensors
retyped to float16 and bfloat16 (Resize's scales stay float32): every pattern fused in float32 is fused in
half too -- the same normrt norm nodes --, and the half model matches its float64 twin.

Known differences, each asserted: BatchNorm after a Conv is not folded into half weights (it
stays a BatchNorm node); F.normalize's eps 1e-12 is 0 in float16 (refused: a zero vector is NaN
there, not zeros).
"""
import collections
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import normrt
from half_models import HALF_NP, norm_nodes, reference64, retyped_model

DATA = Path(__file__).resolve().parent.parent / "data"
H, BF = TensorProto.FLOAT16, TensorProto.BFLOAT16
EPS = {H: 2.0 ** -10, BF: 2.0 ** -7}
# a model rounds every op to half: a wrong fusion is off by O(1), a right one by a few roundings
TOL_ULPS = 24


def _entries():
    """One export per model (legacy opset 17, or the first there is)."""
    out = {}
    for folder, index in ((DATA, "fixtures.json"), (DATA / "spellings", "index.json")):
        for e in json.loads((folder / index).read_text())["fixtures"]:
            key = (folder.name, e["name"])
            if key not in out or (e["exporter"], e["opset"]) == ("legacy", 17):
                out[key] = dict(e, path=folder / e["file"], npz=folder / e["data"])
    return list(out.values())


ENTRIES = _entries()


def _feeds(entry, half):
    data = np.load(entry["npz"])
    feeds = {}
    for k in data.files:
        if k.startswith("input:"):
            v = data[k]
            feeds[k[6:]] = v.astype(HALF_NP[half]) if v.dtype == np.float32 else v
    return feeds


@pytest.fixture(scope="module")
def float32_norms():
    cache = {}

    def get(entry):
        if entry["file"] not in cache:
            sess = normrt.InferenceSession(str(entry["path"]))
            cache[entry["file"]] = (collections.Counter(norm_nodes(sess.optimized_model)),
                                    sess.report["passes"].get("fold_batch_norm", 0))
        return cache[entry["file"]]
    return get


@pytest.mark.parametrize("half", [H, BF], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["file"])
def test_same_fusions_in_half(entry, half, float32_norms):
    want_norms, folded_bn = float32_norms(entry)
    model = retyped_model(onnx.load(str(entry["path"])), half)
    sess = normrt.InferenceSession(model)
    got_norms = collections.Counter(norm_nodes(sess.optimized_model))
    expected = want_norms + collections.Counter({"BatchNorm": folded_bn})   # not folded into half weights
    if half == H and got_norms["LpNorm"] < expected["LpNorm"]:
        assert any("underflows" in e["reason"] for e in sess.report["refused"]), sess.report["refused"]
        expected["LpNorm"] = got_norms["LpNorm"]
    assert got_norms == expected, sess.report["refused"]
    feeds = _feeds(entry, half)
    got = sess.run(None, feeds)
    want = reference64(model, feeds)
    for g, w in zip(got, want):
        if np.asarray(w).dtype.kind != "f":
            continue
        w = np.asarray(w, np.float64)
        scale = max(1.0, float(np.max(np.abs(w[np.isfinite(w)]), initial=0.0)))
        err = np.abs(np.asarray(g).astype(np.float64) - w)
        assert np.array_equal(np.isnan(err), np.isnan(w)), "NaN positions differ"
        assert np.nanmax(err, initial=0.0) <= TOL_ULPS * EPS[half] * scale, (entry["file"], np.nanmax(err) / scale)
