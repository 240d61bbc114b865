"""onnxruntime's dynamically quantized LSTM (com.microsoft::DynamicQuantizeLSTM) -> the standard
LSTM of its dequantized weights.

`quantize_dynamic` writes every LSTM of a model (speech: EnCodec, Kokoro, Parakeet, silero VAD;
OCR, time series) as this contrib op, with its weights as 8-bit codes stored transposed:

    X, B, sequence_lens, initial_h, initial_c, P ──────────────────┐
    Wq [D, I, 4H] (int8/uint8), W_scale, W_zero_point ─────────────┤
    Rq [D, H, 4H] (int8/uint8), R_scale, R_zero_point ─────────────┴► DynamicQuantizeLSTM ─► Y, Y_h, Y_c

    ==>  X, W', R', B, sequence_lens, initial_h, initial_c, P ─► LSTM ─► Y, Y_h, Y_c
         W' = transpose((Wq - W_zero_point) * W_scale) [D, 4H, I], R' likewise [D, 4H, H]
         (scales and zero points one per direction [D], or per gate column [D, 4H])

with the LSTM attributes as written (hidden_size, direction, activations, clip, input_forget).

What it computes: onnxruntime's kernel quantizes X and each step's H to 8 bits (per tensor,
dynamically) and multiplies the codes; the LSTM of the dequantized weights multiplies the same
weights by unrounded activations. The weights are exactly the model's; the activations' 8-bit
rounding is left out, so the result is the float LSTM the quantization approximates (tests:
exact against an LSTM of the dequantized weights, within the 8-bit error of onnxruntime's). The
LSTM then runs on normrt's recurrent kernel with W packed once.

Refused (the op then has no implementation and loading fails naming it): a weight, scale or
zero point that is not a constant; a weight whose shape is not [D, I, 4H] / [D, H, 4H] for the
node's direction and hidden_size; a scale or zero point that is neither [D] nor [D, 4H]; a
non-float32 scale.
"""
import numpy as np
from onnx import helper

from . import GraphPass
from ._queries import constant, is_op, present

_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def _per_direction(value, D, H):
    """A scale or zero point shaped to broadcast over a direction's [I or H, 4H] codes: one value
    per direction ([D], or a lone value when D is 1) or one per gate column ([D, 4H])."""
    if value.shape == (D,) or (D == 1 and value.size == 1 and value.ndim <= 1):
        return value.reshape(D, 1, 1)
    if value.shape == (D, 4 * H):
        return value.reshape(D, 1, 4 * H)
    return None


class QuantizedLstm(GraphPass):
    name = "quantized_lstm"

    def matches(self, ctx):
        return [n for n in ctx.nodes if is_op(n, "DynamicQuantizeLSTM", domain="com.microsoft")]

    def describe(self, node):
        return node.op_type, [node.name]

    @staticmethod
    def _inputs(node):
        return list(node.input) + [""] * (12 - len(node.input))

    def _weights(self, ctx, node):
        """[(W', R')] as float32 [D, 4H, I] and [D, 4H, H], or a reason string."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if direction not in _DIRECTIONS or "hidden_size" not in attrs:
            return f"direction {direction!r} / hidden_size {attrs.get('hidden_size')} not an LSTM's"
        D, H = _DIRECTIONS[direction], int(attrs["hidden_size"])
        ins = self._inputs(node)
        out = []
        for label, (q, s, z) in (("W", ins[1:2] + ins[8:10]), ("R", ins[2:3] + ins[10:12])):
            codes = constant(ctx, q) if q else None
            scale = constant(ctx, s) if s else None
            zero = constant(ctx, z) if z else np.zeros((D,), np.int32)
            if codes is None or scale is None or zero is None:
                return f"{label}, its scale or its zero point is not a constant"
            if codes.ndim != 3 or codes.shape[0] != D or codes.shape[2] != 4 * H \
                    or (label == "R" and codes.shape[1] != H) or codes.dtype not in (np.int8, np.uint8):
                return f"{label} of shape {codes.shape} ({codes.dtype}), not 8-bit [{D}, *, {4 * H}]"
            if scale.dtype != np.float32:
                return f"{label}_scale is {scale.dtype}, not float32"
            shaped = [_per_direction(scale, D, H), _per_direction(zero, D, H)]
            if shaped[0] is None or shaped[1] is None:
                bad = scale if shaped[0] is None else zero
                return f"{label} scale or zero point of shape {bad.shape}, not [{D}] or [{D}, {4 * H}]"
            w = (codes.astype(np.float32) - shaped[1].astype(np.float32)) * shaped[0]
            out.append(np.ascontiguousarray(w.transpose(0, 2, 1), dtype=np.float32))
        return out

    def check(self, ctx, node):
        if not present(ctx, [node]):
            return "node already rewritten"
        found = self._weights(ctx, node)
        return found if isinstance(found, str) else None

    def rewrite(self, ctx, node):
        w, r = self._weights(ctx, node)
        ins = self._inputs(node)
        w_name = ctx.add_constant(f"{ins[1]}_dequantized", w)
        r_name = ctx.add_constant(f"{ins[2]}_dequantized", r)
        inputs = [ins[0], w_name, r_name] + ins[3:8]
        while inputs and not inputs[-1]:
            inputs.pop()
        lstm = helper.make_node("LSTM", inputs, list(node.output), name=node.name)
        lstm.attribute.extend(node.attribute)       # hidden_size, direction, activations... as written
        ctx.replace_nodes([node], [lstm])
