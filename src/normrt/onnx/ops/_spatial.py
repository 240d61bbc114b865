"""Padding / output-size arithmetic shared by Conv, ConvTranspose and pooling."""
import itertools

import numpy as np

from ._util import attr_ints, attr_str

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def auto_pad_ok(node):
    return attr_str(node, "auto_pad", "NOTSET") in AUTO_PADS


def window_params(node, nsp, kernel):
    strides = attr_ints(node, "strides") or [1] * nsp
    dil = attr_ints(node, "dilations") or [1] * nsp
    return strides, dil


def forward_pads(node, in_shape, kernel, strides, dil):
    """(pads_begin, pads_end) for a forward window op, resolving auto_pad."""
    nsp = len(in_shape)
    auto_pad = attr_str(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pb, pe = [], []
        for i in range(nsp):
            out = -(-in_shape[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - in_shape[i])
            small, big = total // 2, total - total // 2
            if auto_pad == "SAME_UPPER":
                pb.append(small), pe.append(big)
            else:
                pb.append(big), pe.append(small)
        return pb, pe
    if auto_pad == "VALID":
        return [0] * nsp, [0] * nsp
    pads = attr_ints(node, "pads") or [0] * (2 * nsp)
    return list(pads[:nsp]), list(pads[nsp:])


def out_size(in_len, pb, pe, k, s, d, ceil_mode=False):
    span = (k - 1) * d + 1
    num = in_len + pb + pe - span
    if ceil_mode:
        o = -(-num // s) + 1
        # the last window must start inside the input or the left padding
        if (o - 1) * s >= in_len + pb:
            o -= 1
    else:
        o = num // s + 1
    return max(o, 0)


def pad_to(x, pb, need, fill):
    """Spatially pad/crop `x` (N, C, *sp) so axis i starts `pb[i]` early and
    has length `need[i]`, filling with `fill`.  Returns x itself when no
    padding or cropping is required."""
    sp = x.shape[2:]
    if all(p == 0 for p in pb) and all(n == s for n, s in zip(need, sp)):
        return x
    out = np.full(x.shape[:2] + tuple(need), fill, dtype=x.dtype)
    src, dst = [slice(None)] * 2, [slice(None)] * 2
    for i, (p, n, s) in enumerate(zip(pb, need, sp)):
        lo = max(0, -p)                 # first source index used
        hi = min(s, n - p)              # one past the last source index used
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo + p, hi + p))
    out[tuple(dst)] = x[tuple(src)]
    return out


def tap_slices(kernel, strides, dil, out_sp):
    """For each kernel tap: (tap index tuple, spatial slices into the padded input)."""
    for idx in itertools.product(*[range(k) for k in kernel]):
        sl = tuple(
            slice(j * d, j * d + (o - 1) * s + 1, s)
            for j, d, o, s in zip(idx, dil, out_sp, strides)
        )
        yield idx, sl
