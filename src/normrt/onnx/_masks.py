"""What a constant attention mask is, for the rewrite that takes it (passes/causal_mask.py) and
the specialized plan's attention call that meets it folded (kernel_calls.prepared_attention: a
decoder exported with dynamic axes builds its causal mask from shapes at run time)."""
import numpy as np


def causal_pattern_reason(mask):
    """None when every (Sq, Skv) slice of `mask` is the top-left causal mask, else why not."""
    if mask.ndim < 2 or mask.shape[-1] != mask.shape[-2]:
        return "the mask's last two axes are not a square (Sq, Skv)"
    n = mask.shape[-1]
    above = np.triu(np.ones((n, n), bool), 1)
    if mask.dtype == np.bool_:
        return None if np.array_equal(mask, np.broadcast_to(~above, mask.shape)) else "not the causal pattern"
    if not np.issubdtype(mask.dtype, np.floating):
        return "the mask is neither float nor bool"
    lowest = np.finfo(mask.dtype).min
    visible = np.broadcast_to(~above, mask.shape)
    if not np.all(mask[visible] == 0):
        return "not the causal pattern (a visible entry is not 0)"
    hidden = mask[np.broadcast_to(above, mask.shape)]
    if not np.all(np.isneginf(hidden) | (hidden == lowest)):
        return "not the causal pattern (a masked entry is neither -inf nor the lowest finite value)"
    return None
