"""Half regions: a float16/bfloat16 model's values kept in float32 between ops that compute
in float32 anyway, rounded to half only at the region's boundaries (half_compute="float32").

normrt computes every op of a half model but the element movers in float32 (ops/_half.py,
kernels.py): per op, the half inputs are widened, the float32 result rounded back to half.
A chain of N such ops rounds N times. onnxruntime's CPU provider, which has no half kernels
for most ops, casts around them and removes the back-to-back Cast pairs it inserted: values
flow in float32 between its float32 ops. This pass does the same to the graph:

    X16 ──► Conv ──► a16 ──► Reshape ──► b16 ──► Softmax ──► c16 ──► Cast(to=FLOAT) ──► ...
                      └────► Shape ──► s                      └────► Y16 (graph output)

    ==>

    X16 ──► Cast(FLOAT) ──► Conv ──► a32 ──► Reshape ──► b32 ──► Softmax ──► c32 ──► Cast(FLOAT16) ──► c16 ──► Cast(to=FLOAT) ──► ...
                                      └────► Shape ──► s                                                 └────► Y16

A region is a connected set of nodes that read and write half values and compute them as
float32 in normrt (COMPUTES: continuous ops whose float outputs take their inputs' type,
every normrt-domain node: the norm kernels take float32 X as well), joined by the element
movers (MOVERS: Reshape, Transpose, Slice, Concat... exact in any type) that read a value
of the region. Inside it the half values become float32 values of new names; a boundary
Cast up (or a constant widened once, exactly) feeds each half value it reads from outside,
a boundary Cast down gives each of its values read outside (or a graph output) back its
original name and type. Shape and Size read either form (their result has no float type).

Pinned to half semantics (left as they are, reading and writing half values):
- the model's own Casts (and CastLike): roundings the model asked for;
- ops that are discontinuous in their input or whose result is not a float of the input's
  type (comparisons, ArgMax, TopK, Floor/Round, Mod, Hardmax...: float32 inputs would change
  results beyond rounding), ops with subgraphs, ops of other domains, ops not listed;
- nodes with a value of unknown element type, or meeting two half types.

Refused (`check`, reason in report.half_compute): a region with fewer than two computing
nodes -- per_op already rounds one op once; the region would only move its conversions into
Cast nodes.

Files saved with normrt's fused nodes come back with those nodes' outputs untyped (onnx
cannot infer through the normrt domain): their types are inferred first (Y and
residual_sum: X's type; LayerNorm's Mean/InvStdDev: stash_type), so regions still form.

One pass over the nodes in graph order classifies them and grows the regions (union-find
over the values joining two region nodes), one rebuild of the node list rewrites them:
linear in the graph.
"""
import numpy as np
import onnx
from onnx import TensorProto

from .._graph import NORMRT_DOMAIN, canonical_domain, decode_attributes, subgraphs
from ..ops import _half
from . import GraphPass, ValueType
from ._queries import HALF_DTYPES

PASS = "half_regions"
MODES = ("per_op", "float32")
# The default: onnxruntime's CPU semantics, more accurate than per_op (errors against float64
# 2-8x lower on the bench's half models) and faster (0.61-0.90x per_op's time: fewer
# conversions; `python -m bench.half_models --modes per_op,float32`, README).
DEFAULT_MODE = "float32"

# ONNX ops that compute in float32 in normrt and whose float outputs take their inputs' type:
# continuous in their inputs, so float32 inputs change the result by less than the roundings
# they skip
COMPUTES = frozenset((
    "Add", "Sub", "Mul", "Div", "Pow", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Tanh", "Erf",
    "Sigmoid", "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "HardSigmoid", "HardSwish", "Mish",
    "Softplus", "Softsign", "PRelu", "Clip", "Max", "Min", "Mean", "Sum", "Sin", "Cos",
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "Attention",
    "Softmax", "LogSoftmax", "AveragePool", "GlobalAveragePool", "MaxPool", "GlobalMaxPool", "LpPool",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSumExp", "ReduceLogSum", "CumSum",
    "LayerNormalization", "InstanceNormalization", "BatchNormalization", "GroupNormalization",
    "RMSNormalization", "LpNormalization", "MeanVarianceNormalization", "Resize", "Upsample",
))
# ops that move or select elements (exact in any type): in a region when they read one of its values
MOVERS = frozenset((
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "Expand", "Tile", "Pad", "Identity", "Where", "DepthToSpace",
    "SpaceToDepth", "Trilu", "Dropout",
))
# ops whose result does not depend on the element type of what they read
SHAPE_ONLY = frozenset(("Shape", "Size"))

COMPUTE, MOVER, SHAPE, PINNED = "compute", "mover", "shape", "pinned"
_FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE) + HALF_DTYPES


def check_mode(half_compute):
    """`half_compute` if it is a mode, else ValueError naming the argument."""
    if half_compute not in MODES:
        raise ValueError(f"half_compute must be one of {list(MODES)}, got {half_compute!r}")
    return half_compute


def _is_normrt(node):
    return canonical_domain(node.domain) == NORMRT_DOMAIN


def infer_normrt_types(ctx):
    """Types for the values a saved optimized model leaves untyped (onnx's inference stops at
    its normrt-domain nodes), in one sweep in graph order: a normrt node's Y and residual_sum
    take X's type (the kernels write X's type), LayerNorm's Mean/InvStdDev its stash_type; a
    standard node after them is typed by onnx's inference of that one node, or, when its
    input shapes are unknown (a normrt product's Y), a computing or moving op takes its first
    float input's element type. Only the element types matter to the regions. Returns how
    many values got a type."""
    typed = 0
    for node in ctx.nodes:
        outs = [o for o in node.output if o and not ctx.elem_type(o)]
        if not outs:
            continue
        if _is_normrt(node):
            x = ctx.types.get(node.input[0]) if node.input and node.input[0] else None
            if x is None or not x.elem_type:
                continue
            for pos, name in enumerate(node.output):
                if name not in outs:
                    continue
                elem = x.elem_type
                if node.op_type == "LayerNorm" and pos in (1, 2):
                    elem = decode_attributes(node).get("stash_type", TensorProto.FLOAT)
                # norms keep X's shape; the products, attention and elementwise programs have their own
                shape = None if node.op_type in ("Conv", "MatMul", "Attention", "Elementwise") else x.shape
                ctx.types[name] = ValueType(elem, shape)
                typed += 1
        elif canonical_domain(node.domain) == "":
            if ctx.infer_node_types(node):
                typed += sum(1 for o in outs if ctx.elem_type(o))
                continue
            if node.op_type not in COMPUTES and node.op_type not in MOVERS:
                continue
            floats = [ctx.elem_type(i) for i in node.input if i and ctx.elem_type(i) in _FLOATS]
            if floats:
                for name in (outs if node.op_type == "Split" else outs[:1]):
                    ctx.types[name] = ValueType(floats[0], None)
                    typed += 1
    return typed


def _classify(ctx, node):
    """(kind, the half type it reads/writes or 0): how the node may meet a region."""
    names = [n for n in list(node.input) + list(node.output) if n]
    elems = {ctx.elem_type(n) for n in names}
    halves = elems & set(HALF_DTYPES)
    if not halves:
        return None, 0          # no half value: nothing to do with regions
    if node.op_type in SHAPE_ONLY and canonical_domain(node.domain) == "":
        return SHAPE, 0
    if 0 in elems or len(halves) > 1 or next(subgraphs(node), None) is not None:
        return PINNED, 0
    half = halves.pop()
    if _is_normrt(node):
        return COMPUTE, half
    if canonical_domain(node.domain) != "":
        return PINNED, 0
    if node.op_type in COMPUTES:
        if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
            return PINNED, 0    # its Indices come from comparisons
        return COMPUTE, half
    if node.op_type in MOVERS:
        return MOVER, half
    return PINNED, 0


class _Regions:
    """Union-find over the region nodes (by position in the node list)."""

    def __init__(self):
        self.parent = {}

    def add(self, i):
        self.parent.setdefault(i, i)

    def find(self, i):
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i, j):
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


class HalfRegions(GraphPass):
    name = PASS
    report_refusals = False      # refusals are listed in report.half_compute (no norm is left out)

    # -- matches ---------------------------------------------------------------
    def matches(self, ctx):
        """The regions: lists of node positions in ctx.nodes (graph order)."""
        infer_normrt_types(ctx)
        self._nodes = nodes = ctx.nodes
        self._kinds = kinds = [_classify(ctx, n) for n in nodes]
        half_of = {}             # value -> half type it has, for the values the region nodes write
        member = {}              # value -> position of the region node writing it
        regions = _Regions()
        for i, (node, (kind, half)) in enumerate(zip(nodes, kinds)):
            if kind not in (COMPUTE, MOVER):
                continue
            feeders = [member[n] for n in node.input if n in member]
            if kind == MOVER and not feeders:
                continue         # moves half values from outside: stays half (half the bytes)
            regions.add(i)
            for j in feeders:
                regions.union(i, j)
            for o in node.output:
                if o and ctx.elem_type(o) == half:
                    member[o] = i
                    half_of[o] = half
        self._member = member
        grouped = {}
        for i in regions.parent:
            grouped.setdefault(regions.find(i), []).append(i)
        return [sorted(g) for _, g in sorted(grouped.items())]

    def describe(self, region):
        return "half region", [self._nodes[i].name for i in region]

    def check(self, ctx, region):
        computing = sum(1 for i in region if self._kinds[i][0] == COMPUTE)
        if computing < 2:
            return (f"{computing} node computing in float32: per_op rounds its result once already "
                    f"(the region would only move the conversions into Casts)")
        return None

    # -- rewrite ---------------------------------------------------------------
    def run(self, ctx):
        regions = list(self.matches(ctx))
        summary = {"regions": 0, "retyped": 0, "up_casts": 0, "down_casts": 0, "widened_constants": 0,
                   "refused": []}
        accepted = set()
        for region in regions:
            reason = self.check(ctx, region)
            if reason:
                op, names = self.describe(region)
                summary["refused"].append({"nodes": names, "reason": reason})
                continue
            accepted.update(region)
            summary["regions"] += 1
        if accepted:
            self._rewrite_all(ctx, accepted, summary)
        ctx.report.half_compute = dict(summary, mode="float32")
        ctx.report.passes[self.name] = ctx.report.passes.get(self.name, 0) + summary["regions"]
        return summary["regions"]

    def rewrite(self, ctx, match):
        raise NotImplementedError("half_regions rewrites all its regions at once (run)")

    def _rewrite_all(self, ctx, accepted, summary):
        nodes, kinds = self._nodes, self._kinds
        in_region = {id(nodes[i]) for i in accepted}
        shape_only = {id(n) for n, (kind, _) in zip(nodes, kinds) if kind == SHAPE}
        wide = {}                # half value written in a region -> its float32 name
        for i in sorted(accepted):
            half = kinds[i][1]
            for o in nodes[i].output:
                if o and ctx.elem_type(o) == half:
                    wide[o] = ctx.new_name(o + "_f32")
                    ctx.types[wide[o]] = ValueType(TensorProto.FLOAT, ctx.shape(o))
        outputs = set(ctx.graph_outputs)
        fed = {}                 # half value from outside a region -> its float32 form (Cast up / constant)
        rebuilt = []
        for i, node in enumerate(nodes):
            kind, half = kinds[i]
            if id(node) in in_region:
                for name in node.input:
                    if name and name not in wide and name not in fed and ctx.elem_type(name) == half:
                        fed[name] = self._feed(ctx, name, rebuilt, summary)
                new = onnx.NodeProto()
                new.CopyFrom(node)
                for k, name in enumerate(new.input):
                    if name in wide:
                        new.input[k] = wide[name]
                    elif name in fed:
                        new.input[k] = fed[name]
                for k, name in enumerate(new.output):
                    if name in wide:
                        new.output[k] = wide[name]
                rebuilt.append(new)
                for name in node.output:
                    if name in wide and (name in outputs or any(
                            id(r) not in in_region and id(r) not in shape_only
                            for r in ctx.readers(name))):
                        rebuilt.append(onnx.helper.make_node(
                            "Cast", [wide[name]], [name], name=ctx.new_name(name + "_round"), to=half))
                        summary["down_casts"] += 1
                summary["retyped"] += sum(1 for o in node.output if o in wide)
            elif kind == SHAPE and any(n in wide for n in node.input):
                new = onnx.NodeProto()
                new.CopyFrom(node)
                for k, name in enumerate(new.input):
                    if name in wide:
                        new.input[k] = wide[name]   # the float32 form has the same shape
                rebuilt.append(new)
            else:
                rebuilt.append(node)
        ctx.nodes = rebuilt

    @staticmethod
    def _feed(ctx, name, rebuilt, summary):
        """The float32 form of half value `name` read by a region: a widened constant, or a Cast up."""
        if name in ctx.constants:
            summary["widened_constants"] += 1
            value = np.asarray(ctx.constants[name])
            wide = ctx.add_constant(name + "_f32", _half.widen(value) if value.size else value.astype(np.float32))
            ctx.types[wide] = ValueType(TensorProto.FLOAT, tuple(value.shape))
            return wide
        wide = ctx.new_name(name + "_f32")
        ctx.types[wide] = ValueType(TensorProto.FLOAT, ctx.shape(name))
        # placed just before its first reader: `name` is written earlier (graph order)
        rebuilt.append(onnx.helper.make_node("Cast", [name], [wide], name=ctx.new_name(name + "_widen"),
                                             to=TensorProto.FLOAT))
        summary["up_casts"] += 1
        return wide

