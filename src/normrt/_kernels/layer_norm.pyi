"""Type stub for the compiled row kernels (pyx/layer_norm.pyx).

Called by normrt.api.layer_norm. x, out, residual and sum_out share one dtype:
float32, float64, or uint16 holding the 16-bit words of a float16 (kind 0) or
bfloat16 (kind 1) array; scale and bias are float64 for float64 x, else
float32. Arrays are C-contiguous; optional buffers are None. The kernels check
every array and raise ValueError before computing anything.
"""
from typing import Optional

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating] | npt.NDArray[np.uint16]
Param = npt.NDArray[np.floating]

def layer_norm(
    x: Array,                        # IN  (G, L) rows to normalize
    out: Array,                      # OUT (G, L); may alias x
    scale: Optional[Param] = ...,    # IN  (L,)
    bias: Optional[Param] = ...,     # IN  (L,)
    residual: Optional[Array] = ..., # IN  (G, L) added to x first
    sum_out: Optional[Array] = ...,  # OUT (G, L) receives x + residual
    stats_out: Optional[npt.NDArray[np.float64]] = ...,  # OUT (2, G): mean, inv_std_dev
    eps: float = ...,
    act: int = ...,
    n_threads: int = ...,
    kind: int = ...,                 # uint16 x: 0 float16, 1 bfloat16
) -> None: ...
def rms_norm(
    x: Array,                        # IN  (G, L)
    out: Array,                      # OUT (G, L); may alias x
    scale: Optional[Param] = ...,    # IN  (L,)
    residual: Optional[Array] = ..., # IN  (G, L)
    sum_out: Optional[Array] = ...,  # OUT (G, L) receives x + residual
    eps: float = ...,
    act: int = ...,
    n_threads: int = ...,
    kind: int = ...,                 # uint16 x: 0 float16, 1 bfloat16
) -> None: ...
