"""The exporter-output fixtures in tests/data (made by scripts/make_fixtures.py) are sound.

For each fixture listed in tests/data/fixtures.json: the .onnx and .npz files exist, the
model passes onnx.checker, its inputs/outputs are the ones the .npz stores, its counted
node types are the ones the index records, and onnx.reference.ReferenceEvaluator
reproduces the stored PyTorch output (max abs err <= 1e-4 * max(1, max|out|)).
Needs only onnx and numpy; torch is not imported.
"""
import collections
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_batch_normalization import _batchnorm_test_mode

DATA = Path(__file__).parent / "data"
INDEX = json.loads((DATA / "fixtures.json").read_text())
FIXTURES = INDEX["fixtures"]
REL_TOL = 1e-4
NAME_RE = re.compile(r"^(?P<name>[a-z0-9_]+)__(?P<exporter>legacy|dynamo)(?P<opset>\d+)\.onnx$")


class BatchNormalization(OpRun):
    """Inference BatchNormalization for every opset.

    onnx.reference's BatchNormalization-9 (opsets 9-13) runs training mode whenever the
    `momentum` attribute is present, which the legacy exporter always writes; before opset
    14 a one-output node is inference (onnx/onnx#5799, fix proposed in onnx/onnx#8442).
    scripts/make_fixtures.py verifies with the same override.
    """

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None,  # noqa: ARG002
             training_mode=None, is_test=None, spatial=None):  # noqa: ARG002
        if training_mode or len([o for o in self.onnx_node.output if o]) > 1:
            raise NotImplementedError("training-mode BatchNormalization")
        eps = 1e-5 if epsilon is None else epsilon
        return (_batchnorm_test_mode(x, scale, bias, mean, var, epsilon=eps),)


def count_nodes(graph, counter=None):
    counter = collections.Counter() if counter is None else counter
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counter[key] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                count_nodes(attr.g, counter)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    count_nodes(g, counter)
    return counter


def test_index_lists_every_file():
    assert FIXTURES, "fixtures.json lists no fixture"
    listed = {e["file"] for e in FIXTURES} | {e["data"] for e in FIXTURES}
    on_disk = {p.name for p in DATA.iterdir() if p.suffix in (".onnx", ".npz", ".data")}
    assert on_disk == listed, f"unlisted: {sorted(on_disk - listed)}, missing: {sorted(listed - on_disk)}"
    assert INDEX["versions"]["torch"].startswith("2.13.0")
    combos = {(e["exporter"], e["opset"]) for e in FIXTURES}
    assert combos == {("legacy", 13), ("legacy", 17), ("dynamo", 18), ("dynamo", 23)}


@pytest.mark.parametrize("entry", FIXTURES, ids=[e["file"][: -len(".onnx")] for e in FIXTURES])
def test_fixture(entry):
    onnx_path, npz_path = DATA / entry["file"], DATA / entry["data"]
    assert onnx_path.is_file() and npz_path.is_file()
    m = NAME_RE.match(entry["file"])
    assert m, entry["file"]
    assert (m["name"], m["exporter"], int(m["opset"])) == (entry["name"], entry["exporter"], entry["opset"])
    assert entry["torch"].startswith("2.13.0")

    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    opset = {o.domain: o.version for o in model.opset_import}
    assert opset.get("", opset.get("ai.onnx")) == entry["opset"]
    assert not any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    ), "weights must be embedded"
    assert dict(count_nodes(model.graph)) == entry["node_counts"]

    data = np.load(npz_path)
    in_names = [i.name for i in model.graph.input]
    out_names = [o.name for o in model.graph.output]
    assert sorted(data.files) == sorted([f"input:{n}" for n in in_names] + [f"output:{n}" for n in out_names])
    assert in_names == [i["name"] for i in entry["inputs"]]
    assert out_names == [o["name"] for o in entry["outputs"]]
    feeds = {n: data[f"input:{n}"] for n in in_names}
    for spec in entry["inputs"]:
        assert list(feeds[spec["name"]].shape) == spec["shape"]
        assert str(feeds[spec["name"]].dtype) == spec["dtype"]

    got = ReferenceEvaluator(model, new_ops=[BatchNormalization]).run(None, feeds)
    assert len(got) == len(out_names)
    for name, g in zip(out_names, got):
        want = data[f"output:{name}"]
        g = np.asarray(g)
        assert g.shape == want.shape, (name, g.shape, want.shape)
        assert g.dtype == want.dtype, (name, g.dtype, want.dtype)
        assert np.all(np.isfinite(want))
        err = float(np.max(np.abs(g.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
        tol = REL_TOL * max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
        assert err <= tol, f"{entry['file']} output {name}: max abs err {err:.3g} > {tol:.3g}"
