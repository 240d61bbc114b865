"""float32 -> bfloat16 rounding: vcvtneps2bf16 (AVX-512 BF16, chosen at run time) and
the integer rounding give the same bits for every class of input, and the norm
kernels' bfloat16 outputs do not depend on which one ran.

vcvtneps2bf16 treats subnormal inputs as zero and its NaN result is not the integer
path's, so pyx/half.h sends a vector holding either to the integer rounding. The
classes below put those inputs inside vectors of ordinary values, at every lane
and in the masked tails; the independent references are ml_dtypes (values) and the
documented NaN rule (quiet, sign and top payload bits kept). scripts/bf16_sweep.py
sweeps all 2^32 inputs the same way (too long for the default run).
"""
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import normrt
from normrt import _isa
from normrt._kernels import half_convert
from dtype_checks import same_bits

BF16 = np.dtype(ml_dtypes.bfloat16)
PATHS = ["portable", "integer"] + (["instruction"] if half_convert.bf16_instructions() else [])

# float32 bit patterns by class (sign bit added separately)
CLASSES = {
    "normal": st.integers(0x00800000, 0x7f7fffff),
    "subnormal": st.integers(1, 0x007fffff),
    "near_min_normal": st.integers(0x007f8000, 0x00808000),       # subnormals that round up to 2^-126
    "zero": st.just(0),
    "inf": st.just(0x7f800000),
    "quiet_nan": st.integers(0x7fc00000, 0x7fffffff),
    "signaling_nan": st.integers(0x7f800001, 0x7fbfffff),
    "tie": st.integers(0, 0x7f7f).map(lambda hi: (hi << 16) | 0x8000),          # exactly half an ulp
    "near_tie": st.integers(0, 0x7f7f).flatmap(
        lambda hi: st.sampled_from([(hi << 16) | 0x7fff, (hi << 16) | 0x8001])),
    "to_inf": st.integers(0x7f7f8000, 0x7f7fffff),                 # the largest floats round to inf
}


def bits_of_class(name):
    return st.tuples(CLASSES[name], st.booleans()).map(lambda t: t[0] | (0x80000000 if t[1] else 0))


any_bits = st.one_of([bits_of_class(name) for name in CLASSES])


def expected_bf16(bits):
    """ml_dtypes' rounding for values; for NaNs the rule (ml_dtypes makes every NaN 0x7fc0/0xffc0)."""
    f = bits.view(np.float32)
    with np.errstate(all="ignore"):
        ref = f.astype(BF16).view(np.uint16)
    return np.where(np.isnan(f), ((bits >> 16) | 0x40).astype(np.uint16), ref)


def round_by(path, bits):
    out = np.empty(bits.size, np.uint16)
    half_convert.bf16_round(bits.view(np.float32), out, path)
    return out


@settings(max_examples=300, deadline=None)
@given(body=st.lists(st.integers(0x3f000000, 0x40ffffff), min_size=0, max_size=70),
       specials=st.lists(st.tuples(st.integers(0, 69), any_bits), min_size=1, max_size=6))
def test_every_path_rounds_each_class_like_ml_dtypes(body, specials):
    # ordinary values with special ones dropped in at random lanes: a vector holding a
    # subnormal or NaN takes the integer rounding, its neighbours must not notice
    bits = np.array(body + [0] * max(0, max(i for i, _ in specials) + 1 - len(body)), np.uint32)
    for i, b in specials:
        bits[i] = b
    want = expected_bf16(bits)
    for path in PATHS:
        assert np.array_equal(round_by(path, bits), want), path


@pytest.mark.parametrize("cls", sorted(CLASSES))
def test_whole_vectors_of_one_class(cls):
    # 16-lane vectors and a masked tail made only of one class (every lane special)
    bits = _draw_class(cls, np.random.default_rng(sorted(CLASSES).index(cls)), 16 * 7 + 5)
    want = expected_bf16(bits)
    for path in PATHS:
        assert np.array_equal(round_by(path, bits), want), path


def _draw_class(cls, rng, n):
    """n bit patterns of one class, both signs, drawn with numpy (hypothesis' .example() is for shells)."""
    lo_hi = {"normal": (0x00800000, 0x7f7fffff), "subnormal": (1, 0x007fffff),
             "near_min_normal": (0x007f8000, 0x00808000), "zero": (0, 0), "inf": (0x7f800000, 0x7f800000),
             "quiet_nan": (0x7fc00000, 0x7fffffff), "signaling_nan": (0x7f800001, 0x7fbfffff),
             "to_inf": (0x7f7f8000, 0x7f7fffff)}
    sign = rng.integers(0, 2, n, dtype=np.uint64).astype(np.uint32) << np.uint32(31)
    if cls in ("tie", "near_tie"):
        hi = rng.integers(0, 0x7f80, n, dtype=np.uint64).astype(np.uint32) << np.uint32(16)
        low = np.full(n, 0x8000, np.uint32) if cls == "tie" else \
            rng.choice(np.array([0x7fff, 0x8001], np.uint32), n)
        return (hi | low | sign).astype(np.uint32)
    lo, hi = lo_hi[cls]
    return (rng.integers(lo, hi + 1, n, dtype=np.uint64).astype(np.uint32) | sign).astype(np.uint32)


def test_ties_round_to_even_on_every_path():
    # 1 + 2^-8 (odd kept lsb 0x3f80 -> ...) spelled out: half an ulp above an even and an odd value
    bits = np.array([0x3f808000, 0x3f818000, 0xbf808000, 0xbf818000, 0x3f807fff, 0x3f808001], np.uint32)
    want = np.array([0x3f80, 0x3f82, 0xbf80, 0xbf82, 0x3f80, 0x3f81], np.uint16)
    assert np.array_equal(expected_bf16(bits), want)
    for path in PATHS:
        assert np.array_equal(round_by(path, bits), want), path


def test_subnormals_are_not_flushed():
    # the instruction alone would give +-0 here (DAZ); the smallest subnormals round to 0
    # by value, the largest up to the smallest normal 2^-126
    bits = np.array([0x00000001, 0x00010000, 0x00018000, 0x007fffff, 0x80400000] + [0x3f800000] * 11, np.uint32)
    want = np.array([0x0000, 0x0001, 0x0002, 0x0080, 0x8040] + [0x3f80] * 11, np.uint16)
    for path in PATHS:
        assert np.array_equal(round_by(path, bits), want), path


def test_unknown_path_is_refused():
    with pytest.raises(ValueError, match="path must be one of"):
        round_by("fast", np.zeros(3, np.uint32))


# ---- which path the kernels use -------------------------------------------

def _python(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in (_isa.ENV_BF16, _isa.ENV_FORCE)}
    here = os.path.dirname(os.path.dirname(os.path.abspath(normrt.__file__)))
    tests = os.path.dirname(os.path.abspath(__file__))
    full["PYTHONPATH"] = os.pathsep.join([here, tests] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)


def _expected_store(env_value):
    info = normrt.cpu_info()
    level_features = _isa.required_features(info["level"]) if info["level"] != _isa.NATIVE else \
        _isa.required_features(_isa.cpu_level(frozenset(info["features"])))
    return _isa.bf16_store(level_features, frozenset(info["features"]), _isa.parse_bf16_instructions(env_value))


def test_cpu_info_reports_the_store_the_modules_chose():
    info = normrt.cpu_info()
    assert info["bf16_store"] in _isa.BF16_STORES
    assert info["bf16_store"] == half_convert.bf16_store()
    if info["level"] != _isa.NATIVE:   # a native build's features are its own list
        assert info["bf16_store"] == _expected_store(os.environ.get(_isa.ENV_BF16))
    assert half_convert.isa() == {"avx512_bf16": "avx512bf16"}.get(info["bf16_store"], half_convert.isa())


@pytest.mark.parametrize("value", ["0", "1", ""])
def test_env_var_chooses_the_store(value):
    r = _python("import normrt; print(normrt.cpu_info()['bf16_store'])", NORMRT_BF16_INSTRUCTIONS=value)
    assert r.returncode == 0, r.stderr
    want = "avx512_bf16" if value != "0" and half_convert.bf16_instructions() else "integer"
    assert r.stdout.strip() == want


def test_bad_env_value_fails_the_import_naming_the_variable():
    r = _python("import normrt", NORMRT_BF16_INSTRUCTIONS="yes")
    assert r.returncode != 0
    assert "ValueError" in r.stderr and "NORMRT_BF16_INSTRUCTIONS" in r.stderr


def test_version_flag_names_the_store():
    from normrt import cli
    assert f"bf16 stores: {normrt.cpu_info()['bf16_store']}" in cli.version_text()


# ---- the norm kernels' bfloat16 outputs on either store ---------------------

_KERNEL_OUTPUTS = r"""
import sys
import numpy as np, ml_dtypes
import normrt
bf = ml_dtypes.bfloat16
rng = np.random.default_rng(7)
x = rng.standard_normal((6, 1000)).astype(bf)
x[1, 5] = np.nan
img = (rng.standard_normal((2, 16, 9, 11)) * 3 + 2).astype(bf)
tiny = np.full(1000, 1e-39, np.float32)            # float32 subnormal scale: subnormal outputs
outs = {
    "layer_norm": normrt.layer_norm(x, np.linspace(-2, 2, 1000, dtype=np.float32), tiny * 0 + 0.5),
    "layer_norm_subnormal": normrt.layer_norm(x, tiny),
    "layer_norm_residual": normrt.layer_norm(x, residual=x[::-1].copy(), activation="silu"),
    "rms_norm": normrt.rms_norm(x, tiny),
    "group_norm_silu": normrt.group_norm(img, 4, np.linspace(0.5, 2, 16, dtype=np.float32),
                                         np.linspace(-1, 1, 16, dtype=np.float32), activation="silu"),
    "group_norm_subnormal": normrt.group_norm(img, 4, np.full(16, 3e-39, np.float32)),
    "instance_norm_relu": normrt.instance_norm(img, activation="relu"),
    "batch_norm": normrt.batch_norm(img, np.full(16, 1e-39, np.float32), np.zeros(16, np.float32),
                                    np.zeros(16, np.float32), np.ones(16, np.float32)),
}
np.savez(sys.argv[1], **{k: v.view(np.uint16) for k, v in outs.items()})
"""


def test_norm_kernels_give_the_same_bf16_bits_on_both_stores(tmp_path):
    # one process per store (the choice is made when the modules load); the outputs include
    # NaN, subnormal and SiLU results; both must equal the float32 kernel rounded by ml_dtypes,
    # which is checked in this process for the store it runs
    results = {}
    for value in ("0", "1"):
        path = tmp_path / f"out{value}.npz"
        r = _python(_KERNEL_OUTPUTS.replace("sys.argv[1]", repr(str(path))), NORMRT_BF16_INSTRUCTIONS=value)
        assert r.returncode == 0, r.stderr
        results[value] = dict(np.load(path))
    assert results["0"].keys() == results["1"].keys()
    for name in results["0"]:
        assert same_bits(results["0"][name], results["1"][name]), name


@pytest.mark.parametrize("act", [None, "silu", "relu"])
def test_bf16_norm_output_is_the_float32_result_rounded_once(act):
    # the half kernels run the float32 code on the widened values and round once: the same
    # bits as the float32 kernel's output rounded by ml_dtypes, whichever store ran
    rng = np.random.default_rng(3)
    img = (rng.standard_normal((2, 32, 13, 17)) * 4 - 1).astype(BF16)
    scale = np.concatenate([np.full(16, 2e-39, np.float32), np.linspace(0.1, 3, 16, dtype=np.float32)])
    bias = np.linspace(-1, 1, 32, dtype=np.float32)
    y = normrt.group_norm(img, 8, scale, bias, activation=act)
    y32 = normrt.group_norm(img.astype(np.float32), 8, scale, bias, activation=act)
    assert same_bits(y.view(np.uint16), expected_bf16(y32.view(np.uint32)))
    x = (rng.standard_normal((9, 777)) * 2 + 5).astype(BF16)
    w = np.where(np.arange(777) % 3 == 0, np.float32(1e-39), np.float32(1.5))
    z = normrt.layer_norm(x, w, activation=act)
    z32 = normrt.layer_norm(x.astype(np.float32), w, activation=act)
    assert same_bits(z.view(np.uint16), expected_bf16(z32.view(np.uint32)))
