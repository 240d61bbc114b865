"""Type stub for the compiled convolution kernels (pyx/conv.pyx)."""
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

def pack_at(a: F32, out: F32) -> None: ...                             # (M, K) -> A^T packed as B
def conv_transposed(oh: int, ow: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
                    dh: int, dw: int, mg: int, cg: int) -> bool: ...
def conv_workspace_size(nimg: int, c: int, oh: int, ow: int, kh: int, kw: int, sh: int, sw: int,
                        ph: int, pw: int, dh: int, dw: int, mg: int, n_threads: int) -> int: ...
def conv2d(x: F32, w: F32, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int,
           group: int, transposed: bool, y: F32, bias: F32, residual: F32, act: int, work: F32,
           n_threads: int) -> None: ...                                # (N, C, H, W) -> (N, M, OH, OW)

class PreparedConv:                                                    # conv2d planned once
    def __init__(self, w: F32, x_shape: tuple[int, int, int, int], y_shape: tuple[int, int, int, int],
                 kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int, group: int,
                 transposed: bool, bias: F32 | None, act: int, n_threads: int, pad_mode: int = 0,
                 pb: int = 0, pr: int = 0, alpha: float = 0.01) -> None: ...
    @property
    def workspace_size(self) -> int: ...
    def __call__(self, x: F32, y: F32, work: F32, residual: F32 | None = None) -> F32: ...
