"""Type stub for the compiled transposed-conv kernel (pyx/conv_transpose.pyx)."""
import numpy as np
import numpy.typing as npt

def col2im(cols: npt.NDArray[np.float32], bias: npt.NDArray[np.float32], y: npt.NDArray[np.float32],
           IH: int, IW: int, OH: int, OW: int, KH: int, KW: int, sh: int, sw: int, dh: int, dw: int,
           pt: int, pl: int, n_threads: int) -> None: ...
