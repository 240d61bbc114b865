"""grn_decomposed: ConvNeXt V2's global response normalization (ReduceL2 over the spatial axes,
ReduceMean over the channels, Div, Mul, Add) -> normrt::GRN.

Generated graphs in every operand order, at opsets 13 (axes attributes) and 18 (axes inputs), in
float32 and float16, against onnx.reference on the original model; the refusals. transformers'
ConvNextV2Model exported by torch (its GRNs fused, against torch): the hf_convnextv2 fixture,
test_fixture_models.py.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import const, vi

PASS = "grn_decomposed"


def grn_model(shape, *, elem=TensorProto.FLOAT, opset=18, swap=(), gamma_shape=None, l2_axes=None,
              mean_axis=-1, gamma_input=False, extra_output=None, seed=0):
    """X (shape, channels last) -> GRN as ConvNeXt V2 writes it. `swap`: the binary nodes whose
    operands come in the other order (names of the nodes: eps, mul_x, mul_gamma, add_beta, add_x)."""
    dtype = np.float32 if elem == TensorProto.FLOAT else np.float16
    rng = np.random.default_rng(seed)
    rank, C = len(shape), shape[-1]
    l2_axes = list(range(1, rank - 1)) if l2_axes is None else l2_axes
    gamma_shape = (C,) if gamma_shape is None else gamma_shape
    inits = [const("eps", np.array(1e-6, dtype)), const("beta", rng.standard_normal(gamma_shape).astype(dtype))]
    ins = [vi("X", list(shape), elem)]
    if gamma_input:
        ins.append(vi("gamma", list(gamma_shape), elem))
    else:
        inits.append(const("gamma", rng.standard_normal(gamma_shape).astype(dtype)))

    def binary(op, name, a, b, out):
        return helper.make_node(op, [b, a] if name in swap else [a, b], [out], name=name)
    if opset >= 18:
        inits += [const("l2_axes", np.array(l2_axes, np.int64)), const("mean_axes", np.array([mean_axis], np.int64))]
        reduce_nodes = [helper.make_node("ReduceL2", ["X", "l2_axes"], ["G"], name="l2", keepdims=1),
                        helper.make_node("ReduceMean", ["G", "mean_axes"], ["M"], name="mean", keepdims=1)]
    else:
        reduce_nodes = [helper.make_node("ReduceL2", ["X"], ["G"], name="l2", axes=l2_axes, keepdims=1),
                        helper.make_node("ReduceMean", ["G"], ["M"], name="mean", axes=[mean_axis], keepdims=1)]
    nodes = reduce_nodes + [
        binary("Add", "eps", "M", "eps", "D"),
        helper.make_node("Div", ["G", "D"], ["Nx"], name="div"),
        binary("Mul", "mul_x", "X", "Nx", "P"),
        binary("Mul", "mul_gamma", "gamma", "P", "Q"),
        binary("Add", "add_beta", "Q", "beta", "R"),
        binary("Add", "add_x", "R", "X", "Y")]
    outs = [vi("Y", list(shape), elem)] + ([vi(extra_output, None, elem)] if extra_output else [])
    g = helper.make_graph(nodes, "grn", ins, outs, initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {"X": (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)}
    if gamma_input:
        feeds["gamma"] = rng.standard_normal(gamma_shape).astype(dtype)
    return model, feeds


def _fused(sess):
    return [e for e in sess.report["fused"] if e["pass"] == PASS]


@settings(max_examples=30, deadline=None)
@given(shape=st.sampled_from([(1, 5, 7, 16), (2, 3, 3, 130), (2, 9, 24), (1, 2, 3, 4, 6)]),
       elem=st.sampled_from([TensorProto.FLOAT, TensorProto.FLOAT16]), opset=st.sampled_from([13, 18]),
       swap=st.sets(st.sampled_from(["eps", "mul_x", "mul_gamma", "add_beta", "add_x"])),
       module_params=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_generated_grn_fuses_and_matches_reference(shape, elem, opset, swap, module_params, seed):
    gamma_shape = (1,) * (len(shape) - 1) + (shape[-1],) if module_params else None
    model, feeds = grn_model(shape, elem=elem, opset=opset, swap=swap, gamma_shape=gamma_shape, seed=seed)
    sess = normrt.InferenceSession(model)
    assert len(_fused(sess)) == 1, sess.report["refused"]
    assert [n.op_type for n in sess.optimized_model.graph.node] == ["GRN"]
    got = sess.run(None, feeds)[0]
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    # the reference rounds each op to the model's type; the kernel computes in float64, rounds once
    tol = 2e-6 if elem == TensorProto.FLOAT else 4e-3
    scale = float(np.abs(want.astype(np.float64)).max())
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol * scale)
    assert got.dtype == want.dtype


@pytest.mark.parametrize("kwargs,reason", [
    (dict(l2_axes=[1]), "ReduceL2 over axes [1], keepdims=1 (GRN: every spatial axis"),
    (dict(mean_axis=1), "ReduceMean over axes [1], keepdims=1 (GRN: the channels"),
    (dict(gamma_input=True), "gamma or beta is not a constant"),
    (dict(gamma_shape=(1, 5, 1, 16)), "gamma or beta is not a constant"),
    (dict(extra_output="Nx"), "graph output"),
])
def test_refused_variants_stay_as_written(kwargs, reason):
    model, feeds = grn_model((1, 5, 7, 16), **kwargs)
    if kwargs.get("gamma_shape") == (1, 5, 1, 16):
        feeds = {"X": feeds["X"]}
    sess = normrt.InferenceSession(model)
    assert not _fused(sess)
    assert any(e["pass"] == PASS and reason in e["reason"] for e in sess.report["refused"]), sess.report["refused"]
    for g_, w in zip(sess.run(None, feeds), ReferenceEvaluator(model).run(None, feeds)):
        np.testing.assert_allclose(g_, w, rtol=1e-5, atol=1e-5)

