"""The small_conv kernel (grouped convs with few input channels per group: depthwise 2-D, 1-D as one
row) against a float64 numpy reference, generated geometries; bitwise identical for 1, 2, 3 threads."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normrt._checks import activation as act_code
from normrt._kernels import small_conv


def ref_conv2d(x, w, b, strides, pads, dil, group, out_hw):
    """float64 grouped conv: y[n, m] = b[m] + sum over the group's channels and the taps (top/left pads
    given, the bottom/right ones zeros as far as the output reaches)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    oh, ow = out_hw
    (sh, sw), (pt, pl), (dh, dw) = strides, pads, dil
    hp = max(pt + h, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(pl + wd, (ow - 1) * sw + (kw - 1) * dw + 1)
    xp = np.zeros((n, c, hp, wp))
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    y = np.zeros((n, m, oh, ow)) + (0.0 if b is None else b.astype(np.float64)[None, :, None, None])
    mg = m // group
    for o in range(m):
        g = o // mg
        for ci in range(cg):
            for i in range(kh):
                for j in range(kw):
                    win = xp[:, g * cg + ci, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
                    y[:, o] += w[o, ci, i, j] * win
    return y


@settings(max_examples=60, deadline=None)
@given(groups=st.integers(1, 6), cg=st.integers(1, 4), mg=st.integers(1, 3), kh=st.integers(1, 7),
       kw=st.integers(1, 11), sh=st.integers(1, 3), sw=st.integers(1, 5), dh=st.integers(1, 2), dw=st.integers(1, 2),
       pt=st.integers(0, 4), pl=st.integers(0, 4), pb=st.integers(0, 4), pr=st.integers(0, 4),
       h=st.integers(1, 20), w=st.integers(1, 70), batch=st.integers(1, 2), bias=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_grouped_conv2d_matches_float64_and_threads(groups, cg, mg, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, h, w,
                                                     batch, bias, seed):
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, groups * cg, h, w)).astype(np.float32)
    wt = rng.standard_normal((groups * mg, cg, kh, kw)).astype(np.float32)
    b = rng.standard_normal(groups * mg).astype(np.float32) if bias else None
    want = ref_conv2d(x, wt, b, (sh, sw), (pt, pl), (dh, dw), groups, (oh, ow))
    outs = []
    for nt in (1, 2, 3):
        y = np.full((batch, groups * mg, oh, ow), np.nan, np.float32)
        small_conv.grouped_conv2d(x, wt, np.empty(0, np.float32) if b is None else b, y, sh, sw, pt, pl, dh, dw,
                                  groups, nt)
        outs.append(y)
    # float32 sums of cg * kh * kw products of standard normals
    np.testing.assert_allclose(outs[0], want, rtol=1e-5, atol=2e-6 * np.sqrt(cg * kh * kw) * 4)
    for y in outs[1:]:
        assert np.array_equal(y.view(np.uint32), outs[0].view(np.uint32))


@pytest.mark.parametrize("k,s", [(3, 1), (3, 2), (5, 1), (5, 2), (7, 1), (7, 2)])
def test_depthwise_model_shapes(k, s):
    """The depthwise convs of ConvNeXt / EfficientNet / MobileViT ("same" padding), many channels."""
    rng = np.random.default_rng(k * 10 + s)
    x = rng.standard_normal((1, 48, 17, 17)).astype(np.float32)
    wt = rng.standard_normal((48, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    p = k // 2
    o = (17 + 2 * p - k) // s + 1
    y = np.empty((1, 48, o, o), np.float32)
    small_conv.grouped_conv2d(x, wt, b, y, s, s, p, p, 1, 1, 48, 2)
    np.testing.assert_allclose(y, ref_conv2d(x, wt, b, (s, s), (p, p), (1, 1), 48, (o, o)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c,hw,k,s", [(64, 4, 7, 1), (128, 2, 7, 1), (13, 16, 7, 1), (30, 8, 3, 2), (5, 1, 3, 1)])
def test_small_depthwise_planes_side_by_side(c, hw, k, s):
    """ConvNeXt's 7x7 depthwise convs on maps of 16x16 to 2x2 (one vector per output row) run
    four channels per work item, side by side: any channel count (13: a last item of one), the
    float64 result, the same bits for any thread count."""
    rng = np.random.default_rng(c + hw)
    x = rng.standard_normal((2, c, hw, hw)).astype(np.float32)
    wt = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    p = k // 2
    o = (hw + 2 * p - k) // s + 1
    outs = []
    for nt in (1, 2, 3):
        y = np.full((2, c, o, o), np.nan, np.float32)
        small_conv.grouped_conv2d(x, wt, b, y, s, s, p, p, 1, 1, c, nt)
        outs.append(y)
    np.testing.assert_allclose(outs[0], ref_conv2d(x, wt, b, (s, s), (p, p), (1, 1), c, (o, o)), rtol=1e-5, atol=1e-5)
    for y in outs[1:]:
        assert np.array_equal(y.view(np.uint32), outs[0].view(np.uint32))


@settings(max_examples=80, deadline=None)
@given(c=st.integers(1, 37), mult=st.integers(1, 2), h=st.integers(1, 8), w=st.integers(1, 8),
       kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 2), sw=st.integers(1, 2),
       dil=st.integers(1, 2), pads=st.lists(st.integers(0, 2), min_size=4, max_size=4), batch=st.integers(1, 2),
       bias=st.booleans(), act=st.sampled_from([None, "relu"]), seed=st.integers(0, 2 ** 16))
def test_depthwise_small_maps(c, mult, h, w, kh, kw, sh, sw, dil, pads, batch, bias, act, seed):
    """Depthwise convs on 1x1 to 8x8 maps (MobileNet's last stages: planes of at most 16 outputs
    and 64 inputs, which AVX-512 builds hold in registers, and the next sizes up on the scratch
    path): any channel count (a last work item of 1-3 planes), multipliers 1 and 2, strides 1 and
    2, asymmetric pads, with and without the ReLU epilogue; the float64 result, the same bits for
    1, 2 and 3 threads."""
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - dil * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dil * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c * mult, 1, kh, kw)).astype(np.float32)
    b = rng.standard_normal(c * mult).astype(np.float32) if bias else None
    want = ref_conv2d(x, wt, b, (sh, sw), (pt, pl), (dil, dil), c, (oh, ow))
    if act == "relu":
        want = np.maximum(want, 0.0)
    outs = []
    for nt in (1, 2, 3):
        y = np.full((batch, c * mult, oh, ow), np.nan, np.float32)
        small_conv.grouped_conv2d(x, wt, np.empty(0, np.float32) if b is None else b, y, sh, sw, pt, pl, dil, dil,
                                  c, nt, act_code(act))
        outs.append(y)
    np.testing.assert_allclose(outs[0], want, rtol=1e-5, atol=2e-6 * np.sqrt(kh * kw) * 4)
    for y in outs[1:]:
        assert np.array_equal(y.view(np.uint32), outs[0].view(np.uint32))


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 21), mult=st.integers(1, 2), hw=st.integers(1, 12), k=st.sampled_from([1, 3, 5]),
       s=st.integers(1, 2), pad=st.integers(0, 2), batch=st.integers(1, 2), bias=st.booleans(),
       act=st.sampled_from([None, "relu", "silu"]), nt=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_prepared_call_is_grouped_conv2d(c, mult, hw, k, s, pad, batch, bias, act, nt, seed):
    """PreparedGroupedConv (a specialized plan's depthwise conv, checked once) gives grouped_conv2d's
    bits, on the register path's small maps and the scratch path's larger ones, with x copied
    when it is not C-contiguous."""
    o = (hw + 2 * pad - k) // s + 1
    if o < 1:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
    wt = rng.standard_normal((c * mult, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(c * mult).astype(np.float32) if bias else None
    want = np.empty((batch, c * mult, o, o), np.float32)
    small_conv.grouped_conv2d(x, wt, np.empty(0, np.float32) if b is None else b, want, s, s, pad, pad, 1, 1, c, nt,
                              act_code(act))
    call = small_conv.PreparedGroupedConv(wt, b, x.shape, want.shape, s, s, pad, pad, 1, 1, c, nt, act_code(act))
    got = np.full_like(want, np.nan)
    assert call(x, got) is got
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    strided = np.zeros((batch, c, hw, 2 * hw), np.float32)[..., ::2]
    strided[...] = x
    assert np.array_equal(call(strided, np.empty_like(want)).view(np.uint32), want.view(np.uint32))


def test_prepared_call_checks_its_arguments():
    w = np.zeros((4, 1, 3, 3), np.float32)
    call = small_conv.PreparedGroupedConv(w, None, (1, 4, 5, 5), (1, 4, 3, 3), 1, 1, 0, 0, 1, 1, 4, 1)
    with pytest.raises(ValueError, match="x must have 100"):
        call(np.zeros((1, 4, 4, 4), np.float32), np.zeros((1, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="y must be"):
        call(np.zeros((1, 4, 5, 5), np.float32), np.zeros((1, 4, 3, 3), np.float64))
    with pytest.raises(ValueError, match="do not fit"):
        small_conv.PreparedGroupedConv(w, None, (1, 4, 5, 5), (1, 4, 3, 3), 1, 1, 0, 0, 1, 1, 3, 1)
    with pytest.raises(ValueError, match="bias"):
        small_conv.PreparedGroupedConv(w, np.zeros(3, np.float32), (1, 4, 5, 5), (1, 4, 3, 3), 1, 1, 0, 0, 1, 1, 4, 1)
    with pytest.raises(ValueError, match="w must be"):
        small_conv.PreparedGroupedConv(w.astype(np.float64), None, (1, 4, 5, 5), (1, 4, 3, 3), 1, 1, 0, 0, 1, 1, 4, 1)


def test_grouped_conv2d_checks_its_arguments():
    x = np.zeros((1, 4, 5, 5), np.float32)
    w = np.zeros((4, 1, 3, 3), np.float32)
    y = np.zeros((1, 4, 3, 3), np.float32)
    none = np.empty(0, np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        small_conv.grouped_conv2d(x, w, none, y, 1, 1, 0, 0, 1, 1, 3, 1)
    with pytest.raises(ValueError, match="bias"):
        small_conv.grouped_conv2d(x, w, np.zeros(3, np.float32), y, 1, 1, 0, 0, 1, 1, 4, 1)
    with pytest.raises(ValueError, match="strides"):
        small_conv.grouped_conv2d(x, w, none, y, 0, 1, 0, 0, 1, 1, 4, 1)
    with pytest.raises(ValueError, match="pads"):
        small_conv.grouped_conv2d(x, w, none, y, 1, 1, -1, 0, 1, 1, 4, 1)
