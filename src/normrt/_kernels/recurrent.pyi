"""Type stub for the compiled recurrent kernels (pyx/recurrent.pyx)."""
import numpy as np
import numpy.typing as npt

Real = npt.NDArray[np.float32] | npt.NDArray[np.float64]

SIGMOID: int
TANH: int
RELU: int
LSTM: int
GRU: int
RNN: int

def packed_r_size(G: int, H: int) -> int: ...
def pack_r(r: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None: ...
def run(cell: int, xw: Real, r: Real, rp: npt.NDArray[np.float32], p: Real, rbh: Real, h: Real, c: Real, y: Real,
        lens: npt.NDArray[np.int32], reverse_first: bool, clip: float, fa: int, ga: int, ha: int,
        input_forget: bool, linear_before_reset: bool, n_threads: int) -> None: ...
