"""The executor's float32 Conv / MatMul / Gemm on normrt's GEMM kernel (ops/conv.py,
ops/matmul.py): results against float64 numpy, constant weights packed once."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

import normrt.api.conv as api_conv
import normrt.api.gemm as api_gemm
from normrt.onnx.executor import Executor

rng = np.random.default_rng(41)


def _model():
    w = rng.standard_normal((12, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    g = rng.standard_normal((20, 240)).astype(np.float32)          # Gemm B, transB=1: (N, K)
    c = rng.standard_normal(20).astype(np.float32)
    mm = rng.standard_normal((20, 7)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 0, 2, 1]),
        helper.make_node("Reshape", ["y", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "g", "c"], ["h"], transB=1),
        helper.make_node("Reshape", ["h", "shape3"], ["h3"]),
        helper.make_node("MatMul", ["h3", "mm"], ["out"]),
    ]
    inits = {"w": w, "b": b, "g": g, "c": c, "mm": mm,
             "shape": np.array([2, 240], np.int64), "shape3": np.array([2, 1, 20], np.int64)}
    graph = helper.make_graph(
        nodes, "gemm_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 9, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 1, 7])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, inits


def _reference(x, p):
    x, w = x.astype(np.float64), p["w"].astype(np.float64)
    xp = np.zeros((2, 5, 9 + 1 + 2, 8 + 0 + 1))
    xp[:, :, 1:10, 0:8] = x
    oh, ow = (xp.shape[2] - 3) // 2 + 1, (xp.shape[3] - 3) // 2 + 1
    y = np.zeros((2, 12, oh, ow))
    for i in range(3):
        for j in range(3):
            y += np.einsum("nchw,mc->nmhw", xp[:, :, i:i + 2 * oh - 1:2, j:j + 2 * ow - 1:2], w[:, :, i, j])
    y += p["b"].reshape(1, -1, 1, 1)
    h = y.reshape(2, 240) @ p["g"].astype(np.float64).T + p["c"]
    return (h.reshape(2, 1, 20) @ p["mm"]).astype(np.float64)


def test_conv_gemm_matmul_match_numpy_and_pack_once(monkeypatch):
    model, params = _model()
    calls = {"conv": 0, "matmul": 0}
    real_conv, real_mm = api_conv.pack_conv_weight, api_gemm.pack_matmul_weight

    def count_conv(*a, **k):
        calls["conv"] += 1
        return real_conv(*a, **k)

    def count_mm(*a, **k):
        calls["matmul"] += 1
        return real_mm(*a, **k)

    monkeypatch.setattr(api_conv, "pack_conv_weight", count_conv)
    monkeypatch.setattr(api_gemm, "pack_matmul_weight", count_mm)
    ex = Executor(model)
    x = rng.standard_normal((2, 5, 9, 8)).astype(np.float32)
    want = _reference(x, params)
    for _ in range(3):
        (got,) = ex.run({"x": x})
        assert got.dtype == np.float32 and got.shape == (2, 1, 7)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the Conv weight, the Gemm B (transposed) and the MatMul weight: packed on the first run only
    assert calls == {"conv": 1, "matmul": 2}
