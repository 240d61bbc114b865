"""onnxruntime's GroupQueryAttention (com.microsoft) -> normrt::GroupQueryAttention, or the
standard ops of its definition.

onnxruntime-genai's model builder writes one GQA node per attention layer of the LLMs it exports
for CPU (Phi-3, Llama, Qwen, Mistral), with the KV cache as past_* inputs and present_* outputs.
With N query heads, KV key/value heads (each serving N / KV query heads) of size H:

    query (B, S, N·H) [key, value (B, S, KV·H)]    (or query packed (B, S, (N + 2 KV)·H))
    past_key, past_value (B, KV, P, H)    seqlens_k (B,) int32    total_sequence_length (1) int32
    [cos_cache, sin_cache (max positions, R / 2)]
        ──► GroupQueryAttention(num_heads, kv_num_heads, scale, softcap, do_rotary,
                                rotary_interleaved, local_window_size)
        ──► output (B, S, N·H), present_key, present_value (B, KV, L, H),  L = max(P, total)
  ==>  (no softcap)
    the same inputs ──► normrt::GroupQueryAttention(num_heads, kv_num_heads, head_size, scale,
                           do_rotary, rotary_interleaved, local_window_size, window_from_valid)
                    ──► output, present_key, present_value
  ==>  (softcap, or `fused` off)
    q, k, v = Slice(query) | query, key, value ─► Reshape (B, S, heads, H)
    past_b = 0 if S == total_sequence_length (first prompt) else seqlens_k[b] + 1 - S
    q, k = rotary(q, k; Gather(cos/sin_cache, past_b + s))            (do_rotary)
    present = Gather(Concat(past, Transpose(k|v), zero row) as (rows, H), cache rows)  (_gqa_graph)
    Qg = Reshape(Transpose(q), (B, KV, N/KV · S, H))      each KV head's query heads as its rows
    scores = MatMul(Qg, Transpose(present_key)) · scale  [─► softcap · Tanh(· / softcap)]
    P = Softmax(scores + Reshape(Tile(mask (B, 1, S, L), N/KV))) ─► Where(IsNaN(P), 0, P)
    output = Reshape(Transpose(Reshape(MatMul(P, present_value), (B, N, S, H))), (B, S, N·H))

Rather than repeating each KV head N/KV times (a copy of the cache per query head), each KV
head's query heads are stacked as rows of one query: head h reads KV head h // (N/KV), as the
kernel's does. The mask is additive -inf (from seqlens_k, see _gqa_graph.mask): causal after each
row's past, never beyond the row's valid length, the local window's last keys only. The
Where(IsNaN) gives a fully masked row (a padding row past its window) onnxruntime's 0, and is
normrt's attention_decomposed spelling of that, so the chain is its Q·Kt·V form.

The chain fuses onto normrt::Attention (attention_decomposed, then attention_layout takes the
Transposes) when shape inference can see the mask as the scores' shape: the cache length is an
input's value, so the mask is reshaped to (B, 1, rows, L) read off Q and the present cache, whose
symbolic dims Reshape's inference carries over; the present outputs declared with their dims (as
onnxruntime-genai writes them) give L a name. softcap's Tanh inside the chain keeps it unfused.

The fused node (grouped_query_call.py) computes the same steps in a few numpy operations and
one call of the attention kernel: a decode step of onnxruntime-genai's LLMs was ~100 nodes per
layer as standard ops, each a numpy call of a few microseconds, and the model ran dispatch-bound
(the mid Llama's decode step in a generation loop 6.7 ms as standard ops, 1.9 ms fused; its
4 layers are 45 nodes instead of 427). The standard ops stay for softcap (the kernel has no
Tanh inside the scores) and as the definition the tests hold the fused node to.

The semantics are onnxruntime's CPU kernel's (checked against onnxruntime 1.32): the present
cache zeroed past each row's tokens (no buffer shared between past and present: a graph input is
never overwritten), a right-padded prompt's padding rows attending to the valid tokens, the local
window counting the current token (window w: the w last keys). Its float32 flash kernel and its
other kernel (softcap, float16) count a padding row's window from different ends; the rewrite
follows the one the node's type and softcap select (_gqa_graph.mask).

Refused (the node stays; loading fails naming it): smooth_softmax / head_sink (the extra softmax
term), position_ids, attention_bias, the qk output, a quantized KV cache, unknown attributes;
num_heads not a multiple of kv_num_heads; local_window_size 0 or below -1; past_key without
past_value (or key without value); an opset below 13; no input of a known float type; a head
size no input shape gives; do_rotary without cos/sin caches of a known (positions, R / 2) shape.
"""
import math

import numpy as np
from onnx import helper

from .._graph import canonical_domain, np_dtype
from ..domain import NORM_OPS, make_node
from . import GraphPass, ValueType
from ._gqa_graph import Emitter, cache_indices, mask, positions, present, rotate
from ._queries import KERNEL_DTYPES, fused_name, present as still_present

MS = "com.microsoft"
ATTRIBUTES = {"num_heads", "kv_num_heads", "scale", "softcap", "do_rotary", "rotary_interleaved",
              "local_window_size", "smooth_softmax", "qk_output", "k_quant_type", "v_quant_type",
              "kv_cache_bit_width"}
QUERY, KEY, VALUE, PAST_KEY, PAST_VALUE, SEQLENS_K, TOTAL_LENGTH, COS, SIN = range(9)
EXTRA_INPUTS = {9: "position_ids", 10: "attention_bias", 11: "head_sink", 12: "k_scale", 13: "v_scale"}


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _input(node, i):
    return node.input[i] if len(node.input) > i and node.input[i] else ""


class GroupQueryAttention(GraphPass):
    name = "group_query_attention"
    # False: every node as the standard ops of its definition (the tests run both forms)
    fused = True

    def matches(self, ctx):
        return [n for n in ctx.nodes if n.op_type == "GroupQueryAttention" and canonical_domain(n.domain) == MS]

    def describe(self, node):
        return node.op_type, [node.name]

    def _dtype(self, ctx, node):
        """The float type of the first typed float input: shape inference stops at contrib ops,
        so the query (a MatMulNBits' output) may be untyped while the past (a graph input) or
        the cos cache (a constant) is typed."""
        for i in (QUERY, KEY, VALUE, PAST_KEY, PAST_VALUE, COS, SIN):
            t = ctx.elem_type(_input(node, i)) if _input(node, i) else 0
            if t:
                return np_dtype(t) if t in KERNEL_DTYPES else None
        return None

    def _head_size(self, ctx, node, heads, kv_heads):
        """H from every input shape that gives it (they must agree), or None."""
        sizes = set()
        q = ctx.shape(node.input[QUERY])
        packed = not _input(node, KEY)
        if q and isinstance(q[-1], int):
            sizes.add(q[-1] / (heads + 2 * kv_heads) if packed else q[-1] / heads)
        if _input(node, KEY):
            k = ctx.shape(node.input[KEY])
            if k and isinstance(k[-1], int):
                sizes.add(k[-1] / kv_heads)
        for i in (PAST_KEY, PAST_VALUE):
            p = ctx.shape(_input(node, i)) if _input(node, i) else None
            if p and len(p) == 4 and isinstance(p[3], int):
                sizes.add(p[3])
        if len(sizes) != 1:
            return None
        size = sizes.pop()
        return int(size) if size == int(size) and size > 0 else None

    def check(self, ctx, node):
        if not still_present(ctx, [node]):
            return "node already rewritten"
        attrs = _attrs(node)
        unknown = sorted(set(attrs) - ATTRIBUTES)
        if unknown:
            return f"attributes {unknown} not implemented"
        heads, kv_heads = int(attrs.get("num_heads", 0)), int(attrs.get("kv_num_heads", 0))
        if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
            return f"num_heads {heads} not a positive multiple of kv_num_heads {kv_heads}"
        if int(attrs.get("smooth_softmax", 0)) or _input(node, 11):
            return "smooth softmax / head_sink (an extra softmax term) not implemented"
        if int(attrs.get("qk_output", 0)) or (len(node.output) > 3 and any(node.output[3:])):
            return "the QK output not implemented"
        for key in ("k_quant_type", "v_quant_type"):
            value = attrs.get(key, b"NONE")
            if (value.decode() if isinstance(value, bytes) else value) != "NONE":
                return "a quantized KV cache not implemented"
        if int(attrs.get("kv_cache_bit_width", 0)):
            return "a quantized KV cache not implemented"
        for i, what in EXTRA_INPUTS.items():
            if _input(node, i):
                return f"input {what} not implemented"
        if len(node.input) > max(EXTRA_INPUTS) + 1:
            return f"{len(node.input)} inputs (known: {max(EXTRA_INPUTS) + 1})"
        window = int(attrs.get("local_window_size", -1))
        if window == 0 or window < -1:
            return f"local_window_size {window} (handled: -1 or positive)"
        if bool(_input(node, KEY)) != bool(_input(node, VALUE)):
            return "key without value (or value without key)"
        if bool(_input(node, PAST_KEY)) != bool(_input(node, PAST_VALUE)):
            return "past_key without past_value (or the reverse)"
        if not _input(node, SEQLENS_K) or not _input(node, TOTAL_LENGTH):
            return "seqlens_k or total_sequence_length missing"
        if ctx.opsets.get("", 1) < 13:
            return f"opset {ctx.opsets.get('', 1)} (the rewrite writes opset-13 ops)"
        if self._dtype(ctx, node) is None:
            return f"no input of a known float type (inputs {list(node.input)})"
        head_size = self._head_size(ctx, node, heads, kv_heads)
        if head_size is None:
            return "head size unknown (or inconsistent) from the query, key and past shapes"
        if int(attrs.get("do_rotary", 0)):
            if not _input(node, COS) or not _input(node, SIN):
                return "do_rotary without cos_cache / sin_cache"
            shapes = [ctx.shape(node.input[i]) for i in (COS, SIN)]
            known = all(s is not None and len(s) == 2 and isinstance(s[1], int) for s in shapes)
            if not known or shapes[0][1] != shapes[1][1]:
                return f"cos/sin caches of shapes {shapes} (handled: known (positions, R / 2))"
            if not 0 < 2 * shapes[0][1] <= head_size:
                return f"rotary dim {2 * shapes[0][1]} beyond head size {head_size}"
        return None

    def rewrite(self, ctx, node):
        attrs = _attrs(node)
        heads, kv_heads = int(attrs["num_heads"]), int(attrs["kv_num_heads"])
        head_size = self._head_size(ctx, node, heads, kv_heads)
        rep = heads // kv_heads
        dtype = self._dtype(ctx, node)
        # onnxruntime runs float32 without softcap on its flash kernel, the rest on another, which
        # count a padding row's window differently (_gqa_graph.mask)
        softcap = float(attrs.get("softcap", 0.0))
        scale = float(attrs.get("scale", 0.0)) or 1.0 / math.sqrt(head_size)
        flash = dtype == np.float32 and softcap <= 0
        if self.fused and softcap <= 0:
            self._fuse(ctx, node, attrs, heads, kv_heads, head_size, scale, dtype, flash)
            return
        e = Emitter(ctx, node.name or "gqa", dtype)
        query = node.input[QUERY]
        if _input(node, KEY):
            q, k, v = query, node.input[KEY], node.input[VALUE]
        else:
            q_end, k_end = heads * head_size, (heads + kv_heads) * head_size
            q, k, v = (e.slice(query, 0, q_end, 2), e.slice(query, q_end, k_end, 2),
                       e.slice(query, k_end, k_end + kv_heads * head_size, 2))
        q = e.op("Reshape", [q, e.ints([0, 0, heads, head_size])])
        k = e.op("Reshape", [k, e.ints([0, 0, kv_heads, head_size])])
        v = e.op("Reshape", [v, e.ints([0, 0, kv_heads, head_size])])

        batch, s_len = e.dim(query, 0), e.dim(query, 1)
        past_k, past_v = _input(node, PAST_KEY), _input(node, PAST_VALUE)
        p_len = e.dim(past_k, 2) if past_k else e.ints([0])
        past_rows, rotary_start, total, t_len = positions(e, node.input[SEQLENS_K], node.input[TOTAL_LENGTH],
                                                          s_len, bool(past_k))
        present_len = e.op("Max", [p_len, t_len])

        if int(attrs.get("do_rotary", 0)):
            half = ctx.shape(node.input[COS])[1]
            s = e.op("Range", [e.scalar(e.ints([0])), e.scalar(s_len), e.scalar(e.ints([1]))])
            pos = e.op("Add", [e.unsqueeze(rotary_start, [1]), e.unsqueeze(s, [0])])        # (B, S)
            cos = e.unsqueeze(e.op("Gather", [node.input[COS], pos], axis=0), [2])         # (B, S, 1, R/2)
            sin = e.unsqueeze(e.op("Gather", [node.input[SIN], pos], axis=0), [2])
            interleaved = bool(int(attrs.get("rotary_interleaved", 0)))
            q = rotate(e, q, cos, sin, half, head_size, interleaved)
            k = rotate(e, k, cos, sin, half, head_size, interleaved)

        to_heads = [0, 2, 1, 3]
        q, k, v = (e.op("Transpose", [x], perm=to_heads) for x in (q, k, v))
        rows = cache_indices(e, past_rows, s_len, p_len, present_len, batch, kv_heads)
        out_k = node.output[1] if len(node.output) > 1 and node.output[1] else None
        out_v = node.output[2] if len(node.output) > 2 and node.output[2] else None
        key_cache = present(e, past_k, k, rows, batch, kv_heads, head_size, out_k)
        value_cache = present(e, past_v, v, rows, batch, kv_heads, head_size, out_v)

        if rep > 1:
            q = e.op("Reshape", [q, e.ints([0, kv_heads, -1, head_size])])
        key_t = e.op("Transpose", [key_cache], perm=[0, 1, 3, 2])
        scores = e.op("Mul", [e.op("MatMul", [q, key_t]), e.floats(scale)])
        if softcap > 0:
            scores = e.op("Mul", [e.op("Tanh", [e.op("Div", [scores, e.floats(softcap)])]), e.floats(softcap)])
        bias = mask(e, past_rows, total, s_len, present_len, int(attrs.get("local_window_size", -1)), not flash)
        if rep > 1:
            bias = e.op("Tile", [bias, e.ints([1, 1, rep, 1])])
        # the mask is the scores' shape already; expanded to the one Q and Kt give, inference
        # sees it (symbolically) as the scores': attention_decomposed then takes it
        # (sizes read off the Transposes' inputs: attention_layout absorbs a Transpose only
        # the fused node reads)
        rows_dim = e.dim(q, 2) if rep > 1 else s_len
        scores_shape = e.op("Concat", [batch, e.ints([1]), rows_dim, e.dim(key_cache, 2)], axis=0)
        bias = e.op("Reshape", [bias, scores_shape])
        probs = e.op("Softmax", [e.op("Add", [scores, bias])], axis=-1)
        probs = e.op("Where", [e.op("IsNaN", [probs]), e.floats(0.0), probs])
        out = e.op("MatMul", [probs, value_cache])
        if rep > 1:
            out = e.op("Reshape", [out, e.ints([0, heads, -1, head_size])])
        out = e.op("Transpose", [out], perm=to_heads)
        e.op("Reshape", [out, e.ints([0, 0, heads * head_size])], node.output[0])
        ctx.replace_nodes([node], e.nodes)
        ctx.mark_types_stale()      # inference stopped at the contrib op: it goes on past it now

    def _fuse(self, ctx, node, attrs, heads, kv_heads, head_size, scale, dtype, flash):
        """The node as normrt::GroupQueryAttention (grouped_query_call.py), typed: onnx's inference
        cannot type normrt nodes, and the fusions after this pass read the output's shape."""
        new = make_node("GroupQueryAttention", list(node.input[:COS + 2]), list(node.output[:3]),
                        fused_name(ctx, [node], "GroupQueryAttention"), num_heads=heads, kv_num_heads=kv_heads,
                        head_size=head_size, scale=float(np.float32(scale)),
                        do_rotary=int(attrs.get("do_rotary", 0)),
                        rotary_interleaved=int(attrs.get("rotary_interleaved", 0)),
                        local_window_size=int(attrs.get("local_window_size", -1)), window_from_valid=int(not flash))
        ctx.replace_nodes([node], [new])
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        past = ctx.shape(_input(node, PAST_KEY)) if _input(node, PAST_KEY) else None
        q = ctx.shape(node.input[QUERY])
        lead = tuple(q[:2]) if q is not None and len(q) == 3 else (past[0] if past else None, None)
        outputs = [(node.output[0], lead + (heads * head_size,))] + \
            [(o, (lead[0], kv_heads, None, head_size)) for o in node.output[1:3] if o]
        for name, shape in outputs:
            if name and ctx.elem_type(name) == 0:
                ctx.types[name] = ValueType(elem, shape)
        ctx.report.fused.append({
            "pass": self.name, "op": "GroupQueryAttention", "pattern": "GroupQueryAttention",
            "nodes": [node.name], "normrt_op": "GroupQueryAttention", "normrt_node": new.name,
            "kernel": NORM_OPS["GroupQueryAttention"].kernel, "activation": None, "residual": False,
        })
        ctx.mark_types_stale()
