"""Convolutions: Conv and ConvTranspose, 1D/2D/3D.

float32 2-D Conv (not depthwise) runs on normrt's GEMM kernel (normrt.conv2d:
implicit im2col, weight packed once per initializer); float32 2-D depthwise
convs on the small_conv kernel (pyx/small_conv.pyx); 1-D convs as 2-D ones of one
row, 3-D convs as 2-D ones per depth tap (_conv3d_float32). The rest is numpy + BLAS:
Conv lowers to im2col (a strided view copied once) and one batched BLAS GEMM
over all groups; 1x1 unpadded convs skip im2col; depthwise convs (one input
channel per group) accumulate shifted slices instead of a GEMM.
ConvTranspose is the adjoint: one GEMM then col2im (float32 1-D/2-D: a 1x1 conv on the GEMM
kernel, then pyx/conv_transpose.pyx; the rest numpy's GEMM and shifted-slice adds).
"""
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..._kernels import conv as _kconv
from ..._kernels import conv_transpose as _kconvt
from ..._kernels import small_conv as _ksmall
from ..._thread_policy import compute_bound, memory_bound
from ...api.conv import PAD_MODES as _PAD_MODES, conv2d as _conv2d, conv_threads
from ...api.gemm import gemm_activation
from ...api.gemm import _EMPTY
from ._blas import gemm, packed_conv_transpose_weight, packed_conv_weight
from ._spatial import auto_pad_ok, forward_pads, out_size, pad_to, tap_slices
from ._util import attr_ints, attr_str, low_precision, op


def _conv_supported(node):
    return auto_pad_ok(node)


def _to_compute(a):
    return a.astype(np.float32) if low_precision(a.dtype) else a


# grouped convs with fewer input channels per group than this (depthwise:
# 1) keep the shifted-slice / BLAS paths: a GEMM with K = Cg*kh*kw that small
# is mostly packing
KERNEL_MIN_GROUP_CHANNELS = 8


def _check_operands(node, x, w, b, transposed):
    """Raise ValueError unless x, W and B fit together as the spec says: the kernels index
    x by W's shape (im2col reads through a strided view), so a model whose weight does not
    match its input must stop here, not read past the end of x."""
    op_type = "ConvTranspose" if transposed else "Conv"
    if x.ndim < 3 or w.ndim != x.ndim:
        raise ValueError(f"{op_type}: X must have rank >= 3 and W the same rank; got X {x.shape}, W {w.shape}")
    nsp = x.ndim - 2
    group = int(node.attrs.get("group", 1))
    if group < 1:
        raise ValueError(f"{op_type}: group must be >= 1, got {group}")
    if transposed:
        c_w, m = w.shape[0], w.shape[1] * group
        if x.shape[1] != c_w or c_w % group:
            raise ValueError(f"{op_type}: X has {x.shape[1]} channels, W {w.shape} expects {c_w} "
                             f"(a multiple of group={group})")
    else:
        m = w.shape[0]
        if x.shape[1] != w.shape[1] * group or m % group:
            raise ValueError(f"{op_type}: X has {x.shape[1]} channels but W {w.shape} with group={group} "
                             f"expects {w.shape[1] * group}, and W's {m} output channels a multiple of group")
    if b is not None and b.shape != (m,):
        raise ValueError(f"{op_type}: B must have shape ({m},), got {b.shape}")
    for name in ("strides", "dilations"):
        v = attr_ints(node, name)
        if v is not None and (len(v) != nsp or min(v) < 1):
            raise ValueError(f"{op_type}: {name} must be {nsp} positive integers, got {v}")
    pads = attr_ints(node, "pads")
    if pads is not None and len(pads) != 2 * nsp:
        raise ValueError(f"{op_type}: pads must have {2 * nsp} entries, got {pads}")


def _operands(node, x, w, b, transposed):
    """(x, w, the output's dtype): checked, half precision widened to float32, w in x's dtype."""
    _check_operands(node, x, w, b, transposed)
    out_dtype = x.dtype
    x, w = _to_compute(x), _to_compute(w)
    return x, (w if w.dtype == x.dtype else w.astype(x.dtype)), out_dtype


@op("Conv", gemm=True, since=1, supports=_conv_supported)
def conv(node, x, w, b=None):
    x, w, out_dtype = _operands(node, x, w, b, transposed=False)
    nsp = x.ndim - 2
    kernel = list(w.shape[2:])
    strides = attr_ints(node, "strides") or [1] * nsp
    dil = attr_ints(node, "dilations") or [1] * nsp
    group = int(node.attrs.get("group", 1))
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    mg = m // group
    pb, pe = forward_pads(node, x.shape[2:], kernel, strides, dil)
    out_sp = [out_size(x.shape[2 + i], pb[i], pe[i], kernel[i], strides[i], dil[i]) for i in range(nsp)]
    if nsp == 1 and x.dtype == np.float32 and min(out_sp) > 0 and min(pb) >= 0 and min(pe) >= 0 and w.size \
            and c == cg * group:
        # 1-D as 2-D with one row: the same kernels (wav2vec2's and whisper's feature convs)
        y = _conv2d_float32(x[:, :, None], w[:, :, None], b, [1] + strides, [0] + pb, [0] + pe, [1] + dil, group,
                            [1] + out_sp)
        return y.reshape(n, m, out_sp[0]).astype(out_dtype, copy=False)
    if (nsp == 2 and x.dtype == np.float32 and min(out_sp) > 0 and min(pb) >= 0 and min(pe) >= 0 and w.size
            and c == cg * group):
        return _conv2d_float32(x, w, b, strides, pb, pe, dil, group, out_sp).astype(out_dtype, copy=False)
    if (nsp == 3 and x.dtype == np.float32 and min(out_sp) > 0 and min(pb) >= 0 and min(pe) >= 0 and w.size
            and c == cg * group):
        return _conv3d_float32(x, w, b, strides, pb, pe, dil, group, out_sp).astype(out_dtype, copy=False)
    osz = int(np.prod(out_sp))
    ksz = int(np.prod(kernel))
    # the output is written in place by the GEMMs: y3[i, group rows] = W_g @ cols(x_i, g)
    y = np.empty((n, m) + tuple(out_sp), dtype=x.dtype)
    y3 = y.reshape(n, m, osz)
    beta = 0.0
    if b is not None and y.size:
        # the bias goes in first and the GEMMs accumulate onto it (beta=1): one
        # write pass instead of a read-modify-write pass after them
        np.copyto(y3, b.astype(y.dtype, copy=False).reshape(1, m, 1))
        beta = 1.0
    if y.size == 0:
        pass
    elif all(k == 1 for k in kernel) and not any(pb) and not any(pe):
        # 1x1: straight to GEMM (x_i is already the (C, H*W) matrix), strided subsampling if needed
        if any(s != 1 for s in strides):
            x = np.ascontiguousarray(
                x[(slice(None), slice(None)) + tuple(slice(None, (o - 1) * s + 1, s) for o, s in zip(out_sp, strides))])
        x3 = x.reshape(n, c, osz)
        wg = np.ascontiguousarray(w.reshape(group, mg, cg))
        for i in range(n):
            for g in range(group):
                gemm(wg[g], x3[i, g * cg:(g + 1) * cg], y3[i, g * mg:(g + 1) * mg], beta=beta)
    elif (nsp == 2 and group == 1 and all(st == 1 for st in strides) and c >= SHIFTED_MIN_CHANNELS
          and osz >= SHIFTED_MIN_PIXELS):
        _shifted_gemm(x, w, y3, pb, kernel, dil, out_sp, beta)
    else:
        need = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out_sp, strides, kernel, dil)]
        xp = pad_to(x, pb, need, 0)
        if group == c and cg == 1 and group > 1:
            d = _depthwise(xp, w, group, mg, kernel, strides, dil, out_sp).reshape(n, m, osz)
            if beta:
                y3 += d
            else:
                y3[...] = d
        else:
            _im2col_gemm(xp, np.ascontiguousarray(w.reshape(group, mg, cg * ksz)), y3, group, kernel,
                         strides, dil, out_sp, beta)
    return y if y.dtype == out_dtype else y.astype(out_dtype)


# Largest im2col buffer built in one piece; bigger ones are built and
# multiplied in bands of output rows (first spatial axis) to bound memory.
IM2COL_BYTES = 32 << 20
_scratch = threading.local()


def _scratch_buffer(size, dtype):
    """A reusable 1-D buffer of at least `size` elements (per Python thread): im2col
    columns die right after their GEMM, so every Conv of a run can share one."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.dtype != dtype or buf.size < size:
        buf = np.empty(size, dtype)
        _scratch.buf = buf
    return buf[:size]


# Stride-1 2-D convs with many input channels and output pixels skip im2col:
# one GEMM per kernel tap on a shifted view of the padded input, no (C*K, H*W)
# column copy (DenseNet-121's im2col copies: ~10 of its 65 ms). Measured
# (2 cores): 128 -> 32 channels at 56x56 1.58 ms vs 1.81 ms with im2col; at
# 64 channels or 28x28 and below the nine small GEMMs lose, so only then.
SHIFTED_MIN_CHANNELS = 128
SHIFTED_MIN_PIXELS = 2500


def _shifted_gemm(x, w, y3, pb, kernel, dil, out_sp, beta):
    """y3 (N, M, oh*ow) += sum over taps (a, b) of W[:, :, a, b] @ shift_(a,b)(x_i).

    The input is padded to width Wp and one extra row; on that grid the tap
    (a, b) reads the flat (C, Hp*Wp) image at offset a*dh*Wp + b*dw, a plain
    (C, oh*Wp) matrix with leading dimension Hp*Wp that BLAS reads in place.
    The GEMMs write an (M, oh*Wp) block whose first ow columns of each row
    are the output.
    """
    n, c = x.shape[:2]
    m = w.shape[0]
    (kh, kw), (dh, dw), (oh, ow) = kernel, dil, out_sp
    wp = ow + (kw - 1) * dw
    need = [oh + (kh - 1) * dh + 1, wp]            # one spare row: the last taps run past the end
    xp = pad_to(x, pb, need, 0)
    if xp is x or not xp.flags.c_contiguous:
        xp = np.ascontiguousarray(xp) if xp is not x else xp.copy()
    hp = need[0]
    flat = xp.reshape(n, c, hp * wp)
    wt = np.ascontiguousarray(w.transpose(2, 3, 0, 1))          # (kh, kw, M, C)
    wide = _scratch_buffer(m * oh * wp, x.dtype).reshape(m, oh * wp)
    for i in range(n):
        out = y3[i].reshape(m, oh, ow)
        for t, (a, b) in enumerate(np.ndindex(kh, kw)):
            off = a * dh * wp + b * dw
            gemm(wt[a, b], flat[i, :, off:off + oh * wp], wide, beta=0.0 if t == 0 else 1.0)
        crop = wide.reshape(m, oh, wp)[:, :, :ow]
        if beta:
            out += crop
        else:
            out[...] = crop


def _im2col_gemm(xp, wg, y3, group, kernel, strides, dil, out_sp, beta=0.0):
    """y3 (N, M, O) = per image i and group g: wg[g] (Mg, Cg*K) @ im2col(xp[i, g])."""
    n = xp.shape[0]
    nsp = len(kernel)
    mg, ck = wg.shape[1], wg.shape[2]
    cg = ck // int(np.prod(kernel))
    osz = int(np.prod(out_sp))
    row = osz // out_sp[0]                               # output pixels per first-axis row
    band = max(1, IM2COL_BYTES // max(1, ck * row * xp.itemsize))
    es = xp.strides
    for i in range(n):
        for g in range(group):
            xg = xp[i, g * cg:(g + 1) * cg]
            for r0 in range(0, out_sp[0], band):
                r1 = min(out_sp[0], r0 + band)
                band_sp = [r1 - r0] + list(out_sp[1:])
                start = xg[(slice(None), slice(r0 * strides[0], None))]
                # view (Cg, k..., o...) of the taps, copied once into the (Cg*K, O) columns
                view = as_strided(start, shape=(cg,) + tuple(kernel) + tuple(band_sp),
                                  strides=(es[1],) + tuple(es[2 + d] * dil[d] for d in range(nsp))
                                  + tuple(es[2 + d] * strides[d] for d in range(nsp)),
                                  writeable=False)
                cols = _scratch_buffer(ck * (r1 - r0) * row, xp.dtype).reshape(view.shape)
                np.copyto(cols, view)
                gemm(wg[g], cols.reshape(ck, (r1 - r0) * row),
                     y3[i, g * mg:(g + 1) * mg, r0 * row:r1 * row], beta=beta)


def _conv2d_float32(x, w, b, strides, pb, pe, dil, group, out_sp):
    """A float32 2-D conv (checked: pads >= 0, a non-empty output) on normrt's kernels: few input
    channels per group on the small_conv kernel, the rest on the GEMM (normrt.conv2d)."""
    if on_small_conv(w.shape[1], group):
        return _small_group_conv(x, w, b, strides, pb, dil, group, out_sp)
    return _conv2d(x, packed_conv_weight(w, group), None if b is None else _to_compute(b), strides=strides,
                   pads=(pb[0], pb[1], pe[0], pe[1]), dilations=dil, group=group)


def _conv3d_float32(x, w, b, strides, pb, pe, dil, group, out_sp):
    """A float32 3-D conv as 2-D convs on normrt's kernels, one per depth tap: x is laid out depth
    first, (N, D, C, H, W), so the input planes a tap reads for every output depth are one batch
    of (C, H, W) images; tap kd's 2-D conv over them (weight w[:, :, kd], packed once) adds into
    the output depths it reaches, the taps in order, the bias with the first. 3-D UNets' 3x3x3
    convs and video patch embeddings (VideoMAE's tubelets, kernel = stride) run on the GEMM
    instead of numpy's im2col: one-node models, 2 threads, (1, 32, 16, 32, 32) 3x3x3 13.1 ->
    5.8-6.2 ms, (1, 3, 16, 224, 224) k (2, 16, 16) 5.1 -> 4.5 ms; a tiny (1, 3, 2, 32, 32) one
    105 -> 98 us, the conv2d calls' checks (~15 us a tap) most of it."""
    n, c, d = x.shape[:3]
    m, kd_n = w.shape[0], w.shape[2]
    od_n, oh, ow = out_sp
    sd, dd, pd = strides[0], dil[0], pb[0]
    # (the transposes keep the (H, W) planes whole: numpy copies them plane by plane)
    xt = np.empty((n, d, c) + x.shape[3:], np.float32)
    np.copyto(xt, x.transpose(0, 2, 1, 3, 4))
    yt = None
    for kd in range(kd_n):
        # output depths od whose input depth od * sd + kd * dd - pd lies inside x
        lo = max(0, -(-(pd - kd * dd) // sd))
        hi = min(od_n, (d - 1 - kd * dd + pd) // sd + 1)
        if lo >= hi:
            continue
        i0 = lo * sd + kd * dd - pd
        planes = np.ascontiguousarray(xt[:, i0:i0 + (hi - lo - 1) * sd + 1:sd]).reshape(n * (hi - lo), c,
                                                                                        *x.shape[3:])
        covers = yt is None and (lo, hi) == (0, od_n)   # the first tap, reaching every output depth
        bias = b if covers else None
        if on_small_conv(w.shape[1], group):
            part = _small_group_conv(planes, np.ascontiguousarray(w[:, :, kd]), bias, strides[1:], pb[1:], dil[1:],
                                     group, [oh, ow])
        else:
            part = _conv2d(planes, packed_conv_weight(w, group, depth_tap=kd), bias, strides=strides[1:],
                           pads=(pb[1], pb[2], pe[1], pe[2]), dilations=dil[1:], group=group)
        part = part.reshape(n, hi - lo, m, oh, ow)
        if covers:
            yt = part
            continue
        if yt is None:                      # the depths no tap has reached yet hold the bias alone
            yt = _bias_planes(b, (n, od_n, m, oh, ow))
        yt[:, lo:hi] += part
    if yt is None:                          # no tap reaches any output depth
        yt = _bias_planes(b, (n, od_n, m, oh, ow))
    y = np.empty((n, m, od_n, oh, ow), np.float32)
    np.copyto(y, yt.transpose(0, 2, 1, 3, 4))
    return y


def _bias_planes(b, shape):
    """(N, D, M, H, W) float32 planes holding 0 + bias[m] (zeros without a bias)."""
    y = np.zeros(shape, np.float32)
    if b is not None:
        y += b.reshape(1, 1, -1, 1, 1)
    return y


def on_small_conv(cg, group):
    """Whether a float32 conv with `cg` input channels per group runs on the small_conv kernel
    (else the GEMM). Measured (1 thread, us, GEMM / small_conv): depthwise 3x3-7x7 at 2x2 to
    32x32, 1.5-2.5x faster than the former tap-by-tap kernel; one input channel (wav2vec2's
    first conv, 1 -> 32 3x3 at 32x32) 23 / 17; dense convs over 3-7 channels win only on
    tiny images (3 -> 16 4x4/4 at 64x64: 23 / 18) and lose elsewhere (3 -> 32 at 224x224:
    423 / 618, 4 -> 32 at 32x32: 39 / 53), so they stay on the GEMM, which keeps its
    output channels in registers together."""
    return cg < KERNEL_MIN_GROUP_CHANNELS and (group > 1 or cg == 1)


def small_group_threads(y_size, cg, kh, kw):
    """Threads for the small_conv kernel (normrt._thread_policy) from its multiply-adds."""
    return compute_bound(2 * y_size * cg * kh * kw)


def _small_group_conv(x, w, b, strides, pb, dil, group, out_sp, act=0):
    """float32 2-D conv with few input channels per group (depthwise...) on the small_conv kernel
    (padding read in place, bias and the activation `act`, an ACT_* code, fused)."""
    m, cg, kh, kw = w.shape
    y = np.empty(x.shape[:1] + (m,) + tuple(out_sp), np.float32)
    bias = _EMPTY if b is None else np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    _ksmall.grouped_conv2d(np.ascontiguousarray(x), np.ascontiguousarray(w), bias, y, strides[0], strides[1],
                           pb[0], pb[1], dil[0], dil[1], group, small_group_threads(y.size, cg, kh, kw), act)
    return y


def small_conv_epilogue(x, w, b, strides, pads, dilations, group, act):
    """normrt::Conv without a residual on the small_conv kernel where the standard Conv runs there
    (float32 2-D, few input channels per group; pads (h_begin, w_begin, h_end, w_end)), with its
    activation `act` (ACT_* code) fused; None for every other conv (the GEMM's conv2d)."""
    if not (isinstance(x, np.ndarray) and isinstance(w, np.ndarray) and x.dtype == np.float32
            and w.dtype == np.float32 and x.ndim == 4 and w.ndim == 4 and on_small_conv(w.shape[1], group)
            and x.shape[1] == w.shape[1] * group and w.shape[0] % group == 0 and min(pads) >= 0):
        return None
    if b is not None and (not isinstance(b, np.ndarray) or b.dtype != np.float32 or b.shape != (w.shape[0],)):
        return None
    out_sp = [out_size(x.shape[2 + i], pads[i], pads[2 + i], w.shape[2 + i], strides[i], dilations[i])
              for i in range(2)]
    if min(out_sp) < 1:
        return None
    return _small_group_conv(x, w, b, strides, pads[:2], dilations, group, out_sp, act)


def _depthwise(xp, w, c, mult, kernel, strides, dil, out_sp):
    n = xp.shape[0]
    nsp = len(kernel)
    wk = w.reshape((c, mult, -1))
    acc = np.zeros((n, c, mult) + tuple(out_sp), dtype=xp.dtype)
    tmp = np.empty_like(acc)
    bshape = (1, c, mult) + (1,) * nsp
    for t, (idx, sl) in enumerate(tap_slices(kernel, strides, dil, out_sp)):
        src = xp[(slice(None), slice(None)) + sl][:, :, None]
        np.multiply(src, wk[:, :, t].reshape(bshape), out=tmp)
        acc += tmp
    return acc.reshape((n, c * mult) + tuple(out_sp))


def _convT_supported(node):
    return auto_pad_ok(node)


def _transpose_geometry(node, in_sp, kernel):
    """(strides, dilations, begin pads, output size, the full transposed conv's size) of a
    ConvTranspose on spatial input size `in_sp`: explicit pads, or output_shape / auto_pad SAME
    (ONNX's total padding split, its begin pad negative when the output is larger)."""
    nsp = len(in_sp)
    strides = attr_ints(node, "strides") or [1] * nsp
    dil = attr_ints(node, "dilations") or [1] * nsp
    opad = attr_ints(node, "output_padding") or [0] * nsp
    auto_pad = attr_str(node, "auto_pad", "NOTSET")
    out_shape = attr_ints(node, "output_shape")
    natural = [strides[i] * (in_sp[i] - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 for i in range(nsp)]
    if out_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if out_shape is None:
            out_shape = [in_sp[i] * strides[i] for i in range(nsp)]
        out_sp = list(out_shape[-nsp:])
        total = [natural[i] - out_sp[i] for i in range(nsp)]
        pb = [t // 2 for t in total] if auto_pad == "SAME_UPPER" else [t - t // 2 for t in total]
    else:
        pads = attr_ints(node, "pads") or [0] * (2 * nsp)
        if auto_pad == "VALID":
            pads = [0] * (2 * nsp)
        pb = pads[:nsp]
        out_sp = [natural[i] - pads[i] - pads[nsp + i] for i in range(nsp)]
    return strides, dil, pb, out_sp, natural


@op("ConvTranspose", gemm=True, since=1, supports=_convT_supported)
def conv_transpose(node, x, w, b=None):
    x, w, out_dtype = _operands(node, x, w, b, transposed=True)
    nsp = x.ndim - 2
    n, c = x.shape[:2]
    in_sp = list(x.shape[2:])
    kernel = list(w.shape[2:])
    group = int(node.attrs.get("group", 1))
    cg, mg = w.shape[0] // group, w.shape[1]
    m = mg * group
    strides, dil, pb, out_sp, natural = _transpose_geometry(node, in_sp, kernel)

    if x.dtype == np.float32 and nsp in (1, 2) and w.size and min(out_sp) > 0 and min(in_sp) > 0:
        y = _conv_transpose_float32(x, w, b, group, strides, dil, pb, out_sp)
        return y if y.dtype == out_dtype else y.astype(out_dtype)
    ksz = int(np.prod(kernel))
    row = int(np.prod(in_sp[1:]))                        # input pixels per first-axis row
    wt = w.reshape(group, cg, mg * ksz).transpose(0, 2, 1)
    xg = x.reshape(n, group, cg, in_sp[0], row)

    # col2im into a buffer covering [min(0, pb), max(natural, pb + out))
    lo = [min(0, p) for p in pb]
    hi = [max(natural[i], pb[i] + out_sp[i]) for i in range(nsp)]
    buf = np.zeros((n, m) + tuple(h - l for h, l in zip(hi, lo)), dtype=x.dtype)
    # cols[n, g, mg*K, rows*row] = W_g^T @ X_g, a band of input rows at a time
    band = max(1, IM2COL_BYTES // max(1, n * m * ksz * row * x.itemsize))
    for r0 in range(0, in_sp[0], band):
        r1 = min(in_sp[0], r0 + band)
        band_sp = [r1 - r0] + in_sp[1:]
        cols = np.matmul(wt, xg[:, :, :, r0:r1].reshape(n, group, cg, (r1 - r0) * row))
        cols = cols.reshape((n, m) + tuple(kernel) + tuple(band_sp))
        first = [r0 * strides[0]] + [0] * (nsp - 1)      # where this band lands
        for idx in np.ndindex(*kernel):
            sl = tuple(
                slice(f + j * d - l, f + j * d - l + (i_ - 1) * s + 1, s)
                for f, j, d, l, i_, s in zip(first, idx, dil, lo, band_sp, strides)
            )
            buf[(slice(None), slice(None)) + sl] += cols[(slice(None), slice(None)) + idx]
    crop = tuple(slice(p - l, p - l + o) for p, l, o in zip(pb, lo, out_sp))
    y = buf[(slice(None), slice(None)) + crop]
    if b is not None:
        y = y + b.astype(y.dtype, copy=False).reshape((1, m) + (1,) * nsp)
    elif any(s.start != 0 or s.stop != h for s, h in zip(crop, buf.shape[2:])):
        y = np.ascontiguousarray(y)
    return y if y.dtype == out_dtype else y.astype(out_dtype)


def _conv_transpose_float32(x, w, b, group, strides, dil, pb, out_sp):
    """A float32 1-D or 2-D ConvTranspose on normrt's kernels: the columns cols = W^T x as a 1x1
    conv on the GEMM (the weight (C, M / group, *kernel) packed once as the (M * K, C / group, 1,
    1) weight of that conv, K the taps), then col2im (pyx/conv_transpose.pyx) adding each tap's
    row where it lands, the bias first. pb: the begin pads (negative: the output starts before
    the full transposed conv's, SAME with a larger output_shape)."""
    n = x.shape[0]
    m = w.shape[1] * group
    g = _Col2im(x.shape, w.shape, strides, dil, pb, out_sp)
    cols = _conv2d(x.reshape(g.x4), packed_conv_transpose_weight(w, group), None, group=group)
    y = np.empty((n, m) + tuple(out_sp), np.float32)
    bias = _EMPTY if b is None else np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    return _col2im_into(cols, bias, y, g, memory_bound(cols.size + y.size))


class _Col2im:
    """A ConvTranspose's geometry as col2im takes it, a 1-D one as 2-D with one row: x4 (x's 2-D
    shape), ih, iw, oh, ow, kh, kw, and args (col2im's geometry arguments)."""
    def __init__(self, x_shape, w_shape, strides, dil, pb, out_sp):
        def two(v, row):            # (h, w) of a 2-D value, (row, v) of a 1-D one
            v = [int(d) for d in v]
            return [row] + v if len(v) == 1 else v
        self.ih, self.iw = two(x_shape[2:], 1)
        self.x4 = (int(x_shape[0]), int(x_shape[1]), self.ih, self.iw)
        self.kh, self.kw = two(w_shape[2:], 1)
        self.oh, self.ow = two(out_sp, 1)
        self.args = (self.ih, self.iw, self.oh, self.ow, self.kh, self.kw, *two(strides, 1), *two(dil, 1),
                     *two(pb, 0))


def _col2im_into(cols, bias, y, g, n_threads):
    n, m = y.shape[:2]
    _kconvt.col2im(cols.reshape(n, m * g.kh * g.kw, g.ih * g.iw), bias, y.reshape(n, m, g.oh * g.ow), *g.args,
                   n_threads)
    return y


def fast_conv_transpose_node(src, node, args, out_meta, buffer, n_threads=1):
    """A specialized plan's float32 1-D/2-D ConvTranspose with a constant weight, as the generic op
    runs it (_conv_transpose_float32): the columns' 1x1 conv as a prepared conv (fast_conv), then
    col2im into the step's buffer. A vocoder's small upsampling layers paid ~40 us of Python
    around ~10 of kernels in the generic call."""
    if len(args) < 2 or args[0] is None or args[1] is None or args[1][2] is None:
        return None
    (ex, (xshape, dx), _), (_, (wshape, dw_), wconst) = args[0], args[1]
    b = args[2][2] if len(args) > 2 and args[2] is not None else None
    if len(args) > 2 and args[2] is not None and (b is None or b.dtype != np.float32):
        return None
    nsp = len(xshape) - 2
    shape, dtype = out_meta
    if dx != np.float32 or dw_ != np.float32 or dtype != np.float32 or nsp not in (1, 2) \
            or len(wshape) != nsp + 2 or wconst.flags.writeable or not wconst.size:
        return None
    group = int(node.attrs.get("group", 1))
    n, c = (int(d) for d in xshape[:2])
    if group < 1 or c != wshape[0] or c % group or min(int(d) for d in xshape[2:]) < 1:
        return None         # (the generic call raises)
    strides, dil, pb, out_sp, _ = _transpose_geometry(node, list(xshape[2:]), list(wshape[2:]))
    m = int(wshape[1]) * group
    if tuple(int(d) for d in shape) != (n, m) + tuple(int(d) for d in out_sp) or min(out_sp) < 1:
        return None
    g = _Col2im(xshape, wshape, strides, dil, pb, out_sp)
    mk = m * g.kh * g.kw
    x4 = (f"{ex}.reshape({g.x4!r})", (g.x4, dx), None)
    cols = fast_conv(src, x4, packed_conv_transpose_weight(wconst, group), ((n, mk, g.ih, g.iw), np.float32),
                     None, (1, 1), (0, 0, 0, 0), (1, 1), group, n_threads=n_threads)
    if cols is None:
        return None
    bias = src.bind(_EMPTY if b is None else np.ascontiguousarray(b.reshape(-1)))
    y = str(buffer) if buffer is not None else f"np.empty({tuple(int(d) for d in shape)!r}, np.float32)"
    nt = min(n_threads, memory_bound(n * mk * g.ih * g.iw + int(np.prod(shape))))
    return f"{src.bind(_col2im_into, '_col2im')}({cols}, {bias}, {y}, {src.bind(g)}, {nt})"


def _residual_or_new(r, shape):
    """Y's array when Y may be written into the residual r (nothing reads r later): r itself when it
    is a C-contiguous writeable float32 array of Y's shape (its reshape(-1) then is a view), else a
    new one."""
    if r.flags.c_contiguous and r.flags.writeable and r.dtype == np.float32 and r.shape == shape:
        return r
    return np.empty(shape, np.float32)


def fast_conv(src, x, packed, out_meta, buffer, strides, pads, dilations, group, bias=None, residual=None,
              activation=None, n_threads=1, into_residual=False, weight=None, pad_mode="constant", alpha=0.01):
    """A specialized plan's float32 2-D conv with a packed constant weight: the expression calling the
    conv kernel directly (what normrt.conv2d calls after its checks, done here once), or None.

    `x`, `residual`: (expression, (shape, dtype), constant or None); `bias`: a float32 (M,) constant.
    `into_residual`: nothing reads the residual after this step (the executor's in-place hint), so Y
    is written into its buffer where the kernel allows it (_kconv.residual_may_be_y): one array less
    to allocate, and the lines Y writes are the residual's, already in cache. `weight`: the unpacked
    float32 weight (a small-group conv then runs on small_conv). `pad_mode`: normrt::Conv's (the
    mirrored pads of a fused reflection Pad: the GEMM, whose padded copy writes them); `alpha`:
    the slope of a "leaky_relu" activation (the GEMM's epilogue too)."""
    from ..._checks import activation as _act_code
    ex, (xshape, dx), _ = x
    shape, dtype = out_meta
    if dx != np.float32 or dtype != np.float32 or len(xshape) != 4 or packed.group != group:
        return None
    mode = _PAD_MODES.get(pad_mode)
    if mode is None or (activation == "leaky_relu" and on_small_conv(packed.shape[1], group)):
        return None         # (LeakyRelu around small_conv: the generic call)
    if mode and on_small_conv(packed.shape[1], group):
        # mirrored pads around small_conv: the copy the generic call makes (kernel_calls.conv), then
        # small_conv on it without pads
        n, c, h, w = (int(d) for d in xshape)
        pt, pl, pb, pr = pads
        if residual is not None or weight is None or min(pads) < 0 or max(pt, pb) >= h or max(pl, pr) >= w:
            return None
        from .shape_ops import mirror_pad
        padded = (f"{src.bind(mirror_pad, '_mirror_pad')}({ex}, (0, 0, {pt}, {pl}), (0, 0, {pb}, {pr}), "
                  f"{pad_mode!r})", ((n, c, h + pt + pb, w + pl + pr), dx), None)
        return fast_conv(src, padded, packed, out_meta, buffer, strides, (0, 0, 0, 0), dilations, group, bias=bias,
                         activation=activation, n_threads=n_threads, weight=weight)
    try:
        act, alpha = gemm_activation(activation, alpha)
    except (TypeError, ValueError):
        return None         # (the generic call raises)
    if residual is None and weight is not None and mode == 0 and on_small_conv(packed.shape[1], group):
        # normrt::Conv of a depthwise conv and its activation (conv_epilogue): small_conv, as
        # small_conv_epilogue in the generic call
        if bias is not None and (bias.dtype != np.float32 or bias.shape != (packed.shape[0],)):
            return None
        return _fast_small_group_conv(src, x, weight, bias, out_meta, buffer, strides, pads[:2], dilations,
                                      group, n_threads, _act_code(activation))
    n, c, h, w = (int(d) for d in xshape)
    m, cg, kh, kw = packed.shape
    sh, sw = strides
    pt, pl, pb, pr = pads
    dh, dw = dilations
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    if c != cg * group or n == 0 or (n, m, oh, ow) != tuple(shape) or min(pads) < 0 \
            or (pad_mode == "reflect" and (max(pt, pb) >= h or max(pl, pr) >= w)):
        return None         # (the generic call raises)
    if bias is not None:
        bias = np.ascontiguousarray(bias)
        if bias.dtype != np.float32 or bias.shape != (m,):
            return None
    res = ""
    if residual is not None:
        er, (rshape, rd), _ = residual
        if rd != np.float32 or tuple(rshape) != tuple(shape):
            return None
        res = f", {er}.reshape(-1)"
    nt = min(n_threads, conv_threads(n, c, m, oh, ow, kh, kw, group))    # the policy, decided once
    tr = _kconv.conv_transposed(oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, m // group, cg)
    # the kernel call bound once (pyx/conv.pyx's PreparedConv: conv2d's plan, made now)
    call = _kconv.PreparedConv(packed.transposed_data() if tr else packed.data, (n, c, h, w), (n, m, oh, ow),
                               kh, kw, sh, sw, pt, pl, dh, dw, group, tr, bias, act, nt, mode, pb, pr, alpha)
    ws = src.workspace(call.workspace_size)     # the plan's own (shared by its steps; runs hold its lock)
    y = str(buffer) if buffer is not None else f"np.empty({(n, m, oh, ow)!r}, np.float32)"
    if into_residual and residual is not None and residual[2] is None \
            and _kconv.residual_may_be_y(oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, m // group, cg, tr):
        y = f"{src.bind(_residual_or_new, '_residual_or_new')}({residual[0]}, {(n, m, oh, ow)!r})"
    return f"{src.bind(call, '_conv')}({ex}, {y}, {ws}{res})"


def fast_conv_kernel_step(src, ins, attrs, packed, out_meta, buffer, n_threads, into_residual=False):
    """normrt::Conv (conv_epilogue's fused op) in a specialized plan: fast_conv, a 1-D conv (X (N, C, L))
    as the 2-D conv of one row (views in and out, as kernel_calls.conv runs it). An audio encoder's
    ten 1-D convs with mirrored pads each went through the generic call (~12 us a conv around a
    kernel of a few)."""
    x, residual = ins[0], (ins[3] if len(ins) > 3 else None)
    bias = ins[2][2] if len(ins) > 2 and ins[2] is not None else None
    strides, pads, dil = (tuple(attrs[k]) for k in ("strides", "pads", "dilations"))
    weight, shape = ins[1][2], out_meta[0]
    one_row = len(x[1][0]) == 3
    if one_row:
        if len(strides) != 1 or len(pads) != 2 or len(dil) != 1 or len(shape) != 3 or weight.ndim != 3 \
                or (residual is not None and tuple(residual[1][0]) != tuple(shape)):
            return None         # (the generic call raises)
        x, out_meta, buffer = _one_row(x, out_meta, buffer)
        if residual is not None:
            y4 = out_meta[0]
            residual = (f"{residual[0]}.reshape({y4!r})", (y4, residual[1][1]), residual[2])
        strides, pads, dil = (1,) + strides, (0, pads[0], 0, pads[1]), (1,) + dil
        weight = weight.reshape(weight.shape[:2] + (1, weight.shape[2]))
    expr = fast_conv(src, x, packed, out_meta, buffer, strides, pads, dil, attrs["group"], bias=bias,
                     residual=residual, activation=attrs.get("activation") or None, n_threads=n_threads,
                     into_residual=into_residual, weight=weight, pad_mode=attrs.get("pad_mode", "constant"),
                     alpha=attrs.get("alpha", 0.01))
    if expr is None or not one_row:
        return expr
    return f"{expr}.reshape({tuple(int(d) for d in shape)!r})"


def fast_conv_node(src, node, args, out_meta, buffer, n_threads=1):
    """A specialized plan's float32 1-D/2-D Conv with a constant weight, taking the kernel path `conv`
    above takes (same checks): few input channels per group on small_conv, the rest through fast_conv
    (1-D as 2-D with one row, the input and output reshaped, which are views)."""
    if len(args) < 2 or args[1] is None or args[1][2] is None or args[0] is None:
        return None
    (_, (xshape, dx), _), (_, (wshape, dw_), wconst) = args[0], args[1]
    b = args[2][2] if len(args) > 2 and args[2] is not None else None
    if len(args) > 2 and args[2] is not None and b is None:
        return None
    nsp = len(xshape) - 2
    if dx != np.float32 or dw_ != np.float32 or nsp not in (1, 2) or len(wshape) != nsp + 2 \
            or wconst.flags.writeable or (b is not None and b.dtype != np.float32):
        return None
    kernel = list(wshape[2:])
    strides = attr_ints(node, "strides") or [1] * nsp
    dil = attr_ints(node, "dilations") or [1] * nsp
    group = int(node.attrs.get("group", 1))
    c, cg = xshape[1], wshape[1]
    pb, pe = forward_pads(node, xshape[2:], kernel, strides, dil)
    out_sp = [out_size(xshape[2 + i], pb[i], pe[i], kernel[i], strides[i], dil[i]) for i in range(nsp)]
    if not (min(out_sp) > 0 and min(pb) >= 0 and min(pe) >= 0 and wconst.size and c == cg * group):
        return None
    shape = out_meta[0]
    if nsp == 1:             # as `conv`: one row
        x4, out_meta, buffer = _one_row(args[0], out_meta, buffer)
        args = [x4] + list(args[1:])
        wconst = wconst.reshape(wshape[:2] + (1, wshape[2]))
        strides, dil, pb, pe, out_sp = [1] + strides, [1] + dil, [0] + pb, [0] + pe, [1] + out_sp
    if on_small_conv(cg, group):
        expr = _fast_small_group_conv(src, args[0], wconst, b, out_meta, buffer, strides, pb, dil, group,
                                      n_threads)
    else:
        expr = fast_conv(src, args[0], packed_conv_weight(wconst, group), out_meta, buffer, tuple(strides),
                         (pb[0], pb[1], pe[0], pe[1]), tuple(dil), group, bias=b, n_threads=n_threads)
    if expr is None or nsp == 2:
        return expr
    return f"{expr}.reshape({tuple(int(d) for d in shape)!r})"


def _one_row(x, out_meta, buffer):
    """A 1-D conv's X argument ((expression, (shape, dtype), constant)), output meta and buffer as
    those of its 2-D conv of one row: (N, C, L) -> (N, C, 1, L), views."""
    ex, (xshape, dx), _ = x
    x4 = (int(xshape[0]), int(xshape[1]), 1, int(xshape[2]))
    shape, dtype = out_meta
    y4 = (int(shape[0]), int(shape[1]), 1, int(shape[2]))
    return (f"{ex}.reshape({x4!r})", (x4, dx), None), (y4, dtype), None if buffer is None else _Reshaped(buffer, y4)


class _Reshaped:
    """A plan's output buffer seen with another shape (a view), for fast steps that write 2-D convs."""

    def __init__(self, buffer, shape):
        self.buffer, self.shape = buffer, tuple(int(d) for d in shape)

    def __str__(self):
        return f"{self.buffer}.reshape({self.shape!r})"


def _fast_small_group_conv(src, x, w, b, out_meta, buffer, strides, pb, dil, group, n_threads, act=0):
    """The expression calling the small_conv kernel directly (what `_small_group_conv` does per run):
    a PreparedGroupedConv bound to the weight, bias, shapes, threads and activation, checked once.
    `x`: (expression, (shape, dtype), constant or None)."""
    ex, (xshape, _), _ = x
    shape, _ = out_meta
    m, cg, kh, kw = w.shape
    size = int(np.prod(shape, dtype=np.int64))
    nt = min(n_threads, small_group_threads(size, cg, kh, kw))
    bias = None if b is None else np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    out = tuple(int(d) for d in shape)
    try:
        call = _ksmall.PreparedGroupedConv(np.ascontiguousarray(w, dtype=np.float32), bias,
                                           tuple(int(d) for d in xshape), out, strides[0], strides[1], pb[0], pb[1],
                                           dil[0], dil[1], group, nt, act)
    except ValueError:       # shapes the kernel refuses: the generic call says why, at run time
        return None
    y = str(buffer) if buffer is not None else f"np.empty({out!r}, np.float32)"
    return f"{src.bind(call, '_small_group_into')}({ex}, {y})"
