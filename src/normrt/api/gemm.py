"""float32 matrix products on normrt's packed GEMM kernel, with a fused epilogue.

y = act(a @ b + bias + residual). A constant right operand (a model's weight)
is packed once with pack_matmul_weight and reused on every call. float64 runs
on numpy (the same epilogue, in float64).
"""
import math
import numbers
import threading

import numpy as np

from .. import _checks as chk
from .._kernels import gemm as _k
from .._thread_policy import product
from .activations import activate

_F32 = np.dtype(np.float32)
_EMPTY = np.empty(0, np.float32)
_local = threading.local()


def workspace(n_threads, size=None):
    """The calling Python thread's kernel workspace of `size` floats (default: a
    GEMM's for n_threads), allocated once and grown when needed: no page faults
    on every call."""
    if size is None:
        size = _k.workspace_size(n_threads)
    buf = getattr(_local, "work", None)
    if buf is None or buf.size < size:
        buf = np.empty(size, np.float32)
        _local.work = buf
    return buf


def aligned_empty(size):
    """A float32 1-D buffer whose data starts on a 64-byte boundary (packed panels)."""
    raw = np.empty(size + 16, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip:skip + size]


class PackedMatmulWeight:
    """A constant (K, N) right operand packed for normrt.matmul.

    Pack once (normrt.pack_matmul_weight), pass it as `b` on every call.
    `data` is the packed float32 buffer, `shape` the original (K, N).
    """

    __slots__ = ("data", "shape")

    def __init__(self, data, shape):
        self.data = data
        self.shape = shape

    @property
    def dtype(self):
        return _F32

    def __repr__(self):
        return f"PackedMatmulWeight(shape={self.shape})"


def pack_matmul_weight(b):
    """Pack a (K, N) weight for normrt.matmul (converted to float32)."""
    if isinstance(b, PackedMatmulWeight):
        return b
    b = _weight_array(b, "b")
    if b.ndim != 2:
        raise ValueError(f"b must be a 2-D (K, N) array, got shape {b.shape}")
    k, n = b.shape
    data = aligned_empty(_k.packed_b_size(k, n))
    _k.pack_b(b, data)
    return PackedMatmulWeight(data, (k, n))


def _weight_array(w, name):
    if not isinstance(w, np.ndarray):
        w = np.asarray(w)
    if w.dtype.kind not in "fiu" or w.dtype.kind == "b":
        raise TypeError(f"{name} must be a numeric array, got dtype {w.dtype}")
    return np.ascontiguousarray(w, dtype=np.float32)


def epilogue_numpy(y, bias, residual, act):
    """act(y + bias + residual) in place, in y's precision (the numpy paths)."""
    if bias is not None:
        y += bias
    if residual is not None:
        y += residual
    if act:
        activate(y, _ACT_NAMES[act], out=y)
    return y


_ACT_NAMES = {v: k for k, v in chk.ACTIVATIONS.items()}


LEAKY_RELU = _k.LEAKY_RELU    # the GEMM / conv epilogues' own activation code


def gemm_activation(activation, alpha):
    """(the kernel's activation code, alpha) of matmul's / conv2d's `activation` and `alpha`:
    normrt.ACTIVATIONS and, for these two epilogues only, "leaky_relu" with alpha a positive
    finite float (the norm kernels have no LeakyRelu)."""
    if activation != "leaky_relu":
        return chk.activation(activation), 0.0
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
    alpha = float(alpha)
    if not (0.0 < alpha < float("inf")):
        raise ValueError(f"alpha must be a positive finite number for activation 'leaky_relu', got {alpha}")
    return LEAKY_RELU, alpha


def leaky_relu_numpy(y, alpha):
    """y = where(y > 0, y, alpha y) in place (the float64 paths' LeakyRelu epilogue)."""
    with np.errstate(invalid="ignore"):
        y[...] = np.where(y > 0, y, y * y.dtype.type(alpha))
    return y


def matmul(a, b, *, bias=None, activation=None, residual=None, out=None, alpha=0.01):
    """y = act(a @ b + bias + residual) for a (..., M, K) and b (K, N).

    b is an array or the object from normrt.pack_matmul_weight(b). Leading
    dims of a are flattened into M. bias has shape (N,); residual the output's
    shape (or one that broadcasts to it); activation None or one of
    normrt.ACTIVATIONS ("gelu" is the erf form) or "leaky_relu" (v if v > 0 else
    alpha v, alpha > 0). float32 runs on normrt's GEMM (results identical for any
    thread count), float64 on numpy.
    """
    act, alpha = gemm_activation(activation, alpha)
    a = chk.tensor(a, "a", min_rank=1)
    packed = isinstance(b, PackedMatmulWeight)
    if packed:
        k, n = b.shape
        if a.dtype != _F32:
            raise TypeError(f"a must be float32 with a packed b, got dtype {a.dtype}")
    else:
        if not isinstance(b, np.ndarray):
            b = np.asarray(b)
        if b.ndim != 2:
            raise ValueError(f"b must be a 2-D (K, N) array or a PackedMatmulWeight, got shape {b.shape}")
        if b.dtype.kind not in "fiu" or b.dtype.kind == "b":
            raise TypeError(f"b must be a numeric array, got dtype {b.dtype}")
        k, n = b.shape
    if a.shape[-1] != k:
        raise ValueError(f"a's last dimension must be K = {k} (b's rows), got shape {a.shape}")
    dtype = a.dtype
    out_shape = a.shape[:-1] + (n,)
    m = math.prod(a.shape[:-1])
    bias = chk.param(bias, "bias", (n,), dtype)
    if residual is not None:
        residual = chk.param(residual, "residual", out_shape, dtype, broadcast=True)
    y = chk.output(out, out_shape, dtype)
    if out is not None and (np.may_share_memory(y, a) or (not packed and np.may_share_memory(y, b))):
        raise ValueError("out must not overlap a or b")
    if m == 0 or n == 0:
        return y
    if dtype != _F32 or k == 0:
        bb = b if not packed else None
        if k == 0:
            y[...] = 0
        else:
            np.matmul(a, np.ascontiguousarray(bb, dtype=dtype), out=y)
        if act == LEAKY_RELU:
            return leaky_relu_numpy(epilogue_numpy(y, bias, residual, 0), alpha)
        return epilogue_numpy(y, bias, residual, act)
    if residual is not None and np.may_share_memory(residual, y):
        residual = residual.copy()   # y is written before the residual is read (K blocks)
    if packed:
        bdata = b.data
    else:
        bdata = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    nt = product(m, k, n)
    _k.gemm(a.reshape(-1), False, bdata, packed, m, n, k, y.reshape(-1),
            _EMPTY if bias is None else bias, 1,
            _EMPTY if residual is None else residual.reshape(-1), act, workspace(nt), nt, alpha)
    return y
