"""GEMM and convolution benchmarks: normrt's packed GEMM against numpy and onnxruntime.

The conv shapes are ResNet-50's (stem, 1x1, 3x3 at every stage, a strided 1x1
downsample) and a UNet's small-channel 3x3; the MatMuls a transformer block's
(64 tokens, width 128) and a large square one. Each implementation computes the
same product with its weight prepared once (normrt: packed; onnxruntime: an
initializer of a one-node model; numpy: im2col (a strided view copied once)
and np.matmul, as normrt's executor did before its own GEMM).

    python -m bench.gemm [--threads N] [--repeat R] [-k SUBSTRING]

prints min time and GFLOP/s per case and implementation. Each implementation
runs its calls in a row, after a SETTLE pause: onnxruntime's pool threads spin
on the cores for ~35 ms after a run (measured here), which would slow whatever
runs right after it. ROUNDS rounds, so machine noise hits them alike. The same cases run under pytest-benchmark in
bench/test_gemm.py.
"""
import argparse
import dataclasses
import functools
import math
import time
import zlib

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .backends import Unavailable
from .cases import bench_threads

IMPLS = ("normrt", "numpy", "ort")
ROUNDS = 3
SETTLE = 0.06   # seconds before each implementation's calls


@dataclasses.dataclass(frozen=True)
class GemmCase:
    kernel: str            # "conv2d" or "matmul"
    x: tuple               # conv: (N, C, H, W); matmul: (M, K)
    w: tuple               # conv: (M, C, kh, kw); matmul: (K, N)
    stride: int = 1
    pad: int = 0
    note: str = ""

    @property
    def id(self):
        s = f"{self.kernel}-{'x'.join(map(str, self.x))}-w{'x'.join(map(str, self.w))}"
        if self.kernel == "conv2d":
            s += f"-s{self.stride}p{self.pad}"
        return s

    @property
    def out_shape(self):
        if self.kernel == "matmul":
            return (self.x[0], self.w[1])
        n, _, h, w = self.x
        m, _, kh, kw = self.w
        return (n, m, (h + 2 * self.pad - kh) // self.stride + 1, (w + 2 * self.pad - kw) // self.stride + 1)

    @property
    def flops(self):
        if self.kernel == "matmul":
            return 2 * self.x[0] * self.x[1] * self.w[1]
        return 2 * math.prod(self.out_shape) * math.prod(self.w[1:])


GEMM_CASES = [
    GemmCase("conv2d", (1, 3, 224, 224), (64, 3, 7, 7), 2, 3, "ResNet-50 stem"),
    GemmCase("conv2d", (1, 64, 56, 56), (256, 64, 1, 1), note="ResNet-50 1x1 expand"),
    GemmCase("conv2d", (1, 256, 56, 56), (64, 256, 1, 1), note="ResNet-50 1x1 reduce"),
    GemmCase("conv2d", (1, 64, 56, 56), (64, 64, 3, 3), 1, 1, "ResNet-50 3x3, stage 1"),
    GemmCase("conv2d", (1, 128, 28, 28), (128, 128, 3, 3), 1, 1, "ResNet-50 3x3, stage 2"),
    GemmCase("conv2d", (1, 256, 14, 14), (256, 256, 3, 3), 1, 1, "ResNet-50 3x3, stage 3"),
    GemmCase("conv2d", (1, 512, 7, 7), (512, 512, 3, 3), 1, 1, "ResNet-50 3x3, stage 4"),
    GemmCase("conv2d", (1, 256, 56, 56), (512, 256, 1, 1), 2, 0, "ResNet-50 strided 1x1 downsample"),
    GemmCase("conv2d", (1, 128, 56, 56), (128, 128, 3, 3), 2, 1, "ResNet-50 strided 3x3, stage 2"),
    GemmCase("conv2d", (1, 256, 14, 14), (1024, 256, 1, 1), note="ResNet-50 1x1 expand, stage 3"),
    GemmCase("conv2d", (1, 2048, 7, 7), (512, 2048, 1, 1), note="ResNet-50 1x1 reduce, stage 4"),
    GemmCase("conv2d", (1, 32, 64, 64), (32, 32, 3, 3), 1, 1, "UNet small-channel 3x3"),
    GemmCase("matmul", (64, 128), (128, 384), note="transformer QKV projection"),
    GemmCase("matmul", (64, 512), (512, 128), note="transformer MLP down"),
    GemmCase("matmul", (1024, 1024), (1024, 1024), note="large square"),
]


def make_inputs(case):
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    x = rng.standard_normal(case.x, dtype=np.float32)
    w = (rng.standard_normal(case.w, dtype=np.float32) / np.sqrt(math.prod(case.w[1:]) if case.kernel == "conv2d"
                                                                 else case.w[0])).astype(np.float32)
    return {"x": x, "w": w}


def _im2col(x, kh, kw, stride, pad):
    """(N, C*kh*kw, OH*OW) columns of x: a strided view copied once."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    n, c, h, w = xp.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    s = xp.strides
    view = as_strided(xp, (n, c, kh, kw, oh, ow), (s[0], s[1], s[2], s[3], s[2] * stride, s[3] * stride),
                      writeable=False)
    return np.ascontiguousarray(view).reshape(n, c * kh * kw, oh * ow)


def reference(case, a):
    """float64 result through an independent path (im2col in float64)."""
    x, w = a["x"].astype(np.float64), a["w"].astype(np.float64)
    if case.kernel == "matmul":
        return x @ w
    cols = _im2col(x, case.w[2], case.w[3], case.stride, case.pad)
    return np.matmul(w.reshape(case.w[0], -1), cols).reshape(case.out_shape)


class Runner:
    def __init__(self, impl, fn, out, context=None):
        self.impl, self.fn, self.out = impl, fn, out
        self.context = context

    def __call__(self):
        if self.context is None:
            return self.fn()
        with self.context():
            return self.fn()


def make_runner(impl, case, a, threads):
    x, w = a["x"], a["w"]
    out = np.empty(case.out_shape, np.float32)
    if impl == "normrt":
        import normrt
        if case.kernel == "matmul":
            fn = functools.partial(normrt.matmul, x, normrt.pack_matmul_weight(w), out=out)
        else:
            p = case.pad
            fn = functools.partial(normrt.conv2d, x, normrt.pack_conv_weight(w), strides=(case.stride,) * 2,
                                   pads=(p, p, p, p), out=out)
        return Runner(impl, fn, out, lambda: normrt.threads(threads))
    if impl == "numpy":
        # numpy's BLAS thread count is process-wide (set by the environment)
        if case.kernel == "matmul":
            return Runner(impl, functools.partial(np.matmul, x, w, out=out), out)
        w2 = w.reshape(case.w[0], -1)

        def conv():
            cols = _im2col(x, case.w[2], case.w[3], case.stride, case.pad)
            np.matmul(w2, cols, out=out.reshape(out.shape[0], out.shape[1], -1))
        return Runner(impl, conv, out)
    if impl == "ort":
        return _ort_runner(case, a, threads, out)
    raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLS}")


def onnx_model(case, a):
    from onnx import TensorProto, helper, numpy_helper
    init = [numpy_helper.from_array(a["w"], "w")]
    if case.kernel == "matmul":
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    else:
        p = case.pad
        node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[case.stride] * 2, pads=[p] * 4)
    graph = helper.make_graph([node], f"bench_{case.kernel}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(case.x))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(case.out_shape))],
                              initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _ort_runner(case, a, threads, out):
    try:
        import onnxruntime as ort
    except ImportError:
        raise Unavailable("onnxruntime is not installed") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(onnx_model(case, a).SerializeToString(), so, providers=["CPUExecutionProvider"])
    binding = sess.io_binding()
    binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(a["x"]))
    out_value = ort.OrtValue.ortvalue_from_numpy(out)
    binding.bind_ortvalue_output("y", out_value)
    runner = Runner("ort", functools.partial(sess.run_with_iobinding, binding), out)
    runner._keep = (sess, binding, out_value)
    return runner


def check(case, runner, expected):
    runner()
    k = math.prod(case.w[1:]) if case.kernel == "conv2d" else case.w[0]
    np.testing.assert_allclose(runner.out, expected, rtol=1e-4, atol=1e-5 * math.sqrt(k),
                               err_msg=f"{runner.impl} differs from the float64 reference on {case.id}")


def time_case(case, impls, threads, repeat, rounds=ROUNDS):
    """{impl: min seconds per call} for those of `impls` available here, each
    checked against the float64 reference first and timed in its own block of
    `repeat` calls after a SETTLE pause, `rounds` times."""
    a = make_inputs(case)
    expected = reference(case, a)
    runners = {}
    for impl in impls:
        try:
            runners[impl] = make_runner(impl, case, a, threads)
        except Unavailable:
            continue
        check(case, runners[impl], expected)
    best = {impl: float("inf") for impl in runners}
    for _ in range(rounds):
        for impl, r in runners.items():
            time.sleep(SETTLE)
            for _ in range(repeat):
                t0 = time.perf_counter()
                r()
                best[impl] = min(best[impl], time.perf_counter() - t0)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="default: $NORMRT_BENCH_THREADS or 2")
    ap.add_argument("--repeat", type=int, default=30, help="timed calls per implementation and case")
    ap.add_argument("-k", default="", help="only cases whose id contains this")
    args = ap.parse_args(argv)
    threads = args.threads or bench_threads()
    print(f"{threads} threads, min of {ROUNDS} rounds x {args.repeat} calls; GFLOP/s = 2*M*N*K / time")
    print(f"| case | {' | '.join(f'{i} ms | {i} GF/s' for i in IMPLS)} | normrt vs numpy | normrt vs ORT |")
    print("|---" * (2 + 2 * len(IMPLS) + 1) + "|")
    for case in GEMM_CASES:
        if args.k not in case.id:
            continue
        best = time_case(case, IMPLS, threads, args.repeat)
        cells = []
        for impl in IMPLS:
            t = best.get(impl)
            cells += ["-", "-"] if t is None else [f"{t * 1e3:.3f}", f"{case.flops / t / 1e9:.0f}"]
        vs = [f"{best[o] / best['normrt']:.2f}x" if o in best else "-" for o in ("numpy", "ort")]
        print(f"| {case.note} {case.id} | {' | '.join(cells)} | {' | '.join(vs)} |")


if __name__ == "__main__":
    main()
