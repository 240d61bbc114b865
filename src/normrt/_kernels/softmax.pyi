"""Type stub for the compiled row softmax (pyx/softmax.pyx)."""
import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]

def softmax_rows(x: Array, out: Array, empty_rows_zero: bool, n_threads: int) -> None: ...   # (R, n)
