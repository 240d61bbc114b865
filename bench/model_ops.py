"""The non-norm ops of the models users bring: recurrent layers, samplers, folds, quantization.

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


def recurrent(kind, directions, seq, inputs, hidden, rng):
    gates = {"LSTM": 4, "GRU": 3}[kind]
    s = 1 / np.sqrt(hidden)
    inits = {"w": (rng.standard_normal((directions, gates * hidden, inputs)) * s).astype(np.float32),
             "r": (rng.standard_normal((directions, gates * hidden, hidden)) * s).astype(np.float32),
             "b": (rng.standard_normal((directions, 2 * gates * hidden)) * 0.1).astype(np.float32)}
    extra = {"linear_before_reset": 1} if kind == "GRU" else {}
    node = helper.make_node(kind, ["x", "w", "r", "b"], ["y"], hidden_size=hidden,
                            direction="bidirectional" if directions == 2 else "forward", **extra)
    return _model([node], (seq, 1, inputs), inits, 14), rng.standard_normal((seq, 1, inputs)).astype(np.float32)


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


CASES = {   # name -> builder(rng) -> (model, x)
    "lstm_bidirectional-s100-i64-h128": lambda rng: recurrent("LSTM", 2, 100, 64, 128, rng),
    "lstm_forward-s64-i128-h256": lambda rng: recurrent("LSTM", 1, 64, 128, 256, rng),
    "gru_bidirectional-s100-i64-h128": lambda rng: recurrent("GRU", 2, 100, 64, 128, rng),
    "grid_sample_bilinear-1x32x64x64": lambda rng: grid_sample("linear", (1, 32, 64, 64), (64, 64), rng),
    "grid_sample_bicubic-1x16x32x32": lambda rng: grid_sample("cubic", (1, 16, 32, 32), (32, 32), rng),
    "col2im_2x2-64x32x32": lambda rng: col2im(64, (32, 32), 2, rng),
    "dynamic_fake_quant-128x768": lambda rng: dynamic_fake_quant((1, 128, 768), rng),
    "qdq_pair-1x64x56x56": lambda rng: qdq_pair((1, 64, 56, 56), rng),
}


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
        t = one_node_times(model, x, args, floor)
        ort = t.get("ort")
        ratio = f"{t['normrt'] / ort:.2f}x" if ort else "-"
        print(f"| {name} | {t['normrt']:.1f} | {ort if ort is None else f'{ort:.1f}'} | {t['copyto']:.1f} | {ratio} |",
              flush=True)


if __name__ == "__main__":
    main()
