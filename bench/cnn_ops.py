"""The CNNs' memory-bound ops at light_densenet121 / light_resnet50 shapes, vs onnxruntime.

    python -m bench.cnn_ops [--runs 100] [--blocks 3] [--threads 2]

For each case, one-node (or BatchNormalization + Relu) models run by normrt
and by onnxruntime, each in its own blocks of --runs runs after a pause
(normrt.timing: the min over --blocks blocks of the block median):

    normrt      the normrt session (what a graph node costs, Python included)
    ort         onnxruntime, same thread count
    copyto      np.copyto of the input (the memory floor: one read, one write)

Then BatchNorm + relu right after a conv, as in the graph, on 1 and on 2
threads: what a memory-bound kernel's second thread buys inside a graph
(normrt._thread_policy.MEMORY_BOUND_MIN_ELEMENTS).
Shared machines are noisy: compare ratios within one run.
"""
import argparse
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

CASES = [  # op, input shape, attributes
    ("AveragePool", (1, 256, 56, 56), dict(kernel_shape=[2, 2], strides=[2, 2])),   # DenseNet transitions
    ("AveragePool", (1, 512, 28, 28), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("AveragePool", (1, 1024, 14, 14), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("MaxPool", (1, 64, 112, 112), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),  # stems
    ("GlobalAveragePool", (1, 1024, 7, 7), {}),
    ("AveragePool", (1, 2048, 7, 7), dict(kernel_shape=[7, 7])),                     # ResNet's head
    ("BatchNormRelu", (1, 256, 56, 56), {}),
    ("BatchNormRelu", (1, 512, 28, 28), {}),
    ("BatchNormRelu", (1, 992, 14, 14), {}),
    ("BatchNormRelu", (1, 992, 7, 7), {}),
]


def one_node_model(op, shape, attrs, rng):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    inits = []
    if op == "BatchNormRelu":
        C = shape[1]
        inits = [numpy_helper.from_array((rng.random(C) + 0.5).astype(np.float32), n) for n in "sbmv"]
        nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["t"]),
                 helper.make_node("Relu", ["t"], ["y"])]
    else:
        nodes = [helper.make_node(op, ["x"], ["y"], **attrs)]
    graph = helper.make_graph(nodes, op, [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def block_times(fns, args):
    """{name: best seconds} of the callables {name: fn()}, each timed in its own blocks (normrt.timing)."""
    from normrt import timing
    return {k: t.best for k, t in timing.time_blocks(fns, args.runs, blocks=args.blocks).items()}


def add_timing_args(ap):
    ap.add_argument("--runs", type=int, default=100, help="timed runs per block (default 100)")
    ap.add_argument("--blocks", type=int, default=3, help="blocks per implementation (default 3)")
    ap.add_argument("--threads", type=int, default=2)


def one_node_times(model, x, args, floor, tol=lambda want: 1e-5):
    """{"normrt", "ort" (when onnxruntime is installed), "copyto": us} for `model` on input x, each
    runtime in its own blocks (block_times); both runtimes' outputs agree first, to tol(output)
    (relative and absolute). `floor` is the array np.copyto copies: the memory floor the case is
    measured against."""
    import normrt
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    sess = normrt.InferenceSession(model, num_threads=args.threads)
    want = sess.run(None, {"x": x})[0]
    fns = {"normrt": lambda: sess.run(None, {"x": x})}
    if ort is not None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        osess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        got = osess.run(None, {"x": x})[0]
        t = tol(want)
        assert got.shape == want.shape and np.allclose(got, want, rtol=t, atol=t), "outputs differ"
        fns["ort"] = lambda: osess.run(None, {"x": x})
    dst = np.empty_like(floor)
    fns["copyto"] = lambda: np.copyto(dst, floor)
    return {k: v * 1e6 for k, v in block_times(fns, args).items()}


def parse_timing_args(argv, description):
    """The timing options (add_timing_args) parsed, and the table's header line printed."""
    import normrt
    ap = argparse.ArgumentParser(description=description)
    add_timing_args(ap)
    args = ap.parse_args(argv)
    print(f"normrt {normrt.__version__}, {args.threads} threads, min over {args.blocks} blocks of the median of "
          f"{args.runs} runs, each implementation in its own blocks after a pause (us)")
    return args


def main(argv=None):
    args = parse_timing_args(argv, __doc__.splitlines()[0])
    import normrt
    rng = np.random.default_rng(0)
    print("| op | shape | normrt | ort | copyto |")
    print("|---|---|---|---|---|")
    for op, shape, attrs in CASES:
        x = rng.standard_normal(shape).astype(np.float32)
        t = one_node_times(one_node_model(op, shape, attrs, rng), x, args, floor=x)
        ort_t = f"{t['ort']:.1f}" if "ort" in t else "-"
        print(f"| {op} | {shape} | {t['normrt']:.1f} | {ort_t} | {t['copyto']:.1f} |")

    # BatchNorm + relu right after a conv: 1 vs 2 OpenMP threads
    xc = rng.standard_normal((1, 128, 28, 28)).astype(np.float32)
    wc = rng.standard_normal((32, 128, 3, 3)).astype(np.float32)
    print("\nbatch_norm(relu) right after a conv2d call (us):")
    print("| shape | 1 thread | 2 threads |")
    print("|---|---|---|")
    for shape in [(1, 128, 28, 28), (1, 992, 14, 14), (1, 512, 28, 28), (1, 256, 56, 56), (1, 512, 56, 56)]:
        x = rng.standard_normal(shape).astype(np.float32)
        p = [(rng.random(shape[1]) + 0.5).astype(np.float32) for _ in range(4)]
        out = np.empty_like(x)

        def after_conv(n):
            def f():
                normrt.conv2d(xc, wc, pads=(1, 1, 1, 1))
                with normrt.threads(n):
                    t0 = time.perf_counter()
                    normrt.batch_norm(x, *p, activation="relu", out=out)
                    return time.perf_counter() - t0
            return f
        best = {1: float("inf"), 2: float("inf")}
        for _ in range(max(1, args.runs // 2)):
            for n in (1, 2):
                best[n] = min(best[n], after_conv(n)())
        print(f"| {shape} | {best[1] * 1e6:.1f} | {best[2] * 1e6:.1f} |")


if __name__ == "__main__":
    main()
