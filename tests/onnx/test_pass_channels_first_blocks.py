"""channels_first_blocks: a channels-last block between Transpose(0,2,3,1) and Transpose(0,3,1,2)
(ConvNeXt's LayerNorm + MLP + layer scale) runs on the channels-first map: ChannelNorm, 1x1 Convs,
per-channel constants as (C, 1, 1). Oracle: onnx.reference on the original model."""
import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import const, vi

PASS = "channels_first_blocks"
F = TensorProto.FLOAT


class Block:
    """A ConvNeXt-style block on x (N, C, H, W), built node by node in NHWC between the Transposes."""

    def __init__(self, n, c, h, w, seed):
        self.rng = np.random.default_rng(seed)
        self.shape = (n, c, h, w)
        self.nodes = [helper.make_node("Transpose", ["x"], ["t0"], name="to_last", perm=[0, 2, 3, 1])]
        self.inits = []
        self.cur, self.c, self.k = "t0", c, 0

    def _name(self, what):
        self.k += 1
        return f"{what}{self.k}"

    def add(self, op, ins, **attrs):
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        self.cur = out
        return out

    def constant(self, value):
        name = self._name("c")
        self.inits.append(const(name, np.asarray(value, np.float32)))
        return name

    def norm(self, kind):
        scale = self.constant(1 + 0.3 * self.rng.standard_normal(self.c))
        if kind == "rms":
            return self.add("RMSNormalization", [self.cur, scale], axis=-1, epsilon=1e-6)
        bias = self.constant(0.2 * self.rng.standard_normal(self.c))
        return self.add("LayerNormalization", [self.cur, scale, bias], axis=-1, epsilon=1e-6)

    def linear(self, k):
        w = self.constant(self.rng.standard_normal((self.c, k)) / np.sqrt(self.c))
        self.add("MatMul", [self.cur, w])
        self.c = k
        return self.add("Add", [self.cur, self.constant(0.1 * self.rng.standard_normal(k))])

    def gelu(self):
        x = self.cur
        d = self.add("Div", [x, self.constant(np.sqrt(2.0))])
        e = self.add("Erf", [d])
        a = self.add("Add", [e, self.constant(1.0)])
        m = self.add("Mul", [x, a])
        return self.add("Mul", [m, self.constant(0.5)])

    def silu(self):
        x = self.cur
        return self.add("Mul", [x, self.add("Sigmoid", [x])])

    def scale(self, shape):
        return self.add("Mul", [self.constant(0.5 + self.rng.random(shape)), self.cur])

    def model(self, residual=True, opset=23):
        n, c, h, w = self.shape
        self.add("Transpose", [self.cur], perm=[0, 3, 1, 2])
        out_shape = [n, self.c, h, w]
        if residual and self.c == c:
            self.add("Add", ["x", self.cur])
        self.nodes.append(helper.make_node("Neg", [self.cur], ["y"], name="neg"))
        graph = helper.make_graph(self.nodes, "g", [vi("x", list(self.shape))], [vi("y", out_shape)], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    def feed(self):
        return {"x": self.rng.standard_normal(self.shape).astype(np.float32)}


def check(model, feed, taken):
    sess = normrt.InferenceSession(model.SerializeToString())
    assert sess.report["passes"][PASS] == taken
    ops = [n.op_type for n in sess.optimized_model.graph.node]
    if taken:
        assert "Transpose" not in ops and "MatMul" not in ops, ops
    want = ReferenceEvaluator(model).run(None, feed)[0]
    got = sess.run(None, feed)[0]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    return sess


@settings(max_examples=20, deadline=None)
@given(c=st.sampled_from([3, 8, 16, 24]), h=st.integers(1, 9), w=st.integers(1, 9), n=st.integers(1, 2),
       norm=st.sampled_from(["layer", "rms"]), act=st.sampled_from(["gelu", "silu", "relu"]),
       hidden=st.sampled_from([8, 40]), scale_shape=st.sampled_from(["vector", "rank4", "scalar", None]),
       seed=st.integers(0, 2 ** 16))
def test_generated_blocks_run_channels_first(c, h, w, n, norm, act, hidden, scale_shape, seed):
    b = Block(n, c, h, w, seed)
    b.norm(norm)
    b.linear(hidden)
    {"gelu": b.gelu, "silu": b.silu, "relu": lambda: b.add("Relu", [b.cur])}[act]()
    b.linear(c)
    if scale_shape:
        b.scale({"vector": (c,), "rank4": (1, 1, 1, c), "scalar": ()}[scale_shape])
    sess = check(b.model(), b.feed(), 1)
    kinds = [(nd.domain, nd.op_type) for nd in sess.optimized_model.graph.node]
    assert ("normrt", "ChannelNorm") in kinds
    entry = next(e for e in sess.report["fused"] if e["normrt_op"] == "ChannelNorm")
    assert entry["kernel"] == "layer_norm_2d"


@pytest.mark.parametrize("symbolic", [(0,), (0, 2, 3)])
def test_a_block_with_symbolic_batch_and_map_runs_channels_first(symbolic):
    """A dynamic-axes export's (N, C, H, W): only the channels must be known."""
    b = Block(2, 8, 5, 4, 3)
    b.norm("layer")
    b.linear(16)
    b.gelu()
    b.linear(8)
    model = b.model()
    for v in (model.graph.input[0], model.graph.output[0]):
        for axis in symbolic:
            v.type.tensor_type.shape.dim[axis].dim_param = f"d{axis}"
    sess = check(model, b.feed(), 1)
    feed = b.feed()
    x = np.concatenate([feed["x"]] * 2)                 # another batch, and map where symbolic
    feed["x"] = (x[:, :, :3, :2] if 2 in symbolic else x).copy()
    got = [sess.run(None, feed)[0] for _ in range(2)]     # traced, then the specialized plan
    want = ReferenceEvaluator(model).run(None, feed)[0]
    for g in got:
        np.testing.assert_allclose(g, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def test_convnext_block_fuses_into_two_convs():
    """The whole block: ChannelNorm, a Conv with its GELU, a Conv with the layer scale folded
    into its weights and the residual Add as its epilogue."""
    b = Block(1, 16, 6, 6, 1)
    b.norm("layer")
    b.linear(64)
    b.gelu()
    b.linear(16)
    b.scale((16,))
    model = b.model()
    # as the dynamo exporter writes it too: every value's channels-last shape declared
    declared = onnx.shape_inference.infer_shapes(model)
    assert len(declared.graph.value_info) > 5
    for m in (model, declared):
        sess = check(m, b.feed(), 1)
        nodes = [(nd.domain, nd.op_type) for nd in sess.optimized_model.graph.node]
        assert nodes == [("normrt", "ChannelNorm"), ("normrt", "Conv"), ("normrt", "Conv"), ("", "Neg")], nodes


def test_refused_blocks_stay_as_they_are():
    # a constant varying along W (not per channel)
    b = Block(1, 8, 4, 5, 2)
    b.norm("layer")
    b.add("Mul", [b.cur, b.constant(np.arange(1, 6, dtype=np.float32).reshape(5, 1))])
    check(b.model(), b.feed(), 0)
    # a middle value read outside the block
    b = Block(1, 8, 4, 4, 3)
    mid = b.norm("layer")
    b.linear(8)
    model = b.model(residual=False)
    model.graph.node.append(helper.make_node("ReduceSum", [mid], ["side"], name="side", keepdims=0))
    model.graph.output.append(vi("side", []))
    sess = normrt.InferenceSession(model.SerializeToString())
    assert sess.report["passes"][PASS] == 0
    # an op with no channels-first twin inside
    b = Block(1, 8, 4, 4, 4)
    b.norm("layer")
    b.add("Softmax", [b.cur], axis=-1)
    check(b.model(), b.feed(), 0)
    # a product by a runtime value
    b = Block(1, 8, 4, 4, 5)
    b.add("MatMul", [b.cur, "wrt"])
    model = b.model(residual=True)
    model.graph.input.append(vi("wrt", [8, 8]))
    feed = {**b.feed(), "wrt": np.eye(8, dtype=np.float32)}
    check(model, feed, 0)


def test_an_empty_pair_is_left_to_no_op_views():
    b = Block(1, 8, 3, 5, 7)
    check(b.model(), b.feed(), 0)


def test_two_exits_are_refused():
    b = Block(1, 8, 3, 3, 6)
    b.norm("layer")
    first = b.cur
    # the second exit another layout (an identical Transpose would be the block's own exit:
    # common_subexpressions merges the two)
    b.add("Transpose", [first], perm=[0, 3, 2, 1])
    other = b.cur
    b.cur = first
    model = b.model(residual=False)
    model.graph.node.append(helper.make_node("Neg", [other], ["z"], name="z"))
    model.graph.output.append(vi("z", [1, 8, 3, 3]))
    sess = normrt.InferenceSession(model.SerializeToString())
    assert sess.report["passes"][PASS] == 0
    feed = b.feed()
    for got, want in zip(sess.run(None, feed), ReferenceEvaluator(model).run(None, feed)):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
