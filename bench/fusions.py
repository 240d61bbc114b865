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
import os

import numpy as np
import onnx

from .pass_variants import check_close, executor_without, runner, variants_main

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
    check_close(runs, feeds, BASELINE, rtol)


def build(model):
    executors = {v: make_executor(model, v) for v in VARIANTS}
    return {v: runner(e) for v, e in executors.items()}, make_feeds(executors[BASELINE])


def main(argv=None):
    variants_main(argv, __doc__.splitlines()[0], MODELS, build, check, BASELINE)


if __name__ == "__main__":
    main()
