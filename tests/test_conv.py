"""normrt.conv2d (implicit-im2col packed GEMM) against a float64 reference, on listed and generated shapes."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normrt
from dtype_checks import ACTS, ref_act, same_bits
from normrt._checks import activation as _act_code
from normrt._kernels import conv as _kconv
from normrt.api.gemm import workspace as _workspace

rng = np.random.default_rng(31)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def ref_conv(x, w, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1, pad_mode="constant"):
    """Direct float64 convolution: one shifted-slice product per tap (pads by numpy's np.pad
    of that mode)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = strides, dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), mode=pad_mode)
    oh = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    y = np.zeros((n, m, oh, ow))
    mg = m // group
    for g in range(group):
        for i in range(kh):
            for j in range(kw):
                sl = xp[:, g * cg:(g + 1) * cg, i * dh:i * dh + (oh - 1) * sh + 1:sh,
                        j * dw:j * dw + (ow - 1) * sw + 1:sw]
                y[:, g * mg:(g + 1) * mg] += np.einsum("nchw,mc->nmhw", sl, w[g * mg:(g + 1) * mg, :, i, j])
    return y


def abs_ref(x, w, **kw):
    return ref_conv(np.abs(x), np.abs(w), **kw)


def assert_close(y, want, scale, k):
    tol = 1e-6 * np.sqrt(k) * (scale + np.abs(want)) + 1e-30
    assert np.all(np.abs(y - want) <= tol), float(np.max(np.abs(y - want) / tol))


CASES = [
    # (x shape, weight shape, strides, pads, dilations, group)
    ((1, 3, 23, 29), (17, 3, 7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),      # a stem
    ((2, 16, 15, 13), (40, 16, 3, 3), (1, 1), (1, 0, 2, 1), (2, 2), 1),    # asymmetric pads, dilation 2
    ((2, 64, 14, 14), (64, 64, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),    # 1x1: x read as B
    ((1, 37, 11, 9), (31, 37, 1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),     # strided 1x1 downsample
    ((1, 8, 9, 9), (16, 4, 3, 3), (2, 1), (1, 1, 1, 1), (1, 1), 2),        # grouped
    ((1, 6, 7, 7), (6, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6),         # depthwise
    ((3, 5, 1, 1), (7, 5, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),         # 1x1 pixels, batch 3
    ((1, 2, 5, 6), (3, 2, 5, 6), (1, 1), (0, 0, 0, 0), (1, 1), 1),         # kernel = image
    ((1, 3, 4, 4), (2, 3, 3, 3), (3, 3), (2, 0, 0, 2), (1, 1), 1),         # pads wider than the taps reach
    ((2, 13, 33, 35), (29, 13, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),    # edge tiles in M and N
    ((2, 24, 13, 13), (70, 24, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),    # 7x7 output: transposed product
    ((1, 40, 14, 14), (96, 40, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),    # transposed, x read as a matrix
    ((1, 32, 12, 12), (48, 16, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),    # grouped, padded width
    ((2, 64, 7, 7), (128, 32, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 2),     # grouped, transposed
    ((1, 20, 16, 16), (72, 20, 3, 3), (2, 2), (0, 2, 1, 0), (1, 2), 1),    # transposed, stride 2, dilation
    ((1, 5, 6, 7), (4, 5, 1, 1), (1, 1), (0, 0, 1, 2), (1, 1), 1),         # 1x1 with trailing pads only
    ((1, 6, 35, 37), (10, 6, 3, 3), (2, 2), (0, 0, 0, 0), (1, 1), 1),      # no padding: x read in place
    ((1, 6, 35, 37), (10, 6, 3, 3), (3, 2), (0, 0, 2, 1), (1, 1), 1),      # trailing pads the taps reach
    ((1, 40, 17, 19), (21, 40, 3, 3), (1, 1), (1, 2, 2, 1), (2, 2), 1),    # padded width read in place:
                                                                            # 2 K blocks, M edge, dilation
    ((2, 60, 14, 14), (140, 30, 3, 3), (2, 2), (1, 1, 2, 0), (1, 1), 2),   # transposed, A read in place:
                                                                            # 2 K blocks, channel edge
    ((1, 24, 12, 11), (64, 24, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),    # stride 1, fewer rows
                                                                            # transposed than wide
    ((1, 5, 30, 31), (12, 5, 3, 5), (2, 3), (2, 1, 0, 3), (2, 2), 1),      # strided + dilated on the
                                                                            # padded width (phases)
    ((2, 3, 45, 46), (33, 3, 7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),      # a stem: 7x7/2 by phases
    ((1, 16, 3, 43), (64, 16, 3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),     # transposed, 41 pixels in
                                                                            # panels of MR - 1
    ((1, 16, 30, 30), (64, 16, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),    # transposed, pixels over
                                                                            # two C blocks
]


@pytest.mark.parametrize("xs,ws,st,pads,dil,group", CASES)
def test_matches_reference(xs, ws, st, pads, dil, group):
    x, w, b = rand(*xs), rand(*ws), rand(ws[0])
    kw = dict(strides=st, pads=pads, dilations=dil, group=group)
    y = normrt.conv2d(x, w, b, **kw)
    want = ref_conv(x, w, **kw) + b.reshape(1, -1, 1, 1)
    assert y.shape == want.shape and y.dtype == np.float32
    k = ws[1] * ws[2] * ws[3]
    assert_close(y, want, abs_ref(x, w, **kw) + np.abs(b).reshape(1, -1, 1, 1), k)
    packed = normrt.pack_conv_weight(w, group)
    assert np.array_equal(normrt.conv2d(x, packed, b, **kw), y)
    y64 = normrt.conv2d(x.astype(np.float64), w.astype(np.float64), b, **kw)
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ACTS)
def test_epilogue_bias_residual_activation(act):
    x, w, b = rand(2, 9, 12, 10), rand(20, 9, 3, 3), rand(20)
    kw = dict(strides=(2, 1), pads=(1, 1, 0, 1))
    pre = normrt.conv2d(x, w, b, **kw)
    res = rand(*pre.shape)
    y = normrt.conv2d(x, w, b, residual=res, activation=act, **kw)
    v = ref_conv(x, w, **kw) + b.reshape(1, -1, 1, 1) + res
    np.testing.assert_allclose(y, ref_act(v, act), rtol=2e-5, atol=2e-4)
    full = normrt.conv2d(x, w, b, residual=res, **kw)
    assert np.array_equal(y, normrt.activate(full, act) if act else full)
    # the residual broadcasts (one value per channel here)
    r1 = rand(1, 20, 1, 1)
    assert np.array_equal(normrt.conv2d(x, w, residual=r1, **kw),
                          normrt.conv2d(x, w, residual=np.broadcast_to(r1, pre.shape).copy(), **kw))


@pytest.mark.parametrize("act", [None, "relu"])
def test_small_image_epilogue(act):
    # 49 output pixels: the transposed product (pixels as rows), K over several blocks
    x, w, b = rand(2, 300, 7, 7), rand(72, 300, 3, 3), rand(72)
    res = rand(2, 72, 7, 7)
    y = normrt.conv2d(x, w, b, pads=(1, 1, 1, 1), residual=res, activation=act)
    v = ref_conv(x, w, pads=(1, 1, 1, 1)) + b.reshape(1, -1, 1, 1) + res
    want = np.maximum(v, 0) if act else v
    scale = abs_ref(x, w, pads=(1, 1, 1, 1)) + np.abs(b).reshape(1, -1, 1, 1) + np.abs(res)
    assert_close(y, want, scale, 2700)


def test_out_and_residual_in_out():
    x, w = rand(1, 300, 9, 9), rand(16, 300, 3, 3)     # K = 2700: several K blocks write y first
    res = rand(1, 16, 7, 7)
    want = normrt.conv2d(x, w, residual=res, activation="relu")
    out = res.copy()
    assert normrt.conv2d(x, w, residual=out, activation="relu", out=out) is out
    assert np.array_equal(out, want)
    out2 = np.empty_like(want)
    assert normrt.conv2d(x, w, residual=res, activation="relu", out=out2) is out2
    assert np.array_equal(out2, want)


@pytest.mark.parametrize("xs,ws,st,pads,group", [
    ((2, 16, 31, 29), (40, 16, 3, 3), (1, 1), (1, 1, 1, 1), 1),
    ((1, 256, 7, 7), (300, 256, 3, 3), (1, 1), (1, 1, 1, 1), 1),     # few pixels: M is split
    ((3, 32, 40, 40), (64, 16, 3, 3), (2, 2), (0, 1, 1, 0), 2),
    ((1, 96, 14, 14), (200, 96, 3, 3), (2, 2), (1, 1, 1, 1), 1),     # transposed, channels split
    ((1, 16, 30, 30), (64, 16, 3, 3), (1, 1), (1, 1, 1, 1), 1),      # transposed, pixels split
    ((1, 3, 128, 128), (64, 3, 7, 7), (2, 2), (3, 3, 3, 3), 1),      # 3 planes: padded in row bands
])
def test_same_bits_for_any_thread_count(xs, ws, st, pads, group):
    x, w, b = rand(*xs), rand(*ws), rand(ws[0])
    outs = []
    for t in (1, 2, 3):
        with normrt.threads(t):
            outs.append(normrt.conv2d(x, w, b, strides=st, pads=pads, group=group, activation="gelu"))
    assert outs[0].size * ws[1] * ws[2] * ws[3] * 2 > 16e6
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_bad_input():
    x, w = rand(1, 4, 8, 8), rand(6, 4, 3, 3)
    with pytest.raises(ValueError, match=r"x must be a 4-D \(N, C, H, W\)"):
        normrt.conv2d(rand(4, 8, 8), w)
    with pytest.raises(TypeError, match="x must be a float32 or float64"):
        normrt.conv2d(np.ones((1, 4, 8, 8), np.int64), w)
    with pytest.raises(ValueError, match=r"weight must be a 4-D \(M, C/group, kh, kw\)"):
        normrt.conv2d(x, rand(6, 4, 3))
    with pytest.raises(ValueError, match="x has 4 channels; weight"):
        normrt.conv2d(x, rand(6, 3, 3, 3))
    with pytest.raises(ValueError, match=r"weight's output channels \(6\) must be divisible by group=4"):
        normrt.conv2d(x, rand(6, 1, 3, 3), group=4)
    with pytest.raises(ValueError, match="group must be an int >= 1"):
        normrt.conv2d(x, w, group=0)
    with pytest.raises(ValueError, match="strides must be a sequence of 2 ints"):
        normrt.conv2d(x, w, strides=(1,))
    with pytest.raises(ValueError, match="strides must be >= 1"):
        normrt.conv2d(x, w, strides=(0, 1))
    with pytest.raises(ValueError, match="pads must be a sequence of 4 ints"):
        normrt.conv2d(x, w, pads=(1, 1))
    with pytest.raises(ValueError, match="pads must be >= 0"):
        normrt.conv2d(x, w, pads=(1, 1, -1, 1))
    with pytest.raises(ValueError, match="dilations must be a sequence of 2 ints"):
        normrt.conv2d(x, w, dilations=(1.5, 1))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        normrt.conv2d(x, w, dilations=(4, 4))
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        normrt.conv2d(x, w, rand(4))
    with pytest.raises(ValueError, match=r"residual must have shape \(1, 6, 6, 6\)"):
        normrt.conv2d(x, w, residual=rand(1, 6, 8, 8))
    with pytest.raises(ValueError, match="activation must be one of"):
        normrt.conv2d(x, w, activation="tanh")
    with pytest.raises(ValueError, match=r"out must have shape \(1, 6, 6, 6\)"):
        normrt.conv2d(x, w, out=rand(1, 6, 8, 8))
    sq = rand(1, 4, 8, 8)
    with pytest.raises(ValueError, match="out must not overlap x"):
        normrt.conv2d(sq, rand(4, 4, 1, 1), out=sq)
    packed = normrt.pack_conv_weight(w)
    with pytest.raises(ValueError, match="weight was packed for group=1, got group=2"):
        normrt.conv2d(rand(1, 8, 8, 8), packed, group=2)
    with pytest.raises(TypeError, match="x must be float32 with a packed weight"):
        normrt.conv2d(x.astype(np.float64), packed)
    with pytest.raises(ValueError, match="must not be empty"):
        normrt.pack_conv_weight(rand(0, 4, 3, 3))


# ---- generated shapes ----------------------------------------------------------
# Channels on both sides of the micro-kernel's tiles (MR = 8 rows, NR = 32
# columns on AVX-512, 6 / 16 on AVX2): M edge panels, a transposed weight panel
# part zeros, K over several 256-deep blocks; every stride, dilation and
# (asymmetric) padding; groups; bias, residual and activation epilogues.

@st.composite
def conv_problems(draw):
    group = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cg, mg = draw(st.integers(1, 24)), draw(st.integers(1, 70))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    # at least one output row and column
    h = draw(st.integers(max(1, (kh - 1) * dh + 1 - pads[0] - pads[2]), 21))
    # (up to 40 columns: a stride-2 phase row of more than one vector in the padded copy)
    w = draw(st.integers(max(1, (kw - 1) * dw + 1 - pads[1] - pads[3]), draw(st.sampled_from([21, 40]))))
    n = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, cg * group, h, w)).astype(np.float32)
    wt = r.standard_normal((mg * group, cg, kh, kw)).astype(np.float32)
    kwargs = dict(strides=(sh, sw), pads=pads, dilations=(dh, dw), group=group)
    oh = (h + pads[0] + pads[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (w + pads[1] + pads[3] - (kw - 1) * dw - 1) // sw + 1
    b = r.standard_normal(mg * group).astype(np.float32) if draw(st.booleans()) else None
    res = r.standard_normal((n, mg * group, oh, ow)).astype(np.float32) if draw(st.booleans()) else None
    act = draw(st.sampled_from(ACTS))
    return x, wt, b, res, act, kwargs


@settings(max_examples=120, deadline=None)
@given(conv_problems())
def test_generated_shapes_match_float64_reference(problem):
    x, w, b, res, act, kw = problem
    pre = normrt.conv2d(x, w, b, residual=res, **kw)
    want = ref_conv(x, w, **kw)
    scale = abs_ref(x, w, **kw)
    if b is not None:
        want = want + b.reshape(1, -1, 1, 1)
        scale = scale + np.abs(b).reshape(1, -1, 1, 1)
    if res is not None:
        want = want + res
        scale = scale + np.abs(res)
    assert pre.shape == want.shape and pre.dtype == np.float32
    assert_close(pre, want, scale, w.shape[1] * w.shape[2] * w.shape[3])
    # the activation is applied to exactly those sums, by the same code as normrt.activate
    y = normrt.conv2d(x, w, b, residual=res, activation=act, **kw)
    assert same_bits(y, normrt.activate(pre, act) if act else pre)
    if act:
        np.testing.assert_allclose(y, ref_act(pre.astype(np.float64), act), rtol=1e-5, atol=1e-6)


def _kernel_conv(x, w, b, res, act, kw, transposed, n_threads, in_place=False):
    """The conv kernel itself, product and thread count forced (normrt.conv2d picks both);
    in_place: y written into (a copy of) the residual's buffer, passed as both."""
    (sh, sw), (pt, pl, pb, pr), (dh, dw), group = kw["strides"], kw["pads"], kw["dilations"], kw["group"]
    n, c, h, wd = x.shape
    m, cg, kh, kwd = w.shape
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + pl + pr - (kwd - 1) * dw - 1) // sw + 1
    packed = normrt.pack_conv_weight(w, group)
    y = res.copy() if in_place else np.empty((n, m, oh, ow), np.float32)
    size = _kconv.conv_workspace_size(n, c, oh, ow, kh, kwd, sh, sw, pt, pl, dh, dw, m // group, n_threads)
    empty = np.empty(0, np.float32)
    res = y if in_place else res
    _kconv.conv2d(x, packed.transposed_data() if transposed else packed.data, kh, kwd, sh, sw, pt, pl, dh, dw,
                  group, transposed, y, empty if b is None else b, empty if res is None else res.reshape(-1),
                  _act_code(act), _workspace(n_threads, size), n_threads)
    return y


@settings(max_examples=80, deadline=None)
@given(conv_problems())
def test_generated_shapes_same_bits_for_any_product_and_thread_count(problem):
    # the direct and the transposed product, on 1, 2 or 3 threads: every output
    # element is one lane's K sum in the same order, so the bits never change
    x, w, b, res, act, kw = problem
    want = normrt.conv2d(x, w, b, residual=res, activation=act, **kw)
    for transposed in (False, True):
        for n_threads in (1, 2, 3):
            got = _kernel_conv(x, w, b, res, act, kw, transposed, n_threads)
            assert same_bits(got, want), (transposed, n_threads)


@settings(max_examples=80, deadline=None)
@given(conv_problems(), st.sampled_from([0, 1, 2]))
def test_prepared_conv_same_bits_as_conv2d(problem, pad_mode):
    """PreparedConv (a specialized plan's conv: conv2d planned once) on each product and thread
    count: conv2d's bits, with zero, mirrored or repeated pads, bias, residual and activation."""
    x, w, b, res, act, kw = problem
    (sh, sw), (pt, pl, pb, pr), (dh, dw), group = kw["strides"], kw["pads"], kw["dilations"], kw["group"]
    n, c, h, wd = x.shape
    if pad_mode == 1 and (max(pt, pb) >= h or max(pl, pr) >= wd):
        pad_mode = 2
    mode = ("constant", "reflect", "edge")[pad_mode]
    want = normrt.conv2d(x, w, b, residual=res, activation=act, pad_mode=mode, **kw)
    m, cg, kh, kwd = w.shape
    packed = normrt.pack_conv_weight(w, group)
    for transposed in (False, True):
        for n_threads in (1, 2):
            call = _kconv.PreparedConv(packed.transposed_data() if transposed else packed.data, x.shape, want.shape,
                                       kh, kwd, sh, sw, pt, pl, dh, dw, group, transposed, b, _act_code(act),
                                       n_threads, pad_mode, pb, pr)
            y = np.empty_like(want)
            work = np.empty(call.workspace_size, np.float32)
            assert call(x, y, work, None if res is None else res.reshape(-1)) is y
            assert same_bits(y, want), (transposed, n_threads)


def test_prepared_conv_refuses_bad_arrays():
    x, w = rand(1, 4, 6, 6), rand(8, 4, 3, 3)
    packed = normrt.pack_conv_weight(w)
    call = _kconv.PreparedConv(packed.data, x.shape, (1, 8, 4, 4), 3, 3, 1, 1, 0, 0, 1, 1, 1, False, None, 0, 1)
    work = np.empty(call.workspace_size, np.float32)
    with pytest.raises(ValueError, match="y must be"):
        call(x, np.empty((1, 8, 4, 5), np.float32), work)
    with pytest.raises(ValueError, match="work must be"):
        call(x, np.empty((1, 8, 4, 4), np.float32), np.empty(3, np.float32))
    with pytest.raises(ValueError, match="x must have"):
        call(rand(1, 4, 6, 5), np.empty((1, 8, 4, 4), np.float32), work)
    with pytest.raises(ValueError, match="residual"):
        call(x, np.empty((1, 8, 4, 4), np.float32), work, rand(3))
    with pytest.raises(ValueError, match="packed size"):
        _kconv.PreparedConv(packed.data[:-1].copy(), x.shape, (1, 8, 4, 4), 3, 3, 1, 1, 0, 0, 1, 1, 1, False, None,
                            0, 1)
    y = np.empty((1, 8, 4, 4), np.float32)
    call(x[:, :, :, ::-1], y, work)         # a strided x is copied first
    assert same_bits(y, normrt.conv2d(np.ascontiguousarray(x[:, :, :, ::-1]), w))


def _may_alias(x, w, kw, transposed):
    (sh, sw), (pt, pl, pb, pr), (dh, dw), group = kw["strides"], kw["pads"], kw["dilations"], kw["group"]
    n, c, h, wd = x.shape
    m, cg, kh, kwd = w.shape
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + pl + pr - (kwd - 1) * dw - 1) // sw + 1
    return _kconv.residual_may_be_y(oh, ow, kh, kwd, sh, sw, pt, pl, dh, dw, m // group, cg, transposed)


@settings(max_examples=80, deadline=None)
@given(conv_problems())
def test_generated_shapes_residual_buffer_as_y(problem):
    # where residual_may_be_y allows it, y written into the residual's own buffer (the
    # executor's in-place residual) gives the bits of a separate y, on any product and thread count
    x, w, b, res, act, kw = problem
    if res is None:
        res = np.random.default_rng(7).standard_normal(normrt.conv2d(x, w, **kw).shape).astype(np.float32)
    want = normrt.conv2d(x, w, b, residual=res, activation=act, **kw)
    for transposed in (False, True):
        if _may_alias(x, w, kw, transposed):
            for n_threads in (1, 2):
                got = _kernel_conv(x, w, b, res, act, kw, transposed, n_threads, in_place=True)
                assert same_bits(got, want), (transposed, n_threads)
    # and normrt.conv2d(out=residual) computes in place or through a copy, the same bits either way
    out = res.copy()
    assert normrt.conv2d(x, w, b, residual=out, activation=act, out=out, **kw) is out
    assert same_bits(out, want)


@pytest.mark.parametrize("xs,ws,strides", [
    ((1, 40, 7, 7), (16, 40, 5, 5), (1, 1)),     # implicit im2col (3 output columns: not on the
                                                 # padded width), K = 1000: four K blocks
    ((1, 300, 6, 6), (8, 300, 1, 1), (1, 1)),    # 1x1 read as a matrix, K = 300
    ((1, 300, 6, 6), (8, 300, 1, 1), (2, 2)),    # strided 1x1: implicit im2col
])
def test_residual_buffer_refused_with_several_k_blocks(xs, ws, strides):
    # y holds partial sums before the residual is read: the predicate refuses, and rightly
    # (aliasing anyway gives other numbers), so normrt.conv2d(out=residual) takes a copy
    x, w = rand(*xs), rand(*ws)
    kw = dict(strides=strides, pads=(0, 0, 0, 0), dilations=(1, 1), group=1)
    assert not _may_alias(x, w, kw, False)
    res = rand(*normrt.conv2d(x, w, **kw).shape)
    want = normrt.conv2d(x, w, residual=res, **kw)
    assert not np.allclose(_kernel_conv(x, w, None, res, None, kw, False, 1, in_place=True), want)
    out = res.copy()
    normrt.conv2d(x, w, residual=out, out=out, **kw)
    assert same_bits(out, want)


@pytest.mark.parametrize("xs,ws,st,pads", [
    ((1, 3, 97, 101), (32, 3, 7, 7), (4, 4), (3, 2, 1, 3)),     # SegFormer-like stem, uneven pads
    ((1, 3, 64, 64), (48, 3, 3, 3), (1, 1), (1, 1, 1, 1)),
    ((2, 2, 50, 40), (40, 2, 5, 5), (1, 1), (4, 0, 2, 3)),      # pads past the kernel's reach
])
@pytest.mark.parametrize("threads", [2, 3, 4])
def test_few_planes_padded_in_row_bands_match_reference(xs, ws, st, pads, threads):
    """Fewer input planes than 4 per thread: the zero-padded copy is split into row bands across
    the threads; every band boundary (inside the top/bottom padding or the image) must give the
    float64 reference and the one-thread bits."""
    x, w = rand(*xs), rand(*ws)
    with normrt.threads(threads):
        got = normrt.conv2d(x, w, strides=st, pads=pads)
    with normrt.threads(1):
        one = normrt.conv2d(x, w, strides=st, pads=pads)
    np.testing.assert_allclose(got, ref_conv(x, w, strides=st, pads=pads), rtol=1e-4, atol=1e-4)
    assert same_bits(got, one)


# ---------------------------------------------------------------- mirrored pads (pad_mode)
# A reflection / replication Pad fused into the conv (pad_into_conv): the padded copy writes
# the mirrored border. Every layout of that copy - plain, stride phases, row bands of few
# planes, the transposed product's - against np.pad's.

@st.composite
def mirrored_problems(draw):
    mode = draw(st.sampled_from(["reflect", "edge"]))
    group = draw(st.sampled_from([1, 1, 2]))
    cg, mg = draw(st.integers(1, 12)), draw(st.integers(1, 48))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    # reflect: every pad smaller than its axis; and at least one output row and column
    h = draw(st.integers(max(1, (kh - 1) * dh + 1 - pads[0] - pads[2], max(pads[0], pads[2]) + 1), 24))
    w = draw(st.integers(max(1, (kw - 1) * dw + 1 - pads[1] - pads[3], max(pads[1], pads[3]) + 1), 40))
    r = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = r.standard_normal((draw(st.integers(1, 2)), cg * group, h, w)).astype(np.float32)
    wt = r.standard_normal((mg * group, cg, kh, kw)).astype(np.float32)
    return x, wt, dict(strides=(sh, sw), pads=pads, dilations=(dh, dw), group=group, pad_mode=mode)


@settings(max_examples=100, deadline=None)
@given(mirrored_problems())
def test_generated_mirrored_pads_match_np_pad(problem):
    x, w, kw = problem
    with normrt.threads(1):
        one = normrt.conv2d(x, w, **kw)
    assert_close(one, ref_conv(x, w, **kw), abs_ref(x, w, **kw), w.shape[1] * w.shape[2] * w.shape[3])
    for n_threads in (2, 3):
        with normrt.threads(n_threads):
            assert same_bits(normrt.conv2d(x, w, **kw), one)
    # float64 (numpy) pads the same way
    y64 = normrt.conv2d(x.astype(np.float64), w.astype(np.float64), **kw)
    np.testing.assert_allclose(y64, ref_conv(x, w, **kw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
@pytest.mark.parametrize("xs,ws,st,pads", [
    ((1, 3, 264, 260), (16, 3, 9, 9), (1, 1), (4, 4, 4, 4)),    # a style-transfer stem: row bands
    ((1, 16, 66, 66), (32, 16, 3, 3), (2, 2), (1, 1, 1, 1)),    # strided: stride-phase copy
    ((1, 64, 16, 16), (64, 64, 3, 3), (1, 1), (1, 1, 1, 1)),    # small map: transposed product
    ((1, 5, 30, 9), (8, 5, 3, 3), (1, 1), (2, 8, 0, 8)),        # pads up to the width - 1
])
def test_mirrored_pads_every_copy_layout(mode, xs, ws, st, pads):
    x, w = rand(*xs), rand(*ws)
    b, act = rand(ws[0]), "relu"
    with normrt.threads(3):
        got = normrt.conv2d(x, w, b, strides=st, pads=pads, pad_mode=mode, activation=act)
    with normrt.threads(1):
        one = normrt.conv2d(x, w, b, strides=st, pads=pads, pad_mode=mode, activation=act)
    want = np.maximum(ref_conv(x, w, strides=st, pads=pads, pad_mode=mode) + b.reshape(1, -1, 1, 1), 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert same_bits(got, one)


def test_mirrored_pads_bad_input():
    x, w = rand(1, 4, 6, 5), rand(8, 4, 3, 3)
    for bad in ("wrap", "zeros", None, 1):
        with pytest.raises(ValueError, match="pad_mode"):
            normrt.conv2d(x, w, pads=(1, 1, 1, 1), pad_mode=bad)
    with pytest.raises(ValueError, match="smaller than x's spatial size"):
        normrt.conv2d(x, w, pads=(1, 5, 1, 1), pad_mode="reflect")     # width 5: a pad of 5 reflects nothing
    # edge has no such limit
    np.testing.assert_allclose(normrt.conv2d(x, w, pads=(1, 7, 6, 1), pad_mode="edge"),
                               ref_conv(x, w, pads=(1, 7, 6, 1), pad_mode="edge"), rtol=1e-4, atol=1e-4)
    # the kernel itself re-checks what it trusts
    with pytest.raises(ValueError, match="pad_mode or pads"):
        y = np.empty((1, 8, 6, 5), np.float32)
        pw = normrt.pack_conv_weight(w)
        _kconv.conv2d(x, pw.data, 3, 3, 1, 1, 1, 5, 1, 1, 1, False, y, np.empty(0, np.float32),
                      np.empty(0, np.float32), 0, _workspace(1, 1 << 16), 1, 1, 1, 1)


# ---------------------------------------------------------------- LeakyRelu epilogue
@settings(max_examples=60, deadline=None)
@given(conv_problems(), st.sampled_from([1e-3, 0.01, 0.1, 0.2, 1.0, 3.0]))
def test_generated_leaky_relu_epilogue_is_the_ops_values(problem, alpha):
    """activation="leaky_relu": the conv's own epilogue gives exactly where(v > 0, v, alpha v) of
    the conv's sums (what ONNX LeakyRelu computes after it), on every product and thread count."""
    x, w, b, res, _, kw = problem
    pre = normrt.conv2d(x, w, b, residual=res, **kw)
    want = np.where(pre > 0, pre, pre * np.float32(alpha))
    for n_threads in (1, 2, 3):
        with normrt.threads(n_threads):
            got = normrt.conv2d(x, w, b, residual=res, activation="leaky_relu", alpha=alpha, **kw)
        assert same_bits(got, want)
    y64 = normrt.conv2d(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                        residual=None if res is None else res.astype(np.float64), activation="leaky_relu",
                        alpha=alpha, **kw)
    np.testing.assert_allclose(y64, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def test_leaky_relu_epilogue_special_values_and_bad_alpha():
    x, w = rand(1, 4, 6, 6), rand(8, 4, 1, 1)
    x[0, :, 0, :4] = np.array([np.inf, -np.inf, np.nan, 0.0], np.float32)[:, None]   # inf, -inf, NaN, 0 rows
    pre = normrt.conv2d(x, w)
    with np.errstate(invalid="ignore"):
        want = np.where(pre > 0, pre, pre * np.float32(0.2))
    got = normrt.conv2d(x, w, activation="leaky_relu", alpha=0.2)
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))
    for bad, err in ((0.0, ValueError), (-0.1, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
                     ("0.1", TypeError), (True, TypeError)):
        with pytest.raises(err, match="alpha"):
            normrt.conv2d(x, w, activation="leaky_relu", alpha=bad)
    # the other normrt kernels have no LeakyRelu
    with pytest.raises(ValueError, match="activation"):
        normrt.layer_norm(rand(2, 8), activation="leaky_relu")
