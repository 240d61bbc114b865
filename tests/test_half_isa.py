"""pyx/half.h at every x86-64 ISA level: each level's vector conversions give the
portable code's bits (which tests/test_half_precision.py checks against numpy and
ml_dtypes). A build compiled once per level and dispatched at run time uses them
all; at AVX-512 the bfloat16 stores also choose at run time between the integer
rounding and vcvtneps2bf16 (NORMRT_BF16_INSTRUCTIONS=0 forces the former)."""
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tests" / "c" / "half_isa_check.c"


def _cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


AVX512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
# (-march, the cpu flags it needs to run, NORMRT_BF16_INSTRUCTIONS, the path half.h must
# report, the bfloat16 paths it must have run: the integer vectors, + vcvtneps2bf16 where
# the CPU has AVX-512 BF16 (the v4 code carries it behind the run-time check))
LEVELS = [("x86-64", set(), None, "portable", "integer"),
          ("x86-64-v3", {"avx2", "f16c", "fma"}, None, "f16c+avx2", "integer"),
          ("x86-64-v4", AVX512, "0", "avx512f", None),
          ("x86-64-v4", AVX512, None, None, None),
          ("x86-64-v4 -mavx512bf16", AVX512 | {"avx512_bf16"}, None, "avx512bf16", "integer+instruction"),
          ("x86-64-v4 -mavx512bf16", AVX512 | {"avx512_bf16"}, "0", "avx512f", "integer+instruction")]


def _ids(levels):
    return [f"{march}{'-bf16-off' if env == '0' else ''}" for march, _, env, *_ in levels]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 ISA levels")
@pytest.mark.parametrize("march, needs, env, path, bf16_paths", LEVELS, ids=_ids(LEVELS))
def test_every_isa_level_converts_like_the_portable_code(tmp_path, march, needs, env, path, bf16_paths):
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler builds normrt, so one must be here"
    flags_here = _cpu_flags()
    if not needs <= flags_here:
        pytest.skip(f"this CPU cannot run {march} code")
    has_bf16 = "avx512_bf16" in flags_here
    if path is None:   # plain v4 code: the instruction exactly where the CPU has it
        path = "avx512bf16" if has_bf16 else "avx512f"
    if bf16_paths is None:
        bf16_paths = "integer+instruction" if has_bf16 else "integer"
    exe = tmp_path / "check"
    flags = [f"-march={march.split()[0]}", *march.split()[1:]]
    subprocess.run([cc, "-O2", *flags, "-I", str(REPO / "pyx"), str(SOURCE), "-o", str(exe)],
                   check=True, capture_output=True)
    run_env = {k: v for k, v in os.environ.items() if k != "NORMRT_BF16_INSTRUCTIONS"}
    if env is not None:
        run_env["NORMRT_BF16_INSTRUCTIONS"] = env
    out = subprocess.run([str(exe)], capture_output=True, text=True, env=run_env)
    assert out.stdout.split() == [path, bf16_paths, "0"], out.stdout + out.stderr


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 ISA levels")
def test_silu_epilogue_keeps_the_bits_of_its_definition(tmp_path):
    # norm_vec.h's nrt_silu drops three vector operations from v / (1 + exp(-v)) but must
    # give its bits: every 4096th float32 pattern and its 15 neighbours (the whole 2^32 take
    # a few seconds: `tests/c/silu_check.c` with no argument)
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler builds normrt, so one must be here"
    if not AVX512 <= _cpu_flags():
        pytest.skip("this CPU cannot run x86-64-v4 code")
    exe = tmp_path / "silu_check"
    subprocess.run([cc, "-O3", "-ffp-contract=off", "-march=x86-64-v4", "-I", str(REPO / "pyx"),
                    str(REPO / "tests" / "c" / "silu_check.c"), "-o", str(exe)], check=True, capture_output=True)
    out = subprocess.run([str(exe), "4096"], capture_output=True, text=True)
    assert out.stdout.split() == [str(1 << 24), "0"], out.stdout + out.stderr
