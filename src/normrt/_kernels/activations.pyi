"""Type stub for the compiled elementwise kernels (pyx/activations.pyx)."""
import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]

def erf(x: Array, out: Array, n_threads: int) -> None: ...                    # (n,) -> (n,)
def activation(x: Array, out: Array, act: int, n_threads: int) -> None: ...   # (n,) -> (n,)
