"""The executor's fast paths (two-thread elementwise splits, blocked softmax, direct GEMM convs,
private BLAS GEMM) give the same results as plain numpy / onnx.reference."""
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from normrt.onnx.ops import _blas

RNG = np.random.default_rng(3)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def run_both(nodes, inputs, outputs, inits=(), threads=2, opset=17):
    rank = next(iter(inputs.values())).ndim
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [f"d{i}" for i in range(rank)]) for o in outputs],
        list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    got = normrt.InferenceSession(model, num_threads=threads).run(None, inputs)
    want = ReferenceEvaluator(model).run(None, inputs)
    return got, want


@pytest.mark.parametrize("threads", [1, 2])
def test_big_elementwise_chain_in_place_and_split(threads):
    x, y = f32(2, 64, 48, 48), f32(2, 64, 48, 48)        # > 2^18 elements: split over two threads
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Add", ["a", "y"], ["b"]),
             helper.make_node("Sum", ["b", "x", "y"], ["c"]), helper.make_node("Sigmoid", ["c"], ["d"]),
             helper.make_node("Mul", ["d", "c"], ["e"]), helper.make_node("Relu", ["e"], ["z"])]
    x0, y0 = x.copy(), y.copy()
    got, want = run_both(nodes, {"x": x, "y": y}, ["z"], threads=threads)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,axis,opset", [((3, 100, 257), -1, 13), ((4, 1200, 300), -1, 13),
                                              ((3, 6, 7), 1, 13)])   # opset < 13: test_ops.py (vs onnxruntime)
def test_softmax_on_the_row_kernel(threads, shape, axis, opset):
    x = f32(*shape) * 4
    x[0, 5] = -np.inf                 # one -inf row: NaN, like the reference
    x[1, 3, :4] = -np.inf
    got, want = run_both([helper.make_node("Softmax", ["x"], ["y"], axis=axis)], {"x": x}, ["y"],
                         threads=threads, opset=opset)
    np.testing.assert_allclose(got[0][1:], want[0][1:], rtol=2e-6, atol=1e-7)
    assert np.isnan(got[0][0, 5]).all() == np.isnan(want[0][0, 5]).all()


@pytest.mark.parametrize("kernel,strides,pads,group,dil", [
    (1, 1, 0, 1, 1), (1, 2, 0, 1, 1), (1, 1, 0, 2, 1), (3, 1, 1, 1, 1), (3, 2, 1, 4, 1), (3, 1, 2, 1, 2),
    (5, 2, 2, 8, 1),     # depthwise
    (3, 1, 0, 1, 2), (5, 1, 3, 1, 1), (2, 1, 1, 1, 1),
])
@pytest.mark.parametrize("shifted", [False, True])
def test_conv_direct_gemm_layouts(kernel, strides, pads, group, dil, shifted, monkeypatch):
    from normrt.onnx.ops import conv as conv_mod
    if shifted:     # the per-tap shifted GEMMs instead of im2col (stride-1, ungrouped convs)
        monkeypatch.setattr(conv_mod, "SHIFTED_MIN_CHANNELS", 1)
        monkeypatch.setattr(conv_mod, "SHIFTED_MIN_PIXELS", 1)
    x = f32(2, 8, 13, 11)
    w = f32(16, 8 // group, kernel, kernel)
    b = f32(16)
    from onnx import numpy_helper
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[strides] * 2, pads=[pads] * 4, group=group,
                            dilations=[dil] * 2)
    got, want = run_both([node], {"x": x}, ["y"], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)


def test_gemm_layouts():
    a, b = f32(37, 53), f32(53, 29)
    want = a @ b
    for aa in (a, np.asfortranarray(a)):
        for bb in (b, np.asfortranarray(b), b.T.copy().T):
            np.testing.assert_allclose(_blas.gemm(aa, bb), want, rtol=1e-4, atol=1e-4)
    out = np.zeros((40, 60), np.float32)
    _blas.gemm(a, b, out[1:38, 2:31])                # a view into a bigger buffer
    np.testing.assert_allclose(out[1:38, 2:31], want, rtol=1e-4, atol=1e-4)
    assert not out[0].any() and not out[:, 31:].any()
    c = f32(37, 29)
    np.testing.assert_allclose(_blas.gemm(a, b, c.copy(), alpha=0.5, beta=2.0), 0.5 * want + 2 * c, rtol=1e-4,
                               atol=1e-4)
    q, k = f32(2, 3, 17, 8), f32(2, 3, 19, 8)
    np.testing.assert_allclose(_blas.matmul(q, k.transpose(0, 1, 3, 2)), q @ k.transpose(0, 1, 3, 2), rtol=1e-4,
                               atol=1e-4)
    assert isinstance(_blas.blas_info(), str)
