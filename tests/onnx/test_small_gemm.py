"""Batched small MatMuls on the small_gemm kernel: against float64 numpy, broadcast batch dims,
the same bits for any thread count."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import normrt


@settings(max_examples=40, deadline=None)
@given(batch=st.lists(st.integers(1, 3), min_size=1, max_size=2), m=st.integers(1, 20), k=st.integers(1, 20),
       n=st.integers(1, 20), b_batch=st.sampled_from(["same", "ones", "fewer", "none"]),
       swap=st.booleans(), transposed=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_batched_small_matmul(batch, m, k, n, b_batch, swap, transposed, seed):
    batch_a = list(batch)
    batch_b = {"same": batch, "ones": [1] * len(batch), "fewer": batch[1:], "none": []}[b_batch]
    if swap:                                      # the broadcast one on the left
        batch_a, batch_b = batch_b, batch_a
    if not batch_a and not batch_b:
        return
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(batch_a + [m, k]).astype(np.float32)
    b = rng.standard_normal(batch_b + [k, n]).astype(np.float32)
    out_rank = max(len(batch_a), len(batch_b)) + 2
    nodes, b_in = [], "b"
    if transposed:                                # K^T as attention feeds it: a Transpose before the MatMul
        b = np.ascontiguousarray(np.swapaxes(b, -1, -2))
        perm = list(range(b.ndim - 2)) + [b.ndim - 1, b.ndim - 2]
        nodes.append(helper.make_node("Transpose", ["b"], ["bt"], perm=perm))
        b_in = "bt"
    nodes.append(helper.make_node("MatMul", ["a", b_in], ["y"]))
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("a", TensorProto.FLOAT, a.shape),
                                            helper.make_tensor_value_info("b", TensorProto.FLOAT, b.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(out_rank)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    bb = np.swapaxes(b, -1, -2) if transposed else b
    want = np.matmul(a.astype(np.float64), bb.astype(np.float64))
    got = normrt.InferenceSession(model).run(None, {"a": a, "b": b})[0]
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(k))
    one = normrt.InferenceSession(model, num_threads=1).run(None, {"a": a, "b": b})[0]
    assert np.array_equal(got, one)


@settings(max_examples=40, deadline=None)
@given(count=st.integers(1, 3), m=st.integers(1, 9), k=st.integers(1, 40), n=st.integers(1, 200),
       seed=st.integers(0, 2 ** 16))
def test_kernel_sums_in_k_order_exactly(count, m, k, n, seed):
    # every output is ((0 + a0 b0) + a1 b1) + ..., each product rounded, then added: a float32
    # numpy loop over k computes exactly that (the column panels and row pairs of the AVX-512 path
    # change no output's operations)
    from normrt._kernels import small_gemm
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((count, m, k)).astype(np.float32)
    b = rng.standard_normal((count, k, n)).astype(np.float32)
    want = np.zeros((count, m, n), np.float32)
    for kk in range(k):
        want = want + a[:, :, kk:kk + 1] * b[:, kk:kk + 1, :]
    got = np.full((count, m, n), np.nan, np.float32)
    small_gemm.batched_matmul(a, b, got, 2)
    assert np.array_equal(got, want)
