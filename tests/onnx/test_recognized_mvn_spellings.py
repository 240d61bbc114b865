"""(X - mean) / (std + eps) in any spelling -> one normrt MeanVarianceNorm (recognized_norms).

mvn_decomposed matches two literal templates (keepdims=1 ReduceMeans only); the dynamo
exporter writes `x.std(-1, keepdim=True, unbiased=False)` as ReduceMean(keepdims=0) +
Reshape, users write ReduceSum / n, Pow(·, 0.5), eps on either side of the Add. hypothesis
generates those over random axis sets, in float32 and in float16 / bfloat16 data with
statistics widened to float32 (dynamo's half var/std), and each must become one
MeanVarianceNorm matching onnx.reference (float32) or the float64 twin (half). Look-alikes
stay unfused and correct: eps on a raw root mean square, a std the data is not centred on,
the mean and the variance over different axes, an unbiased std.
"""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import DrawnGraph
from half_models import HALF_NP, assert_matches_float64, statistics_left

F = TensorProto.FLOAT
NP = {F: np.dtype(np.float32), **HALF_NP}
DTYPES = [F, TensorProto.FLOAT16, TensorProto.BFLOAT16]
SETTINGS = settings(max_examples=int(os.environ.get("NORMRT_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class Graph(DrawnGraph):
    def __init__(self, draw, shape, elem):
        super().__init__(draw, shape, elem, NP)

    def mean(self, v, axes, elem):
        keep = self.draw(st.booleans())
        ax = self.const(np.array(axes), "int")
        if self.draw(st.booleans()):
            r = self.node("ReduceMean", [v, ax], keepdims=int(keep))
        else:
            n = int(np.prod([self.shape[a] for a in axes]))
            r = self.node("Div", [self.node("ReduceSum", [v, ax], keepdims=int(keep)), self.const(float(n), elem)])
        if keep:
            return r
        kept = [1 if i in axes else d for i, d in enumerate(self.shape)]
        return self.node("Reshape", [r, self.const(np.array(kept), "int")])

    def std(self, x, axes, centred=True, unbiased=False):
        """sqrt of the (centred or raw) second moment of x over axes, maybe computed in float32."""
        widened = self.elem != F and self.draw(st.booleans())
        src, elem = (self.node("Cast", [x], to=F), F) if widened else (x, self.elem)
        d = self.node("Sub", [src, self.mean(src, axes, elem)]) if centred else src
        sq = self.node("Mul", [d, d]) if self.draw(st.booleans()) else self.node("Pow", [d, self.const(2.0, elem)])
        m2 = self.mean(sq, axes, elem)
        if unbiased:
            n = int(np.prod([self.shape[a] for a in axes]))
            m2 = self.node("Mul", [m2, self.const(n / (n - 1), elem)])
        r = self.node("Sqrt", [m2]) if self.draw(st.booleans()) else self.node("Pow", [m2, self.const(0.5, elem)])
        return self.node("Cast", [r], to=self.elem) if widened else r

    def divide(self, data, std, eps):
        c = self.const(eps)
        den = self.node("Add", [std, c] if self.draw(st.booleans()) else [c, std])
        return self.node("Div", [data, den])

    def model(self, y):
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", self.elem, list(self.shape))],
                                  [helper.make_tensor_value_info(y, self.elem, list(self.shape))], self.inits)
        feeds = {"x": (self.rng.standard_normal(self.shape) * 3 + 1).astype(NP[self.elem])}
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), feeds


def _shape_and_axes(draw):
    rank = draw(st.integers(2, 4))
    shape = tuple(draw(st.integers(2, 5)) for _ in range(rank))
    axes = sorted(draw(st.sets(st.integers(0, rank - 1), min_size=1, max_size=rank)))
    return shape, axes


@st.composite
def mvn_case(draw):
    shape, axes = _shape_and_axes(draw)
    g = Graph(draw, shape, draw(st.sampled_from(DTYPES)))
    data = g.node("Sub", ["x", g.mean("x", axes, g.elem)])
    y = g.divide(data, g.std("x", axes), float(draw(st.sampled_from([1e-5, 1e-3, 0.0]))))
    return g.model(y) + (g,)


def _check_outputs(sess, model, feeds, elem):
    got = sess.run(None, feeds)
    if elem == F:
        want = ReferenceEvaluator(model).run(None, feeds)[0]
        np.testing.assert_allclose(got[0], want, rtol=2e-5, atol=2e-5)
    else:
        assert_matches_float64(got, model, feeds, ulps=2, f32_rel=2.0 ** -18)


@SETTINGS
@given(mvn_case())
def test_every_mvn_spelling_becomes_one_node(case):
    model, feeds, g = case
    sess = normrt.InferenceSession(model)
    _check_outputs(sess, model, feeds, g.elem)
    nodes = [n for n in sess.optimized_model.graph.node]
    assert [(n.domain, n.op_type) for n in nodes] == [("normrt", "MeanVarianceNorm")], \
        [n.op_type for n in nodes]
    assert nodes[0].input[0] == "x"


@st.composite
def mvn_look_alike(draw):
    """(model, feeds, Graph): eps outside the root of something that is no MVN."""
    shape, axes = _shape_and_axes(draw)
    g = Graph(draw, shape, draw(st.sampled_from(DTYPES)))
    what = draw(st.sampled_from(["raw", "not_centred", "axes_differ", "unbiased"]))
    eps = 1e-3
    if what == "raw":                       # x / (rms(x) + eps)
        y = g.divide("x", g.std("x", axes, centred=False), eps)
    elif what == "not_centred":             # x / (std(x) + eps)
        y = g.divide("x", g.std("x", axes), eps)
    elif what == "unbiased":                # (x - mean) / (unbiased std + eps)
        if int(np.prod([shape[a] for a in axes])) < 2:
            axes = list(range(len(shape)))
        y = g.divide(g.node("Sub", ["x", g.mean("x", axes, g.elem)]), g.std("x", axes, unbiased=True), eps)
    else:                                   # mean over the last axis, std over all
        last = [len(shape) - 1]
        y = g.divide(g.node("Sub", ["x", g.mean("x", last, g.elem)]), g.std("x", list(range(len(shape)))), eps)
    return g.model(y) + (g,)


@SETTINGS
@given(mvn_look_alike())
def test_mvn_look_alikes_stay_unfused_and_correct(case):
    model, feeds, g = case
    sess = normrt.InferenceSession(model)
    _check_outputs(sess, model, feeds, g.elem)
    assert not any(n.domain == "normrt" and n.op_type == "MeanVarianceNorm" for n in sess.optimized_model.graph.node)
    assert statistics_left(sess.optimized_model)
