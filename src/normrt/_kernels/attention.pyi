"""Type stub for the compiled fused attention (pyx/attention.pyx)."""
import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

def attention_fwd(q: Array, k: Array, v: Array, bias: Array, out: Array,    # (B, Hq, Sq, D), (B, Hkv, Skv, D),
                  scale: float, causal: bool, n_threads: int) -> None: ...   # (B, Hkv, Skv, Dv), bias, (B, Hq, Sq, Dv)
