"""Sampling at computed positions: GridSample (16+), AffineGrid (20+), Col2Im (18+).

What exporters write for torch's F.grid_sample / F.affine_grid (optical flow warps, spatial
transformer networks, deformable-attention samplers) and F.fold (MobileViT-v2's patch folding,
restoration models' overlapping patches). onnx.reference runs them as Python loops over every
output element (a 16x32x32 bilinear GridSample took 2.6 s there; MobileViT-v2's Col2Ims 15 ms
of a 15.7 ms run), and its GridSample knows only opset 20's mode names, so torch's opset-16
"bilinear" exports failed outright.

GridSample follows the ONNX reference's definition (which is torch's and onnxruntime's):
coordinates are denormalized in the grid's float type; "nearest" rounds half to even; outside
the border box ([-0.5, d-0.5], or [0, d-1] with align_corners) "border" clamps the coordinate
and "reflection" mirrors it; then every tap (1 nearest, 2 linear, 4 cubic per axis) applies
the padding mode again to its integer index, "zeros" reading 0 outside the image. One
departure from onnx.reference, to torch's and onnxruntime's side: cubic with "border" clamps
only its taps, not the coordinate first (the reference's order changes values within two
pixels of the border, where the models' exporters and users compare against torch).

This module computes the taps (numpy over all output points at once); 1-D and 2-D images in
float32/float64 are then gathered by normrt._kernels.grid_sample (columns, then rows, in tap
order: the reference's order), volumetric ones in numpy. Col2Im of 2-D images sums its blocks
on normrt._kernels.fold; other ranks in numpy, one strided add per block offset.
"""
import itertools

import numpy as np

from ..._kernels import fold as _kfold
from ..._kernels import grid_sample as _kgrid
from ..._thread_policy import memory_bound
from ._util import attr_ints, attr_str, compute_dtype, ints_of, op

_MODES_16 = {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"}
_MODES_20 = {"linear": "linear", "nearest": "nearest", "cubic": "cubic"}
_PADDING = ("zeros", "border", "reflection")
# Keys' cubic convolution parameter (torch's and onnxruntime's bicubic)
_CUBIC_A = -0.75
# Coordinates beyond this many pixels outside the image read the same taps as at its edge
# (keeps float -> int conversion finite for grids of 1e30 or inf)
_COORD_LIMIT = float(1 << 24)
# How far outside the image a tap of an in-range coordinate can fall (cubic: floor - 1, floor + 2)
_TAP_REACH = 3


def _grid_sample_mode(node):
    modes = _MODES_20 if node.version >= 20 else _MODES_16
    return modes.get(attr_str(node, "mode", "linear" if node.version >= 20 else "bilinear"))


def _grid_sample_supported(node):
    return _grid_sample_mode(node) is not None and attr_str(node, "padding_mode", "zeros") in _PADDING


def _reflect(c, lo, hi):
    """Mirror coordinates c (float array) into [lo, hi] by reflecting at the borders."""
    span = hi - lo
    if span <= 0:
        return np.full_like(c, lo)
    below, above = c < lo, c > hi
    dist = np.where(below, lo - c, np.where(above, c - hi, 0))
    flips = np.floor(dist / span)
    rem = dist - flips * span
    even = np.fmod(flips, 2) == 0
    from_lo, from_hi = lo + rem, hi - rem
    return np.where(below, np.where(even, from_lo, from_hi),
                    np.where(above, np.where(even, from_hi, from_lo), c)).astype(c.dtype, copy=False)


def _cubic_weights(t):
    """Keys' four weights for the taps at floor-1 .. floor+2, t = c - floor(c) in [0, 1)."""
    a = _CUBIC_A
    u, v, w = t + 1, 1 - t, 2 - t
    return (((a * u - 5 * a) * u + 8 * a) * u - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * v - (a + 3)) * v * v + 1,
            ((a * w - 5 * a) * w + 8 * a) * w - 4 * a)


def _axis_taps(c, size, mode, padding, align_corners):
    """[(index, weight)] of one axis's taps: index an int64 array with -1 for "reads zero",
    weight an array (None for nearest)."""
    lo, hi = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
    if mode == "nearest":
        c = np.rint(c)
    if padding == "border" and mode != "cubic":
        c = np.where((c < lo) | (c > hi), np.clip(c, 0, size - 1), c)
    elif padding == "reflection":
        c = _reflect(c, lo, hi)
    c = np.clip(np.nan_to_num(c, nan=-_COORD_LIMIT), -_COORD_LIMIT, _COORD_LIMIT)
    if mode == "nearest":
        base, offsets, weights = c, (0,), (None,)
    else:
        base = np.floor(c)
        t = c - base
        if mode == "linear":
            offsets, weights = (0, 1), (1 - t, t)
        else:
            offsets, weights = (-1, 0, 1, 2), _cubic_weights(t)
    base = base.astype(np.int64)
    if padding == "reflection":
        # the coordinate is inside [lo, hi] now, so every tap index lies in [-2, size + 2]:
        # one table of their mirrored indices (truncated towards zero, as the reference does)
        near = np.arange(-_TAP_REACH, size + _TAP_REACH + 1, dtype=np.float64)
        mirrored = np.clip(_reflect(near, lo, hi).astype(np.int64), 0, max(size - 1, 0))
    taps = []
    for off, wt in zip(offsets, weights):
        i = base + off
        if padding == "zeros":
            i = np.where((i >= 0) & (i < size), i, -1)
        elif padding == "border":
            i = np.clip(i, 0, size - 1)
        else:
            i = mirrored[np.clip(i, -_TAP_REACH, size + _TAP_REACH) + _TAP_REACH]
        taps.append((i, wt))
    return taps


@op("GridSample", since=16, supports=_grid_sample_supported)
def grid_sample(node, x, grid):
    mode = _grid_sample_mode(node)
    padding = attr_str(node, "padding_mode", "zeros")
    align_corners = bool(node.attrs.get("align_corners", 0))
    spatial = x.shape[2:]
    rank = len(spatial)
    if x.ndim < 3 or grid.ndim != rank + 2 or grid.shape[-1] != rank or grid.shape[0] != x.shape[0]:
        raise ValueError(f"GridSample: grid of shape {grid.shape} does not fit X of shape {x.shape} "
                         f"(expected (N, D1_out, ..., D{rank}_out, {rank}) with N = {x.shape[0]})")
    if node.version < 20 and rank != 2:
        raise ValueError(f"GridSample-{node.version} takes 4-D X (N, C, H, W), got {x.shape}")
    if mode == "cubic" and rank != 2:
        raise ValueError(f"GridSample: cubic mode takes 4-D X (N, C, H, W), got {x.shape}")
    n, ch = x.shape[:2]
    out_spatial = grid.shape[1:-1]
    acc = compute_dtype(x.dtype)
    if n * ch * int(np.prod(out_spatial)) == 0:
        return np.zeros((n, ch, *out_spatial), x.dtype)
    coord_dtype = np.float64 if grid.dtype == np.float64 else np.float32
    g = grid.astype(coord_dtype, copy=False).reshape(n, -1, rank)
    # grid's last axis lists (x, y, ...): the fastest-varying image axis first
    taps = []
    for axis in range(rank):
        size = spatial[axis]
        c = g[..., rank - 1 - axis]
        c = (c + 1) / 2 * (size - 1) if align_corners else ((c + 1) * size - 1) / 2
        with np.errstate(invalid="ignore", over="ignore"):     # inf / NaN grids: see _COORD_LIMIT
            taps.append(_axis_taps(c.astype(coord_dtype, copy=False), size, mode, padding, align_corners))
    if rank <= 2 and acc in (np.float32, np.float64):
        out = _gather_2d(x.astype(acc, copy=False), taps, n, ch, g.shape[1])
    else:
        out = _gather_nd(x.astype(acc, copy=False), taps, spatial)
    return out.reshape(n, ch, *out_spatial).astype(x.dtype, copy=False)


def _tap_table(axis_taps, shape, dtype):
    """(indices (N, Q, T) intp, weights (N, Q, T)) of one axis's taps (weight 1 for nearest)."""
    index = np.ascontiguousarray(np.stack([i for i, _ in axis_taps], axis=-1), dtype=np.intp)
    weight = np.stack([np.ones(shape) if w is None else w for _, w in axis_taps], axis=-1)
    return index, np.ascontiguousarray(weight, dtype=dtype)


def _gather_2d(x, taps, n, ch, points):
    """The kernel's gather (normrt._kernels.grid_sample) of 1-D or 2-D images."""
    if len(taps) == 1:          # 1-D: one row of weight 1
        x = x[:, :, None, :]
        rows = (np.zeros((n, points, 1), np.intp), np.ones((n, points, 1), x.dtype))
    else:
        rows = _tap_table(taps[0], (n, points), x.dtype)
    cols = _tap_table(taps[-1], (n, points), x.dtype)
    out = np.empty((n, ch, points), x.dtype)
    work = out.size * rows[0].shape[2] * cols[0].shape[2]
    _kgrid.gather(np.ascontiguousarray(x), out, rows[0], rows[1], cols[0], cols[1], memory_bound(work))
    return out


def _gather_nd(x, taps, spatial):
    """Any rank in numpy: one fancy index per tap combination, summed in a fixed order, with an
    always-zero element after the image standing for "outside"."""
    n, ch = x.shape[:2]
    pixels = int(np.prod(spatial))
    flat = np.zeros((n, ch, pixels + 1), x.dtype)
    flat[:, :, :pixels] = x.reshape(n, ch, pixels)
    strides = [int(np.prod(spatial[a + 1:])) for a in range(len(spatial))]
    points = taps[0][0][0].shape
    out = np.zeros((n, ch, points[1]), x.dtype)
    for combo in itertools.product(*taps):
        index = np.zeros(points, np.int64)
        outside = np.zeros(points, bool)
        weight = None
        for (i, wt), stride in zip(combo, strides):
            index += i * stride
            outside |= i < 0
            if wt is not None:
                weight = wt if weight is None else weight * wt
        index[outside] = pixels
        for b in range(n):
            values = flat[b][:, index[b]]
            out[b] += values if weight is None else weight[b].astype(x.dtype, copy=False) * values
    return out


def _base_coords(size, align_corners):
    """The normalized centres of `size` pixels along one axis (0 for a single pixel)."""
    if size <= 1:
        return np.zeros(max(size, 0))
    if align_corners:
        return np.linspace(-1.0, 1.0, size)
    return (2 * np.arange(size) + 1) / size - 1


@op("AffineGrid", since=20)
def affine_grid(node, theta, size):
    dims = ints_of(size)
    align_corners = bool(node.attrs.get("align_corners", 0))
    rank = len(dims) - 2
    if rank not in (2, 3) or theta.ndim != 3 or theta.shape != (dims[0], rank, rank + 1):
        raise ValueError(f"AffineGrid: theta of shape {theta.shape} and size {dims}: expected size "
                         f"(N, C, H, W) with theta (N, 2, 3), or (N, C, D, H, W) with theta (N, 3, 4)")
    spatial = dims[2:]
    axes = np.meshgrid(*[_base_coords(s, align_corners) for s in spatial], indexing="ij")
    # homogeneous (x, y[, z], 1): the fastest-varying axis first, as GridSample reads it
    base = np.stack([*axes[::-1], np.ones(spatial)], axis=-1).reshape(-1, rank + 1)
    grid = np.einsum("pk,njk->npj", base, theta.astype(np.float64))
    return grid.reshape(dims[0], *spatial, rank).astype(theta.dtype)


@op("Col2Im", since=18)
def col2im(node, x, image_shape, block_shape):
    image = ints_of(image_shape)
    block = ints_of(block_shape)
    rank = len(image)
    dil = attr_ints(node, "dilations", [1] * rank)
    strides = attr_ints(node, "strides", [1] * rank)
    pads = attr_ints(node, "pads", [0] * (2 * rank))
    if len(block) != rank or len(dil) != rank or len(strides) != rank or len(pads) != 2 * rank:
        raise ValueError(f"Col2Im: image_shape {image}, block_shape {block}, dilations {dil}, strides "
                         f"{strides} and pads {pads} must describe the same {rank} spatial axes")
    if x.ndim != 3:
        raise ValueError(f"Col2Im: input must be (N, C * prod(block_shape), L), got shape {x.shape}")
    kernel = int(np.prod(block))
    if kernel <= 0 or x.shape[1] % kernel:
        raise ValueError(f"Col2Im: input's dimension 1 ({x.shape[1]}) is not a multiple of "
                         f"prod(block_shape) = {kernel}")
    blocks = [(image[a] + pads[a] + pads[a + rank] - dil[a] * (block[a] - 1) - 1) // strides[a] + 1
              for a in range(rank)]
    if min(blocks) < 1 or int(np.prod(blocks)) != x.shape[2]:
        raise ValueError(f"Col2Im: input's dimension 2 ({x.shape[2]}) must equal the number of sliding "
                         f"blocks {' x '.join(map(str, blocks))} that image_shape {image}, block_shape "
                         f"{block}, pads {pads}, strides {strides} and dilations {dil} give")
    n, ch = x.shape[0], x.shape[1] // kernel
    acc = compute_dtype(x.dtype)
    cols = x.reshape(n, ch, *block, *blocks)
    if rank == 2 and acc in (np.float32, np.float64):
        y = np.empty((n, ch, *image), acc)
        _kfold.col2im(np.ascontiguousarray(cols, dtype=acc), y, strides[0], strides[1], dil[0], dil[1],
                      pads[0], pads[1], memory_bound(x.size))
        return y.astype(x.dtype, copy=False)
    padded = np.zeros((n, ch, *[image[a] + pads[a] + pads[a + rank] for a in range(rank)]), acc)
    # each block offset adds its strided lattice of values; offsets in row-major order
    for offset in itertools.product(*[range(b) for b in block]):
        window = tuple(slice(o * d, o * d + s * (k - 1) + 1, s)
                       for o, d, s, k in zip(offset, dil, strides, blocks))
        padded[(slice(None), slice(None), *window)] += cols[(slice(None), slice(None), *offset)]
    crop = tuple(slice(pads[a], pads[a] + image[a]) for a in range(rank))
    return np.ascontiguousarray(padded[(slice(None), slice(None), *crop)]).astype(x.dtype, copy=False)
