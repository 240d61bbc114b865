"""What the attention_layout pass buys end to end: models with and without it.

    python -m bench.attention_layout [--runs 30] [--threads 2] [--only unet]

For the bundled transformer_block.onnx and, when cached by scripts/e2e_bench.py,
the diffusers UNet2D / VAE at 64x64 (~/.cache/normrt/e2e_bench), two executors
of the same model: every default pass ("layouts") and the default passes minus
attention_layout ("transposes": the head split/merge Transposes copy the tensors
and the kernel reads contiguous (B, H, S, D)). The outputs must be bitwise equal
(the layouts change the kernel's addresses, not its arithmetic). Runs alternate
between the two (machine noise hits both alike); the table gives min and median
latency and the min relative to "transposes".
bench/test_attention_layout.py runs the same executors under pytest-benchmark.
"""
import argparse
import os
import time

import numpy as np

CACHE = os.path.expanduser("~/.cache/normrt/e2e_bench")
MODELS = {
    "transformer_block": os.path.join(os.path.dirname(__file__), "..", "src", "normrt", "examples",
                                      "transformer_block.onnx"),
    "diffusers_unet2d_64": os.path.join(CACHE, "diffusers_unet2d_64.onnx"),
    "diffusers_vae_64": os.path.join(CACHE, "diffusers_vae_64.onnx"),
}
VARIANTS = {"layouts": (), "transposes": ("attention_layout",)}
BASELINE = "transposes"


def available():
    """The models present here (the diffusers ones only once e2e_bench cached them)."""
    return [m for m, p in MODELS.items() if os.path.exists(p)]


def make_executor(model_name, variant):
    """An Executor of the model optimized by the default passes minus VARIANTS[variant]."""
    from normrt.onnx.executor import Executor
    from normrt.onnx.loader import load_model
    from normrt.onnx.optimize import default_passes, optimize_model

    passes = [p for p in default_passes() if p.name not in VARIANTS[variant]]
    model, _ = optimize_model(load_model(MODELS[model_name]), passes=passes)
    return Executor(model)


def make_feeds(model_name, seed=0):
    import onnx
    rng = np.random.default_rng(seed)
    graph = onnx.load(MODELS[model_name]).graph
    inits = {t.name for t in graph.initializer}
    feeds = {}
    for i in graph.input:
        if i.name in inits:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def check(runs, feeds):
    """Both variants give the same bits."""
    want = runs[BASELINE](feeds)
    for name, run in runs.items():
        for g, w in zip(run(feeds), want):
            if not np.array_equal(g, w):
                raise AssertionError(f"{name}: outputs differ from {BASELINE}'s "
                                     f"(max abs {float(np.max(np.abs(g - w))):.3g})")


def runner(executor):
    return lambda feeds: executor.run(feeds)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated substrings of model names")
    args = ap.parse_args(argv)
    import normrt

    only = [s for s in args.only.split(",") if s]
    print(f"normrt {normrt.__version__}, {args.threads} threads, {args.runs} interleaved runs")
    print("| model | variant | min ms | median ms | min vs " + BASELINE + " |")
    print("|---|---|---|---|---|")
    with normrt.threads(args.threads):
        for model in available():
            if only and not any(s in model for s in only):
                continue
            runs = {v: runner(make_executor(model, v)) for v in VARIANTS}
            feeds = make_feeds(model)
            check(runs, feeds)
            times = {v: [] for v in VARIANTS}
            for _ in range(3):
                for run in runs.values():
                    run(feeds)
            for _ in range(args.runs):
                for v, run in runs.items():
                    t0 = time.perf_counter()
                    run(feeds)
                    times[v].append(time.perf_counter() - t0)
            base = min(times[BASELINE])
            for v, ts in times.items():
                print(f"| {model} | {v} | {1e3 * min(ts):.2f} | {1e3 * float(np.median(ts)):.2f} | "
                      f"{min(ts) / base:.3f}x |")


if __name__ == "__main__":
    main()
