"""Softmax over one axis on the row kernel."""
import numpy as np

from .. import _checks as chk
from .._kernels import softmax as _k
from .._thread_policy import softmax_rows

MASKED_ROWS = ("nan", "zero")


def softmax(x, *, axis=-1, out=None, masked_rows="nan"):
    """exp(x - max) / sum(exp(x - max)) along `axis`.

    A NaN stays inside its slice. A slice whose every element is -inf (fully
    masked) gives NaN with masked_rows="nan" (numpy's and ONNX Softmax's
    answer) or zeros with masked_rows="zero" (attention over no key).
    float32 uses a vectorized exp (~1e-6 relative error).
    """
    x = chk.tensor(x, "x", min_rank=1)
    a = chk.axis_index(axis, x.ndim)
    if masked_rows not in MASKED_ROWS:
        raise ValueError(f"masked_rows must be one of {MASKED_ROWS}, got {masked_rows!r}")
    y = chk.output(out, x.shape, x.dtype, x)
    if x.size == 0:
        return y
    zero = masked_rows == "zero"
    n = x.shape[a]
    if a == x.ndim - 1:
        _k.softmax_rows(x.reshape(-1, n), y.reshape(-1, n), zero, softmax_rows(x.size))
        return y
    # another axis: rows of a transposed copy, written back
    xt = np.ascontiguousarray(np.moveaxis(x, a, -1))
    _k.softmax_rows(xt.reshape(-1, n), xt.reshape(-1, n), zero, softmax_rows(x.size))
    y[...] = np.moveaxis(xt, -1, a)
    return y
