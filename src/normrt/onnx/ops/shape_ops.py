"""Shape and data-movement ops (numpy): Reshape, Transpose, Concat, Split,
Slice, Gather, GatherElements, Unsqueeze, Squeeze, Flatten, Expand, Tile,
Shape, Size, Pad, Dropout, DepthToSpace, SpaceToDepth.

Reshape/Flatten/Squeeze/Unsqueeze/Slice/Identity-like results may be views
of their input (never written to here); Transpose and Expand return fresh
contiguous arrays.
"""
import math

import numpy as np

from ..._kernels import gather as _kgather
from ..._kernels import transpose as _ktranspose
from ..._thread_policy import gather as gather_threads, memory_bound

from ._util import attr_ints, attr_str, ints_of, norm_axis, op


# ------------------------------------------------------------------- Reshape
def reshape_target(in_shape, shape, allowzero=False):
    shape = list(shape)
    if not allowzero:
        shape = [in_shape[i] if d == 0 else d for i, d in enumerate(shape)]
    if -1 in shape:
        i = shape.index(-1)
        known = math.prod(d for j, d in enumerate(shape) if j != i)
        total = math.prod(in_shape)
        shape[i] = total // known if known else 0
    return tuple(shape)


@op("Reshape", since=1, until=4, half_native=True)
def reshape_attr(node, x):
    return x.reshape(reshape_target(x.shape, attr_ints(node, "shape")))


@op("Reshape", since=5, half_native=True)
def reshape(node, x, shape):
    return x.reshape(reshape_target(x.shape, ints_of(shape), bool(node.attrs.get("allowzero", 0))))


@op("Flatten", since=1, half_native=True)
def flatten(node, x):
    axis = int(node.attrs.get("axis", 1))
    if axis < 0:
        axis += x.ndim
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


# ------------------------------------------------------ DepthToSpace/Space..
@op("DepthToSpace", since=1, half_native=True)
def depth_to_space(node, x):
    b = int(node.attrs["blocksize"])
    n, c, h, w = x.shape
    if attr_str(node, "mode", "DCR") == "CRD" and node.version >= 11:
        t = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        t = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return t.reshape(n, c // (b * b), h * b, w * b)


@op("SpaceToDepth", since=1, half_native=True)
def space_to_depth(node, x):
    b = int(node.attrs["blocksize"])
    n, c, h, w = x.shape
    t = x.reshape(n, c, h // b, b, w // b, b)
    # DCR (the only mode before opset 28): block offsets outermost; CRD: channels outermost
    if attr_str(node, "mode", "DCR") == "CRD":
        t = t.transpose(0, 1, 3, 5, 2, 4)
    else:
        t = t.transpose(0, 3, 5, 1, 2, 4)
    return t.reshape(n, c * b * b, h // b, w // b)


# ----------------------------------------------------------------- Transpose
def simplified_permutation(shape, perm):
    """(shape, perm) with size-1 axes dropped and runs of input axes that stay adjacent and in
    order in the output merged: the same permuted copy on fewer axes."""
    kept = [a for a in range(len(shape)) if shape[a] != 1]
    index = {a: i for i, a in enumerate(kept)}
    dims = [shape[a] for a in kept]
    order = [index[a] for a in perm if a in index]
    runs = []                   # runs of consecutive input axes, in output order
    for a in order:
        if runs and runs[-1][-1] + 1 == a:
            runs[-1].append(a)
        else:
            runs.append([a])
    by_input = sorted(range(len(runs)), key=lambda r: runs[r][0])
    merged = [math.prod(int(dims[a]) for a in runs[r]) for r in by_input]     # (np.prod: ~2 us a call)
    position = {r: i for i, r in enumerate(by_input)}
    return merged, [position[r] for r in range(len(runs))]


def tiled_transpose(shape, perm, itemsize):
    """(simplified shape, perm) when the tiled kernel (pyx/transpose.pyx) copies a C-contiguous
    `shape` array transposed by `perm` faster than numpy, else None. numpy copies in the output's
    order, reading the input across rows: fine while the rows it reads are short (a few cache
    lines) or few, and up to 9x the tiled copy when they are long (one thread, float32, (R, C) ->
    (C, R), us numpy / tiled: 64 x 256 15.9 / 6.1, 256 x 256 56.6 / 23.1, 1024 x 768 865 / 443,
    196 x 64 8.2 / 5.1; but 49 x 128 2.7 / 3.2, 64 x 64 1.9 / 2.1, 256 x 32 3.4 / 3.4). Where
    the kernel moves 8 x 8 blocks in vector registers (float32, float16, bfloat16 on x86) it is
    faster as soon as the input's and the output's rows both hold 8 elements (one thread,
    float32, us numpy / tiled: 8 x 64 0.67 / 0.61, 32 x 32 0.71 / 0.63, 49 x 128 2.34 / 1.86,
    64 x 64 1.46 / 1.14, 256 x 32 3.1 / 2.0, 64 x 1024 46 / 14.5; float16 32 x 128 1.59 /
    0.80), and not below (512 x 4: 1.09 / 1.84, its 4-element rows copied one by one)."""
    dims, p = simplified_permutation(shape, perm)
    if not 2 <= len(dims) <= 8 or p[-1] == len(dims) - 1:
        return None                         # the innermost axis stays: numpy copies whole rows
    row = dims[-1] * itemsize               # the input's rows, which numpy reads across
    rows = dims[p[-1]]                      # how many of them one output row reads
    if row >= 1024 or rows >= 1024 or (rows >= 196 and row >= 256):
        return dims, p
    if dims[-1] >= 8 and rows >= 8 and _ktranspose.vector_blocks(itemsize):
        return dims, p
    return None


def transpose_into(x, perm, out, n_threads):
    """out[...] = x.transpose(perm): the tiled kernel where tiled_transpose says it pays, else
    numpy's copy; the same elements either way."""
    if x.flags.c_contiguous and x.itemsize in (1, 2, 4, 8) and x.size and not x.dtype.hasobject:
        tiled = tiled_transpose(x.shape, perm, x.itemsize)
        if tiled is not None:
            return _ktranspose.transpose_into(x, out, tiled[0], tiled[1], n_threads)
    np.copyto(out, np.transpose(x, perm))
    return out


@op("Transpose", since=1, half_native=True)
def transpose(node, x):
    perm = attr_ints(node, "perm")
    perm = list(range(x.ndim))[::-1] if perm is None else [p % max(x.ndim, 1) for p in perm]
    out = np.empty(tuple(x.shape[p] for p in perm), x.dtype)
    return transpose_into(x, perm, out, memory_bound(x.size))


# ---------------------------------------------------------- Squeeze/Unsqueeze
@op("Squeeze", since=1, until=12, half_native=True)
def squeeze_attr(node, x):
    axes = attr_ints(node, "axes")
    return np.squeeze(x, axis=None if axes is None else tuple(a % max(x.ndim, 1) for a in axes))


@op("Squeeze", since=13, half_native=True)
def squeeze(node, x, axes=None):
    axes = ints_of(axes)
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(a % max(x.ndim, 1) for a in axes))


def _unsqueeze(x, axes):
    rank = x.ndim + len(axes)
    axes = sorted(a + rank if a < 0 else a for a in axes)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return x.reshape(shape)


@op("Unsqueeze", since=1, until=12, half_native=True)
def unsqueeze_attr(node, x):
    return _unsqueeze(x, attr_ints(node, "axes"))


@op("Unsqueeze", since=13, half_native=True)
def unsqueeze(node, x, axes):
    return _unsqueeze(x, ints_of(axes))


# -------------------------------------------------------------- Concat/Split
@op("Concat", since=1, half_native=True)
def concat(node, *xs):
    xs = [x for x in xs if x is not None]
    axis = norm_axis(node.attrs.get("axis", 1), xs[0].ndim)     # default only before opset 4
    return np.concatenate(xs, axis=axis)


def _split_sizes(node, dim, split):
    if split is not None and len(split):
        return list(split)
    n = node.n_outputs
    num = node.attrs.get("num_outputs")
    if num is not None and node.version >= 18:
        chunk = -(-dim // int(num))
        sizes = [chunk] * (dim // chunk) + ([dim % chunk] if dim % chunk else [])
        return sizes
    return [dim // n] * n


def split_indexes(node, shape, split):
    """The numpy index tuple of each of a Split's outputs, for an input of `shape` (ints or None:
    split's sizes)."""
    axis = norm_axis(node.attrs.get("axis", 0), len(shape))
    index = [slice(None)] * len(shape)
    out, start = [], 0
    for n in _split_sizes(node, shape[axis], split):
        index[axis] = slice(start, start + n)
        out.append(tuple(index))
        start += n
    return out


def _split(node, x, split):
    # views, as np.split makes them, without its overhead
    return tuple(x[index] for index in split_indexes(node, x.shape, split))


@op("Split", since=2, until=12, half_native=True)
def split_attr(node, x):
    return _split(node, x, attr_ints(node, "split"))


@op("Split", since=13, half_native=True)
def split(node, x, split=None):
    return _split(node, x, ints_of(split))


# --------------------------------------------------------------------- Slice
def _slice(x, starts, ends, axes, steps):
    return x[slice_index(x.shape, starts, ends, axes, steps)]


def slice_index(shape, starts, ends, axes, steps):
    """The numpy index tuple of ONNX Slice on a tensor of `shape` (clamped as ONNX says)."""
    ndim = len(shape)
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    index = [slice(None)] * ndim
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = norm_axis(ax, ndim)
        dim = shape[ax]
        if st < 0:
            st += dim
        if en < 0:
            en += dim
        if sp > 0:
            st = min(max(st, 0), dim)
            en = min(max(en, 0), dim)
        elif sp < 0:
            st = min(max(st, 0), dim - 1)
            en = min(max(en, -1), dim - 1)
        else:
            raise ValueError("Slice step cannot be 0")
        index[ax] = slice(st, en if en >= 0 else None, sp)
    return tuple(index)


@op("Slice", since=1, until=9, half_native=True)
def slice_attr(node, x):
    return _slice(x, attr_ints(node, "starts"), attr_ints(node, "ends"), attr_ints(node, "axes"), None)


@op("Slice", since=10, half_native=True)
def slice_(node, x, starts, ends, axes=None, steps=None):
    return _slice(x, ints_of(starts), ints_of(ends), ints_of(axes), ints_of(steps))


# -------------------------------------------------------------------- Gather
@op("Gather", since=1, half_native=True)
def gather(node, x, indices):
    axis = norm_axis(node.attrs.get("axis", 0), x.ndim)
    return np.take(x, indices.astype(np.intp, copy=False), axis=axis)


@op("GatherElements", since=11, half_native=True)
def gather_elements(node, x, indices):
    return gather_elements_into(x, indices, norm_axis(node.attrs.get("axis", 0), x.ndim), None)


def gather_elements_into(x, indices, axis, out):
    """GatherElements along `axis` (normalized) into `out` (a C-contiguous array of the indices'
    shape and x's dtype) or a new array: pyx/gather.pyx's one pass over the (outer, axis, inner)
    view, numpy's take_along_axis for elements of other sizes. The indices may be shorter than x
    on the other axes (torch.gather's rule): x's leading part is read."""
    if indices.ndim != x.ndim:
        raise ValueError(f"GatherElements: indices of rank {indices.ndim} for data of rank {x.ndim} "
                         f"(the same rank expected)")
    if any(i > d for a, (i, d) in enumerate(zip(indices.shape, x.shape)) if a != axis):
        raise ValueError(f"GatherElements: indices {indices.shape} larger than data {x.shape} on an axis "
                         f"other than {axis}")
    if any(i != d for a, (i, d) in enumerate(zip(indices.shape, x.shape)) if a != axis):
        x = x[tuple(slice(None) if a == axis else slice(0, i) for a, i in enumerate(indices.shape))]
    if out is None:
        out = np.empty(indices.shape, x.dtype)
    if x.dtype.hasobject or x.itemsize not in (1, 2, 4, 8):
        idx = indices.astype(np.intp, copy=True)
        idx[idx < 0] += x.shape[axis]
        np.copyto(out, np.take_along_axis(x, idx, axis=axis))
        return out
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1:])
    x3 = np.ascontiguousarray(x).reshape(outer, x.shape[axis], inner)
    idx3 = np.ascontiguousarray(indices, dtype=np.int64).reshape(outer, indices.shape[axis], inner)
    _kgather.gather_elements(x3, idx3, out.reshape(idx3.shape), gather_threads(out.size))
    return out


# --------------------------------------------------------------- Expand/Tile
@op("Expand", since=8, half_native=True)
def expand(node, x, shape):
    target = np.broadcast_shapes(x.shape, tuple(ints_of(shape)))
    return np.broadcast_to(x, target).copy()


@op("Tile", since=6, half_native=True)
def tile(node, x, repeats):
    # one repeat per axis of x, as a 1-D tensor (np.tile would take a shorter or flattened list
    # as repeats of the leading axes and give another shape: Mamba's TorchScript export writes
    # a (1, 1) repeats for a 1-D x, which onnxruntime and onnx.reference reject too)
    if repeats.ndim != 1 or repeats.shape[0] != x.ndim:
        raise ValueError(f"Tile: repeats must be a 1-D tensor of one value per axis of the input (rank "
                         f"{x.ndim}), got shape {repeats.shape}")
    return np.tile(x, ints_of(repeats))


# ---------------------------------------------------------------- Shape/Size
@op("Shape", since=1, half_native=True)
def shape(node, x):
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    dims = x.shape[start:] if end is None else x.shape[start:int(end)]
    return np.array(dims, dtype=np.int64)


@op("Size", since=1, half_native=True)
def size(node, x):
    return np.array(x.size, dtype=np.int64)


# ----------------------------------------------------------------------- Pad
_PAD_MODES = {"constant", "reflect", "edge", "wrap"}


def _pad_supported(node):
    mode = attr_str(node, "mode", "constant")
    return mode in _PAD_MODES and (mode != "wrap" or node.version >= 19)


def pad_amounts(shape, pads, axes=None):
    """(crop, before, after) of a Pad of a `shape` tensor: the slices negative pads crop first
    (None: no crop), then the amounts added before and after on every axis."""
    rank = len(shape)
    axes = list(range(rank)) if axes is None else [norm_axis(a, rank) for a in axes]
    na = len(axes)
    before, after = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        before[a], after[a] = pads[i], pads[na + i]
    crop = None
    if any(p < 0 for p in before + after):
        crop = tuple(slice(max(0, -b), shape[i] - max(0, -e)) for i, (b, e) in enumerate(zip(before, after)))
        before = [max(0, b) for b in before]
        after = [max(0, e) for e in after]
    return crop, before, after


def mirror_pad(x, before, after, mode):
    """np.pad(x, zip(before, after), mode) for "reflect" (every pad smaller than its axis) and
    "edge" (non-empty axes): the same copy by slices of the output, axis after axis as numpy pads
    (corners from the axes padded before). np.pad's generic path took ~20 us for an audio
    model's (1, 1, 800) input, against 8 us for the conv after it. Other cases: np.pad itself."""
    shape = x.shape
    if mode not in ("reflect", "edge") or any(
            (b or e) and (n == 0 or (mode == "reflect" and max(b, e) >= n)) for n, b, e in zip(shape, before, after)):
        return np.pad(x, list(zip(before, after)), mode=mode)
    out = np.empty(tuple(n + b + e for n, b, e in zip(shape, before, after)), x.dtype)
    out[tuple(slice(b, b + n) for b, n in zip(before, shape))] = x
    lead = ()
    for n, b, e in zip(shape, before, after):
        if b:
            src = slice(2 * b, b, -1) if mode == "reflect" else slice(b, b + 1)
            out[lead + (slice(0, b),)] = out[lead + (src,)]
        if e:
            end = b + n
            src = slice(end - 2, (end - 2 - e) if end - 2 - e >= 0 else None, -1) if mode == "reflect" \
                else slice(end - 1, end)
            out[lead + (slice(end, end + e),)] = out[lead + (src,)]
        lead += (slice(None),)
    return out


def _pad(x, pads, mode, value, axes=None):
    crop, before, after = pad_amounts(x.shape, pads, axes)
    if crop is not None:        # negative pads crop first
        x = x[crop]
    if not any(before) and not any(after):
        return x.copy()
    if mode == "constant":
        out = np.full(tuple(s + b + e for s, b, e in zip(x.shape, before, after)),
                      np.asarray(value).astype(x.dtype) if value is not None else 0, dtype=x.dtype)
        out[tuple(slice(b, b + s) for b, s in zip(before, x.shape))] = x
        return out
    return mirror_pad(x, before, after, mode)


@op("Pad", since=2, until=10, supports=_pad_supported, half_native=True)
def pad_attr(node, x):
    return _pad(x, attr_ints(node, "pads"), attr_str(node, "mode", "constant"), node.attrs.get("value", 0.0))


@op("Pad", since=11, supports=_pad_supported, half_native=True)
def pad(node, x, pads, constant_value=None, axes=None):
    if constant_value is not None and constant_value.size == 0:
        constant_value = None
    value = constant_value.reshape(-1)[0] if constant_value is not None else 0
    return _pad(x, ints_of(pads), attr_str(node, "mode", "constant"), value, ints_of(axes))


# ------------------------------------------------------------------- Dropout
def _dropout_legacy_supported(node):
    return node.n_outputs == 1 and bool(node.attrs.get("is_test", 0))


@op("Dropout", since=1, until=6, supports=_dropout_legacy_supported, half_native=True)
def dropout_test_mode(node, x):
    return x


@op("Dropout", since=7, until=11, half_native=True)
def dropout_attr(node, x):
    # inference: identity.  The mask is typed T (all ones) in opsets 7-9 per
    # the schema (onnx.reference returns bool there), bool from opset 10.
    if node.n_outputs == 2:
        return x, np.ones(x.shape, dtype=x.dtype if node.version < 10 else bool)
    return x


@op("Dropout", since=12, half_native=True)
def dropout(node, x, ratio=None, training_mode=None):
    p = 0.5 if ratio is None else float(ratio)
    training = training_mode is not None and bool(training_mode)
    if not training or p == 0:
        if node.n_outputs == 2:
            return x, np.ones(x.shape, dtype=bool)
        return x
    # training mode: same generator and formula as the ONNX reference
    rnd = np.random.RandomState(node.attrs.get("seed"))
    mask = rnd.uniform(0, 1.0, x.shape) >= p
    y = (mask * x * (1.0 / (1.0 - p))).astype(x.dtype)
    return (y, mask) if node.n_outputs == 2 else y
