"""Type stub for the compiled elementwise kernels (pyx/elementwise.pyx)."""
import numpy as np
import numpy.typing as npt

Real = npt.NDArray[np.float32] | npt.NDArray[np.float64]

def binary(op: int, a: Real, b: Real, out: Real, n_threads: int) -> None: ...   # 0 + 1 - 2 * 3 /
def fake_quant(x: npt.NDArray[np.float32], out: npt.NDArray[np.float32], scale: float, zero: float, lo: float,
               hi: float, n_threads: int) -> None: ...
def dynamic_fake_quant(x: npt.NDArray[np.float32], out: npt.NDArray[np.float32],
                       n_threads: int) -> tuple[float, float]: ...   # (scale, zero point) of x's own grid
