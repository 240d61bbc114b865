"""Compiled Cython kernels (built from pyx/). Private: use the functions in normrt.

Every kernel module is built once per x86-64 ISA level, into a subpackage
(`_x86_64`, `_x86_64_v3`, `_x86_64_v4`, or `_native` for a -march=native
build; see normrt._isa). On import this package reads the CPU's features once
(cpuid, `_cpuid`), picks the highest built level the CPU runs (`NORMRT_ISA`
may force a lower one), imports that level's modules and registers each under
its plain name: `normrt._kernels.layer_norm` is the chosen level's
`normrt._kernels._x86_64_v3.layer_norm`. The rest of normrt imports the plain
names and never knows the level. Any extension module in a level's folder is
registered, so a new pyx/*.pyx needs no change here.

Why whole modules per level rather than per-function dispatch: the kernels
inline their helpers (moments.pxd) into every loop, so the compiler
vectorizes each loop for the level's full vector width with no call in
between, and one flag per build decides every #ifdef __AVX512F__ path.
"""
import importlib
import importlib.machinery
import os
import sys

from .. import _isa
from . import _cpuid

_HERE = os.path.dirname(os.path.abspath(__file__))


def _modules_in(folder):
    """Names of the extension modules built for this interpreter in `folder`."""
    names = set()
    try:
        entries = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return names
    for entry in entries:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:   # most specific first
            if entry.endswith(suffix):
                name = entry[: -len(suffix)]
                if name.isidentifier():   # not another interpreter's 'x.cpython-312-...'
                    names.add(name)
                break
    return names


def _built_levels():
    """{level: required CPU features} for every level with modules in this install."""
    built = {}
    candidates = list(_isa.LEVEL_NAMES) + [_isa.NATIVE, _isa.GENERIC]
    for level in candidates:
        folder = os.path.join(_HERE, _isa.package_of(level))
        if not _modules_in(folder):
            continue
        if level == _isa.NATIVE:
            try:
                with open(os.path.join(folder, _isa.NATIVE_REQUIRES_FILE)) as f:
                    built[level] = frozenset(line.strip() for line in f if line.strip())
            except FileNotFoundError:
                built[level] = frozenset()
        else:
            built[level] = _isa.required_features(level)
    return built


def _load():
    _isa.parse_bf16_instructions(os.environ.get(_isa.ENV_BF16))   # a bad value fails before any module loads
    features = _cpuid.features()
    built = _built_levels()
    if not built:
        raise ImportError(
            "normrt: no compiled kernels in this install (normrt/_kernels/_x86_64*/ are "
            "empty); build them with `pip install .` or `python setup.py build_ext --inplace`")
    level = _isa.choose(built, features, _isa.forced_from_env())
    package = f"{__name__}.{_isa.package_of(level)}"
    names = sorted(_modules_in(os.path.join(_HERE, _isa.package_of(level))))
    this = sys.modules[__name__]
    for name in names:
        module = importlib.import_module(f"{package}.{name}")
        sys.modules[f"{__name__}.{name}"] = module
        setattr(this, name, module)
    return {
        "level": level,
        "cpu_level": _isa.cpu_level(features) or _isa.GENERIC,
        "features": sorted(features),
        "built_levels": sorted(built, key=_isa.rank),
        "forced": os.environ.get(_isa.ENV_FORCE) or None,
        "brand": _cpuid.brand(),
        "modules": names,
        # what the loaded modules chose (pyx/half.h), not a guess from the features
        "bf16_store": this.half_convert.bf16_store() if "half_convert" in names else _isa.BF16_STORES[1],
        # the 8-bit products' path (pyx/int8_gemm.h): "avx512_vnni" or "portable"
        "int8_dot": this.int8_gemm.int8_dot() if "int8_gemm" in names else "portable",
    }


_INFO = _load()


def cpu_info():
    """What this process runs (a fresh dict each call): see normrt.cpu_info."""
    return {k: list(v) if isinstance(v, list) else v for k, v in _INFO.items()}
