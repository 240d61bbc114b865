"""recognized_norms, proven on generated spellings: hypothesis writes each normalization
in random op order and association with `onnx.helper` (Mul by a reciprocal vs Div, Pow vs
Mul, ReduceSum / n vs ReduceMean, keepdims=0 + Unsqueeze / Reshape views, identity Casts,
constants as initializers or Constant nodes, constant vs runtime affine), and checks that
each becomes exactly one normrt node whose result matches onnx.reference on the original
model; look-alikes generated the same way stay unfused and correct.

The dtype axis: the same spellings in float16 / bfloat16 (constants, eps, exponents in
half), or in float32 inside a Cast island (x16 -> Cast(float) -> norm -> Cast(half)), each
one half normrt node matching the float64 twin of the model within the output's rounding.
"""
import os

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from half_models import HALF_NP, assert_matches_float64

F = TensorProto.FLOAT
NP = {F: np.dtype(np.float32), **HALF_NP}
# (the norm's arithmetic, the model's inputs and outputs): float32; half; a Cast island
DTYPES = [(F, F), (TensorProto.FLOAT16, TensorProto.FLOAT16), (TensorProto.BFLOAT16, TensorProto.BFLOAT16),
          (F, TensorProto.FLOAT16), (F, TensorProto.BFLOAT16)]
NORM_OPS = ("LayerNorm", "RMSNorm", "ChannelNorm", "InstanceNorm", "GroupNorm", "AdaIN", "LpNorm")
SETTINGS = settings(max_examples=int(os.environ.get("NORMRT_HYPOTHESIS_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Spelling:
    """Builds one graph: `value(...)` emits nodes, constants go to initializers or Constant nodes."""

    def __init__(self, draw, shape, dtypes=(F, F)):
        self.draw, self.shape = draw, tuple(shape)
        self.elem, self.io = dtypes          # the norm's element type, the model's inputs/outputs'
        self.island = self.io != self.elem
        self.x_shape = self.shape
        self.nodes, self.inits, self.inputs, self.feeds = [], [], [], {}
        self.n = 0
        self.rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))

    def fresh(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def node(self, op, inputs, **attrs):
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value, dtype=None):
        value = np.asarray(value, NP[self.elem] if dtype is None else dtype)
        name = self.fresh("c")
        if self.draw(st.booleans()):
            self.inits.append(numpy_helper.from_array(value, name))
        else:
            self.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                               value=numpy_helper.from_array(value)))
        return name

    def maybe_cast(self, name):
        """An identity Cast (float -> float) now and then: exporters put them around statistics."""
        return self.node("Cast", [name], to=self.elem) if self.draw(st.integers(0, 3)) == 0 else name

    def binary(self, op, a, b):
        """a op b, the operands swapped at random for commutative ops."""
        if op in ("Add", "Mul") and self.draw(st.booleans()):
            a, b = b, a
        return self.node(op, [a, b])

    def runtime(self, shape, data=False):
        """A graph input: a runtime parameter in the norm's type, or `data` like X (Cast up in an island)."""
        name = self.fresh("w_in")
        elem = self.io if data else self.elem
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        self.feeds[name] = self.rng.standard_normal(shape).astype(NP[elem])
        return self.node("Cast", [name], to=self.elem) if data and self.island else name

    # -- statistics -----------------------------------------------------------
    def mean(self, v, axes):
        """mean of v over axes, keepdims-shaped (it is subtracted from v / divides it)."""
        keep = self.draw(st.booleans())
        n = int(np.prod([self.shape[a] for a in axes]))
        # a half 1/n is not 1/n (the model's mean is off by its rounding): only where it is exact
        exact = float(np.asarray(1.0 / n, NP[self.elem])) == 1.0 / n
        kind = self.draw(st.sampled_from(["ReduceMean", "sum_div"] + (["sum_mul"] if exact else [])))
        ax = self.const(np.array(axes, np.int64), np.int64)
        if kind == "ReduceMean":
            r = self.node("ReduceMean", [v, ax], keepdims=int(keep))
        else:
            s = self.node("ReduceSum", [v, ax], keepdims=int(keep))
            r = self.node("Div", [s, self.const(float(n))]) if kind == "sum_div" \
                else self.binary("Mul", s, self.const(1.0 / n))
        return r if keep else self.unview(r, axes)

    def unview(self, r, axes):
        """A keepdims=0 statistic viewed back to the keepdims shape (Unsqueeze or Reshape)."""
        if self.draw(st.booleans()):
            return self.node("Unsqueeze", [r, self.const(np.array(axes, np.int64), np.int64)])
        kd = [1 if i in axes else d for i, d in enumerate(self.shape)]
        return self.node("Reshape", [r, self.const(np.array(kd, np.int64), np.int64)])

    def square(self, v):
        if self.draw(st.booleans()):
            return self.node("Pow", [v, self.const(2.0)])
        return self.node("Mul", [v, v])

    def second_moment(self, v, axes):
        if self.draw(st.integers(0, 3)) == 0:     # ReduceSumSquare / n
            keep = self.draw(st.booleans())
            n = int(np.prod([self.shape[a] for a in axes]))
            r = self.node("ReduceSumSquare", [v, self.const(np.array(axes, np.int64), np.int64)], keepdims=int(keep))
            r = self.node("Div", [r, self.const(float(n))])
            return r if keep else self.unview(r, axes)
        return self.mean(self.maybe_cast(self.square(v)), axes)

    def shifted(self, m2, eps):
        return self.maybe_cast(self.binary("Add", m2, self.const(eps)))

    def normalize(self, data, t):
        """data / sqrt(t), in one of the spellings of the inverse square root."""
        form = self.draw(st.sampled_from(["div", "reciprocal", "div_one", "pow", "sqrt_recip"]))
        if form == "div":
            return self.node("Div", [data, self.node("Sqrt", [t])])
        if form == "reciprocal":
            inv = self.node("Reciprocal", [self.node("Sqrt", [t])])
        elif form == "div_one":
            inv = self.node("Div", [self.const(1.0), self.node("Sqrt", [t])])
        elif form == "pow":
            inv = self.node("Pow", [t, self.const(-0.5)])
        else:
            inv = self.node("Sqrt", [self.node("Reciprocal", [t])])
        return self.binary("Mul", data, self.maybe_cast(inv))

    # -- the affine chain --------------------------------------------------------
    def affine(self, n, param_shape, *, bias=True, runtime_ok=True):
        """A random chain of constant Mul/Div/Add/Sub after n; sometimes a runtime scale first."""
        if runtime_ok and self.draw(st.integers(0, 4)) == 0:
            return self.binary("Mul", n, self.runtime(param_shape))
        steps = self.draw(st.lists(st.sampled_from(["mul", "div", "add", "sub", "rsub", "neg"] if bias
                                                   else ["mul", "div", "neg"]), max_size=3))
        for step in steps:
            c = self.const(self.rng.uniform(0.5, 1.5, param_shape) * self.rng.choice([-1, 1]))
            if step == "mul":
                n = self.binary("Mul", n, c)
            elif step == "div":
                n = self.node("Div", [n, c])
            elif step == "add":
                n = self.binary("Add", n, c)
            elif step == "sub":
                n = self.node("Sub", [n, c])
            elif step == "rsub":
                n = self.node("Sub", [c, n])
            else:
                n = self.node("Neg", [n])
        return n

    def x(self):
        """The input X as the norm reads it (Cast up from half in an island)."""
        return self.node("Cast", ["x"], to=self.elem) if self.island else "x"

    def model(self, y, opset=18):
        if self.island:
            y = self.node("Cast", [y], to=self.io)
        x_info = helper.make_tensor_value_info("x", self.io, list(self.x_shape))
        graph = helper.make_graph(self.nodes, "g", [x_info] + self.inputs,
                                  [helper.make_tensor_value_info(y, self.io, list(self.x_shape))], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, sb):
    feeds = dict(sb.feeds, x=(sb.rng.standard_normal(sb.x_shape) * 3 + 1).astype(NP[sb.io]))
    sess = normrt.InferenceSession(model)
    got = sess.run(None, feeds)
    if sb.io == F:
        want = ReferenceEvaluator(model).run(None, feeds)[0]
        np.testing.assert_allclose(got[0], want, rtol=2e-4, atol=2e-4)
    else:
        # a runtime scale the kernel cannot read stays after it: one more rounding in half
        assert_matches_float64(got, model, feeds, ulps=2)
    onnx.checker.check_model(sess.optimized_model)
    return sess


def _norm_nodes(sess):
    return [n.op_type for n in sess.optimized_model.graph.node if n.domain == "normrt" and n.op_type in NORM_OPS]


@st.composite
def norm_case(draw):
    """(model, Spelling, expected normrt op) of a LayerNorm / RMSNorm / InstanceNorm spelling."""
    kind = draw(st.sampled_from(["layer", "rms", "instance", "group", "adain", "l2", "channel_layer",
                                 "channel_rms"]))
    if kind == "adain":
        return _adain_case(draw)
    if kind == "l2":
        return _l2_case(draw)
    if kind == "group":
        groups = draw(st.integers(1, 3))
        shape = (draw(st.integers(1, 2)), groups * draw(st.integers(1, 3)), draw(st.integers(2, 4)), draw(st.integers(2, 4)))
        return _group_case(draw, shape, groups)
    if kind == "instance":
        shape = (draw(st.integers(1, 2)), draw(st.integers(2, 4)), draw(st.integers(2, 5)), draw(st.integers(2, 5)))
        axes = [2, 3]
        param_shape = (shape[1], 1, 1)
    elif kind.startswith("channel"):
        # LayerNorm2d / PixelNorm: statistics over axis 1 at each position, per-channel affine
        # ((C, 1, ...) or (1, C, 1, ...), constant or runtime)
        rank = draw(st.integers(3, 4))
        shape = tuple(draw(st.integers(2, 5)) for _ in range(rank))
        axes = [1]
        param_shape = ((shape[1],) + (1,) * (rank - 2)) if draw(st.booleans()) else \
            ((1, shape[1]) + (1,) * (rank - 2))
    else:
        rank = draw(st.integers(2, 4))
        shape = tuple(draw(st.integers(2, 6)) for _ in range(rank))
        k = draw(st.integers(1, min(2, rank - 1)))
        axes = list(range(rank - k, rank))
        param_shape = shape[rank - k:][-draw(st.integers(1, k)):]
    sb = Spelling(draw, shape, draw(st.sampled_from(DTYPES)))
    x = sb.maybe_cast(sb.x())
    if kind in ("rms", "channel_rms"):
        data = sb.maybe_cast(x)
        m2 = sb.second_moment(x, axes)
    else:
        data = sb.node("Sub", [x, sb.mean(x, axes)])
        m2 = sb.second_moment(data, axes)
    n = sb.normalize(data, sb.shifted(m2, float(draw(st.sampled_from([1e-5, 1e-6, 1e-3])))))
    if kind == "instance" and draw(st.booleans()):
        # conditional instance norm: per-sample γ, β of shape (N, C) viewed as (N, C, 1, 1)
        gamma, beta = (sb.node("Unsqueeze", [sb.runtime(shape[:2]), sb.const(np.array([2, 3], np.int64), np.int64)])
                       for _ in range(2))
        y = sb.binary("Add", sb.binary("Mul", n, gamma), beta)
        sb.conditional = True            # the kernel takes (N, C) γ, β: nothing may stay
        return sb.model(y), sb, {"InstanceNorm"}
    y = sb.affine(n, param_shape, bias=kind != "rms", runtime_ok=kind != "instance")
    y = sb.maybe_cast(y)
    expected = {"layer": {"LayerNorm"}, "rms": {"RMSNorm"}, "instance": {"InstanceNorm"},
                "channel_layer": {"ChannelNorm"}, "channel_rms": {"ChannelNorm"}}[kind]
    if kind == "layer" and len(shape) == 4 and axes == [2, 3]:
        expected = {"LayerNorm", "InstanceNorm"}     # spatial statistics: either kernel is exact
    return sb.model(y), sb, expected


def _adain_case(draw):
    """AdaIN in one of its associations: σ(s)·(x − μ(x))/σ(x) + μ(s), the operands in any order."""
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    shape, s_shape = (n, c, draw(st.integers(2, 4)), draw(st.integers(2, 4))), \
        (n, c, draw(st.integers(2, 4)), draw(st.integers(2, 4)))
    sb = Spelling(draw, shape, draw(st.sampled_from(DTYPES)))
    style = sb.runtime(s_shape, data=True)
    eps = float(draw(st.sampled_from([1e-5, 1e-3])))

    def stats(v, shape):
        sb.shape = shape
        mean = sb.mean(v, [2, 3])
        d = sb.node("Sub", [v, mean])
        std = sb.node("Sqrt", [sb.shifted(sb.second_moment(d, [2, 3]), eps)])
        return mean, d, std

    _, dx, sx = stats(sb.x(), shape)
    my, _, sy = stats(style, s_shape)
    sb.shape = shape
    form = draw(st.sampled_from(["product", "ratio", "normalized"]))
    if form == "product":            # σ(s)·(x − μ)/σ(x) + μ(s)
        y = sb.binary("Add", sb.node("Div", [sb.binary("Mul", sy, dx), sx]), my)
    elif form == "ratio":            # (σ(s)/σ(x))·(x − μ) + μ(s)
        y = sb.binary("Add", sb.binary("Mul", sb.node("Div", [sy, sx]), dx), my)
    else:                            # normalized first (any inverse spelling), then · σ(s) + μ(s)
        n = sb.node("Div", [dx, sx]) if draw(st.booleans()) else \
            sb.binary("Mul", dx, sb.node("Reciprocal", [sx]))
        y = sb.binary("Add", sb.binary("Mul", n, sy), my)
    return sb.model(y), sb, {"AdaIN"}


def _l2_case(draw):
    """X / ReduceL2(X, [a]) (CLIP's h / h.norm(dim=-1, keepdim=True)), keepdims or a view back."""
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.integers(2, 5)) for _ in range(rank))
    axis = draw(st.integers(0, rank - 1))
    sb = Spelling(draw, shape, draw(st.sampled_from(DTYPES)))
    x = sb.maybe_cast(sb.x())
    keep = draw(st.booleans())
    norm = sb.node("ReduceL2", [x, sb.const(np.array([axis], np.int64), np.int64)], keepdims=int(keep))
    if not keep:
        norm = sb.unview(norm, [axis])
    return sb.model(sb.node("Div", [x, norm])), sb, {"LpNorm"}


def _group_case(draw, shape, groups):
    """GroupNorm by hand: X viewed as (N, G, -1) or (N, G, C/G, H, W), statistics over all but the
    first two axes, normalized, viewed back, then a per-channel affine."""
    n, c, h, w = shape
    sb = Spelling(draw, shape, draw(st.sampled_from(DTYPES)))
    view = (n, groups, -1) if draw(st.booleans()) else (n, groups, c // groups, h, w)
    real = (n, groups, c // groups * h * w) if len(view) == 3 else view
    xg = sb.node("Reshape", [sb.maybe_cast(sb.x()), sb.const(np.array(view, np.int64), np.int64)])
    sb.shape = real                       # the statistics see the grouped view
    axes = list(range(2, len(real)))
    data = sb.node("Sub", [xg, sb.mean(xg, axes)])
    normed = sb.normalize(data, sb.shifted(sb.second_moment(data, axes), 1e-5))
    sb.shape = shape
    back = sb.node("Reshape", [normed, sb.const(np.array(shape, np.int64), np.int64)])
    y = sb.affine(back, (c, 1, 1), runtime_ok=False)
    return sb.model(sb.maybe_cast(y)), sb, {"GroupNorm"}


@SETTINGS
@given(norm_case())
def test_every_generated_spelling_becomes_one_normrt_node(case):
    model, sb, expected = case
    sess = _run(model, sb)
    found = _norm_nodes(sess)
    assert len(found) == 1 and found[0] in expected, (found, [n.op_type for n in model.graph.node])
    # nothing of the statistics is left: only a runtime scale the kernel cannot read as it is
    # (not shaped like the normalized axes) stays after the node, with the Cast after it
    left = [n.op_type for n in sess.optimized_model.graph.node if n.domain != "normrt"]
    runtime_may_stay = sb.feeds and not getattr(sb, "conditional", False)
    assert set(left) <= ({"Mul", "Cast"} if runtime_may_stay else set()), left
    if not left:            # half, or an island: the one node reads X in the model's dtype
        (node,) = [n for n in sess.optimized_model.graph.node if n.domain == "normrt"]
        assert node.input[0] == "x", list(node.input)


@st.composite
def look_alike(draw):
    """(model, Spelling, reason fragment or None) of a function that only looks like a normalization."""
    what = draw(st.sampled_from(["eps_outside", "axes_differ", "no_centring", "other_tensor",
                                 "channel_eps_outside"]))
    shape = (2, 3, 4, 5)
    sb = Spelling(draw, shape)
    x = "x"
    if what == "eps_outside":            # (x - mean) / (sqrt(var) + eps)
        d = sb.node("Sub", [x, sb.mean(x, [3])])
        std = sb.node("Sqrt", [sb.second_moment(d, [3])])
        y = sb.node("Div", [d, sb.binary("Add", std, sb.const(1e-5))])
        return sb.model(y), sb, "outside the root"
    if what == "axes_differ":            # centred over the last axis, variance over the last two
        d = sb.node("Sub", [x, sb.mean(x, [3])])
        y = sb.normalize(d, sb.shifted(sb.second_moment(d, [2, 3]), 1e-5))
        return sb.model(y), sb, "do not line up"
    if what == "no_centring":            # x / centred std: scaling without centring
        d = sb.node("Sub", [x, sb.mean(x, [3])])
        y = sb.normalize(x, sb.shifted(sb.second_moment(d, [3]), 1e-5))
        return sb.model(y), sb, "without centring"
    if what == "other_tensor":           # x / sqrt(mean(z²) + eps) with z another input
        z = sb.runtime(shape)
        y = sb.normalize(x, sb.shifted(sb.second_moment(z, [3]), 1e-5))
        return sb.model(y), sb, None
    # LayerNorm2d's look-alike: channel-axis statistics with eps outside the root
    d = sb.node("Sub", [x, sb.mean(x, [1])])
    std = sb.node("Sqrt", [sb.second_moment(d, [1])])
    y = sb.node("Div", [d, sb.binary("Add", std, sb.const(1e-5))])
    return sb.model(y), sb, "outside the root"


@SETTINGS
@given(look_alike())
def test_generated_look_alikes_stay_unfused_and_correct(case):
    model, sb, reason = case
    sess = _run(model, sb)
    assert _norm_nodes(sess) == []
    mvn = [n for n in sess.optimized_model.graph.node if n.op_type == "MeanVarianceNorm"]
    if reason == "outside the root" and mvn:
        return          # exactly ONNX MVN's function: mvn_decomposed took it (its own kernel)
    if reason is not None:
        reasons = [e["reason"] for e in sess.report["refused"] if e["pass"] == "recognized_norms"]
        assert any(reason in r for r in reasons), reasons
