"""Resampling (numpy): Resize (opset 11+) and Upsample (7-9, nearest).

Both are separable. float32/float64 tensors resized along their last two axes
only (NCHW images, the exporters' case) run on normrt's resize kernels
(normrt._kernels.resize), given source index tables (and linear weights)
computed here; anything else is built one resized axis at a time with the same
tables (nearest: one `take`; linear: two `take`s and a lerp).  Implemented: mode nearest (every nearest_mode) and linear, with
coordinate_transformation_mode half_pixel, half_pixel_symmetric,
pytorch_half_pixel, align_corners, asymmetric; `axes`, scales or sizes.
Refused (fallback): cubic, tf_crop_and_resize, antialias,
keep_aspect_ratio_policy other than stretch, Resize-10.
"""
import numpy as np

from ..._kernels import resize as _kresize
from ..._thread_policy import memory_bound
from ._util import attr_ints, attr_str, op

_CTM = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"}
_NEAREST = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"}


def _resize_supported(node):
    mode = attr_str(node, "mode", "nearest")
    ctm = attr_str(node, "coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear") or ctm not in _CTM:
        return False
    if ctm == "half_pixel_symmetric" and node.version < 19:
        return False
    if mode == "nearest" and attr_str(node, "nearest_mode", "round_prefer_floor") not in _NEAREST:
        return False
    if node.attrs.get("antialias", 0):
        return False
    if attr_str(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        return False
    return True


def _source_coords(ctm, n_out, n_in, scale):
    y = np.arange(n_out, dtype=np.float64)
    out_w = scale * n_in          # the float length the reference uses
    if ctm == "align_corners":
        return np.zeros(n_out) if out_w == 1 else y * (n_in - 1) / (out_w - 1)
    if ctm == "asymmetric":
        return y / scale
    if ctm == "pytorch_half_pixel":
        return np.full(n_out, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    if ctm == "half_pixel":
        return (y + 0.5) / scale - 0.5
    # half_pixel_symmetric, in float32 steps as onnxruntime computes it: its offset
    # often puts a coordinate on a rounding tie (7 -> 3 at scale 0.5: 1.0 exactly in
    # float32, 1.0000000000000002 in float64), which nearest's floor/ceil then split
    f = np.float32
    adjustment = f(n_out) / (f(scale) * f(n_in))
    offset = f(n_in) / f(2) * (f(1) - adjustment)
    return (offset + (y.astype(f) + f(0.5)) / f(scale) - f(0.5)).astype(np.float64)


def _nearest_index(x, nearest_mode, n_in):
    if nearest_mode == "round_prefer_floor":
        i = np.ceil(x - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        i = np.floor(x + 0.5)
    elif nearest_mode == "floor":
        i = np.floor(x)
    else:
        i = np.ceil(x)
    return np.clip(i, 0, n_in - 1).astype(np.intp)


def _resize_axis_nearest(data, axis, idx):
    return np.take(data, idx, axis=axis)


def _linear_tables(x, n_in, dtype):
    """(lower index, upper index, weight of the upper one in dtype) per output coordinate x."""
    i0 = np.floor(x)
    w = (x - i0).astype(dtype)
    i0 = i0.astype(np.intp)
    return np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1), w


def _resize_axis_linear(data, axis, x, n_in):
    lo, hi, w = _linear_tables(x, n_in, data.dtype)
    a = np.take(data, lo, axis=axis)
    b = np.take(data, hi, axis=axis)
    shape = [1] * data.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    b -= a
    b *= w
    a += b
    return a


def _geometry(node, in_shape, scales, sizes):
    """(axes, {axis: output size}, {axis: scale}, resized axes) of a Resize on `in_shape`."""
    rank = len(in_shape)
    axes = attr_ints(node, "axes")
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    if sizes is not None and sizes.size:
        sz = [int(s) for s in sizes.reshape(-1)]
        out = {a: sz[i] for i, a in enumerate(axes)}
        sc = {a: out[a] / in_shape[a] for a in axes}
    else:
        s = [float(v) for v in scales.reshape(-1)]
        sc = {a: s[i] for i, a in enumerate(axes)}
        out = {a: int(sc[a] * in_shape[a]) for a in axes}
    resized = [a for a in axes if not (out[a] == in_shape[a] and np.isclose(sc[a], 1.0))]
    return axes, out, sc, resized


def _on_planes(dtype, in_shape, axes, out, resized):
    """Whether the kernels run it: float32/float64, only the last two axes resized, nothing empty."""
    rank = len(in_shape)
    return (dtype in (np.float32, np.float64) and rank >= 2 and 0 not in in_shape and all(out[a] for a in axes)
            and all(a >= rank - 2 for a in resized))


def _resize(node, x, scales, sizes):
    in_shape = x.shape
    axes, out, sc, resized = _geometry(node, in_shape, scales, sizes)
    mode = attr_str(node, "mode", "nearest")
    ctm = attr_str(node, "coordinate_transformation_mode", "half_pixel")
    nearest_mode = attr_str(node, "nearest_mode", "round_prefer_floor")
    is_float = x.dtype.kind in "fV"          # V: ml_dtypes floats (bfloat16)
    if _on_planes(x.dtype, in_shape, axes, out, resized):
        return _plane_call(x.shape, x.dtype, mode, ctm, nearest_mode, out, sc, resized, memory_bound)(x)
    if mode == "linear":
        # integers interpolate in float64 then round/saturate like the reference
        work = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32 if is_float else np.float64)
    else:
        work = x
        y = _nearest_integer_upsample(x, axes, out, sc, ctm, nearest_mode)
        if y is not None:
            return y
    for a in axes:
        n_in, n_out = in_shape[a], out[a]
        if n_out == n_in and np.isclose(sc[a], 1.0):
            continue
        if n_out == 0:
            shape = list(work.shape)
            shape[a] = 0
            work = np.empty(shape, dtype=work.dtype)
            continue
        coords = _source_coords(ctm, n_out, n_in, sc[a])
        if mode == "nearest":
            work = _resize_axis_nearest(work, a, _nearest_index(coords, nearest_mode, n_in))
        else:
            work = _resize_axis_linear(work, a, coords, n_in)
    if work is x:
        return x.copy()
    if work.dtype != x.dtype:
        if not is_float:
            info = np.iinfo(x.dtype) if x.dtype.kind in "iu" else None
            work = np.rint(work)
            if info is not None:
                work = np.clip(work, info.min, info.max)
        work = work.astype(x.dtype)
    return work


def _plane_call(x_shape, dtype, mode, ctm, nearest_mode, out, sc, resized, threads):
    """The kernel path for x of `x_shape` (..., H, W), float32/float64, only the last two axes
    resized: run(x) -> y, its index tables (and weights) computed now, once. `threads`: the
    policy's function of the output size."""
    rank = len(x_shape)
    h_ax, w_ax = rank - 2, rank - 1
    h, w = x_shape[-2:]
    oh, ow = out.get(h_ax, h), out.get(w_ax, w)
    y_shape = tuple(x_shape[:-2]) + (oh, ow)
    planes_shape = (-1, h, w)
    nt = threads(int(np.prod(y_shape, dtype=np.int64)))
    if mode == "nearest":
        def index(ax, n_in, n_out):
            if ax not in resized:
                return np.arange(n_in, dtype=np.intp)
            return _nearest_index(_source_coords(ctm, n_out, n_in, sc[ax]), nearest_mode, n_in)
        rows, cols = index(h_ax, h, oh), index(w_ax, w, ow)
        f = ow // w
        fx = f if ow % w == 0 and np.array_equal(cols, np.arange(ow) // f) else 0
        kernel, tables = _kresize.nearest, (rows, cols, fx, nt)
    else:
        def linear_tables(ax, n_in, n_out):
            if ax not in resized:
                ident = np.arange(n_in, dtype=np.intp)
                return ident, ident, np.zeros(n_in, dtype), False
            return _linear_tables(_source_coords(ctm, n_out, n_in, sc[ax]), n_in, dtype) + (True,)
        kernel, tables = _kresize.linear, linear_tables(h_ax, h, oh) + linear_tables(w_ax, w, ow) + (nt,)

    def run(x):
        y = np.empty(y_shape, dtype)
        kernel(np.ascontiguousarray(x).reshape(planes_shape), y.reshape(-1, oh, ow), *tables)
        return y
    return run


def fast_resize(src, node, args, out_meta, n_threads):
    """A specialized plan's Resize on the kernels, its tables made once (the generic op makes them
    per run), or None: x float32/float64 whose roi/scales/sizes are constants of the trace."""
    if not args or args[0] is None or not _resize_supported(node):
        return None
    ex, (xshape, dx), _ = args[0]
    consts = [None if a is None else a[2] for a in args[1:4]] + [None] * (4 - len(args))
    if any(a is not None and c is None for a, c in zip(args[1:4], consts)):
        return None
    scales, sizes = consts[1], consts[2]
    if sizes is None and (scales is None or not scales.size):
        return None
    axes, out, sc, resized = _geometry(node, tuple(xshape), scales, sizes)
    if not _on_planes(dx, tuple(xshape), axes, out, resized):
        return None
    run = _plane_call(tuple(xshape), dx, attr_str(node, "mode", "nearest"),
                      attr_str(node, "coordinate_transformation_mode", "half_pixel"),
                      attr_str(node, "nearest_mode", "round_prefer_floor"), out, sc, resized,
                      lambda size: min(n_threads, memory_bound(size)))
    if tuple(out_meta[0]) != tuple(xshape[:-2]) + (out.get(len(xshape) - 2, xshape[-2]),
                                                   out.get(len(xshape) - 1, xshape[-1])):
        return None
    return f"{src.bind(run, '_resize')}({ex})"


def _nearest_integer_upsample(x, axes, out, sc, ctm, nearest_mode):
    """Nearest upsampling where every source index is i // f (f an integer per axis, the UNet/VAE
    decoders' 2x) as one broadcast copy into the output, or None for any other index map."""
    factors = {}
    for a in axes:
        n_in, n_out = x.shape[a], out[a]
        if n_in == 0 or n_out == 0 or n_out % n_in:
            return None
        f = n_out // n_in
        idx = _nearest_index(_source_coords(ctm, n_out, n_in, sc[a]), nearest_mode, n_in)
        if not np.array_equal(idx, np.arange(n_out) // f):
            return None
        if f > 1:
            factors[a] = f
    if not factors:
        return None
    y = np.empty([out.get(a, d) for a, d in enumerate(x.shape)], x.dtype)
    split, rep_pos = [], {}
    for a, d in enumerate(x.shape):
        split.append(d)
        if a in factors:            # output axis a viewed as (source index, repeat)
            rep_pos[a] = len(split)
            split.append(factors[a])
    v = y.reshape(split)
    first = [slice(None)] * len(split)
    for a in factors:
        first[rep_pos[a]] = 0
    # x goes to repeat 0 of every axis, the innermost one's repeats written directly (strided
    # stores: numpy's broadcast copy over a size-2 inner axis is ~8x slower), then each outer
    # repeated axis copies its first slab
    inner = max(factors)
    for r in range(factors[inner]):
        first[rep_pos[inner]] = r
        v[tuple(first)] = x
    for a in sorted(factors, reverse=True):
        if a == inner:
            continue
        src = [slice(None)] * len(split)
        src[rep_pos[a]] = slice(0, 1)
        for r in range(1, factors[a]):
            dst = list(src)
            dst[rep_pos[a]] = slice(r, r + 1)
            v[tuple(dst)] = v[tuple(src)]
    return y


@op("Resize", since=11, supports=_resize_supported)
def resize(node, x, roi=None, scales=None, sizes=None):
    return _resize(node, x, scales, sizes)


def _upsample_supported(node):
    return attr_str(node, "mode", "nearest") == "nearest"


def _upsample(x, scales):
    scales = [float(s) for s in scales]
    for a, s in enumerate(scales):
        if s == 1.0:
            continue
        n_in = x.shape[a]
        n_out = int(n_in * s)
        if s == int(s):
            x = np.repeat(x, int(s), axis=a)
        else:
            idx = np.minimum(np.floor(np.arange(n_out) / s).astype(np.intp), n_in - 1)
            x = np.take(x, idx, axis=a)
    return x


@op("Upsample", since=7, until=8, supports=_upsample_supported)
def upsample_attr(node, x):
    return _upsample(x, node.attrs["scales"])


@op("Upsample", since=9, until=9, supports=_upsample_supported)
def upsample(node, x, scales):
    return _upsample(x, scales.reshape(-1))
