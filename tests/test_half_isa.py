"""pyx/half.h at every x86-64 ISA level: each level's vector conversions give the
portable code's bits (which tests/test_half_precision.py checks against numpy and
ml_dtypes). The shipped build uses one level (-march=native); a build compiled
once per level and dispatched at run time uses them all."""
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


# (-march, the cpu flags it needs to run, the path half.h must report)
LEVELS = [("x86-64", set(), "portable"),
          ("x86-64-v3", {"avx2", "f16c", "fma"}, "f16c+avx2"),
          ("x86-64-v4", {"avx512f", "avx512bw", "avx512vl"}, "avx512f"),
          ("x86-64-v4 -mavx512bf16", {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}, "avx512f+bf16")]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 ISA levels")
@pytest.mark.parametrize("march, needs, path", LEVELS, ids=[lv[0] for lv in LEVELS])
def test_every_isa_level_converts_like_the_portable_code(tmp_path, march, needs, path):
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler builds normrt, so one must be here"
    if not needs <= _cpu_flags():
        pytest.skip(f"this CPU cannot run {march} code")
    exe = tmp_path / "check"
    flags = [f"-march={march.split()[0]}", *march.split()[1:]]
    subprocess.run([cc, "-O2", *flags, "-I", str(REPO / "pyx"), str(SOURCE), "-o", str(exe)],
                   check=True, capture_output=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.stdout.split() == [path, "0"], out.stdout + out.stderr
