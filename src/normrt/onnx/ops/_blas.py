"""GEMM for the numpy ops: a private OpenBLAS instance when it helps, else numpy's BLAS.

numpy's bundled OpenBLAS has a problem normrt cannot fix from outside once
numpy is imported (it is read from the environment when the library loads):
its worker threads spin for ~0.1 s after every call (THREAD_TIMEOUT 2^28
cycles), taking a core from the OpenMP threads of the normrt kernel that
usually follows a Conv or MatMul (a 2-thread BatchNorm went from 0.06 ms to
~1 ms inside a ResNet) - and from whatever else runs after normrt
(onnxruntime's ResNet-50 run took 33 ms right after a normrt run, 18 ms
otherwise). Its thread count is also process-wide, not normrt's setting.

So on request (NORMRT_PRIVATE_BLAS=1; off by default: it maps a second copy
of OpenBLAS and its threads into the process, and the measured gain on
whole models is ~5-10%), on Linux/glibc `gemm` loads a second, private copy of the same OpenBLAS
library into its own link-map namespace (dlmopen(LM_ID_NEWLM)) with a short
OPENBLAS_THREAD_TIMEOUT, and calls its cblas_?gemm through ctypes, with the
thread count normrt's setting (normrt.threads / InferenceSession(num_threads=))
asks for (one thread for small GEMMs). numpy's own BLAS, and therefore the
user's numpy code, is untouched.

Anything unusual (no glibc, another BLAS, a load or self-test failure,
NORMRT_PRIVATE_BLAS unset or 0, a forked child) falls back to np.matmul.

float32 Conv/MatMul/Gemm with a 2-D weight do not come here: they run on
normrt's own GEMM kernel (normrt.conv2d / normrt.matmul), their constant
weights packed once (`packed_conv_weight`, `packed_matmul_weight` below).
"""
import ctypes
import os
import threading
import weakref

import numpy as np

from ..._thread_policy import compute_bound

# Spin 2^THREAD_TIMEOUT cycles after a call before sleeping (OpenBLAS clamps
# to 4..30): ~1 us, i.e. sleep right away and leave the cores to the next
# kernel (measured on ResNet-50 / UNet / VAE, 2 threads: 2^4 and 2^12 are
# equally good, 2^18 (~70 us) worse, numpy's 2^28 much worse).
THREAD_TIMEOUT = 12

_CBLAS_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_lock = threading.Lock()
_state = {"lib": None, "tried": False, "why": "not loaded yet"}


def _openblas_path():
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    paths = sorted(p for p in paths if os.path.isfile(p))
    # numpy's own copy (scipy, torch... may have loaded others)
    site = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    mine = [p for p in paths if os.path.abspath(p).startswith(os.path.join(site, "numpy"))]
    if len(mine) == 1:
        return mine[0]
    return paths[0] if len(paths) == 1 else None


_NAMES = [  # (prefix, suffix, 64-bit ints)
    ("scipy_", "64_", True), ("", "64_", True), ("", "", False), ("scipy_", "", False),
]


class _Private:
    """The private OpenBLAS instance: sgemm/dgemm and its thread count."""

    def __init__(self, path, coretype):
        libc = ctypes.CDLL(None)
        dlmopen = libc.dlmopen
        dlmopen.restype = ctypes.c_void_p
        dlmopen.argtypes = [ctypes.c_long, ctypes.c_char_p, ctypes.c_int]
        self._dlsym = libc.dlsym
        self._dlsym.restype = ctypes.c_void_p
        self._dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        env = {"OPENBLAS_THREAD_TIMEOUT": str(THREAD_TIMEOUT)}
        if coretype:
            env["OPENBLAS_CORETYPE"] = coretype
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            handle = dlmopen(-1, path.encode(), 2)      # LM_ID_NEWLM, RTLD_NOW
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if not handle:
            raise OSError("dlmopen failed")
        self.handle = handle
        for prefix, suffix, wide in _NAMES:
            if self._sym(f"{prefix}cblas_sgemm{suffix}"):
                break
        else:
            raise OSError("no cblas_sgemm symbol")
        it = ctypes.c_int64 if wide else ctypes.c_int32
        sig = lambda t: ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, it, it, it, t,  # noqa: E731
                                         ctypes.c_void_p, it, ctypes.c_void_p, it, t, ctypes.c_void_p, it)
        self.sgemm = sig(ctypes.c_float)(self._sym(f"{prefix}cblas_sgemm{suffix}"))
        self.dgemm = sig(ctypes.c_double)(self._sym(f"{prefix}cblas_dgemm{suffix}"))
        setter = self._sym(f"{prefix}openblas_set_num_threads{suffix}")
        if not setter:
            raise OSError("no openblas_set_num_threads symbol")
        self._set_threads = ctypes.CFUNCTYPE(None, ctypes.c_int)(setter)
        cfg = self._sym(f"{prefix}openblas_get_config{suffix}")
        self.config = ctypes.CFUNCTYPE(ctypes.c_char_p)(cfg)().decode() if cfg else "?"
        self.threads = 0

    def _sym(self, name):
        return self._dlsym(self.handle, name.encode())

    def set_threads(self, n):
        if n != self.threads:
            self._set_threads(n)
            self.threads = n


def _load():
    if os.environ.get("NORMRT_PRIVATE_BLAS", "0").strip().lower() in ("", "0", "false", "no", "off"):
        return None, "off (NORMRT_PRIVATE_BLAS=1 turns it on)"
    try:
        ctypes.CDLL(None).dlmopen                       # glibc only
    except (AttributeError, OSError):
        return None, "no dlmopen (not glibc)"
    path = _openblas_path()
    if path is None:
        return None, "numpy's BLAS is not one OpenBLAS library"
    # The same kernels as numpy's copy: OPENBLAS_CORETYPE, if set, applies to
    # both, and normrt never overrides it. (Measured on an AVX-512 AMD EPYC:
    # OpenBLAS 0.3.31's 'SkylakeX' kernels are 1.7x faster than 'Haswell' on
    # big GEMMs but take 4-8 ms on small ones such as 8x72 @ 72x4096 - the
    # diffusers VAE ran 20x slower - so a Haswell pin there is deliberate.)
    coretype = None
    try:
        priv = _Private(path, coretype)
    except (OSError, AttributeError) as e:
        return None, f"private OpenBLAS failed to load: {e}"
    # self-test against numpy before trusting it
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        a = rng.standard_normal((37, 53)).astype(dt)
        b = rng.standard_normal((53, 29)).astype(dt)
        out = np.empty((37, 29), dt)
        _call(priv, a, b, out, 1.0, 0.0)
        if not np.allclose(out, a @ b, rtol=1e-4, atol=1e-4):
            return None, "private OpenBLAS failed its self-test"
    return priv, f"private OpenBLAS ({priv.config})"


def _after_fork_in_child():
    # the private instance's worker threads do not exist in a forked child,
    # and its own fork handlers never ran: use numpy's BLAS there
    _state.update(lib=None, tried=True, why="forked child")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def private_blas():
    """The private OpenBLAS instance, or None (loads it on first call)."""
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                try:
                    lib, why = _load()
                except Exception as e:  # noqa: BLE001 - any failure means numpy's BLAS
                    lib, why = None, f"private OpenBLAS failed: {type(e).__name__}: {e}"
                _state.update(lib=lib, why=why, tried=True)
    return _state["lib"]


def blas_info():
    """Which GEMMs normrt uses (a human-readable string): its own kernel for
    float32 Conv/MatMul/Gemm, then this module's BLAS for the rest."""
    from ..._kernels import gemm as _k
    private_blas()
    return f"normrt {_k.isa()} GEMM for float32 Conv/MatMul/Gemm; other products: {_state['why']}"


def _layout(a):
    """(transpose flag, leading dimension) for a 2-D array BLAS can read in place, or None."""
    it = a.itemsize
    s0, s1 = a.strides
    r, c = a.shape
    if (s1 == it or c <= 1) and s0 % it == 0 and s0 // it >= max(c, 1):
        return _NO_TRANS, max(s0 // it, c, 1)
    if (s0 == it or r <= 1) and s1 % it == 0 and s1 // it >= max(r, 1):
        return _TRANS, max(s1 // it, r, 1)
    return None


def _call(priv, a, b, out, alpha, beta):
    la, lb = _layout(a), _layout(b)
    if la is None:
        a = np.ascontiguousarray(a)
        la = _layout(a)
    if lb is None:
        b = np.ascontiguousarray(b)
        lb = _layout(b)
    m, k = a.shape
    n = b.shape[1]
    fn = priv.sgemm if out.dtype == np.float32 else priv.dgemm
    fn(_CBLAS_ROW_MAJOR, la[0], lb[0], m, n, k, alpha, a.ctypes.data, la[1], b.ctypes.data, lb[1],
       beta, out.ctypes.data, max(out.strides[0] // out.itemsize, n, 1))


def _out_ok(out, m, n, dtype):
    return (out.dtype == dtype and out.shape == (m, n) and out.flags.writeable
            and (out.strides[1] == out.itemsize or n <= 1) and out.strides[0] % out.itemsize == 0
            and out.strides[0] // out.itemsize >= n)


def gemm(a, b, out=None, *, alpha=1.0, beta=0.0):
    """out = alpha * a @ b + beta * out for 2-D float32/float64 a (m, k), b (k, n).

    `out` (m, n) may be a row-major view into a bigger buffer (e.g. one
    image of a (N, C, H*W) tensor); it must not overlap a or b. Returns out.
    """
    m, k = a.shape
    n = b.shape[1]
    dtype = a.dtype
    if out is None:
        out = np.empty((m, n), dtype)
        if beta != 0.0:
            raise ValueError("beta needs an out")
    priv = private_blas()
    if (priv is not None and dtype in (np.float32, np.float64) and b.dtype == dtype
            and _out_ok(out, m, n, dtype) and m and n):
        if k == 0:
            if beta == 0.0:
                out.fill(0)
            else:
                out *= beta
            return out
        priv.set_threads(compute_bound(2 * m * n * k))
        _call(priv, a, b, out, alpha, beta)
        return out
    if beta == 0.0 and alpha == 1.0:
        np.matmul(a, b, out=out)
    else:
        r = np.matmul(a, b)
        if alpha != 1.0:
            r *= alpha
        if beta == 0.0:
            out[...] = r
        else:
            out *= beta
            out += r
    return out


def matmul(a, b, out=None):
    """np.matmul(a, b) (broadcast batch dims) for float32/float64, each 2-D product through `gemm`."""
    if a.ndim < 2 or b.ndim < 2 or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        return np.matmul(a, b, out=out)
    if private_blas() is None:
        # numpy's matmul only hands stacked operands to BLAS when they are
        # contiguous; a transposed view (attention's K^T) would take its slow loop
        if a.ndim > 2 and _layout(a[(0,) * (a.ndim - 2)]) is None or a.ndim > 2 and not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        if b.ndim > 2 and not b.flags.c_contiguous:
            b = np.ascontiguousarray(b)
        return np.matmul(a, b, out=out)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, n = a.shape[-2], b.shape[-1]
    if out is None:
        out = np.empty(batch + (m, n), a.dtype)
    if not batch:
        return gemm(a, b, out)
    ab = np.broadcast_to(a, batch + a.shape[-2:])
    bb = np.broadcast_to(b, batch + b.shape[-2:])
    # b shared by every batch entry and a contiguous: one GEMM over the stacked rows
    if all(s == 0 for s in bb.strides[:-2]) and a.ndim > 2 and a.shape[:-2] == batch and a.flags.c_contiguous \
            and out.flags.c_contiguous:
        gemm(a.reshape(-1, a.shape[-1]), b.reshape(b.shape[-2:]) if b.ndim == 2 else bb[(0,) * len(batch)],
             out.reshape(-1, n))
        return out
    for idx in np.ndindex(*batch):
        gemm(ab[idx], bb[idx], out[idx])
    return out


# ---- packed weights for normrt's GEMM kernel ---------------------------------
# The executor hands a node the same read-only initializer array on every run:
# its packed form is cached on the array's identity while the array lives
# (a weak reference drops the entry with it). Writeable arrays are packed per
# call: they may change under the same identity.
_packed = {}


def _cached(arr, key, pack):
    """pack() once per read-only `arr` and `key` (an array may have several packed forms: a
    3-D conv's weight one per depth tap, a weight read both ways)."""
    if arr.flags.writeable:
        return pack()
    slot = (id(arr), key)
    ent = _packed.get(slot)
    if ent is not None and ent[0]() is arr:
        return ent[1]
    packed = pack()

    def drop(ref, slot=slot, table=_packed):     # bound now: module globals are gone at exit
        cur = table.get(slot)
        if cur is not None and cur[0] is ref:
            del table[slot]

    _packed[slot] = (weakref.ref(arr, drop), packed)
    return packed


def packed_conv_weight(w, group, one_row=False, depth_tap=None):
    """normrt.pack_conv_weight(w, group), once per read-only w (one_row: a 1-D conv's (M, C/group, k)
    w packed as the (M, C/group, 1, k) weight of its one-row 2-D conv; depth_tap: a 3-D conv's
    (M, C/group, kd, kh, kw) w's 2-D weight w[:, :, depth_tap])."""
    from ...api.conv import pack_conv_weight
    if depth_tap is not None:
        return _cached(w, ("conv3d", group, depth_tap),
                       lambda: pack_conv_weight(np.ascontiguousarray(w[:, :, depth_tap]), group))
    return _cached(w, ("conv", group, one_row), lambda: pack_conv_weight(w[:, :, None] if one_row else w, group))


def packed_conv_transpose_weight(w, group):
    """A ConvTranspose weight w (C, M / group, *kernel) packed, once per read-only w, as the
    weight of the 1x1 conv giving its columns: (M * K, C / group, 1, 1), row m * K + k the
    output channel m's tap k (onnx/ops/conv.py's _conv_transpose_float32)."""
    from ...api.conv import pack_conv_weight

    def pack():
        c, mg = w.shape[:2]
        k = int(np.prod(w.shape[2:]))
        wt = np.ascontiguousarray(w.reshape(group, c // group, mg * k).transpose(0, 2, 1), dtype=np.float32)
        return pack_conv_weight(wt.reshape(group * mg * k, c // group, 1, 1), group)
    return _cached(w, ("conv_transpose", group), pack)


def packed_matmul_weight(b, transposed=False):
    """normrt.pack_matmul_weight(b, or b.T if transposed), once per read-only b."""
    from ...api.gemm import pack_matmul_weight
    return _cached(b, ("matmul", transposed), lambda: pack_matmul_weight(b.T if transposed else b))


def packed_int8_weight(w):
    """(panels, column sums) of an int8 (K, N) weight for the 8-bit product (pyx/int8_gemm), once
    per read-only w."""
    from ..._kernels import int8_gemm
    return _cached(w, ("int8",), lambda: int8_gemm.pack_weight(np.ascontiguousarray(w, np.int8)))


def packed_nbits_codes(b, k):
    """MatMulNBits' 4-bit B [N, k_blocks, blob] in the 4-bit product's tiles (pyx/nbits_gemm
    pack_codes), once per read-only b."""
    from ..._kernels import nbits_gemm
    return _cached(b, ("nbits", k), lambda: nbits_gemm.pack_codes(
        np.ascontiguousarray(b, np.uint8).reshape(b.shape[0], -1), k))


def packed_nbits_blocks(values, n, k_blocks):
    """Per-block scales or zero points [N, k_blocks] in the 4-bit product's tiles (pyx/nbits_gemm
    pack_blocks), once per read-only array."""
    from ..._kernels import nbits_gemm
    return _cached(values, ("nbits_blocks", n, k_blocks), lambda: nbits_gemm.pack_blocks(values, n, k_blocks))


def packed_recurrent_weight(w):
    """normrt.pack_matmul_weight of an LSTM/GRU/RNN's W (D, G*H, I) as one (I, D*G*H) operand
    (every direction's input projection in one product), once per read-only w."""
    from ...api.gemm import pack_matmul_weight
    return _cached(w, ("recurrent",), lambda: pack_matmul_weight(w.reshape(-1, w.shape[-1]).T))


def packed_recurrent_r(r):
    """An LSTM/GRU/RNN's float32 R (D, G*H, H) in the recurrent kernel's packed form (pack_r),
    once per read-only r."""
    from ..._kernels import recurrent

    def pack():
        out = np.empty((r.shape[0], recurrent.packed_r_size(r.shape[1] // r.shape[2], r.shape[2])), np.float32)
        recurrent.pack_r(r, out)
        return out
    return _cached(r, ("recurrent_r",), pack)


# float32 holds every integer up to 2^24 exactly: a product of integers whose partial sums
# stay below it is exact whatever the summation order
EXACT_FLOAT32_INT = 1 << 24


def integer_chunks(k, a_bound, b_bound):
    """Row ranges of K for an exact float32 integer product: every partial sum of one range is at
    most its length * a_bound * b_bound <= 2^24."""
    step = k if a_bound * b_bound == 0 else max(1, EXACT_FLOAT32_INT // (a_bound * b_bound))
    return [(k0, min(k0 + step, k)) for k0 in range(0, k, step)] or [(0, 0)]


def packed_integer_weight(b, zero_point, a_bound):
    """An integer (K, N) weight minus its zero point, as float32 packed for normrt.matmul in
    the K ranges of integer_chunks (a_bound: the largest |a - a_zero_point|), once per
    read-only b: [(k0, k1, packed)]."""
    from ...api.gemm import pack_matmul_weight
    zp = np.zeros(()) if zero_point is None else np.asarray(zero_point)

    def pack():
        bf = b.astype(np.float32) - zp.astype(np.float32)
        b_bound = int(np.abs(bf).max()) if bf.size else 0
        return [(k0, k1, pack_matmul_weight(bf[k0:k1])) for k0, k1 in integer_chunks(b.shape[0], a_bound, b_bound)]
    return _cached(b, ("integer", zp.tobytes(), str(zp.dtype), a_bound), pack)
