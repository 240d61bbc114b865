"""onnxruntime's Attention and MultiHeadAttention (com.microsoft) -> the standard ops they compute.

onnxruntime's transformer optimizer (and Optimum's ORTOptimizer) replace a BERT/GPT-2 block's
attention by one of its contrib ops. Neither the standard nor onnx.reference has them; here each
becomes the standard ops of its definition, in the form attention_decomposed recognizes (then
attention_layout takes the head Transposes and Reshapes, causal_mask a constant causal mask),
so it runs on normrt::Attention:

    x ─► Attention(W, b, mask_index, past, attention_bias; num_heads N, ...) ─► y [, present]

    ==>  x ─► MatMul(Wq) ─► Add(bq) ─► Reshape(0,0,N,Hq) ─► Transpose(0,2,1,3) ──────────────────► Q
         x ─► MatMul(Wk) ─► Add(bk) ─► Reshape(0,0,N,Hq) ─► Transpose(0,2,1,3) ─► [Concat(past[0])] ─► K
         x ─► MatMul(Wv) ─► Add(bv) ─► Reshape(0,0,N,Hv) ─► Transpose(0,2,1,3) ─► [Concat(past[1])] ─► V
         [present = Concat(Unsqueeze(K), Unsqueeze(V))]

         Q, Transpose(K, 0,1,3,2) ─► MatMul ─► Mul(scale) ─► Add(bias) ─► Softmax(-1) ─► [Where(IsNaN(P), 0, P)]
             ─► MatMul(·, V) ─► Transpose(0,2,1,3) ─► Reshape(0,0,-1) ─► y

    query, key, value ─► MultiHeadAttention(bias, key_padding_mask, attention_bias, past_key,
                                            past_value; num_heads N, ...) ─► y [, present_key, present_value]
    ==>  the same, the projections' MatMuls left out: query/key/value (B, S, N*H) [+ bias slices]
         are split into heads; key and value already (B, N, L, H) are taken as they are
         (onnxruntime adds no bias to them then); present_key / present_value are K and V.

W (Din, Dq + Dq + Dv) is cut into its three constants (qkv_hidden_sizes, else three equal parts);
SiblingMatMuls merges the three products again later, over one packed weight. The scale is
the `scale` attribute, else 1/sqrt(Hq): a constant when Hq is known at load, else computed from
Q's shape (constant folding folds it once inference knows the shape).

The bias added to the scaled scores is what onnxruntime's CPU kernel adds (learned from its
attention_cpu_base.h and checked against it, onnxruntime 1.32):
  - the mask -> mask_filter_value (default -10000) where a key is masked, 0 elsewhere:
    1-D (B): key lengths, key j kept when j < len[b]; 1-D (2B, Attention only:
    MultiHeadAttention rejects it): ends then starts, kept when start[b] <= j < end[b] (the
    two told apart at run time: the starts are read past the first B values, zeros when there
    are none); 2-D (B, T) and 3-D (B, S, T) raw
    masks, kept where the value is > 0 (not != 0: onnxruntime masks negative values);
  - unidirectional: key j > i + (T - S) -> the float type's lowest value, replacing the mask's
    value there (onnxruntime assigns it; lowest + filter rounds to lowest anyway);
  - attention_bias added to that (onnxruntime's order: attention_bias + mask).
A row whose keys are all masked by a finite mask_filter_value is softmax(scores + filter), the
scores' own softmax up to the float32 rounding of scores - 10000, as onnxruntime computes it.

Where(IsNaN(P), 0, P) is written only when the bias is finite (there it changes nothing): a row
of all -inf gives NaN in onnxruntime. A mask_filter_value of -inf, or an attention_bias that is
not a finite constant, leaves it out, and attention_decomposed's fused node then gives such rows
NaN (nan_rows), as onnxruntime does.

Refused (the node stays, and loading fails with ModelError naming it): do_rotary,
past_present_share_buffer, past_sequence_length / cache_indirection inputs, the qk output read;
a 4-D mask (B, 1, M, M) and the 3B+2 form when its length tells (onnxruntime's CPU kernel
implements neither); a mask of unknown rank; packed QKV (query (B, S, N, 3, H)) and packed KV
(key (B, L, N, 2, H)), which the CPU kernel does not implement either; a key of unknown rank;
MultiHeadAttention unidirectional with a key length not known equal to the query's (the CPU
kernel's causal mask is then neither top- nor bottom-right aligned); past with key/value
already per head; Attention with both past and attention_bias (onnxruntime rejects it);
non-constant weights or bias of Attention, sizes that do not divide into num_heads, Q and K
widths that differ; element types other than float32 and float16 (the float type is taken from
the weight or any typed input: inference stops at contrib ops, so the inputs may be untyped).
"""
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto, helper

from .._graph import canonical_domain, np_dtype
from . import GraphPass

MS = "com.microsoft"
OPS = ("Attention", "MultiHeadAttention")
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)
DEFAULT_FILTER = -10000.0
# ops whose output has the rank of their first input: walked back to learn the rank of a value
# inference has not typed (the contrib norms before an attention stop it)
RANK_KEEPING = {"Add", "Sub", "Mul", "Div", "Cast", "Relu", "Gelu", "BiasGelu", "FastGelu", "Identity",
                "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                "SkipSimplifiedLayerNormalization", "Dropout"}


@dataclass
class Match:
    node: object
    plan: dict = field(default_factory=dict)


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _input(node, i):
    return node.input[i] if len(node.input) > i and node.input[i] else None


def _output(node, i):
    return node.output[i] if len(node.output) > i and node.output[i] else None


def _same_dim(a, b):
    return a is not None and a == b


def _rank(ctx, name, depth=8):
    """The rank of `name`: its type's, else that of the producer's first input through ops that
    keep it (a MatMul by a 2-D weight too); None when unknown."""
    shape = ctx.shape(name)
    if shape is not None:
        return len(shape)
    node = ctx.producer().get(name)
    if node is None or depth == 0:
        return None
    domain = canonical_domain(node.domain)
    if node.op_type in RANK_KEEPING and domain in ("", MS) and node.input:
        return _rank(ctx, node.input[0], depth - 1)
    if node.op_type == "MatMul" and domain == "" and len(node.input) == 2:
        a, b = _rank(ctx, node.input[0], depth - 1), _rank(ctx, node.input[1], depth - 1)
        return max(a, b) if a is not None and b is not None and min(a, b) >= 2 else None
    if node.op_type in OPS and domain == MS:
        return 3
    return None


class OnnxruntimeAttention(GraphPass):
    name = "onnxruntime_attention"

    def matches(self, ctx):
        return [Match(n) for n in ctx.nodes if canonical_domain(n.domain) == MS and n.op_type in OPS]

    def describe(self, m):
        return m.node.op_type, [m.node.name]

    # -- check -----------------------------------------------------------------
    def _dtype(self, ctx, node):
        """The float type: the first typed input's (a constant weight has one even when
        inference stopped before the node); 0 when none is typed."""
        for name in node.input:
            if name and ctx.elem_type(name):
                t = ctx.elem_type(name)
                if t != TensorProto.INT32:
                    return t
        return 0

    def check(self, ctx, m):
        node = m.node
        if not ctx.contains(node):
            return "node already rewritten"
        attrs = _attrs(node)
        heads = int(attrs.get("num_heads", 0))
        if heads <= 0:
            return "num_heads missing or not positive"
        elem = self._dtype(ctx, node)
        if elem not in FLOAT_TYPES:
            return (f"element type {TensorProto.DataType.Name(elem)} (float32 and float16 handled)" if elem
                    else f"no input of a known float type (inputs {list(node.input)})")
        filter_value = float(attrs.get("mask_filter_value", DEFAULT_FILTER))
        if np.isnan(filter_value):
            return "mask_filter_value is NaN"
        plan = {"heads": heads, "dtype": np_dtype(elem), "filter": filter_value,
                "unidirectional": int(attrs.get("unidirectional", 0)) != 0,
                "scale": float(attrs.get("scale", 0.0)) or None}
        if node.op_type == "Attention":
            reason = self._check_attention(ctx, node, attrs, plan)
        else:
            reason = self._check_mha(ctx, node, plan)
        if reason:
            return reason
        mask = plan.get("mask")
        if mask is not None:
            rank = _rank(ctx, mask)
            if rank is None:
                return f"rank of the mask {mask!r} unknown"
            if rank == 4:
                return "a 4-D mask (B, 1, max_seq, max_seq): onnxruntime's CPU kernel does not implement it"
            if rank not in (1, 2, 3):
                return f"a mask of rank {rank}"
            if ctx.elem_type(mask) not in (0, TensorProto.INT32):
                return "a mask not of int32"
            if rank == 1:
                length, batch = (ctx.shape(mask) or (None,))[0], plan["batch"]
                if isinstance(length, int) and isinstance(batch, int) and length not in (batch, 2 * batch):
                    return f"a 1-D mask of {length} values for batch {batch} (the 3B+2 form is not implemented)"
            plan["mask_rank"] = rank
        bias = plan.get("attention_bias")
        finite = np.isfinite(filter_value)
        if bias is not None:
            const = ctx.constants.get(bias)
            finite = finite and const is not None and bool(np.isfinite(const).all())
        plan["finite"] = finite
        m.plan = plan
        return None

    def _check_attention(self, ctx, node, attrs, plan):
        if int(attrs.get("do_rotary", 0)):
            return "do_rotary (rotary embedding inside the op) not implemented"
        if int(attrs.get("past_present_share_buffer", 0)):
            return "past_present_share_buffer (a preallocated kv cache) not implemented"
        if _input(node, 6):
            return "a past_sequence_length input (shared past/present buffer) not implemented"
        x, w, b = _input(node, 0), _input(node, 1), _input(node, 2)
        if x is None or w is None:
            return "input or weights missing"
        weight = ctx.constants.get(w)
        if weight is None or weight.ndim != 2:
            return "the weights are not a 2-D constant"
        bias = ctx.constants.get(b) if b else None
        if b and (bias is None or bias.ndim != 1 or bias.shape[0] != weight.shape[1]):
            return "the bias is not a constant of the weights' width"
        sizes = list(attrs.get("qkv_hidden_sizes", []))
        if sizes:
            if len(sizes) != 3 or sizes[0] != sizes[1] or sum(sizes) != weight.shape[1] or min(sizes) <= 0:
                return f"qkv_hidden_sizes {sizes} do not fit the weights {list(weight.shape)}"
        else:
            if weight.shape[1] % 3:
                return f"weights of width {weight.shape[1]}, not three equal parts"
            sizes = [weight.shape[1] // 3] * 3
        heads = plan["heads"]
        if sizes[0] % heads or sizes[2] % heads:
            return f"hidden sizes {sizes} not divisible by num_heads {heads}"
        past, bias_in = _input(node, 4), _input(node, 5)
        if past and bias_in:
            return "both past and attention_bias (onnxruntime rejects the pair)"
        if past and sizes[0] != sizes[2]:
            return "past with V's width other than Q's"
        x_shape = ctx.shape(x)
        plan.update(kind="Attention", x=x, weight=weight, bias=bias, sizes=sizes,
                    head_q=sizes[0] // heads, head_v=sizes[2] // heads, mask=_input(node, 3), past=past,
                    attention_bias=bias_in, present=_output(node, 1),
                    batch=x_shape[0] if x_shape else None, same_length=True)
        return None

    def _check_mha(self, ctx, node, plan):
        for i, what in ((8, "past_sequence_length"), (9, "cache_indirection")):
            if _input(node, i):
                return f"a {what} input (shared past/present buffer, beam search) not implemented"
        if _output(node, 3) and (ctx.consumers().get(node.output[3]) or node.output[3] in ctx.graph_outputs):
            return "the qk output is read"
        query, key, value = _input(node, 0), _input(node, 1), _input(node, 2)
        if key is None:
            return "packed QKV (no key): onnxruntime's CPU kernel does not implement it"
        key_rank = _rank(ctx, key)
        if key_rank is None:
            return f"rank of the key {key!r} unknown (3-D, packed 5-D or per-head 4-D)"
        if key_rank == 5:
            return "packed KV (key (B, L, N, 2, H)): onnxruntime's CPU kernel does not implement it"
        if key_rank not in (3, 4) or value is None:
            return f"a key of rank {key_rank}" if value is not None else "no value"
        per_head = key_rank == 4
        past_key, past_value = _input(node, 6), _input(node, 7)
        if bool(past_key) != bool(past_value):
            return "only one of past_key / past_value"
        if per_head and past_key:
            return "past_key/past_value with key/value already per head (B, N, L, H)"
        bias = _input(node, 3)
        if bias is not None and _rank(ctx, bias) not in (1, None):
            return "a bias that is not 1-D"
        q_shape, k_shape = ctx.shape(query), ctx.shape(key)
        q_len = q_shape[1] if q_shape and len(q_shape) == 3 else None
        k_len = (k_shape[2] if per_head else k_shape[1]) if k_shape and len(k_shape) == key_rank else None
        same_length = _same_dim(q_len, k_len)
        if plan["unidirectional"] and not same_length:
            return ("unidirectional with a key length not known equal to the query's (onnxruntime's CPU "
                    "kernel then masks neither top- nor bottom-right aligned)")
        plan.update(kind="MultiHeadAttention", query=query, key=key, value=value, per_head=per_head,
                    qkv_bias=bias, mask=_input(node, 4), attention_bias=_input(node, 5), past_key=past_key,
                    past_value=past_value, present_key=_output(node, 1), present_value=_output(node, 2),
                    batch=q_shape[0] if q_shape else None, same_length=same_length)
        return None

    # -- rewrite ---------------------------------------------------------------
    def rewrite(self, ctx, m):
        e = _Emitter(ctx, m.node, m.plan)
        p = m.plan
        heads = p["heads"]
        if p["kind"] == "Attention":
            sizes, weight, bias = p["sizes"], p["weight"], p["bias"]
            cuts = np.cumsum([0] + sizes)
            flat = []
            for i, part in enumerate("qkv"):
                w = e.const(f"W{part}", weight[:, cuts[i]:cuts[i + 1]])
                y = e.op("MatMul", [p["x"], w], part)
                if bias is not None:
                    y = e.op("Add", [y, e.const(f"b{part}", bias[cuts[i]:cuts[i + 1]])], part + "_biased")
                flat.append(y)
            q = e.heads(flat[0], p["head_q"])
            k = e.heads(flat[1], p["head_q"])
            v = e.heads(flat[2], p["head_v"])
            if p["past"]:
                k = e.op("Concat", [e.squeeze(e.op("Slice", [p["past"], e.ints([0]), e.ints([1]), e.ints([0])],
                                                   "past_k"), [0]), k], "k_total", axis=2)
                v = e.op("Concat", [e.squeeze(e.op("Slice", [p["past"], e.ints([1]), e.ints([2]), e.ints([0])],
                                                   "past_v"), [0]), v], "v_total", axis=2)
            if p["present"]:
                e.op("Concat", [e.unsqueeze(k, [0]), e.unsqueeze(v, [0])], "present", axis=0, out=p["present"])
            head_q = p["head_q"]
            batch = e.dim(p["x"], 0)
            s_len = e.dim(p["x"], 1)
            t_len = e.add(s_len, e.dim(p["past"], 3)) if p["past"] else s_len
        else:
            bias = p["qkv_bias"]
            # the bias's Q / K / V parts: Dq, Dq, Dv (Dq the query's width)
            width = e.dim(p["query"], -1)
            parts = [p["query"], p["key"], p["value"]]
            if bias is not None:
                const = ctx.constants.get(bias)
                if const is not None and isinstance(width, int):
                    cuts = [0, width, 2 * width, const.shape[0]]
                    slices = [e.const(f"b{part}", const[cuts[i]:cuts[i + 1]]) for i, part in enumerate("qkv")]
                else:
                    w = e.as_tensor(width)
                    w2 = e.op("Add", [w, w], "2dq")
                    big = e.ints([np.iinfo(np.int64).max])
                    zero = e.ints([0])
                    slices = [e.op("Slice", [bias, a, b], f"b{part}")
                              for a, b, part in ((zero, w, "q"), (w, w2, "k"), (w2, big, "v"))]
                count = 1 if p["per_head"] else 3      # onnxruntime adds no bias to per-head key/value
                for i in range(count):
                    parts[i] = e.op("Add", [parts[i], slices[i]], "qkv"[i] + "_biased")
            q = e.heads(parts[0], -1)
            if p["per_head"]:
                k, v = parts[1], parts[2]
            else:
                k, v = e.heads(parts[1], -1), e.heads(parts[2], -1)
            if p["past_key"]:
                k = e.op("Concat", [p["past_key"], k], "k_total", axis=2)
                v = e.op("Concat", [p["past_value"], v], "v_total", axis=2)
            if p["present_key"]:
                e.op("Identity", [k], "present_key", out=p["present_key"])
            if p["present_value"]:
                e.op("Identity", [v], "present_value", out=p["present_value"])
            head_q = width // heads if isinstance(width, int) else None
            batch = e.dim(p["query"], 0)
            s_len = e.dim(p["query"], 1)
            t_len = e.dim(p["key"], 2 if p["per_head"] else 1)
            if p["past_key"]:
                t_len = e.add(t_len, e.dim(p["past_key"], 2))
        kt = e.op("Transpose", [k], "kt", perm=[0, 1, 3, 2])
        scores = e.op("MatMul", [q, kt], "scores")
        if p["scale"] is not None:
            scale = e.const("scale", np.asarray(p["scale"], p["dtype"]))
        elif head_q is not None:
            scale = e.const("scale", np.asarray(1.0 / np.sqrt(np.float32(head_q)), np.float32).astype(p["dtype"]))
        else:
            # 1/sqrt(Hq), Hq = the query's width / N: folded to a constant once inference knows it
            hq = e.op("Div", [e.op("Cast", [width], "width", to=TensorProto.FLOAT),
                              e.const("heads", np.float32(heads))], "head_size")
            scale = e.op("Reciprocal", [e.op("Sqrt", [hq], "sqrt_head_size")], "scale_f32")
            if p["dtype"] != np.float32:
                scale = e.op("Cast", [scale], "scale", to=helper.np_dtype_to_tensor_dtype(p["dtype"]))
        scaled = e.op("Mul", [scores, scale], "scaled")
        bias_total = self._bias(e, p, batch, s_len, t_len)
        if bias_total is not None:
            scaled = e.op("Add", [scaled, bias_total], "masked")
        probs = e.op("Softmax", [scaled], "probs", axis=-1)
        if bias_total is not None and p["finite"]:
            # a finite bias leaves no row all -inf: the Where changes nothing but lets
            # attention_decomposed take a mask fed at run time
            nan = e.op("IsNaN", [probs], "probs_nan")
            probs = e.op("Where", [nan, e.const("zero", np.zeros((), p["dtype"])), probs], "probs_kept")
        out = e.op("MatMul", [probs, v], "context")
        out = e.op("Transpose", [out], "context_bshd", perm=[0, 2, 1, 3])
        e.op("Reshape", [out, e.ints([0, 0, -1])], "merged", out=m.node.output[0])
        ctx.replace_nodes([m.node], e.nodes)
        ctx.mark_types_stale()      # shape inference stopped at the contrib op: it goes on now

    def _bias(self, e, p, batch, s_len, t_len):
        """The additive bias of the scores (see the module docstring), or None. batch, s_len,
        t_len: the batch, query and total key lengths (ints, or tensors read from the inputs'
        shapes: not from Q or K, whose Transposes attention_layout absorbs only when the
        attention alone reads them)."""
        dtype = p["dtype"]
        pad = None
        if p.get("mask") is not None:
            mask, rank = p["mask"], p["mask_rank"]
            if rank == 1:
                j = e.positions(t_len)                                  # (T,) int64
                batch = e.as_tensor(batch)
                lengths = e.op("Cast", [mask], "mask_i64", to=TensorProto.INT64)
                # Reshape to (B,): the slices' length as inference sees it (the batch's name), which
                # attention_decomposed's broadcasting check compares with the scores' batch
                ends = e.op("Reshape", [e.op("Slice", [lengths, e.ints([0]), batch], "ends"), batch], "ends_b")
                row = e.unsqueeze(j, [0])
                kept = e.op("Less", [row, e.unsqueeze(ends, [1])], "before_end")
                if p["kind"] == "Attention":     # MultiHeadAttention rejects the 2B form
                    # the starts follow the ends in the 2B form; zeros padded on when there are none
                    padded = e.op("Concat", [lengths, e.op("Mul", [lengths, e.ints([0])], "zeros")], "padded", axis=0)
                    starts = e.op("Slice", [padded, batch, e.op("Add", [batch, batch], "2b")], "starts")
                    starts = e.op("Reshape", [starts, batch], "starts_b")
                    kept = e.op("And", [kept, e.op("Not", [e.op("Less", [row, e.unsqueeze(starts, [1])], "before_start")],
                                                   "after_start")], "kept")
                kept = e.unsqueeze(kept, [1, 2])                        # (B, 1, 1, T)
            else:
                kept = e.op("Greater", [mask, e.const("mask_zero", np.zeros((), np.int32))], "kept")
                kept = e.unsqueeze(kept, [1, 2] if rank == 2 else [1])   # (B, 1, 1|S, T)
            pad = e.op("Where", [kept, e.const("keep", np.zeros((), dtype)),
                                 e.const("filter", np.asarray(p["filter"], dtype))], "mask_bias")
        bias = pad
        if p["unidirectional"]:
            lowest = np.finfo(dtype).min
            if isinstance(s_len, int) and isinstance(t_len, int):
                above = np.arange(t_len)[None, :] > np.arange(s_len)[:, None] + (t_len - s_len)
                if pad is None:
                    bias = e.const("causal", np.where(above, lowest, 0).astype(dtype))
                else:
                    bias = e.op("Where", [e.const("above", above), e.const("lowest", np.asarray(lowest, dtype)), pad],
                                "causal_bias")
            else:
                i, j = e.positions(s_len), e.positions(t_len)
                offset = e.op("Sub", [e.as_tensor(t_len), e.as_tensor(s_len)], "past_length")
                above = e.op("Greater", [e.unsqueeze(j, [0]),
                                         e.op("Add", [e.unsqueeze(i, [1]), offset], "diagonal")], "above")
                base = pad if pad is not None else e.const("keep", np.zeros((), dtype))
                bias = e.op("Where", [above, e.const("lowest", np.asarray(lowest, dtype)), base], "causal_bias")
        if p.get("attention_bias") is not None:
            extra = p["attention_bias"]
            bias = extra if bias is None else e.op("Add", [extra, bias], "bias")
        return bias


class _Emitter:
    """The nodes replacing one contrib node, named after it."""

    def __init__(self, ctx, node, plan):
        self.ctx, self.node, self.plan = ctx, node, plan
        self.base = node.name or node.op_type
        self.nodes = []
        self.unsqueeze_input = ctx.opsets.get("", 13) >= 13

    def op(self, op_type, inputs, label, out=None, **attrs):
        out = out or self.ctx.new_name(f"{self.base}/{label}")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.ctx.new_name(f"{self.base}/{label}"),
                                           **attrs))
        return out

    def const(self, label, value):
        return self.ctx.add_constant(f"{self.base}/{label}", np.asarray(value))

    def ints(self, values):
        return self.const("ints", np.asarray(values, np.int64))

    def unsqueeze(self, x, axes):
        if self.unsqueeze_input:
            return self.op("Unsqueeze", [x, self.ints(axes)], "unsqueeze")
        return self.op("Unsqueeze", [x], "unsqueeze", axes=axes)

    def squeeze(self, x, axes):
        if self.unsqueeze_input:
            return self.op("Squeeze", [x, self.ints(axes)], "squeeze")
        return self.op("Squeeze", [x], "squeeze", axes=axes)

    def heads(self, x, head_size):
        """(B, S, N*H) -> (B, N, S, H)."""
        split = self.op("Reshape", [x, self.ints([0, 0, self.plan["heads"], head_size])], "split_heads")
        return self.op("Transpose", [split], "heads", perm=[0, 2, 1, 3])

    def dim(self, x, axis):
        """Dim `axis` of `x`: an int when known at load, else a (1,) int64 tensor read from x's
        shape at run time."""
        shape = self.ctx.shape(x)
        if shape is not None and len(shape) > (axis if axis >= 0 else -axis - 1) and isinstance(shape[axis], int):
            return shape[axis]
        return self.op("Gather", [self.op("Shape", [x], "shape"), self.ints([axis])], "dim", axis=0)

    def as_tensor(self, d):
        return self.ints([d]) if isinstance(d, int) else d

    def add(self, a, b):
        if isinstance(a, int) and isinstance(b, int):
            return a + b
        return self.op("Add", [self.as_tensor(a), self.as_tensor(b)], "length")

    def positions(self, d):
        """0, 1, ..., d - 1 (int64). Written as ConstantOfShape + CumSum rather than Range:
        shape inference's data propagation gives it the dim's symbolic name, which the mask's
        broadcasting check downstream needs."""
        if isinstance(d, int):
            return self.ints(np.arange(d))
        ones = self.op("ConstantOfShape", [d], "ones",
                       value=helper.make_tensor("one", TensorProto.INT64, [1], [1]))
        return self.op("CumSum", [ones, self.ints(0)], "positions", exclusive=1)
