"""Type stub for the compiled fold kernel (pyx/fold.pyx)."""
import numpy as np
import numpy.typing as npt

Real = npt.NDArray[np.float32] | npt.NDArray[np.float64]

def col2im(x: Real, y: Real, sh: int, sw: int, dh: int, dw: int, pt: int, pl: int, n_threads: int) -> None: ...
