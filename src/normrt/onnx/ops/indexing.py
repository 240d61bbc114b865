"""Index-driven ops (numpy): TopK, NonZero, GatherND, ScatterND,
ScatterElements, OneHot, CumSum, Trilu."""
import numpy as np

from ._util import attr_str, norm_axis, op


# ---------------------------------------------------------------------- TopK
def _topk(x, k, axis, largest):
    axis = norm_axis(axis, x.ndim)
    if largest:
        # stable sort of the flipped axis, reversed: descending values with
        # ties in ascending index order (the ONNX tie rule)
        n = x.shape[axis]
        order = np.argsort(np.flip(x, axis=axis), axis=axis, kind="stable")
        order = np.flip(order, axis=axis)
        order = (n - 1) - order
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


@op("TopK", since=1, until=9)
def topk_attr(node, x):
    return _topk(x, int(node.attrs["k"]), node.attrs.get("axis", -1), True)


@op("TopK", since=10)
def topk(node, x, k):
    # `sorted=0` leaves the order unspecified: sorted output is valid
    return _topk(x, int(np.asarray(k).reshape(-1)[0]), node.attrs.get("axis", -1),
                 bool(node.attrs.get("largest", 1)) if node.version >= 11 else True)


# ------------------------------------------------------------------- NonZero
@op("NonZero", since=9)
def nonzero(node, x):
    if x.ndim == 0:
        return np.zeros((0, 1 if x else 0), dtype=np.int64)
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


# ---------------------------------------------------------- GatherND/Scatter
@op("GatherND", since=11, half_native=True)
def gather_nd(node, x, indices):
    b = int(node.attrs.get("batch_dims", 0)) if node.version >= 12 else 0
    batch_shape = x.shape[:b]
    nb = int(np.prod(batch_shape)) if b else 1
    q = indices.shape[-1]
    xs = x.reshape((nb,) + x.shape[b:])
    ids = indices.reshape((nb, -1, q)).astype(np.intp, copy=True)
    dims = np.array(x.shape[b:b + q], dtype=np.intp)
    ids[ids < 0] += np.broadcast_to(dims, ids.shape)[ids < 0]
    batch = np.broadcast_to(np.arange(nb)[:, None], ids.shape[:2])
    out = xs[(batch,) + tuple(ids[..., j] for j in range(q))]
    return out.reshape(indices.shape[:-1] + x.shape[b + q:])


_REDUCTIONS = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_supported(node):
    return attr_str(node, "reduction", "none") in _REDUCTIONS


def _scatter_ids(shape, indices):
    """ScatterND's indices as (count, q) non-negative intp rows."""
    q = indices.shape[-1]
    ids = indices.reshape(-1, q).astype(np.intp, copy=True)
    dims = np.array(shape[:q], dtype=np.intp)
    neg = ids < 0
    ids[neg] += np.broadcast_to(dims, ids.shape)[neg]
    return ids


@op("ScatterND", since=11, supports=_scatter_supported)
def scatter_nd(node, x, indices, updates):
    out = x.copy()
    q = indices.shape[-1]
    ids = _scatter_ids(x.shape, indices)
    upd = updates.reshape((ids.shape[0],) + x.shape[q:])
    key = tuple(ids[:, j] for j in range(q))
    fn = _REDUCTIONS[attr_str(node, "reduction", "none")]
    if fn is None:
        out[key] = upd
    else:
        fn.at(out, key, upd)
    return out


def constant_scatter(node, shape, indices):
    """(key, updates' shape) for a ScatterND (reduction none) of a `shape` tensor by these constant
    indices: `out[key] = updates.reshape(that shape)` assigns what scatter_nd does. The key is
    slices when the indices enumerate a box in row-major order (exporters' `x[:, 0] = v`), else
    the index arrays. None when the indices are out of range or not of this shape (the generic
    op then raises as it does), or for a reduction."""
    if attr_str(node, "reduction", "none") != "none" or indices.ndim < 1:
        return None
    q = indices.shape[-1]
    if q == 0 or q > len(shape):
        return None
    ids = _scatter_ids(shape, indices)
    if ids.size and ((ids < 0).any() or (ids >= np.asarray(shape[:q], dtype=np.intp)).any()):
        return None
    rest = tuple(int(d) for d in shape[q:])
    if ids.shape[0]:
        lo, hi = ids.min(axis=0), ids.max(axis=0)
        box = tuple(int(h - l + 1) for l, h in zip(lo, hi))
        if int(np.prod(box, dtype=np.int64)) == ids.shape[0]:
            grid = np.stack(np.meshgrid(*(np.arange(l, h + 1) for l, h in zip(lo, hi)), indexing="ij"), -1)
            if np.array_equal(grid.reshape(-1, q), ids):
                return tuple(slice(int(l), int(h) + 1) for l, h in zip(lo, hi)), box + rest
    return tuple(ids[:, j] for j in range(q)), (ids.shape[0],) + rest


@op("ScatterElements", since=11, supports=_scatter_supported)
def scatter_elements(node, x, indices, updates):
    axis = norm_axis(node.attrs.get("axis", 0), x.ndim)
    out = x.copy()
    idx = indices.astype(np.intp, copy=True)
    idx[idx < 0] += x.shape[axis]
    grids = list(np.indices(idx.shape, sparse=True))
    grids[axis] = idx
    key = tuple(grids)
    fn = _REDUCTIONS[attr_str(node, "reduction", "none")]
    if fn is None:
        out[key] = updates
    else:
        fn.at(out, key, updates)
    return out


# -------------------------------------------------------------------- OneHot
@op("OneHot", since=9, half_native=True)
def one_hot(node, indices, depth, values):
    d = int(np.asarray(depth).reshape(-1)[0])
    axis = int(node.attrs.get("axis", -1))
    rank = indices.ndim + 1
    if axis < 0:
        axis += rank
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + d, idx)
    hot = np.expand_dims(idx, axis) == np.arange(d).reshape((-1,) + (1,) * (rank - 1 - axis))
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return np.where(hot, on, off).astype(values.dtype)


# ------------------------------------------------------------- CumSum/Trilu
@op("CumSum", since=11)
def cumsum(node, x, axis):
    ax = norm_axis(int(np.asarray(axis).reshape(-1)[0]), x.ndim)
    rev = bool(node.attrs.get("reverse", 0))
    excl = bool(node.attrs.get("exclusive", 0))
    y = np.flip(x, axis=ax) if rev else x
    r = np.cumsum(y, axis=ax, dtype=x.dtype)
    if excl:
        r = np.roll(r, 1, axis=ax)
        first = [slice(None)] * x.ndim
        first[ax] = 0
        r[tuple(first)] = 0
    return np.flip(r, axis=ax).copy() if rev else r


@op("Trilu", since=14, half_native=True)
def trilu(node, x, k=None):
    kk = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    return np.triu(x, kk) if node.attrs.get("upper", 1) else np.tril(x, kk)
