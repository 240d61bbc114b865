"""Type stub for the compiled channel kernels (pyx/batch_norm.pyx): x viewed as
(R1, K, R2), K channels. Called by normrt.api.batch_norm / normrt.api.moments;
batch_norm checks its arrays (ValueError before computing); the others trust theirs."""
import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]
F64 = npt.NDArray[np.float64]

def strided_moments(
    x: Array,            # IN  (R1, K, R2)
    mean_out: F64,       # OUT (K,) mean over (R1, R2)
    var_out: F64,        # OUT (K,) population variance over (R1, R2)
    n_threads: int,
) -> None: ...
def channel_affine(
    x: Array,            # IN  (R1, K, R2)
    center: F64,         # IN  (K,) subtracted from x
    scale: F64,          # IN  (K,) multiplies x - center
    shift: F64,          # IN  (K,) added after scaling
    gamma: Array,        # IN  (R1*K*R2,) SPADE modulation, or (0,)
    beta: Array,         # IN  (R1*K*R2,) SPADE shift, or (0,)
    out: Array,          # OUT (R1, K, R2); may alias x
    act: int,
    n_threads: int,
) -> None: ...
def batch_norm(
    x: Array | npt.NDArray[np.uint16],  # IN  (R1, K, R2); uint16: the words of float16/bfloat16
    scale: Array,        # IN  (K,) float32 or float64, all four statistics alike
    bias: Array,         # IN  (K,)
    mean: Array,         # IN  (K,) running mean
    var: Array,          # IN  (K,) running variance
    eps: float,
    out: Array | npt.NDArray[np.uint16],  # OUT (R1, K, R2) x's dtype; may alias x
    act: int,
    n_threads: int,
    kind: int = ...,     # uint16 x: 0 float16, 1 bfloat16
) -> None: ...
