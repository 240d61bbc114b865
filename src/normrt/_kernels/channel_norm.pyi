"""Type stub for the compiled channels-first kernel (pyx/channel_norm.pyx).

Called by normrt.api.channel_norm. x is viewed as (N, C, S): the statistics of
each (n, s) run over its C channels. Arrays are C-contiguous and share x's
dtype (float32 or float64); optional buffers are None. The kernel checks
buffer shapes and raises ValueError before computing anything.
"""
from typing import Optional

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]

def channel_norm(
    x: Array,                        # IN  (N, C, S)
    out: Array,                      # OUT (N, C, S); may be x itself
    scale: Optional[Array] = ...,    # IN  (C,)
    bias: Optional[Array] = ...,     # IN  (C,)
    eps: float = ...,
    act: int = ...,                  # activation epilogue code (normrt._checks.ACTIVATIONS)
    rms: bool = ...,                 # RMSNorm (no centring) instead of LayerNorm
    n_threads: int = ...,
) -> None: ...
