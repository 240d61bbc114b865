"""One small Conv per session, normrt vs onnxruntime: the tiny convs of issue #14.

    python -m bench.tiny_conv                       # every case, 1 and 2 threads
    python -m bench.tiny_conv --threads 1 --case depthwise7

ConvNeXt, EfficientNet, MobileViT and SegFormer at small input sizes spend
their time in convs of a few thousand multiply-adds, where per-call setup
(padding copies, im2col, packing, scratch allocation, thread decisions) costs
more than the arithmetic. Each case is one Conv (+ bias) model of the shape
the models use; each runtime is timed in its own blocks after a pause
(onnxruntime's pool threads spin after a run), and printed is the minimum over
`--blocks` blocks of the median of `--repeat` runs, in microseconds, with the
normrt / onnxruntime ratio. The trivial 1x1 case is the session floor.
"""
import argparse
import sys
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

# name: (x shape, W shape, group, pads, strides)
CASES = {
    "trivial1x1": ((1, 8, 1, 1), (2, 8, 1, 1), 1, None, None),
    "depthwise7": ((1, 64, 4, 4), (64, 1, 7, 7), 64, [3, 3, 3, 3], None),       # ConvNeXt block
    "patchify4": ((1, 3, 64, 64), (16, 3, 4, 4), 1, None, [4, 4]),             # ConvNeXt stem
    "down2x2": ((1, 16, 16, 16), (32, 16, 2, 2), 1, None, [2, 2]),             # ConvNeXt downsample
    "expand1x1": ((1, 32, 4, 4), (192, 32, 1, 1), 1, None, None),              # EfficientNet expand
    "squeeze1x1": ((1, 96, 1, 1), (4, 96, 1, 1), 1, None, None),               # squeeze-excite reduce
    "depthwise3s2": ((1, 32, 16, 16), (32, 1, 3, 3), 32, [1, 1, 1, 1], [2, 2]),  # EfficientNet / MobileViT
    # MobileNet-V1 (depth multiplier 0.25) / V2 at 64x64: depthwise 3x3 from 32x32 down to 2x2 maps,
    # the stride-2 ones padded at the end only (TF "same")
    "mobilenet_dw2": ((1, 256, 2, 2), (256, 1, 3, 3), 256, [1, 1, 1, 1], None),
    "mobilenet_dw4": ((1, 128, 4, 4), (128, 1, 3, 3), 128, [1, 1, 1, 1], None),
    "mobilenet_dw4s2": ((1, 128, 4, 4), (128, 1, 3, 3), 128, [0, 0, 1, 1], [2, 2]),
    "mobilenet_dw8s2": ((1, 64, 8, 8), (64, 1, 3, 3), 64, [0, 0, 1, 1], [2, 2]),
    "mobilenet_dw8": ((1, 96, 8, 8), (96, 1, 3, 3), 96, [1, 1, 1, 1], None),
    "mobilenet_dw16": ((1, 48, 16, 16), (48, 1, 3, 3), 48, [1, 1, 1, 1], None),
    "mobilenet_dw32": ((1, 16, 32, 32), (16, 1, 3, 3), 16, [1, 1, 1, 1], None),
    "mobilenet_dw32s2": ((1, 48, 32, 32), (48, 1, 3, 3), 48, [0, 0, 1, 1], [2, 2]),
    "mobilenet_dw64": ((1, 16, 64, 64), (16, 1, 3, 3), 16, [1, 1, 1, 1], None),
    "multiplier2_dw4": ((1, 64, 4, 4), (128, 1, 3, 3), 64, [1, 1, 1, 1], None),
}


def conv_model(x_shape, w_shape, group=1, pads=None, strides=None, seed=0):
    """The ModelProto of y = Conv(x, W, b) with random constant W, b."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(w_shape[0]).astype(np.float32), "b")]
    attrs = {"group": group}
    if pads:
        attrs["pads"] = pads
    if strides:
        attrs["strides"] = strides
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)
    graph = helper.make_graph([node], "tiny_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m", "h", "w"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _block(fn, repeat):
    fn()
    clock = time.perf_counter
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return float(np.median(times))


def measure(case, threads=1, repeat=500, blocks=5, pause=0.2):
    """{'normrt': s, 'onnxruntime': s} per run of the case's one-Conv model (results checked to agree)."""
    import normrt
    import onnxruntime as ort
    x_shape, w_shape, group, pads, strides = CASES[case]
    model = conv_model(x_shape, w_shape, group, pads, strides)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    sess = normrt.InferenceSession(model, num_threads=threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    osess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], osess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    runs = {"normrt": lambda: sess.run(None, {"x": x}), "onnxruntime": lambda: osess.run(None, {"x": x})}
    best = {k: float("inf") for k in runs}
    for _ in range(blocks):
        for k, fn in runs.items():
            time.sleep(pause)
            best[k] = min(best[k], _block(fn, repeat))
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    p.add_argument("--case", choices=sorted(CASES), nargs="*", default=list(CASES))
    p.add_argument("--repeat", type=int, default=500)
    p.add_argument("--blocks", type=int, default=5)
    args = p.parse_args(argv)
    print("| threads | case | x | W | normrt us | onnxruntime us | ratio |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        for case in args.case:
            t = measure(case, threads, args.repeat, args.blocks)
            x_shape, w_shape = CASES[case][:2]
            print(f"| {threads} | {case} | {'x'.join(map(str, x_shape))} | {'x'.join(map(str, w_shape))} | "
                  f"{t['normrt'] * 1e6:.1f} | {t['onnxruntime'] * 1e6:.1f} | {t['normrt'] / t['onnxruntime']:.2f}x |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
