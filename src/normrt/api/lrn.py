"""Local response normalization across channels (ONNX LRN)."""
import math

from .. import _checks as chk
from .._kernels import lrn as _k
from .._thread_policy import memory_bound
from . import half


def lrn(x, size, *, alpha=1e-4, beta=0.75, bias=1.0, out=None):
    """ONNX LRN over the channel axis of x shaped (N, C, D1, ..., Dk), k >= 1.

        square_sum[c] = sum of x[c']**2, c' in [c - floor((size-1)/2), c + ceil((size-1)/2)] ∩ [0, C)
        y[c] = x[c] / (bias + alpha / size * square_sum[c]) ** beta

    Sums in float64 without running add/subtract drift; results are bitwise
    identical for any thread count. `out` may be x.
    """
    x = chk.tensor(x, "x", min_rank=3, half=True)
    size = chk.int_value(size, "size", min_value=1)
    alpha = chk.finite_real(alpha, "alpha")
    beta = chk.finite_real(beta, "beta")
    bias = chk.finite_real(bias, "bias")
    y = chk.output(out, x.shape, x.dtype, x)
    if x.size == 0:
        return y
    if chk.half_kind(x.dtype) >= 0:
        return half.via_float32(x, y, lambda x32: _lrn(x32, size, alpha, beta, bias, x32))
    return _lrn(x, size, alpha, beta, bias, y)


def _lrn(x, size, alpha, beta, bias, y):
    N, C = x.shape[:2]
    S = math.prod(x.shape[2:])
    # the window [c - floor((size-1)/2), c + ceil((size-1)/2)]; reaching further than
    # C - 1 channels changes nothing, so a huge size costs no more than size = 2C - 1
    lo = min((size - 1) // 2, C - 1)
    hi = min(size // 2, C - 1)
    # alpha / size rounded once, like the reference; 1 / size (int division, correctly
    # rounded) keeps an absurd size beyond float range from raising OverflowError
    coef = alpha / size if size < 2**53 else alpha * (1 / size)
    _k.lrn(x.reshape(N, C, S), y.reshape(N, C, S), lo, hi, coef, beta, bias, memory_bound(x.size))
    return y
