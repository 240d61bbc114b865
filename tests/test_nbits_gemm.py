"""The 4-bit product (pyx/nbits_gemm): float32 rows times MatMulNBits' 4-bit codes, against a
float64 reference written here from the spec (onnxruntime's docs/ContribOperators.md):
w[k, n] = (code[n, k] - zero[n, k // block]) * scale[n, k // block], y = a @ w + bias."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import normrt
from normrt import _isa
from normrt._kernels import nbits_gemm as nb

TESTS = os.path.dirname(os.path.abspath(__file__))


class Problem:
    """Random codes (MatMulNBits' B: row n's codes in K order, two a byte, low nibble first, the
    last block padded with random codes no one may read), scales, zero points, bias and A."""

    def __init__(self, M, K, N, block, zp="none", bias=False, seed=0):
        rng = np.random.default_rng(seed)
        self.M, self.K, self.N, self.block = M, K, N, block
        kb = -(-K // block)
        codes = rng.integers(0, 16, (N, kb * block))
        self.B = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)       # [N, kb * block / 2]
        self.scales = (rng.random((N, kb)) * 0.1 + 0.005).astype(np.float32)
        if zp == "none":
            self.zero, zero = None, np.full((N, kb), 8.0)
        elif zp == "codes":         # packed uint8 zero points, as the pass unpacks them
            self.zero = rng.integers(0, 16, (N, kb)).astype(np.float32)
            zero = self.zero.astype(np.float64)
        else:                       # float zero points (GPTQ exports): off the code grid
            self.zero = (rng.random((N, kb)) * 15).astype(np.float32)
            zero = self.zero.astype(np.float64)
        self.bias = rng.standard_normal(N).astype(np.float32) if bias else None
        self.A = rng.standard_normal((M, K)).astype(np.float32)
        g = np.arange(K) // block
        scale = self.scales.astype(np.float64)[:, g]
        self.W = ((codes[:, :K] - zero[:, g]) * scale).T     # [K, N]
        # what the kernel's rounding is relative to: it sums a * code and a * zero apart (the zero
        # point taken out of the block's sum), so |code| + |zero|, not |code - zero|
        self.W_terms = ((codes[:, :K] + np.abs(zero[:, g])) * scale).T

    def expected(self, A=None):
        A = self.A if A is None else A
        return A.astype(np.float64) @ self.W + (0.0 if self.bias is None else self.bias.astype(np.float64))

    def tolerance(self):
        """float32 products summed over K: a few ulps of sqrt(K) * sum |a| (|code| + |zero|) scale
        (+ |bias|). (|a w| alone is not a bound: a block whose codes all equal its zero point has
        w = 0, and the kernel's a * code - a * zero leaves the rounding of a * code.)"""
        mag = np.abs(self.A.astype(np.float64)) @ self.W_terms
        if self.bias is not None:
            mag += np.abs(self.bias)
        return 2e-6 * np.sqrt(self.K) * mag + 1e-30

    def run(self, n_threads, A=None):
        kb = -(-self.K // self.block)
        codes = nb.pack_codes(self.B, self.K)
        scale = nb.pack_blocks(self.scales, self.N, kb)
        zero = None if self.zero is None else nb.pack_blocks(self.zero, self.N, kb)
        A = self.A if A is None else A
        y = np.full((A.shape[0], self.N), np.nan, np.float32)
        nb.matmul_nbits(A, codes, scale, zero, 8.0, self.block, self.bias, y, n_threads)
        return y


shapes = dict(
    M=st.integers(1, 70), K=st.one_of(st.integers(1, 300), st.sampled_from([256, 512, 1000])),
    N=st.one_of(st.integers(1, 80), st.sampled_from([16, 32, 33, 64, 95])),
    block=st.sampled_from([16, 32, 64, 128, 256]), zp=st.sampled_from(["none", "codes", "float"]),
    bias=st.booleans(), seed=st.integers(0, 2**16))


@settings(max_examples=200, deadline=None)
@given(**shapes)
def test_matches_the_float64_reference_for_any_thread_count(M, K, N, block, zp, bias, seed):
    p = Problem(M, K, N, block, zp, bias, seed)
    ys = [p.run(n) for n in (1, 2, 3)]
    err = np.abs(ys[0].astype(np.float64) - p.expected())
    tol = p.tolerance()
    assert (err <= tol).all(), f"max error over tolerance by {np.max(err / tol):.3g}x"
    for y in ys[1:]:
        assert np.array_equal(y, ys[0])        # bitwise: every element computed by one thread alike


@pytest.mark.parametrize("M", [1, 3, 4, 5, 8, 9, 13])
def test_both_paths_at_their_edges(M):
    """The direct path (rows <= DIRECT_MAX_ROWS, 4 a pass) and the scratch path, K odd and not a whole
    number of blocks, N a tile and a part."""
    p = Problem(M, K=77, N=45, block=16, zp="float", bias=True, seed=M)
    err = np.abs(p.run(2).astype(np.float64) - p.expected())
    assert (err <= p.tolerance()).all()


@pytest.mark.parametrize("M", [1, 2, 9])
def test_nan_and_inf_stay_in_their_rows(M):
    p = Problem(M + 2, K=64, N=40, block=32, zp="codes", seed=7)
    A = p.A.copy()
    A[0, 5] = np.nan
    A[-1, 60] = np.inf
    y = p.run(2, A)
    assert not np.isfinite(y[0]).any() and not np.isfinite(y[-1]).any()
    middle = y[1:-1].astype(np.float64)
    err = np.abs(middle - p.expected(A[1:-1]))
    assert np.isfinite(middle).all() and (err <= p.tolerance()[1:-1]).all()


def test_packing_puts_a_pair_of_k_in_one_byte():
    """Byte j of pair q of tile t: code[32 t + j, 2 q] low, code[32 t + j, 2 q + 1] high; zeros
    past N and past an odd K."""
    p = Problem(1, K=5, N=33, block=16, seed=1)
    packed = nb.pack_codes(p.B, p.K).reshape(2, 3, 32)
    assert packed.size == nb.packed_size(5, 33)
    assert np.array_equal(packed[0, :2].T, p.B[:32, :2])
    assert np.array_equal(packed[0, 2], p.B[:32, 2] & 0x0F)
    assert np.array_equal(packed[1, :2, 0], p.B[32, :2]) and not packed[1, :, 1:].any()


def test_argument_checks():
    p = Problem(2, K=32, N=8, block=16)
    codes, scale = nb.pack_codes(p.B, 32), nb.pack_blocks(p.scales, 8, 2)
    y = np.empty((2, 8), np.float32)
    with pytest.raises(ValueError, match="block"):
        nb.matmul_nbits(p.A, codes, scale, None, 8.0, 24, None, y, 1)
    with pytest.raises(ValueError, match="codes"):
        nb.matmul_nbits(p.A, codes[:-1], scale, None, 8.0, 16, None, y, 1)
    with pytest.raises(ValueError, match="scale"):
        nb.matmul_nbits(p.A, codes, nb.pack_blocks(p.scales[:, :1], 8, 1), None, 8.0, 16, None, y, 1)
    with pytest.raises(ValueError, match="bias"):
        nb.matmul_nbits(p.A, codes, scale, None, 8.0, 16, np.zeros(7, np.float32), y, 1)
    with pytest.raises(ValueError, match="fewer than K"):
        nb.pack_codes(p.B, 65)


OTHER_LEVELS = [lv for lv in normrt.cpu_info()["built_levels"]
                if lv != normrt.cpu_info()["level"] and _isa.rank(lv) <= _isa.rank(normrt.cpu_info()["cpu_level"])]


@pytest.mark.parametrize("level", OTHER_LEVELS or ["(none)"])
def test_at_every_built_level(level):
    """This file again with the level forced: the portable C path below x86-64-v4."""
    if level == "(none)" or os.environ.get(_isa.ENV_FORCE):
        pytest.skip("no other level built, or already inside a forced-level run")
    env = dict(os.environ, **{_isa.ENV_FORCE: level})
    here = os.path.dirname(os.path.dirname(os.path.abspath(normrt.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", __file__],
                       env=env, capture_output=True, text=True, timeout=600, cwd=TESTS)
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-20:])
    assert r.returncode == 0, tail
    assert f"normrt kernels: {level} " in r.stdout, tail


# ---- the integer path (accuracy_level 4): A quantized to int8 per row and block, integer sums ----

needs_int8 = pytest.mark.skipif(nb.int8_dot() != "avx512_vnni", reason="no avx512_vnni + avx512vbmi (float path)")


def quantize_model(A, block):
    """onnxruntime's CompInt8 quantization of A's rows (MLAS QuantizeARow_CompInt8), in numpy:
    per block amax = max |a|, scale = amax / 127, code = round half even (a * (127 / amax)), the
    inverse one float32 division; codes 0 past K. (codes int64 (M, kb * block), scales, sums)"""
    M, K = A.shape
    kb = -(-K // block)
    padded = np.zeros((M, kb * block), np.float32)
    padded[:, :K] = A
    blocks = padded.reshape(M, kb, block)
    amax = np.abs(blocks).max(axis=2)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    codes = np.rint((blocks * inv[:, :, None]).astype(np.float32)).astype(np.int64)
    return codes.reshape(M, kb * block), (amax / np.float32(127)).astype(np.float32), codes.sum(axis=2)


def int8_model(p, A=None):
    """The integer path's arithmetic: y = bias + sum_b (ascale * scale) * (sum a_q code - zero *
    sum a_q), the sums exact integers, the rest float64; and its magnitude (the terms' absolute
    values) for the tolerance of the kernel's float32 scaling."""
    A = p.A if A is None else A
    kb = -(-p.K // p.block)
    q, ascale, qsum = quantize_model(A, p.block)
    codes = np.zeros((p.N, kb * p.block), np.int64)
    codes[:, 0::2], codes[:, 1::2] = p.B & 15, p.B >> 4
    codes[:, p.K:] = 0
    zero = np.full((p.N, kb), 8.0) if p.zero is None else p.zero.astype(np.float64)
    isum = np.einsum("mbk,nbk->mnb", q.reshape(-1, kb, p.block), codes.reshape(p.N, kb, p.block))
    isum_abs = np.einsum("mbk,nbk->mnb", np.abs(q).reshape(-1, kb, p.block), codes.reshape(p.N, kb, p.block))
    s = ascale.astype(np.float64)[:, None, :] * p.scales.astype(np.float64)[None]       # (M, N, kb)
    bias = 0.0 if p.bias is None else p.bias.astype(np.float64)
    y = (s * (isum - zero[None] * qsum[:, None, :])).sum(axis=2) + bias
    mag = (np.abs(s) * (isum_abs + np.abs(zero[None] * qsum[:, None, :]))).sum(axis=2) + np.abs(bias)
    return y, mag


def run_int8(p, n_threads, A=None):
    kb = -(-p.K // p.block)
    A = p.A if A is None else A
    y = np.full((A.shape[0], p.N), np.nan, np.float32)
    nb.matmul_nbits(A, nb.pack_codes(p.B, p.K), nb.pack_blocks(p.scales, p.N, kb),
                    None if p.zero is None else nb.pack_blocks(p.zero, p.N, kb), 8.0, p.block, p.bias, y,
                    n_threads, True)
    return y


@needs_int8
@settings(max_examples=60 if os.environ.get("CI") else 300, deadline=None)
@given(M=st.integers(1, 8), K=st.one_of(st.integers(1, 300), st.sampled_from([256, 512, 1000])),
       N=st.one_of(st.integers(1, 80), st.sampled_from([16, 32, 33, 64, 95])),
       block=st.sampled_from([16, 32, 64, 128, 256]), zp=st.sampled_from(["none", "codes", "float"]),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_int8_path_is_its_integer_model_for_any_thread_count(M, K, N, block, zp, bias, seed):
    """Exact integer sums: only the float32 scaling per block differs from the model (a few ulps of
    the terms' magnitude per block), and the bits do not depend on the thread count."""
    p = Problem(M, K, N, block, zp, bias, seed)
    ys = [run_int8(p, n) for n in (1, 2, 3)]
    want, mag = int8_model(p)
    kb = -(-K // block)
    tol = (kb + 2) * 2.0 ** -22 * mag + 1e-30
    err = np.abs(ys[0].astype(np.float64) - want)
    assert (err <= tol).all(), f"max error over tolerance by {np.max(err / tol):.3g}x"
    for y in ys[1:]:
        assert np.array_equal(y, ys[0])


@needs_int8
@pytest.mark.parametrize("K, block", [(1, 16), (77, 16), (300, 64), (1000, 256), (2816, 32)])
def test_quantization_is_onnxruntimes(K, block):
    """The codes, scales and code sums of quantize_rows equal the numpy model's bit for bit,
    values on a half included (a * 127 / amax landing on k + 0.5 rounds to even)."""
    rng = np.random.default_rng(K)
    A = rng.standard_normal((3, K)).astype(np.float32)
    A[1, : min(K, 8)] = np.array([127, -63.5, 0.5, 1.5, -2.5, 0, 3.5, 64.5], np.float32)[: min(K, 8)]
    A[2] = 0
    codes, scales, sums = nb.quantize_rows(A, block)
    want_codes, want_scales, want_sums = quantize_model(A, block)
    assert np.array_equal(codes, want_codes) and np.array_equal(sums, want_sums)
    assert np.array_equal(scales, want_scales)


@needs_int8
@pytest.mark.parametrize("M", [1, 3, 9])
def test_int8_path_nan_and_inf_stay_in_their_rows(M):
    """A NaN (or an inf: its block's inverse scale is 0, times inf) makes its row NaN in every
    column, with no other row touched."""
    p = Problem(M + 2, K=96, N=40, block=32, zp="codes", seed=3)
    A = p.A.copy()
    A[0, 5] = np.nan
    A[-1, 60] = np.inf
    y = run_int8(p, 2, A)
    assert np.isnan(y[0]).all() and np.isnan(y[-1]).all()
    want, mag = int8_model(p, A[1:-1])
    err = np.abs(y[1:-1].astype(np.float64) - want)
    assert np.isfinite(y[1:-1]).all() and (err <= 5 * 2.0 ** -22 * mag).all()


@needs_int8
def test_int8_prompt_rows_and_fallbacks():
    """More rows than DIRECT_MAX_ROWS take the integer path too (a prompt); a block over 256
    (beyond onnxruntime's CompInt8) and a CPU without VNNI keep the float path, bit for bit."""
    p = Problem(13, K=200, N=50, block=32, zp="none", bias=True, seed=5)
    want, mag = int8_model(p)
    assert (np.abs(run_int8(p, 2).astype(np.float64) - want) <= 9 * 2.0 ** -22 * mag).all()
    assert not nb.int8_path(512) and nb.int8_path(256) and nb.int8_path(16)
    big = Problem(2, K=1024, N=40, block=512, seed=6)
    assert np.array_equal(run_int8(big, 2), big.run(2))
    previous = nb.set_int8_dot("float")
    try:
        assert np.array_equal(run_int8(p, 2), p.run(2))
    finally:
        nb.set_int8_dot(previous)
