"""Type stub for the compiled channel-group kernels (pyx/group_norm.pyx).

Arguments are trusted: normrt.api.group_norm validates them. Arrays are
C-contiguous and share x's dtype (float32 or float64); absent scale/bias are
length-0 arrays.
"""
import numpy as np
import numpy.typing as npt

def group_norm(
    x: npt.NDArray[np.floating],      # IN  (R, L) one statistics group per row
    scale: npt.NDArray[np.floating],  # IN  (period,) or (0,)
    bias: npt.NDArray[np.floating],   # IN  (period,) or (0,)
    out: npt.NDArray[np.floating],    # OUT (R, L); may alias x
    nseg: int,
    eps: float,
    act: int,
    n_threads: int,
) -> None: ...
def adain(
    content: npt.NDArray[np.floating],  # IN  (R, L)
    style: npt.NDArray[np.floating],    # IN  (R, Ls)
    out: npt.NDArray[np.floating],      # OUT (R, L); may alias content
    eps: float,
    unbiased: bool,                     # variance m2/(n-1) instead of m2/n
    n_threads: int,
) -> None: ...
def group_norm_half(
    x: npt.NDArray[np.uint16],       # IN  (R, L) 16-bit words of a float16/bfloat16 array, one group per row
    scale: npt.NDArray[np.float32],  # IN  (period,) per-segment scale, or (0,)
    bias: npt.NDArray[np.float32],   # IN  (period,) per-segment bias, or (0,)
    out: npt.NDArray[np.uint16],     # OUT (R, L) x's dtype; may alias x
    nseg: int,
    eps: float,
    act: int,
    n_threads: int,
    kind: int,                       # 0 float16, 1 bfloat16
) -> None: ...
