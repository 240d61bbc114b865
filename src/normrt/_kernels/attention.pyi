"""Type stub for the compiled fused attention (pyx/attention.pyx)."""
import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

# q (B, Hq, Sq, D), k (B, Hkv, Skv, D), v (B, Hkv, Skv, Dv), bias (1|B, 1|Hq, 1|Sq, Skv) or
# (0, 0, 0, 0), out (B, Hq, Sq, Dv): any strides (views of other layouts), a unit-stride last
# axis for q, v and out; out's elements must not overlap
def attention_fwd(q: Array, k: Array, v: Array, bias: Array, out: Array,
                  scale: float, causal: bool, n_threads: int) -> None: ...
