"""Transpose: the tiled kernel (pyx/transpose.pyx) and the generic and specialized Transpose
steps give numpy's transpose exactly, for generated shapes, permutations and element sizes;
the permutation simplification keeps the copy the same."""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

import normrt
from normrt._kernels import transpose as _ktranspose
from normrt.onnx.ops.shape_ops import simplified_permutation, tiled_transpose, transpose_into

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, np.int64, np.uint8, np.bool_, np.float64]


@st.composite
def shapes_and_perms(draw, max_rank=6, max_dim=9):
    rank = draw(st.integers(0, max_rank))
    shape = tuple(draw(st.lists(st.integers(1, max_dim), min_size=rank, max_size=rank)))
    return shape, list(draw(st.permutations(range(rank))))


def _array(shape, dtype, rng):
    return (rng.standard_normal(shape) * 50).astype(dtype)


@settings(max_examples=200, deadline=None)
@given(case=shapes_and_perms(), dtype=st.sampled_from(DTYPES), threads=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_kernel_on_simplified_permutations(case, dtype, threads, seed):
    """Every permutation that moves the innermost axis, on the kernel directly: numpy's values."""
    shape, perm = case
    x = _array(shape, dtype, np.random.default_rng(seed))
    dims, p = simplified_permutation(shape, perm)
    assert np.array_equal(x.reshape(dims).transpose(p).reshape(-1), x.transpose(perm).reshape(-1))
    if not 2 <= len(dims) <= 8 or p[-1] == len(dims) - 1:
        return
    out = np.empty(tuple(shape[a] for a in perm), dtype)
    assert _ktranspose.transpose_into(x, out, dims, p, threads) is out
    assert np.array_equal(out.view(np.uint8), np.ascontiguousarray(x.transpose(perm)).view(np.uint8))


@settings(max_examples=150, deadline=None)
@given(outer=st.integers(1, 3), rows=st.integers(2, 70), cols=st.integers(2, 70),
       dtype=st.sampled_from([np.float32, np.float16, ml_dtypes.bfloat16, np.int32, np.uint16]),
       threads=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_vector_blocks_and_ragged_edges(outer, rows, cols, dtype, threads, seed):
    """Tiles of 4- and 2-byte words move in 8 x 8 vector blocks (transpose_tile.h), their
    ragged edges element by element: every bit is numpy's, NaN payloads and signed zeros
    included, whatever the rows, columns and threads."""
    rng = np.random.default_rng(seed)
    bits = np.uint32 if np.dtype(dtype).itemsize == 4 else np.uint16
    x = rng.integers(0, np.iinfo(bits).max, (outer, rows, cols), dtype=bits, endpoint=True).view(dtype)
    out = np.empty((outer, cols, rows), dtype)
    dims, p = simplified_permutation(x.shape, [0, 2, 1])
    _ktranspose.transpose_into(x, out, dims, p, threads)
    assert np.array_equal(out.view(bits), np.ascontiguousarray(x.transpose(0, 2, 1)).view(bits))


def test_vector_blocks_where_the_isa_has_them():
    """x86 builds move 4- and 2-byte words in vector blocks; the tiled kernel is then taken for
    any transpose whose input and output rows hold at least 8 elements."""
    import platform
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert _ktranspose.vector_blocks(4) and _ktranspose.vector_blocks(2)
    assert not _ktranspose.vector_blocks(8) and not _ktranspose.vector_blocks(1)
    if _ktranspose.vector_blocks(4):
        assert tiled_transpose((1, 16, 256), [0, 2, 1], 4) is not None
        assert tiled_transpose((1, 8, 8), [0, 2, 1], 4) is not None
    assert tiled_transpose((1, 512, 4), [0, 2, 1], 4) is None


@pytest.mark.parametrize("shape,perm", [((1, 64, 256), [0, 2, 1]), ((3, 40, 300), [2, 0, 1]), ((2, 1024, 20), [0, 2, 1]),
                                        ((1, 7, 9, 512), [0, 3, 1, 2]), ((1, 512, 16, 16), [0, 2, 3, 1])])
@pytest.mark.parametrize("dtype", DTYPES)
def test_tiled_shapes_through_the_op(shape, perm, dtype):
    """Shapes the tiled kernel takes (long input rows: CNN <-> token layouts, channels last), through
    transpose_into and a session (generic and specialized plans)."""
    rng = np.random.default_rng(0)
    x = _array(shape, dtype, rng)
    if np.dtype(dtype).itemsize >= 4:          # (shorter elements: shorter rows, numpy's copy may be kept)
        assert tiled_transpose(shape, perm, np.dtype(dtype).itemsize) is not None
    out = np.empty(tuple(shape[a] for a in perm), dtype)
    assert np.array_equal(transpose_into(x, perm, out, 2), x.transpose(perm))
    if dtype not in (np.float32, np.float16):
        return
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    nodes = [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Transpose", ["n"], ["t"], perm=perm),
             helper.make_node("Neg", ["t"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, shape)],
                              [helper.make_tensor_value_info("y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = normrt.InferenceSession(model)
    generic = sess.executor.run({"x": x}, specialize=False)[0]
    first, second = sess.run(None, {"x": x})[0], sess.run(None, {"x": x})[0]
    for got in (generic, first, second):
        assert np.array_equal(got, x.transpose(perm))
    if dtype == np.float32:
        assert "_tiled_transpose" in next(iter(sess.executor.specialized.values())).source


def test_kernel_refuses_bad_arguments():
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        _ktranspose.transpose_into(x, np.zeros((5, 4), np.float64), [4, 5], [1, 0], 1)
    with pytest.raises(ValueError, match="innermost"):
        _ktranspose.transpose_into(x, np.zeros((4, 5), np.float32), [4, 5], [0, 1], 1)
    with pytest.raises(ValueError, match="elements"):
        _ktranspose.transpose_into(x, np.zeros((5, 4), np.float32), [4, 6], [1, 0], 1)
