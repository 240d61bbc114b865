"""Type stub for the compiled GEMM and convolution kernels (pyx/gemm.pyx)."""
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

def isa() -> str: ...
def block_sizes() -> tuple[int, int, int]: ...                       # (MR, NR, KC)
def packed_a_size(m: int, k: int) -> int: ...
def packed_b_size(k: int, n: int) -> int: ...
def workspace_size(n_threads: int) -> int: ...
def pack_a(a: F32, out: F32) -> None: ...                              # (M, K) -> packed
def pack_b(b: F32, out: F32) -> None: ...                              # (K, N) -> packed
def gemm(a: F32, a_packed: bool, b: F32, b_packed: bool, m: int, n: int, k: int, c: F32,
         bias: F32, bias_axis: int, residual: F32, act: int, work: F32, n_threads: int) -> None: ...
def conv2d(x: F32, w: F32, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, dh: int, dw: int,
           group: int, y: F32, bias: F32, residual: F32, act: int, work: F32,
           n_threads: int) -> None: ...                                # (N, C, H, W) -> (N, M, OH, OW)
