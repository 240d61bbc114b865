"""Attention-23 on normrt's numpy implementation (blocked softmax(QK^T)V) vs onnx.reference."""
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt

RNG = np.random.default_rng(0)


def make(shape_q, shape_k, shape_v, mask=None, **attrs):
    ins = ["Q", "K", "V"] + (["M"] if mask is not None else [])
    node = helper.make_node("Attention", ins, ["Y"], **attrs)
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip("QKV", (shape_q, shape_k, shape_v))]
    if mask is not None:
        vi.append(helper.make_tensor_value_info(
            "M", TensorProto.BOOL if mask.dtype == bool else TensorProto.FLOAT, list(mask.shape)))
    out = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["a", "b", "c", "d"][:len(shape_q)])]
    g = helper.make_graph([node], "attention", vi, out)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])


CASES = [
    ((1, 2, 300, 8), (1, 2, 300, 8), (1, 2, 300, 8), None, {}),                       # several row blocks
    ((2, 4, 17, 16), (2, 2, 33, 16), (2, 2, 33, 8), None, {"is_causal": 1}),          # grouped-query heads
    ((2, 4, 17, 16), (2, 2, 33, 16), (2, 2, 33, 8), RNG.random((17, 33)) > 0.3, {"scale": 0.3}),
    ((2, 17, 64), (2, 33, 32), (2, 33, 32), RNG.standard_normal((2, 1, 17, 33)).astype(np.float32),
     {"q_num_heads": 4, "kv_num_heads": 2}),                                          # 3-D, additive mask
    ((1, 1, 5, 4), (1, 1, 5, 4), (1, 1, 5, 4), np.zeros((5, 5), bool), {}),           # fully masked rows -> 0
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_attention_matches_reference(case, monkeypatch):
    from normrt.onnx.ops import attention as mod
    monkeypatch.setattr(mod, "BLOCK_BYTES", 4096)          # several blocks even for small shapes
    sq, sk, sv, mask, attrs = CASES[case]
    model = make(sq, sk, sv, mask, **attrs)
    feed = {n: RNG.standard_normal(s).astype(np.float32) for n, s in zip("QKV", (sq, sk, sv))}
    if mask is not None:
        feed["M"] = mask
    sess = normrt.InferenceSession(model)
    assert sess.executor.counts()["reference"] == 0
    got = sess.run(None, feed)[0]
    want = ReferenceEvaluator(model).run(None, feed)[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# scores of ~30^2 * 8 carry float32 rounding errors of ~1e-4 in the exponent (how large
# depends on the order of the dot products' additions: FMA or not)
@pytest.mark.parametrize("magnitude,rtol", [(0.01, 1e-4), (30.0, 5e-4), (1e3, 1e-4)])
def test_attention_row_bound_shift_is_exact_enough(magnitude, rtol):
    """Without a mask the rows are shifted by a Cauchy-Schwarz bound, not their max;
    large scores (bound far above the max: exp underflows) take the exact path."""
    model = make((1, 2, 70, 8), (1, 2, 90, 8), (1, 2, 90, 8))
    feed = {n: (RNG.standard_normal(s) * magnitude).astype(np.float32)
            for n, s in zip("QKV", ((1, 2, 70, 8), (1, 2, 90, 8), (1, 2, 90, 8)))}
    feed["Q"][0, 0, 3] = 0.0                       # a zero query row: uniform weights
    got = normrt.InferenceSession(model).run(None, feed)[0]
    want = ReferenceEvaluator(model).run(None, feed)[0]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-5 * magnitude)
    assert np.isfinite(got).all()


def test_attention_with_kv_cache_falls_back():
    node = helper.make_node("Attention", ["Q", "K", "V", "", "PK", "PV"], ["Y", "PKo", "PVo"])
    shapes = {"Q": [1, 2, 3, 4], "K": [1, 2, 3, 4], "V": [1, 2, 3, 4], "PK": [1, 2, 2, 4], "PV": [1, 2, 2, 4]}
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["a", "b", "c", "d"]) for n in ("Y", "PKo", "PVo")]
    g = helper.make_graph([node], "a", ins, outs)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])
    sess = normrt.InferenceSession(model)
    assert sess.executor.counts()["reference"] == 1


def test_attention_with_kv_cache_and_one_output_falls_back():
    # past_key/past_value given but only Y asked for: still onnx.reference's node
    node = helper.make_node("Attention", ["Q", "K", "V", "", "PK", "PV"], ["Y"])
    shapes = {"Q": [1, 2, 3, 4], "K": [1, 2, 3, 4], "V": [1, 2, 3, 4], "PK": [1, 2, 2, 4], "PV": [1, 2, 2, 4]}
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    outs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2, 3, 4])]
    model = helper.make_model(helper.make_graph([node], "a", ins, outs),
                              opset_imports=[helper.make_opsetid("", 23)])
    sess = normrt.InferenceSession(model)
    assert sess.executor.counts()["reference"] == 1
    feed = {n: RNG.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    np.testing.assert_allclose(sess.run(None, feed)[0], ReferenceEvaluator(model).run(None, feed)[0],
                               rtol=1e-5, atol=1e-6)
