"""normrt::GroupQueryAttention's call: onnxruntime's GroupQueryAttention step (the KV cache
update, the rotary embedding, the mask from seqlens_k) in a few numpy operations around one
call of the fused attention kernel.

passes/group_query_attention.py writes this node for every form it can (the rest, softcap's
Tanh inside the scores, become the standard ops of _gqa_graph, which define the semantics this
call follows step for step). A decode step of onnxruntime-genai's LLMs was ~100 small nodes per
layer in that form, each a numpy call of a few microseconds: the model ran dispatch-bound.

    query (B, S, N·H) | packed (B, S, (N + 2 KV)·H)    key, value (B, S, KV·H)
    past_key, past_value (B, KV, P, H)    seqlens_k (B,)    total_sequence_length (1)
    cos_cache, sin_cache (positions, R / 2)
    ──► output (B, S, N·H), present_key, present_value (B, KV, L, H), L = max(P, total)

Row b's tokens after the step are seqlens_k[b] + 1 (`total`); its new rows sit right after its
own past (past_b = total_b - S), or at 0 on the first prompt (S == total_sequence_length) and
whenever there is no past (_gqa_graph.positions). The common cases take short cuts that give
the same values: a cache whose every row is full is one Concat (no gather), a decode step sees
every key (no mask), a first prompt filling the cache is the kernel's causal loop.
"""
import numpy as np

from .._kernels import attention as _ka
from .._thread_policy import compute_bound
from ..api.attention import _NO_BIAS, attention_kt


def _positions(seqlens_k, total_length, batch, seq, has_past):
    """(past_rows, rotary_start, total: one int per batch row, total_sequence_length), as
    _gqa_graph.positions computes them. Python ints: a decode step's handful of rows costs less
    so than as numpy arrays (this call runs once per layer and token)."""
    lens = np.asarray(seqlens_k).reshape(-1).tolist()
    if len(lens) not in (1, batch):
        raise ValueError(f"GroupQueryAttention: seqlens_k has {len(lens)} values for a batch of {batch}")
    total = [int(n) + 1 for n in lens] * (batch if len(lens) == 1 else 1)
    t = np.asarray(total_length).reshape(-1)
    if t.size != 1:
        raise ValueError(f"GroupQueryAttention: total_sequence_length must hold one value, got shape "
                         f"{np.shape(total_length)}")
    t_len = int(t[0])
    rotary_start = [0] * batch if seq == t_len else [n - seq for n in total]
    past_rows = rotary_start if has_past else [0] * batch
    return past_rows, rotary_start, total, t_len


def _rotary_tables(attrs, cos_cache, sin_cache):
    """(cos2, sin2): the caches widened to the 2·half rotated channels, (positions, 2, half) for
    halves, (positions, half, 2) interleaved: cos twice, sin as (-sin, sin), so a rotation is
    x * cos2 + swapped(x) * sin2 (`_rotate`). Made once per node and cache (kept on the node's
    attribute dict while the same cache arrays come back)."""
    kept = attrs.get("_rotary_tables")
    if kept is not None and kept[0] is cos_cache and kept[1] is sin_cache:
        return kept[2], kept[3]
    axis = -1 if attrs["rotary_interleaved"] else -2
    cos2 = np.stack([cos_cache, cos_cache], axis=axis)
    sin2 = np.stack([-sin_cache, sin_cache], axis=axis)
    attrs["_rotary_tables"] = (cos_cache, sin_cache, cos2, sin2)
    return cos2, sin2


def _rotate(x, cos2, sin2):
    """onnxruntime's rotary embedding of x (B, S, heads, H) on its first R channels by the rows
    cos2, sin2 (B, S, 1, 2, R / 2) or interleaved (B, S, 1, R / 2, 2) of _rotary_tables, as a new
    array: x1 cos - x2 sin and x2 cos + x1 sin for the pairs (x1, x2) = (x[i], x[R/2 + i]) or
    (x[2i], x[2i + 1]). Each product rounded, then the sum, as the Mul and Sub / Add nodes give
    them (x2 * -sin is -(x2 * sin) exactly, and a + -b is a - b)."""
    B, S, heads, H = x.shape
    rot = sin2.shape[-1] * sin2.shape[-2]
    out = np.empty(x.shape, x.dtype)
    pairs = x[..., :rot].reshape(B, S, heads, *sin2.shape[-2:])
    swapped = pairs[..., ::-1, :] if sin2.shape[-2] == 2 else pairs[..., ::-1]
    lead = out[..., :rot].reshape(pairs.shape)
    np.multiply(pairs, cos2, out=lead)
    lead += swapped * sin2
    if rot < H:
        out[..., rot:] = x[..., rot:]
    return out


def _rotary_rows(cache, starts, seq):
    """cache rows starts[b] + s as (B, S, 1, ...): Gather's rows (a negative position counts from
    the end, one past the end raises), a slice when one row starts inside the cache."""
    if len(starts) == 1 and 0 <= starts[0] and starts[0] + seq <= cache.shape[0]:
        return cache[starts[0]:starts[0] + seq][None, :, None]
    pos = np.asarray(starts, np.int64)[:, None] + np.arange(seq)[None, :]
    if pos.size and (pos.max() >= cache.shape[0] or pos.min() < -cache.shape[0]):
        raise ValueError(f"GroupQueryAttention: rotary positions up to {int(pos.max())} (from seqlens_k) beyond "
                         f"the cos/sin caches' {cache.shape[0]} positions")
    return cache[pos][:, :, None]


def _present(past, new, past_rows, length):
    """The present cache (B, KV, L, H) from past (B, KV, P, H) or None and the new rows
    new (B, KV, S, H): row b holds past[b, :, :past_b], then new[b], then zeros
    (_gqa_graph.cache_indices: the same rows, gathered from Concat(past, new, a zero row))."""
    B, KV, S, H = new.shape
    P = 0 if past is None else past.shape[2]
    if length == P + S and all(r == P for r in past_rows):
        return np.ascontiguousarray(new) if past is None else np.concatenate([past, new], axis=2)
    j = np.arange(length)[None, :]
    start = np.asarray(past_rows, np.int64)[:, None]
    index = np.where(j < start, j, np.where(j < start + S, j - start + P, P + S))       # (B, L)
    if index.size and (index.min() < -(P + S + 1) or index.max() > P + S):
        raise ValueError(f"GroupQueryAttention: seqlens_k place the new tokens of rows starting at {past_rows} "
                         f"beyond the cache (past {P} + new {S} rows)")
    joined = np.concatenate(([past] if past is not None else []) + [new, np.zeros((B, KV, 1, H), new.dtype)],
                            axis=2)
    return np.take_along_axis(joined, index[:, None, :, None], axis=2)


def _mask(past_rows, total, seq, length, window, window_from_valid):
    """The additive mask (B, 1, S, L) of _gqa_graph.mask: row s of batch row b sees key j when
    j < min(past_b + s + 1, total_b) (and, with a local window, j within its `window` last)."""
    causal = np.asarray(past_rows, np.int64)[:, None] + np.arange(seq)[None, :] + 1      # (B, S)
    limit = np.minimum(causal, np.asarray(total, np.int64)[:, None])
    j = np.arange(length)[None, None, :]
    seen = j < limit[:, :, None]
    if window > 0:
        seen &= j >= (limit if window_from_valid else causal)[:, :, None] - window
    return np.where(seen, np.float32(0.0), np.float32(-np.inf))[:, None]


def group_query_attention(attrs, n_out, query, key=None, value=None, past_key=None, past_value=None,
                          seqlens_k=None, total_length=None, cos_cache=None, sin_cache=None):
    heads, kv_heads, size = attrs["num_heads"], attrs["kv_num_heads"], attrs["head_size"]
    if query.ndim != 3:
        raise ValueError(f"GroupQueryAttention: query must be (batch, sequence, hidden), got shape {query.shape}")
    B, S = query.shape[:2]
    if key is None:
        qkv = query.reshape(B, S, heads + 2 * kv_heads, size)
        q, k, v = qkv[:, :, :heads], qkv[:, :, heads:heads + kv_heads], qkv[:, :, heads + kv_heads:]
    else:
        qkv = None
        q = query.reshape(B, S, heads, size)
        k, v = key.reshape(B, S, kv_heads, size), value.reshape(B, S, kv_heads, size)
    for name, past in (("past_key", past_key), ("past_value", past_value)):
        if past is not None and (past.ndim != 4 or past.shape[:2] != (B, kv_heads) or past.shape[3] != size):
            raise ValueError(f"GroupQueryAttention: {name} must be ({B}, {kv_heads}, past, {size}), "
                             f"got shape {past.shape}")
    past_rows, rotary_start, total, t_len = _positions(seqlens_k, total_length, B, S, past_key is not None)
    P = 0 if past_key is None else past_key.shape[2]
    length = max(P, t_len)

    if attrs["do_rotary"]:
        cos2, sin2 = _rotary_tables(attrs, cos_cache, sin_cache)
        cos2, sin2 = _rotary_rows(cos2, rotary_start, S), _rotary_rows(sin2, rotary_start, S)
        if qkv is not None:         # Q and K side by side: one rotation over both
            qk = _rotate(qkv[:, :, :heads + kv_heads], cos2, sin2)
            q, k = qk[:, :, :heads], qk[:, :, heads:]
        else:
            q, k = _rotate(q, cos2, sin2), _rotate(k, cos2, sin2)

    present_k = _present(past_key, k.transpose(0, 2, 1, 3), past_rows, length)
    present_v = _present(past_value, v.transpose(0, 2, 1, 3), past_rows, length)

    # the mask, or the kernel's causal loop / no mask where that is what it holds: every row
    # full (its past fills the cache, its tokens end it) and no window
    window = attrs["local_window_size"]
    full = window <= 0 and all(r == length - S for r in past_rows) and all(n == length for n in total)
    bias, causal = None, False
    if full and S == length:
        causal = S > 1
    elif not (full and S == 1):
        bias = _mask(past_rows, total, S, length, window, bool(attrs["window_from_valid"]))
    if query.dtype != np.float32 or 0 in (B, S, heads, size):
        y = np.empty((B, S, heads, size), query.dtype)
        attention_kt(q.transpose(0, 2, 1, 3), present_k.transpose(0, 1, 3, 2), present_v, scale=attrs["scale"],
                     bias=bias, is_causal=causal, out=y.transpose(0, 2, 1, 3))
        return y.reshape(B, S, heads * size), present_k, present_v
    # the arrays are made here, of known shapes and float32: the kernel itself, its threads from
    # the flops (api.attention's checks would double this call's time on a decode step)
    threads = compute_bound(4 * B * heads * S * length * size)
    rep = heads // kv_heads
    # each KV head's query heads as the rows of one query (below) where that makes few rows;
    # else per head: a decode step's single row per head takes the kernel's keys-in-lanes items,
    # which more rows (7 query heads a KV head) would leave for the rows-in-lanes ones
    few = _ka.FEW_QUERY_ROWS
    if rep == 1 or causal or (rep * S > few and S <= few):
        y = np.empty((B, S, heads, size), np.float32)
        _ka.attention_fwd(q.transpose(0, 2, 1, 3), present_k, present_v, _NO_BIAS if bias is None else bias,
                          y.transpose(0, 2, 1, 3), attrs["scale"], causal, threads)
        return y.reshape(B, S, heads * size), present_k, present_v
    # each KV head's query heads as the rows of one query (B, KV, rep·S, H), the rows (r, s): one
    # work item reads the KV head's keys and values once for all of them
    rows = q.reshape(B, S, kv_heads, rep, size).transpose(0, 2, 3, 1, 4).reshape(B, kv_heads, rep * S, size)
    if bias is not None:
        bias = np.tile(bias, (1, 1, rep, 1))
    y = np.empty((B, kv_heads, rep * S, size), np.float32)
    _ka.attention_fwd(rows, present_k, present_v, _NO_BIAS if bias is None else bias, y, attrs["scale"], False,
                      threads)
    y = y.reshape(B, kv_heads, rep, S, size).transpose(0, 3, 1, 2, 4)
    return y.reshape(B, S, heads * size), present_k, present_v
