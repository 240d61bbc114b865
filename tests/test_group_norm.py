"""GroupNorm, InstanceNorm (plain and conditional) and AdaIN against float64 numpy references."""
import math

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import normrt
from dtype_checks import ACTS as ACTIVATIONS, ALL_FLOAT_DTYPES, assert_concurrent_calls_match, ref_act, same_bits

_erf = np.vectorize(math.erf, otypes=[np.float64])
# normrt runs calls on fewer elements than this on one thread (moments.pxd PARALLEL_MIN);
# tests of the chunk-parallel path use at least this many
PARALLEL_MIN = 32768


# ---------------------------------------------------------------- references (float64, independent)

def _affine_shape(p, x):
    """(C,) -> (1, C, 1, ...); (N, C) -> (N, C, 1, ...)."""
    p = np.asarray(p, np.float64)
    lead = (1,) + p.shape if p.ndim == 1 else p.shape
    return p.reshape(lead + (1,) * (x.ndim - 2))


@np.errstate(invalid="ignore", over="ignore")
def ref_group_norm(x, G, scale=None, bias=None, eps=1e-5, act=None):
    x = np.asarray(x, np.float64)
    if x.size == 0:
        return x.copy()
    N, C = x.shape[:2]
    xg = x.reshape(N, G, (C // G) * math.prod(x.shape[2:]))
    mean = xg.mean(axis=-1, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=-1, keepdims=True)
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    if scale is not None:
        y = y * _affine_shape(scale, x)
    if bias is not None:
        y = y + _affine_shape(bias, x)
    return ref_act(y, act)


def ref_instance_norm(x, scale=None, bias=None, eps=1e-5, act=None):
    return ref_group_norm(x, x.shape[1], scale, bias, eps, act)


@np.errstate(invalid="ignore", over="ignore")
def ref_adain(content, style, eps=1e-5):
    c = np.asarray(content, np.float64)
    s = np.asarray(style, np.float64)
    if c.size == 0:
        return c.copy()
    N, C = c.shape[:2]
    cf = c.reshape(N, C, math.prod(c.shape[2:]))
    sf = s.reshape(N, C, math.prod(s.shape[2:]))
    cm, sm = cf.mean(-1, keepdims=True), sf.mean(-1, keepdims=True)
    cstd = np.sqrt(((cf - cm) ** 2).mean(-1, keepdims=True) + eps)
    sstd = np.sqrt(((sf - sm) ** 2).mean(-1, keepdims=True) + eps)
    return (sstd * (cf - cm) / cstd + sm).reshape(c.shape)


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- values

GN_CASES = [
    ((2, 6), 3),            # rank 2: no spatial axes
    ((2, 6), 6),
    ((1, 4, 7), 2),
    ((3, 8, 5, 5), 4),
    ((2, 6, 37, 29), 2),    # groups of 3219: segment ends do not align with chunk ends
    ((2, 32, 3, 4, 2), 8),
    ((1, 3, 4100), 1),      # one group, three chunks
    ((4, 4, 1, 1), 4),
]


@pytest.mark.parametrize("shape,G", GN_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_group_norm_values(shape, G, dtype, act):
    rng = np.random.default_rng(hash((shape, G)) % 2**32)
    C = shape[1]
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    scale = rng.standard_normal(C).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype)
    y = normrt.group_norm(x, G, scale, bias, activation=act)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, ref_group_norm(x, G, scale, bias, act=act), **tol(dtype))


@pytest.mark.parametrize("with_scale,with_bias", [(False, False), (True, False), (False, True)])
def test_group_norm_optional_affine(with_scale, with_bias):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 9))
    scale = rng.standard_normal(6) if with_scale else None
    bias = rng.standard_normal(6) if with_bias else None
    y = normrt.group_norm(x, 3, scale, bias, eps=1e-3)
    np.testing.assert_allclose(y, ref_group_norm(x, 3, scale, bias, eps=1e-3), rtol=1e-12, atol=1e-12)


def test_group_norm_accepts_lists_and_numpy_ints():
    x = np.arange(24, dtype=np.float64).reshape(2, 4, 3) ** 1.5
    y = normrt.group_norm(x, np.int64(2), [1.0, 2.0, 3.0, 4.0], [0, 1, 0, 1])
    np.testing.assert_allclose(y, ref_group_norm(x, 2, [1, 2, 3, 4], [0, 1, 0, 1]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 5), (3, 4, 6, 7), (1, 2, 70, 70), (2, 3, 2, 3, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("per_sample", [False, True])
def test_instance_norm_values(shape, dtype, act, per_sample):
    rng = np.random.default_rng(7)
    N, C = shape[:2]
    x = (rng.standard_normal(shape) - 1.5).astype(dtype)
    pshape = (N, C) if per_sample else (C,)
    scale = rng.standard_normal(pshape).astype(dtype)
    bias = rng.standard_normal(pshape).astype(dtype)
    y = normrt.instance_norm(x, scale, bias, activation=act)
    np.testing.assert_allclose(y, ref_instance_norm(x, scale, bias, act=act), **tol(dtype))


def test_instance_norm_mixed_affine_shapes():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 5, 6))
    scale = rng.standard_normal(4)            # per channel
    bias = rng.standard_normal((3, 4))        # per sample
    y = normrt.instance_norm(x, scale, bias)
    np.testing.assert_allclose(y, ref_instance_norm(x, scale, bias), rtol=1e-12, atol=1e-12)
    y = normrt.instance_norm(x, bias, None)   # per-sample scale only
    np.testing.assert_allclose(y, ref_instance_norm(x, bias), rtol=1e-12, atol=1e-12)


def test_instance_norm_is_group_norm_with_one_channel_per_group():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 5, 11, 13)).astype(np.float32)
    scale, bias = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    assert same_bits(normrt.instance_norm(x, scale, bias, activation="silu"),
                     normrt.group_norm(x, 5, scale, bias, activation="silu"))


def test_conditional_instance_norm_picks_each_samples_affine():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 4, 8, 8))
    table_scale, table_bias = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    styles = np.array([4, 0, 2])
    y = normrt.instance_norm(x, table_scale[styles], table_bias[styles])
    for n, s in enumerate(styles):
        one = normrt.instance_norm(x[n:n + 1], table_scale[s], table_bias[s])
        np.testing.assert_allclose(y[n:n + 1], one, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cshape,sshape", [
    ((2, 3, 8, 8), (2, 3, 8, 8)),
    ((2, 3, 8, 8), (2, 3, 5, 7)),      # different spatial size
    ((1, 2, 150, 120), (1, 2, 33, 71)),  # several chunks each, chunk-parallel path
    ((2, 4, 9), (2, 4, 3, 3, 2)),       # different spatial rank
])
def test_adain_values(dtype, cshape, sshape):
    rng = np.random.default_rng(11)
    content = (rng.standard_normal(cshape) * 2 + 1).astype(dtype)
    style = (rng.standard_normal(sshape) * 0.5 - 3).astype(dtype)
    y = normrt.adain(content, style)
    assert y.dtype == dtype and y.shape == content.shape
    np.testing.assert_allclose(y, ref_adain(content, style), **tol(dtype))
    y = normrt.adain(content, style, eps=0.25)
    np.testing.assert_allclose(y, ref_adain(content, style, eps=0.25), **tol(dtype))


def test_adain_casts_style_to_content_dtype():
    rng = np.random.default_rng(12)
    content = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    style = rng.standard_normal((2, 3, 4, 4))
    y = normrt.adain(content, style)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref_adain(content, style.astype(np.float32)), rtol=1e-5, atol=1e-5)


def test_adain_of_itself_is_nearly_identity():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 10, 10))
    np.testing.assert_allclose(normrt.adain(x, x), x, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- numerics

@pytest.mark.parametrize("offset", [1e4, 1e6, 1e7])
@pytest.mark.parametrize("shape,G", [((2, 8, 16, 16), 4), ((1, 2, 128, 128), 1)])
def test_float32_large_offset(offset, shape, G):
    rng = np.random.default_rng(int(offset) % 1000)
    x = (offset + rng.standard_normal(shape)).astype(np.float32)
    C = shape[1]
    scale = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
    bias = rng.standard_normal(C).astype(np.float32)
    for threads in (1, 8):
        with normrt.threads(threads):
            y = normrt.group_norm(x, G, scale, bias)
            yi = normrt.instance_norm(x, scale, bias)
            ya = normrt.adain(x, (x - np.float32(offset)) * np.float32(2))
        assert np.abs(y - ref_group_norm(x, G, scale, bias)).max() <= 1e-5
        assert np.abs(yi - ref_instance_norm(x, scale, bias)).max() <= 1e-5
        assert np.abs(ya - ref_adain(x, (x - np.float32(offset)) * np.float32(2))).max() <= 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,G", [((2, 6, 5, 5), 3), ((1, 2, 150, 150), 1), ((3, 4), 2)])
@pytest.mark.parametrize("threads", [1, 8])
def test_constant_groups_give_exactly_bias(dtype, shape, G, threads):
    rng = np.random.default_rng(14)
    N, C = shape[:2]
    values = rng.standard_normal(N * G) * 1e3 + 1e6
    per_group = math.prod(shape) // (N * G)
    x = np.repeat(values, per_group).reshape(shape).astype(dtype)
    scale = rng.standard_normal(C).astype(dtype)
    bias = rng.standard_normal(C).astype(dtype)
    with normrt.threads(threads):
        y = normrt.group_norm(x, G, scale, bias)
    expect = np.broadcast_to(bias.reshape((1, C) + (1,) * (len(shape) - 2)), shape)
    assert not np.isnan(y).any()
    assert same_bits(y, np.ascontiguousarray(expect))


@pytest.mark.parametrize("threads", [1, 8])
def test_constant_instances_give_exactly_bias(threads):
    rng = np.random.default_rng(15)
    x = np.repeat(rng.standard_normal(6).astype(np.float32), 6000).reshape(2, 3, 50, 120)
    bias = rng.standard_normal((2, 3)).astype(np.float32)
    scale = rng.standard_normal(3).astype(np.float32)
    with normrt.threads(threads):
        y = normrt.instance_norm(x, scale, bias, activation=None)
        ya = normrt.adain(x, x * np.float32(2) + np.float32(1))
    assert same_bits(y, np.ascontiguousarray(np.broadcast_to(bias[:, :, None, None], x.shape)))
    # constant content: exactly the style's mean, which here is 2 * value + 1
    sm = (x * np.float32(2) + np.float32(1)).astype(np.float64).reshape(2, 3, -1).mean(-1)
    assert same_bits(ya, np.ascontiguousarray(np.broadcast_to(sm.astype(np.float32)[:, :, None, None], x.shape)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape", [(2, 4, 6, 6), (1, 2, 130, 130)])
@pytest.mark.parametrize("threads", [1, 8])
@pytest.mark.parametrize("act", [None, "relu"])
def test_non_finite_poisons_only_its_group(bad, shape, threads, act):
    rng = np.random.default_rng(16)
    x = rng.standard_normal(shape)
    G = 2
    x[0, 0, 3, 4] = bad              # channel 0 is in group 0 of sample 0
    scale, bias = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    with normrt.threads(threads):
        y = normrt.group_norm(x, G, scale, bias, activation=act)
        yi = normrt.instance_norm(x, scale, bias, activation=act)
    yg = y.reshape(shape[0], G, -1)
    assert np.isnan(yg[0, 0]).all()
    ref = ref_group_norm(x, G, scale, bias, act=act).reshape(shape[0], G, -1)
    np.testing.assert_allclose(yg[0, 1:], ref[0, 1:], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(yg[1:], ref[1:], rtol=1e-12, atol=1e-12)
    assert np.isnan(yi[0, 0]).all()
    mask = np.ones(shape[:2], bool)
    mask[0, 0] = False
    np.testing.assert_allclose(yi[mask], ref_instance_norm(x, scale, bias, act=act)[mask],
                               rtol=1e-12, atol=1e-12)


def test_non_finite_style_poisons_only_its_instance():
    rng = np.random.default_rng(17)
    content = rng.standard_normal((1, 3, 110, 110))
    style = rng.standard_normal((1, 3, 50, 50))
    style[0, 2, 7, 7] = np.nan
    for threads in (1, 8):
        with normrt.threads(threads):
            y = normrt.adain(content, style)
        assert np.isnan(y[0, 2]).all()
        np.testing.assert_allclose(y[0, :2], ref_adain(content, style)[0, :2], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- determinism and threads

DET_CASES = [
    ("gn", (1, 4, 128, 128), 1),     # one group of 65536: chunk-parallel path
    ("gn", (1, 6, 97, 61), 2),       # two groups, chunk ends cutting segments
    ("gn", (2, 3, 2000, 3), 3),      # six groups of 6000
    ("gn", (8, 32, 16, 16), 8),      # many groups: per-row path
    ("in", (1, 3, 120, 120), None),
    ("in", (4, 16, 24, 24), None),
]


@pytest.mark.parametrize("kind,shape,G", DET_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bitwise_identical_across_thread_counts(kind, shape, G, dtype):
    assert math.prod(shape) >= PARALLEL_MIN
    rng = np.random.default_rng(18)
    x = (rng.standard_normal(shape) * 5 + 100).astype(dtype)
    C = shape[1]
    scale, bias = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    results = []
    for threads in (1, 2, 8):
        with normrt.threads(threads):
            if kind == "gn":
                results.append(normrt.group_norm(x, G, scale, bias, activation="gelu"))
            else:
                results.append(normrt.instance_norm(x, scale, bias))
    assert same_bits(results[0], results[1]) and same_bits(results[0], results[2])


@pytest.mark.parametrize("cshape,sshape", [((1, 2, 128, 128), (1, 2, 64, 80)), ((4, 8, 30, 30), (4, 8, 3, 3))])
def test_adain_bitwise_identical_across_thread_counts(cshape, sshape):
    rng = np.random.default_rng(19)
    content = rng.standard_normal(cshape).astype(np.float32) + np.float32(50)
    style = rng.standard_normal(sshape).astype(np.float32)
    results = []
    for threads in (1, 2, 8):
        with normrt.threads(threads):
            results.append(normrt.adain(content, style))
    assert same_bits(results[0], results[1]) and same_bits(results[0], results[2])


def test_concurrent_python_threads_match_serial():
    rng = np.random.default_rng(20)
    jobs = []
    for i in range(12):
        shape = [(1, 4, 96, 96), (4, 8, 24, 24), (2, 6, 50, 50)][i % 3]
        dt = np.float32 if i % 2 else np.float64
        x = rng.standard_normal(shape).astype(dt)
        s = rng.standard_normal(shape[1]).astype(dt)
        jobs.append((i % 4, x, s, (i % 3) + 1))

    def run(job):
        kind, x, s, threads = job
        with normrt.threads(threads):
            if kind == 0:
                return normrt.group_norm(x, 2, s, s, activation="silu")
            if kind == 1:
                return normrt.instance_norm(x, s, None)
            if kind == 2:
                return normrt.adain(x, x[:, :, ::2] * 3)
            return normrt.group_norm(x, x.shape[1], None, s)

    assert_concurrent_calls_match(run, jobs, repeats=2)


# ---------------------------------------------------------------- layouts, out=, empties

def test_fortran_and_non_contiguous_inputs():
    rng = np.random.default_rng(21)
    base = rng.standard_normal((3, 8, 10, 12))
    scale, bias = rng.standard_normal(8), rng.standard_normal(8)
    views = [
        np.asfortranarray(base),
        base[:, :, ::2, 1::3],
        base.transpose(0, 1, 3, 2),
        np.broadcast_to(base[:1], (3, 8, 10, 12)),
        base[::-1, ::-1],
    ]
    for v in views:
        before = v.copy()
        np.testing.assert_allclose(normrt.group_norm(v, 4, scale, bias), ref_group_norm(v, 4, scale, bias),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(normrt.instance_norm(v, scale, bias), ref_instance_norm(v, scale, bias),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(normrt.adain(v, v[:, :, ::-1, :5]), ref_adain(v, v[:, :, ::-1, :5]),
                                   rtol=1e-12, atol=1e-12)
        assert np.array_equal(v, before)
    # non-contiguous parameters too
    s2 = np.stack([scale, bias], axis=1)
    np.testing.assert_allclose(normrt.group_norm(base, 2, s2[:, 0], s2[:, 1]),
                               ref_group_norm(base, 2, scale, bias), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_buffer_and_in_place(dtype):
    rng = np.random.default_rng(22)
    x = rng.standard_normal((2, 6, 50, 60)).astype(dtype)
    scale, bias = rng.standard_normal(6).astype(dtype), rng.standard_normal(6).astype(dtype)
    style = rng.standard_normal((2, 6, 7, 7)).astype(dtype)
    calls = [
        lambda a, **kw: normrt.group_norm(a, 3, scale, bias, activation="relu", **kw),
        lambda a, **kw: normrt.instance_norm(a, scale, bias, **kw),
        lambda a, **kw: normrt.adain(a, style, **kw),
    ]
    for f in calls:
        for threads in (1, 8):
            with normrt.threads(threads):
                expect = f(x)
                buf = np.full_like(x, np.nan)
                assert f(x, out=buf) is buf
                assert same_bits(buf, expect)
                xc = x.copy()
                assert f(xc, out=xc) is xc
                assert same_bits(xc, expect)


def test_adain_in_place_with_content_as_style():
    rng = np.random.default_rng(23)
    x = rng.standard_normal((1, 2, 130, 130)) * 3 + 1
    expect = ref_adain(x, x)
    for threads in (1, 8):
        xc = x.copy()
        with normrt.threads(threads):
            normrt.adain(xc, xc, out=xc)
        np.testing.assert_allclose(xc, expect, rtol=1e-12, atol=1e-12)


def test_adain_out_overlapping_style():
    rng = np.random.default_rng(24)
    content = rng.standard_normal((2, 3, 4, 4))
    buf = rng.standard_normal((2, 3, 4, 4))
    style = buf[:, :, :2]             # out will overwrite the style it reads
    expect = ref_adain(content, style.copy())
    normrt.adain(content, style, out=buf)
    np.testing.assert_allclose(buf, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 0, 3), (2, 4, 0), (2, 4, 3, 0), (0, 4)])
def test_empty_inputs(shape):
    x = np.ones(shape, np.float32)
    y = normrt.group_norm(x, 2 if shape[1] else 1, activation="relu")
    assert y.shape == shape and y.dtype == np.float32
    if len(shape) >= 3:
        C = shape[1]
        assert normrt.instance_norm(x, np.ones(C, np.float32), np.ones((shape[0], C), np.float32)).shape == shape
        assert normrt.adain(x, x).shape == shape
    buf = np.empty(shape, np.float32)
    assert normrt.group_norm(x, 1, out=buf) is buf


def test_adain_empty_style_gives_nan():
    content = np.ones((1, 2, 3, 3))
    style = np.ones((1, 2, 0, 3))
    assert np.isnan(normrt.adain(content, style)).all()


# ---------------------------------------------------------------- property tests

DTYPES = st.sampled_from([np.float32, np.float64])


@st.composite
def gn_problem(draw):
    G = draw(st.integers(1, 4))
    C = G * draw(st.integers(1, 4))
    N = draw(st.integers(0, 3))
    spatial = draw(st.lists(st.integers(0, 9), min_size=0, max_size=3))
    return (N, C, *spatial), G


@settings(max_examples=150, deadline=None)
@given(problem=gn_problem(), dtype=DTYPES, act=st.sampled_from(ACTIVATIONS),
       affine=st.tuples(st.booleans(), st.booleans()), seed=st.integers(0, 2**32 - 1),
       offset=st.sampled_from([0.0, 10.0, -1e3]), threads=st.sampled_from([1, 2, 8]))
@example(problem=((3, 3), 1), dtype=np.float64, act=None, affine=(False, False), seed=471234887,
         offset=-1000.0, threads=1)   # ill-conditioned: a group's std 0.04 at -1e3
def test_group_norm_property(problem, dtype, act, affine, seed, offset, threads):
    shape, G = problem
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) + offset).astype(dtype)
    C = shape[1]
    scale = rng.standard_normal(C).astype(dtype) if affine[0] else None
    bias = rng.standard_normal(C).astype(dtype) if affine[1] else None
    with normrt.threads(threads):
        y = normrt.group_norm(x, G, scale, bias, activation=act)
    assert y.shape == x.shape and y.dtype == dtype
    t = tol(dtype)
    if dtype == np.float64 and x.size:
        # any float64 algorithm rounds x - mean to an ulp of |x|: conditioning |x| / std
        # (a 3-element group at -1e3 with std 0.04 gives 2.5e-12)
        groups = x.reshape(shape[0], G, -1).astype(np.float64)
        std = np.sqrt(groups.var(axis=-1) + 1e-5).min() if groups.size else 1.0
        gain = 1.0 if scale is None else max(1.0, float(np.abs(scale).max()))
        t["atol"] = max(t["atol"], 8 * np.finfo(np.float64).eps * float(np.abs(x).max()) / std * gain)
    np.testing.assert_allclose(y, ref_group_norm(x, G, scale, bias, act=act), **t)


@settings(max_examples=150, deadline=None)
@given(N=st.integers(0, 3), C=st.integers(1, 5), spatial=st.lists(st.integers(0, 9), min_size=1, max_size=3),
       dtype=DTYPES, act=st.sampled_from(ACTIVATIONS), per_sample=st.tuples(st.booleans(), st.booleans()),
       seed=st.integers(0, 2**32 - 1), threads=st.sampled_from([1, 2, 8]))
def test_instance_norm_property(N, C, spatial, dtype, act, per_sample, seed, threads):
    shape = (N, C, *spatial)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 - 1).astype(dtype)
    scale = rng.standard_normal((N, C) if per_sample[0] else (C,)).astype(dtype)
    bias = rng.standard_normal((N, C) if per_sample[1] else (C,)).astype(dtype)
    with normrt.threads(threads):
        y = normrt.instance_norm(x, scale, bias, activation=act)
    np.testing.assert_allclose(y, ref_instance_norm(x, scale, bias, act=act), **tol(dtype))


@settings(max_examples=100, deadline=None)
@given(N=st.integers(0, 3), C=st.integers(1, 4), cspatial=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       sspatial=st.lists(st.integers(1, 9), min_size=1, max_size=3), dtype=DTYPES,
       eps=st.sampled_from([0.0, 1e-5, 0.5]), seed=st.integers(0, 2**32 - 1), threads=st.sampled_from([1, 2, 8]))
def test_adain_property(N, C, cspatial, sspatial, dtype, eps, seed, threads):
    rng = np.random.default_rng(seed)
    content = (rng.standard_normal((N, C, *cspatial)) + 3).astype(dtype)
    style = (rng.standard_normal((N, C, *sspatial)) * 2).astype(dtype)
    if eps == 0.0 and math.prod(cspatial) == 1:
        eps = 1e-5                                    # a single element has zero variance
    with normrt.threads(threads):
        y = normrt.adain(content, style, eps=eps)
    np.testing.assert_allclose(y, ref_adain(content, style, eps), **tol(dtype))


# ---------------------------------------------------------------- bad input

X = np.zeros((2, 6, 4, 4), np.float32)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex128, np.int16])
def test_non_float_dtype(dtype):
    x = X.astype(dtype)
    with pytest.raises(TypeError, match="^x must be a float32 or float64"):
        normrt.group_norm(x, 2)
    with pytest.raises(TypeError, match="^x must be a float32 or float64"):
        normrt.instance_norm(x)
    with pytest.raises(TypeError, match="^content must be a float32 or float64"):
        normrt.adain(x, X)
    with pytest.raises(TypeError, match="^style must be a float32 or float64"):
        normrt.adain(X, x)


@pytest.mark.parametrize("bad", [np.ones(5), np.ones((1, 6)), np.ones((6, 1)), np.ones(12), 1.0])
def test_group_norm_param_shape(bad):
    with pytest.raises(ValueError, match=r"^scale must have shape \(6,\)"):
        normrt.group_norm(X, 2, scale=bad)
    with pytest.raises(ValueError, match=r"^bias must have shape \(6,\)"):
        normrt.group_norm(X, 2, bias=bad)


def test_param_non_numeric():
    with pytest.raises(TypeError, match="^scale must be numeric"):
        normrt.group_norm(X, 2, scale=np.array(["a"] * 6))
    with pytest.raises(TypeError, match="^bias must be numeric"):
        normrt.instance_norm(X, bias=np.array(["a"] * 6))


@pytest.mark.parametrize("bad", [np.ones(5), np.ones((2, 5)), np.ones((3, 6)), np.ones((1, 6)), np.ones((2, 6, 1))])
def test_instance_norm_param_shape(bad):
    with pytest.raises(ValueError, match=r"^scale must have shape \(6,\) or \(2, 6\)"):
        normrt.instance_norm(X, scale=bad)
    with pytest.raises(ValueError, match=r"^bias must have shape \(6,\) or \(2, 6\)"):
        normrt.instance_norm(X, bias=bad)


@pytest.mark.parametrize("G", [0, -2, 4, 5, 12, 2.0, "2", True, None, 1.5])
def test_bad_num_groups(G):
    with pytest.raises(ValueError, match="^num_groups must"):
        normrt.group_norm(X, G)


def test_rank_too_small():
    with pytest.raises(ValueError, match=r"^x must have rank >= 2"):
        normrt.group_norm(np.zeros(6), 2)
    with pytest.raises(ValueError, match=r"^x must have rank >= 2"):
        normrt.group_norm(np.float64(1.0), 1)
    with pytest.raises(ValueError, match=r"^x must have rank >= 3"):
        normrt.instance_norm(np.zeros((2, 6)))
    with pytest.raises(ValueError, match=r"^content must have rank >= 3"):
        normrt.adain(np.zeros((2, 6)), X)
    with pytest.raises(ValueError, match=r"^style must have rank >= 3"):
        normrt.adain(X, np.zeros((2, 6)))


@pytest.mark.parametrize("sshape", [(1, 6, 4, 4), (2, 5, 4, 4), (6, 2, 4)])
def test_adain_style_mismatch(sshape):
    with pytest.raises(ValueError, match=r"^style must have N, C = \(2, 6\)"):
        normrt.adain(X, np.zeros(sshape, np.float32))


def _readonly():
    a = np.empty_like(X)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("out,msg", [
    (np.empty((2, 6, 4, 5), np.float32), "out must have shape"),
    (np.empty((2, 6, 4, 4), np.float64), "out must have dtype float32"),
    (np.empty((2, 6, 4, 8), np.float32)[..., ::2], "out must be C-contiguous"),
    (np.asfortranarray(np.empty((2, 6, 4, 4), np.float32)), "out must be C-contiguous"),
    (_readonly(), "out must be writeable"),
    ([[0.0]], "out must be a numpy array"),
])
def test_bad_out(out, msg):
    with pytest.raises(ValueError, match=f"^{msg}"):
        normrt.group_norm(X, 2, out=out)
    with pytest.raises(ValueError, match=f"^{msg}"):
        normrt.instance_norm(X, out=out)
    with pytest.raises(ValueError, match=f"^{msg}"):
        normrt.adain(X, X, out=out)


def test_out_partially_overlapping_input():
    buf = np.zeros((3, 6, 4, 4), np.float32)
    with pytest.raises(ValueError, match="^out partially overlaps"):
        normrt.group_norm(buf[:2], 2, out=buf[1:])


@pytest.mark.parametrize("act", ["tanh", "RELU", "", 1, "gelu-tanh"])
def test_unknown_activation(act):
    with pytest.raises(ValueError, match="^activation must be one of"):
        normrt.group_norm(X, 2, activation=act)
    with pytest.raises(ValueError, match="^activation must be one of"):
        normrt.instance_norm(X, activation=act)


@pytest.mark.parametrize("eps", [-1e-5, -1.0, float("nan")])
def test_negative_eps(eps):
    with pytest.raises(ValueError, match="^eps must be >= 0"):
        normrt.group_norm(X, 2, eps=eps)
    with pytest.raises(ValueError, match="^eps must be >= 0"):
        normrt.instance_norm(X, eps=eps)
    with pytest.raises(ValueError, match="^eps must be >= 0"):
        normrt.adain(X, X, eps=eps)


def test_non_real_eps():
    with pytest.raises(TypeError, match="^eps must be a real number"):
        normrt.group_norm(X, 2, eps="1e-5")


# ---------------------------------------------------------------- AdaIN with the unbiased variance

def ref_adain_unbiased(content, style, eps=1e-5):
    """The reference AdaIN code (calc_mean_std): torch's default .var(), divided by n - 1."""
    c = np.asarray(content, np.float64)
    s = np.asarray(style, np.float64)
    N, C = c.shape[:2]
    cf = c.reshape(N, C, -1)
    sf = s.reshape(N, C, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cstd = np.sqrt(cf.var(-1, ddof=1, keepdims=True) + eps)
        sstd = np.sqrt(sf.var(-1, ddof=1, keepdims=True) + eps)
        y = (cf - cf.mean(-1, keepdims=True)) / cstd * sstd + sf.mean(-1, keepdims=True)
    return y.reshape(c.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cshape,sshape", [((2, 8, 6, 6), (2, 8, 5, 5)), ((1, 3, 7), (1, 3, 2)),
                                           ((2, 2, 3, 4, 5), (2, 2, 9)),
                                           ((1, 2, 200, 200), (1, 2, 190, 190))])   # chunked path
def test_adain_unbiased_matches_reference(cshape, sshape, dtype):
    rng = np.random.default_rng(31)
    content = (rng.standard_normal(cshape) * 1.5 + 0.3).astype(dtype)
    style = (rng.standard_normal(sshape) * 2 - 1).astype(dtype)
    for threads in (1, 8):
        with normrt.threads(threads):
            y = normrt.adain(content, style, unbiased=True)
        np.testing.assert_allclose(y, ref_adain_unbiased(content, style), **tol(dtype))
    # not the population variance
    assert not np.allclose(normrt.adain(content, style), y, rtol=1e-7, atol=0)
    np.testing.assert_array_equal(normrt.adain(content, style, unbiased=False), normrt.adain(content, style))


def test_adain_unbiased_bitwise_identical_across_thread_counts():
    rng = np.random.default_rng(32)
    content = rng.standard_normal((2, 3, 150, 150)).astype(np.float32)
    style = rng.standard_normal((2, 3, 120, 170)).astype(np.float32)
    results = []
    for threads in (1, 2, 8):
        with normrt.threads(threads):
            results.append(normrt.adain(content, style, unbiased=True))
    assert results[0].tobytes() == results[1].tobytes() == results[2].tobytes()


def test_adain_unbiased_known_values():
    # content [1, 3]: mean 2, unbiased var 2; style [0, 4]: mean 2, unbiased var 8
    content = np.array([[[1.0, 3.0]]])
    style = np.array([[[0.0, 4.0]]])
    y = normrt.adain(content, style, eps=0.0, unbiased=True)
    np.testing.assert_allclose(y, [[[2 - 2.0, 2 + 2.0]]], rtol=1e-15)
    y = normrt.adain(content, style, eps=0.0)               # population: var 1 and 4, the same ratio
    np.testing.assert_allclose(y, [[[0.0, 4.0]]], rtol=1e-15)


def test_adain_unbiased_single_element_is_nan():
    """n == 1: torch's .var() is NaN (0 / 0); so is the result, for content or style alone."""
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    one = np.ones((2, 3, 1), np.float32)
    assert np.isnan(normrt.adain(x, one, unbiased=True)).all()
    assert np.isnan(normrt.adain(one, x, unbiased=True)).all()
    assert not np.isnan(normrt.adain(one, x)).any()


def test_adain_unbiased_constant_groups():
    """A constant content row gives the style mean exactly; a constant style row its mean."""
    content = np.full((1, 2, 5), 3.0, np.float32)
    style = np.arange(10, dtype=np.float32).reshape(1, 2, 5)
    y = normrt.adain(content, style, unbiased=True)
    np.testing.assert_array_equal(y, np.broadcast_to(style.mean(-1, keepdims=True), y.shape))


@pytest.mark.parametrize("bad", [1, 0, "yes", None, 1.0])
def test_adain_unbiased_must_be_bool(bad):
    x = np.ones((1, 2, 3), np.float32)
    with pytest.raises(TypeError, match="unbiased"):
        normrt.adain(x, x, unbiased=bad)


# ---------------------------------------------------------------- the unchecked fast path

@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(ALL_FLOAT_DTYPES), n=st.integers(1, 3), groups=st.integers(1, 4),
       per=st.integers(1, 3), spatial=st.lists(st.integers(1, 7), min_size=1, max_size=2),
       act=st.sampled_from([None, "relu", "silu"]), instance=st.booleans(), with_out=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_fast_path_gives_the_checked_paths_bits(dtype, n, groups, per, spatial, act, instance, with_out, seed):
    """Parameters already in the kernel's dtype take the fast path (group_norm's _fast); the same
    values as Python lists take the checked path, which converts them: the same bits, out= or not."""
    rng = np.random.default_rng(seed)
    C = groups * per
    x = (rng.standard_normal((n, C, *spatial)) * 2 + 1).astype(dtype)
    pdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    scale, bias = (rng.standard_normal(C).astype(dtype).astype(pdt) for _ in range(2))

    def call(s, b, **kw):
        if instance:
            return normrt.instance_norm(x, s, b, activation=act, **kw)
        return normrt.group_norm(x, groups, s, b, activation=act, **kw)

    out = np.empty_like(x) if with_out else None
    fast = call(scale, bias, out=out)
    assert fast is out or out is None
    checked = call(scale.tolist(), bias.tolist())
    assert same_bits(fast, checked)
