"""The `normrt` command (normrt.cli): run, inspect, bench, the bundled examples, and error handling.

Commands are driven through normrt.cli.main(argv, out); one test goes through a
subprocess (`python -m normrt`) for the real entry point. Timed runs use --repeat 1-2.
"""
import io
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import normrt
from normrt import cli
from normrt.onnx.report import COMPUTE_OPS

BUNDLED = ["groupnorm_cnn.onnx", "transformer_block.onnx"]


def call(argv, capsys):
    """(exit status, stdout text, stderr text) of `normrt ARGV`."""
    out = io.StringIO()
    try:
        rc = cli.main(list(argv), out=out)
    except SystemExit as e:       # argparse: usage errors and --help
        rc = e.code
    captured = capsys.readouterr()
    return rc, out.getvalue() + captured.out, captured.err


def one_line_error(rc, err):
    assert rc != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("normrt")
    return lines[0]


# ---- models ----------------------------------------------------------------

def dyn_model():
    """x[batch,4,8] float, ids[batch] int64 -> y = Relu(LayerNorm(x)), n = ids (symbolic 'batch')."""
    w = numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(np.float32), "w")
    b = numpy_helper.from_array(np.linspace(-0.1, 0.1, 8).astype(np.float32), "b")
    nodes = [helper.make_node("LayerNormalization", ["x", "w", "b"], ["h"], name="ln", axis=-1),
             helper.make_node("Relu", ["h"], ["y"], name="relu"),
             helper.make_node("Identity", ["ids"], ["n"], name="id")]
    graph = helper.make_graph(
        nodes, "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8]),
         helper.make_tensor_value_info("n", TensorProto.INT64, ["batch"])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def unhandled_model():
    """LpNormalization p=3 (refused by normrt.optimize) and Det (no numpy op: onnx.reference)."""
    nodes = [helper.make_node("LpNormalization", ["x"], ["l"], name="lp3", p=3, axis=-1),
             helper.make_node("Det", ["l"], ["d"], name="det")]
    graph = helper.make_graph(
        nodes, "unhandled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def failing_model():
    """Reshape x[batch, 4] to [5, -1]: fails at run time unless 4*batch is a multiple of 5."""
    shape = numpy_helper.from_array(np.array([5, -1], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")], "failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, None])], [shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def work(tmp_path):
    """tmp_path with dyn.onnx, unhandled.onnx, failing.onnx and some (bad) input files."""
    onnx.save(dyn_model(), str(tmp_path / "dyn.onnx"))
    onnx.save(unhandled_model(), str(tmp_path / "unhandled.onnx"))
    onnx.save(failing_model(), str(tmp_path / "failing.onnx"))
    rng = np.random.default_rng(3)
    np.save(tmp_path / "x.npy", rng.standard_normal((3, 4, 8)).astype(np.float32))
    np.save(tmp_path / "x64.npy", rng.standard_normal((3, 4, 8)))
    np.save(tmp_path / "ids.npy", np.array([0, 5, 7], np.int64))
    np.save(tmp_path / "xbad.npy", np.zeros((3, 5, 8), np.float32))
    np.save(tmp_path / "xrank.npy", np.zeros((3, 4), np.float32))
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 4, 8), np.float32))
    (tmp_path / "garbage.npy").write_text("not an array")
    (tmp_path / "garbage.onnx").write_text("not a model")
    return tmp_path


# ---- bundled examples ------------------------------------------------------

def test_bundled_examples_ship_with_the_package():
    paths = cli.bundled_models()
    assert [os.path.basename(p) for p in paths] == BUNDLED
    for path in paths:
        assert os.path.getsize(path) < 1 << 20
        model = onnx.load(path)
        onnx.checker.check_model(model)
        for vi in model.graph.input:        # static shapes: no dim_param anywhere
            assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)
        sess = normrt.InferenceSession(path)
        assert sess.executor.counts()["kernel"] >= 2


def test_bundled_examples_match_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    for path in cli.bundled_models():
        sess = normrt.InferenceSession(path)
        feed = cli.random_feed(sess.get_inputs())
        ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feed)
        for got, want in zip(sess.run(None, feed), ref):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ---- run -------------------------------------------------------------------

def test_run_without_model_runs_the_bundled_examples(capsys, tmp_path):
    rc, out, err = call(["run", "--repeat", "2", "--save-outputs", str(tmp_path)], capsys)
    assert rc == 0, err
    assert "model: groupnorm_cnn.onnx (bundled example)" in out
    assert "model: transformer_block.onnx (bundled example)" in out
    assert "input   x: float32 [1, 3, 64, 64]  (random)" in out
    assert "output  y: float32 [1, 3, 32, 32]" in out
    assert "output  y: float32 [1, 64, 128]" in out
    assert len(re.findall(r"time:   min [\d.]+ m?s, median [\d.]+ m?s over 2 run\(s\)", out)) == 2
    for path in cli.bundled_models():
        sess = normrt.InferenceSession(path)
        # the documented random inputs: standard normal floats from default_rng(0)
        x = np.random.default_rng(0).standard_normal((tuple(sess.get_inputs()[0].shape))).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        stem = os.path.splitext(os.path.basename(path))[0]
        np.testing.assert_array_equal(np.load(tmp_path / f"{stem}.y.npy"), want)


def test_run_model_with_input_files_and_saved_outputs(capsys, work):
    outdir = work / "outs"
    rc, out, err = call(["run", str(work / "dyn.onnx"), "--input", f"x={work / 'x.npy'}",
                         "--input", f"ids={work / 'ids.npy'}", "--save-outputs", str(outdir),
                         "--repeat", "1", "--threads", "1"], capsys)
    assert rc == 0, err
    assert f"model: {work / 'dyn.onnx'}" in out
    assert "input   x: float32 [3, 4, 8]\n" in out
    assert "input   ids: int64 [3]\n" in out
    assert "output  y: float32 [3, 4, 8]" in out
    assert "output  n: int64 [3]" in out
    assert "1 thread(s)" in out
    feed = {"x": np.load(work / "x.npy"), "ids": np.load(work / "ids.npy")}
    want = normrt.InferenceSession(str(work / "dyn.onnx")).run(None, feed)
    for name, w in zip(["y", "n"], want):
        assert f"saved   {outdir / f'dyn.{name}.npy'}" in out
        got = np.load(outdir / f"dyn.{name}.npy")
        assert got.dtype == w.dtype
        np.testing.assert_array_equal(got, w)


def test_run_symbolic_dims(capsys, work):
    model = str(work / "dyn.onnx")
    rc, out, err = call(["run", model, "--dim", "batch=2", "--repeat", "1"], capsys)
    assert rc == 0, err
    assert "input   x: float32 [2, 4, 8]  (random)" in out and "input   ids: int64 [2]  (random)" in out
    rc, out, err = call(["run", model, "--random-inputs", "--repeat", "1"], capsys)
    assert rc == 0, err
    assert "input   x: float32 [1, 4, 8]  (random)" in out     # symbolic dims default to 1
    # a dim bound by an --input file sizes the random inputs too
    rc, out, err = call(["run", model, "--input", f"x={work / 'x.npy'}", "--repeat", "1"], capsys)
    assert rc == 0, err
    assert "input   ids: int64 [3]  (random)" in out


def test_run_casts_input_files_of_the_same_kind(capsys, work):
    rc, out, err = call(["run", str(work / "dyn.onnx"), "--input", f"x={work / 'x64.npy'}",
                         "--dim", "batch=3", "--repeat", "1", "--save-outputs", str(work / "o")], capsys)
    assert rc == 0, err
    assert "input   x: float32 [3, 4, 8]\n" in out
    x = np.load(work / "x64.npy").astype(np.float32)
    ids = np.random.default_rng(0).integers(0, 2, size=3).astype(np.int64)
    want = normrt.InferenceSession(str(work / "dyn.onnx")).run(None, {"x": x, "ids": ids})
    np.testing.assert_array_equal(np.load(work / "o" / "dyn.y.npy"), want[0])
    np.testing.assert_array_equal(np.load(work / "o" / "dyn.n.npy"), want[1])


def test_help_documents_the_random_input_defaults(capsys):
    rc, out, _ = call(["run", "--help"], capsys)
    assert rc == 0
    text = " ".join(out.split())
    assert "standard normal" in text and "seed 0" in text and "[0, 2)" in text
    assert "--random-inputs" in text and "sets it to 1" in text


# ---- inspect ---------------------------------------------------------------

def test_inspect_lists_the_fused_normalizations(capsys):
    for path in cli.bundled_models():
        rc, out, err = call(["inspect", path], capsys)
        assert rc == 0, err
        _, report = normrt.optimize(path, report=True)
        assert report["fused"]
        n_epilogues = sum(1 for e in report["fused"] if e["normrt_op"] in COMPUTE_OPS)
        assert f"normalizations on normrt kernels: {len(report['fused']) - n_epilogues}" in out
        for e in report["fused"]:
            # (a table row: node names like '/MatMul' also occur in the summary lines)
            row = next(line for line in out.splitlines() if e["nodes"][0] in line
                       and not line.startswith(("normalizations", "Conv/MatMul", "attention")))
            assert e["normrt_op"] in row and e["kernel"] in row
        counts = normrt.InferenceSession(path).executor.counts()
        assert (f"nodes per executor: normrt kernel {counts['kernel']}, numpy {counts['numpy']}, "
                f"reference fallback {counts['reference']}") in out
        assert "BatchNorm folded into Conv/Gemm weights:" in out
        assert "reference fallback 0" in out
        assert "rewrites per pass: " in out
    rc, out, _ = call(["inspect"], capsys)           # no MODEL: the bundled examples
    assert rc == 0
    assert "/ln1/LayerNormalization" in out and "LayerNorm" in out
    assert "model: groupnorm_cnn.onnx (bundled example, opset 17" in out


def test_inspect_reports_what_it_cannot_handle(capsys, work):
    rc, out, err = call(["inspect", str(work / "unhandled.onnx")], capsys)
    assert rc == 0, err
    assert "normalizations on normrt kernels: 0" in out
    assert "reference fallback 2" in out
    assert re.search(r"refused by \w+: LpNormalization \[lp3\]: p=3", out)
    assert "Det x1: no numpy implementation, runs on onnx.reference" in out


# ---- bench -----------------------------------------------------------------

def test_bench_without_compare(capsys):
    rc, out, err = call(["bench", "--compare", "none", "--repeat", "1"], capsys)
    assert rc == 0, err
    assert "onnxruntime" not in out
    assert out.count("normrt time by op type") == 2
    assert re.search(r"^    normrt +[\d.]+ m?s +[\d.]+ m?s +[\d.]+ m?s$", out, re.M)   # best, min, median
    assert re.search(r"^    normrt::LayerNorm +2 +[\d.]+ m?s +[\d.]+%$", out, re.M)
    convs = re.findall(r"^    (?:normrt::)?Conv +(\d+) +[\d.]+ m?s +[\d.]+%$", out, re.M)   # conv_epilogue
    assert sum(int(n) for n in convs) == 7                                         # fuses some


def test_bench_compare_onnxruntime(capsys, work):
    pytest.importorskip("onnxruntime")
    rc, out, err = call(["bench", "--compare", "onnxruntime", "--repeat", "2", "--threads", "1"], capsys)
    assert rc == 0, err
    assert len(re.findall(r"^    onnxruntime \S+ +[\d.]+ m?s +[\d.]+ m?s +[\d.]+ m?s$", out, re.M)) == 2
    assert out.count("1 thread(s), each runtime in its own blocks of runs after a 0.2 s pause") == 2
    assert out.count("(2 block(s) of 2 run(s) each;") == 2
    diffs = [float(v) for v in re.findall(r"max abs difference vs onnxruntime: (\S+)", out)]
    assert len(diffs) == 2 and all(d < 1e-3 for d in diffs)
    assert len(re.findall(r"normrt is [\d.]+x (faster|slower) than onnxruntime", out)) == 2
    # a given model, symbolic dims and input files, two outputs: the worst one is named
    rc, out, err = call(["bench", str(work / "dyn.onnx"), "--input", f"x={work / 'x.npy'}",
                         "--repeat", "1"], capsys)        # default: compare when onnxruntime is there
    assert rc == 0, err
    assert re.search(r"max abs difference vs onnxruntime: \S+ \(output [yn]\)", out)


def test_bench_without_onnxruntime_installed(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_have_onnxruntime", lambda: False)
    rc, out, err = call(["bench", "--repeat", "1"], capsys)
    assert rc == 0, err
    assert "onnxruntime is not installed: timing normrt alone" in out
    assert "max abs difference" not in out
    rc, _, err = call(["bench", "--compare", "onnxruntime", "--repeat", "1"], capsys)
    assert "needs onnxruntime" in one_line_error(rc, err)


def test_bench_progress_bar_on_a_terminal(capsys, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.setattr(cli, "PROGRESS_MIN_SECONDS", 0.0)
    rc, _, _ = call(["bench", "--compare", "none", "--repeat", "2"], capsys)
    assert rc == 0
    # 2 blocks of 2 runs: the bar counts every timed run
    assert "bench transformer_block.onnx [" in tty.getvalue() and "4/4" in tty.getvalue()


# ---- errors ----------------------------------------------------------------

ERRORS = [
    (["run", "{w}/missing.onnx"], "does not exist"),
    (["run", "{w}"], "is a directory"),
    (["inspect", "{w}/garbage.onnx"], "is not a valid ONNX model"),
    (["bench", "{w}/garbage.onnx", "--compare", "none"], "is not a valid ONNX model"),
    (["run", "{w}/dyn.onnx"], "symbolic dimension 'batch': give its size with --dim batch=N"),
    (["run", "{w}/dyn.onnx", "--input", "x={w}/missing.npy"], "does not exist"),
    (["run", "{w}/dyn.onnx", "--input", "x={w}/garbage.npy"], "is not a readable .npy array"),
    (["run", "{w}/dyn.onnx", "--input", "x={w}/x.npz"], "not a .npy array"),
    (["run", "{w}/dyn.onnx", "--input", "x={w}/xbad.npy"], "dimension 1 must be 4"),
    (["run", "{w}/dyn.onnx", "--input", "x={w}/xrank.npy"], "must have rank 3"),
    (["run", "{w}/dyn.onnx", "--input", "ids={w}/x.npy"], "must be int64"),
    (["run", "{w}/dyn.onnx", "--input", "q={w}/x.npy"], "no input of that name"),
    (["run", "{w}/dyn.onnx", "--input", "x"], "--input must look like NAME=VALUE"),
    (["run", "{w}/dyn.onnx", "--input", "x={w}/x.npy", "--dim", "batch=2"], "but --dim has batch=2"),
    (["run", "{w}/dyn.onnx", "--dim", "batch=four"], "--dim batch must be an integer"),
    (["run", "{w}/dyn.onnx", "--dim", "batch=-1"], "--dim batch must be >= 0"),
    (["run", "{w}/dyn.onnx", "--dim", "seq=2"], "no symbolic dimension of that name"),
    (["run", "{w}/dyn.onnx", "--dim", "batch"], "--dim must look like NAME=VALUE"),
    (["run", "{w}/failing.onnx", "--dim", "batch=3"], "Error"),       # fails while running
    (["run", "--input", "x={w}/x.npy"], "--input needs a MODEL"),
    (["run", "--threads", "0"], "--threads must be >= 1"),
    (["bench", "--repeat", "0"], "--repeat must be >= 1"),
    (["run", "--repeat", "many"], "--repeat must be an integer"),
    (["bench", "--compare", "torch"], "invalid choice"),
    (["bench", "--pause", "-1"], "--pause must be a finite number >= 0"),
    (["bench", "--pause", "soon"], "--pause must be a number"),
    (["frobnicate"], "invalid choice"),
    ([], "required: COMMAND"),
]


@pytest.mark.parametrize("argv,message", ERRORS, ids=[" ".join(a) or "no-args" for a, _ in ERRORS])
def test_errors_are_one_line(argv, message, capsys, work):
    argv = [a.format(w=work) for a in argv]
    rc, out, err = call(argv, capsys)
    assert message in one_line_error(rc, err)


def test_verbose_shows_the_traceback(capsys, work):
    for argv in (["--verbose", "run", str(work / "missing.onnx")],
                 ["run", str(work / "dyn.onnx"), "--input", f"x={work / 'xbad.npy'}", "--verbose"],
                 ["run", str(work / "failing.onnx"), "--dim", "batch=3", "--verbose"]):
        rc, _, err = call(argv, capsys)
        assert rc == cli.EXIT_ERROR
        assert "Traceback (most recent call last)" in err
        assert err.rstrip().splitlines()[-1].startswith("normrt: error: ")


# ---- the real entry point --------------------------------------------------

def test_python_dash_m_normrt(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "-m", "normrt", "run", "--repeat", "1"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "model: groupnorm_cnn.onnx (bundled example)" in res.stdout
    assert "output  y: float32 [1, 64, 128]" in res.stdout
    res = subprocess.run([sys.executable, "-m", "normrt", "inspect", str(tmp_path / "missing.onnx")],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert res.returncode == cli.EXIT_ERROR
    assert res.stderr.strip().count("\n") == 0 and "does not exist" in res.stderr


def test_console_script_entry_point():
    from importlib.metadata import entry_points
    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == "normrt"]
    assert eps and eps[0].value == "normrt.cli:main"
