"""Type stub for the compiled resize kernels (pyx/resize.pyx)."""
import numpy as np
import numpy.typing as npt

Real = npt.NDArray[np.float32] | npt.NDArray[np.float64]
Index = npt.NDArray[np.intp]

def nearest(x: Real, y: Real, rows: Index, cols: Index, fx: int, n_threads: int) -> None: ...
def linear(x: Real, y: Real, r0: Index, r1: Index, wr: Real, lerp_rows: bool,
           c0: Index, c1: Index, wc: Real, lerp_cols_: bool, n_threads: int) -> None: ...
