"""The standard-op pieces group_query_attention writes for one GroupQueryAttention node: the
positions read from seqlens_k, the rotary embedding, the KV cache update and the additive mask.

Every length here is a run-time value: onnxruntime-genai's models have a dynamic batch, prompt
and cache length, and the cache the node writes is max(past length, total_sequence_length) long,
a value of an input, not of a shape. Lengths are int64 vectors of one element (they go straight
into Concat'ed shapes and broadcast against per-row vectors); Range takes them as scalars.
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper


class Emitter:
    """Appends standard nodes named after one GQA node; constants through the pass context."""

    def __init__(self, ctx, base, dtype):
        self.ctx, self.base, self.dtype = ctx, base, np.dtype(dtype)
        self.nodes = []

    def op(self, op_type, inputs, out=None, **attrs):
        out = out or self.ctx.new_name(f"{self.base}_{op_type.lower()}")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=self.ctx.new_name(f"{self.base}_{op_type}"), **attrs))
        return out

    def ints(self, values):
        return self.ctx.add_constant(f"{self.base}_i", np.asarray(values, np.int64))

    def floats(self, value):
        """A scalar constant in the node's float type."""
        return self.ctx.add_constant(f"{self.base}_c", np.asarray(value, self.dtype))

    def dim(self, x, axis):
        """x's size along `axis`, as an int64 vector of one element."""
        return self.op("Slice", [self.op("Shape", [x]), self.ints([axis]), self.ints([axis + 1])])

    def scalar(self, vec):
        return self.op("Reshape", [vec, self.ints([])])

    def slice(self, x, start, end, axis):
        return self.op("Slice", [x, self.ints([start]), self.ints([end]), self.ints([axis])])

    def unsqueeze(self, x, axes):
        return self.op("Unsqueeze", [x, self.ints(axes)])

    def zeros(self, shape_vec):
        value = numpy_helper.from_array(np.zeros(1, self.dtype))
        return self.op("ConstantOfShape", [shape_vec], value=value)


def positions(e, seqlens_k, total_sequence_length, s_len, has_past):
    """(past_rows, rotary_start, total_rows, total_sequence_length): int64 (B,) vectors, the last (1,).

    onnxruntime's kernel takes a step as the first prompt when the sequence length equals
    total_sequence_length; then every row starts at position 0 (a right-padded batch: row b holds
    seqlens_k[b] + 1 real tokens, its last query rows are padding). Otherwise (token generation,
    or a batch-1 continued prompt) row b's new tokens sit at seqlens_k[b] + 1 - S onwards, right
    after the row's own past, wherever the past buffer ends. Without a past the cache is written
    from 0 whatever the step (the kernel has nothing to copy) while the rotary positions follow
    the rule above: `rotary_start` are the rotary ones, `past_rows` the cache's.
    """
    # (B,) or (B, 1) (onnxruntime takes trailing 1s: gemma-4's exports write them)
    rows = e.op("Reshape", [seqlens_k, e.ints([-1])])
    total = e.op("Add", [e.op("Cast", [rows], to=TensorProto.INT64), e.ints([1])])
    t_len = e.op("Cast", [e.op("Reshape", [total_sequence_length, e.ints([1])])], to=TensorProto.INT64)
    first = e.op("Equal", [s_len, t_len])
    rotary_start = e.op("Where", [first, e.ints([0]), e.op("Sub", [total, s_len])])
    past_rows = rotary_start if has_past else e.op("Mul", [rotary_start, e.ints([0])])
    return past_rows, rotary_start, total, t_len


def rotate(e, x, cos, sin, half, head_size, interleaved):
    """onnxruntime's rotary embedding of x (B, S, heads, H) by cos, sin (B, S, 1, half), on its
    first 2 * half channels; the rest pass through.

    Halves (rotary_interleaved=0): x1 = x[:half], x2 = x[half:2 half] rotate as
    (x1 cos - x2 sin, x2 cos + x1 sin). Interleaved: the pairs (x[2i], x[2i + 1]) do.
    The channels are taken by Gather, not Slice: a Slice of the last axis is a strided view,
    which normrt's float16 elementwise kernels refuse ("ndarray is not C-contiguous").
    """
    rot = 2 * half

    def channels(v, start, stop, axis):
        return e.op("Gather", [v, e.ints(list(range(start, stop)))], axis=axis)
    part = x if rot == head_size else channels(x, 0, rot, 3)
    if interleaved:
        pairs = e.op("Reshape", [part, e.ints([0, 0, 0, half, 2])])
        even, odd = channels(pairs, 0, 1, 4), channels(pairs, 1, 2, 4)
        cos, sin = e.unsqueeze(cos, [4]), e.unsqueeze(sin, [4])
        axis = 4
    else:
        even, odd = channels(part, 0, half, 3), channels(part, half, rot, 3)
        axis = 3
    new_even = e.op("Sub", [e.op("Mul", [even, cos]), e.op("Mul", [odd, sin])])
    new_odd = e.op("Add", [e.op("Mul", [odd, cos]), e.op("Mul", [even, sin])])
    out = e.op("Concat", [new_even, new_odd], axis=axis)
    if interleaved:
        out = e.op("Reshape", [out, e.ints([0, 0, 0, rot])])
    if rot < head_size:
        out = e.op("Concat", [out, channels(x, rot, head_size, 3)], axis=3)
    # x's shape again: broadcasting against the gathered cos loses x's symbolic dims, which
    # attention_decomposed compares with the cache's (a view, no copy)
    return e.op("Reshape", [out, e.op("Shape", [x])])


def cache_indices(e, past_rows, s_len, p_len, present_len, batch, kv_heads):
    """Flat row indices (B, KV, L) into Concat(past, new, one zero row) viewed as (rows, H) that
    build the present cache as onnxruntime's kernel writes it (without a shared buffer):

        present[b, :, j] = past[b, :, j]          j < past_b
                           new[b, :, j - past_b]  past_b <= j < past_b + S
                           0                      otherwise (up to L = max(P, total_sequence_length))

    A plain Concat(past, new) is that only when every row's past fills the buffer (past_b = P)
    and L = P + S; a right-padded batch's rows differ, so the rows are gathered.
    """
    j = e.op("Range", [e.scalar(e.ints([0])), e.scalar(present_len), e.scalar(e.ints([1]))])
    jj = e.unsqueeze(j, [0])                                   # (1, L)
    start = e.unsqueeze(past_rows, [1])                        # (B, 1)
    end = e.op("Add", [start, s_len])
    from_new = e.op("Add", [e.op("Sub", [jj, start]), p_len])
    zero_row = e.op("Add", [p_len, s_len])
    idx = e.op("Where", [e.op("Less", [jj, start]), jj,
                         e.op("Where", [e.op("Less", [jj, end]), from_new, zero_row])])
    rows_per_head = e.op("Add", [zero_row, e.ints([1])])
    heads = e.op("Range", [e.scalar(e.ints([0])), e.scalar(e.op("Mul", [batch, e.ints([kv_heads])])),
                           e.scalar(e.ints([1]))])
    head_base = e.op("Mul", [e.op("Reshape", [heads, e.ints([-1, kv_heads, 1])]), rows_per_head])
    return e.op("Add", [head_base, e.unsqueeze(idx, [1])])


def present(e, past, new, flat_index, batch, kv_heads, head_size, out):
    """The present cache (B, KV, L, H) gathered from past (or none) and the new rows."""
    zero = e.zeros(e.op("Concat", [batch, e.ints([kv_heads, 1, head_size])], axis=0))
    joined = e.op("Concat", ([past] if past else []) + [new, zero], axis=2)
    rows = e.op("Reshape", [joined, e.ints([-1, head_size])])
    return e.op("Gather", [rows, flat_index], out, axis=0)


def mask(e, past_rows, total, s_len, present_len, window, window_from_valid):
    """The additive mask (B, 1, S, L): 0 where query row s of batch row b sees key j, else -inf.

    Row s sees keys j < min(c, total_b), c = past_b + s + 1: causal after the row's past, never
    beyond the row's valid length (a right-padded prompt's padding rows see the valid prompt). A
    local window keeps the `window` last of them: j >= c - window, counted from the row's own
    position (onnxruntime's float32 flash kernel; a padding row past its window then sees
    nothing, and its output is 0, the Where(IsNaN) after the Softmax), or with
    `window_from_valid` j >= min(c, total_b) - window (its other kernel: softcap, float16). The
    two differ on the padding rows of a right-padded prompt only.
    """
    s = e.op("Range", [e.scalar(e.ints([0])), e.scalar(s_len), e.scalar(e.ints([1]))])
    causal = e.op("Add", [e.op("Add", [e.unsqueeze(past_rows, [1]), e.unsqueeze(s, [0])]), e.ints([1])])
    limit = e.unsqueeze(e.op("Min", [causal, e.unsqueeze(total, [1])]), [2])      # (B, S, 1)
    j = e.op("Range", [e.scalar(e.ints([0])), e.scalar(present_len), e.scalar(e.ints([1]))])
    jj = e.unsqueeze(j, [0, 1])                                                    # (1, 1, L)
    seen = e.op("Less", [jj, limit])
    if window > 0:
        first = e.op("Sub", [limit if window_from_valid else e.unsqueeze(causal, [2]), e.ints([window])])
        seen = e.op("And", [seen, e.op("GreaterOrEqual", [jj, first])])
    bias = e.op("Where", [seen, e.floats(0.0), e.floats(-np.inf)])
    return e.unsqueeze(bias, [1])
