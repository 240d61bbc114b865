"""Type stub for the compiled transpose kernel (pyx/transpose.pyx)."""
import numpy as np
import numpy.typing as npt

def transpose_into(x: npt.NDArray[np.generic], out: npt.NDArray[np.generic], shape: list[int], perm: list[int],
                   n_threads: int) -> npt.NDArray[np.generic]: ...
def vector_blocks(itemsize: int) -> bool: ...
