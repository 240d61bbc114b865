"""Half-precision models: normrt vs onnxruntime on the same float16 file, and against the float32 model.

    python -m bench.half_models                          # every model, float16 and bfloat16, 2 threads
    python -m bench.half_models --only unet16 --dtypes float16 --repeat 50 --blocks 5
    python -m bench.half_models --accuracy               # Conv / MatMul in half against float64
    python -m bench.half_models --modes per_op,float32   # both half_compute modes, accuracy vs float64

Each float32 bench model (the bundled examples, the diffusers UNet/VAE fixtures) is
converted to float16 and to bfloat16 the way a `.half()` export holds it
(tests/half_models.to_half: every float32 tensor, weights included) and written
into the cache (`--cache`, default ~/.cache/normrt-bench/half_models). On each
file normrt and onnxruntime run the same inputs; onnxruntime's CPU provider has no
bfloat16 kernels for these models, so bfloat16 rows compare with normrt's float32
run only. "fused graph" is normrt on the graph normrt.optimize makes of the
float32 model, converted the same way: every norm, Conv/MatMul epilogue and
attention already a normrt node. The plain file's column shows what the passes
fuse in half precision ("fallback nodes" counts the norms they left to
onnx.reference): norms, MatMul epilogues, attention and elementwise chains as in
float32; the Conv epilogue only in float32, so the plain file's Conv bias /
residual Adds run as their own steps. Either way the products compute in float32
between two conversions (onnx/half_steps.py), their weights widened and packed
once. The errors
are the fused run's largest against onnxruntime's result and against normrt's
float32 run of the float32 model; the pytest-benchmark version
(bench/test_half_models.py) checks them first. Both normrt columns run the default
half_compute ("float32": float32 between the float32 ops, conversions at the region
boundaries only); `--modes` compares the modes.

`--modes per_op,float32` (or `--half-compute MODE` for one) times normrt's plain file in each
`half_compute` mode beside onnxruntime, and gives each its accuracy: max |y - y64| / max |y64|
against the half model's float64 twin (tests/half_models.reference64: onnx.reference in
float64 on the same half weights and inputs), and the share of normrt's outputs bitwise equal
to onnxruntime's.

Timing: each runtime (and normrt's float32 run) in its own block after a pause
(onnxruntime's pool threads spin after a run and slow whoever runs next); a time
is the minimum over `--blocks` blocks of each block's median of `--repeat` runs.
"""
import argparse
import os
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx

from normrt.timing import time_blocks
from normrt.onnx.passes.half_regions import MODES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "normrt-bench" / "half_models"
MODELS = {
    "groupnorm_cnn": ROOT / "src/normrt/examples/groupnorm_cnn.onnx",
    "transformer_block": ROOT / "src/normrt/examples/transformer_block.onnx",
    "unet16": ROOT / "tests/data/diffusers_unet2d__dynamo18.onnx",
    "vae16": ROOT / "tests/data/diffusers_vae__legacy17.onnx",
}
DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def _helper(folder, module):
    """A module of the repository's tests/ or scripts/ (the model converter, the random inputs)."""
    import importlib
    sys.path.insert(0, str(ROOT / folder))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(ROOT / folder))


def half_model(name, dtype, cache=DEFAULT_CACHE, fused=False):
    """The path of MODELS[name] converted to `dtype` (written once into the cache). `fused`: the graph
    normrt.optimize makes of the float32 model, converted (every norm, epilogue and attention already a
    normrt node: what the rewrite passes make of the half model when they fuse in half precision)."""
    import normrt
    to_half = _helper("tests", "half_models").to_half
    path = Path(cache) / f"{name}_{np.dtype(dtype).name}{'_fused' if fused else ''}.onnx"
    src = MODELS[name]
    if not path.exists() or path.stat().st_mtime < src.stat().st_mtime:
        path.parent.mkdir(parents=True, exist_ok=True)
        model = normrt.optimize(onnx.load(src)) if fused else onnx.load(src)
        onnx.save(to_half(model, dtype), path)
    return path


def feeds_for(path, dtype, seed=0):
    """scripts/e2e_bench.py's random inputs of the float32 model at `path`, the floats as `dtype`."""
    random_feeds = _helper("scripts", "e2e_bench").random_feeds
    return {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in random_feeds(path, seed).items()}


def ort_session(path, threads):
    """onnxruntime's CPU session on the file at `path`, `threads` intra-op threads, quiet."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def sessions(name, dtype, threads, cache=DEFAULT_CACHE):
    """{label: run function} for one model and dtype, and their first outputs (checked by `check`)."""
    import normrt
    path = half_model(name, dtype, cache)
    feeds = feeds_for(MODELS[name], dtype)
    feeds32 = {k: v.astype(np.float32) if v.dtype == dtype else v for k, v in feeds.items()}
    half = normrt.InferenceSession(str(path), num_threads=threads)
    fused = normrt.InferenceSession(str(half_model(name, dtype, cache, fused=True)), num_threads=threads)
    f32 = normrt.InferenceSession(str(MODELS[name]), num_threads=threads)
    runs = {"normrt": lambda: half.run(None, feeds), "normrt fused": lambda: fused.run(None, feeds),
            "normrt float32": lambda: f32.run(None, feeds32)}
    if dtype == np.float16:
        osess = ort_session(path, threads)
        runs["ort"] = lambda: osess.run(None, feeds)
    return runs, half


def mode_runs(name, dtype, threads, modes, cache=DEFAULT_CACHE):
    """({label: run function}, feeds, path): normrt's plain half file in each half_compute mode
    ("normrt per_op", "normrt float32") and, in float16, onnxruntime ("ort") on the same file."""
    import normrt
    path = half_model(name, dtype, cache)
    feeds = feeds_for(MODELS[name], dtype)
    runs = {}
    for mode in modes:
        sess = normrt.InferenceSession(str(path), num_threads=threads, half_compute=mode)
        runs[f"normrt {mode}"] = (lambda s: lambda: s.run(None, feeds))(sess)
    if dtype == np.float16:
        osess = ort_session(path, threads)
        runs["ort"] = lambda: osess.run(None, feeds)
    return runs, feeds, path


def mode_accuracy(runs, feeds, path):
    """{label: max |y - y64| / max |y64|} of each run's first output against the half file's float64
    twin, and {label: share of its outputs equal to onnxruntime's} (empty without onnxruntime)."""
    reference64 = _helper("tests", "half_models").reference64
    y64 = reference64(onnx.load(path), feeds)[0].astype(np.float64)
    scale = float(np.abs(y64).max())
    outs = {k: np.asarray(fn()[0]).astype(np.float64) for k, fn in runs.items()}
    rel = {k: float(np.abs(y - y64).max()) / scale for k, y in outs.items()}
    same = {k: float(np.mean(y == outs["ort"])) for k, y in outs.items() if "ort" in outs and k != "ort"}
    return rel, same


def modes_table(names, dtypes, modes, args):
    """The --modes table: time and accuracy of each half_compute mode and of onnxruntime."""
    cols = [f"normrt {m}" for m in modes]
    head = ["model", "dtype"] + cols + ["onnxruntime"]
    if "per_op" in modes and "float32" in modes:
        head.append("float32 / per_op")
    head += [f"{c} / ort" for c in cols]
    head += [f"err {c}" for c in cols] + ["err ort"] + [f"{c} = ort" for c in cols]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in names:
        for dname in dtypes:
            runs, feeds, path = mode_runs(name, DTYPES[dname], args.threads, modes, args.cache)
            rel, same = mode_accuracy(runs, feeds, path)
            t = measure(runs, args.repeat, args.blocks)
            row = [name, dname] + [f"{t[c] * 1e3:.3f} ms" for c in cols]
            row.append(f"{t['ort'] * 1e3:.3f} ms" if "ort" in t else "(no bfloat16 kernels)")
            if "per_op" in modes and "float32" in modes:
                row.append(f"{t['normrt float32'] / t['normrt per_op']:.2f}x")
            row += [f"{t[c] / t['ort']:.2f}x" if "ort" in t else "-" for c in cols]
            row += [f"{rel[c]:.1e}" for c in cols] + [f"{rel['ort']:.1e}" if "ort" in rel else "-"]
            row += [f"{same[c] * 100:.1f}%" if c in same else "-" for c in cols]
            print("| " + " | ".join(row) + " |", flush=True)


def errors(runs, impl="normrt"):
    """normrt's half output (`impl`: "normrt" or "normrt fused") against onnxruntime's (same file; None
    without it) and normrt's float32 run: (max error vs ort, max error vs float32, max |float32|, max
    error of ort vs float32 or None)."""
    y = runs[impl]()[0].astype(np.float64)
    y32 = runs["normrt float32"]()[0].astype(np.float64)
    scale = float(np.abs(y32).max())
    if "ort" not in runs:
        return None, float(np.abs(y - y32).max()), scale, None
    yo = runs["ort"]()[0].astype(np.float64)
    return float(np.abs(y - yo).max()), float(np.abs(y - y32).max()), scale, float(np.abs(yo - y32).max())


def _one_node(node, x_shape, weights, dtype):
    """normrt's result of a one-node float32 model converted to `dtype`, on standard-normal half-representable
    x and weights (scaled by 1/sqrt(fan-in)); returns (y, x, weights) as float64."""
    import normrt
    to_half = _helper("tests", "half_models").to_half
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)

    def rep(a):
        return np.asarray(a, np.float32).astype(dtype).astype(np.float32)

    x = rep(rng.standard_normal(x_shape))
    ws = {k: rep(rng.standard_normal(s) / np.sqrt(np.prod(s[1:]) if len(s) == 4 else s[0])) for k, s in weights.items()}
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in ws.items()])
    graph.output[0].type.tensor_type.shape.SetInParent()
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    y = normrt.InferenceSession(to_half(m, dtype).SerializeToString()).run(None, {"x": x.astype(dtype)})[0]
    return y.astype(np.float64), x.astype(np.float64), {k: v.astype(np.float64) for k, v in ws.items()}


def accuracy():
    """Rows (op, dtype, max error / max |y|, share of results equal to the correctly rounded value) of
    a half Conv and MatMul (float32 compute, one rounding) against float64 numpy."""
    from onnx import helper
    from numpy.lib.stride_tricks import sliding_window_view
    rows = []
    for dname, dtype in DTYPES.items():
        y, x, w = _one_node(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), (1, 64, 32, 32),
                            {"w": (64, 64, 3, 3)}, dtype)
        win = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3))
        ref = np.einsum("nchwij,mcij->nmhw", win, w["w"])
        rows.append(("Conv 3x3, 64 -> 64 channels, 32x32", dname, y, ref, dtype))
        y, x, w = _one_node(helper.make_node("MatMul", ["x", "w"], ["y"]), (64, 512), {"w": (512, 128)}, dtype)
        rows.append(("MatMul (64, 512) x (512, 128)", dname, y, x @ w["w"], dtype))
    return [(op, dname, float(np.abs(y - ref).max() / np.abs(ref).max()),
             float(np.mean(y == ref.astype(dtype).astype(np.float64)))) for op, dname, y, ref, dtype in rows]


def measure(runs, repeat, blocks=3, pause=0.2):
    """{label: seconds}: the min over `blocks` of each run's block median, blocks alternating, each after a pause."""
    return {k: t.best for k, t in time_blocks(runs, repeat, blocks, pause).items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated model names: " + ", ".join(MODELS))
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("NORMRT_BENCH_THREADS", 2)))
    ap.add_argument("--repeat", type=int, default=30, help="timed runs per block")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--accuracy", action="store_true", help="only the Conv/MatMul accuracy table")
    ap.add_argument("--modes", default=None,
                    help="comma-separated half_compute modes (per_op, float32): time and accuracy of each "
                         "beside onnxruntime, instead of the fused-graph table")
    ap.add_argument("--half-compute", choices=list(MODES), default=None,
                    help="one half_compute mode (the same as --modes MODE)")
    args = ap.parse_args(argv)
    if args.half_compute and args.modes:
        ap.error("give --modes or --half-compute, not both")
    modes = [m for m in (args.modes or args.half_compute or "").split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown half_compute mode(s) {bad}; known: {', '.join(MODES)}")
    if args.accuracy:
        print("| op | dtype | max error / max \\|y\\| | results equal to the correctly rounded value |")
        print("|---|---|---|---|")
        for op, dname, rel, same in accuracy():
            print(f"| {op} | {dname} | {rel:.1e} | {same * 100:.1f}% |")
        return 0
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    import normrt
    print(f"load average {os.getloadavg()[0]:.2f}; {args.threads} threads; min over {args.blocks} blocks of the "
          f"median of {args.repeat} runs, each runtime in its own block after a pause")
    if modes:
        modes_table(names, args.dtypes.split(","), modes, args)
        print(f"load average {os.getloadavg()[0]:.2f}; normrt {normrt.__version__}")
        return 0
    print("| model | dtype | normrt | onnxruntime (same file) | normrt / ort | normrt, fused graph | fused / ort | "
          "normrt float32 model | fused / float32 | max err vs ort | max err vs float32 (scale) | fallback nodes |")
    print("|" + "---|" * 12)
    for name in names:
        for dname in args.dtypes.split(","):
            runs, sess = sessions(name, DTYPES[dname], args.threads, args.cache)
            err_ort, err32, scale, _ = errors(runs, "normrt fused")
            t = measure(runs, args.repeat, args.blocks)
            ort_cells = (f"{t['ort'] * 1e3:.3f} ms | {t['normrt'] / t['ort']:.2f}x" if "ort" in t
                         else "(no bfloat16 kernels) | -")
            vs_ort = f"{t['normrt fused'] / t['ort']:.2f}x" if "ort" in t else "-"
            print(f"| {name} | {dname} | {t['normrt'] * 1e3:.3f} ms | {ort_cells} | "
                  f"{t['normrt fused'] * 1e3:.3f} ms | {vs_ort} | "
                  f"{t['normrt float32'] * 1e3:.3f} ms | {t['normrt fused'] / t['normrt float32']:.2f}x | "
                  f"{'-' if err_ort is None else f'{err_ort:.2g}'} | {err32:.2g} ({scale:.2g}) | "
                  f"{sess.executor.counts()['reference']} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}; normrt {normrt.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
