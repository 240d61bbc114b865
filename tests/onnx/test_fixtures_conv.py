"""Conv-net normalizations of the real exporter fixtures (tests/data) end to end through normrt.optimize.

For every exporter/opset of each case: no standard normalization op is left (no
InstanceNormalization standing in for a GroupNorm), each norm is exactly one normrt
node with the expected fused activation, the rewrites that did it are the expected
ones, and normrt.InferenceSession reproduces the stored torch output
(max abs err <= 1e-4 * max(1, max|out|)).
"""
import collections
import json
from pathlib import Path

import numpy as np
import pytest

import normrt
from normrt.onnx.report import COMPUTE_OPS

DATA = Path(__file__).parent.parent / "data"
FIXTURES = json.loads((DATA / "fixtures.json").read_text())["fixtures"]
STANDARD_NORMS = {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
                  "RMSNormalization", "MeanVarianceNormalization", "LpNormalization", "LRN"}

# name -> {(normrt op, activation): count}
EXPECTED = {
    "groupnorm": {("GroupNorm", ""): 1},
    "groupnorm_silu": {("GroupNorm", "silu"): 1},
    "instancenorm2d": {("InstanceNorm", ""): 1},
    "cond_instancenorm_embedding": {("InstanceNorm", ""): 1},
    "cond_instancenorm_index": {("InstanceNorm", ""): 1},
    "bn2d": {("BatchNorm", ""): 1},
    "conv_bn2d": {},                                    # folded by the exporters already
    "linear_bn1d": {},                                  # legacy: folded by fold_batch_norm; dynamo: by the exporter
    "spade_bn": {("BatchNorm", ""): 1},
    "spade_in": {("InstanceNorm", ""): 1},
    "wsconv_gn": {("GroupNorm", "relu"): 1},
    "diffusers_unet2d": {("GroupNorm", "silu"): 17, ("GroupNorm", ""): 4},
    "diffusers_vae": {("GroupNorm", "silu"): 22, ("GroupNorm", ""): 2},
}


def expected_passes(entry):
    """{pass: rewrites} for the passes of this task."""
    name, opset, exporter = entry["name"], entry["opset"], entry["exporter"]
    n_groupnorm = sum(n for (op, _), n in EXPECTED[name].items() if op == "GroupNorm")
    out = {"group_norm_instance": n_groupnorm if opset < 21 else 0,
           "conditional_instance_norm": 1 if name.startswith("cond_instancenorm") else 0,
           "fold_batch_norm": 1 if name == "linear_bn1d" and exporter == "legacy" else 0,
           "activation_epilogue": sum(n for (_, act), n in EXPECTED[name].items() if act)}
    return out


CASES = [e for e in FIXTURES if e["name"] in EXPECTED]


def test_every_case_is_present():
    assert {e["name"] for e in CASES} == set(EXPECTED)


@pytest.mark.parametrize("entry", CASES, ids=[e["file"][:-5] for e in CASES])
def test_fixture(entry):
    path = DATA / entry["file"]
    opt, report = normrt.optimize(str(path), report=True)

    left = [n.op_type for n in opt.graph.node if n.domain in ("", "ai.onnx") and n.op_type in STANDARD_NORMS]
    assert not left, f"standard normalization ops left: {left}"
    found = collections.Counter()
    for n in opt.graph.node:
        if n.domain == "normrt" and n.op_type not in COMPUTE_OPS:     # normrt::Conv: conv_epilogue's
            act = next((a.s.decode() for a in n.attribute if a.name == "activation"), "")
            found[(n.op_type, act)] += 1
    assert dict(found) == EXPECTED[entry["name"]]
    for name, count in expected_passes(entry).items():
        assert report["passes"].get(name, 0) == count, (name, report["passes"])
    assert not report["refused"], report["refused"]

    if entry["name"].startswith("cond_instancenorm"):
        # scale and B are the per-sample (N, C) gathered values, not constants
        (node,) = [n for n in opt.graph.node if n.domain == "normrt"]
        inits = {t.name for t in opt.graph.initializer}
        assert len(node.input) == 3 and not set(node.input[1:]) & inits

    data = np.load(DATA / entry["data"])
    feed = {k[len("input:"):]: data[k] for k in data.files if k.startswith("input:")}
    sess = normrt.InferenceSession(opt)
    got = sess.run(None, feed)
    for out, g in zip(sess.get_outputs(), got):
        want = data["output:" + out.name]
        tol = 1e-4 * max(1.0, float(np.max(np.abs(want))))
        assert g.shape == want.shape
        assert float(np.max(np.abs(g.astype(np.float64) - want))) <= tol, out.name
