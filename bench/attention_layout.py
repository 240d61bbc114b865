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
import os

import numpy as np

from .pass_variants import executor_without, runner, variants_main

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


def build(model):
    return {v: runner(make_executor(model, v)) for v in VARIANTS}, make_feeds(model)


def main(argv=None):
    variants_main(argv, __doc__.splitlines()[0], available(), build, check, BASELINE)


if __name__ == "__main__":
    main()
