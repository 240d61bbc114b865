"""cast_islands: Cast(half -> float32) -> norm -> Cast(-> half) becomes one normrt node reading and
writing the half values, checked against the float64 twin of the model; each refusal keeps the
float32 norm on its kernel between the Casts, and still computes the model's numbers."""
import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import normrt
from half_models import assert_matches_float64, norm_nodes, statistics_left

F, D, H, BF = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16
NP = {F: np.float32, D: np.float64, H: np.float16, BF: ml_dtypes.bfloat16, TensorProto.INT64: np.int64}
HALVES = pytest.mark.parametrize("half", [H, BF], ids=["float16", "bfloat16"])
RNG = np.random.default_rng(11)
PASS = "cast_islands"


class Island:
    """A graph under construction: `up` / `down` Casts, norms, constants."""

    def __init__(self, half, shape, inner=F):
        self.half, self.inner, self.shape = half, inner, tuple(shape)
        self.nodes, self.inits, self.inputs, self.outputs, self.feeds = [], [], [], [], {}
        self.n = 0

    def fresh(self, base):
        self.n += 1
        return f"{base}{self.n}"

    def node(self, op, inputs, n_out=1, **attrs):
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.fresh(op), **attrs))
        return outs[0] if n_out == 1 else outs

    def input(self, name, shape=None, elem=None, scale=3.0, shift=1.0):
        shape = self.shape if shape is None else shape
        elem = self.half if elem is None else elem
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        self.feeds[name] = (RNG.standard_normal(shape) * scale + shift).astype(NP[elem])
        return name

    def const(self, value, elem):
        name = self.fresh("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value).astype(NP[elem]), name))
        return name

    def up(self, name, to=None):
        return self.node("Cast", [name], to=self.inner if to is None else to)

    def down(self, name, to=None):
        return self.node("Cast", [name], to=self.half if to is None else to)

    def weights(self, n, elem=None, cast=False):
        """(scale, bias) of n values: inner-typed constants, or half ones Cast up (cast=True)."""
        elem = self.inner if elem is None else elem
        s = 1 + 0.5 * RNG.standard_normal(n)
        b = RNG.standard_normal(n)
        if cast:
            return self.up(self.const(s, self.half)), self.up(self.const(b, self.half))
        return self.const(s, elem), self.const(b, elem)

    def output(self, name, elem=None, shape=None):
        self.outputs.append(helper.make_tensor_value_info(name, self.half if elem is None else elem,
                                                          list(self.shape if shape is None else shape)))

    def model(self, opset=21):
        graph = helper.make_graph(self.nodes, "island", self.inputs, self.outputs, self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model, feeds):
    sess = normrt.InferenceSession(model)
    return sess, sess.run(None, feeds)


def graph_ops(sess):
    return [n.op_type for n in sess.optimized_model.graph.node]


def half_node(sess, op, x="x"):
    """The one normrt `op` node, which must read the half X itself."""
    nodes = [n for n in sess.optimized_model.graph.node if n.op_type == op and n.domain == "normrt"]
    assert len(nodes) == 1, graph_ops(sess)
    assert nodes[0].input[0] == x, list(nodes[0].input)
    return nodes[0]


def island_entries(sess):
    return [e for e in sess.report["fused"] if e.get("cast_island")]


# -- islands become one node ----------------------------------------------------------
@HALVES
@pytest.mark.parametrize("cast_weights", [False, True])
def test_layer_norm_island(half, cast_weights):
    """diffusers' FP32LayerNorm: F.layer_norm(x.float(), w.float(), b.float()).to(x.dtype)."""
    b = Island(half, (2, 5, 16))
    s, bias = b.weights(16, cast=cast_weights)
    y = b.down(b.node("LayerNormalization", [b.up(b.input("x")), s, bias], axis=-1, epsilon=1e-5))
    b.output(y)
    model = b.model()
    sess, got = run(model, b.feeds)
    node = half_node(sess, "LayerNorm")
    assert graph_ops(sess) == ["LayerNorm"]
    # the kernel keeps the weights in float32 (Casts on the weights folded first)
    inits = {t.name: t.data_type for t in sess.optimized_model.graph.initializer}
    assert inits[node.input[1]] == F and inits[node.input[2]] == F
    (entry,) = island_entries(sess)
    assert entry["pattern"] == "Cast-LayerNormalization-Cast" and entry["cast_island"] == NP[half].__name__
    assert sess.report["passes"][PASS] == 1
    assert_matches_float64(got, model, b.feeds)


@HALVES
@pytest.mark.parametrize("op", ["GroupNormalization", "InstanceNormalization", "BatchNormalization"])
def test_channel_norm_islands(half, op):
    b = Island(half, (2, 8, 5, 5))
    s, bias = b.weights(8)
    ins = [b.up(b.input("x")), s, bias]
    attrs = {"num_groups": 4} if op == "GroupNormalization" else {}
    if op == "BatchNormalization":
        ins += [b.const(RNG.standard_normal(8), F), b.const(RNG.uniform(0.5, 2, 8), F)]
    b.output(b.down(b.node(op, ins, **attrs)))
    model = b.model()
    sess, got = run(model, b.feeds)
    half_node(sess, op.replace("Normalization", "Norm"))
    assert graph_ops(sess) == [op.replace("Normalization", "Norm")]
    assert_matches_float64(got, model, b.feeds)


@HALVES
def test_decomposed_group_norm_silu_island(half):
    """Cast -> Reshape -> InstanceNormalization -> Reshape -> Mul -> Add -> Sigmoid/Mul (SiLU in
    float32) -> Cast: group_norm_instance, then the SiLU epilogue, then the island."""
    b = Island(half, (1, 8, 6, 6))
    x32 = b.up(b.input("x"))
    r = b.node("Reshape", [x32, b.const([0, 4, -1], TensorProto.INT64)])
    n = b.node("InstanceNormalization", [r, b.const(np.ones(4), F), b.const(np.zeros(4), F)])
    back = b.node("Reshape", [n, b.const([1, 8, 6, 6], TensorProto.INT64)])
    g = b.node("Add", [b.node("Mul", [back, b.const(1 + 0.3 * RNG.standard_normal((8, 1, 1)), F)]),
                       b.const(RNG.standard_normal((8, 1, 1)), F)])
    y = b.node("Mul", [g, b.node("Sigmoid", [g])])
    b.output(b.down(y))
    model = b.model(opset=17)
    sess, got = run(model, b.feeds)
    node = half_node(sess, "GroupNorm")
    assert graph_ops(sess) == ["GroupNorm"]
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "activation")) == b"silu"
    assert_matches_float64(got, model, b.feeds)


@HALVES
def test_silu_after_the_island_fuses_in_half(half):
    """GroupNorm island, then SiLU on the half values: the epilogue fuses onto the half node."""
    b = Island(half, (1, 8, 4, 4))
    s, bias = b.weights(8)
    y = b.down(b.node("GroupNormalization", [b.up(b.input("x")), s, bias], num_groups=2))
    b.output(b.node("Mul", [y, b.node("Sigmoid", [y])]))
    model = b.model()
    sess, got = run(model, b.feeds)
    half_node(sess, "GroupNorm")
    assert graph_ops(sess) == ["GroupNorm"]
    assert_matches_float64(got, model, b.feeds, ulps=2)


def adain_island(half, style_elem=None):
    """σ(s)·(x − μ(x))/σ(x) + μ(s) in float32, the content Cast up from half, the style too
    (style_elem None) or a float32 input."""
    b = Island(half, (1, 4, 5, 5))
    axes = b.const([2, 3], TensorProto.INT64)

    def stats(v):
        mean = b.node("ReduceMean", [v, axes])
        d = b.node("Sub", [v, mean])
        var = b.node("ReduceMean", [b.node("Mul", [d, d]), axes])
        return mean, d, b.node("Sqrt", [b.node("Add", [var, b.const(1e-5, F)])])

    _, dx, sx = stats(b.up(b.input("x")))
    style = b.input("s", elem=style_elem, scale=2.0, shift=0.5)
    ms, _, ss = stats(style if style_elem == F else b.up(style))
    y = b.node("Add", [b.node("Div", [b.node("Mul", [ss, dx]), sx]), ms])
    b.output(b.down(y))
    return b


@HALVES
def test_adain_reads_content_and_style_in_half(half):
    b = adain_island(half)
    model = b.model(opset=18)
    sess, got = run(model, b.feeds)
    node = half_node(sess, "AdaIN")
    assert list(node.input) == ["x", "s"] and graph_ops(sess) == ["AdaIN"]
    assert_matches_float64(got, model, b.feeds, ulps=2)


def test_adain_style_in_float32_is_refused():
    b = adain_island(H, style_elem=F)
    model = b.model(opset=18)
    sess, got = run(model, b.feeds)
    assert norm_nodes(sess.optimized_model) == ["AdaIN"] and not island_entries(sess)
    assert any("not Cast up" in r for r in refused(sess)), refused(sess)
    assert_matches_float64(got, model, b.feeds, ulps=2)


@HALVES
def test_residual_summed_in_float32_is_refused(half):
    """LayerNorm(float(x) + float(r)): the island sums in float32, the half kernel would round
    x + r to half before normalizing (the half model's own sum): the float32 norm stays."""
    b = Island(half, (2, 4, 8))
    s, bias = b.weights(8)
    h = b.node("Add", [b.up(b.input("x")), b.up(b.input("r"))])
    b.output(b.down(b.node("LayerNormalization", [h, s, bias], axis=-1)))
    model = b.model()
    sess, got = run(model, b.feeds)
    assert norm_nodes(sess.optimized_model) == ["LayerNorm"] and not island_entries(sess)
    assert any("residual" in r for r in refused(sess)), refused(sess)
    assert_matches_float64(got, model, b.feeds)


@HALVES
def test_llama_weight_after_the_island(half):
    """LLaMA's RMSNorm: x.float() -> x * rsqrt(mean(x²) + eps) -> .to(half) -> weight * (.)."""
    b = Island(half, (3, 32))
    x32 = b.up(b.input("x"))
    ms = b.node("ReduceMean", [b.node("Pow", [x32, b.const(2.0, F)]), b.const([-1], TensorProto.INT64)])
    inv = b.node("Reciprocal", [b.node("Sqrt", [b.node("Add", [ms, b.const(1e-6, F)])])])
    w = b.const(1 + 0.5 * RNG.standard_normal(32), half)
    b.output(b.node("Mul", [w, b.down(b.node("Mul", [x32, inv]))]))
    model = b.model(opset=18)
    sess, got = run(model, b.feeds)
    node = half_node(sess, "RMSNorm")
    assert graph_ops(sess) == ["RMSNorm"] and island_entries(sess)[0]["pattern"].endswith("-Cast-Mul")
    scale = {t.name: numpy_helper.to_array(t) for t in sess.optimized_model.graph.initializer}[node.input[1]]
    assert scale.dtype == np.float32
    np.testing.assert_array_equal(scale, numpy_helper.to_array(b.inits[-1]).astype(np.float32))
    # the model rounds to half before the weight and after it: the node rounds once
    assert_matches_float64(got, model, b.feeds, ulps=2)


@HALVES
def test_layer_norm_weight_after_the_island_scales_the_bias_too(half):
    b = Island(half, (2, 16))
    s, bias = b.weights(16)
    y = b.down(b.node("LayerNormalization", [b.up(b.input("x")), s, bias], axis=-1))
    b.output(b.node("Mul", [y, b.const(RNG.uniform(0.5, 2, (1, 16)), half)]))
    model = b.model()
    sess, got = run(model, b.feeds)
    half_node(sess, "LayerNorm")
    assert graph_ops(sess) == ["LayerNorm"]
    assert_matches_float64(got, model, b.feeds, ulps=2)


def test_up_cast_read_elsewhere_stays_for_its_readers():
    """The float32 upcast also feeds a float32 output: it stays (exact), the node reads X16."""
    b = Island(H, (2, 8))
    x32 = b.up(b.input("x"))
    s, bias = b.weights(8)
    b.output(b.down(b.node("LayerNormalization", [x32, s, bias])))
    b.output(b.node("Neg", [x32]), elem=F)
    model = b.model()
    sess, got = run(model, b.feeds)
    half_node(sess, "LayerNorm")
    assert sorted(graph_ops(sess)) == ["Cast", "LayerNorm", "Neg"]
    assert_matches_float64(got, model, b.feeds)


# -- refusals: the float32 norm stays on its kernel, between the Casts -------------------
def refused(sess):
    return [e["reason"] for e in sess.report["refused"] if e["pass"] == PASS]


def test_upcast_only_keeps_the_float32_norm():
    """x16 -> Cast(float) -> LayerNorm -> float32 ops: no down Cast, no island. The kernel writes
    X's type; the float32 readers must see the float32 result: the norm reads the exact upcast."""
    b = Island(H, (2, 8))
    s, bias = b.weights(8)
    y = b.node("LayerNormalization", [b.up(b.input("x")), s, bias])
    b.output(b.node("Relu", [y]), elem=F)
    model = b.model()
    sess, got = run(model, b.feeds)
    assert graph_ops(sess) == ["Cast", "LayerNorm"]         # the Relu fused onto the float32 node
    assert not island_entries(sess) and any("also read by" in r for r in refused(sess))
    assert got[0].dtype == np.float32
    assert_matches_float64(got, model, b.feeds, ulps=0)


def test_float32_result_also_read_elsewhere_is_refused():
    b = Island(BF, (2, 8))
    s, bias = b.weights(8)
    y = b.node("LayerNormalization", [b.up(b.input("x")), s, bias])
    b.output(b.down(y))
    b.output(b.node("Neg", [y]), elem=F)
    model = b.model()
    sess, got = run(model, b.feeds)
    assert "Cast" in graph_ops(sess) and not island_entries(sess)
    assert any("rounding it to half would change" in r for r in refused(sess)), refused(sess)
    assert_matches_float64(got, model, b.feeds, ulps=1)


@pytest.mark.parametrize("what,reason", [
    ("float64", "float64 island"),
    ("other_half", "not X's"),
    ("graph_output", "graph output"),
    ("residual_float32", "residual"),
])
def test_refusals(what, reason):
    inner = D if what == "float64" else F
    b = Island(H, (2, 8), inner)
    x = b.up(b.input("x"))
    s, bias = b.weights(8)
    if what == "residual_float32":
        x = b.node("Add", [x, b.input("r", elem=F)])
    y = b.node("LayerNormalization", [x, s, bias])
    if what == "graph_output":
        b.output(y, elem=F)
    b.output(b.down(y, to=BF if what == "other_half" else None), elem=BF if what == "other_half" else None)
    model = b.model()
    sess, got = run(model, b.feeds)
    assert norm_nodes(sess.optimized_model) == ["LayerNorm"] and not statistics_left(sess.optimized_model)
    assert not island_entries(sess)
    assert any(reason in r for r in refused(sess)), refused(sess)
    assert_matches_float64(got, model, b.feeds)


def test_upcast_from_float64_is_no_candidate():
    """Cast(float64 -> float32) rounds: the norm must read the rounded values, not X."""
    b = Island(H, (2, 8))
    x32 = b.node("Cast", [b.input("x", elem=D)], to=F)
    s, bias = b.weights(8)
    b.output(b.node("Cast", [b.node("LayerNormalization", [x32, s, bias])], to=H))
    model = b.model()
    sess, got = run(model, b.feeds)
    assert graph_ops(sess) == ["Cast", "LayerNorm", "Cast"]
    assert not refused(sess) and not island_entries(sess)
