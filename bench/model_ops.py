"""The non-norm ops of the models users bring: recurrent layers, samplers, folds, quantization
(fake-quantization pairs and the 8-bit products of static and dynamic quantization), einsum
products, batched head products, spectral transforms, scatters, ELU, transposed and 3-D convs
and relative-position gathers.

    python -m bench.model_ops [--runs 100] [--blocks 3] [--threads 2]

Each case is a one-node model (a DynamicQuantizeLinear -> DequantizeLinear or QuantizeLinear ->
DequantizeLinear pair for the quantization rows) with its weights, grid or scales as
initializers, run by normrt and by onnxruntime on the same input (both outputs agree first),
each in its own blocks of runs after a pause (normrt.timing: min over blocks of the block
median, us); `copyto` is np.copyto of the output, the floor for writing it once.
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .cnn_ops import one_node_times, parse_timing_args


def _model(nodes, x_shape, inits, opset, y_shape=None):
    graph = helper.make_graph(nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def recurrent(kind, directions, seq, inputs, hidden, rng, batch=1):
    gates = {"LSTM": 4, "GRU": 3}[kind]
    s = 1 / np.sqrt(hidden)
    inits = {"w": (rng.standard_normal((directions, gates * hidden, inputs)) * s).astype(np.float32),
             "r": (rng.standard_normal((directions, gates * hidden, hidden)) * s).astype(np.float32),
             "b": (rng.standard_normal((directions, 2 * gates * hidden)) * 0.1).astype(np.float32)}
    extra = {"linear_before_reset": 1} if kind == "GRU" else {}
    node = helper.make_node(kind, ["x", "w", "r", "b"], ["y"], hidden_size=hidden,
                            direction="bidirectional" if directions == 2 else "forward", **extra)
    return _model([node], (seq, batch, inputs), inits, 14), rng.standard_normal((seq, batch, inputs)).astype(np.float32)


def grid_sample(mode, shape, out_hw, rng):
    n, c = shape[:2]
    grid = rng.uniform(-1.1, 1.1, (n, *out_hw, 2)).astype(np.float32)
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], mode=mode, padding_mode="border")
    return _model([node], shape, {"grid": grid}, 20), rng.standard_normal(shape).astype(np.float32)


def col2im(channels, hw, block, rng):
    blocks = (hw[0] // block) * (hw[1] // block)
    inits = {"image": np.array(hw, np.int64), "block": np.array([block, block], np.int64)}
    node = helper.make_node("Col2Im", ["x", "image", "block"], ["y"], strides=[block, block])
    shape = (1, channels * block * block, blocks)
    return _model([node], shape, inits, 18), rng.standard_normal(shape).astype(np.float32)


def dynamic_fake_quant(shape, rng):
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    return _model(nodes, shape, {}, 13), rng.standard_normal(shape).astype(np.float32)


def qdq_pair(shape, rng):
    inits = {"s": np.array(0.05, np.float32), "zp": np.array(128, np.uint8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])]
    return _model(nodes, shape, inits, 13), rng.standard_normal(shape).astype(np.float32)


def einsum(equation, x_shape, w_shape, rng):
    """Einsum of x with a constant operand (XLNet's 'ibh,hnd->ibnd': einsum_products' MatMul)."""
    inits = {"w": (rng.standard_normal(w_shape) / np.sqrt(w_shape[0])).astype(np.float32)}
    node = helper.make_node("Einsum", ["x", "w"], ["y"], equation=equation)
    return _model([node], x_shape, inits, 12), rng.standard_normal(x_shape).astype(np.float32)


def batched_matmul(x_shape, w_shape, rng):
    """A batched product above the small kernel's size (wav2vec2-conformer's relative-position
    scores: 4 heads of 159x16 @ 16x317), on batched_gemm."""
    inits = {"w": rng.standard_normal(w_shape).astype(np.float32)}
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    return _model([node], x_shape, inits, 13), rng.standard_normal(x_shape).astype(np.float32)


def dft(shape, rng):
    """A real one-sided DFT over axis 1 (torch.fft.rfft's export)."""
    node = helper.make_node("DFT", ["x"], ["y"], axis=1, onesided=1)
    return _model([node], shape, {}, 17), rng.standard_normal(shape).astype(np.float32)


def stft(batch, length, n_fft, hop, rng):
    """torch.stft(center=False) of a Hann window: (batch, frames, n_fft // 2 + 1, 2)."""
    inits = {"step": np.array(hop, np.int64), "window": np.hanning(n_fft).astype(np.float32)}
    node = helper.make_node("STFT", ["x", "step", "window"], ["y"], onesided=1)
    return _model([node], (batch, length, 1), inits, 17), rng.standard_normal((batch, length, 1)).astype(np.float32)


def scatter_nd_row(shape, rng):
    """x[:, 0] = v by constant indices (RWKV's time-shift state), written as ScatterND."""
    inits = {"ids": np.array([[[0, 0]]], np.int64), "v": rng.standard_normal((1, 1, shape[-1])).astype(np.float32)}
    node = helper.make_node("ScatterND", ["x", "ids", "v"], ["y"])
    return _model([node], shape, inits, 16), rng.standard_normal(shape).astype(np.float32)


def elu(shape, rng):
    node = helper.make_node("Elu", ["x"], ["y"])
    return _model([node], shape, {}, 13), rng.standard_normal(shape).astype(np.float32)


def qdq_linear(rows, k, n, rng):
    """quantize_static's Linear: x -> Q/DQ (uint8) -> MatMul(DequantizeLinear(int8 W, per-tensor
    scale)): QMatMul on the 8-bit kernel where the CPU has VNNI."""
    inits = {"xs": np.array(0.02, np.float32), "xz": np.array(128, np.uint8),
             "wq": rng.integers(-127, 128, (k, n)).astype(np.int8), "ws": np.array(0.004, np.float32),
             "wz": np.array(0, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "xs", "xz"], ["d"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
             helper.make_node("MatMul", ["d", "w"], ["y"])]
    return _model(nodes, (1, rows, k), inits, 13), rng.standard_normal((1, rows, k)).astype(np.float32)


def dynamic_linear(rows, k, n, rng):
    """quantize_dynamic's Linear: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(xs * ws)
    -> Add(bias): QMatMul(dynamic=1) with the bias where the CPU has VNNI."""
    inits = {"wq": rng.integers(-127, 128, (k, n)).astype(np.int8), "ws": np.array(0.004, np.float32),
             "b": rng.standard_normal(n).astype(np.float32)}
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("MatMulInteger", ["q", "wq", "z"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["s", "ws"], ["sw"]), helper.make_node("Mul", ["accf", "sw"], ["p"]),
             helper.make_node("Add", ["p", "b"], ["y"])]
    return _model(nodes, (1, rows, k), inits, 13), rng.standard_normal((1, rows, k)).astype(np.float32)


def qdq_scores(heads, seq, dim, rng):
    """A static QDQ model's attention scores: Q/DQ(x) @ Q/DQ(x)^T per head, both operands
    activations on their grids (QBatchedMatMul)."""
    inits = {"s": np.array(0.03, np.float32), "z": np.array(128, np.uint8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Transpose", ["d"], ["t"], perm=[0, 1, 3, 2]),
             helper.make_node("QuantizeLinear", ["t", "s", "z"], ["tq"]),
             helper.make_node("DequantizeLinear", ["tq", "s", "z"], ["td"]),
             helper.make_node("MatMul", ["d", "td"], ["y"])]
    shape = (1, heads, seq, dim)
    return _model(nodes, shape, inits, 13), rng.standard_normal(shape).astype(np.float32)


def conv_transpose(x_shape, w_shape, strides, pads, rng):
    inits = {"w": (rng.standard_normal(w_shape) * 0.1).astype(np.float32),
             "b": rng.standard_normal(w_shape[1]).astype(np.float32)}
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=strides, pads=pads)
    return _model([node], x_shape, inits, 17), rng.standard_normal(x_shape).astype(np.float32)


def conv3d(x_shape, w_shape, strides, pads, rng):
    inits = {"w": (rng.standard_normal(w_shape) * 0.1).astype(np.float32),
             "b": rng.standard_normal(w_shape[0]).astype(np.float32)}
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=strides, pads=pads)
    return _model([node], x_shape, inits, 17), rng.standard_normal(x_shape).astype(np.float32)


def gather_elements_relative(heads, seq, span, rng):
    """DeBERTa's c2p gather: each query's scores at its keys' relative positions."""
    idx = np.clip(np.arange(seq)[:, None] - np.arange(seq)[None, :] + span // 2, 0, span - 1)
    inits = {"i": np.ascontiguousarray(np.broadcast_to(idx, (heads, seq, seq))).astype(np.int64)}
    node = helper.make_node("GatherElements", ["x", "i"], ["y"], axis=-1)
    shape = (heads, seq, span)
    return _model([node], shape, inits, 13), rng.standard_normal(shape).astype(np.float32)


CASES = {   # name -> builder(rng) -> (model, x)
    "lstm_bidirectional-s100-i64-h128": lambda rng: recurrent("LSTM", 2, 100, 64, 128, rng),
    "lstm_forward-s64-i128-h256": lambda rng: recurrent("LSTM", 1, 64, 128, 256, rng),
    "gru_bidirectional-s100-i64-h128": lambda rng: recurrent("GRU", 2, 100, 64, 128, rng),
    "grid_sample_bilinear-1x32x64x64": lambda rng: grid_sample("linear", (1, 32, 64, 64), (64, 64), rng),
    "grid_sample_bicubic-1x16x32x32": lambda rng: grid_sample("cubic", (1, 16, 32, 32), (32, 32), rng),
    "col2im_2x2-64x32x32": lambda rng: col2im(64, (32, 32), 2, rng),
    "dynamic_fake_quant-128x768": lambda rng: dynamic_fake_quant((1, 128, 768), rng),
    "qdq_pair-1x64x56x56": lambda rng: qdq_pair((1, 64, 56, 56), rng),
    "lstm_forward-s100-i32-h32": lambda rng: recurrent("LSTM", 1, 100, 32, 32, rng),
    "lstm_forward-b8-s50-i64-h128": lambda rng: recurrent("LSTM", 1, 50, 64, 128, rng, batch=8),
    "gru_forward-b8-s50-i64-h128": lambda rng: recurrent("GRU", 1, 50, 64, 128, rng, batch=8),
    "einsum_ibh_hnd-64x1x256-256x4x64": lambda rng: einsum("ibh,hnd->ibnd", (64, 1, 256), (256, 4, 64), rng),
    "batched_matmul-4x159x16x317": lambda rng: batched_matmul((1, 4, 159, 16), (1, 4, 16, 317), rng),
    "dft_onesided-8x1024": lambda rng: dft((8, 1024, 1), rng),
    "stft-2x16000-n400-hop160": lambda rng: stft(2, 16000, 400, 160, rng),
    "scatter_nd_row-1x24x64": lambda rng: scatter_nd_row((1, 24, 64), rng),
    "elu-1x8x800": lambda rng: elu((1, 8, 800), rng),
    "qdq_linear-128x768x768": lambda rng: qdq_linear(128, 768, 768, rng),
    "dynamic_linear-128x768x3072": lambda rng: dynamic_linear(128, 768, 3072, rng),
    "qdq_scores-12x128x64": lambda rng: qdq_scores(12, 128, 64, rng),
    # a vocoder's upsampling (HiFi-GAN), a UNet's, a DCGAN-style 4x4 stride 2
    "conv_transpose1d-1x512x100-k16s8": lambda rng: conv_transpose((1, 512, 100), (512, 256, 16), [8], [4, 4], rng),
    "conv_transpose-1x128x64x64-k2s2": lambda rng: conv_transpose((1, 128, 64, 64), (128, 64, 2, 2), [2, 2],
                                                                  [0, 0, 0, 0], rng),
    "conv_transpose-1x64x32x32-k4s2": lambda rng: conv_transpose((1, 64, 32, 32), (64, 32, 4, 4), [2, 2],
                                                                 [1, 1, 1, 1], rng),
    "conv3d-1x32x16x32x32-k3": lambda rng: conv3d((1, 32, 16, 32, 32), (32, 32, 3, 3, 3), [1, 1, 1], [1] * 6, rng),
    "gather_elements-12x128x512": lambda rng: gather_elements_relative(12, 128, 512, rng),
}


def tolerance(name, want):
    """How close normrt's and onnxruntime's outputs of a case must be (relative and absolute)."""
    if name.startswith(("qdq_linear", "qdq_scores", "dynamic_linear")):
        # products: both runtimes sum the integers exactly (onnxruntime's QLinear / integer
        # kernels, normrt's 8-bit one) or, where a runtime keeps the float product, in float32
        return 1e-5 * max(1.0, float(np.abs(want).max()))
    if "quant" in name or "qdq" in name:
        return 0.0                      # (onnxruntime rounds the pairs the same way)
    scale = max(1.0, float(np.abs(want).max()))
    if name.startswith("stft"):
        # onnxruntime's float32 STFT is the less accurate one: 1.3e-3 from the float64 transform
        # on outputs up to 39, normrt's 2e-6 (numpy's FFT)
        return 1e-4 * scale
    if name.startswith(("dft", "batched_matmul", "conv")):      # sums of 16-1024 terms in another order
        return 1e-5 * scale
    return 1e-5


def build(name):
    """(model, x) of a case, the same on every call."""
    return CASES[name](np.random.default_rng(0))


def main(argv=None):
    args = parse_timing_args(argv, __doc__.splitlines()[0])
    import normrt
    print("| case | normrt | ort | copyto | normrt / ort |")
    print("|---|---|---|---|---|")
    for name in CASES:
        model, x = build(name)
        floor = normrt.InferenceSession(model).run(None, {"x": x})[0]
        t = one_node_times(model, x, args, floor, tol=lambda want, name=name: tolerance(name, want))
        ort = t.get("ort")
        ratio = f"{t['normrt'] / ort:.2f}x" if ort else "-"
        print(f"| {name} | {t['normrt']:.1f} | {ort if ort is None else f'{ort:.1f}'} | {t['copyto']:.1f} | {ratio} |",
              flush=True)


if __name__ == "__main__":
    main()
