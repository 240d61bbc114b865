"""Half-precision products and fused chains (issue 11): a float16/bfloat16 model's MatMul
epilogues, attention and elementwise chains fuse as a float32 model's do (computed in float32,
rounded once), match the float64 twin of the model, and its specialized plan runs them as
half_steps islands -- prepared kernel calls between two conversions -- bitwise equal to the
generic plan. Those islands are half_compute="per_op"'s machinery (the default "float32" retypes
the chains between them to float32: tests/onnx/test_half_regions.py), so the island tests ask
for per_op."""
import json
import os
from importlib import resources

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import normrt
from onnx.reference import ReferenceEvaluator

from half_models import assert_matches_float64, reference64, to_half

HALF_DATA = os.path.join(os.path.dirname(__file__), os.pardir, "data", "half")
HALVES = pytest.mark.parametrize("dtype", [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)],
                                 ids=["float16", "bfloat16"])
RNG = np.random.default_rng(11)
PER_OP = "per_op"


def _specialized_bitwise_generic(sess, feeds):
    """The specialized plan's outputs (built by a first run), checked bitwise against the generic plan's."""
    sess.run(None, feeds)
    special = sess.run(None, feeds)
    generic = sess.executor.run(feeds, specialize=False)
    for g, s in zip(generic, special):
        assert g.dtype == s.dtype and g.shape == s.shape
        assert np.array_equal(g.view(np.uint16), s.view(np.uint16)) if g.dtype.itemsize == 2 \
            else np.array_equal(g, s, equal_nan=True)
    return special


def assert_no_worse_than_per_op_rounding(got, model, feeds):
    """normrt's outputs are at least as close to the float64 twin of the half model as the half model's
    own per-op arithmetic (onnx.reference rounding every op's result to half), in max and mean error:
    the fused chains compute in float32 and round once."""
    want = reference64(model, feeds)
    per_op = ReferenceEvaluator(model).run(None, feeds)
    for g, w, h in zip(got, want, per_op):
        err = np.abs(g.astype(np.float64) - w)
        err_h = np.abs(h.astype(np.float64) - w)
        assert err.max() <= err_h.max() and err.mean() <= err_h.mean(), (err.max(), err_h.max(), err.mean(),
                                                                          err_h.mean())


def _sources(sess):
    return "\n".join(p.source for p in sess.executor.specialized.values())


def _transformer_block(dtype):
    path = resources.files("normrt") / "examples" / "transformer_block.onnx"
    return to_half(onnx.load(str(path)), dtype)


@HALVES
def test_half_transformer_block_fuses_like_float32(dtype):
    model = _transformer_block(dtype)
    opt = normrt.optimize(model, half_compute=PER_OP)
    ops = [n.op_type for n in opt.graph.node if n.domain == "normrt"]
    assert ops.count("MatMul") == 4 and ops.count("Attention") == 1 and ops.count("LayerNorm") == 2, ops
    x = (RNG.standard_normal((1, 64, 128))).astype(dtype)
    sess = normrt.InferenceSession(model, num_threads=2, half_compute=PER_OP)
    got = _specialized_bitwise_generic(sess, {"x": x})
    assert got[0].dtype == dtype
    assert_no_worse_than_per_op_rounding(got, model, {"x": x})
    src = _sources(sess)
    assert "_gemm" in src and "_attention" in src and "_narrow_into" in src, src


@HALVES
def test_half_elementwise_chain_fuses_and_matches_float64(dtype):
    """Erf GELU written out (Div, Erf, Add, Mul, Mul) after a non-fusable op: one normrt::Elementwise."""
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.BFLOAT16
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
             helper.make_node("Div", ["t", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["t", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    inits = [onnx.numpy_helper.from_array(np.array(v, dtype), n)
             for n, v in (("sqrt2", np.sqrt(2.0)), ("one", 1.0), ("half", 0.5))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, [24, 40])],
                              [helper.make_tensor_value_info("y", elem, [40, 24])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    ops = [n.op_type for n in normrt.optimize(model).graph.node]
    assert ops == ["Transpose", "Elementwise"] or ops.count("Elementwise") == 1, ops
    x = (RNG.standard_normal((24, 40)) * 3).astype(dtype)
    sess = normrt.InferenceSession(model)
    got = _specialized_bitwise_generic(sess, {"x": x})
    assert_no_worse_than_per_op_rounding(got, model, {"x": x})


def test_mixed_float_types_fuse_only_in_float32_regions():
    """A Gemm in float16 whose bias C is float32 (not valid ONNX, but a hand-edited model may carry it):
    under per_op the epilogue pass refuses (it would round the bias to the product's type), the model
    still runs."""
    H = TensorProto.FLOAT16
    w = RNG.standard_normal((16, 8)).astype(np.float16)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", H, [4, 16])],
                              [helper.make_tensor_value_info("y", H, [4, 8])],
                              [onnx.numpy_helper.from_array(w, "w"),
                               onnx.numpy_helper.from_array(np.ones(8, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    opt = normrt.optimize(model, half_compute=PER_OP)
    assert not [n for n in opt.graph.node if n.domain == "normrt"]
    # half_compute="float32" retypes the product to float32 first: then the float32 bias fuses
    # unrounded, and the result is the float32 product plus bias, rounded once
    x = RNG.standard_normal((4, 16)).astype(np.float16)
    sess = normrt.InferenceSession(model)
    assert [n.op_type for n in sess.optimized_model.graph.node if n.domain == "normrt"] == ["MatMul"]
    want = (x.astype(np.float64) @ w.astype(np.float64) + 1.0).astype(np.float16)
    got = sess.run(None, {"x": x})[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=2 ** -10, atol=2 ** -10)


def _half_fixtures():
    entries = json.loads(open(os.path.join(HALF_DATA, "fixtures.json")).read())["fixtures"]
    return [e for e in entries if e["exporter"] == "legacy"]


@pytest.mark.parametrize("entry", _half_fixtures(), ids=lambda e: e["file"][:-5])
def test_half_fixtures_specialized_bitwise_generic(entry):
    """The issue's exports (tests/data/half): their Conv/MatMul run as prepared calls in the
    specialized plan, bitwise the generic plan, for 1 and 2 threads alike."""
    half = np.dtype(np.float16) if entry["dtype"] == "float16" else np.dtype(ml_dtypes.bfloat16)
    data = np.load(os.path.join(HALF_DATA, entry["data"]))
    feeds = {k[6:]: data[k].view(half) for k in data.files if k.startswith("input:")}
    outs = []
    for threads in (1, 2):
        sess = normrt.InferenceSession(os.path.join(HALF_DATA, entry["file"]), num_threads=threads,
                                       half_compute=PER_OP)
        outs.append(_specialized_bitwise_generic(sess, feeds))
        assert "_narrow_into" in _sources(sess)
    for a, b in zip(*outs):
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


@HALVES
def test_ops_without_a_fast_step_run_their_float32_implementation_in_an_island(dtype):
    """Softplus, Clip (computed in place: into the scratch) and Erf, which have no float32 fast step:
    widened into the plan's scratch, the op's float32 implementation, rounded into the output;
    bitwise the generic plan, within one rounding of float64."""
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.BFLOAT16
    nodes = [helper.make_node("Softplus", ["x"], ["p"]),
             helper.make_node("Clip", ["p", "lo", "hi"], ["c"]), helper.make_node("Erf", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", elem, [2, 3, 8, 8])],
                              [onnx.numpy_helper.from_array(np.array(v, dtype), n) for n, v in (("lo", -1.0),
                                                                                               ("hi", 1.5))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = RNG.standard_normal((2, 3, 8, 8)).astype(dtype)
    sess = normrt.InferenceSession(model, half_compute=PER_OP)
    got = _specialized_bitwise_generic(sess, {"x": x})
    assert _sources(sess).count("_run_f32") == 3, _sources(sess)
    assert_matches_float64(got, model, {"x": x})
