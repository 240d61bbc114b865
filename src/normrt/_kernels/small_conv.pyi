"""Type stub for the compiled depthwise convolution (pyx/small_conv.pyx)."""
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

def depthwise_conv2d(x: F32, w: F32, bias: F32, y: F32, sh: int, sw: int, pt: int, pl: int,
                     dh: int, dw: int, mult: int, n_threads: int) -> None: ...   # x (N,C,H,W), w (C*mult,kh,kw)
