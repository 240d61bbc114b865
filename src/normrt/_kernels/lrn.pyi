"""Type stub for the compiled LRN kernel (pyx/lrn.pyx). Called by normrt.api.lrn."""
import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]

def lrn(
    x: Array,        # IN  (N, C, S)
    out: Array,      # OUT (N, C, S); may alias x
    lo: int,         # the window reaches lo channels down
    hi: int,         # and hi channels up
    coef: float,     # alpha / size
    beta: float,
    bias: float,
    n_threads: int,
) -> None: ...
