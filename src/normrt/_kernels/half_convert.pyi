"""Type stub for the float16/bfloat16 conversions (pyx/half_convert.pyx, pyx/half.h).

kind: 0 float16, 1 bfloat16. Arrays are C-contiguous and one-dimensional;
half-precision arrays are passed as their 16-bit words (x.view(np.uint16)).
portable=True runs the scalar code a build without F16C/AVX would use.
"""
import numpy as np
import numpy.typing as npt

def to_float32(src: npt.NDArray[np.uint16], dst: npt.NDArray[np.float32], kind: int, n_threads: int,
               portable: bool = ...) -> None: ...
def from_float32(src: npt.NDArray[np.float32], dst: npt.NDArray[np.uint16], kind: int, n_threads: int,
                 portable: bool = ...) -> None: ...
def isa() -> str: ...
