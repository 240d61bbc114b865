"""normrt.attention (the fused float32 kernel and the float64 path) against a float64 reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normrt
from normrt.api.attention import attention_kt

rng = np.random.default_rng(23)


def ref(q, k, v, scale=None, bias=None, causal=False):
    """Dense float64 softmax(q k^T * scale + bias) v; a query seeing no key gives zeros."""
    q, k, v = (t.astype(np.float64) for t in (q, k, v))
    B, Hq, Sq, D = q.shape
    Hkv, Skv = k.shape[1], k.shape[2]
    rep = Hq // Hkv
    k = np.repeat(k, rep, axis=1)
    v = np.repeat(v, rep, axis=1)
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    s = np.einsum("bhid,bhjd->bhij", q, k) * scale
    if bias is not None:
        s = s + bias.astype(np.float64)
    if causal:
        s = np.where(np.arange(Skv)[None, :] <= np.arange(Sq)[:, None], s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    dead = ~np.isfinite(m)
    e = np.exp(s - np.where(dead, 0.0, m))
    p = e / np.where(dead, 1.0, e.sum(axis=-1, keepdims=True))
    return np.einsum("bhij,bhjd->bhid", p, v)


def qkv(B, Hq, Hkv, Sq, Skv, D, Dv, dtype=np.float32, magnitude=1.0):
    return ((rng.standard_normal((B, Hq, Sq, D)) * magnitude).astype(dtype),
            (rng.standard_normal((B, Hkv, Skv, D)) * magnitude).astype(dtype),
            rng.standard_normal((B, Hkv, Skv, Dv)).astype(dtype))


SHAPES = [  # B, Hq, Hkv, Sq, Skv, D, Dv
    (1, 1, 1, 1, 1, 1, 1),
    (1, 1, 1, 64, 64, 16, 16),          # exactly one block each way
    (2, 3, 3, 65, 129, 8, 8),           # one row / one key past a block
    (1, 2, 2, 130, 200, 40, 40),        # 4-row and single-row micro-kernel tails
    (2, 4, 2, 17, 33, 16, 8),           # grouped-query heads, Dv != D
    (1, 6, 2, 70, 90, 7, 33),           # odd head dims, Dv past two vectors
    (1, 1, 1, 5, 300, 64, 72),          # Dv = 72: a full 32-column pass, then a tail
    (1, 2, 1, 300, 5, 3, 17),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_matches_reference(shape, causal):
    q, k, v = qkv(*shape)
    y = normrt.attention(q, k, v, is_causal=causal)
    assert y.dtype == np.float32 and y.shape == shape[:2] + (shape[3], shape[6])
    np.testing.assert_allclose(y, ref(q, k, v, causal=causal), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("bias_shape", [(33,), (17, 33), (4, 1, 33), (2, 1, 17, 33), (2, 4, 17, 33), (1, 4, 1, 1)])
def test_additive_bias_broadcasts(bias_shape):
    q, k, v = qkv(2, 4, 2, 17, 33, 16, 8)
    bias = rng.standard_normal(bias_shape).astype(np.float32) * 3
    y = normrt.attention(q, k, v, bias=bias, scale=0.4)
    np.testing.assert_allclose(y, ref(q, k, v, 0.4, bias), rtol=2e-5, atol=2e-6)


@settings(max_examples=40, deadline=None)
@given(sq=st.integers(1, 140), skv=st.integers(1, 150), heads=st.sampled_from([(1, 1), (3, 3), (4, 2)]),
       form=st.sampled_from(["full", "per_head", "rows_broadcast", "keys_only", "batch_rows"]),
       causal=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_generated_bias_shapes(sq, skv, heads, form, causal, seed):
    """Bias rows are added in 16x16 transposed tiles (a row per query) or broadcast (one row for
    every query): any row count and key count around the tiles' and blocks' edges, any broadcast."""
    r = np.random.default_rng(seed)
    hq, hkv = heads
    q, k, v = (r.standard_normal(s).astype(np.float32) for s in ((2, hq, sq, 8), (2, hkv, skv, 8), (2, hkv, skv, 5)))
    shape = {"full": (2, hq, sq, skv), "per_head": (hq, sq, skv), "rows_broadcast": (2, 1, 1, skv),
             "keys_only": (skv,), "batch_rows": (2, 1, sq, skv)}[form]
    bias = (r.standard_normal(shape) * 2).astype(np.float32)
    bias[r.random(shape) < 0.1] = -np.inf
    y = normrt.attention(q, k, v, bias=bias, is_causal=causal, scale=0.5)
    np.testing.assert_allclose(y, ref(q, k, v, 0.5, bias, causal), rtol=2e-5, atol=2e-6)
    with normrt.threads(1):
        assert np.array_equal(y, normrt.attention(q, k, v, bias=bias, is_causal=causal, scale=0.5))


@pytest.mark.parametrize("lengths", [(256, 200, 96, 40), (1, 64, 65, 130)])
def test_padding_masks_skip_hidden_key_blocks(lengths):
    """A batch of sequences padded to one length: the -inf padding hides whole key blocks of the
    shorter ones (skipped); the result is the dense formula's, and the same for any thread count."""
    s = max(lengths)
    q, k, v = qkv(len(lengths), 3, 3, s, s, 16, 8)
    pad = np.zeros((len(lengths), 1, 1, s), np.float32)
    for b, n in enumerate(lengths):
        pad[b, 0, 0, n:] = -np.inf
    y = normrt.attention(q, k, v, bias=pad)
    np.testing.assert_allclose(y, ref(q, k, v, bias=pad), rtol=2e-5, atol=2e-6)
    for n_threads in (1, 3):
        with normrt.threads(n_threads):
            assert np.array_equal(y, normrt.attention(q, k, v, bias=pad))


def test_minus_inf_masks_and_fully_masked_rows_give_zeros():
    q, k, v = qkv(1, 2, 2, 70, 150, 16, 16)
    bias = np.where(rng.random((70, 150)) > 0.6, 0.0, -np.inf).astype(np.float32)
    bias[3] = -np.inf                       # row 3 sees nothing
    bias[5, :140] = -np.inf                 # row 5 sees only keys of the last (partial) block
    bias[6, 64:] = -np.inf                  # row 6 sees only the first block
    y = normrt.attention(q, k, v, bias=bias)
    assert (y[:, :, 3] == 0).all()
    np.testing.assert_allclose(y, ref(q, k, v, bias=bias), rtol=2e-5, atol=2e-6)
    # causal on top of a mask: row 0 sees key 0 only, which the mask removes
    bias2 = np.zeros((70, 150), np.float32)
    bias2[0, 0] = -np.inf
    y = normrt.attention(q, k, v, bias=bias2, is_causal=True)
    assert (y[:, :, 0] == 0).all()
    np.testing.assert_allclose(y, ref(q, k, v, bias=bias2, causal=True), rtol=2e-5, atol=2e-6)


MIN32 = float(np.finfo(np.float32).min)


@pytest.mark.parametrize("shape", [(1, 2, 2, 70, 150, 16, 16), (2, 4, 2, 3, 90, 8, 24), (1, 1, 1, 1, 20, 32, 8)])
@pytest.mark.parametrize("per_row", [True, False])
def test_finfo_min_masks_fully_masked_rows_average_the_values(shape, per_row):
    # torch's masks fill with finfo(float32).min, not -inf: a row every key of which is masked has
    # scores S + min == min for every key in float32, so softmax gives equal weights: the mean of V
    # (the float64 reference would not absorb S). The AVX-512 path's log2 units overflowed
    # min * log2(e) to -inf and gave zeros there.
    B, Hq, Hkv, Sq, Skv, D, Dv = shape
    q, k, v = qkv(*shape)
    rows = Sq if per_row else 1
    bias = np.where(rng.random((rows, Skv)) > 0.5, 0.0, MIN32).astype(np.float32)
    bias[0] = MIN32                          # row 0 (every row when shared) sees nothing
    if per_row and Sq > 5:
        bias[5, : Skv - 3] = MIN32           # row 5 sees only its last keys
    y = normrt.attention(q, k, v, bias=bias)
    dead = (bias == MIN32).all(axis=-1)
    mean_v = np.repeat(v.astype(np.float64).mean(axis=2), Hq // Hkv, axis=1)      # (B, Hq, Dv)
    expected = ref(q, k, v, bias=np.where(bias == MIN32, -np.inf, bias).astype(np.float32))
    expected[:, :, np.broadcast_to(dead, (Sq,))] = mean_v[:, :, None, :]
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-6)
    for n_threads in (1, 2):
        with normrt.threads(n_threads):
            assert np.array_equal(y, normrt.attention(q, k, v, bias=bias))


def test_causal_with_more_queries_than_keys():
    # top-left alignment: queries past the last key see every key
    q, k, v = qkv(1, 1, 1, 100, 40, 8, 8)
    np.testing.assert_allclose(normrt.attention(q, k, v, is_causal=True), ref(q, k, v, causal=True),
                               rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("magnitude", [1e-3, 10.0, 60.0])
def test_large_and_small_scores(magnitude):
    # large scores: the running max jumps from block to block (rescaling), exp underflows
    q, k, v = qkv(1, 2, 2, 80, 300, 16, 16, magnitude=magnitude)
    y = normrt.attention(q, k, v)
    assert np.isfinite(y).all()
    # float32 scores carry an error of ~eps * |score|, which exp turns into a relative one
    tol = 2e-5 + 5e-6 * magnitude ** 2
    np.testing.assert_allclose(y, ref(q, k, v), rtol=tol, atol=tol)


@pytest.mark.parametrize("spread", [1.0, 30.0, 85.0])
def test_probabilities_to_float32_accuracy(spread):
    # v = identity: the output rows are the softmax probabilities themselves, so the
    # kernel's exp (a polynomial) is checked value by value, down to probabilities of
    # ~1e-37 relative to the largest, not only through their weighted sums
    Skv = 96                                    # one full key block and a partial one
    q = np.zeros((1, 2, 40, 8), np.float32)
    q[..., 0] = 1.0
    k = np.zeros((1, 2, Skv, 8), np.float32)
    k[..., 0] = rng.uniform(-spread, 0.0, (1, 2, Skv)).astype(np.float32)
    v = np.broadcast_to(np.eye(Skv, dtype=np.float32), (1, 2, Skv, Skv))
    y = normrt.attention(q, k, v, scale=1.0)
    want = ref(q, k, v, scale=1.0)
    # the kernel works in log2 units: s * log2(e) rounded to float32 is off by ~eps * |s|,
    # which exp turns into a relative error; the polynomial itself adds ~1e-7
    np.testing.assert_allclose(y, want, rtol=5e-7 + 1.2e-7 * spread, atol=0)


def test_empty_key_sequence_gives_zeros():
    q, k, v = qkv(1, 2, 2, 5, 0, 8, 4)
    y = normrt.attention(q, k, v)
    assert y.shape == (1, 2, 5, 4) and (y == 0).all()
    assert normrt.attention(*qkv(1, 2, 2, 0, 5, 8, 4)).shape == (1, 2, 0, 4)


def test_nan_stays_in_its_row():
    q, k, v = qkv(1, 1, 1, 10, 20, 8, 8)
    q[0, 0, 4, 2] = np.nan
    y = normrt.attention(q, k, v)
    assert np.isnan(y[0, 0, 4]).all()
    rows = [i for i in range(10) if i != 4]
    np.testing.assert_allclose(y[0, 0, rows], ref(q, k, v)[0, 0, rows], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_float64_path(causal):
    q, k, v = qkv(2, 4, 2, 17, 33, 16, 8, dtype=np.float64)
    bias = np.where(rng.random((17, 33)) > 0.3, 0.0, -np.inf)
    bias[2] = -np.inf
    y = normrt.attention(q, k, v, bias=bias, is_causal=causal)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ref(q, k, v, bias=bias, causal=causal), rtol=1e-12, atol=1e-14)


def test_out_buffer():
    q, k, v = qkv(1, 2, 2, 30, 40, 8, 8)
    out = np.empty((1, 2, 30, 8), np.float32)
    assert normrt.attention(q, k, v, out=out) is out
    np.testing.assert_array_equal(out, normrt.attention(q, k, v))


@pytest.mark.parametrize("shape,causal", [((1, 8, 8, 300, 333, 16, 16), False),
                                          ((2, 4, 2, 257, 200, 40, 24), True)])
def test_same_bits_for_any_thread_count(shape, causal):
    q, k, v = qkv(*shape)
    bias = rng.standard_normal(shape[3:5]).astype(np.float32)
    outs = []
    for n in (1, 2, 3):
        with normrt.threads(n):
            outs.append(normrt.attention(q, k, v, bias=bias, is_causal=causal))
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_bad_input():
    q, k, v = qkv(1, 4, 2, 5, 6, 8, 3)
    with pytest.raises(TypeError, match="q must be a float32 or float64"):
        normrt.attention(q.astype(np.int32), k, v)
    with pytest.raises(ValueError, match="k must have rank 4"):
        normrt.attention(q, k[0], v)
    with pytest.raises(TypeError, match="v must have q's dtype float32"):
        normrt.attention(q, k, v.astype(np.float64))
    with pytest.raises(ValueError, match=r"k must have shape \(1, Hkv, Skv, 8\)"):
        normrt.attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="v must have shape"):
        normrt.attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="multiple of k's"):
        normrt.attention(q[:, :3], k, v)
    with pytest.raises(ValueError, match="scale must be finite"):
        normrt.attention(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match="scale must be a real number"):
        normrt.attention(q, k, v, scale="1")
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        normrt.attention(q, k, v, is_causal=1)
    with pytest.raises(ValueError, match="bias must broadcast to"):
        normrt.attention(q, k, v, bias=np.zeros((5, 7), np.float32))
    with pytest.raises(ValueError, match="bias must broadcast to"):
        normrt.attention(q, k, v, bias=np.zeros((1, 1, 1, 5, 6), np.float32))
    with pytest.raises(TypeError, match="bias must be a float array"):
        normrt.attention(q, k, v, bias=np.ones((5, 6), bool))
    with pytest.raises(ValueError, match=r"out must have shape \(1, 4, 5, 3\)"):
        normrt.attention(q, k, v, out=np.empty((1, 4, 5, 8), np.float32))
    with pytest.raises(ValueError, match="out must not overlap v"):
        vv = np.zeros((1, 4, 5, 3), np.float32)
        normrt.attention(q, k[:, :, :5], vv[:, :2], out=vv)


# -- layouts: strided q/k/v views and transposed out (bitwise equal to the contiguous path)

def bshd(x):
    """x (B, H, S, D) stored as (B, S, H, D) and seen back as (B, H, S, D): a strided view."""
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)


LAYOUT_SHAPES = [  # B, Hq, Hkv, Sq, Skv, D, Dv
    (1, 2, 2, 64, 64, 8, 8),            # UNet-like: two heads of 8
    (2, 3, 3, 65, 129, 16, 16),         # a row / key past a block
    (1, 4, 2, 70, 90, 7, 33),           # grouped-query heads, odd dims, Dv past two vectors
    (1, 1, 1, 1, 1, 1, 1),
    (1, 2, 1, 300, 5, 3, 17),
]


@pytest.mark.parametrize("shape", LAYOUT_SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_heads_interleaved_views_match_contiguous_bitwise(shape, causal):
    q, k, v = qkv(*shape)
    bias = rng.standard_normal(shape[3:5]).astype(np.float32)
    want = normrt.attention(q, k, v, bias=bias, is_causal=causal)
    np.testing.assert_allclose(want, ref(q, k, v, bias=bias, causal=causal), rtol=2e-5, atol=2e-6)
    B, Hq, Sq, Dv = shape[0], shape[1], shape[3], shape[6]
    qv, kv, vv = bshd(q), bshd(k), bshd(v)
    assert not any(t.flags.c_contiguous for t in (qv, kv, vv) if t.size > 1 and t.shape[1] > 1)
    got = normrt.attention(qv, kv, vv, bias=bias, is_causal=causal)
    assert np.array_equal(got, want)
    # out in (B, Sq, Hq, Dv) order, written through its transposed view
    y = np.full((B, Sq, Hq, Dv), np.nan, np.float32)
    res = normrt.attention(qv, kv, vv, bias=bias, is_causal=causal, out=y.transpose(0, 2, 1, 3))
    assert res.base is y
    assert np.array_equal(y, want.transpose(0, 2, 1, 3))
    # any mix of layouts: only the addresses change
    assert np.array_equal(normrt.attention(q, kv, v, bias=bias, is_causal=causal), want)
    assert np.array_equal(normrt.attention(qv, k, vv, bias=bias, is_causal=causal), want)


@pytest.mark.parametrize("shape", LAYOUT_SHAPES)
def test_keys_given_transposed_in_any_layout(shape):
    q, k, v = qkv(*shape)
    want = normrt.attention(q, k, v)
    kt_contiguous = np.ascontiguousarray(k.transpose(0, 1, 3, 2))       # (B, H, D, S): strided keys
    kt_of_bshd = np.ascontiguousarray(k.transpose(0, 2, 1, 3)).transpose(0, 2, 3, 1)
    for kt in (kt_contiguous, kt_of_bshd, k.transpose(0, 1, 3, 2)):
        assert np.array_equal(attention_kt(q, kt, v), want)
    # k itself as a view of a contiguous K^T
    assert np.array_equal(normrt.attention(q, kt_contiguous.transpose(0, 1, 3, 2), v), want)


def test_sliced_and_float64_views():
    q, k, v = qkv(2, 3, 3, 40, 50, 16, 8)
    big = rng.standard_normal((2, 40, 3, 40)).astype(np.float32)     # q as a slice of a wider array
    q = big[:, :, :, 5:21].transpose(0, 2, 1, 3)
    want = normrt.attention(np.ascontiguousarray(q), k, v)
    assert np.array_equal(normrt.attention(q, k, v), want)
    np.testing.assert_allclose(want, ref(q, k, v), rtol=2e-5, atol=2e-6)
    # a last axis that is not contiguous is copied (same result)
    v2 = np.asfortranarray(v)
    assert np.array_equal(normrt.attention(q, k, v2), want)
    q64, k64, v64 = (t.astype(np.float64) for t in (q, k, v))
    y = np.empty((2, 40, 3, 8))
    normrt.attention(bshd(q64), bshd(k64), bshd(v64), out=y.transpose(0, 2, 1, 3))
    np.testing.assert_allclose(y.transpose(0, 2, 1, 3), ref(q64, k64, v64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_strided_layouts_same_bits_for_any_thread_count(causal):
    q, k, v = qkv(2, 4, 2, 257, 300, 40, 24)
    outs = []
    for n in (1, 2, 3):
        y = np.empty((2, 257, 4, 24), np.float32)
        with normrt.threads(n):
            normrt.attention(bshd(q), bshd(k), bshd(v), is_causal=causal, out=y.transpose(0, 2, 1, 3))
        outs.append(y)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    assert np.array_equal(outs[0].transpose(0, 2, 1, 3), normrt.attention(q, k, v, is_causal=causal))


def test_bad_layouts():
    q, k, v = qkv(1, 4, 2, 5, 6, 8, 3)
    with pytest.raises(ValueError, match="q must have rank 4"):
        normrt.attention(q[0], k, v)
    with pytest.raises(ValueError, match="kt must have rank 4"):
        attention_kt(q, k[0], v)
    with pytest.raises(ValueError, match="out must be C-contiguous or a transposed view"):
        normrt.attention(q, k, v, out=np.empty((1, 4, 5, 6), np.float32)[..., ::2])
    with pytest.raises(ValueError, match="out must be C-contiguous or a transposed view"):
        # a transposed view whose last axis (Dv) is not the contiguous one
        normrt.attention(q, k, v, out=np.empty((1, 3, 5, 4), np.float32).transpose(0, 3, 2, 1))
    with pytest.raises(ValueError, match="out must be C-contiguous or a transposed view"):
        # overlapping elements
        normrt.attention(q, k, v, out=np.lib.stride_tricks.as_strided(
            np.empty(60, np.float32), (1, 4, 5, 3), (0, 12, 4, 4)))
    with pytest.raises(ValueError, match="out must be writeable"):
        y = np.empty((1, 5, 4, 3), np.float32)
        y.flags.writeable = False
        normrt.attention(q, k, v, out=y.transpose(0, 2, 1, 3))
    with pytest.raises(ValueError, match="out must not overlap q"):
        mem = np.zeros(160, np.float32)
        normrt.attention(mem.reshape(1, 4, 5, 8), k, v, out=mem[100:].reshape(1, 4, 5, 3))


def test_negative_and_zero_strides():
    q, k, v = qkv(2, 3, 3, 70, 50, 16, 8)
    want = normrt.attention(*(np.ascontiguousarray(t) for t in (q[:, ::-1, ::-1], k[:, :, ::-1], v[:, :, ::-1])))
    assert np.array_equal(normrt.attention(q[:, ::-1, ::-1], k[:, :, ::-1], v[:, :, ::-1]), want)
    np.testing.assert_allclose(want, ref(q[:, ::-1, ::-1], k[:, :, ::-1], v[:, :, ::-1]), rtol=2e-5, atol=2e-6)
    # one kv head broadcast to three (stride 0): read in place
    kb, vb = np.broadcast_to(k[:, :1], k.shape), np.broadcast_to(v[:, :1], v.shape)
    assert np.array_equal(normrt.attention(q, kb, vb), normrt.attention(q, k[:, :1], v[:, :1]))


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 2), hkv=st.integers(1, 3), rep=st.integers(1, 2), sq=st.integers(1, 200),
       skv=st.integers(1, 200), d=st.sampled_from([8, 16, 24, 32, 64]), causal=st.booleans(),
       bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_small_shapes_match_reference_and_threads(b, hkv, rep, sq, skv, d, causal, bias, seed):
    """The sequence lengths and head dims of small models (ViT's 65 tokens, Whisper's 32, GPT-2's 24):
    items of 1-4 row vectors by their row count; against float64, the same bits on 1, 2, 3 threads."""
    g = np.random.default_rng(seed)
    q = g.standard_normal((b, hkv * rep, sq, d)).astype(np.float32)
    k = g.standard_normal((b, hkv, skv, d)).astype(np.float32)
    v = g.standard_normal((b, hkv, skv, d)).astype(np.float32)
    bs = g.standard_normal((1, 1, sq, skv)).astype(np.float32) if bias else None
    want = ref(q, k, v, bias=bs, causal=causal)
    outs = []
    for n in (1, 2, 3):
        with normrt.threads(n):
            outs.append(normrt.attention(q, k, v, bias=bs, is_causal=causal))
    np.testing.assert_allclose(outs[0], want, rtol=2e-5, atol=2e-6)
    for y in outs[1:]:
        assert np.array_equal(y, outs[0], equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 2), hkv=st.integers(1, 3), rep=st.integers(1, 4), sq=st.integers(1, 4),
       skv=st.integers(1, 300), d=st.sampled_from([1, 5, 16, 40, 64, 80, 128]),
       dv=st.sampled_from([1, 16, 24, 64, 72]), causal=st.booleans(),
       bias=st.sampled_from([None, "row", "per_query", "masked"]), magnitude=st.sampled_from([1.0, 8.0]),
       seed=st.integers(0, 2 ** 16))
def test_decode_rows_match_reference_any_layout_and_threads(b, hkv, rep, sq, skv, d, dv, causal, bias,
                                                            magnitude, seed):
    """A decode step's few query rows (Sq <= 4: attention_kernel.h's keys-in-lanes items): against
    float64 with every bias form (one row for every query, one per query, -inf keys and fully
    masked rows) and causal; K given transposed or contiguous and any thread count give the
    same bits."""
    g = np.random.default_rng(seed)
    q = (g.standard_normal((b, hkv * rep, sq, d)) * magnitude).astype(np.float32)
    k = g.standard_normal((b, hkv, skv, d)).astype(np.float32)
    v = g.standard_normal((b, hkv, skv, dv)).astype(np.float32)
    bs = None
    if bias == "row":
        bs = g.standard_normal((1, 1, 1, skv)).astype(np.float32)
    elif bias == "per_query":
        bs = g.standard_normal((b, 1, sq, skv)).astype(np.float32)
    elif bias == "masked":
        bs = np.where(g.random((b, 1, sq, skv)) > 0.5, 0.0, -np.inf).astype(np.float32)
        bs[:, :, -1] = -np.inf                  # the last query sees nothing: zeros
    want = ref(q, k, v, bias=bs, causal=causal)
    y = normrt.attention(q, k, v, bias=bs, is_causal=causal)
    tol = 2e-5 * magnitude ** 2
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    kt = np.ascontiguousarray(k.transpose(0, 1, 3, 2))          # K^T in memory: K a strided view
    for n in (1, 2, 3):
        with normrt.threads(n):
            assert np.array_equal(normrt.attention(q, k, v, bias=bs, is_causal=causal), y, equal_nan=True)
            assert np.array_equal(attention_kt(q, kt, v, bias=bs, is_causal=causal), y, equal_nan=True)


def test_decode_rows_nan_stays_in_its_row():
    q, k, v = qkv(1, 2, 1, 3, 100, 64, 64)
    q[0, 1, 2, 7] = np.nan
    y = normrt.attention(q, k, v)
    assert np.isnan(y[0, 1, 2]).all() and np.isfinite(np.delete(y.reshape(6, 64), 5, axis=0)).all()
    rows = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    want = ref(q, k, v)
    for h, i in rows:
        np.testing.assert_allclose(y[0, h, i], want[0, h, i], rtol=2e-5, atol=2e-6)
