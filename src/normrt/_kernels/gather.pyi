"""Type stub for the compiled GatherElements kernel (pyx/gather.pyx)."""
import numpy as np
import numpy.typing as npt

def gather_elements(x: npt.NDArray[np.generic], idx: npt.NDArray[np.int64], out: npt.NDArray[np.generic],
                    n_threads: int) -> npt.NDArray[np.generic]: ...
