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

import numpy as np

from .pass_variants import executor_without, interleaved_times, print_rows, print_table_head, runner

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
    return executor_without(MODELS[model_name], VARIANTS[variant])


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated substrings of model names")
    args = ap.parse_args(argv)
    import normrt

    only = [s for s in args.only.split(",") if s]
    print_table_head(normrt.__version__, args.threads, args.runs, BASELINE)
    with normrt.threads(args.threads):
        for model in available():
            if only and not any(s in model for s in only):
                continue
            runs = {v: runner(make_executor(model, v)) for v in VARIANTS}
            feeds = make_feeds(model)
            check(runs, feeds)
            print_rows(model, interleaved_times(runs, feeds, args.runs), BASELINE)

if __name__ == "__main__":
    main()
