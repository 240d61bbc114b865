"""PartialMoments: any partitioning, merged in any grouping, equals one float64 pass."""
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normrt
from normrt.scaleout import PartialMoments


@st.composite
def partitioned_data(draw):
    n = draw(st.integers(2, 40))
    c = draw(st.integers(1, 5))
    hw = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    loc = draw(st.sampled_from([0.0, 3.0, 1e4]))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, hw, hw)) * rng.uniform(0.1, 5) + loc).astype(
        draw(st.sampled_from([np.float32, np.float64])))
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), max_size=6, unique=True)))
    order = draw(st.permutations(range(len(cuts) + 1)))
    return x, cuts, order, seed


@settings(max_examples=150, deadline=None)
@given(partitioned_data())
def test_merge_in_any_grouping_equals_one_float64_pass(case):
    x, cuts, order, seed = case
    parts = [PartialMoments.from_batch(p) for p in np.split(x, cuts)]
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    var = x64.var(axis=(0, 2, 3))
    # left fold in a random order
    acc = PartialMoments.empty(parts[0].shape)
    for i in order:
        acc = acc.merge(parts[i])
    # random binary grouping
    rng = np.random.default_rng(seed)
    pool = list(parts)
    while len(pool) > 1:
        i = int(rng.integers(len(pool) - 1))
        pool[i:i + 2] = [pool[i].merge(pool[i + 1])]
    # 1e-12 relative; where |mean| >> std no float64 method does better than the means'
    # own rounding, which reaches the variance through Chan's delta: ~ eps * |mean| / std
    eps = np.finfo(np.float64).eps
    var_rtol = np.maximum(1e-12, 8 * eps * np.abs(mean) / np.sqrt(np.maximum(var, 1e-300)))
    for m in (acc, pool[0], PartialMoments.merge_all(parts)):
        assert m.count == x.shape[0] * x.shape[2] * x.shape[3]
        # a mean near 0 has no relative digits: 1e-12 of (|mean| + std)
        assert np.all(np.abs(m.mean - mean) <= 1e-12 * (np.abs(mean) + np.sqrt(var)))
        for got, want in ((m.var(), var), (m.var(ddof=1), x64.var(axis=(0, 2, 3), ddof=1))):
            assert np.all(np.abs(got - want) <= var_rtol * want + 1e-300), (got, want)


def test_merge_all_is_deterministic_for_a_partitioning():
    x = np.random.default_rng(0).standard_normal((50, 3, 5)).astype(np.float32) + 7
    parts = [PartialMoments.from_batch(p) for p in np.array_split(x, 7)]
    a = PartialMoments.merge_all(parts)
    b = PartialMoments.merge_all([pickle.loads(pickle.dumps(p)) for p in parts])
    assert a == b


def test_from_batch_matches_batch_norm_stats():
    x = np.random.default_rng(1).standard_normal((6, 4, 3, 2))
    m = PartialMoments.from_batch(x)
    mean, var = normrt.batch_norm_stats(x, dtype=np.float64)
    np.testing.assert_array_equal(m.mean, mean)
    np.testing.assert_allclose(m.var(), var, rtol=1e-15)


def test_from_groups_against_numpy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 6, 4, 4)) * 2 + 1
    halves = [PartialMoments.from_groups(p, 3) for p in (x[:2], x[2:])]
    m = halves[0].merge(halves[1])
    g = x.reshape(5, 3, 2, 16)
    np.testing.assert_allclose(m.mean, g.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(m.var(), g.var(axis=(0, 2, 3)), rtol=1e-12)
    with pytest.raises(ValueError, match="num_groups=4 must divide"):
        PartialMoments.from_groups(x, 4)


def test_empty_partition_is_the_identity():
    x = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float64)
    m = PartialMoments.from_batch(x)
    e = PartialMoments.from_batch(x[:0])
    assert e.count == 0 and m.merge(e) == m and e.merge(m) == m
    assert np.isnan(e.var(ddof=1)).all()


def test_bad_arguments():
    m = PartialMoments.from_batch(np.ones((2, 3)))
    with pytest.raises(ValueError, match="cannot merge moments of shape"):
        m.merge(PartialMoments.from_batch(np.ones((2, 4))))
    with pytest.raises(TypeError, match="other must be a PartialMoments"):
        m.merge((1, 2, 3))
    with pytest.raises(ValueError, match="count must be an int >= 0"):
        PartialMoments(-1, [0.0], [0.0])
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        PartialMoments.from_batch(np.ones((2, 3), np.int32))
