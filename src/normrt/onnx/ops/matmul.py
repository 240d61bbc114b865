"""Matrix products: MatMul, Gemm, Einsum.

float32 MatMul/Gemm with a 2-D right operand run on normrt's GEMM kernel
(normrt.matmul; a constant weight packed once, Gemm's C as its bias or
residual epilogue); the rest on numpy/BLAS.
"""
import numpy as np

from ..._kernels import gemm as _kgemm
from ..._kernels import small_gemm as _ksmall_gemm
from ..._kernels.prepared_gemm import PreparedGemm as _PreparedGemm
from ..._thread_policy import compute_bound, product
from ..._kernels.gemm import workspace_size as _workspace_size
from ...api.gemm import matmul as _kernel_matmul
from ...api.gemm import workspace as _gemm_workspace
from . import _blas
from ._util import attr_str, low_precision, op

_F32 = np.dtype(np.float32)


def _kernel_weight(b, transposed=False):
    """b (or b.T) for normrt.matmul: packed once when it is a constant."""
    if not b.flags.writeable:
        return _blas.packed_matmul_weight(b, transposed)
    return b.T if transposed else b


def _mm(a, b):
    if low_precision(a.dtype):
        # no float16/bfloat16 BLAS: accumulate in float32, round once
        return _blas.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return _blas.matmul(a, b)


@op("MatMul", gemm=True, since=1)
def matmul(node, a, b):
    if a.dtype == _F32 and b.dtype == _F32 and a.ndim >= 2 and b.ndim >= 2 and a.size and b.size:
        if b.ndim == 2:
            return _kernel_matmul(a, _kernel_weight(b))
        return _batched(a, b)
    return _mm(a, b)


# Batched products of fewer multiply-adds each than this run on the small_gemm
# kernel, the whole batch in one call (swin's window attention: 96 products of
# 16x16x8 in 8 MatMuls cost ~5 us each as separate GEMM calls). Since its rows
# keep their outputs in registers (small_kernels.h), one thread, us, small_gemm /
# one packed GEMM call per product: 4 x (66x16x66) 11 / 43, 16 x (64x32x64)
# 48 / 131, 12 x (128x64x128) 416 / 313: the crossover is near 2^19 MACs.
SMALL_BATCHED_MACS = 1 << 18


def _batched(a, b):
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    count = int(np.prod(batch, dtype=np.int64))
    if a.shape[-1] != b.shape[-2]:
        return _mm(a, b)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    kernel = _small_batched if m * n * k < SMALL_BATCHED_MACS else _gemm_batched
    return kernel(a, b, batch, count, m, k, n)


def _gemm_batched(a, b, batch, count, m, k, n):
    """Larger batched products on the GEMM kernel, all products' jobs in one parallel loop
    (gemm.batched_gemm: per product, bitwise what one GEMM call computes; numpy's OpenBLAS would
    leave its threads spinning on the cores the next OpenMP kernel needs, see _blas). The
    threads come from the whole batch's work: one attention head's product is rarely enough to
    split, four of them are (wav2vec2-conformer's 4 x 159x16x317: 105 -> 54 us, 2 threads)."""
    out = np.empty((count, m, n), np.float32)
    nt = compute_bound(2 * count * m * n * k)
    _kgemm.batched_gemm(_operands(a, batch, count), _operands(b, batch, count), m, n, k, out.reshape(count, -1),
                        _gemm_workspace(nt), nt)
    return out.reshape(batch + (m, n))


def _operands(x, batch, count):
    """x as batched_gemm's (count, rows * cols) operands: one row of them when x is the same for
    every product (no copy per product), else x broadcast to the batch."""
    if int(np.prod(x.shape[:-2], dtype=np.int64)) == 1:
        return np.ascontiguousarray(x).reshape(1, -1)
    return _stack(x, batch, count).reshape(count, -1)


def _stack(x, batch, count):
    """x broadcast to `batch` leading dims as a C-contiguous (count, rows, cols) array (the
    kernel's typed memoryviews are C-contiguous; small products: the copy is small too)."""
    return np.ascontiguousarray(np.broadcast_to(x, batch + x.shape[-2:]).reshape((count,) + x.shape[-2:]))


def _small_batched(a, b, batch, count, m, k, n):
    out = np.empty((count, m, n), np.float32)
    nt = compute_bound(2 * count * m * n * k)
    _ksmall_gemm.batched_matmul(_stack(a, batch, count), _stack(b, batch, count), out, nt)
    return out.reshape(batch + (m, n))


@op("Gemm", gemm=True, since=1)
def gemm(node, a, b, c=None):
    # opsets 1-6 `broadcast`: C must then match or broadcast unidirectionally,
    # which numpy broadcasting covers
    alpha = float(node.attrs.get("alpha", 1.0))
    beta = float(node.attrs.get("beta", 1.0))
    if node.attrs.get("transA", 0):
        a = a.T
    trans_b = bool(node.attrs.get("transB", 0))
    if (alpha == 1.0 and a.dtype == _F32 and b.dtype == _F32 and a.ndim == 2 and b.ndim == 2 and a.size
            and b.size and (c is None or c.dtype == _F32)):
        n = b.shape[0] if trans_b else b.shape[1]
        bias = residual = None
        if c is not None and beta != 0.0:
            cb = c if beta == 1.0 else c * np.float32(beta)
            if cb.ndim <= 1 or cb.ndim == 2 and cb.shape[0] == 1:
                bias = np.broadcast_to(cb.reshape(-1), (n,))    # one value per column
            else:
                residual = cb
        return _kernel_matmul(a, _kernel_weight(b, trans_b), bias=bias, residual=residual)
    if trans_b:
        b = b.T
    if a.dtype in (np.float32, np.float64) and b.dtype == a.dtype and a.ndim == 2 and b.ndim == 2:
        # one GEMM: alpha*A@B + beta*C with C broadcast into the output first
        t = a.dtype.type
        y = np.empty((a.shape[0], b.shape[1]), a.dtype)
        if c is not None and beta != 0.0:
            np.multiply(np.broadcast_to(c, y.shape), t(beta), out=y) if beta != 1.0 else np.copyto(
                y, np.broadcast_to(c, y.shape), casting="unsafe")
            return _blas.gemm(a, b, y, alpha=alpha, beta=1.0)
        return _blas.gemm(a, b, y, alpha=alpha)
    y = _mm(a, b)
    if low_precision(y.dtype):
        y = y.astype(np.float32)
        if alpha != 1.0:
            y *= np.float32(alpha)
        if c is not None and beta != 0.0:
            y += c.astype(np.float32) * np.float32(beta)
        return y.astype(a.dtype)
    if y.dtype.kind == "f":
        t = y.dtype.type
        if alpha != 1.0:
            y *= t(alpha)
        if c is not None and beta != 0.0:
            if beta == 1.0:
                y += c
            else:
                y += c * t(beta)
        return y
    # integer Gemm: the reference computes alpha*AB + beta*C in float, casts back
    r = y * alpha
    if c is not None and beta != 0.0:
        r = r + c * beta
    return r.astype(a.dtype)


@op("Einsum", since=12)
def einsum(node, *xs):
    eq = attr_str(node, "equation").replace(" ", "")
    # path optimisation (BLAS via tensordot) pays off beyond tiny operands
    r = np.einsum(eq, *xs, optimize=len(xs) > 2 or sum(x.size for x in xs) > 4096)
    return r if r.dtype == xs[0].dtype else r.astype(xs[0].dtype)


def fast_gemm(src, a, packed, out_meta, buffer, bias=None, residual=None, activation=None, n_threads=1, alpha=0.01):
    """A specialized plan's float32 product with a packed constant weight: the expression calling the
    GEMM kernel directly (what normrt.matmul calls after its checks, done here once).

    `a` and `residual`: (expression, (shape, dtype), constant or None); `bias`: a float32 (N,)
    constant or None; `alpha`: a "leaky_relu" activation's slope. None when a check fails (the
    caller keeps the generic call)."""
    from ...api.gemm import gemm_activation
    try:
        act, alpha = gemm_activation(activation, alpha)
    except (TypeError, ValueError):
        return None         # (the generic call raises)
    ea, (ashape, da), _ = a
    k, n = packed.shape
    shape, dtype = out_meta
    if da != _F32 or dtype != _F32 or len(ashape) < 1 or ashape[-1] != k or tuple(shape) != tuple(ashape[:-1]) + (n,):
        return None
    m = int(np.prod(ashape[:-1], dtype=np.int64))
    if m == 0 or n == 0 or k == 0:
        return None
    if bias is not None:
        bias = np.ascontiguousarray(bias)
        if bias.dtype != _F32 or bias.shape != (n,):
            return None
    res = ""
    if residual is not None:
        er, (rshape, rd), _ = residual
        if rd != _F32 or tuple(rshape) != tuple(shape):
            return None
        res = f", {er}"
    # threads from the work (normrt._thread_policy; decided once, at specialization);
    # the GEMM kernel's results do not depend on the thread count
    nt = min(n_threads, product(m, k, n))
    ws = src.workspace(_workspace_size(nt))     # the plan's own (shared by its steps; runs hold its lock)
    y = str(buffer) if buffer is not None else f"np.empty({tuple(int(d) for d in shape)!r}, np.float32)"
    # the kernel call bound once (pyx/prepared_gemm.pyx): the same product as gemm.gemm, without
    # its per-call buffer acquisitions and job-grid search
    call = _PreparedGemm(packed.data, m, n, k, bias, act, nt, alpha)
    return f"{src.bind(call, '_gemm')}({ea}, {y}, {ws}{res})"


def _prepared_batched(ashape, bshape, n_threads):
    """(run(a, b, workspace), workspace floats) for `_batched`'s case of these shapes (kernel,
    broadcast and threads decided now), or None when `matmul` takes another path for them. The
    workspace (the GEMM kernel's; 0 floats: none) is the plan's own: runs of a plan hold its
    lock, where a thread's would be shared with its other calls."""
    if len(ashape) < 2 or len(bshape) < 2 or (len(ashape) == 2 and len(bshape) == 2) or ashape[-1] != bshape[-2]:
        return None
    batch = np.broadcast_shapes(tuple(ashape[:-2]), tuple(bshape[:-2]))
    count = int(np.prod(batch, dtype=np.int64))
    m, k, n = ashape[-2], ashape[-1], bshape[-1]
    if len(bshape) == 2 or 0 in (count, m, k, n):
        return None
    nt = min(n_threads, compute_bound(2 * count * m * n * k))
    shape = batch + (m, n)
    if m * n * k < SMALL_BATCHED_MACS:
        ws_floats = 0

        def kernel(a, b, out, ws):
            _ksmall_gemm.batched_matmul(a, b, out, nt)
    else:        # _gemm_batched's call
        ws_floats = _workspace_size(nt)

        def kernel(a, b, out, ws):
            _kgemm.batched_gemm(a.reshape(len(a), -1), b.reshape(len(b), -1), m, n, k, out.reshape(count, -1), ws,
                                nt)

    def stacker(xshape):
        # an operand with the whole batch already: a reshape (np.broadcast_to alone costs ~2 us,
        # as much as a 24 x 16 x 24 head product); one for every product of the GEMM kernel's
        # batch: its one copy
        if ws_floats and int(np.prod(xshape[:-2], dtype=np.int64)) == 1:
            flat = (1, int(np.prod(xshape[-2:], dtype=np.int64)))
            return lambda x: np.ascontiguousarray(x).reshape(flat)
        if tuple(xshape[:-2]) == batch:
            flat = (count,) + tuple(xshape[-2:])
            return lambda x: np.ascontiguousarray(x).reshape(flat)
        return lambda x: _stack(x, batch, count)
    stack_a, stack_b = stacker(ashape), stacker(bshape)

    def run(a, b, ws):
        out = np.empty((count, m, n), np.float32)
        kernel(stack_a(a), stack_b(b), out, ws)
        return out.reshape(shape)
    return run, ws_floats


def fast_matmul(src, args, out_meta, buffer, n_threads=1):
    """A specialized plan's MatMul (fast_steps.py): the float32 product with a constant 2-D
    weight on the GEMM kernel, packed now, or the batched products (attention heads) with
    their kernel and broadcast decided now; None for any other form."""
    (ea, (ashape, da), _), (eb, (bshape, db), bconst) = args
    if da != _F32 or db != _F32 or 0 in ashape or 0 in bshape:
        return None
    batched = _prepared_batched(tuple(ashape), tuple(bshape), n_threads)
    if batched is not None:
        run, ws_floats = batched
        return f"{src.bind(run, '_batched')}({ea}, {eb}, {src.workspace(ws_floats) if ws_floats else None})"
    if len(ashape) < 2 or len(bshape) != 2:
        return None
    if bconst is None or bconst.flags.writeable:
        return None
    return fast_gemm(src, args[0], _blas.packed_matmul_weight(bconst), out_meta, buffer, n_threads=n_threads)


def fast_gemm_node(src, node, args, out_meta, buffer, n_threads=1):
    """A specialized plan's Gemm taking the kernel path of `gemm` above with a constant B (and C):
    the GEMM kernel called directly, B packed (transposed if transB) and C's bias form made now."""
    if len(args) < 2 or args[0] is None or args[1] is None or args[1][2] is None:
        return None
    alpha = float(node.attrs.get("alpha", 1.0))
    beta = float(node.attrs.get("beta", 1.0))
    (_, (ashape, da), _), (_, (bshape, db), b) = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    if (alpha != 1.0 or node.attrs.get("transA", 0) or da != _F32 or db != _F32 or len(ashape) != 2
            or len(bshape) != 2 or 0 in ashape or 0 in bshape or b.flags.writeable):
        return None
    trans_b = bool(node.attrs.get("transB", 0))
    n = bshape[0] if trans_b else bshape[1]
    bias = None
    if c is not None and beta != 0.0:
        if c[2] is None or c[1][1] != _F32:
            return None
        cb = c[2] if beta == 1.0 else c[2] * np.float32(beta)
        if not (cb.ndim <= 1 or cb.ndim == 2 and cb.shape[0] == 1):
            return None                       # C of the output's shape: the generic residual form
        bias = np.ascontiguousarray(np.broadcast_to(cb.reshape(-1), (n,)))
    return fast_gemm(src, args[0], _blas.packed_matmul_weight(b, trans_b), out_meta, buffer, bias=bias,
                     n_threads=n_threads)
