"""Normalizations recognized by what they compute -> one normrt LayerNorm / RMSNorm / InstanceNorm /
ChannelNorm / GroupNorm / LpNorm / AdaIN node.

Whatever the spelling, a normalization divides its data by a standard deviation
computed from that same data. The pass anchors on the node where the two meet,
reads both sides by dataflow (`_dataflow`), then takes the affine chain after it:

    data ───────────────────────────────────────┐      data = X - mean(X, A)  (centred)
      │                                         ▼          or X               (raw, RMS)
      └─► statistics ─► std ─────────► Div(data·k, std)  |  Mul(data·k, c/std)
          (mean of the centred square,          │          (k: constant factors on either side)
           or of the raw square, over A)        ▼
                               [Mul / Div / Add / Sub / Neg by constants, any order] ─► Y

    ==>  X ─► normrt::LayerNorm | RMSNorm | InstanceNorm (X, scale, bias) ─► Y

The affine chain is folded into one (scale, bias) pair: Y = data/std · A + B, A
and B constants of any broadcast shape that varies only along the normalized
axes (LayerNorm/RMSNorm) or only along the channel axis (InstanceNorm). It stops
before the first step that does not fit (a runtime tensor -- adaLN modulation,
AdaIN statistics --, a constant varying along other axes, a bias after an RMS),
which stays as it is after the fused node. Runtime parameters are taken where the
kernel reads them as they are: a scale / bias shaped like the normalized axes
(LayerNorm, RMSNorm), per-sample (N, C) γ, β (conditional InstanceNorm). The kernel
is chosen by the axes A:

    A = [a, rank)                  LayerNorm (centred) / RMSNorm (raw), axis = a
    A = [2, rank), rank >= 4,      InstanceNorm when the affine is per channel (or per
      centred                        sample); LayerNorm over [2, rank) otherwise
    A = [1], rank >= 3             ChannelNorm mode "layer" (centred: ConvNeXt/SAM LayerNorm2d) /
                                     "rms" (raw: StyleGAN PixelNorm), affine per channel
    X viewed as (N, G, ...),       GroupNorm(num_groups=G) when the normalized value is
      A = [2, rank of the view)      viewed back to X's shape, then a per-channel affine
    X / ReduceL2(X, [a])           LpNorm(p=2, axis=a, nan_on_zero=1): the division's NaN for
                                     a zero vector kept (ONNX LpNormalization gives zeros)
    σ(s)·(x - μ(x))/σ(x) + μ(s)    AdaIN(x, s): s's centred statistics over the same
      (or x̂·σ(s) + μ(s))             (spatial) axes, with the same eps

Refused, with the reason in the report (the nodes stay as they are, and run correctly):
- statistics over the channel axis with an affine that is not per channel (or per-sample
  runtime parameters): the ChannelNorm kernel takes (C,) scale and bias;
- statistics over other axis sets (no kernel normalizes them);
- eps added outside the root of a raw RMS, or to a std the data is not centred on;
  (X - mean) / (std + eps) over any axes becomes MeanVarianceNorm (ONNX MVN's function, the
  spellings mvn_decomposed's literal templates miss: keepdims=0 + Reshape, ReduceSum / n, ...);
- scaling without centring (X / centred std) or centring with a raw RMS: another function;
- a middle value read by another node or a graph output;
- X and Y of different element types, or of a type no kernel takes. The statistics between
  may be computed at another float precision: torch's float16 var / std / var_mean (dynamo
  exporter) widen X with a Cast and Cast the statistic back (`_dataflow`); those Casts go
  with the match, the node reads X in the data's type. A lossy Cast of X (float32 ->
  float16) before its statistics is another function, left as it is.
"""
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import KERNEL_DTYPES, Graph, chain_nodes_reason, dtype_reason, fused_name, param_dtype
from ._dataflow import VIEW_OPS, Dataflow, Moment, is_op
from ._queries import channel_vector
from ._stats import float_attr_reason

PASS = "recognized_norms"
ALREADY_TAKEN = "node already rewritten"
MAX_PRODUCT_DEPTH = 16      # constant factors multiplied onto the data before it meets 1/std


@dataclass
class Match:
    anchor: object               # the node where the data meets its standard deviation
    moment: object = None        # _dataflow.Moment
    eps: float = 0.0
    nodes: list = field(default_factory=list)    # every node the match reads, anchor to affine tail
    scale: object = 1.0          # A (float64 array or scalar)
    bias: object = 0.0           # B
    output: str = None
    has_data: bool = True        # False while only constants met the inverse std (r·w before ·X)
    sources: dict = field(default_factory=dict)  # "scale"/"bias": the one initializer it equals
    group: tuple = None          # GroupNorm: (X of (N, C, ...), G, the Reshape to (N, G, ...)) once viewed back
    style: str = None            # AdaIN: the style tensor whose statistics replace the content's
    refusal: str = None          # a look-alike: why it is not fused
    mvn: bool = False            # eps added to the std: MeanVarianceNorm's function
    plan: dict = field(default_factory=dict)


def _shape_fits_trailing(arr, x_shape, axis):
    """arr reshaped to x_shape[axis:] if it broadcasts over those axes only, else None."""
    arr = np.asarray(arr, np.float64)
    rank = len(x_shape)
    norm = x_shape[axis:]
    if arr.ndim > rank:
        return None
    shape = list(arr.shape)
    while len(shape) > len(norm) and shape[0] == 1:
        shape.pop(0)
    if len(shape) > len(norm):
        return None
    if arr.size == 1 and (arr.reshape(-1)[0] in (0.0, 1.0) or all(isinstance(d, int) for d in norm)):
        return arr.reshape(())      # identity values need no array; others are broadcast to norm
    if not all(isinstance(d, int) for d in norm):
        return None
    for d, n in zip(reversed(shape), reversed(norm)):
        if d not in (1, n):
            return None
    return np.broadcast_to(arr.reshape(shape), norm)


def _per_channel_shape(shape, x_shape):
    """Whether a runtime tensor of `shape` holds one value per channel of X broadcast over the
    rest: (C, 1, ...) of rank - 1 or (1, C, 1, ...) of X's rank (a (C,) would line up with the last axis)."""
    if shape is None or not isinstance(x_shape[1], int):
        return False
    shape, rank, C = tuple(shape), len(x_shape), x_shape[1]
    if len(shape) == rank - 1:
        return shape[0] == C and all(d == 1 for d in shape[1:])
    return len(shape) == rank and shape[0] == 1 and shape[1] == C and all(d == 1 for d in shape[2:])


def _channel_fits(arr, x_shape):
    if len(x_shape) < 3 or not isinstance(x_shape[1], int):
        return None
    vec, reason = channel_vector(np.asarray(arr, np.float64), x_shape[1], len(x_shape))
    return None if reason else vec


def _same_statistic(df, found, x, axes):
    """Whether `found` ((tensor, axes) from a read, or None) is a statistic of x's values over axes."""
    return found is not None and tuple(found[1]) == tuple(axes) and df.same_values(found[0], x)


def _style_input(ctx, df, style, content):
    """The style tensor AdaIN reads: in the content's type when the statistics widened it."""
    return df.typed_source(style, ctx.elem_type(content))


def _with_widening_casts(df, g, nodes, inputs):
    """`nodes` and the Casts that widened X for the statistics (read only by `nodes`): the reads look
    through them (`Dataflow.same_values`) without collecting them, and they go with the match --
    unless the fused node reads their output (`inputs`: a norm computed in float32 on Cast(X))."""
    ids = {id(n) for n in nodes}
    casts = []
    for node in nodes:
        for name in node.input:
            cast = df.producer.get(name)
            if cast is None or id(cast) in ids or name in inputs or len(df.widened_from(name)) < 2 or \
                    name in g.outputs or any(id(r) not in ids for r in g.consumers.get(name, [])):
                continue
            ids.add(id(cast))
            casts.append(cast)
    return nodes + casts + _view_shape_nodes(df, g, nodes + casts)


# ops that compute a runtime view's target shape (integers) from Shape(...)
SHAPE_ARITHMETIC = ("Shape", "Size", "Gather", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Slice",
                    "Cast", "Constant", "Add", "Sub", "Mul", "Div", "Identity")


def _is_shape_arithmetic(df, node):
    return is_op(node, *SHAPE_ARITHMETIC) and \
        all(df.ctx.elem_type(o) == TensorProto.INT64 for o in node.output if o)


def _view_shapes(df, nodes):
    return [i for n in nodes if is_op(n, *VIEW_OPS) for i in n.input[1:] if i and i not in df.ctx.constants]


def _view_shape_nodes(df, g, nodes):
    """The integer nodes computing the runtime shapes of the views in `nodes` (a symbolic batch:
    Reshape(var, Concat(Shape(var)[:1], ...))) that only the match reads: they go with it (a
    Shape of a removed value would dangle)."""
    ids, added, changed = {id(n) for n in nodes}, [], True
    while changed:
        changed = False
        for name in _view_shapes(df, nodes + added) + [i for n in added for i in n.input if i]:
            node = g.producer.get(name)
            if node is None or id(node) in ids or not _is_shape_arithmetic(df, node) or \
                    any(o in g.outputs or any(id(r) not in ids for r in g.consumers.get(o, []))
                        for o in node.output if o):
                continue
            ids.add(id(node))
            added.append(node)
            changed = True
    return added


def _middle_types_reason(ctx, nodes):
    """Why a value the match removes is no float of a kernel type, or None. X and Y share one type
    (checked apart); the statistics between may be computed in another float precision (_dataflow);
    integer shape arithmetic of the views goes with them."""
    df = Dataflow(ctx)
    for node in nodes:
        if _is_shape_arithmetic(df, node):
            continue
        for o in node.output:
            if o and ctx.elem_type(o) not in KERNEL_DTYPES:
                return dtype_reason(ctx, [o])
    return None


def _alike(y_shape, x_shape):
    """Whether the walk's output can be X's shape: the same rank, the same sizes where both are
    known. Symbolic dims may carry other names: a graph output's declared dims (TorchScript
    names them '<Op>y_dim_0') are not the input's; the affine constants broadcast over the
    normalized axes only (checked below), so they cannot raise a leading dim."""
    if x_shape is None or len(y_shape) != len(x_shape):
        return False
    return all(a == b if isinstance(a, int) and isinstance(b, int) else not (isinstance(a, int) or isinstance(b, int))
               for a, b in zip(y_shape, x_shape))


class RecognizedNorms(GraphPass):
    name = PASS

    # -- finding the anchors ---------------------------------------------------
    def matches(self, ctx):
        df = Dataflow(ctx)
        for node in ctx.nodes:
            if is_op(node, "Div", "Mul") and len(node.input) == 2:
                m = self._anchor(ctx, df, node)
                if m is not None:
                    yield m

    def _anchor(self, ctx, df, node):
        """A Match if `node` divides data by a standard deviation (or multiplies by its inverse)."""
        if node.op_type == "Div":
            stat_nodes = []
            df.why = None
            found = df.read_std(node.input[1], stat_nodes)
            if found is None:
                return self._l2(ctx, df, node) or self._eps_outside(ctx, df, node) or \
                    self._near_miss(df, node, node.input[1])
            moment, eps = found
            return self._with_data(ctx, df, node, moment, eps, 1.0, node.input[0], stat_nodes)
        for stat, other in ((node.input[1], node.input[0]), (node.input[0], node.input[1])):
            stat_nodes = []
            df.why = None
            found = df.read_inverse_std(stat, stat_nodes)
            if found is not None:
                moment, eps, c = found
                return self._with_data(ctx, df, node, moment, eps, c, other, stat_nodes)
            miss = self._near_miss(df, node, stat)
            if miss is not None:
                return miss
        return None

    @staticmethod
    def _near_miss(df, node, stat):
        """A refused Match when `stat` looks like a standard deviation computed from a reduction
        but is not one (the reason the dataflow read stopped at), else None."""
        if df.why is None or not df.reduces_upstream(stat):
            return None
        root = df.producer.get(df.view_source(stat, []))
        if not is_op(root, "Sqrt", "Pow", "Reciprocal", "Div"):
            return None
        return Match(node, None, nodes=[node, root], refusal=df.why)

    def _l2(self, ctx, df, div):
        """X / ReduceL2(X, [a]) (CLIP's h / h.norm(dim=-1, keepdim=True)) -> LpNorm, else None."""
        nodes = [div]
        l2 = df.producer.get(df.view_source(div.input[1], nodes))
        if not is_op(l2, "ReduceL2"):
            return None
        axes = df.reduce_axes(l2)
        x = df.data(div.input[0], nodes)
        if axes is None or len(axes) != 1 or not df.same_values(df.data(l2.input[0], nodes), x) or \
                not df.lines_up(div.input[1], x, axes):
            return None
        m = Match(div, Moment("l2", x, tuple(axes)), nodes=nodes + [l2])
        m.output = div.output[0]
        return m

    def _eps_outside(self, ctx, df, div):
        """(X - mean) / (sqrt(var) + eps): ONNX MeanVarianceNormalization's function (eps on the std),
        over any axes -> a Match with `mvn`; with the data not centred on the same statistics (or
        a raw RMS) the look-alike it is (refused); else None.

            X ──► Sub(X, mean(X, A)) ──────────────────────────────► Div ──► Y
             └──► mean((X - mean)², A) ──► Sqrt ──► Add(·, eps) ──────┘
        """
        add = df.producer.get(div.input[1])
        if not is_op(add, "Add") or len(add.input) != 2:
            return None
        for s, e in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            eps = df.scalar(e)
            if eps is None:
                continue
            nodes = []
            found = df.read_std(s, nodes)
            if found is None or found[1] != 0.0:
                continue
            moment, data_nodes = found[0], []
            centred = df.read_centred(div.input[0], data_nodes) if moment.kind == "centred" else None
            if _same_statistic(df, centred, moment.x, moment.axes) and np.isfinite(eps) and eps >= 0:
                x = df.typed_source(moment.x, ctx.elem_type(div.input[0]))
                m = Match(div, Moment("centred", x, moment.axes), eps, nodes=[div, add] + nodes + data_nodes,
                          mvn=True)
                m.output = div.output[0]
                return m
            return Match(div, moment, nodes=[div, add] + nodes,
                         refusal="eps is added outside the root, (x - mean) / (std + eps), to "
                                 + ("a raw root mean square" if moment.kind == "raw" else
                                    "data not centred on the same statistics")
                                 + ": another function than a LayerNorm/RMSNorm/MeanVarianceNorm")
        return None

    def _product(self, ctx, df, name, moment, nodes, depth=0):
        """(has data, constant factor) if `name` is the data times constants, else None.

        Products deeper than MAX_PRODUCT_DEPTH are not read (a hostile chain of ten thousand
        Muls costs a bounded walk, not a RecursionError)."""
        if depth > MAX_PRODUCT_DEPTH:
            return None
        if self._is_data(df, name, moment, nodes):
            return True, 1.0
        inner = []
        root = df.data(name, inner)
        c = df.const(root)
        if c is not None:
            nodes += inner
            return False, np.asarray(c, np.float64)
        node = df.producer.get(root)
        if is_op(node, "Mul") and len(node.input) == 2:
            a = self._product(ctx, df, node.input[0], moment, inner, depth + 1)
            b = self._product(ctx, df, node.input[1], moment, inner, depth + 1) if a else None
            if b is None or (a[0] and b[0]):
                return None
            nodes += inner + [node]
            return a[0] or b[0], a[1] * b[1]
        if is_op(node, "Div") and len(node.input) == 2 and df.const(node.input[1]) is not None:
            a = self._product(ctx, df, node.input[0], moment, inner, depth + 1)
            if a is None:
                return None
            nodes += inner + [node]
            return a[0], a[1] / np.asarray(df.const(node.input[1]), np.float64)
        if is_op(node, "Neg"):
            a = self._product(ctx, df, node.input[0], moment, inner, depth + 1)
            if a is None:
                return None
            nodes += inner + [node]
            return a[0], -a[1]
        return None

    def _is_data(self, df, name, moment, nodes):
        inner = []
        if moment.kind == "raw":
            if not df.same_values(df.data(name, inner), moment.x):
                return False
        else:
            found = df.read_centred(name, inner)
            if found is None or found[1] != moment.axes or not df.same_values(found[0], moment.x):
                return False
        nodes += inner
        return True

    def _with_data(self, ctx, df, anchor, moment, eps, c, data_name, stat_nodes):
        data_nodes = []
        prod = self._product(ctx, df, data_name, moment, data_nodes)
        m = Match(anchor, moment, eps)
        m.nodes = [anchor] + stat_nodes + data_nodes
        if prod is None:
            adain = self._adain(ctx, df, anchor, moment, eps, c, data_name, stat_nodes)
            if adain is not None:
                return adain
            # a runtime factor that is not the data: X·r·w written as (r·w)·X with w at run time,
            # or another function (scaling without centring, centring with a raw RMS)
            m.refusal = self._mismatch(df, data_name, moment)
            return m if m.refusal else None
        has_data, k = prod
        # statistics of a widened X (float16 data, float32 statistics): the node reads X in the data's type
        x = df.typed_source(moment.x, ctx.elem_type(data_name))
        if x != moment.x:
            m.moment = Moment(moment.kind, x, moment.axes)
        m.scale = np.asarray(c, np.float64) * k
        m.has_data = has_data
        return m

    def _adain(self, ctx, df, anchor, moment, eps, c, data_name, stat_nodes):
        """AdaIN in any association: σ(s)·(x − μ(x)) / σ(x) + μ(s) (also (x − μ(x))·σ(s) / σ(x)),
        the statistics per (n, c) over the same axes with the same eps -> a Match with `style`."""
        inner = []
        node = df.producer.get(df.data(data_name, inner))
        if c == 1.0 and moment.kind == "centred" and anchor.op_type == "Div":
            ratio = self._adain_ratio(ctx, df, anchor, moment, eps, data_name, stat_nodes)
            if ratio is not None:
                return ratio
        if c != 1.0 or not is_op(node, "Mul") or len(node.input) != 2 or moment.kind != "centred":
            return None
        for a, b in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            nodes = list(inner)
            if not self._is_data(df, a, moment, nodes):
                continue
            found = df.read_std(b, nodes)
            if found is None:
                continue
            style, s_eps = found
            if style.kind != "centred" or style.axes != moment.axes or s_eps != eps or \
                    df.same_values(style.x, moment.x):
                return None
            readers = ctx.readers(anchor.output[0])
            if len(readers) != 1 or anchor.output[0] in ctx.graph_outputs or not is_op(readers[0], "Add"):
                return None
            add = readers[0]
            other = [i for i in add.input if i != anchor.output[0]]
            mean = df.read_mean(other[0], nodes) if len(other) == 1 else None
            if not _same_statistic(df, mean, style.x, moment.axes) or \
                    not df.lines_up(other[0], style.x, moment.axes):
                return None
            m = Match(anchor, moment, eps, nodes=[anchor, node, add] + stat_nodes + nodes)
            m.style, m.output = _style_input(ctx, df, style.x, moment.x), add.output[0]
            return m
        return None

    def _adain_ratio(self, ctx, df, anchor, moment, eps, ratio_num, stat_nodes):
        """(σ(s) / σ(x)) · (x − μ(x)) + μ(s): the ratio of the stds first -> a Match with `style`."""
        nodes = []
        found = df.read_std(ratio_num, nodes)
        if found is None:
            return None
        style, s_eps = found
        if style.kind != "centred" or style.axes != moment.axes or s_eps != eps or \
                df.same_values(style.x, moment.x):
            return None
        readers = ctx.readers(anchor.output[0])
        if len(readers) != 1 or anchor.output[0] in ctx.graph_outputs or not is_op(readers[0], "Mul"):
            return None
        mul = readers[0]
        data = [i for i in mul.input if i != anchor.output[0]]
        if len(data) != 1 or not self._is_data(df, data[0], moment, nodes):
            return None
        readers = ctx.readers(mul.output[0])
        if len(readers) != 1 or mul.output[0] in ctx.graph_outputs or not is_op(readers[0], "Add"):
            return None
        add = readers[0]
        shift = [i for i in add.input if i != mul.output[0]]
        if len(shift) != 1 or not _same_statistic(df, df.read_mean(shift[0], nodes), style.x, moment.axes) or \
                not df.lines_up(shift[0], style.x, moment.axes):
            return None
        m = Match(anchor, moment, eps, nodes=[anchor, mul, add] + stat_nodes + nodes)
        m.style, m.output = _style_input(ctx, df, style.x, moment.x), add.output[0]
        return m

    @staticmethod
    def _mismatch(df, name, moment):
        if moment.kind == "centred" and df.data(name, []) == moment.x:
            return "scales X by the centred standard deviation without centring it: not a LayerNorm"
        if moment.kind == "raw" and df.read_centred(name, []) is not None and \
                df.read_centred(name, [])[0] == moment.x:
            return "centres X but divides by the raw root mean square: neither LayerNorm nor RMSNorm"
        centred = df.read_centred(name, [])
        if centred is not None and centred[0] == moment.x and centred[1] != moment.axes:
            return (f"the mean is over axes {list(centred[1])}, the variance over {list(moment.axes)}: "
                    f"statistics that do not line up")
        return None

    # -- the affine chain -------------------------------------------------------
    def _fits(self, ctx, m, scale, bias):
        """Whether (scale, bias) can be the fused node's parameters for some kernel."""
        if m.group is not None:
            s0 = ctx.shape(m.group[0])
            return _channel_fits(scale, s0) is not None and _channel_fits(bias, s0) is not None
        x_shape = ctx.shape(m.moment.x)
        mapping = self._mapping(ctx, m)
        if isinstance(mapping, str):
            return False
        op, axis = mapping
        if op == "ChannelNorm":
            return _channel_fits(scale, x_shape) is not None and _channel_fits(bias, x_shape) is not None
        if op == "RMSNorm" and np.any(np.asarray(bias) != 0):
            return False
        if _shape_fits_trailing(scale, x_shape, axis) is not None and \
                _shape_fits_trailing(bias, x_shape, axis) is not None:
            return True
        return op == "InstanceNorm?" and _channel_fits(scale, x_shape) is not None and \
            _channel_fits(bias, x_shape) is not None

    def _walk_affine(self, ctx, df, g, m):
        """Take the steps after the anchor while they keep Y = data/std · A + B with constants."""
        value = m.anchor.output[0]
        has_data = m.has_data
        scale, bias = m.scale, np.float64(0.0)
        taken = []
        out = value
        while True:
            readers = g.consumers.get(value, [])
            if len(readers) != 1 or value in g.outputs:
                break
            node = readers[0]
            if df.is_identity_cast(node):
                taken.append(node)
                value = node.output[0]
                if has_data:
                    out = value
                    m.nodes += taken
                    taken = []
                continue
            if has_data and m.group is None and is_op(node, "Reshape") and \
                    np.asarray(scale).size == 1 and np.asarray(bias).size == 1:
                group = self._group_view(ctx, df, m, node, value)
                if group is None:
                    break
                m.group = group
                taken += [node, group[2]]
                value = out = node.output[0]
                m.nodes += taken
                taken = []
                continue
            if has_data and m.group is None and self._adain_tail(ctx, df, m, node, value, scale, bias):
                m.nodes += taken
                break
            if has_data and m.group is None and self._runtime_param(ctx, df, m, node, value, scale, bias):
                taken.append(node)
                value = out = node.output[0]
                m.nodes += taken
                taken = []
                continue
            if "runtime" in m.sources:
                break               # constants after a runtime parameter would need arithmetic at run time
            step = self._step(df, node, value, has_data, m.moment, scale, bias)
            if step is None:
                break
            new_has, new_scale, new_bias, extra = step
            if new_has and not self._fits(ctx, m, new_scale, new_bias):
                break
            self._track_source(df, m, node, value, scale, bias)
            taken += [node] + extra
            has_data, scale, bias, value = new_has, new_scale, new_bias, node.output[0]
            if has_data:
                out = value
                m.nodes += taken
                taken = []
        if not has_data:
            return False
        if m.style is not None:
            return True
        m.scale, m.bias, m.output = scale, bias, out
        return True

    @staticmethod
    def _group_view(ctx, df, m, back, value):
        """(X, G, forward Reshape) if the statistics are over X viewed as (N, G, ...) (all but the
        first two axes reduced) and `back` views the normalized value back to X's shape."""
        if m.moment.kind != "centred" or list(back.input[:1]) != [value]:
            return None
        fwd = df.producer.get(m.moment.x)
        if not is_op(fwd, "Reshape"):
            return None
        x0 = df.data(fwd.input[0], [])
        s0, sr, sb = (df.static_shape(n) for n in (x0, m.moment.x, back.output[0]))
        if s0 is None or sr is None or sb != s0 or len(s0) < 3 or len(sr) < 3 or sr[0] != s0[0]:
            return None
        G, C = sr[1], s0[1]
        if tuple(m.moment.axes) != tuple(range(2, len(sr))) or C % G or \
                int(np.prod(sr[2:])) != C // G * int(np.prod(s0[2:])):
            return None
        return x0, G, fwd

    def _adain_tail(self, ctx, df, m, node, value, scale, bias):
        """After a plain instance normalization: Mul by σ(s) then Add μ(s) (either operand order),
        s's statistics over the same axes with the same eps: sets m.style and m.output."""
        plain = np.all(np.asarray(scale) == 1.0) and np.all(np.asarray(bias) == 0.0)
        if not plain or m.moment.kind != "centred" or not is_op(node, "Mul") or len(node.input) != 2 or \
                list(node.input).count(value) != 1:
            return False
        other = node.input[1] if node.input[0] == value else node.input[0]
        nodes = []
        found = df.read_std(other, nodes)
        if found is None:
            return False
        style, s_eps = found
        if style.kind != "centred" or style.axes != m.moment.axes or s_eps != m.eps or \
                df.same_values(style.x, m.moment.x):
            return False
        readers = ctx.readers(node.output[0])
        if len(readers) != 1 or node.output[0] in ctx.graph_outputs or not is_op(readers[0], "Add"):
            return False
        add = readers[0]
        shift = [i for i in add.input if i != node.output[0]]
        if len(shift) != 1 or not _same_statistic(df, df.read_mean(shift[0], nodes), style.x, m.moment.axes) or \
                not df.lines_up(shift[0], style.x, m.moment.axes):
            return False
        m.nodes += [node, add] + nodes
        m.style, m.output = _style_input(ctx, df, style.x, m.moment.x), add.output[0]
        return True

    def _runtime_param(self, ctx, df, m, node, value, scale, bias):
        """Take Mul(n, w) / then Add(·, b) with w, b runtime tensors already shaped like the
        normalized axes (the kernel reads them as they are) right after the plain normalization."""
        if not is_op(node, "Mul", "Add") or len(node.input) != 2 or list(node.input).count(value) != 1:
            return False
        other = node.input[1] if node.input[0] == value else node.input[0]
        if df.const(other) is not None:
            return False
        mapping = self._mapping(ctx, m)
        if isinstance(mapping, str) or mapping[0] not in ("LayerNorm", "RMSNorm", "InstanceNorm?", "ChannelNorm"):
            return False
        op, axis = mapping
        if op == "InstanceNorm?":
            return self._runtime_channel_param(ctx, df, m, node, other, scale, bias)
        x_shape, shape = ctx.shape(m.moment.x), ctx.shape(other)
        if op == "ChannelNorm":
            if not _per_channel_shape(shape, x_shape) or ctx.elem_type(other) != ctx.elem_type(m.moment.x):
                return False
        elif shape is None or tuple(shape) != tuple(x_shape[axis:]) or \
                not all(isinstance(d, int) for d in shape) or ctx.elem_type(other) != ctx.elem_type(m.moment.x):
            return False
        plain = np.all(np.asarray(scale) == 1.0) and np.all(np.asarray(bias) == 0.0)
        if node.op_type == "Mul" and plain and not m.sources:
            m.sources = {"scale": other, "runtime": True}
            return True
        if node.op_type == "Add" and op in ("LayerNorm", "ChannelNorm") and plain and set(m.sources) <= {"scale", "runtime"} \
                and "bias" not in m.sources:
            m.sources = dict(m.sources, bias=other, runtime=True)
            return True
        return False

    @staticmethod
    def _runtime_channel_param(ctx, df, m, node, other, scale, bias):
        """Conditional instance norm: Mul by γ then Add β, runtime tensors of one value per (n, c)
        (a (N, C) or (C,) tensor viewed as (N, C, 1, 1)): the InstanceNorm kernel reads them as they
        are. The views stay for the dead-node removal."""
        x_shape = ctx.shape(m.moment.x)
        if not all(isinstance(d, int) for d in x_shape[:2]):
            return False
        N, C = x_shape[:2]
        o_shape = ctx.shape(other)
        if o_shape is None or len(o_shape) != len(x_shape) or tuple(o_shape[:2]) not in ((N, C), (1, C)) or \
                any(d != 1 for d in o_shape[2:]):
            return False
        src = df.view_source(other, [])
        s_shape = df.static_shape(src)
        if s_shape not in ((N, C), (C,)) or ctx.elem_type(src) != ctx.elem_type(m.moment.x):
            return False
        plain = np.all(np.asarray(scale) == 1.0) and np.all(np.asarray(bias) == 0.0)
        if node.op_type == "Mul" and plain and not m.sources:
            m.sources = {"scale": src, "runtime": True}
            return True
        if node.op_type == "Add" and plain and m.sources.get("runtime") and "bias" not in m.sources:
            m.sources = dict(m.sources, bias=src)
            return True
        return False

    @staticmethod
    def _track_source(df, m, node, value, scale, bias):
        """Remember the initializer a parameter is exactly (Mul by w after a plain normalization,
        Add b after that), so the fused node reads it instead of a copy."""
        other = [i for i in node.input if i != value]
        if is_op(node, "Mul") and len(other) == 1 and df.const(other[0]) is None:
            return                                  # the data multiplied in: no parameter
        other = other[0] if len(other) == 1 and df.const(other[0]) is not None else None
        unit = np.all(np.asarray(scale) == 1.0) and np.all(np.asarray(bias) == 0.0)
        if is_op(node, "Mul") and other and unit and not m.sources:
            m.sources = {"scale": other}
        elif is_op(node, "Add") and other and np.all(np.asarray(bias) == 0.0) and "bias" not in m.sources:
            m.sources["bias"] = other
        else:
            m.sources = {"dropped": None}      # any other step: parameters are computed

    def _step(self, df, node, value, has_data, moment, scale, bias):
        """(has data, scale, bias, extra nodes) after `node` reads `value`, or None to stop."""
        if is_op(node, "Neg"):
            return has_data, -scale, -bias, []
        if len(node.input) != 2 or list(node.input).count(value) != 1:
            return None
        other = node.input[1] if node.input[0] == value else node.input[0]
        c = df.const(other)
        c = None if c is None else np.asarray(c, np.float64)
        if is_op(node, "Mul"):
            if c is not None:
                return has_data, scale * c, bias * c, []
            extra = []
            if not has_data and self._is_data(df, other, moment, extra):
                return True, scale, bias, extra
            return None
        if c is None or not has_data and not is_op(node, "Div"):
            return None
        if is_op(node, "Div") and node.input[0] == value:
            return has_data, scale / c, bias / c, []
        if is_op(node, "Add"):
            return True, scale, bias + c, []
        if is_op(node, "Sub"):
            if node.input[0] == value:
                return True, scale, bias - c, []
            return True, -scale, c - bias, []
        return None

    # -- kernels ----------------------------------------------------------------
    def _mapping(self, ctx, m):
        """(normrt op, first normalized axis) for the statistics' axes, or why none fits."""
        shape = ctx.shape(m.moment.x)
        if shape is None:
            return f"rank of X ({m.moment.x!r}) unknown"
        rank, axes = len(shape), tuple(m.moment.axes)
        if m.moment.kind == "l2":
            return "LpNorm", axes[0]
        if axes and axes == tuple(range(axes[0], rank)):
            if m.moment.kind == "raw":
                return "RMSNorm", axes[0]
            if rank >= 4 and axes[0] == 2:
                return "InstanceNorm?", axes[0]    # InstanceNorm if the affine is per channel
            return "LayerNorm", axes[0]
        if axes == (1,) and rank >= 3:
            return "ChannelNorm", 1       # statistics over C at each position (LayerNorm2d, PixelNorm)
        return f"statistics over axes {list(axes)} of a rank-{rank} tensor: no normrt kernel reduces them"

    def run(self, ctx):
        # a candidate whose nodes an earlier match of this run took (the same normalization
        # anchored twice) is no refusal
        count = 0
        for match in list(self.matches(ctx)):
            reason = self.check(ctx, match)
            if reason == ALREADY_TAKEN:
                continue
            if reason:
                op, names = self.describe(match)
                ctx.report.refused.append({"pass": self.name, "op": op, "nodes": names, "reason": reason})
                continue
            self.rewrite(ctx, match)
            count += 1
        ctx.report.passes[self.name] = ctx.report.passes.get(self.name, 0) + count
        return count

    def describe(self, m):
        return "normalization by statistics", [n.name for n in m.nodes]

    def check(self, ctx, m):
        if not all(ctx.contains(n) for n in m.nodes):
            return ALREADY_TAKEN
        if m.refusal:
            return m.refusal
        g = Graph(ctx)
        if m.mvn:
            return self._check_mvn(ctx, g, m)
        mapping = self._mapping(ctx, m)
        if isinstance(mapping, str):
            return mapping
        df = Dataflow(ctx)
        if m.style is not None:
            return self._check_adain(ctx, g, m)
        if mapping[0] == "LpNorm":
            nodes = _with_widening_casts(df, g, list({id(n): n for n in m.nodes}.values()), [m.moment.x])
            reason = dtype_reason(ctx, [m.moment.x, m.output]) or chain_nodes_reason(g, nodes, m.output)
            if reason:
                return reason
            m.plan = {"op": "LpNorm", "axis": mapping[1], "params": (None, None), "removed": nodes}
            return None
        if not self._walk_affine(ctx, df, g, m):
            return "the data never meets its standard deviation through constants only"
        if m.style is not None:           # the walk met σ(s)·… + μ(s): AdaIN
            return self._check_adain(ctx, g, m)
        x, y = (m.moment.x if m.group is None else m.group[0]), m.output
        x_shape, y_shape = ctx.shape(x), ctx.shape(y)
        if y_shape is not None and not _alike(y_shape, x_shape):
            return f"the output {y!r} of shape {list(y_shape)} is not shaped like X {list(x_shape)}"
        nodes = _with_widening_casts(df, g, list({id(n): n for n in m.nodes}.values()), [x])
        reason = dtype_reason(ctx, [x, y]) or _middle_types_reason(ctx, nodes)
        if reason:
            return reason
        # identity Casts on X's side that others read stay for them (the node reads X itself)
        casts = [n for n in nodes if df.is_identity_cast(n)]
        core = [n for n in nodes if not df.is_identity_cast(n)]
        keep = self._shared_casts(g, casts, nodes, y)
        removed = [n for n in nodes if id(n) not in {id(c) for c in keep}]
        reason = chain_nodes_reason(g, removed, y)
        if reason:
            return reason
        if not core:
            return "nothing to fuse"
        op, axis = mapping
        scale, bias = m.scale, m.bias
        if m.group is not None:
            op, axis, params = "GroupNorm", 2, (_channel_fits(scale, x_shape), _channel_fits(bias, x_shape))
        if op == "InstanceNorm?" and m.sources.get("runtime"):
            op, params = "InstanceNorm", (None, None)       # per-(n, c) runtime γ, β
        if op == "InstanceNorm?":
            # spatial statistics: InstanceNorm when the affine is per channel (or absent),
            # else a LayerNorm over the spatial axes with per-position parameters
            sv, bv = _channel_fits(scale, x_shape), _channel_fits(bias, x_shape)
            if sv is not None and bv is not None:
                op, params = "InstanceNorm", (sv, bv)
            else:
                op = "LayerNorm"
        if op == "ChannelNorm":
            params = (None, None)
            if not m.sources.get("runtime"):
                params = (_channel_fits(scale, x_shape), _channel_fits(bias, x_shape))
                if params[0] is None or params[1] is None:
                    return "the affine constants are not per channel: the ChannelNorm kernel takes (C,) scale and bias"
        if op in ("LayerNorm", "RMSNorm"):
            sp = _shape_fits_trailing(scale, x_shape, axis)
            bp = _shape_fits_trailing(bias, x_shape, axis)
            if sp is None or bp is None:
                return "the affine constants do not broadcast over the normalized axes only"
            identity = np.all(np.asarray(scale) == 1.0) and np.all(np.asarray(bias) == 0.0)
            if not identity and not all(isinstance(d, int) for d in x_shape[axis:]):
                return "the normalized axes are not static: the affine cannot become kernel parameters"
            params = (sp, bp)
        m.plan = {"op": op, "axis": axis - len(x_shape), "params": params, "removed": removed}
        return None

    def _check_mvn(self, ctx, g, m):
        x, y = m.moment.x, m.output
        x_shape, y_shape = ctx.shape(x), ctx.shape(y)
        if x_shape is None or y_shape is None or tuple(y_shape) != tuple(x_shape):
            return f"the output {y!r} is not shaped like X {x!r}"
        nodes = _with_widening_casts(Dataflow(ctx), g, list({id(n): n for n in m.nodes}.values()), [x])
        reason = dtype_reason(ctx, [x, y]) or _middle_types_reason(ctx, nodes) or \
            float_attr_reason("eps", m.eps) or chain_nodes_reason(g, nodes, y)
        if reason:
            return reason
        m.plan = {"op": "MeanVarianceNorm", "axis": None, "params": (None, None), "removed": nodes}
        return None

    def _check_adain(self, ctx, g, m):
        shape, rank = ctx.shape(m.moment.x), len(ctx.shape(m.moment.x))
        if rank < 3 or tuple(m.moment.axes) != tuple(range(2, rank)):
            return f"AdaIN statistics over axes {list(m.moment.axes)}, not the spatial axes of (N, C, ...)"
        s_shape = ctx.shape(m.style)
        if s_shape is None or len(s_shape) != rank or tuple(s_shape[:2]) != tuple(shape[:2]):
            return f"style {m.style!r} is not (N, C, ...) like the content"
        if ctx.shape(m.output) is not None and tuple(ctx.shape(m.output)) != tuple(shape):
            return f"the output {m.output!r} is not shaped like the content"
        nodes = _with_widening_casts(Dataflow(ctx), g, list({id(n): n for n in m.nodes}.values()),
                                     [m.moment.x, m.style])
        reason = dtype_reason(ctx, [m.moment.x, m.style, m.output]) or chain_nodes_reason(g, nodes, m.output)
        if reason:
            return reason
        m.plan = {"op": "AdaIN", "axis": 2, "params": (None, None), "removed": nodes}
        return None

    @staticmethod
    def _shared_casts(g, casts, nodes, y):
        """The Casts of `casts` whose output is read outside `nodes` (or is a graph output)."""
        ids = {id(n) for n in nodes}
        keep, changed = [], True
        while changed:
            changed = False
            for c in casts:
                if any(c is k for k in keep):
                    continue
                o = c.output[0]
                if o == y:
                    continue
                readers = g.consumers.get(o, [])
                if o in g.outputs or any(id(r) not in ids or any(r is k for k in keep) for r in readers):
                    keep.append(c)
                    changed = True
        return keep

    def rewrite(self, ctx, m):
        plan = m.plan
        op, (scale, bias) = plan["op"], plan["params"]
        x = m.moment.x if m.group is None else m.group[0]
        if op == "AdaIN":
            self._replace(ctx, m, make_node("AdaIN", [x, m.style], [m.output],
                                            fused_name(ctx, plan["removed"], "AdaIN"), epsilon=float(m.eps)))
            return
        if op == "MeanVarianceNorm":
            self._replace(ctx, m, make_node(op, [x], [m.output], fused_name(ctx, plan["removed"], op),
                                            axes=list(m.moment.axes), epsilon=float(m.eps)))
            return
        if op == "LpNorm":
            # (a zero vector is 0 / 0 in the model: NaN, which nan_on_zero keeps)
            self._replace(ctx, m, make_node("LpNorm", [x], [m.output], fused_name(ctx, plan["removed"], "LpNorm"),
                                            p=2, axis=plan["axis"], nan_on_zero=1))
            return
        dtype = param_dtype(ctx.elem_type(x))
        inputs = [x]
        is_one = np.all(np.asarray(scale) == 1.0)
        is_zero = np.all(np.asarray(bias) == 0.0)
        x_shape = ctx.shape(x)
        sources = {k: v for k, v in m.sources.items() if k in ("scale", "bias")} \
            if "dropped" not in m.sources else {}
        if "runtime" in m.sources:
            sources = {k: v for k, v in m.sources.items() if k in ("scale", "bias")}
        if op == "GroupNorm":
            C = x_shape[1]
            inputs += [ctx.add_constant(x + "_gn_scale", np.broadcast_to(scale, (C,)).astype(dtype)),
                       ctx.add_constant(x + "_gn_bias", np.broadcast_to(bias, (C,)).astype(dtype))]
        elif op == "InstanceNorm" and m.sources.get("runtime"):
            inputs += [m.sources["scale"]] + ([m.sources["bias"]] if "bias" in m.sources else [])
        elif op == "ChannelNorm" and m.sources.get("runtime"):
            # per-channel runtime tensors ((C, 1, ...) or (1, C, 1, ...)): the kernel call reads them as (C,)
            inputs += [m.sources.get("scale", ""), m.sources.get("bias", "")]
        elif op == "ChannelNorm":
            C = x_shape[1]
            inputs += [ctx.add_constant(x + "_cn_scale", scale.astype(dtype)) if not is_one else "",
                       ctx.add_constant(x + "_cn_bias", bias.astype(dtype)) if not is_zero else ""]
        elif op == "InstanceNorm":
            C = x_shape[1]
            inputs += [ctx.add_constant(x + "_in_scale", np.broadcast_to(scale, (C,)).astype(dtype)),
                       ctx.add_constant(x + "_in_bias", np.broadcast_to(bias, (C,)).astype(dtype))]
        else:
            norm = tuple(x_shape[plan["axis"]:])

            def param(key, value):
                src = sources.get(key)
                if src is not None and src not in ctx.constants:
                    return src          # a runtime tensor shaped like the normalized axes
                if src is not None and tuple(ctx.constants[src].shape) == norm and \
                        ctx.constants[src].dtype == dtype:
                    return src
                return ctx.add_constant(x + "_" + key, np.ascontiguousarray(np.broadcast_to(value, norm)).astype(dtype))
            has_scale = not is_one or "scale" in sources
            has_bias = not is_zero or "bias" in sources
            inputs.append(param("scale", scale) if has_scale or (op == "LayerNorm" and has_bias) else "")
            if op == "LayerNorm":
                inputs.append(param("bias", bias) if has_bias else "")
        attrs = {"epsilon": float(m.eps)}
        if op in ("LayerNorm", "RMSNorm"):
            attrs["axis"] = plan["axis"]
        if op == "GroupNorm":
            attrs["num_groups"] = m.group[1]
        if op == "ChannelNorm":
            attrs["mode"] = "rms" if m.moment.kind == "raw" else "layer"
        self._replace(ctx, m, make_node(op, inputs, [m.output], fused_name(ctx, plan["removed"], op), **attrs))

    def _replace(self, ctx, m, new):
        op = new.op_type
        removed = ctx.in_graph_order(m.plan["removed"])
        ctx.replace_nodes(removed, [new])
        spelling = "-".join(n.op_type for n in removed)
        ctx.report.fused.append({
            "pass": self.name, "op": f"{op} by statistics ({m.moment.kind})", "pattern": spelling,
            "nodes": [n.name for n in removed], "normrt_op": op, "normrt_node": new.name,
            "kernel": "rms_norm_2d" if op == "ChannelNorm" and m.moment.kind == "raw" else NORM_OPS[op].kernel,
            "activation": None, "residual": False,
            "statistics": {"kind": m.moment.kind, "axes": list(m.moment.axes), "epsilon": float(m.eps)},
        })
