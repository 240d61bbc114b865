"""What the Conv graph fusions buy end to end: the light CNNs with and without them.

    python -m bench.fusions [--runs 30] [--threads 2] [--only resnet]

For light_resnet50 and light_densenet121 (the onnx package's backend test
models), three executors of the same model, built from normrt.optimize's
passes minus some (VARIANTS):

    all                    every default pass
    no_pool_reorder        without pool_before_pointwise_conv (DenseNet's transition
                           Conv 1x1 runs before its AveragePool)
    no_conv_epilogue       also without conv_epilogue (Relu/Sum stay separate ops)
    no_graph_fusions       also without fold_channel_affine (DenseNet's Mul/Add stay)

Runs alternate between the variants (machine noise hits all alike); the
table gives min and median latency and the min relative to no_graph_fusions.
The outputs of every variant are checked against no_graph_fusions first.
bench/test_fusions.py runs the same executors under pytest-benchmark.
"""
import argparse
import os

import numpy as np
import onnx

from .pass_variants import executor_without, interleaved_times, print_rows, print_table_head, runner

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = ("light_resnet50", "light_densenet121")
VARIANTS = {
    "all": (),
    "no_pool_reorder": ("pool_before_pointwise_conv",),
    "no_conv_epilogue": ("pool_before_pointwise_conv", "conv_epilogue"),
    "no_graph_fusions": ("pool_before_pointwise_conv", "conv_epilogue", "fold_channel_affine"),
}
BASELINE = "no_graph_fusions"


def make_executor(model_name, variant):
    """An Executor of the model optimized by the default passes minus VARIANTS[variant]."""
    return executor_without(os.path.join(LIGHT, model_name + ".onnx"), VARIANTS[variant])


def make_feeds(executor, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for name in executor.input_names}


def check(runs, feeds, rtol=1e-4):
    """Every variant's outputs close to the baseline's (max abs difference <= rtol * max |baseline|)."""
    want = runs[BASELINE](feeds)
    for name, run in runs.items():
        for g, w in zip(run(feeds), want):
            scale = float(np.max(np.abs(w))) or 1.0
            err = float(np.max(np.abs(g.astype(np.float64) - w)))
            if err > rtol * scale:
                raise AssertionError(f"{name}: max abs difference {err:.3g} vs {BASELINE} (scale {scale:.3g})")


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
        for model in MODELS:
            if only and not any(s in model for s in only):
                continue
            executors = {v: make_executor(model, v) for v in VARIANTS}
            runs = {v: runner(e) for v, e in executors.items()}
            feeds = make_feeds(executors[BASELINE])
            check(runs, feeds)
            print_rows(model, interleaved_times(runs, feeds, args.runs), BASELINE)

if __name__ == "__main__":
    main()
