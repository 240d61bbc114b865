"""PartialMoments: per-channel (or per-group) count, mean and M2 in float64, mergeable.

One worker computes the moments of its partition; partitions merge with Chan's
parallel formula (SyncBatchNorm's idea, without its E[x²] − E[x]² cancellation):

    n = na + nb,  δ = mean_b − mean_a
    mean = mean_a + δ · nb / n
    M2   = M2_a + M2_b + δ² · na · nb / n

The object is a plain value (three numpy arrays), picklable, and independent of
any scheduler: Dask, Ray or a for loop merge it the same way. Merging is
deterministic for a fixed order of partitions; `merge_all` uses a fixed
balanced tree, so the result depends only on the partitioning.
"""
import math

import numpy as np

from .. import _checks as chk
from ..api.moments import channel_moments, reduction_plan


class PartialMoments:
    """count, mean and M2 (sum of squared deviations) of K channels, all float64.

    `count` is one number for all channels (every channel sees the same
    elements); `mean` and `m2` have shape `shape` (the kept axes of the data).
    """

    __slots__ = ("count", "mean", "m2")

    def __init__(self, count, mean, m2):
        if isinstance(count, (bool, np.bool_)) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        count = int(count)
        mean = np.array(mean, dtype=np.float64)
        m2 = np.array(m2, dtype=np.float64)
        if mean.shape != m2.shape:
            raise ValueError(f"mean and m2 must have the same shape, got {mean.shape} and {m2.shape}")
        self.count, self.mean, self.m2 = count, mean, m2

    # ---- construction -------------------------------------------------------

    @classmethod
    def empty(cls, shape):
        """No data yet: the identity of `merge`."""
        return cls(0, np.zeros(shape), np.zeros(shape))

    @classmethod
    def from_array(cls, x, axes):
        """Moments of x over `axes` (the rest are the channels), in float64.

        Uses normrt's two-pass chunk moments (the kernels behind `normrt.moments`)
        on a float64 copy of float32 data: the kernels' float32 path sums
        deviations in float32 lanes within a block (fast, accurate to float32),
        while merged partitions must agree with one float64 pass to 1e-12.
        """
        x = chk.tensor(x, "x")
        if x.dtype != np.float64:
            x = x.astype(np.float64)
        axes = chk.axes_tuple(axes, x.ndim)
        shape = tuple(n for i, n in enumerate(x.shape) if i not in axes)
        count = math.prod(x.shape[i] for i in axes)
        if count == 0 or x.size == 0:
            return cls.empty(shape)
        R1, K, R2, perm = reduction_plan(x.shape, axes)
        if perm is not None:
            x = np.ascontiguousarray(x.transpose(perm))
        mean, var = channel_moments(x.reshape(R1, K, R2))
        return cls(count, mean.reshape(shape), (var * count).reshape(shape))

    @classmethod
    def from_batch(cls, x):
        """Per-channel moments of a BatchNorm input x (N, C, *spatial): over N and the
        spatial axes, as `normrt.batch_norm_stats` computes them."""
        x = chk.tensor(x, "x", min_rank=2)
        return cls.from_array(x, (0,) + tuple(range(2, x.ndim)))

    @classmethod
    def from_groups(cls, x, num_groups):
        """Per-group moments of x (N, C, *spatial) with C/num_groups channels per group:
        over N, the group's channels and the spatial axes (GroupNorm's groups, pooled over N)."""
        x = chk.tensor(x, "x", min_rank=2)
        N, C = x.shape[:2]
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
        if C % num_groups:
            raise ValueError(f"num_groups={num_groups} must divide the channel count {C}")
        g = x.reshape((N, num_groups, -1))
        return cls.from_array(g, (0, 2))

    # ---- merging ------------------------------------------------------------

    def merge(self, other):
        """A new PartialMoments of both partitions' data (Chan's parallel formula)."""
        if not isinstance(other, PartialMoments):
            raise TypeError(f"other must be a PartialMoments, got {type(other).__name__}")
        if other.mean.shape != self.mean.shape:
            raise ValueError(f"cannot merge moments of shape {other.mean.shape} into {self.mean.shape}")
        if other.count == 0:
            return PartialMoments(self.count, self.mean, self.m2)
        if self.count == 0:
            return PartialMoments(other.count, other.mean, other.m2)
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / n)
        return PartialMoments(n, mean, m2)

    @staticmethod
    def merge_all(parts):
        """Merge a sequence in a fixed balanced tree (pairs (0,1), (2,3), ... then up):
        deterministic for a given partitioning, and rounding grows like log(partitions)."""
        parts = list(parts)
        if not parts:
            raise ValueError("parts must hold at least one PartialMoments")
        while len(parts) > 1:
            nxt = [parts[i].merge(parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
            if len(parts) % 2:
                nxt.append(parts[-1])
            parts = nxt
        return parts[0]

    # ---- results ------------------------------------------------------------

    def var(self, ddof=0):
        """Variance M2 / (count − ddof): ddof=0 population (what BN normalizes with in
        training mode), ddof=1 unbiased (what torch stores as running_var). NaN without enough data."""
        denom = self.count - ddof
        if denom <= 0:
            return np.full(self.mean.shape, np.nan)
        return np.maximum(self.m2, 0.0) / denom

    @property
    def shape(self):
        return self.mean.shape

    def __reduce__(self):
        return (PartialMoments, (self.count, self.mean, self.m2))

    def __eq__(self, other):
        if not isinstance(other, PartialMoments):
            return NotImplemented
        return (self.count == other.count and np.array_equal(self.mean, other.mean)
                and np.array_equal(self.m2, other.m2))

    __hash__ = None

    def __repr__(self):
        return f"PartialMoments(count={self.count}, shape={self.mean.shape})"
