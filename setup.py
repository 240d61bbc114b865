"""Build normrt's Cython kernels (pyx/*.pyx -> normrt._kernels.*).

Every kernel module is compiled once per x86-64 ISA level into a subpackage
(normrt._kernels._x86_64.layer_norm, ._x86_64_v3.layer_norm, ...); at import
normrt._kernels picks the level this CPU runs (cpuid, normrt._kernels._cpuid)
and registers its modules under their plain names (normrt._kernels.layer_norm).
The levels and their flags are in src/normrt/_isa.py.

Environment switches:
  NORMRT_NATIVE=1        build one level for this machine only (-march=native):
                         fastest where it is built, refuses to load on a CPU
                         lacking any feature it was compiled for.
  NORMRT_PORTABLE=1      the dispatching build (the default); with NORMRT_NATIVE an error.
  NORMRT_BUILD_LEVELS=.. (development) build only these levels, comma separated,
                         e.g. x86-64-v4, or "host" for this machine's highest level:
                         NORMRT_BUILD_LEVELS=host python setup.py build_ext --inplace
  NORMRT_BUILD_ONLY=a,b  (development) build only these kernel modules, e.g.
                         NORMRT_BUILD_ONLY=layer_norm python setup.py build_ext --inplace
  NORMRT_BUILD_JOBS=N    parallel compiler processes (default: the CPU count).
  NORMRT_DEBUG_CHECKS=1  turn Cython bounds/wraparound/initialization checks back on.
  NORMRT_NO_OPENMP=1     build the serial version even where OpenMP works.
"""
import copy
import glob
import importlib.util
import os
import platform
import subprocess
import sys
import shutil
import tempfile
import textwrap
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.errors import CompileError, LinkError
from setuptools._distutils.sysconfig import customize_compiler


HERE = os.path.dirname(os.path.abspath(__file__))


def _load_isa():
    """src/normrt/_isa.py, loaded by path: importing normrt would load its kernels."""
    spec = importlib.util.spec_from_file_location("_normrt_isa", os.path.join(HERE, "src", "normrt", "_isa.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ISA = _load_isa()


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _openmp_flags():
    """Compile and link a tiny OpenMP program; return (cflags, ldflags) or None."""
    if _env_flag("NORMRT_NO_OPENMP"):
        return None
    if sys.platform == "win32":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    source = textwrap.dedent(
        """
        #include <omp.h>
        #include <stdio.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            printf("%d\\n", n > 0 && omp_get_max_threads() > 0);
            return 0;
        }
        """
    )
    compiler = new_compiler()
    customize_compiler(compiler)
    tmp = tempfile.mkdtemp(prefix="normrt-omp-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        for cflags, ldflags in candidates:
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=ldflags)
                return cflags, ldflags
            except (CompileError, LinkError):
                continue
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compiler_macros(flag):
    """The preprocessor macros the C compiler defines under `flag` (-march=...), or None."""
    compiler = new_compiler()
    customize_compiler(compiler)
    cc = getattr(compiler, "compiler_so", None)
    if not cc:
        return None
    try:
        out = subprocess.run([cc[0], flag, "-dM", "-E", "-x", "c", os.devnull],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {line.split()[1] for line in out.splitlines() if line.startswith("#define ")}


def _features_of(flag):
    macros = _compiler_macros(flag)
    if macros is None:
        return None
    return sorted({feat for macro, feat in ISA.MACRO_FEATURES.items() if macro in macros} | {"sse", "sse2"})


def _host_level():
    """The highest named level this machine can run, as the compiler sees it: the
    level whose -march macros are all among -march=native's. (Mapping macros to
    cpuinfo feature names cannot do this: cx16, lahf_lm, osxsave have no macro.)"""
    def isa_macros(flag):
        macros = _compiler_macros(flag) or set()
        # the ISA macros are upper case; the lower-case ones name a CPU (__k8, __znver4__)
        return {m for m in macros if m.lstrip("_")[:1].isupper()}
    native = isa_macros("-march=native")
    best = ISA.LEVEL_NAMES[0]
    for level in ISA.LEVEL_NAMES:
        if native and isa_macros(ISA.march_flag(level)) <= native:
            best = level
    return best


def _levels():
    """[(level, compiler flags)] to build."""
    native = _env_flag("NORMRT_NATIVE")
    if native and _env_flag("NORMRT_PORTABLE"):
        sys.exit("normrt: NORMRT_NATIVE=1 and NORMRT_PORTABLE=1 contradict each other; set one")
    x86 = platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32"
    if native:
        return [(ISA.NATIVE, ["-march=native"])] if sys.platform != "win32" else [(ISA.NATIVE, [])]
    if not x86 or _compiler_macros("-march=x86-64-v3") is None:
        # not x86-64, or a compiler without the psABI level names: its default target
        return [(ISA.GENERIC, [])]
    wanted = [v.strip().lower() for v in os.environ.get("NORMRT_BUILD_LEVELS", "").split(",") if v.strip()]
    if not wanted:
        wanted = list(ISA.DEFAULT_BUILD)
    levels = []
    for level in wanted:
        if level == "host":
            level = _host_level()
        if level not in ISA.LEVEL_NAMES:
            sys.exit(f"normrt: NORMRT_BUILD_LEVELS: unknown level {level!r}; "
                     f"expected {', '.join(ISA.LEVEL_NAMES)} or host")
        if level not in (lv for lv, _ in levels):
            levels.append((level, [ISA.march_flag(level), "-mtune=generic"]))
    return levels


def _extensions():
    omp = _openmp_flags()
    if omp is None:
        warnings.warn(
            "normrt: OpenMP is not available to this compiler; building the serial "
            "kernels (normrt.openmp_enabled() will return False).",
            stacklevel=1,
        )
        omp_cflags, omp_ldflags = [], []
    else:
        omp_cflags, omp_ldflags = omp

    if sys.platform == "win32":
        opt = ["/O2"]
    else:
        # No -ffast-math: it would let the compiler drop NaN checks and reorder reductions.
        # fp-contract off: an FMA in one inlined copy of a loop but not in another would
        # make results depend on which path (thread count) ran them.
        opt = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]

    checks = _env_flag("NORMRT_DEBUG_CHECKS")
    directives = {
        "language_level": 3,
        "boundscheck": checks,
        "wraparound": checks,
        "initializedcheck": checks,
        "cdivision": True,
        "nonecheck": False,
        "embedsignature": True,
    }
    headers = sorted(glob.glob(os.path.join("pyx", "*.h")) + glob.glob(os.path.join("pyx", "*.pxd")))
    only = {n.strip() for n in os.environ.get("NORMRT_BUILD_ONLY", "").split(",") if n.strip()}
    sources = []
    for path in sorted(glob.glob(os.path.join("pyx", "*.pyx"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if only and name not in only:
            continue
        # Cythonized once, under the name the loader registers it as (so its
        # functions' __module__ and tracebacks say normrt._kernels.layer_norm);
        # the C file is then compiled once per level.
        sources.append(
            Extension(
                f"normrt._kernels.{name}",
                [path],
                include_dirs=[np.get_include(), "pyx"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=opt + omp_cflags,
                extra_link_args=omp_ldflags,
                depends=headers,
            )
        )
    cythonized = cythonize(sources, include_path=["pyx"], compiler_directives=directives,
                           nthreads=_jobs() if len(sources) > 1 else 0)
    exts = []
    for level, flags in _levels():
        package = ISA.package_of(level)
        for ext in cythonized:
            name = ext.name.rsplit(".", 1)[1]
            per_level = copy.deepcopy(ext)
            per_level.name = f"normrt._kernels.{package}.{name}"
            per_level.sources = [_level_source(package, ext.sources[0])]
            per_level.depends = ext.depends + [ext.sources[0]]
            per_level.extra_compile_args = ext.extra_compile_args + flags
            per_level._normrt_level = level
            exts.append(per_level)
    # the cpuid probe runs before any level is chosen: baseline code only
    probe_flags = ["-O2"] + (["-march=x86-64", "-mtune=generic"] if _compiler_macros("-march=x86-64") else [])
    exts += cythonize(
        [Extension("normrt._kernels._cpuid", [os.path.join("pyx", "cpu", "_cpuid.pyx")],
                   include_dirs=[os.path.join("pyx", "cpu")],
                   extra_compile_args=probe_flags if sys.platform != "win32" else [],
                   depends=[os.path.join("pyx", "cpu", "cpu_features.h")])],
        compiler_directives={"language_level": 3})
    # the biggest sources first, so parallel workers finish together
    exts.sort(key=lambda e: -os.path.getsize(e.depends[-1] if e.depends else e.sources[0]))
    return exts


def _level_source(package, c_file):
    """A one-line C file per level that #includes the shared Cython output.

    The object file's path comes from the source's: compiling pyx/x.c for
    three levels would write one build/temp/pyx/x.o three times, and with
    parallel builds a level could link another level's (or a half-written)
    object. A distinct source path per level gives each its own object.
    """
    folder = os.path.join("build", "isa-src", package)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, os.path.basename(c_file))
    include = os.path.relpath(c_file, folder).replace(os.sep, "/")
    text = f'/* {package}: {c_file} compiled for this level (see setup.py) */\n#include "{include}"\n'
    try:
        with open(path) as f:
            if f.read() == text:
                return path   # unchanged: keep its timestamp, so nothing rebuilds
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(text)
    return path


def _jobs():
    jobs = os.environ.get("NORMRT_BUILD_JOBS", "").strip()
    return int(jobs) if jobs else (os.cpu_count() or 1)


class build_ext(_build_ext):
    """Compiles the extensions in parallel (-j, NORMRT_BUILD_JOBS) and writes
    the native build's feature list next to its modules."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = _jobs()

    def run(self):
        super().run()
        native = [e for e in self.extensions if getattr(e, "_normrt_level", None) == ISA.NATIVE]
        if native:
            feats = _features_of("-march=native")
            if feats is None:
                warnings.warn("normrt: could not query the compiler's -march=native features; "
                              "the native build will load on any CPU", stacklevel=1)
                feats = []
            folder = os.path.dirname(self.get_ext_fullpath(native[0].name))
            with open(os.path.join(folder, ISA.NATIVE_REQUIRES_FILE), "w") as f:
                f.write("\n".join(feats) + "\n")


setup(ext_modules=_extensions(), cmdclass={"build_ext": build_ext})
