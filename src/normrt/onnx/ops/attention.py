"""Attention-23/24: softmax(Q K^T * scale + bias) V.

float32 runs the fused kernel (normrt.attention: online softmax over key
blocks). float64 runs BLAS + the softmax kernel a block of query rows at a
time: the (rows, kv) score block of one head stays in cache between its GEMM,
the softmax and the GEMM with V, instead of materialising the (B, H, Sq, Skv)
scores in memory (UNet/VAE self-attention over 32x32 pixels: 1024x1024 per head).

Handled: 3-D inputs (with q_num_heads/kv_num_heads) and 4-D, grouped-query
heads, `scale`, `is_causal` (top-left aligned: no cache), a boolean or additive
`attn_mask` spanning all kv positions. Not handled (onnx.reference runs those
nodes): past_key/past_value, nonpad_kv_seqlen, softcap, qk_matmul_output,
sliding windows, the extra outputs.
"""
import threading

import numpy as np

from ...api.attention import attention as fused_attention
from ...api.softmax import softmax
from ._blas import gemm
from ._util import op

# bytes of one block of scores (query rows x kv): about an L2 cache
BLOCK_BYTES = 512 << 10


def _supported(node):
    a = node.attrs
    # past_key, past_value and nonpad_kv_seqlen are inputs 4-6: any of them -> onnx.reference
    return (node.n_outputs == 1 and not any(node.present_inputs[4:])
            and int(a.get("qk_matmul_output_mode", 0)) == 0
            and float(a.get("softcap", 0.0) or 0.0) == 0.0
            and int(a.get("left_window_size", -1)) == -1 and int(a.get("right_window_size", -1)) == -1)


def _heads(x, n):
    b, s, hid = x.shape
    return x.reshape(b, s, n, hid // n).transpose(0, 2, 1, 3)


@op("Attention", gemm=True, since=23, until=24, supports=_supported)
def attention(node, q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
    if past_key is not None or past_value is not None or nonpad_kv_seqlen is not None:
        raise NotImplementedError("Attention with a kv cache")  # _supported sends those elsewhere
    out_dtype = q.dtype
    if q.dtype != np.float64:
        q, k, v = (t.astype(np.float32, copy=False) for t in (q, k, v))
    three_d = q.ndim == 3
    if three_d:
        q = _heads(q, int(node.attrs["q_num_heads"]))
        k = _heads(k, int(node.attrs["kv_num_heads"]))
        v = _heads(v, int(node.attrs["kv_num_heads"]))
    bsz, hq, sq, d = q.shape
    hkv, skv, dv = k.shape[1], k.shape[2], v.shape[3]
    rep = hq // hkv
    t = q.dtype.type
    scale = node.attrs.get("scale")
    scale = t(1.0 / np.sqrt(d)) if scale is None else t(scale)
    if q.dtype == np.float32:
        bias = None
        if attn_mask is not None:
            bias = np.where(attn_mask, t(0), t(-np.inf)) if attn_mask.dtype == np.bool_ \
                else attn_mask.astype(np.float32, copy=False)
        causal = bool(int(node.attrs.get("is_causal", 0)))
        if three_d:
            # the kernel reads the heads-split views in place and writes the heads
            # interleaved: (B, Sq, Hq, Dv) is already the (B, Sq, Hq * Dv) output
            y = np.empty((bsz, sq, hq, dv), np.float32)
            fused_attention(q, k, v, scale=float(scale), bias=bias, is_causal=causal, out=y.transpose(0, 2, 1, 3))
            y = y.reshape(bsz, sq, hq * dv)
        else:
            y = fused_attention(q, k, v, scale=float(scale), bias=bias, is_causal=causal)
        return y if y.dtype == out_dtype else y.astype(out_dtype)
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == np.bool_:
            bias = np.where(attn_mask, t(0), t(-np.inf))
        else:
            bias = attn_mask.astype(q.dtype, copy=False)
        bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    if int(node.attrs.get("is_causal", 0)):
        causal = np.where(np.arange(skv)[None, :] <= np.arange(sq)[:, None], t(0), t(-np.inf))
        bias = causal[None, None] if bias is None else bias + causal
    y = np.empty((bsz, hq, sq, dv), q.dtype)
    rows = max(1, min(sq, BLOCK_BYTES // max(1, skv * q.itemsize)))

    blocks = list(range(0, sq, rows))
    local = threading.local()

    def item(i):
        bh, blk = divmod(i, len(blocks))
        b, h = divmod(bh, hq)
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = (np.empty((rows, skv), q.dtype), np.empty((rows, d), q.dtype))
        scores, qs = buf
        r0 = blocks[blk]
        r1 = min(sq, r0 + rows)
        n = r1 - r0
        s = scores[:n]
        qs = qs[:n]
        np.multiply(q[b, h, r0:r1], scale, out=qs)
        gemm(qs, k[b, h // rep].T, s)              # a transposed view: BLAS reads it as is
        if bias is not None:
            s += bias[b % bias.shape[0], h % bias.shape[1], r0:r1] if bias.shape[2] > 1 \
                else bias[b % bias.shape[0], h % bias.shape[1]]
        # a fully masked query row attends to nothing (zeros)
        softmax(s, out=s, masked_rows="zero")
        gemm(s, v[b, h // rep], y[b, h, r0:r1])

    # (head, block of query rows) pieces; their GEMMs and softmax run on the kernels' threads
    for i in range(bsz * hq * len(blocks)):
        item(i)
    if three_d:
        y = y.transpose(0, 2, 1, 3).reshape(bsz, sq, hq * dv)
    return y if y.dtype == out_dtype else y.astype(out_dtype)
