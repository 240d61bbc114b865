"""scripts/e2e_bench.py: its table (each runtime in its own blocks), model selection and the style net."""
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import e2e_bench  # noqa: E402


def test_table_of_a_bundled_model(capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    rc = e2e_bench.main(["--only", "example transformer", "--runs", "3", "--blocks", "2", "--pause-ms", "1",
                         "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    row = re.search(r"^\| example transformer_block \| ([\d.]+) / ([\d.]+) \| ([\d.]+) / ([\d.]+) "
                    r"\| ([\d.]+)x \| (\S+) \|$", out, re.M)
    assert row, out
    best_n, min_n, best_o, min_o, ratio, rel = (float(v) for v in row.groups())
    assert min_n <= best_n and min_o <= best_o
    # the times are printed to 0.01 ms, the ratio from the unrounded times: it must lie in
    # the interval the rounded times allow (sub-ms times make that interval wide)
    half = 0.005
    assert (best_n - half) / (best_o + half) - 0.005 <= ratio <= (best_n + half) / (best_o - half) + 0.005
    assert rel < 1e-5                                  # the outputs agree with onnxruntime's
    assert "| geometric mean (1 rows) |" in out and "min over 2 blocks of the block median" in out
    assert not list(tmp_path.iterdir())                # nothing to export for a bundled model


def test_only_selects_by_substring(tmp_path):
    names = [n for n, _ in e2e_bench.models(tmp_path, ["RESNET", "groupnorm"])]
    assert names[-1] == "example groupnorm_cnn" and set(names) <= {"light_resnet50", "example groupnorm_cnn"}
    assert not list(tmp_path.iterdir())


def test_a_failed_export_is_remembered(tmp_path, capsys):
    # an exporter that failed once is not retried (its reason is kept beside the cache)
    (tmp_path / "style256__legacy13.failed.txt").write_text("SomeError: no such op\n")
    for label in ("legacy17", "dynamo23"):
        (tmp_path / f"style256__{label}.onnx").write_bytes(b"")
    got = e2e_bench.export_torch("style256", tmp_path)
    assert list(got) == ["legacy17", "dynamo23"]
    assert "style256 legacy13: not exported: SomeError: no such op" in capsys.readouterr().err


def test_alone_and_interleaved_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        e2e_bench.main(["--alone", "--interleaved"])
    assert "exclude each other" in capsys.readouterr().err


def test_style_net_is_johnsons_shape():
    torch = pytest.importorskip("torch")
    net = e2e_bench._style_net(width=4).eval()
    kinds = {type(m).__name__ for m in net.modules()}
    assert {"ReflectionPad2d", "InstanceNorm2d", "Conv2d"} <= kinds
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules()) == 3 + 2 * 5 + 2
    with torch.no_grad():
        y = net(torch.randn(1, 3, 32, 32))
    assert y.shape == (1, 3, 32, 32) and np.isfinite(y.numpy()).all()

