"""Type stub for the compiled 2-D pooling (pyx/pool.pyx)."""
import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]
Counts = npt.NDArray[np.int64]

def pool2d(x: Array, out: Array, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,   # (P, H, W) -> (P, OH, OW)
           dh: int, dw: int, is_max: bool, row_count: Counts, col_count: Counts, n_threads: int) -> None: ...
def global_average(x: Array, out: Array, n_threads: int) -> None: ...                   # (P, H*W) -> (P,)
