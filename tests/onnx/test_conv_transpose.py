"""ConvTranspose on normrt's kernels (float32 1-D and 2-D: the columns' 1x1 conv on the GEMM, then
pyx/conv_transpose.pyx's col2im): generated geometries against a float64 scatter written from
the ONNX spec, the specialized plan's prepared step against the generic op bit for bit, and
the same bits for any thread count."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import normrt
from normrt._kernels import conv_transpose as _kconvt


def reference(x, w, b, group, strides, dil, pads_begin, out_sp):
    """The spec's ConvTranspose in float64: every input pixel times every tap, added at
    ih * s + k * d - pad_begin when that lands in the output."""
    n, c = x.shape[:2]
    cg, mg = c // group, w.shape[1]
    y = np.zeros((n, mg * group) + tuple(out_sp))
    x, w = x.astype(np.float64), w.astype(np.float64)
    for pos in np.ndindex(*x.shape[2:]):
        for tap in np.ndindex(*w.shape[2:]):
            o = tuple(p * s + k * d - q for p, s, k, d, q in zip(pos, strides, tap, dil, pads_begin))
            if not all(0 <= v < size for v, size in zip(o, out_sp)):
                continue
            for g in range(group):
                xs = x[(slice(None), slice(g * cg, (g + 1) * cg)) + pos]           # (n, cg)
                ws = w[(slice(g * cg, (g + 1) * cg), slice(None)) + tap]           # (cg, mg)
                y[(slice(None), slice(g * mg, (g + 1) * mg)) + o] += xs @ ws
    if b is not None:
        y += b.reshape((1, -1) + (1,) * (x.ndim - 2))
    return y


@st.composite
def geometries(draw):
    nsp = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 1, 2, 3]))
    cg, mg = draw(st.integers(1, 9)), draw(st.integers(1, 6))
    n = draw(st.integers(1, 2))
    in_sp = [draw(st.integers(1, 9)) for _ in range(nsp)]
    kernel = [draw(st.integers(1, 5)) for _ in range(nsp)]
    strides = [draw(st.integers(1, 4)) for _ in range(nsp)]
    dil = [draw(st.integers(1, 2)) for _ in range(nsp)]
    natural0 = [s * (i - 1) + (k - 1) * d + 1 for i, s, k, d in zip(in_sp, strides, kernel, dil)]
    mode = draw(st.sampled_from(["pads", "output_shape", "SAME_UPPER", "SAME_LOWER"]))
    attrs = dict(strides=strides, dilations=dil, group=group)
    if mode == "pads":
        opad = [draw(st.integers(0, max(0, min(s, d) - 1))) for s, d in zip(strides, dil)]
        pads = [draw(st.integers(0, (v + o - 1) // 2)) for v, o in zip(natural0, opad)] * 2
        attrs.update(pads=pads, output_padding=opad)
        begin = pads[:nsp]
        out_sp = [v + o - pads[i] - pads[nsp + i] for i, (v, o) in enumerate(zip(natural0, opad))]
    else:
        # output_shape given (SAME_UPPER's split of the total padding) or auto_pad SAME_* (input * stride)
        out_sp = [draw(st.integers(1, v + 3)) for v in natural0] if mode == "output_shape" else \
            [i * s for i, s in zip(in_sp, strides)]
        if mode == "output_shape":
            attrs.update(output_shape=out_sp, auto_pad="SAME_UPPER")
        else:
            attrs.update(auto_pad=mode)
        total = [v - o for v, o in zip(natural0, out_sp)]
        upper = mode != "SAME_LOWER"
        begin = [t // 2 if upper else t - t // 2 for t in total]
    return dict(n=n, c=cg * group, m=mg * group, mg=mg, group=group, in_sp=in_sp, kernel=kernel, strides=strides,
                dil=dil, begin=begin, out_sp=out_sp, attrs=attrs)


def _model(geo, w, b):
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else [])
    node = helper.make_node("ConvTranspose", ["x", "w"] + (["b"] if b is not None else []), ["y"], **geo["attrs"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          [geo["n"], geo["c"]] + geo["in_sp"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@settings(max_examples=60, deadline=None)
@given(geo=geometries(), bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_generated_geometries_against_the_spec(geo, bias, seed):
    if min(geo["out_sp"]) < 1:
        return                                  # (nothing to compute)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal([geo["n"], geo["c"]] + geo["in_sp"]).astype(np.float32)
    w = rng.standard_normal([geo["c"], geo["mg"]] + geo["kernel"]).astype(np.float32)
    b = rng.standard_normal(geo["m"]).astype(np.float32) if bias else None
    want = reference(x, w, b, geo["group"], geo["strides"], geo["dil"], geo["begin"], geo["out_sp"])
    sess = normrt.InferenceSession(_model(geo, w, b))
    runs = []
    for threads in (1, 2, 3):
        with normrt.threads(threads):
            runs.append(sess.executor.run({"x": x}, specialize=False)[0])      # the generic op
            runs += [sess.run(None, {"x": x})[0] for _ in range(2)]           # traced, then the prepared step
    assert runs[0].shape == want.shape and runs[0].dtype == np.float32
    scale = max(1.0, np.abs(want).max())
    np.testing.assert_allclose(runs[0], want, rtol=0, atol=2e-5 * scale)
    for got in runs[1:]:
        assert np.array_equal(got.view(np.uint32), runs[0].view(np.uint32))
    source = next(iter(sess.executor.specialized.values())).source
    assert "_col2im" in source                  # the prepared step, not the generic call


def test_half_model_computes_in_float32():
    """A float16 ConvTranspose (a half model's upsampling) widens, runs the float32 kernels and
    rounds once: within float16's rounding of the float64 result."""
    rng = np.random.default_rng(1)
    geo = dict(n=1, c=6, mg=4, m=4, in_sp=[5, 7], attrs=dict(strides=[2, 2], pads=[1, 0, 1, 0]))
    x = rng.standard_normal((1, 6, 5, 7)).astype(np.float16)
    w = (rng.standard_normal((6, 4, 3, 3)) * 0.3).astype(np.float16)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], **geo["attrs"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 6, 5, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    got = normrt.InferenceSession(model).run(None, {"x": x})[0]
    want = reference(x, w, None, 1, [2, 2], [1, 1], [1, 0], [9, 15])
    assert got.dtype == np.float16 and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-3, atol=2e-3)


def test_col2im_refuses_what_does_not_fit():
    cols = np.zeros((1, 2 * 9, 12), np.float32)
    y = np.zeros((1, 2, 49), np.float32)
    args = (3, 4, 7, 7, 3, 3, 2, 2, 1, 1, 0, 0, 1)
    _kconvt.col2im(cols, np.zeros(0, np.float32), y, *args)           # fits: no error
    with pytest.raises(ValueError, match="do not fit"):
        _kconvt.col2im(cols[:, :17], np.zeros(0, np.float32), y, *args)
    with pytest.raises(ValueError, match="bias"):
        _kconvt.col2im(cols, np.zeros(3, np.float32), y, *args)
    with pytest.raises(ValueError, match="strides"):
        _kconvt.col2im(cols, np.zeros(0, np.float32), y, *(args[:6] + (0,) + args[7:]))


def _col2im_numpy(cols, bias, n, m, ih, iw, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl):
    """col2im written with numpy slices: the bias, then each tap's rows added where they land,
    the taps in row-major order (the kernel's order, so the same bits)."""
    y = np.zeros((n, m, oh, ow), np.float32) + (bias.reshape(1, m, 1, 1) if bias.size else np.float32(0))
    c = cols.reshape(n, m, kh, kw, ih, iw)
    for a in range(kh):
        for b in range(kw):
            for i in range(ih):
                r = i * sh + a * dh - pt
                if not 0 <= r < oh:
                    continue
                for j in range(iw):
                    q = j * sw + b * dw - pl
                    if 0 <= q < ow:
                        y[:, :, r, q] += c[:, :, a, b, i, j]
    return y


@settings(max_examples=40, deadline=None)
@given(iw=st.integers(1, 70), kw=st.integers(1, 4), sw=st.integers(1, 3), dw=st.integers(1, 2),
       pl=st.integers(0, 3), extra=st.integers(-2, 3), threads=st.integers(1, 2), seed=st.integers(0, 2**31 - 1))
def test_col2im_wide_rows_bitwise(iw, kw, sw, dw, pl, extra, threads, seed):
    """Rows wide enough for the vector path of stride 2 (col2im_row.h: 16 inputs over the even
    lanes of two output vectors, a masked add): the bits of the scalar order, -0.0 kept where
    a tap adds nothing, nothing written past the plane (the next plane's values stay)."""
    rng = np.random.default_rng(seed)
    n, m, ih, kh = 1, 3, 2, 2
    ow = max(1, (iw - 1) * sw + (kw - 1) * dw + 1 - 2 * pl + extra)
    oh = ih + kh - 1
    cols = rng.standard_normal((n, m * kh * kw, ih * iw)).astype(np.float32)
    cols[0, 0, :5] = -0.0
    bias = np.array([-0.0, 1.5, -2.0], np.float32)
    y = np.full((n, m, oh * ow), np.nan, np.float32)
    _kconvt.col2im(cols, bias, y, ih, iw, oh, ow, kh, kw, 1, sw, 1, dw, 0, pl, threads)
    want = _col2im_numpy(cols, bias, n, m, ih, iw, oh, ow, kh, kw, 1, sw, 1, dw, 0, pl)
    assert np.array_equal(y.reshape(want.shape).view(np.uint32), want.view(np.uint32))
