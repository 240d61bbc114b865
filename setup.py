"""Build normrt's Cython kernels (pyx/*.pyx -> normrt._kernels.*).

Environment switches:
  NORMRT_PORTABLE=1      build a portable baseline (no -march=native), e.g. for wheels.
  NORMRT_DEBUG_CHECKS=1  turn Cython bounds/wraparound/initialization checks back on.
  NORMRT_NO_OPENMP=1     build the serial version even where OpenMP works.
  NORMRT_BUILD_ONLY=a,b  (development) build only these kernel modules, e.g.
                         NORMRT_BUILD_ONLY=layer_norm python setup.py build_ext --inplace
"""
import os
import sys
import glob
import shutil
import tempfile
import textwrap
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.errors import CompileError, LinkError
from setuptools._distutils.sysconfig import customize_compiler


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
        if not _env_flag("NORMRT_PORTABLE"):
            opt.append("-march=native")

    only = {n.strip() for n in os.environ.get("NORMRT_BUILD_ONLY", "").split(",") if n.strip()}
    exts = []
    for path in sorted(glob.glob(os.path.join("pyx", "*.pyx"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if only and name not in only:
            continue
        exts.append(
            Extension(
                f"normrt._kernels.{name}",
                [path],
                include_dirs=[np.get_include(), "pyx"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                extra_compile_args=opt + omp_cflags,
                extra_link_args=omp_ldflags,
            )
        )

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
    return cythonize(exts, include_path=["pyx"], compiler_directives=directives)


setup(ext_modules=_extensions())
