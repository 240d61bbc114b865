"""Type stub for the compiled row kernels (pyx/layer_norm.pyx).

Called by normrt.api.layer_norm. Arrays are C-contiguous and share x's dtype
(float32 or float64); optional buffers are None. The kernels check buffer
shapes and raise ValueError before computing anything.
"""
from typing import Optional

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]

def layer_norm(
    x: Array,                        # IN  (G, L) rows to normalize
    out: Array,                      # OUT (G, L); may alias x
    scale: Optional[Array] = ...,    # IN  (L,)
    bias: Optional[Array] = ...,     # IN  (L,)
    residual: Optional[Array] = ..., # IN  (G, L) added to x first
    sum_out: Optional[Array] = ...,  # OUT (G, L) receives x + residual
    stats_out: Optional[npt.NDArray[np.float64]] = ...,  # OUT (2, G): mean, inv_std_dev
    eps: float = ...,
    act: int = ...,
    n_threads: int = ...,
) -> None: ...
def rms_norm(
    x: Array,                        # IN  (G, L)
    out: Array,                      # OUT (G, L); may alias x
    scale: Optional[Array] = ...,    # IN  (L,)
    residual: Optional[Array] = ..., # IN  (G, L)
    sum_out: Optional[Array] = ...,  # OUT (G, L) receives x + residual
    eps: float = ...,
    act: int = ...,
    n_threads: int = ...,
) -> None: ...
def norm_rows_half(
    x: npt.NDArray[np.uint16],       # IN  (G, L) the 16-bit words of a float16/bfloat16 array
    out: npt.NDArray[np.uint16],     # OUT (G, L) same dtype; may alias x
    scale: Optional[npt.NDArray[np.float32]] = ...,   # IN  (L,)
    bias: Optional[npt.NDArray[np.float32]] = ...,    # IN  (L,) (LayerNorm only)
    residual: Optional[npt.NDArray[np.uint16]] = ...,  # IN  (G, L) x's dtype, added to x first
    sum_out: Optional[npt.NDArray[np.uint16]] = ...,   # OUT (G, L) receives x + residual
    stats_out: Optional[npt.NDArray[np.float64]] = ...,  # OUT (2, G): mean, inv_std_dev (LayerNorm)
    eps: float = ...,
    act: int = ...,
    n_threads: int = ...,
    kind: int = ...,                 # 0 float16, 1 bfloat16
    rms: bool = ...,                 # RMSNorm instead of LayerNorm
) -> None: ...
