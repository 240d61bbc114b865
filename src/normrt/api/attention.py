"""Scaled dot-product attention on the fused kernel (float32) or numpy (float64)."""
import math

import numpy as np

from .. import _checks as chk
from .._kernels import attention as _k
from .._threads import get_num_threads

_NO_BIAS = np.empty((0, 0, 0, 0), np.float32)


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
    (fully masked) gets zeros. Returns (B, Hq, Sq, Dv) in q's dtype.

    float32 runs the fused kernel (online softmax over key blocks, never the
    whole score matrix; vectorized exp, ~1e-6 relative error); float64 runs numpy.
    """
    k = chk.tensor(k, "k")
    if k.ndim != 4:
        raise ValueError(f"k must have rank 4 (batch, heads, sequence, head dim), got shape {k.shape}")
    return _attention(q, k.transpose(0, 1, 3, 2), v, "k", scale, bias, is_causal, out)


def attention_kt(q, kt, v, *, scale=None, bias=None, is_causal=False, out=None):
    """attention() with the keys given transposed, kt: (B, Hkv, D, Skv).

    The layout decomposed attention graphs hold (MatMul(Q, K^T)); the kernel
    reads the keys untransposed, so a transposed view (the usual producer is a
    Transpose of K) costs no copy.
    """
    kt = np.asarray(kt)                 # no copy: a transposed view of K is what the kernel wants
    if kt.dtype not in chk.FLOAT_DTYPES:
        raise TypeError(f"kt must be a float32 or float64 array, got dtype {kt.dtype}")
    if kt.ndim != 4:
        raise ValueError(f"kt must have rank 4 (batch, heads, head dim, sequence), got shape {kt.shape}")
    return _attention(q, kt, v, "kt", scale, bias, is_causal, out)


def _attention(q, kt, v, kname, scale, bias, is_causal, out):
    """Checks, then the kernel: kt is a (B, Hkv, D, Skv) view, named `kname` in errors."""
    q = chk.tensor(q, "q")
    v = chk.tensor(v, "v")
    for name, t in (("q", q), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"{name} must have rank 4 (batch, heads, sequence, head dim), got shape {t.shape}")
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
    y = chk.output(out, (B, Hq, Sq, v.shape[3]), q.dtype)
    for name, t in (("q", q), (kname, kt), ("v", v), ("bias", b4)):
        if t is not None and np.may_share_memory(y, t):
            raise ValueError(f"out must not overlap {name}")
    if y.size == 0:
        return y
    if q.dtype == np.float64:
        return _attention_f64(q, kt.transpose(0, 1, 3, 2), v, scale, b4, bool(is_causal), y)
    k = np.ascontiguousarray(kt.transpose(0, 1, 3, 2))   # the kernel reads each key's D values in a row
    _k.attention_fwd(q, k, v, _NO_BIAS if b4 is None else b4, y,
                     scale, bool(is_causal), get_num_threads())
    return y
