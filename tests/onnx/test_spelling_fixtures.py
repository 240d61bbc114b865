"""Hand-written normalizations from real model code (scripts/norm_spellings.py), exported with
both torch exporters into tests/data/spellings/ by `scripts/make_fixtures.py --spellings`.

Every fixture runs on normrt with the torch output reproduced (the fixtures' tolerance,
1e-4 * max(1, max|out|)); each has the normrt nodes its case expects, or the refusal
reason it expects in the report (a look-alike, or a layout no kernel takes).
"""
import collections
import json
from pathlib import Path

import numpy as np
import pytest

import normrt

DATA = Path(__file__).parent.parent / "data" / "spellings"
FIXTURES = json.loads((DATA / "index.json").read_text())["fixtures"]
REL_TOL = 1e-4
NORM_OPS = {"LayerNorm", "RMSNorm", "ChannelNorm", "InstanceNorm", "GroupNorm", "LpNorm", "MeanVarianceNorm", "AdaIN",
            "BatchNorm"}


def test_there_are_thirty_cases_from_both_exporters():
    names = {e["name"] for e in FIXTURES}
    assert len(names) >= 30
    by_exporter = collections.Counter(e["exporter"] for e in FIXTURES)
    assert by_exporter["legacy"] >= 30 and by_exporter["dynamo"] >= 30


@pytest.fixture(scope="module", params=FIXTURES, ids=[e["file"] for e in FIXTURES])
def case(request):
    entry = request.param
    data = np.load(DATA / entry["data"])
    feeds = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("input:")}
    want = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("output:")}
    sess = normrt.InferenceSession(str(DATA / entry["file"]))
    return entry, sess, feeds, want


def test_matches_torch(case):
    entry, sess, feeds, want = case
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for name, w in want.items():
        err = float(np.max(np.abs(got[name].astype(np.float64) - w)))
        assert err <= REL_TOL * max(1.0, float(np.max(np.abs(w)))), (entry["file"], name, err)


def test_fuses_as_expected(case):
    entry, sess, _, _ = case
    options = entry["expect"] if isinstance(entry["expect"], list) else [entry["expect"]]
    ops = dict(collections.Counter(n.op_type for n in sess.optimized_model.graph.node
                                   if n.domain == "normrt" and n.op_type in NORM_OPS))
    matching = [e for e in options if {k: v for k, v in e.items() if k not in ("refused", "ops")} == ops]
    assert matching, (entry["file"], ops, sess.report["refused"])
    refused = matching[0].get("refused")
    if "ops" in matching[0]:
        assert [n.op_type for n in sess.optimized_model.graph.node] == matching[0]["ops"]
    if refused:
        reasons = [e["reason"] for e in sess.report["refused"]]
        assert any(refused in r for r in reasons), (entry["file"], reasons)
