"""The benchmark report's core runs end to end (on a tiny subset; no timing assertions).

Timing lives in bench/; this only proves the machinery works: cases build,
every available implementation runs and agrees with the reference, the report
renders as text, markdown and PNG.
"""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ is a package at the repo root, not installed
    sys.path.insert(0, str(REPO))

from bench import report as bench_report  # noqa: E402
from bench.backends import IMPLS, Unavailable, _ort_runner, make_runner  # noqa: E402
from bench.cases import CASES, Case, find_case, make_inputs, reference, tolerance  # noqa: E402

SUBSET = [find_case("layer_norm-1x768"), find_case("rms_norm-1x4096")]


def _installed(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def tiny_report():
    return bench_report.run(SUBSET, threads=2, repeat=2, small_call_cases=SUBSET[:1],
                            small_call_number=5, scaling_cases=SUBSET[1:])


def test_report_measures_every_available_implementation(tiny_report):
    assert [r.case for r in tiny_report.results] == SUBSET
    optional = {"ort": "onnxruntime", "torch": "torch"}
    for result in tiny_report.results:
        assert result.mismatches == []
        for impl in IMPLS:
            t = result.time(impl)
            if impl in optional and not _installed(optional[impl]):
                assert t is None
                assert result.notes[impl].startswith("n/a")
            else:
                assert t is not None and math.isfinite(t) and t > 0
    assert [s.case for s in tiny_report.small_calls] == SUBSET[:1]
    assert tiny_report.small_calls[0].microseconds["normrt out="] > 0
    assert [s.case for s in tiny_report.scaling] == SUBSET[1:]


def test_report_renders(tiny_report, tmp_path):
    text = bench_report.format_text(tiny_report)
    markdown = bench_report.format_markdown(tiny_report)
    for case in SUBSET:
        assert case.group in text
        assert f"`{case.group}`" in markdown
    assert "geometric mean" in text
    rules = [line for line in markdown.splitlines() if line.startswith("|---")]
    assert len(rules) == 3  # main, small-call and scaling tables
    if _installed("matplotlib"):
        path = bench_report.save_png(tiny_report, tmp_path / "report.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_cli_on_one_case(capsys):
    # --only keeps it tiny; the small-call and scaling sections still run
    bench_report.SMALL_CALL_NUMBER, old = 5, bench_report.SMALL_CALL_NUMBER
    try:
        assert bench_report.main(["--only", "rms_norm-1x4096", "--repeat", "1", "--no-png",
                                  "--markdown"]) == 0
    finally:
        bench_report.SMALL_CALL_NUMBER = old
    assert "`rms_norm-(1, 4096)`" in capsys.readouterr().out


def test_case_ids_and_groups_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({c.group for c in CASES}) == len(CASES)


# the forms the ORT backend falls back to on an older onnxruntime, and every
# baseline, on tiny shapes of each kind of case
TINY = [
    Case("batch_norm", (2, 3, 4, 5)),
    Case("layer_norm", (3, 16)),
    Case("layer_norm", (2, 4, 3, 5), axis=1),
    Case("layer_norm", (3, 16), residual=True),
    Case("rms_norm", (3, 16)),
    Case("group_norm", (2, 8, 4, 4), num_groups=4),
    Case("group_norm", (2, 8, 4, 4), num_groups=4, activation="silu"),
    Case("instance_norm", (2, 3, 4, 5)),
    Case("layer_norm", (3, 16), dtype="float64"),
] + [Case(k, shape, dtype=dt, num_groups=g, residual=res, activation=act)
     for k, shape, g, res, act in [("layer_norm", (3, 16), None, False, None),
                                   ("layer_norm", (3, 16), None, True, None),
                                   ("rms_norm", (3, 16), None, False, None),
                                   ("batch_norm", (2, 3, 4, 5), None, False, None),
                                   ("group_norm", (2, 8, 4, 4), 4, False, "silu"),
                                   ("instance_norm", (2, 3, 4, 5), None, False, None)]
     for dt in ("float16", "bfloat16")]


@pytest.mark.parametrize("case", TINY, ids=lambda c: c.id)
def test_baselines_compute_the_reference(case):
    arrays = make_inputs(case)
    expected = reference(case, arrays)
    rtol, atol = tolerance(case)
    runners = []
    for impl in IMPLS:
        try:
            runners.append(make_runner(impl, case, arrays, 1))
        except Unavailable:
            pass
    if _installed("onnxruntime"):
        try:
            runners.append(_ort_runner(case, arrays, 1, fused=False))
        except Unavailable:
            assert case.dtype in ("float16", "bfloat16")    # ORT's CPU kernels lack some half types
    if case.dtype in ("float16", "bfloat16"):
        assert runners[0].impl == "normrt" and runners[0].result().dtype == np.dtype(case.dtype)
    for runner in runners:
        actual = runner.result()
        if actual is not None:
            np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=runner.note)


def test_report_dtype_column_compares_with_the_float32_case():
    cases = [Case("layer_norm", (4, 32)), Case("layer_norm", (4, 32), dtype="float16"),
             Case("group_norm", (1, 4, 8, 8), num_groups=2, dtype="bfloat16")]
    rep = bench_report.run(cases, threads=1, repeat=1, impls=("normrt", "copy"), small_call_cases=[],
                           scaling_cases=[])
    r32, r16, rbf = rep.results
    assert bench_report.speedup_over_float32(rep, r32) is None
    assert bench_report.speedup_over_float32(rep, rbf) is None        # no float32 group_norm case here
    assert bench_report.speedup_over_float32(rep, r16) == pytest.approx(r32.time("normrt") / r16.time("normrt"))
    text = bench_report.format_text(rep)
    assert "vs float32" in text and "float16" in text and "bfloat16" in text
    assert "layer_norm-(4, 32)" in text


def test_half_selection_pairs_every_half_case_with_its_float32_case():
    from bench.cases import HALF_CASES
    chosen = bench_report.half_and_float32_cases(CASES)
    assert set(HALF_CASES) <= set(chosen)
    f32 = {(c.base_label, c.shape) for c in chosen if c.dtype == "float32"}
    assert f32 == {(c.base_label, c.shape) for c in HALF_CASES}
    assert {c.dtype for c in chosen} == {"float32", "float16", "bfloat16"}
