"""Run-time ISA dispatch: the level chosen from cpuid, the NORMRT_ISA override,
and the kernel tests at every level this machine runs (a subprocess each,
since the level is chosen once per process, at import)."""
import os
import subprocess
import sys
import warnings

import pytest
from hypothesis import given, settings, strategies as st

import normrt
from normrt import _isa
from normrt._kernels import _cpuid

TESTS = os.path.dirname(os.path.abspath(__file__))
INFO = normrt.cpu_info()
# levels of this install this CPU can execute: each gets the kernel tests
RUNNABLE = [lv for lv in INFO["built_levels"]
            if _isa.rank(lv) <= _isa.rank(INFO["level"]) or lv == INFO["level"]]

# A representative subset of the kernel tests (every kernel family, the
# float32 polynomials, the GEMM paths, thread-count determinism), each checked
# against its float64 / onnx.reference oracle. ~20 s per level on 2 cores.
KERNEL_TESTS = [
    "test_erf_gelu_accuracy.py", "test_activations.py", "test_layer_norm.py",
    "test_group_norm.py", "test_batch_norm.py", "test_moments.py", "test_softmax.py",
    "test_gemm.py", "test_conv.py", "test_attention.py", "test_pool.py", "test_threads.py",
    # the recurrent products' blocks differ by vector width (recurrent_kernel.h)
    "onnx/test_recurrent_ops.py",
    # the transpose's 8 x 8 blocks: AVX shuffles from x86-64-v3, SSE2 below (transpose_tile.h)
    "onnx/test_transpose.py",
    # col2im's stride-2 rows on AVX-512 only (col2im_row.h)
    "onnx/test_conv_transpose.py",
]


def _env(**extra):
    """This environment, importing the same normrt as this process (from any cwd)."""
    env = dict(os.environ)
    env.pop(_isa.ENV_FORCE, None)
    here = os.path.dirname(os.path.dirname(os.path.abspath(normrt.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here] + [os.path.abspath(p) for p in
                                                  env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra)
    return env


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], env=_env(**env),
                          capture_output=True, text=True, timeout=300)


# ---- what the loader reports ----------------------------------------------

def test_cpu_info_shape():
    info = normrt.cpu_info()
    assert info["level"] in _isa.LEVEL_NAMES + (_isa.NATIVE, _isa.GENERIC)
    assert info["level"] in info["built_levels"]
    assert isinstance(info["features"], list) and info["features"] == sorted(info["features"])
    assert set(info["features"]) <= set(_cpuid.known_features())
    assert "layer_norm" in info["modules"] and "gemm" in info["modules"]
    info["features"].append("mutated")              # a copy: the next call is unchanged
    assert "mutated" not in normrt.cpu_info()["features"]


def _proc_cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@pytest.mark.skipif(_proc_cpuinfo_flags() is None or not _cpuid.is_x86(),
                    reason="needs Linux /proc/cpuinfo on x86-64")
def test_cpuid_features_match_the_kernels_view():
    # the kernel's own cpuid parse is the independent reference (Linux names;
    # SSE3 is 'pni' there, OSXSAVE is not listed)
    linux = _proc_cpuinfo_flags()
    ours = set(_cpuid.features())
    spelled = {"sse3": "pni"}
    for feat in _cpuid.known_features():
        if feat == "osxsave":
            continue
        assert (feat in ours) == (spelled.get(feat, feat) in linux), feat
    known = {f for f in _cpuid.known_features() if spelled.get(f, f) in linux}
    if "avx" in known:      # Linux lists AVX only when the OS enables its state
        known.add("osxsave")
    assert normrt.cpu_info()["cpu_level"] == _isa.cpu_level(frozenset(known))


def test_modules_registered_under_plain_names():
    pkg = _isa.package_of(INFO["level"])
    for name in INFO["modules"]:
        module = sys.modules[f"normrt._kernels.{name}"]
        assert module.__name__ == f"normrt._kernels.{pkg}.{name}"
        assert getattr(normrt._kernels, name) is module


# what gemm's micro-kernel reports for the instruction set it was compiled for
GEMM_ISA = {"x86-64": "generic", "x86-64-v2": "generic", "x86-64-v3": "avx2", "x86-64-v4": "avx512"}
# half_convert's conversions: F16C from v3 on, AVX-512 at v4 (+BF16 where the CPU's
# build has it: "avx512f" or "avx512bf16")
HALF_ISA = {"x86-64": ("portable",), "x86-64-v2": ("portable",), "x86-64-v3": ("f16c+avx2",),
            "x86-64-v4": ("avx512f", "avx512bf16")}

_LEVEL_CHECK = """
import sys, normrt
info = normrt.cpu_info()
print(info["level"], sys.modules["normrt._kernels.gemm"].isa(), sys.modules["normrt._kernels.half_convert"].isa())
"""


@pytest.mark.parametrize("level", [lv for lv in RUNNABLE if lv in GEMM_ISA])
def test_each_level_runs_code_compiled_for_it(level):
    # a module built for one level but holding another's code (e.g. a shared
    # object file overwritten by a parallel build) would pass the numerics
    # and then die with SIGILL on an older CPU
    r = _python(_LEVEL_CHECK, NORMRT_ISA=level)
    assert r.returncode == 0, r.stderr
    got_level, gemm_isa, half_isa = r.stdout.split()
    assert (got_level, gemm_isa) == (level, GEMM_ISA[level])
    assert half_isa in HALF_ISA[level], half_isa


def test_every_built_level_has_every_module():
    # a wheel missing one module at one level would fail only on some CPUs
    kernels = os.path.dirname(normrt._kernels.__file__)
    for level in INFO["built_levels"]:
        folder = os.path.join(kernels, _isa.package_of(level))
        assert normrt._kernels._modules_in(folder) == set(INFO["modules"]), level


def test_version_flag_prints_the_level(capsys):
    from normrt import cli
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"normrt {normrt.__version__}\n")
    assert f"kernels: {INFO['level']} " in text
    assert " ".join(INFO["features"]) in text


# ---- the choice (pure logic, any CPU) ---------------------------------------

NAMED = list(_isa.LEVEL_NAMES)


def _feats(level):
    return _isa.required_features(level) if level else frozenset()


@settings(max_examples=200, deadline=None)
@given(built=st.sets(st.sampled_from(NAMED), min_size=1),
       cpu=st.sampled_from(NAMED), forced=st.one_of(st.none(), st.sampled_from(NAMED)),
       extra=st.sets(st.sampled_from(["avx512_bf16", "avx512_fp16", "gfni", "vaes"])))
def test_choose_picks_the_best_runnable_level(built, cpu, forced, extra):
    features = _feats(cpu) | extra
    table = {lv: _isa.required_features(lv) for lv in built}
    runnable = [lv for lv in built if _isa.rank(lv) <= _isa.rank(cpu)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if not runnable:
            with pytest.raises(ImportError, match="runs on this CPU"):
                _isa.choose(table, features, forced)
            return
        got = _isa.choose(table, features, forced)
    assert got in runnable                                    # never a level the CPU lacks
    below = [lv for lv in runnable if forced is None or _isa.rank(lv) <= _isa.rank(forced)]
    if forced is not None and _isa.rank(forced) > _isa.rank(cpu):
        assert got == max(runnable, key=_isa.rank)            # lacking: fall back to the best
        assert any("lacks" in str(w.message) for w in caught)
    elif below:
        assert got == max(below, key=_isa.rank)               # the highest not above the request
        assert not caught
    else:
        assert got == min(runnable, key=_isa.rank)            # nothing that low was built
        assert any("below every build" in str(w.message) for w in caught)


def test_native_build_needs_its_features():
    table = {"x86-64": _isa.required_features("x86-64"),
             _isa.NATIVE: _isa.required_features("x86-64-v4") | {"avx512_bf16"}}
    v4 = _isa.required_features("x86-64-v4")
    assert _isa.choose(table, v4 | {"avx512_bf16"}) == _isa.NATIVE
    # an image built on an AVX-512 machine, run on an AVX2 one: no SIGILL, the baseline
    assert _isa.choose(table, _isa.required_features("x86-64-v3")) == "x86-64"
    assert _isa.choose(table, v4) == "x86-64"        # a missing extension counts too
    with pytest.warns(RuntimeWarning, match="lacks"):
        assert _isa.choose(table, v4, _isa.NATIVE) == "x86-64"
    only_native = {_isa.NATIVE: table[_isa.NATIVE]}
    with pytest.raises(ImportError, match="none of the kernel builds"):
        _isa.choose(only_native, _isa.required_features("x86-64-v3"))


@pytest.mark.parametrize("value, expected", [("", None), (" X86-64-V3 ", "x86-64-v3"), ("native", "native")])
def test_parse_forced(value, expected):
    assert _isa.parse_forced(value) == expected


@pytest.mark.parametrize("bad", ["avx2", "x86-64-v5", "v3"])
def test_parse_forced_names_the_variable(bad):
    with pytest.raises(ValueError, match=r"NORMRT_ISA=.*x86-64-v3"):
        _isa.parse_forced(bad)


def test_bad_override_fails_the_import_clearly():
    r = _python("import normrt", NORMRT_ISA="avx9000")
    assert r.returncode != 0
    assert "NORMRT_ISA='avx9000' is not an ISA level" in r.stderr


@pytest.mark.skipif(_isa.NATIVE in INFO["built_levels"], reason="this install has a native build")
def test_forcing_native_without_a_native_build_warns_and_runs():
    r = _python("import warnings; warnings.simplefilter('always'); import normrt; "
                "print(normrt.cpu_info()['level'])", NORMRT_ISA="native")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [INFO["level"]]
    assert "no -march=native build" in r.stderr


# ---- the kernels at every level ---------------------------------------------

_BASELINE_CHECK = """
import math, numpy as np, normrt
info = normrt.cpu_info()
assert info["level"] == "x86-64", info
assert normrt._kernels.gemm.__name__ == "normrt._kernels._x86_64.gemm"
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 768)).astype(np.float32) * 3 + 1
ref = x.astype(np.float64)
ref = (ref - ref.mean(-1, keepdims=True)) / np.sqrt(ref.var(-1, keepdims=True) + 1e-5)
np.testing.assert_allclose(normrt.layer_norm(x), ref, rtol=1e-5, atol=1e-5)
erfc = np.vectorize(math.erfc)     # erfc: the negative tail keeps its digits
g = 0.5 * x.astype(np.float64) * erfc(-x.astype(np.float64) / math.sqrt(2))
np.testing.assert_allclose(normrt.activate(x, "gelu"), g, rtol=1e-6, atol=1e-30)
a = rng.standard_normal((33, 70)).astype(np.float32); b = rng.standard_normal((70, 45)).astype(np.float32)
np.testing.assert_allclose(normrt.matmul(a, b), a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
print("ok", info["level"])
"""


@pytest.mark.skipif("x86-64" not in INFO["built_levels"], reason="no baseline build in this install")
def test_forced_baseline_imports_and_runs():
    # stands in for an old CPU: only SSE2 kernels are loaded
    r = _python(_BASELINE_CHECK, NORMRT_ISA="x86-64")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["ok", "x86-64"]


@pytest.mark.parametrize("level", [lv for lv in RUNNABLE if lv != INFO["level"]] or ["(none)"])
def test_kernel_tests_at_level(level):
    """The kernel tests again with the level forced (the level in use already
    ran them in this process)."""
    if level == "(none)":
        pytest.skip(f"this install runs only {INFO['level']} on this CPU")
    if os.environ.get(_isa.ENV_FORCE):
        pytest.skip("already inside a forced-level run")
    files = [os.path.join(TESTS, f) for f in KERNEL_TESTS]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", *files],
        env=_env(NORMRT_ISA=level), capture_output=True, text=True, timeout=900, cwd=TESTS)
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-30:])
    assert r.returncode == 0, tail
    assert f"normrt kernels: {level} " in r.stdout, tail     # the header from conftest.py
