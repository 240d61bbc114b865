"""Scaled dot-product attention on the fused kernel (float32) or numpy (float64)."""
import math

import numpy as np

from .. import _checks as chk
from .._kernels import attention as _k
from .._thread_policy import compute_bound

_NO_BIAS = np.empty((0, 0, 0, 0), np.float32)


def _strided4(x, name, axes, rows=True):
    """x as a rank-4 float ndarray the kernel reads through its strides: no copy for
    any numpy view (transposed, sliced) whose strides are whole elements and, with
    `rows`, whose last axis is contiguous (the kernel reads rows); a copy otherwise."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype not in chk.FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have rank 4 ({axes}), got shape {x.shape}")
    if not x.flags.aligned or any(st % x.itemsize for st in x.strides) \
            or (rows and x.shape[3] > 1 and x.strides[3] != x.itemsize):
        x = np.ascontiguousarray(x)
    return x


def _output4(out, shape, dtype):
    """The caller's out= (C-contiguous, or a transposed view of a C-contiguous array
    with a contiguous last axis, e.g. a (B, S, H, Dv) buffer seen as (B, H, S, Dv)), or a new array."""
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"out must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out must be writeable, got a read-only array")
    # axes ordered by decreasing stride must give a C-contiguous array: each element
    # written once (no overlap within out), and the kernel writes rows
    order = sorted(range(4), key=lambda a: -out.strides[a])
    if not out.transpose(order).flags.c_contiguous or (shape[3] > 1 and out.strides[3] != out.itemsize):
        raise ValueError(f"out must be C-contiguous or a transposed view of a C-contiguous array with "
                         f"its last axis contiguous, got strides {out.strides}")
    return out


def _bias4(bias, shape, dtype):
    """bias as a C-contiguous (1|B, 1|Hq, 1|Sq, Skv) array: the kernel broadcasts the axes of size 1."""
    if not isinstance(bias, np.ndarray):
        bias = np.asarray(bias)
    if bias.dtype.kind != "f":
        raise TypeError(f"bias must be a float array (additive: 0 keeps a key, -inf masks it), "
                        f"got dtype {bias.dtype}")
    if bias.ndim > 4:
        raise ValueError(f"bias must broadcast to {shape}, got shape {bias.shape}")
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape).astype(dtype, copy=False)
    try:
        full = np.broadcast_shapes(bias.shape, shape)
    except ValueError:
        full = None
    if full != shape:
        raise ValueError(f"bias must broadcast to (B, Hq, Sq, Skv) = {shape}, got shape {bias.shape}")
    if bias.shape[3] != shape[3]:
        # the kernel reads rows of keys: a broadcast key axis is expanded
        bias = np.broadcast_to(bias, bias.shape[:3] + (shape[3],))
    return np.ascontiguousarray(bias)


def _attention_f64(q, k, v, scale, bias, causal, y):
    """float64: one (Sq, Skv) score matrix per head with numpy."""
    B, Hq, Sq, _ = q.shape
    rep = Hq // k.shape[1]
    Skv = k.shape[2]
    visible = np.arange(Skv)[None, :] <= np.arange(Sq)[:, None] if causal else None
    for b in range(B):
        for h in range(Hq):
            s = (q[b, h] * scale) @ k[b, h // rep].T
            if bias is not None:
                s += bias[b % bias.shape[0], h % bias.shape[1]]
            if visible is not None:
                s[~visible] = -np.inf
            m = s.max(axis=1, keepdims=True) if Skv else np.zeros((Sq, 1))
            m[~np.isfinite(m)] = 0.0            # a fully masked row: exp gives zeros
            p = np.exp(s - m)
            total = p.sum(axis=1, keepdims=True)
            total[total == 0] = np.inf          # ... and attends to nothing
            y[b, h] = (p / total) @ v[b, h // rep]
    return y


def attention(q, k, v, *, scale=None, bias=None, is_causal=False, out=None):
    """softmax(q k^T * scale + bias) v over the last axis, per head.

    q: (B, Hq, Sq, D); k: (B, Hkv, Skv, D); v: (B, Hkv, Skv, Dv), with Hq a
    multiple of Hkv (grouped-query heads: query head h reads kv head
    h // (Hq / Hkv)). scale defaults to 1/sqrt(D). bias is additive (-inf
    masks a key) and broadcasts to (B, Hq, Sq, Skv). is_causal masks key j
    for query i when j > i (top-left aligned). A query that sees no key
    (fully masked) gets zeros. Returns (B, Hq, Sq, Dv) in q's dtype (out if given).

    Layouts: q, k, v may be any strided views (e.g. `x.transpose(0, 2, 1, 3)`
    of the (B, S, H, D) "heads interleaved" arrays exporters produce): the kernel
    reads them in place (a copy only if an array's last axis is not contiguous).
    out may be a transposed view too: `y = np.empty((B, Sq, Hq, Dv))` and
    `out=y.transpose(0, 2, 1, 3)` writes y in (B, Sq, Hq, Dv) order. The result
    is bitwise the same whatever the layouts.

    float32 runs the fused kernel (online softmax over key blocks, never the
    whole score matrix; vectorized exp, ~1e-6 relative error); float64 runs numpy.
    """
    k = _strided4(k, "k", "batch, heads, sequence, head dim", rows=False)
    return _attention(q, k.transpose(0, 1, 3, 2), v, "k", scale, bias, is_causal, out)


def attention_kt(q, kt, v, *, scale=None, bias=None, is_causal=False, out=None):
    """attention() with the keys given transposed, kt: (B, Hkv, D, Skv).

    The layout decomposed attention graphs hold (MatMul(Q, K^T)). The kernel
    reads the keys through their strides: a transposed view of K, or K^T itself,
    costs no copy.
    """
    kt = _strided4(kt, "kt", "batch, heads, head dim, sequence", rows=False)
    return _attention(q, kt, v, "kt", scale, bias, is_causal, out)


def _attention(q, kt, v, kname, scale, bias, is_causal, out):
    """Checks, then the kernel: kt is a (B, Hkv, D, Skv) view, named `kname` in errors."""
    q = _strided4(q, "q", "batch, heads, sequence, head dim")
    v = _strided4(v, "v", "batch, heads, sequence, head dim")
    for name, t in ((kname, kt), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    B, Hq, Sq, D = q.shape
    if kt.shape[0] != B or kt.shape[2] != D:
        want = f"({B}, Hkv, Skv, {D})" if kname == "k" else f"({B}, Hkv, {D}, Skv)"
        got = kt.transpose(0, 1, 3, 2).shape if kname == "k" else kt.shape
        raise ValueError(f"{kname} must have shape {want} for q of shape {q.shape}, got {got}")
    Hkv, Skv = kt.shape[1], kt.shape[3]
    if v.shape[:3] != (B, Hkv, Skv):
        raise ValueError(f"v must have shape ({B}, {Hkv}, {Skv}, Dv) to match {kname}, got {v.shape}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"q's head count ({Hq}) must be a multiple of {kname}'s ({Hkv})")
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D else 1.0
    else:
        scale = chk.finite_real(scale, "scale")
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    shape = (B, Hq, Sq, Skv)
    b4 = None if bias is None else _bias4(bias, shape, q.dtype)
    y = _output4(out, (B, Hq, Sq, v.shape[3]), q.dtype)
    for name, t in (("q", q), (kname, kt), ("v", v), ("bias", b4)):
        if t is not None and np.may_share_memory(y, t):
            raise ValueError(f"out must not overlap {name}")
    if y.size == 0:
        return y
    if q.dtype == np.float64:
        return _attention_f64(q, kt.transpose(0, 1, 3, 2), v, scale, b4, bool(is_causal), y)
    _k.attention_fwd(q, kt.transpose(0, 1, 3, 2), v, _NO_BIAS if b4 is None else b4, y,
                     scale, bool(is_causal),
                     compute_bound(2 * B * Hq * Sq * v.shape[2] * (q.shape[3] + v.shape[3])))
    return y
