"""onnxruntime's transformer contrib ops (com.microsoft) -> the standard ops of their definitions.

Models saved by onnxruntime's transformer optimizer, Optimum's ORTOptimizer or onnxruntime-genai's
builder carry these; neither the standard nor onnx.reference has them. Each becomes the standard
ops it computes, its LayerNorm normrt's kernel, its products plain MatMuls the GEMM paths take:

    input_ids, segment_ids, word/position/segment embeddings, gamma, beta, mask, position_ids
      ──► EmbedLayerNormalization(epsilon) ──► output, mask_index, embedding_sum
    ==>  Gather(word, ids) + Gather(position, position_ids or Range(S)) [+ Gather(segment, segs)]
           ──► embedding_sum ──► normrt::LayerNorm(gamma, beta, epsilon) ──► output
         mask ──► Equal(·, 1) ──► Cast(int32) ──► ReduceSum(axis 1) ──► mask_index
         (onnxruntime counts the 1s of each row; without a mask it writes zeros: ConstantOfShape)

    A, B ──► FusedMatMul(alpha, transA, transB, transBatchA, transBatchB) ──► Y
    ==>  [Transpose(A)] ──► MatMul ◄── [Transpose(B)] ──► Mul(alpha) ──► Y
         (transBatch: the stored (d0, d1, ..., M, K) is read as (d1, ..., d0, M, K); a constant
         B takes alpha itself, so constant folding leaves one constant weight)

    x, position_ids, cos_cache, sin_cache ──► RotaryEmbedding(interleaved, num_heads,
                                                              rotary_embedding_dim) ──► y
    ==>  x as (B, S, N, H) [or (B, N, S, H)] ──► Slice [0, R) │ Slice [R, H) (partial rotary)
         cos, sin = Gather(cache, position_ids or start + Range(S)), unsqueezed at the heads axis
         halves a, b (first/second half, or even/odd with interleaved, via (..., R/2, 2)):
         (a cos - b sin, b cos + a sin) ──► Concat [──► Concat with the pass-through part]
         ──► Reshape back to x's shape

    data, bias ──► BiasSoftmax(axis = last) ──► Y   ==>  Softmax(data + bias, axis -1)

onnx's inference stops at the contrib ops, and the inputs of these often come from them (the
genai builder's SkipSimplifiedLayerNormalization -> MatMul -> RotaryEmbedding): the shape-
preserving ones (the skip / simplified norms, the GELUs) get their input's type first, so
inference reaches the ranks the rewrites need; the pass runs until nothing changes.

Refused (the node stays, and loading fails naming it): RotaryEmbedding with is_packed_batching,
an input rank other than 3 / 4 or unknown, a cache width that is not rotary_embedding_dim / 2
(onnxruntime indexes the cache by that width), position_ids of unknown rank; FusedMatMul with a
transpose of an input of unknown rank or rank < 2, transBatch without equal ranks >= 3 (onnxruntime
refuses it); EmbedLayerNormalization with segment ids without segment embeddings or the reverse;
BiasSoftmax over more than the last axis or with a bias broadcasting otherwise than numpy does;
any node whose float type is unknown; a model importing the standard domain below opset 11.
The scale attribute of RotaryEmbedding only rescales a cache onnxruntime would rebuild (which it
does not implement): it changes nothing, there as here.
"""
import numpy as np
from onnx import TensorProto, helper

from .._graph import canonical_domain, np_dtype
from ..domain import NORM_OPS, make_node
from . import GraphPass, ValueType
from ._queries import KERNEL_DTYPES, present

MS = "com.microsoft"
MIN_OPSET = 11          # Range, Slice's inputs, negative axes
# contrib ops whose output 0 has input 0's type and shape (typed before this pass's checks)
SHAPE_PRESERVING = {"SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
                    "Gelu", "BiasGelu", "FastGelu", "QuickGelu", "BiasAdd", "RotaryEmbedding"}
END = np.iinfo(np.int64).max


def attrs_of(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def float_dtype(ctx, names):
    """The numpy float type of the first of `names` whose type is known (None if none, or not a float)."""
    for name in names:
        t = ctx.elem_type(name) if name else 0
        if t:
            return np_dtype(t) if t in KERNEL_DTYPES else None
    return None


def rank(ctx, name):
    shape = ctx.shape(name) if name else None
    return None if shape is None else len(shape)


def input_at(node, k):
    return node.input[k] if len(node.input) > k else ""


def output_at(node, k):
    return node.output[k] if len(node.output) > k else ""


class Emitter:
    """Standard nodes replacing one contrib node, named after it, in the model's opset."""

    def __init__(self, ctx, node, dtype):
        self.ctx, self.node, self.dtype, self.nodes = ctx, node, dtype, []
        self.opset = ctx.opsets.get("", 0)

    def __call__(self, op, inputs, out=None, **attrs):
        out = out or self.ctx.new_name(f"{self.node.name}_{op.lower()}")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.ctx.new_name(f"{self.node.name}_{op}"),
                                           **attrs))
        return out

    def const(self, value, dtype=None):
        return self.ctx.add_constant(f"{self.node.name}_c", np.asarray(value, dtype or self.dtype))

    def ints(self, values):
        return self.const(values, np.int64)

    def unsqueeze(self, x, axes):
        if self.opset >= 13:
            return self("Unsqueeze", [x, self.ints(axes)])
        return self("Unsqueeze", [x], axes=axes)

    def reduce_sum(self, x, axes, out=None):
        if self.opset >= 13:
            return self("ReduceSum", [x, self.ints(axes)], out, keepdims=0)
        return self("ReduceSum", [x], out, axes=axes, keepdims=0)

    def slice_last(self, x, start, end):
        return self("Slice", [x, self.ints([start]), self.ints([end]), self.ints([-1])])

    def erf_gelu(self, x, out=None):
        """0.5 x (1 + erf(x / sqrt 2)): the spelling elementwise_chains and the epilogues recognize."""
        e = self("Erf", [self("Div", [x, self.const(np.sqrt(2.0))])])
        return self("Mul", [self("Mul", [x, self.const(0.5)]), self("Add", [e, self.const(1.0)])], out)

    def norm(self, op_type, inputs, outputs, **attrs):
        self.nodes.append(make_node(op_type, inputs, outputs, self.ctx.new_name(f"{self.node.name}_{op_type}"),
                                    **attrs))
        return self.nodes[-1]


class ContribOps(GraphPass):
    """Rewrites of com.microsoft nodes, one `_check_<op>` / `_rewrite_<op>` pair per op."""

    OPS = ()

    def run(self, ctx):
        self._final = False     # refusals are reported in the last round only
        self._type_through(ctx)
        total = 0
        while True:
            count = super().run(ctx)
            total += count
            if count == 0:
                break
            ctx.commit()
            ctx.refresh_types()     # a rewritten node's outputs type the next one's inputs
            self._type_through(ctx)
        self._final = True
        super().run(ctx)
        return total

    def _type_through(self, ctx):
        """Type the outputs of the shape-preserving contrib ops from their inputs, until inference
        learns nothing more (a chain of them: each typed one lets inference reach the next)."""
        while True:
            todo = [n for n in ctx.nodes if canonical_domain(n.domain) == MS and n.op_type in SHAPE_PRESERVING
                    and n.output and n.output[0] and not ctx.elem_type(n.output[0]) and ctx.elem_type(n.input[0])]
            if not todo:
                return
            for n in todo:
                ctx.types[n.output[0]] = ValueType(ctx.elem_type(n.input[0]), ctx.shape(n.input[0]))
            ctx.refresh_types()

    def report_refusal(self, ctx, match, reason):
        if self._final:
            super().report_refusal(ctx, match, reason)

    def matches(self, ctx):
        return [n for n in ctx.nodes if canonical_domain(n.domain) == MS and n.op_type in self.OPS]

    def describe(self, node):
        return node.op_type, [node.name]

    def check(self, ctx, node):
        if not present(ctx, [node]):
            return "node already rewritten"
        if ctx.opsets.get("", 0) < MIN_OPSET:
            return f"the model imports the standard domain at opset {ctx.opsets.get('', 0)} < {MIN_OPSET}"
        return getattr(self, "_check_" + node.op_type)(ctx, node, attrs_of(node))

    def rewrite(self, ctx, node):
        emit = Emitter(ctx, node, self._dtype(ctx, node))
        getattr(self, "_rewrite_" + node.op_type)(ctx, node, attrs_of(node), emit)
        ctx.replace_nodes([node], emit.nodes)
        ctx.mark_types_stale()      # inference stopped at the contrib op: it can go on now

    def _dtype(self, ctx, node):
        return float_dtype(ctx, node.input)

    def _report_norm(self, ctx, node, norm):
        ctx.report.fused.append({
            "pass": self.name, "op": node.op_type, "pattern": node.op_type, "nodes": [node.name],
            "normrt_op": norm.op_type, "normrt_node": norm.name, "kernel": NORM_OPS[norm.op_type].kernel,
            "activation": None, "residual": False})


class OnnxruntimeTransformerOps(ContribOps):
    name = "onnxruntime_transformer_ops"
    OPS = ("EmbedLayerNormalization", "FusedMatMul", "RotaryEmbedding", "BiasSoftmax")

    # -- EmbedLayerNormalization ------------------------------------------------
    def _dtype(self, ctx, node):
        if node.op_type == "EmbedLayerNormalization":     # the ids come first: the embeddings' type
            return float_dtype(ctx, node.input[2:7])
        return super()._dtype(ctx, node)

    def _check_EmbedLayerNormalization(self, ctx, node, attrs):
        if self._dtype(ctx, node) is None:
            return f"no embedding of a known float type (inputs {list(node.input)})"
        if bool(input_at(node, 1)) != bool(input_at(node, 4)):
            return "segment_ids without segment_embedding or the reverse"
        if rank(ctx, node.input[2]) not in (None, 2):
            return f"word_embedding of rank {rank(ctx, node.input[2])}, not 2"
        return None

    def _rewrite_EmbedLayerNormalization(self, ctx, node, attrs, emit):
        ids, segments, word, position, segment, gamma, beta, mask, position_ids = [input_at(node, k) for k in range(9)]
        output, mask_index, embedding_sum = [output_at(node, k) for k in range(3)]
        if not position_ids:    # positions 0 .. S-1, broadcast over the batch
            length = emit("Gather", [emit("Shape", [ids]), emit.ints(1)], axis=0)
            position_ids = emit("Range", [emit.ints(0), length, emit.ints(1)])
        total = emit("Add", [emit("Gather", [word, ids], axis=0), emit("Gather", [position, position_ids], axis=0)],
                     None if segments else embedding_sum or None)
        if segments:
            total = emit("Add", [total, emit("Gather", [segment, segments], axis=0)], embedding_sum or None)
        norm = emit.norm("LayerNorm", [total, gamma, beta], [output], epsilon=float(attrs.get("epsilon", 1e-12)))
        if mask_index:
            if mask:    # onnxruntime counts the mask's 1s (not its non-zeros) per row
                mask_elem = ctx.elem_type(mask) or TensorProto.INT32
                one = emit.const(1, np_dtype(mask_elem))
                ones = emit("Cast", [emit("Equal", [mask, one])], to=TensorProto.INT32)
                emit.reduce_sum(ones, [1], mask_index)
            else:
                batch = emit("Slice", [emit("Shape", [ids]), emit.ints([0]), emit.ints([1])])
                emit("ConstantOfShape", [batch], mask_index,
                     value=helper.make_tensor("zero", TensorProto.INT32, [1], [0]))
        self._report_norm(ctx, node, norm)
        # the LayerNorm's output, which inference cannot type: X's type, (B, S, hidden)
        ids_shape, word_shape = ctx.shape(ids), ctx.shape(word)
        shape = tuple(ids_shape) + (word_shape[1],) if ids_shape is not None and word_shape is not None else None
        ctx.types[output] = ValueType(ctx.elem_type(word), shape)

    # -- FusedMatMul ----------------------------------------------------------
    def _check_FusedMatMul(self, ctx, node, attrs):
        ra, rb = rank(ctx, node.input[0]), rank(ctx, node.input[1])
        if attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
            if ra is None or rb is None or ra != rb or ra < 3:
                return f"transBatch with inputs of ranks {ra}, {rb} (onnxruntime takes equal ranks >= 3)"
        for k, r, flag in ((0, ra, "transA"), (1, rb, "transB")):
            if attrs.get(flag, 0) and (r is None or r < 2):
                return f"{flag} with input {k} of rank {r}"
        if float(attrs.get("alpha", 1.0)) != 1.0 and self._dtype(ctx, node) is None:
            return f"alpha with inputs of unknown float type (inputs {list(node.input)})"
        return None

    def _rewrite_FusedMatMul(self, ctx, node, attrs, emit):
        a, b = node.input[0], node.input[1]
        operands = []
        for x, batch, last in ((a, "transBatchA", "transA"), (b, "transBatchB", "transB")):
            r = rank(ctx, x)
            perm = list(range(r)) if r is not None else []
            if attrs.get(batch, 0):
                perm = perm[1:r - 1] + [0, r - 1]
            if attrs.get(last, 0):
                perm[-2], perm[-1] = perm[-1], perm[-2]
            operands.append(emit("Transpose", [x], perm=perm) if perm != list(range(len(perm))) else x)
        alpha = float(attrs.get("alpha", 1.0))
        y = node.output[0]
        if alpha == 1.0:
            emit("MatMul", operands, y)
        elif ctx.is_constant(b):    # alpha into the weight: constant folding leaves one constant
            emit("MatMul", [operands[0], emit("Mul", [operands[1], emit.const(alpha)])], y)
        else:
            emit("Mul", [emit("MatMul", operands), emit.const(alpha)], y)

    # -- RotaryEmbedding --------------------------------------------------------
    def _check_RotaryEmbedding(self, ctx, node, attrs):
        x, position_ids, cos, sin = node.input[:4]
        if attrs.get("is_packed_batching", 0):
            return "is_packed_batching (ragged batches) is not taken"
        if self._dtype(ctx, node) is None:
            return f"no input of a known float type (inputs {list(node.input)})"
        r = rank(ctx, x)
        if r not in (3, 4):
            return f"input of rank {r}, not 3 (B, S, hidden) or 4 (B, N, S, H)"
        cache = ctx.shape(cos)
        if cache is None or len(cache) != 2 or not isinstance(cache[1], int) or ctx.shape(sin) != cache:
            return (f"cos_cache / sin_cache of shapes {cache}, {ctx.shape(sin)}: not one (max_seq, width) "
                    f"with a static width")
        width, dim, heads = cache[1], int(attrs.get("rotary_embedding_dim", 0)), int(attrs.get("num_heads", 0))
        if dim and (heads <= 0 or dim != 2 * width):
            return (f"rotary_embedding_dim {dim} with num_heads {heads} and a cache of width {width} "
                    f"(onnxruntime needs num_heads and reads the cache as rotary_embedding_dim / 2 wide)")
        last = ctx.shape(x)[-1]
        if not dim and isinstance(last, int):
            if r == 4 and last != 2 * width:
                return f"head size {last} is not twice the cache width {width}"
            if r == 3 and (last % (2 * width) or (heads and last != heads * 2 * width)):
                return f"hidden size {last} is not num_heads ({heads}) x twice the cache width {width}"
        if dim and r == 4 and isinstance(last, int) and last < dim:
            return f"rotary_embedding_dim {dim} > head size {last}"
        pr, pshape = rank(ctx, position_ids), ctx.shape(position_ids)
        if pr is None or pr > 2 or (pr == 1 and pshape[0] not in (1, None)):
            return f"position_ids of shape {pshape}, not (1) or (batch, sequence)"
        return None

    def _rewrite_RotaryEmbedding(self, ctx, node, attrs, emit):
        x, position_ids, cos, sin = node.input[:4]
        r, width = rank(ctx, x), ctx.shape(cos)[1]
        dim, heads = int(attrs.get("rotary_embedding_dim", 0)), int(attrs.get("num_heads", 0))
        rot_dim, half = 2 * width, width
        heads_axis = 2 if r == 3 else 1        # the axis cos and sin broadcast over
        x4 = x
        if r == 3:      # (B, S, N, H): the head size from num_heads with a partial rotary, else the cache
            x4 = emit("Reshape", [x, emit.ints([0, 0, heads, -1] if dim else [0, 0, -1, rot_dim])])
        if rank(ctx, position_ids) == 2:
            positions = position_ids
        else:           # (1,): the first position; the others follow it
            length = emit("Gather", [emit("Shape", [x]), emit.ints(1 if r == 3 else 2)], axis=0)
            start = emit("Reshape", [position_ids, emit.ints([])])
            positions = emit.unsqueeze(emit("Range", [start, emit("Add", [start, length]), emit.ints(1)]), [0])
        cs = [emit.unsqueeze(emit("Gather", [cache, positions], axis=0), [heads_axis]) for cache in (cos, sin)]
        last = ctx.shape(x)[-1]
        if isinstance(last, int) and (last if r == 4 else last // heads if heads else None) == rot_dim:
            dim = 0     # rotary over the whole head: nothing passes through
        rot = emit.slice_last(x4, 0, rot_dim) if dim else x4
        if attrs.get("interleaved", 0):     # pairs (even, odd) as a last axis of 2
            pairs = emit("Reshape", [rot, emit.ints([0, 0, 0, -1, 2])])
            a, b = emit.slice_last(pairs, 0, 1), emit.slice_last(pairs, 1, 2)
            cs = [emit.unsqueeze(c, [-1]) for c in cs]
        else:
            a, b = emit.slice_last(rot, 0, half), emit.slice_last(rot, half, rot_dim)
        c, s = cs
        first = emit("Sub", [emit("Mul", [a, c]), emit("Mul", [b, s])])
        second = emit("Add", [emit("Mul", [b, c]), emit("Mul", [a, s])])
        y = emit("Concat", [first, second], axis=-1)
        if attrs.get("interleaved", 0):
            y = emit("Reshape", [y, emit.ints([0, 0, 0, -1])])
        if dim:         # the head's part past rotary_embedding_dim passes through
            y = emit("Concat", [y, emit.slice_last(x4, rot_dim, END)], axis=-1)
        if r == 3:
            y = emit("Reshape", [y, emit.ints([0, 0, -1])])
        emit.nodes[-1].output[0] = node.output[0]

    # -- BiasSoftmax ------------------------------------------------------------
    def _check_BiasSoftmax(self, ctx, node, attrs):
        data, bias = ctx.shape(node.input[0]), ctx.shape(node.input[1])
        if data is None or bias is None:
            return f"data / bias of unknown rank ({data}, {bias})"
        axis = int(attrs.get("axis", 1))
        if axis % max(len(data), 1) != len(data) - 1:
            return f"softmax over the axes from {axis} of rank {len(data)} (only the last axis is taken)"
        # onnxruntime's fusion took an Add's operands as they were: numpy's broadcast is the meaning
        if len(bias) > len(data) or any(not (b == 1 or (b is not None and b == d))
                                        for b, d in zip(bias[::-1], data[::-1])):
            return f"bias of shape {bias} does not broadcast to data {data} (or a dim is unknown)"
        return None

    def _rewrite_BiasSoftmax(self, ctx, node, attrs, emit):
        emit("Softmax", [emit("Add", node.input[:2])], node.output[0], axis=-1)
