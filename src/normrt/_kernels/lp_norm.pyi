"""Type stub for the compiled Lp kernels (pyx/lp_norm.pyx). Called by normrt.api.lp_norm."""
import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]

def lp_rows(x: Array, out: Array, p: int, eps: float, n_threads: int, nan_on_zero: bool = ...) -> None: ...   # (K1, L): norm per row
def lp_cols(x: Array, out: Array, p: int, eps: float, n_threads: int, nan_on_zero: bool = ...) -> None: ...   # (K1, L, K2): norm over L
def grn(x: Array, gamma: Array, beta: Array, eps: float, out: Array, n_threads: int) -> None: ...   # (N, L, C) float32: ConvNeXt V2's GRN
