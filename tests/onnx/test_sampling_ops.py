"""GridSample, AffineGrid and Col2Im (normrt.onnx.ops.sampling, pyx/grid_sample.pyx) against
onnx.reference, with generated shapes, grids, modes and padding modes; onnxruntime where the
reference departs from torch (cubic with border padding) or cannot run a form (opset 16's mode
names, which the reference does not know)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from test_ops import check, run_ort, run_ours, run_ref

import normrt
from normrt._kernels import grid_sample as kgrid

MODES_20 = ["linear", "nearest", "cubic"]
NAMES_16 = {"linear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}
PADDINGS = ["zeros", "border", "reflection"]


@st.composite
def grid_cases(draw, rank=None):
    rank = draw(st.sampled_from([1, 2, 3])) if rank is None else rank
    mode = draw(st.sampled_from(MODES_20 if rank == 2 else MODES_20[:2]))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    spatial = tuple(draw(st.lists(st.integers(1, 6), min_size=rank, max_size=rank)))
    out = tuple(draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, *spatial)).astype(np.float32)
    grid = rng.uniform(-2.5, 2.5, (n, *out, rank)).astype(np.float32)
    # the corners and centre of the normalized box, exactly
    specials = np.array([-1.0, 1.0, 0.0, -1.0, 1.0], np.float32)
    grid.reshape(-1)[: min(grid.size, specials.size)] = specials[: min(grid.size, specials.size)]
    attrs = dict(mode=mode, padding_mode=draw(st.sampled_from(PADDINGS)),
                 align_corners=draw(st.integers(0, 1)))
    return x, grid, attrs


@settings(max_examples=80, deadline=None)
@given(grid_cases())
def test_grid_sample_matches_reference(case):
    x, grid, attrs = case
    cubic_border = attrs["mode"] == "cubic" and attrs["padding_mode"] == "border"
    # the reference divides by zero reflecting about a one-pixel axis with align_corners
    one_pixel_mirror = attrs["padding_mode"] == "reflection" and attrs["align_corners"] and 1 in x.shape[2:]
    if one_pixel_mirror and x.ndim == 3:
        # onnxruntime takes no 1-D input: mirrored into one pixel, every sample is that pixel
        ref = [np.broadcast_to(x[:, :, :1], x.shape[:2] + grid.shape[1:2])]
    elif cubic_border or one_pixel_mirror:
        ref = run_ort("GridSample", [x, grid], attrs, 20, 1)   # cubic border: the reference clamps first (below)
    else:
        ref = run_ref("GridSample", [x, grid], attrs, 20, 1)
    check("GridSample", [x, grid], attrs, opset=20, rtol=1e-5, atol=1e-5, ref=ref)


@settings(max_examples=40, deadline=None)
@given(grid_cases(rank=2))
def test_grid_sample_opset16_mode_names(case):
    """torch's opset-16 export writes "bilinear" / "bicubic": the same sampling as opset 20's names."""
    x, grid, attrs = case
    got = run_ours("GridSample", [x, grid], {**attrs, "mode": NAMES_16[attrs["mode"]]}, 16, 1)
    want = run_ours("GridSample", [x, grid], attrs, 20, 1)
    np.testing.assert_array_equal(got[0], want[0])
    ort_out = run_ort("GridSample", [x, grid], {**attrs, "mode": NAMES_16[attrs["mode"]]}, 16, 1)
    np.testing.assert_allclose(got[0], ort_out[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("align_corners", [0, 1])
def test_cubic_border_clamps_taps_not_the_coordinate(align_corners):
    """Where onnx.reference and torch/onnxruntime differ, normrt takes torch's side: a coordinate
    outside the image keeps its fraction, and only the taps are clamped."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 5, 7)).astype(np.float32)
    grid = rng.uniform(-3.5, 3.5, (1, 12, 12, 2)).astype(np.float32)
    attrs = dict(mode="cubic", padding_mode="border", align_corners=align_corners)
    got = check("GridSample", [x, grid], attrs, opset=20, rtol=1e-5, atol=1e-5, ref="ort")
    ref = run_ref("GridSample", [x, grid], attrs, 20, 1)[0]
    assert not np.allclose(got[0], ref, atol=1e-3)    # the two definitions do differ here
    inside = np.all(np.abs(grid) <= 0.5, axis=-1)[:, None]   # ... and agree away from the border
    np.testing.assert_allclose(np.where(inside, got[0], 0), np.where(inside, ref, 0), rtol=1e-5, atol=1e-5)


def test_grid_sample_float64_and_far_grids():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 4, 5))
    grid = np.array([[[[1e30, 0.0], [-np.inf, 0.2], [np.nan, 0.5], [0.3, -7.0]]]])
    for pad in PADDINGS:
        for mode in MODES_20:
            out = run_ours("GridSample", [x, grid], dict(mode=mode, padding_mode=pad), 20, 1)[0]
            assert out.dtype == np.float64 and out.shape == (1, 2, 1, 4)
            if pad == "zeros":      # far outside reads zeros
                np.testing.assert_array_equal(out[..., [0, 1, 3]], 0)
            elif mode == "nearest":     # border / reflection land on a pixel of x
                assert np.isin(out[..., [0, 1, 3]], x).all()
    finite = grid[..., :2, :].copy()
    finite[..., 0] = [5.0, -5.0]
    # (the reference denormalizes in float32 whatever the grid's type)
    check("GridSample", [x, finite], dict(mode="linear", padding_mode="border"), opset=20, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", MODES_20)
def test_grid_sample_kernel_bitwise_across_threads(mode):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 33, 47)).astype(np.float32)
    grid = rng.uniform(-1.2, 1.2, (2, 40, 61, 2)).astype(np.float32)
    ref = None
    for threads in (1, 2, 3):
        with normrt.threads(threads):
            out = run_ours("GridSample", [x, grid], dict(mode=mode, padding_mode="reflection"), 20, 1)[0]
        if ref is None:
            ref = out
        np.testing.assert_array_equal(out, ref)
    y = np.empty((2, 5, 40 * 61), np.float32)
    taps = np.zeros((2, 40 * 61, 2), np.intp)
    weights = np.ones((2, 40 * 61, 2), np.float32)
    for threads in (1, 2, 3):    # the kernel itself, at any thread count its caller passes
        kgrid.gather(x, y, taps, weights, taps, weights, threads)
        np.testing.assert_array_equal(y, np.broadcast_to(4 * x[:, :, :1, 0], y.shape))


def test_grid_sample_kernel_refuses_indices_outside_x():
    x = np.zeros((1, 1, 3, 4), np.float32)
    y = np.empty((1, 1, 2), np.float32)
    ok = np.zeros((1, 2, 1), np.intp)
    w = np.ones((1, 2, 1), np.float32)
    with pytest.raises(ValueError, match="ry"):
        kgrid.gather(x, y, ok + 3, w, ok, w, 1)
    with pytest.raises(ValueError, match="cx"):
        kgrid.gather(x, y, ok, w, ok - 2, w, 1)
    with pytest.raises(ValueError, match="tap tables"):
        kgrid.gather(x, y, ok[:, :1], w[:, :1], ok, w, 1)


def test_grid_sample_half_model_runs_on_numpy_ops():
    """A float16 GridSample (a .half() export) runs without onnx.reference, in float32 inside."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float16)
    grid = rng.uniform(-1, 1, (1, 5, 6, 2)).astype(np.float16)
    node = helper.make_node("GridSample", ["x", "g"], ["y"], mode="bilinear", padding_mode="zeros")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, x.shape),
                                            helper.make_tensor_value_info("g", TensorProto.FLOAT16, grid.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    sess = normrt.InferenceSession(model)
    assert [s.kind for s in sess.executor.steps] != ["reference"]
    got = sess.run(None, {"x": x, "g": grid})[0]
    want = run_ours("GridSample", [x.astype(np.float32), grid.astype(np.float32)], dict(mode="linear"), 20, 1)[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3)


def test_grid_sample_bad_grid_names_the_node():
    node = helper.make_node("GridSample", ["x", "g"], ["y"], name="warp")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                            helper.make_tensor_value_info("g", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    sess = normrt.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    with pytest.raises(ValueError, match="grid of shape") as info:
        sess.run(None, {"x": np.zeros((1, 2, 4, 4), np.float32), "g": np.zeros((1, 3, 3, 3), np.float32)})
    assert any("warp" in note for note in info.value.__notes__)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([2, 3]), st.integers(1, 3), st.integers(0, 1), st.integers(0, 2**31 - 1))
def test_affine_grid_matches_reference(rank, n, align_corners, seed):
    rng = np.random.default_rng(seed)
    spatial = rng.integers(2, 7, rank).tolist()
    theta = rng.standard_normal((n, rank, rank + 1)).astype(np.float32)
    size = np.array([n, 3, *spatial], np.int64)
    check("AffineGrid", [theta, size], dict(align_corners=align_corners), opset=20, rtol=1e-5, atol=1e-6)


def test_affine_grid_single_pixel_axis_is_the_centre():
    """A one-pixel axis samples at 0 (torch and onnxruntime; the reference's arange gives -1)."""
    theta = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], np.float32)
    for align_corners in (0, 1):
        grid = run_ours("AffineGrid", [theta, np.array([1, 1, 1, 3], np.int64)],
                        dict(align_corners=align_corners), 20, 1)[0]
        np.testing.assert_array_equal(grid[0, 0, :, 1], 0)
        np.testing.assert_allclose(grid[0, 0, :, 0], [-1, 0, 1] if align_corners else [-2 / 3, 0, 2 / 3],
                                   rtol=1e-6)


@st.composite
def col2im_cases(draw):
    rank = draw(st.sampled_from([1, 2, 3]))
    block = draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    dil = draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank))
    strides = draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    pads = draw(st.lists(st.integers(0, 2), min_size=2 * rank, max_size=2 * rank))
    image = [draw(st.integers(max(1, d * (k - 1) + 1 - p0 - p1), 7))
             for d, k, p0, p1 in zip(dil, block, pads[:rank], pads[rank:])]
    blocks = [(i + p0 + p1 - d * (k - 1) - 1) // s + 1
              for i, d, k, s, p0, p1 in zip(image, dil, block, strides, pads[:rank], pads[rank:])]
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    x = np.random.default_rng(draw(st.integers(0, 2**31 - 1))).standard_normal(
        (n, c * int(np.prod(block)), int(np.prod(blocks)))).astype(np.float32)
    return x, image, block, dict(dilations=dil, strides=strides, pads=pads)


@settings(max_examples=80, deadline=None)
@given(col2im_cases())
def test_col2im_matches_reference(case):
    x, image, block, attrs = case
    check("Col2Im", [x, np.array(image, np.int64), np.array(block, np.int64)], attrs, opset=18,
          rtol=1e-5, atol=1e-6)


def test_col2im_folds_what_an_unfold_cut():
    """Non-overlapping blocks (MobileViT-v2's fold): Col2Im exactly undoes the patch extraction."""
    rng = np.random.default_rng(11)
    img = rng.standard_normal((2, 4, 6, 8)).astype(np.float32)
    cols = img.reshape(2, 4, 3, 2, 4, 2).transpose(0, 1, 3, 5, 2, 4).reshape(2, 16, 12)
    out = run_ours("Col2Im", [cols, np.array([6, 8], np.int64), np.array([2, 2], np.int64)],
                   dict(strides=[2, 2]), 18, 1)[0]
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("bad, match", [
    ((1, 10, 12), "multiple of"),
    ((1, 8, 11), "sliding blocks"),
    ((8, 12), r"\(N, C"),
])
def test_col2im_refuses_inconsistent_shapes(bad, match):
    with pytest.raises(ValueError, match=match):
        run_ours("Col2Im", [np.zeros(bad, np.float32), np.array([6, 8], np.int64), np.array([2, 2], np.int64)],
                 dict(strides=[2, 2]), 18, 1)


def test_sampling_model_has_no_fallback():
    """Conv -> GridSample(flow) -> Col2Im in one session: every node on normrt's ops, = onnx.reference."""
    rng = np.random.default_rng(13)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2, "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("GridSample", ["h", "g"], ["s"], mode="linear", padding_mode="border"),
             helper.make_node("Reshape", ["s", "shape"], ["cols"]),
             helper.make_node("Col2Im", ["cols", "image", "block"], ["y"], strides=[2, 2])]
    inits = [w, numpy_helper.from_array(np.array([1, 8, 16], np.int64), "shape"),
             numpy_helper.from_array(np.array([8, 8], np.int64), "image"),
             numpy_helper.from_array(np.array([2, 2], np.int64), "block")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                                           helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, 4, 4, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    feeds = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
             "g": rng.uniform(-1.1, 1.1, (1, 4, 4, 2)).astype(np.float32)}
    sess = normrt.InferenceSession(model)
    assert not [s.node.op_type for s in sess.executor.steps if s.kind == "reference"]
    from onnx.reference import ReferenceEvaluator
    np.testing.assert_allclose(sess.run(None, feeds)[0], ReferenceEvaluator(model).run(None, feeds)[0],
                               rtol=1e-5, atol=1e-5)


def test_affine_grid_size_fed_at_run_time():
    """`size` decides the output's shape: a session fed different sizes gives each its own grid."""
    node = helper.make_node("AffineGrid", ["theta", "size"], ["g"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("theta", TensorProto.FLOAT, [1, 2, 3]),
                                            helper.make_tensor_value_info("size", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("g", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    sess = normrt.InferenceSession(model)
    theta = np.array([[[0.9, 0.1, 0.0], [-0.2, 1.1, 0.3]]], np.float32)
    from onnx.reference import ReferenceEvaluator
    for size in ([1, 1, 3, 4], [1, 2, 5, 2], [1, 1, 3, 4]):
        feeds = {"theta": theta, "size": np.array(size, np.int64)}
        got = sess.run(None, feeds)[0]
        np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, feeds)[0], rtol=1e-6, atol=1e-7)
        assert got.shape == (1, size[2], size[3], 2)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_col2im_overlapping_blocks_same_bits_for_any_thread_count(threads):
    """Overlapping 3x3 blocks at stride 1 with pads (the sums' order fixed per plane), against the
    one-thread result and numpy's float64 fold."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 5 * 9, 12 * 10)).astype(np.float32)
    args = [x, np.array([12, 10], np.int64), np.array([3, 3], np.int64)]
    attrs = dict(pads=[1, 1, 1, 1])
    one = run_ours("Col2Im", args, attrs, 18, 1)[0]
    with normrt.threads(threads):
        got = run_ours("Col2Im", args, attrs, 18, 1)[0]
    np.testing.assert_array_equal(got, one)
    want = np.zeros((2, 5, 14, 12))
    cols = x.astype(np.float64).reshape(2, 5, 3, 3, 12, 10)
    for i in range(3):
        for j in range(3):
            want[:, :, i:i + 12, j:j + 10] += cols[:, :, i, j]
    np.testing.assert_allclose(got, want[:, :, 1:13, 1:11], rtol=1e-5, atol=1e-5)
