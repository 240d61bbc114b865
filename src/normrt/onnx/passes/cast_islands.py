"""Cast islands: a norm computed in float32 between Casts from and back to half precision -> one
normrt node that reads and writes the half values.

Mixed-precision exports (torch autocast, keep-io-types float16 converters, diffusers'
FP32LayerNorm, LLaMA's RMSNorm) wrap each norm in Casts. By the time this pass runs the
norm in the middle is one normrt node, whatever spelling a fusion read:

    X16 ──► Cast(to=FLOAT) ──► x32 ──► normrt::Norm(x32, w32 ...) ──► y32 ──► Cast(to=FLOAT16) ──► Y16
   [S16 ──► Cast(to=FLOAT) ──► s32 ──┘  (AdaIN's style)]

    ==>  X16 ──► normrt::Norm(X16, w32 ...) ──► Y16

The kernels read half X, keep float32 parameters and compute the statistics in
float64 and the output in float32, rounding once to half: the island's own
arithmetic (the up Cast is exact), less the float32 rounding of y32.

LLaMA's RMSNorm multiplies by its weight after the down Cast, in half precision:

    ... ──► Cast(to=FLOAT16) ──► Mul(·, w16) ──► Z16     (w16 a constant along the normalized axes)

    ==>  X16 ──► normrt::RMSNorm(X16, w32 · scale) ──► Z16      (LayerNorm: scale and bias times w)

which rounds once where the model rounds twice (before and after the Mul): the
result differs from the model's by at most that one extra rounding of y.

Upcast only: X16 ──► Cast(to=FLOAT) ──► Norm ──► y32 read by float32 ops (no down
Cast) is no island: the kernels write X's type, and rounding y32 to half would
change what the float32 readers see. The norm stays on its float32 kernel reading
the exact upcast. Casts on the weights (Cast(w16 -> FLOAT)) are folded into float32
constants by constant_folding before any fusion.

Refused (reason in the report; the norm stays on its kernel between the Casts):
- y32 also read by another node than the down Cast, or a graph output (dropping it
  would round what that reader sees to half);
- an island in float64 (Cast to DOUBLE): the model asked for float64 arithmetic,
  which the float64 kernel gives it;
- a down Cast to another type than X's (bfloat16 in, float16 out): the kernels write
  X's type; an AdaIN style not Cast up from X's type;
- a residual added in the island (LayerNorm / RMSNorm of float(x) + float(r)): a half
  kernel rounds X + residual to half first, as a half model does, not in float32;
- outputs besides Y in use: LayerNorm statistics, residual_sum (x + residual in
  float32, which the readers would see rounded to half).
"""
import numpy as np
import onnx
from onnx import TensorProto

from .._graph import decode_attributes
from ..domain import NORM_OPS
from . import GraphPass
from ._queries import HALF_DTYPES, NP_FLOAT, is_normrt, is_op, present, take_fused_entry

PASS = "cast_islands"
NORMS = ("BatchNorm", "LayerNorm", "RMSNorm", "ChannelNorm", "InstanceNorm", "GroupNorm",
         "MeanVarianceNorm", "LpNorm", "LRN", "AdaIN")
# input positions holding data (Cast up from X's half type); the others are parameters, which
# the kernels take in float32 with half X
DATA_INPUTS = {"AdaIN": (0, 1)}
# the residual input: a half kernel rounds X + residual to half before normalizing it
RESIDUAL = {"LayerNorm": 3, "RMSNorm": 2}
# normalized-axes scale (and bias) a Mul after the island folds into
WEIGHTED = {"LayerNorm": (1, 2), "RMSNorm": (1, None)}


def _cast_to(node):
    try:
        return decode_attributes(node).get("to")
    except ValueError:
        return None


class CastIslands(GraphPass):
    name = PASS

    def matches(self, ctx):
        for node in ctx.nodes:
            if node.op_type in NORMS and is_normrt(node, node.op_type) and node.input and node.input[0]:
                up = ctx.producer().get(node.input[0])
                # an identity Cast (half to the same half) is no island
                if is_op(up, "Cast") and ctx.elem_type(up.input[0]) in HALF_DTYPES and \
                        _cast_to(up) in (TensorProto.FLOAT, TensorProto.DOUBLE):
                    yield node

    def describe(self, node):
        return f"Cast island around {node.op_type}", [node.name]

    # -- check ---------------------------------------------------------------
    def check(self, ctx, node):
        if not present(ctx, [node]):
            return "node already rewritten"
        producer = ctx.producer()
        up = producer.get(node.input[0])
        if not is_op(up, "Cast"):
            return "X is no longer Cast up"
        half = ctx.elem_type(up.input[0])
        inner = ctx.elem_type(node.input[0])
        if inner == TensorProto.DOUBLE:
            return "a float64 island (Cast to DOUBLE): the model computes the norm in float64, as the kernel does now"
        if inner != TensorProto.FLOAT:
            return f"element type of {node.input[0]!r} unknown"
        r = RESIDUAL.get(node.op_type)
        if r is not None and r < len(node.input) and node.input[r]:
            return ("the residual is added in float32 in the island; the half kernel would round "
                    "X + residual to half before normalizing")
        sources = {}
        for i in DATA_INPUTS.get(node.op_type, (0,)):
            if i >= len(node.input) or not node.input[i]:
                continue
            up = producer.get(node.input[i])
            if not is_op(up, "Cast") or _cast_to(up) != TensorProto.FLOAT or ctx.elem_type(up.input[0]) != half:
                return (f"input {node.input[i]!r} is not Cast up from {TensorProto.DataType.Name(half)} "
                        f"like X")
            sources[i] = up.input[0]
        y = node.output[0]
        if any(o for o in node.output[1:]):
            return "the norm's other outputs (statistics, residual_sum) are read in float32"
        if y in ctx.graph_outputs:
            return f"the float32 result {y!r} is a graph output"
        readers = ctx.readers(y)
        if len(readers) != 1 or not is_op(readers[0], "Cast"):
            others = [r.name for r in readers if not is_op(r, "Cast")]
            return (f"the float32 result {y!r} is also read by {others or [r.name for r in readers]}: "
                    f"rounding it to half would change what they read")
        down = readers[0]
        to = _cast_to(down)
        if to != half:
            name = TensorProto.DataType.Name(to) if to in TensorProto.DataType.values() else to
            return (f"the down Cast {down.name!r} writes {name}, not X's "
                    f"{TensorProto.DataType.Name(half)} (the kernels write X's type)")
        self._plan = {"sources": sources, "down": down, "tail": self._weight_tail(ctx, node, down.output[0])}
        return None

    def _weight_tail(self, ctx, node, y16):
        """(Mul node, its constant's name, the constant as float64 of the normalized axes' shape)
        when Y16 is read only by a Mul with a half constant that varies along the normalized axes
        only and the norm's constant scale (bias) can absorb it, else None."""
        if node.op_type not in WEIGHTED or y16 in ctx.graph_outputs:
            return None
        readers = ctx.readers(y16)
        if len(readers) != 1 or not is_op(readers[0], "Mul") or len(readers[0].input) != 2 or \
                list(readers[0].input).count(y16) != 1:
            return None
        mul = readers[0]
        other = mul.input[1] if mul.input[0] == y16 else mul.input[0]
        w = ctx.constants.get(other)
        if w is None or w.dtype != NP_FLOAT.get(ctx.elem_type(y16)):
            return None                 # a float32 weight would make the Mul's result float32
        attrs = decode_attributes(node)
        if attrs.get("activation"):
            return None
        shape = ctx.shape(node.input[0])
        axis = attrs.get("axis", -1)
        if shape is None or not all(isinstance(d, int) for d in shape[axis:]):
            return None
        norm = tuple(shape[axis:])
        rank_w = w.ndim
        lead = w.shape[:max(0, rank_w - len(norm))]
        if rank_w > len(shape) or any(d != 1 for d in lead) or \
                any(d not in (1, n) for d, n in zip(reversed(w.shape), reversed(norm))):
            return None
        s_pos, b_pos = WEIGHTED[node.op_type]
        for pos in (s_pos, b_pos):
            if pos is not None and pos < len(node.input) and node.input[pos] and \
                    node.input[pos] not in ctx.constants:
                return None             # a runtime scale / bias: the product would be computed at run time
        w = np.broadcast_to(np.asarray(w, np.float64).reshape(w.shape[len(lead):]), norm)
        return mul, other, w

    # -- rewrite -------------------------------------------------------------
    def rewrite(self, ctx, node):
        plan = self._plan
        down, tail = plan["down"], plan["tail"]
        inputs = list(node.input)
        for i, src in plan["sources"].items():
            inputs[i] = src
        removed, out = [node, down], down.output[0]
        if tail is not None:
            mul, w_name, w = tail
            s_pos, b_pos = WEIGHTED[node.op_type]
            norm = w.shape
            inputs += [""] * (s_pos + 1 - len(inputs))
            scale = ctx.constants[inputs[s_pos]].astype(np.float64) if inputs[s_pos] else 1.0
            inputs[s_pos] = ctx.add_constant(w_name + "_scale", np.ascontiguousarray(
                np.broadcast_to(scale * w, norm), np.float32))
            if b_pos is not None and b_pos < len(inputs) and inputs[b_pos]:
                bias = ctx.constants[inputs[b_pos]].astype(np.float64)
                inputs[b_pos] = ctx.add_constant(w_name + "_bias", np.ascontiguousarray(
                    np.broadcast_to(bias * w, norm), np.float32))
            removed.append(mul)
            out = mul.output[0]
        new = onnx.NodeProto()
        new.CopyFrom(node)              # the same op and attributes, reading X16 and writing Y16
        while inputs and not inputs[-1]:
            inputs.pop()
        del new.input[:], new.output[:]
        new.input.extend(inputs)
        new.output.append(out)
        # the up Casts stay while other nodes read them (they are exact): dead-code removal drops the rest
        ctx.replace_nodes(removed, [new])
        entry = take_fused_entry(ctx, node.name) or {
            "pass": self.name, "op": node.op_type, "pattern": node.op_type, "nodes": [node.name],
            "normrt_op": node.op_type, "normrt_node": new.name, "kernel": NORM_OPS[node.op_type].kernel,
            "activation": None, "residual": False}
        entry = dict(entry)
        entry["pattern"] = "Cast-" + entry["pattern"] + "-Cast" + ("-Mul" if tail is not None else "")
        entry["nodes"] = list(entry["nodes"]) + [down.name] + ([tail[0].name] if tail is not None else [])
        entry["cast_island"] = TensorProto.DataType.Name(ctx.elem_type(inputs[0])).lower()
        ctx.report.fused.append(entry)
