"""What the mirrored-pad and LeakyRelu conv fusions buy: generated blocks with and without them.

    python -m bench.padded_convs [--runs 30] [--threads 2] [--only reflect]

Two generated models (float32, batch 1, 32 channels at 128x128), written once under
the system temp folder:

    reflect_blocks   3 x [ReflectionPad2d(1) -> Conv 3x3 -> InstanceNorm -> Relu]
                     (a style-transfer / CycleGAN generator's residual trunk)
    leaky_blocks     3 x [Conv 3x3 + bias -> LeakyRelu(0.1)]  (YOLO's / a GAN's conv blocks)

and their executors built from normrt.optimize's passes minus some (VARIANTS):

    all                  every default pass (the Pads are the convs' own mirrored pads,
                         the LeakyRelus their epilogues)
    no_pad_into_conv     the reflect Pads run as Pad nodes
    no_conv_epilogue     the LeakyRelus (and Relus) run after the convs, on the
                         one-pass elementwise kernel

Runs alternate between the variants (machine noise hits all alike); the table gives
min and median latency and the min relative to BASELINE. Every variant's outputs are
checked against the baseline first. bench/test_padded_convs.py runs the same
executors under pytest-benchmark.
"""
import os
import tempfile

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

from .pass_variants import check_close, executor_without, runner, variants_main

MODELS = ("reflect_blocks", "leaky_blocks")
VARIANTS = {
    "all": (),
    "no_pad_into_conv": ("pad_into_conv",),
    "no_conv_epilogue": ("conv_epilogue",),
}
BASELINE = "no_pad_into_conv"
SHAPE = (1, 32, 128, 128)


def _blocks(name, seed=0):
    rng = np.random.default_rng(seed)
    c = SHAPE[1]
    nodes, inits, v = [], [], "x"
    for i in range(3):
        w = numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32), f"w{i}")
        b = numpy_helper.from_array(rng.standard_normal(c).astype(np.float32) * 0.1, f"b{i}")
        inits += [w, b]
        if name == "reflect_blocks":
            inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), f"pads{i}"))
            inits += [numpy_helper.from_array(np.ones(c, np.float32), f"s{i}"),
                      numpy_helper.from_array(np.zeros(c, np.float32), f"z{i}")]
            nodes += [helper.make_node("Pad", [v, f"pads{i}"], [f"p{i}"], name=f"pad{i}", mode="reflect"),
                      helper.make_node("Conv", [f"p{i}", f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}"),
                      helper.make_node("InstanceNormalization", [f"c{i}", f"s{i}", f"z{i}"], [f"n{i}"], name=f"in{i}"),
                      helper.make_node("Relu", [f"n{i}"], [f"y{i}"], name=f"relu{i}")]
        else:
            nodes += [helper.make_node("Conv", [v, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                      helper.make_node("LeakyRelu", [f"c{i}"], [f"y{i}"], name=f"leaky{i}", alpha=0.1)]
        v = f"y{i}"
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info(v, TensorProto.FLOAT, SHAPE)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def model_path(name):
    """The generated model's file (written on first use)."""
    path = os.path.join(tempfile.gettempdir(), f"normrt_bench_{name}.onnx")
    if not os.path.exists(path):
        save(_blocks(name), path)
    return path


def make_executor(model_name, variant):
    return executor_without(model_path(model_name), VARIANTS[variant])


def make_feeds(seed=0):
    return {"x": np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)}


def check(runs, feeds, rtol=1e-4):
    """Every variant's outputs close to the baseline's (max abs difference <= rtol * max |baseline|)."""
    check_close(runs, feeds, BASELINE, rtol)


def build(model):
    return {v: runner(make_executor(model, v)) for v in VARIANTS}, make_feeds()


def main(argv=None):
    variants_main(argv, __doc__.splitlines()[0], MODELS, build, check, BASELINE)


if __name__ == "__main__":
    main()
