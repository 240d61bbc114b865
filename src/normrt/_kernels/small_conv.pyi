"""Type stub for the compiled grouped / depthwise convolution (pyx/small_conv.pyx)."""
from typing import Optional

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

def grouped_conv2d(x: F32, w: F32, bias: F32, y: F32, sh: int, sw: int, pt: int, pl: int, dh: int, dw: int,
                   group: int, n_threads: int, act: int = 0) -> None: ...   # x (N,C,H,W), w (M,C/group,kh,kw), y OUT

class PreparedGroupedConv:
    def __init__(self, w: F32, bias: Optional[F32], x_shape: tuple, y_shape: tuple, sh: int, sw: int, pt: int,
                 pl: int, dh: int, dw: int, group: int, n_threads: int, act: int = 0) -> None: ...
    def __call__(self, x: F32, y: F32) -> F32: ...   # y OUT, returned
