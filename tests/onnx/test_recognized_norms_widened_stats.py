"""recognized_norms on statistics computed at another precision than the data.

torch's decompositions of `x.var()`, `x.std()` and `torch.var_mean` on a float16 / bfloat16
tensor (what the dynamo exporter writes for hand-written LayerNorm, GroupNorm, InstanceNorm
code in a `.half()` model) compute the statistics from Cast(X, float) and Cast them back
down, while the data (X - mean) stays in half:

    X16 ─► Cast(float) ─► ReduceMean ─► Sub ─► Mul ─► ReduceMean(keepdims=0) ─► Reshape ─► Cast(f16)
     └──────────────────────────── Sub(X16, mean) ──────────────────────── Div(·, Sqrt(· + eps)) ─► Y

hypothesis generates these (each statistic in the data's type or widened, keepdims or a
view back, ReduceMean or ReduceSum / n, Div or Mul by a reciprocal, an affine or not) for
LayerNorm, RMSNorm, InstanceNorm, GroupNorm and X / ||X|| spellings (recognized_norms) and
AdaIN with a biased or unbiased variance (the adain pass, `_stats`), in float16, bfloat16
and float32 data (float64 statistics); each must become one normrt node reading X that
matches the model's float64 twin. Look-alikes stay unfused and correct: statistics of X
rounded down first (a lossy Cast is not the same values), and of another tensor.
"""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import DrawnGraph
from half_models import HALF_NP, assert_matches_float64, norm_nodes, statistics_left

F, D = TensorProto.FLOAT, TensorProto.DOUBLE
NP = {F: np.dtype(np.float32), D: np.dtype(np.float64), **HALF_NP}
# (the data's type, the type the statistics are computed in)
PRECISIONS = [(TensorProto.FLOAT16, F), (TensorProto.BFLOAT16, F), (TensorProto.FLOAT16, D), (F, D)]
SETTINGS = settings(max_examples=int(os.environ.get("NORMRT_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class Graph(DrawnGraph):
    def __init__(self, draw, shape, data_type, wide_type):
        super().__init__(draw, shape, data_type, NP)
        self.data, self.wide = data_type, wide_type
        self.extra_inputs, self.feeds = [], {}
        self.sums = True        # means may be spelled ReduceSum / n

    def axes(self, axes):
        return self.const(np.array(axes), "int")

    def widen(self, v):
        return self.node("Cast", [v], to=self.wide)

    def mean(self, v, axes, elem):
        """mean of v (of type elem) over axes, keepdims-shaped: ReduceMean or ReduceSum / n,
        keepdims=1 or keepdims=0 viewed back (torch.var_mean's decomposition)."""
        keep = self.draw(st.booleans())
        if not self.sums or self.draw(st.booleans()):
            r = self.node("ReduceMean", [v, self.axes(axes)], keepdims=int(keep))
        else:
            n = int(np.prod([self.shape[a] for a in axes]))
            r = self.node("Div", [self.node("ReduceSum", [v, self.axes(axes)], keepdims=int(keep)),
                                  self.const(float(n), elem)])
        if keep:
            return r
        kept = [1 if i in axes else d for i, d in enumerate(self.shape)]
        return self.node("Reshape", [r, self.axes(kept)])

    def statistic_source(self, x):
        """X itself, or X widened (its statistics then come back down to the data's type)."""
        return (self.widen(x), True) if self.draw(st.booleans()) else (x, False)

    def back(self, v, widened):
        return self.node("Cast", [v], to=self.data) if widened else v

    def variance(self, x, axes):
        src, widened = self.statistic_source(x)
        elem = self.wide if widened else self.data
        d = self.node("Sub", [src, self.mean(src, axes, elem)])
        sq = self.node("Mul", [d, d]) if self.draw(st.booleans()) else self.node("Pow", [d, self.const(2.0, elem)])
        return self.back(self.mean(sq, axes, elem), widened)

    def raw_moment(self, x, axes):
        src, widened = self.statistic_source(x)
        elem = self.wide if widened else self.data
        return self.back(self.mean(self.node("Pow", [src, self.const(2.0, elem)]), axes, elem), widened)

    def centring_mean(self, x, axes):
        src, widened = self.statistic_source(x)
        return self.back(self.mean(src, axes, self.wide if widened else self.data), widened)

    def normalize(self, data, second_moment, eps):
        t = self.node("Add", [second_moment, self.const(eps)])
        if self.draw(st.booleans()):
            return self.node("Div", [data, self.node("Sqrt", [t])])
        return self.node("Mul", [data, self.node("Reciprocal", [self.node("Sqrt", [t])])])

    def affine(self, y, param_shape, bias=True):
        if self.draw(st.booleans()):
            y = self.node("Mul", [y, self.const(self.rng.uniform(0.5, 1.5, param_shape))])
        if bias and self.draw(st.booleans()):
            y = self.node("Add", [y, self.const(self.rng.uniform(-1, 1, param_shape))])
        return y

    def model(self, y, x_shape=None):
        x_shape = list(x_shape or self.shape)
        graph = helper.make_graph(self.nodes, "g",
                                  [helper.make_tensor_value_info("x", self.data, x_shape)] + self.extra_inputs,
                                  [helper.make_tensor_value_info(y, self.data, x_shape)], self.inits)
        self.feeds["x"] = (self.rng.standard_normal(x_shape) * 3 + 1).astype(NP[self.data])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@st.composite
def widened_case(draw):
    """(model, Graph, expected normrt ops) of a normalization whose statistics may be widened."""
    kind = draw(st.sampled_from(["layer", "rms", "instance", "group", "l2"]))
    data_type, wide_type = draw(st.sampled_from(PRECISIONS))
    if kind in ("instance", "group"):
        g_count = draw(st.integers(1, 3))
        shape = (draw(st.integers(1, 2)), g_count * draw(st.integers(1, 3)), draw(st.integers(2, 4)),
                 draw(st.integers(2, 5)))
    else:
        shape = tuple(draw(st.integers(2, 7)) for _ in range(draw(st.integers(2, 4))))
    g = Graph(draw, shape, data_type, wide_type)
    eps = float(draw(st.sampled_from([1e-5, 1e-3])))
    rank = len(shape)
    if kind == "l2":                    # X / ||X||: the norm taken of widened X, Cast back
        src, widened = g.statistic_source("x")
        norm = g.back(g.node("ReduceL2", [src, g.axes([rank - 1])], keepdims=1), widened)
        return g.model(g.node("Div", ["x", norm])), g, {"LpNorm"}
    if kind == "group":                 # X viewed as (N, G, -1), normalized, viewed back, per channel
        n, c = shape[:2]
        xg = g.node("Reshape", ["x", g.axes([n, g_count, -1])])
        g.shape = (n, g_count, int(np.prod(shape[1:])) // g_count)
        data = g.node("Sub", [xg, g.centring_mean(xg, [2])])
        normed = g.normalize(data, g.variance(xg, [2]), eps)
        g.shape = shape
        back = g.node("Reshape", [normed, g.axes(list(shape))])
        return g.model(g.affine(back, (c, 1, 1))), g, {"GroupNorm"}
    axes = list(range(2, rank)) if kind == "instance" else [rank - 1]
    param_shape = (shape[1], 1, 1) if kind == "instance" else shape[-1:]
    if kind == "rms":
        y = g.normalize("x", g.raw_moment("x", axes), eps)
        return g.model(g.affine(y, param_shape, bias=False)), g, {"RMSNorm"}
    data = g.node("Sub", ["x", g.centring_mean("x", axes)])
    y = g.normalize(data, g.variance("x", axes), eps)
    return g.model(g.affine(y, param_shape)), g, {"InstanceNorm", "LayerNorm"}


def _run(model, g):
    sess = normrt.InferenceSession(model)
    got = sess.run(None, g.feeds)
    # the model rounds its statistics to the data's type before the division; normrt keeps them in float64
    assert_matches_float64(got, model, g.feeds, ulps=2, f32_rel=2.0 ** -18)
    return sess


@SETTINGS
@given(widened_case())
def test_widened_statistics_become_one_node_reading_x(case):
    model, g, expected = case
    sess = _run(model, g)
    found = norm_nodes(sess.optimized_model)
    assert len(found) == 1 and found[0] in expected, (found, [n.op_type for n in model.graph.node])
    assert statistics_left(sess.optimized_model) == []
    left = [n.op_type for n in sess.optimized_model.graph.node if n.domain != "normrt"]
    assert left == [], left             # the widening and narrowing Casts went with the match
    (node,) = [n for n in sess.optimized_model.graph.node if n.domain == "normrt"]
    assert node.input[0] == "x", list(node.input)


@st.composite
def widened_look_alike(draw):
    """A LayerNorm whose variance is of X rounded to a narrower type, or of another tensor."""
    what = draw(st.sampled_from(["rounded", "other"]))
    shape = (2, 3, draw(st.integers(3, 9)))
    if what == "rounded":               # float32 X, its variance of Cast(Cast(X, float16), float)
        g = Graph(draw, shape, F, TensorProto.FLOAT16)
        src = g.node("Cast", [g.node("Cast", ["x"], to=TensorProto.FLOAT16)], to=F)
    else:                               # the variance of another input z, widened
        g = Graph(draw, shape, TensorProto.FLOAT16, F)
        g.extra_inputs.append(helper.make_tensor_value_info("z", g.data, list(shape)))
        g.feeds["z"] = g.rng.standard_normal(shape).astype(NP[g.data])
        src = g.widen("z")
    d = g.node("Sub", [src, g.mean(src, [2], F)])
    var = g.node("ReduceMean", [g.node("Mul", [d, d]), g.axes([2])], keepdims=1)
    if what == "other":
        var = g.node("Cast", [var], to=g.data)
    data = g.node("Sub", ["x", g.node("ReduceMean", ["x", g.axes([2])], keepdims=1)])
    return g.model(g.normalize(data, var, 1e-5)), g


@SETTINGS
@given(widened_look_alike())
def test_statistics_of_other_values_stay_unfused(case):
    model, g = case
    sess = normrt.InferenceSession(model)
    got = sess.run(None, g.feeds)
    assert norm_nodes(sess.optimized_model) == []
    if g.data == F:         # the model as written, X's rounding to float16 in its variance included
        want = ReferenceEvaluator(model).run(None, g.feeds)[0]
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
    else:
        assert_matches_float64(got, model, g.feeds, ulps=2, f32_rel=2.0 ** -18)


@st.composite
def widened_adain_case(draw):
    """AdaIN written by hand, as dynamo writes torch's float16 `.var()` (unbiased or not, the
    statistics of content and style each maybe widened to float32 and Cast back)."""
    data_type, wide_type = draw(st.sampled_from(PRECISIONS))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    shape, s_shape = (n, c, draw(st.integers(2, 4)), draw(st.integers(2, 5))), \
        (n, c, draw(st.integers(2, 4)), draw(st.integers(2, 5)))
    g = Graph(draw, shape, data_type, wide_type)
    g.sums = False              # the adain pass reads the exporters' ReduceMean means
    g.extra_inputs.append(helper.make_tensor_value_info("s", data_type, list(s_shape)))
    g.feeds["s"] = (g.rng.standard_normal(s_shape) * 2 + 1).astype(NP[data_type])
    unbiased, eps = draw(st.booleans()), float(draw(st.sampled_from([1e-5, 1e-3])))

    def stats(v, v_shape):
        g.shape = v_shape
        count = v_shape[2] * v_shape[3]
        src, widened = g.statistic_source(v)
        elem = g.wide if widened else g.data
        d = g.node("Sub", [src, g.node("ReduceMean", [src, g.axes([2, 3])], keepdims=1)])
        var = g.mean(g.node("Mul", [d, d]), [2, 3], elem)
        if unbiased:                    # var * n / (n - 1), the constants in the statistics' type
            var = g.node("Div", [g.node("Mul", [var, g.const(float(count), elem)]), g.const(count - 1.0, elem)])
        std = g.node("Sqrt", [g.node("Add", [g.back(var, widened), g.const(eps)])])
        return g.centring_mean(v, [2, 3]), std

    mean_c, std_c = stats("x", shape)
    mean_s, std_s = stats("s", s_shape)
    g.shape = shape
    normed = g.node("Div", [g.node("Sub", ["x", mean_c]), std_c])
    return g.model(g.node("Add", [g.node("Mul", [normed, std_s]), mean_s])), g


@SETTINGS
@given(widened_adain_case())
def test_widened_adain_statistics_become_one_node(case):
    model, g = case
    sess = _run(model, g)
    assert norm_nodes(sess.optimized_model) == ["AdaIN"], [n.op_type for n in sess.optimized_model.graph.node]
    assert [n.op_type for n in sess.optimized_model.graph.node] == ["AdaIN"]
    assert list(sess.optimized_model.graph.node[0].input) == ["x", "s"]
