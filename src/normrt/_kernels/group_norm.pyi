"""Type stub for the compiled channel-group kernels (pyx/group_norm.pyx).

normrt.api.group_norm validates the arguments; group_norm still checks its
arrays (ValueError before computing). x and out share one dtype: float32,
float64, or uint16 holding the words of a float16 (kind 0) or bfloat16 (kind 1)
array; scale/bias are float64 for float64 x, else float32, and absent ones None
or length-0 arrays. adain takes float32/float64 only.
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
    kind: int = ...,                  # uint16 x: 0 float16, 1 bfloat16
) -> None: ...
def adain(
    content: npt.NDArray[np.floating],  # IN  (R, L)
    style: npt.NDArray[np.floating],    # IN  (R, Ls)
    out: npt.NDArray[np.floating],      # OUT (R, L); may alias content
    eps: float,
    unbiased: bool,                     # variance m2/(n-1) instead of m2/n
    n_threads: int,
) -> None: ...
