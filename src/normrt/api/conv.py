"""2-D convolution (NCHW) on normrt's packed GEMM, with a fused epilogue.

y[n] = act(W (M x C*kh*kw) @ im2col(x[n]) + bias + residual[n]). The kernel
never builds im2col: convs with taps to shift read it in place from a
zero-padded copy of the image (split by stride phase when strided; output
computed on the padded width, or transposed for small images), the others pack
it straight from the image. The weight is packed once with pack_conv_weight
and reused on every call. float64 runs on numpy (im2col + matmul, same
epilogue).
"""
import numbers

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import _checks as chk
from .._kernels import conv as _kconv
from .._kernels import gemm as _k
from .._thread_policy import compute_bound
from .gemm import LEAKY_RELU, aligned_empty, epilogue_numpy, gemm_activation, leaky_relu_numpy, workspace

_F32 = np.dtype(np.float32)
_EMPTY = np.empty(0, np.float32)
_MR = _k.block_sizes()[0]     # rows of the micro-kernel's tile


class PackedConvWeight:
    """A conv weight (M, C/group, kh, kw) packed for normrt.conv2d.

    Pack once (normrt.pack_conv_weight), pass it as `weight` on every call.
    `data` is the packed float32 buffer (one block per group), `shape` the
    original weight shape, `group` the group count it was packed for. Small
    images run the transposed product, which needs the weight packed the other
    way round: `transposed_data()`. Each layout is packed on its first use and
    kept: a model's conv on a fixed image size uses one of them, and packing
    both held the weight three times (light_resnet50: 97 MB of weights, 97 MB
    packed, 86 MB packed transposed).
    """

    __slots__ = ("_data", "shape", "group", "_data_t", "_source")

    def __init__(self, data, shape, group, source=None):
        self._data = data
        self.shape = shape
        self.group = group
        self._data_t = None
        self._source = source      # the (group, M/group, K) float32 weight, for either layout

    @property
    def data(self):
        if self._data is None:
            w = self._source
            g, mg, k = w.shape
            size = _k.packed_a_size(mg, k)
            data = aligned_empty(g * size)
            for i in range(g):
                _k.pack_a(w[i], data[i * size:(i + 1) * size])
            self._data = data
        return self._data

    def transposed_data(self):
        if self._data_t is None:
            w = self._source
            g, mg, k = w.shape
            size = _k.packed_b_size(k, mg)
            data = aligned_empty(g * size)
            for i in range(g):
                _kconv.pack_at(w[i], data[i * size:(i + 1) * size])
            self._data_t = data
        return self._data_t

    @property
    def dtype(self):
        return _F32

    def __repr__(self):
        return f"PackedConvWeight(shape={self.shape}, group={self.group})"


def pack_conv_weight(weight, group=1):
    """Pack a (M, C/group, kh, kw) conv weight for normrt.conv2d (as float32)."""
    if isinstance(weight, PackedConvWeight):
        if weight.group != group:
            raise ValueError(f"weight was packed for group={weight.group}, got group={group}")
        return weight
    group = chk.int_value(group, "group", min_value=1)
    if not isinstance(weight, np.ndarray):
        weight = np.asarray(weight)
    if weight.dtype.kind not in "fiu" or weight.dtype.kind == "b":
        raise TypeError(f"weight must be a numeric array, got dtype {weight.dtype}")
    if weight.ndim != 4:
        raise ValueError(f"weight must be a 4-D (M, C/group, kh, kw) array, got shape {weight.shape}")
    m, cg, kh, kw = weight.shape
    if m % group:
        raise ValueError(f"weight's output channels ({m}) must be divisible by group={group}")
    if min(weight.shape) == 0:
        raise ValueError(f"weight must not be empty, got shape {weight.shape}")
    w = np.ascontiguousarray(weight, dtype=np.float32).reshape(group, m // group, cg * kh * kw)
    return PackedConvWeight(None, tuple(int(s) for s in weight.shape), group, w)   # layouts packed on use


# Strides, pads and dilations past this would overflow the kernel's Py_ssize_t index arithmetic
# (products of two such values with a dimension); a 2^62 stride crashed it (tests/data/fuzz/).
_MAX_GEOMETRY = 2**31 - 1


def _ints(v, n, name, min_value):
    if (type(v) is tuple or type(v) is list) and len(v) == n:
        t = tuple(v)
        if all(type(i) is int for i in t) and min(t) >= min_value and max(t) <= _MAX_GEOMETRY:
            return t   # the common case, cheaply
    try:
        items = tuple(v)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of {n} ints, got {v!r}") from None
    if len(items) != n or any(isinstance(i, (bool, np.bool_)) or not isinstance(i, numbers.Integral)
                              for i in items):
        raise ValueError(f"{name} must be a sequence of {n} ints, got {v!r}")
    items = tuple(int(i) for i in items)
    if any(i < min_value for i in items):
        raise ValueError(f"{name} must be >= {min_value}, got {v!r}")
    if any(i > _MAX_GEOMETRY for i in items):
        raise ValueError(f"{name} must be <= {_MAX_GEOMETRY}, got {v!r}")
    return items


# pad_mode names (ONNX Pad's modes) -> the kernel's code (pyx/gemm_microkernel.h NRT_PAD_*)
PAD_MODES = {"constant": 0, "reflect": 1, "edge": 2}


def conv2d(x, weight, bias=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
           activation=None, residual=None, out=None, pad_mode="constant", alpha=0.01):
    """y = act(conv2d(x, weight) + bias + residual), NCHW.

    x: (N, C, H, W); weight: (M, C/group, kh, kw) array or the object from
    normrt.pack_conv_weight(weight, group); bias: (M,); pads in ONNX order
    (h_begin, w_begin, h_end, w_end); residual: the output's shape (N, M, OH,
    OW) or one that broadcasts to it; activation None or one of
    normrt.ACTIVATIONS ("gelu" is the erf form); pad_mode what the pads hold, as ONNX Pad's
    modes: "constant" (zeros), "reflect" (x mirrored about its border, torch's ReflectionPad2d:
    each pad must be smaller than x's size on its axis) or "edge" (the border repeated,
    ReplicationPad2d) - a reflection Pad before a conv, fused into its padded copy. activation
    may also be "leaky_relu", the conv's own epilogue only: v if v > 0 else alpha * v (alpha > 0;
    YOLO's 0.1, GANs' 0.2). float32 runs on normrt's GEMM (results identical for any thread
    count), float64 on numpy.
    """
    act, alpha = gemm_activation(activation, alpha)
    x = chk.tensor(x, "x")
    if x.ndim != 4:
        raise ValueError(f"x must be a 4-D (N, C, H, W) array, got shape {x.shape}")
    group = chk.int_value(group, "group", min_value=1)
    sh, sw = _ints(strides, 2, "strides", 1)
    pt, pl, pb, pr = _ints(pads, 4, "pads", 0)
    dh, dw = _ints(dilations, 2, "dilations", 1)
    mode = PAD_MODES.get(pad_mode) if isinstance(pad_mode, str) else None
    if mode is None:
        raise ValueError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    packed = isinstance(weight, PackedConvWeight)
    if packed:
        if weight.group != group:
            raise ValueError(f"weight was packed for group={weight.group}, got group={group}")
        if x.dtype != _F32:
            raise TypeError(f"x must be float32 with a packed weight, got dtype {x.dtype}")
        wshape = weight.shape
    else:
        if not isinstance(weight, np.ndarray):
            weight = np.asarray(weight)
        if weight.dtype.kind not in "fiu" or weight.dtype.kind == "b":
            raise TypeError(f"weight must be a numeric array, got dtype {weight.dtype}")
        if weight.ndim != 4:
            raise ValueError(f"weight must be a 4-D (M, C/group, kh, kw) array or a PackedConvWeight, "
                             f"got shape {weight.shape}")
        wshape = weight.shape
    m, cg, kh, kw = wshape
    n, c, h, w = x.shape
    if pad_mode == "reflect" and (max(pt, pb) >= h or max(pl, pr) >= w):
        raise ValueError(f"pads {(pt, pl, pb, pr)} with pad_mode 'reflect' must be smaller than x's spatial "
                         f"size ({h}, {w}) on their axis")
    if pad_mode == "edge" and h * w == 0 and max(pt, pl, pb, pr) > 0:
        raise ValueError(f"pad_mode 'edge' needs a non-empty x to repeat, got spatial size ({h}, {w})")
    if c != cg * group:
        raise ValueError(f"x has {c} channels; weight {wshape} with group={group} needs {cg * group}")
    if m % group:
        raise ValueError(f"weight's output channels ({m}) must be divisible by group={group}")
    if min(wshape) == 0:
        raise ValueError(f"weight must not be empty, got shape {wshape}")
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"x's padded spatial size ({h + pt + pb}, {w + pl + pr}) is smaller than the "
                         f"dilated kernel ({(kh - 1) * dh + 1}, {(kw - 1) * dw + 1})")
    out_shape = (n, m, oh, ow)
    dtype = x.dtype
    bias = chk.param(bias, "bias", (m,), dtype)
    if residual is not None:
        residual = chk.param(residual, "residual", out_shape, dtype, broadcast=True)
    y = chk.output(out, out_shape, dtype)
    if out is not None and np.may_share_memory(y, x):
        raise ValueError("out must not overlap x")
    if n == 0:
        return y
    if dtype != _F32:
        if mode:
            x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), mode=pad_mode)
            pt = pl = pb = pr = 0
        if act == LEAKY_RELU:
            return leaky_relu_numpy(_conv2d_numpy(x, weight, bias, residual, 0, y, (sh, sw), (pt, pl, pb, pr),
                                                  (dh, dw), group), alpha)
        return _conv2d_numpy(x, weight, bias, residual, act, y, (sh, sw), (pt, pl, pb, pr), (dh, dw), group)
    if not packed:
        weight = pack_conv_weight(weight, group)
    nt = conv_threads(n, c, m, oh, ow, kh, kw, group)
    size = _kconv.conv_workspace_size(n, c, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, m // group, nt)
    tr = _kconv.conv_transposed(oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, m // group, cg)
    if residual is not None and np.may_share_memory(residual, y) and not (
            _same_array(residual, y) and _kconv.residual_may_be_y(oh, ow, kh, kw, sh, sw, pt, pl, dh, dw,
                                                                 m // group, cg, tr)):
        residual = residual.copy()   # y would be written before the residual is read
    _kconv.conv2d(x, weight.transposed_data() if tr else weight.data, kh, kw, sh, sw, pt, pl, dh, dw, group, tr, y,
              _EMPTY if bias is None else bias,
              _EMPTY if residual is None else residual.reshape(-1), act, workspace(nt, size), nt, mode, pb, pr,
              alpha)
    return y




def _same_array(a, b):
    """Whether a and b are the same C-contiguous memory (out=residual: y computed in place)."""
    return (a.shape == b.shape and a.flags.c_contiguous and b.flags.c_contiguous
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def conv_threads(n, c, m, oh, ow, kh, kw, group):
    """Threads for the conv kernel (normrt._thread_policy), from the flops it computes, not the
    useful ones: a few output channels still fill an MR-row tile (a 3-channel output conv over
    64 channels at 32x32: 3.5 useful Mflop, 9.4 computed)."""
    mg = m // group
    return compute_bound(2 * -(-mg // _MR) * _MR * oh * ow * (c // group) * kh * kw * n * group)


def _conv2d_numpy(x, weight, bias, residual, act, y, strides, pads, dilations, group):
    """float64: im2col (a strided view of the padded input) and one matmul per group."""
    n, c, h, w = x.shape
    m, cg, kh, kw = weight.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    oh, ow = y.shape[2:]
    xp = np.zeros((n, c, max(h + pt + pb, (oh - 1) * sh + (kh - 1) * dh + 1 + pt),
                   max(w + pl + pr, (ow - 1) * sw + (kw - 1) * dw + 1 + pl)), x.dtype)
    xp[:, :, pt:pt + h, pl:pl + w] = x
    s = xp.strides
    cols = as_strided(xp, shape=(n, c, kh, kw, oh, ow),
                      strides=(s[0], s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw), writeable=False)
    mg = m // group
    wm = np.asarray(weight, dtype=x.dtype).reshape(group, mg, cg * kh * kw)
    for g in range(group):
        colg = cols[:, g * cg:(g + 1) * cg].reshape(n, cg * kh * kw, oh * ow)
        y[:, g * mg:(g + 1) * mg] = np.matmul(wm[g], colg).reshape(n, mg, oh, ow)
    return epilogue_numpy(y, None if bias is None else bias.reshape(1, m, 1, 1), residual, act)
