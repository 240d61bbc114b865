"""Type stub for the compiled grid-sample kernel (pyx/grid_sample.pyx)."""
import numpy as np
import numpy.typing as npt

Real = npt.NDArray[np.float32] | npt.NDArray[np.float64]
Index = npt.NDArray[np.intp]

def gather(x: Real, y: Real, ry: Index, wy: Real, cx: Index, wx: Real, n_threads: int) -> None: ...
