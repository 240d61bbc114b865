"""Shared checks for the dtype tests: the float dtypes, tolerances in units of a dtype's rounding, bitwise equality across thread counts."""
import math

import ml_dtypes
import numpy as np

import normrt

HALF_DTYPES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
ALL_FLOAT_DTYPES = FLOAT_DTYPES + HALF_DTYPES


_erf = np.vectorize(math.erf)


# every activation epilogue of the kernels, and None
ACTS = [None, "relu", "silu", "gelu", "sigmoid", "relu6", "hardsigmoid", "hardswish", "gelu_tanh", "elu"]


def ref_act(v, act):
    """The activation epilogue `act` (one of ACTS) in float64 numpy (NaN stays NaN)."""
    v = np.asarray(v, np.float64)
    if act == "relu":
        return np.where(v < 0, 0.0, v)
    if act == "silu":
        return v / (1 + np.exp(-v))
    if act == "gelu":
        return 0.5 * v * (1 + _erf(v / math.sqrt(2)))
    if act == "sigmoid":
        return 1 / (1 + np.exp(-v))
    if act == "relu6":
        return np.clip(v, 0.0, 6.0)
    if act == "hardsigmoid":
        return np.clip(v / 6 + 0.5, 0.0, 1.0)
    if act == "hardswish":
        return v * np.clip(v / 6 + 0.5, 0.0, 1.0)
    if act == "gelu_tanh":
        return 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
    if act == "elu":
        with np.errstate(over="ignore"):
            return np.where(v < 0, np.expm1(np.minimum(v, 0)), v)
    assert act is None, act
    return v


def dtype_name(dt):
    return np.dtype(dt).name


def dtype_eps(dt):
    """Distance from 1 to the next value of dt (2^-10 for float16, 2^-7 for bfloat16)."""
    return float(ml_dtypes.finfo(dt).eps)


def assert_close_in_dtype(y, ref, dtype, *, scale=None, ulps=1.0, f32_rel=2.0 ** -20):
    """y, of dtype, equals the float64 reference `ref` up to the rounding of dtype:
    |y - ref| <= ulps * eps(dtype) * |ref| (a reference beyond dtype's range: the infinity), plus the float32 arithmetic a kernel does
    before rounding (f32_rel times `scale`, the magnitude of the terms that were
    added, default max |ref|) and the smallest subnormal of dtype. NaN must match NaN.
    """
    assert np.asarray(y).dtype == np.dtype(dtype), (np.asarray(y).dtype, dtype)
    yd = np.asarray(y).astype(np.float64)
    rd = np.asarray(ref, np.float64)
    assert yd.shape == rd.shape, (yd.shape, rd.shape)
    nan = np.isnan(rd)
    assert np.array_equal(np.isnan(yd), nan), "NaN positions differ"
    if scale is None:
        finite = rd[np.isfinite(rd)]
        scale = float(np.abs(finite).max()) if finite.size else 0.0
    tiny = float(ml_dtypes.finfo(dtype).smallest_subnormal)
    tol = ulps * dtype_eps(dtype) * np.abs(rd) + f32_rel * scale + tiny
    with np.errstate(invalid="ignore"):
        err = np.abs(yd - rd)
    with np.errstate(over="ignore"):
        rounded = rd.astype(dtype).astype(np.float64)     # beyond dtype's range: +-inf
    inf = np.isinf(rounded)
    assert np.array_equal(yd[inf], rounded[inf]), "infinities differ"
    ok = nan | inf | (err <= tol)
    if not ok.all():
        i = np.flatnonzero(~ok.reshape(-1))[0]
        raise AssertionError(f"{(~ok).sum()} of {ok.size} elements off, e.g. y={yd.reshape(-1)[i]!r} "
                             f"ref={rd.reshape(-1)[i]!r} tol={np.broadcast_to(tol, rd.shape).reshape(-1)[i]!r}")


def same_bits(a, b):
    """Bitwise equality of two arrays (any dtype, NaN payloads included)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same_bits_for_threads(fn, counts=(1, 2, 3)):
    """fn() returns an array or a tuple of arrays: the same bits for every thread count."""
    results = []
    for n in counts:
        with normrt.threads(n):
            r = fn()
        results.append(r if isinstance(r, tuple) else (r,))
    for n, r in zip(counts[1:], results[1:]):
        for a, b in zip(results[0], r):
            assert same_bits(a, b), f"{counts[0]} vs {n} threads differ"


def assert_concurrent_calls_match(work, jobs, reference=None, repeats=3, workers=4):
    """work(job) called from `workers` Python threads at once, every job `repeats` times, returns
    the bits of `reference` (default: work(job) called alone, one job after the other): the kernels
    release the GIL and share no state between calls. work returns an array or a tuple of arrays."""
    import concurrent.futures

    as_tuple = lambda r: r if isinstance(r, tuple) else (r,)
    jobs = list(jobs)
    reference = [work(j) for j in jobs] if reference is None else reference
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        got = list(pool.map(work, jobs * repeats))
    for i, r in enumerate(got):
        want = as_tuple(reference[i % len(jobs)])
        assert len(as_tuple(r)) == len(want)
        for a, b in zip(as_tuple(r), want):
            assert same_bits(a, b), f"job {i % len(jobs)}: a concurrent call differs from the call alone"
