"""Type stub for the compiled batched small products (pyx/small_gemm.pyx)."""
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

def batched_matmul(a: F32, b: F32, y: F32, n_threads: int) -> None: ...   # (B, M, K) @ (B, K, N) -> (B, M, N)
