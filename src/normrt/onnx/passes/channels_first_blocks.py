"""A channels-last block between a Transpose pair -> the same block on the channels-first tensor.

ConvNeXt (and the CNNs written like it) permute their NCHW feature map to NHWC for a
LayerNorm and an MLP over the channels, then back:

    x (N,C,H,W) ─► Transpose(0,2,3,1) ─► LayerNorm(last axis) ─► MatMul(W1) ─► Add(b1) ─► GELU
                   ─► MatMul(W2) ─► Add(b2) ─► Mul(gamma) ─► Transpose(0,3,1,2) ─► y (N,C,H,W)
  ==>
    x ─► ChannelNorm ─► Conv1x1(W1ᵀ, b1) ─► GELU ─► Conv1x1(W2ᵀ, b2) ─► Mul(gamma as (C,1,1)) ─► y

Every op between the two Transposes acts along the channel axis or elementwise, so it has
a channels-first twin: a LayerNorm / RMSNorm over the last axis is a ChannelNorm
("layer" / "rms"); a MatMul by a constant (C, K) is a 1x1 Conv by its transpose; an
elementwise op with a constant that varies only along the channels takes the constant as
(C, 1, 1); elementwise ops between values of the region keep their form. The two
Transposes (two copies of the map) go, and the passes after this one see Convs: the
layer-scale Mul folds into the second Conv (fold_channel_affine runs again next), the GELU
and the residual Add after the block become its epilogues (conv_epilogue).

The region is found from the first Transpose: every reader of a value in it must be a
supported op, each of whose other inputs is a constant or a value of the region of the same
shape, until the one inverse Transpose that ends it. Results are within rounding of the
channels-last form (the products sum the same terms in another order).

Refused (left as it is, not reported): a region value read outside the region or a graph
output; an op with no twin (a Reshape, a reduction, a MatMul by a runtime value, a
constant varying along another axis); a second exit; shapes not rank 4 with known channels
(the batch and the map may be symbolic); a perm other than
(0, 2, 3, 1) ... (0, 3, 1, 2) on rank 4; values not float32, float16 or bfloat16 (or of
unknown type).
"""
import numpy as np
from onnx import TensorProto, helper

from ..domain import NORM_OPS, make_node
from . import GraphPass, ValueType
from ._queries import is_normrt, is_op, node_attrs, take_fused_entry

TO_LAST, TO_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]
BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")
UNARY = ("Relu", "Sigmoid", "Tanh", "Erf", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Gelu", "Softplus",
         "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Celu", "Selu", "Identity")
NORMS = {"LayerNorm": "layer", "RMSNorm": "rms"}
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def _perm(node):
    attrs, reason = node_attrs(node)
    return None if reason else list(attrs.get("perm") or [])


def _channel_constant(value, channels):
    """A constant varying along the last axis only (or nowhere) as its channels-first form
    (C, 1, 1) (a scalar stays a scalar), or None."""
    v = np.asarray(value)
    if v.ndim > 4 or any(d != 1 for d in v.shape[:-1]):
        return None
    if v.size == 1:
        return v.reshape(())
    if v.shape[-1] != channels:
        return None
    return np.ascontiguousarray(v.reshape(channels, 1, 1))


def _rank4_known_channels(shape, axis=3):
    """A rank-4 shape whose channels (axis 3 channels-last, 1 channels-first) are known: only
    they size the per-channel constants and the 1x1 weights; the batch and the map may be
    symbolic (a dynamic-axes export's)."""
    return shape is not None and len(shape) == 4 and isinstance(shape[axis], int)


class ChannelsFirstBlocks(GraphPass):
    name = "channels_first_blocks"
    report_refusals = False       # a refused block runs as it is

    def matches(self, ctx):
        for node in ctx.nodes:
            if is_op(node, "Transpose") and _perm(node) == TO_LAST:
                yield node

    # ---- the region -------------------------------------------------------------
    def _region(self, ctx, start):
        """(nodes in graph order, the closing Transpose) of the block opened by `start`, or a reason."""
        shape = ctx.shape(start.input[0])
        if not _rank4_known_channels(shape, axis=1):
            return "x's shape is not rank 4 with known channels"
        inside = {start.output[0]}
        nodes, taken, end, todo = [], set(), None, [start.output[0]]
        outputs = set(ctx.graph_outputs)
        while todo:
            value = todo.pop()
            if value in outputs:
                return f"{value!r} is a graph output"
            for reader in ctx.readers(value):
                if id(reader) in taken or reader is end:
                    continue
                if is_op(reader, "Transpose") and _perm(reader) == TO_FIRST:
                    if end is not None:
                        return "more than one exit"
                    end = reader
                    continue
                reason = self._node_reason(ctx, reader, inside)
                if reason:
                    return reason
                nodes.append(reader)
                taken.add(id(reader))
                for out in reader.output:
                    if out:
                        inside.add(out)
                        todo.append(out)
        if end is None:
            return "no closing Transpose"
        if not nodes:
            return "nothing between the Transposes (no_op_views composes the pair)"
        # every input of the region's nodes must be known by now (read inside, or constant)
        for node in nodes + [end]:
            for name in node.input:
                if name and name not in inside and not ctx.is_constant(name):
                    return f"{node.name!r} reads {name!r} from outside the block"
        return ctx.in_graph_order(nodes), end

    def _node_reason(self, ctx, node, inside):
        if any(ctx.elem_type(o) not in FLOATS for o in node.output if o):
            return f"{node.name!r} is not float32, float16 or bfloat16"
        if len([o for o in node.output if o]) != 1:
            return f"{node.name!r} has more than one output"
        shape = ctx.shape(node.output[0])
        if not _rank4_known_channels(shape):
            return f"{node.name!r}'s output is not rank 4 with known channels"
        if any(normrt_op for normrt_op in NORMS if is_normrt(node, normrt_op)):
            attrs, reason = node_attrs(node)
            if reason or attrs.get("axis", -1) not in (-1, 3) or len(node.input) > 3 \
                    or any(not ctx.is_constant(i) for i in node.input[1:] if i):
                return f"{node.name!r}: not a plain norm over the last axis"
            return None
        if is_normrt(node, "MatMul"):
            attrs, _ = node_attrs(node)
            if len(node.input) > 3 or attrs.get("activation", ""):
                return f"{node.name!r}: a MatMul with a residual or activation"
            return self._weight_reason(ctx, node)
        if is_op(node, "MatMul"):
            return self._weight_reason(ctx, node)
        if is_op(node, *UNARY) and len(node.input) == 1:
            return None
        if is_op(node, *BINARY) and len(node.input) == 2:
            for name in node.input:
                if ctx.is_constant(name):
                    if _channel_constant(ctx.constants[name], shape[3]) is None:
                        return f"{node.name!r}: constant {name!r} varies along another axis than the channels"
                elif tuple(ctx.shape(name) or ()) != tuple(shape):
                    return f"{node.name!r}: {name!r} broadcasts"
            return None
        return f"{node.name!r}: {node.op_type} has no channels-first form here"

    @staticmethod
    def _weight_reason(ctx, node):
        w = ctx.constants.get(node.input[1]) if len(node.input) > 1 else None
        if w is None or np.asarray(w).ndim != 2 or ctx.elem_type(node.input[1]) != ctx.elem_type(node.output[0]):
            return f"{node.name!r}: not a product by a (C, K) constant of its type"
        if len(node.input) > 2 and node.input[2] and not ctx.is_constant(node.input[2]):
            return f"{node.name!r}: runtime bias"
        return None

    def check(self, ctx, start):
        if not ctx.contains(start):
            return "already rewritten"
        found = self._region(ctx, start)
        if isinstance(found, str):
            return found
        self._found = found
        return None

    # ---- the rewrite ------------------------------------------------------------
    def rewrite(self, ctx, start):
        nodes, end = self._found
        x = start.input[0]
        rename = {start.output[0]: x, end.input[0]: end.output[0]}
        new = []
        for node in nodes:
            ins = [rename.get(i, i) for i in node.input]
            outs = [rename.get(o, o) for o in node.output]
            channels = ctx.shape(node.output[0])[3]       # the channels-last shape: C last
            if any(is_normrt(node, op) for op in NORMS):
                attrs, _ = node_attrs(node)
                params = [ctx.add_constant(orig + "_per_channel", np.asarray(ctx.constants[orig]).reshape(channels))
                          if orig else "" for orig in node.input[1:]]
                new.append(make_node("ChannelNorm", ins[:1] + params, outs, node.name, mode=NORMS[node.op_type],
                                     epsilon=float(attrs.get("epsilon", 1e-5)),
                                     activation=attrs.get("activation", "")))
                entry = take_fused_entry(ctx, node.name)
                if entry is not None:       # the norm is still the model's, on another kernel
                    entry.update(normrt_op="ChannelNorm", kernel=NORM_OPS["ChannelNorm"].kernel,
                                 pattern=entry.get("pattern", "") + " (channels-first)")
                    ctx.report.fused.append(entry)
            elif is_op(node, "MatMul") or is_normrt(node, "MatMul"):
                w = np.asarray(ctx.constants[node.input[1]])
                wt = ctx.add_constant(node.input[1] + "_conv1x1", np.ascontiguousarray(w.T)[:, :, None, None])
                bias = ins[2:3] if len(ins) > 2 and ins[2] else []
                new.append(helper.make_node("Conv", [ins[0], wt] + bias, outs, name=node.name))
            elif is_op(node, *BINARY):
                args = []
                for name, orig in zip(ins, node.input):
                    if ctx.is_constant(orig):
                        args.append(ctx.add_constant(orig + "_chw", _channel_constant(ctx.constants[orig], channels)))
                    else:
                        args.append(name)
                new.append(helper.make_node(node.op_type, args, outs, name=node.name))
            else:
                copy = type(node)()
                copy.CopyFrom(node)
                del copy.input[:]
                copy.input.extend(ins)
                del copy.output[:]
                copy.output.extend(outs)
                new.append(copy)
        ctx.replace_nodes([start] + nodes + [end], new)
        # the values keep their names in the channels-first layout: their known types say so
        # (whole-model inference cannot see through the normrt nodes, whose outputs would
        # otherwise keep their channels-last shapes)
        moved = set()
        for node in nodes:
            name = rename.get(node.output[0], node.output[0])
            moved.add(name)
            t = ctx.types.get(node.output[0])
            if t is not None and t.shape is not None:
                n, h, w, c = t.shape
                ctx.types[name] = ValueType(t.elem_type, (n, c, h, w))
        # and the model's own declarations of them (dynamo exports declare every value) go
        kept = [vi for vi in ctx.graph.value_info if vi.name not in moved]
        if len(kept) != len(ctx.graph.value_info):
            del ctx.graph.value_info[:]
            ctx.graph.value_info.extend(kept)
        ctx.mark_types_stale()
