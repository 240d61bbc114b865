"""Resize at the decoders' / style networks' shapes: normrt vs onnxruntime vs the copy floor.

    python -m bench.resize [--runs 100] [--blocks 3] [--threads 2]

Each case is a one-node Resize model (scales as an initializer) run by normrt
and by onnxruntime (same thread count), each in its own blocks of runs after a
pause (normrt.timing: min over blocks of the block median, us), and
`copyto`: np.copyto of an output-sized array, the floor for producing the
output (every output byte written once, as many read). Integer nearest should
sit at that floor. Shared machines are noisy: compare ratios within one run.
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .cnn_ops import one_node_times, parse_timing_args

CASES = [  # mode, input shape, scales (N, C, H, W), extra attributes
    ("nearest", (1, 64, 128, 128), (1, 1, 2, 2), {}),            # style256's upsampling
    ("nearest", (1, 128, 64, 64), (1, 1, 2, 2), {}),
    ("nearest", (1, 512, 16, 16), (1, 1, 2, 2), {}),             # a VAE decoder's
    ("nearest", (1, 64, 64, 64), (1, 1, 1.5, 1.5), {"coordinate_transformation_mode": "asymmetric"}),
    ("linear", (1, 64, 128, 128), (1, 1, 2, 2), {}),
    ("linear", (1, 64, 64, 64), (1, 1, 1.7, 1.3), {"coordinate_transformation_mode": "pytorch_half_pixel"}),
]


def resize_model(mode, shape, scales, attrs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    sc = numpy_helper.from_array(np.array(scales, np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode, **attrs)
    graph = helper.make_graph([node], "resize", [x], [y], [sc])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def main(argv=None):
    args = parse_timing_args(argv, __doc__.splitlines()[0])
    rng = np.random.default_rng(0)
    print("| mode | shape | scales | normrt | ort | copyto | normrt / copyto |")
    print("|---|---|---|---|---|---|---|")
    for mode, shape, scales, attrs in CASES:
        x = rng.standard_normal(shape).astype(np.float32)
        out_shape = tuple(int(d * s) for d, s in zip(shape, scales))
        t = one_node_times(resize_model(mode, shape, scales, attrs), x, args,
                           floor=np.ones(out_shape, np.float32))
        ort_t = f"{t['ort']:.1f}" if "ort" in t else "-"
        print(f"| {mode} | {shape} | {scales[2:]} | {t['normrt']:.1f} | {ort_t} | {t['copyto']:.1f} "
              f"| {t['normrt'] / t['copyto']:.2f}x |")


if __name__ == "__main__":
    main()
