"""recognized_norms with a symbolic batch: statistics viewed back through shapes computed at run time.

With a dynamic batch axis the dynamo exporter writes `x.var(-1, keepdim=True)` as a
keepdims=0 ReduceMean viewed back by a Reshape and an Expand whose target shapes are
Concat(Shape(...)[:1], constants):

    var (N, S) ──► Reshape(·, Concat(Shape(var)[0:1], [S], [1])) ──► Expand(·, Concat(Shape(X)[0:1], [S], [1])) ──► Add(eps)

hypothesis builds LayerNorm / RMSNorm / MVN spellings over a symbolic N with each statistic
kept (keepdims=1) or viewed back that way (Reshape, Expand, or both; the shape from the
statistic or from X), runs them at several batch sizes and checks one normrt node matching
onnx.reference, the shape arithmetic gone with the match. A runtime view that reorders the
statistic (the target (S, N, 1) for a (N, S) variance) stays unfused and correct.
"""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from half_models import norm_nodes

F, I64 = TensorProto.FLOAT, TensorProto.INT64
SETTINGS = settings(max_examples=int(os.environ.get("NORMRT_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class Graph:
    def __init__(self, draw, s, d):
        self.draw, self.s, self.d = draw, s, d
        self.nodes, self.inits, self.n = [], [], 0

    def node(self, op, inputs, **attrs):
        self.n += 1
        out = f"{op.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value, dtype=np.float32):
        self.n += 1
        name = f"c_{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def batch_dim(self, of):
        """Shape(of)[0:1]: the symbolic batch, computed at run time."""
        return self.node("Slice", [self.node("Shape", [of]), self.const([0], np.int64), self.const([1], np.int64)])

    def runtime_shape(self, of, tail):
        return self.node("Concat", [self.batch_dim(of), self.const(list(tail), np.int64)], axis=0)

    def keep_shaped(self, stat_of, reducer, axes=(2,)):
        """A statistic over the last axis, keepdims=1, or keepdims=0 viewed back at run time."""
        how = self.draw(st.sampled_from(["keepdims", "reshape", "expand", "reshape_expand"]))
        if how == "keepdims":
            return self.node(reducer, [stat_of, self.const(list(axes), np.int64)], keepdims=1)
        r = self.node(reducer, [stat_of, self.const(list(axes), np.int64)], keepdims=0)
        if how in ("reshape", "reshape_expand"):
            src = self.draw(st.sampled_from([r, "x"]))     # the batch read from the statistic or from X
            r = self.node("Reshape", [r, self.runtime_shape(src, [self.s, 1])])
        else:
            r = self.node("Unsqueeze", [r, self.const([2], np.int64)])
        if how in ("expand", "reshape_expand"):
            r = self.node("Expand", [r, self.runtime_shape("x", [self.s, 1])])
        return r

    def model(self, y):
        x = helper.make_tensor_value_info("x", F, ["N", self.s, self.d])
        out = helper.make_tensor_value_info(y, F, ["N", self.s, self.d])
        return helper.make_model(helper.make_graph(self.nodes, "g", [x], [out], self.inits),
                                 opset_imports=[helper.make_opsetid("", 18)])


@st.composite
def symbolic_case(draw):
    g = Graph(draw, draw(st.integers(1, 5)), draw(st.integers(2, 9)))
    kind = draw(st.sampled_from(["layer", "rms", "mvn"]))
    eps = g.const(1e-5)
    if kind == "rms":
        m2 = g.keep_shaped(g.node("Mul", ["x", "x"]), "ReduceMean")
        y = g.node("Mul", ["x", g.node("Reciprocal", [g.node("Sqrt", [g.node("Add", [m2, eps])])])])
        return g.model(y), "RMSNorm"
    d = g.node("Sub", ["x", g.keep_shaped("x", "ReduceMean")])
    var = g.keep_shaped(g.node("Mul", [d, d]), "ReduceMean")
    if kind == "mvn":
        return g.model(g.node("Div", [d, g.node("Add", [g.node("Sqrt", [var]), eps])])), "MeanVarianceNorm"
    y = g.node("Div", [d, g.node("Sqrt", [g.node("Add", [var, eps])])])
    y = g.node("Add", [g.node("Mul", [y, g.const(np.linspace(0.5, 1.5, g.d))]), g.const(np.linspace(-1, 1, g.d))])
    return g.model(y), "LayerNorm"


def _check(model, batches=(1, 3)):
    sess = normrt.InferenceSession(model)
    ref = ReferenceEvaluator(model)
    rng = np.random.default_rng(0)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    for n in batches:
        x = (rng.standard_normal([n] + shape) * 2 + 1).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0], rtol=2e-5, atol=2e-5)
    return sess


@SETTINGS
@given(symbolic_case())
def test_statistics_viewed_back_at_run_time_fuse(case):
    model, op = case
    sess = _check(model)
    graph = sess.optimized_model.graph
    if op == "MeanVarianceNorm":
        assert [(n.domain, n.op_type) for n in graph.node] == [("normrt", op)], [n.op_type for n in graph.node]
    else:
        assert norm_nodes(sess.optimized_model) == [op]
        assert [n.domain for n in graph.node] == ["normrt"], [n.op_type for n in graph.node]


@SETTINGS
@given(st.integers(2, 4), st.integers(2, 6))
def test_a_runtime_view_that_reorders_the_statistic_stays_unfused(s, d):
    """var (N, S) viewed as (S, N, 1) (run with N == S so it broadcasts): another function."""
    g = Graph(None, s, d)
    dev = g.node("Sub", ["x", g.node("ReduceMean", ["x", g.const([2], np.int64)], keepdims=1)])
    var = g.node("ReduceMean", [g.node("Mul", [dev, dev]), g.const([2], np.int64)], keepdims=0)
    swapped = g.node("Concat", [g.node("Slice", [g.node("Shape", ["x"]), g.const([1], np.int64), g.const([2], np.int64)]),
                                g.batch_dim("x"), g.const([1], np.int64)], axis=0)
    var = g.node("Reshape", [var, swapped])
    y = g.node("Div", [dev, g.node("Sqrt", [g.node("Add", [var, g.const(1e-5)])])])
    sess = _check(g.model(y), batches=(s,))
    assert norm_nodes(sess.optimized_model) == []


def test_graph_output_dims_declared_under_other_names():
    """TorchScript declares a graph output's dynamic dims under names of its own ('Muly_dim_0'):
    the final RMSNorm of an exported decoder is still X-shaped, and fuses."""
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"]),
             helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Reciprocal", ["rms"], ["inv"]),
             helper.make_node("Mul", ["x", "inv"], ["xn"]),
             helper.make_node("Mul", ["w", "xn"], ["y"])]
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(np.linspace(0.5, 1.5, 16, dtype=np.float32), "w")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["batch", "sequence", 16])],
                              [helper.make_tensor_value_info("y", F, ["Muly_dim_0", "Muly_dim_1", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    sess = normrt.InferenceSession(model.SerializeToString())
    assert [n.op_type for n in sess.optimized_model.graph.node] == ["RMSNorm"], sess.report["refused"]
    for b, s in ((1, 5), (3, 2)):
        x = np.random.default_rng(b).standard_normal((b, s, 16)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ReferenceEvaluator(model).run(None, {"x": x})[0],
                                   rtol=1e-5, atol=1e-6)
