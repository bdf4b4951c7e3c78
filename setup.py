"""Builds the Cython kernels in src/ as extension modules of the cdnn package: src/_x.pyx → cdnn._x,
and on x86-64 once more for CPUs with AVX2: → cdnn._x_avx2 (cdnn/_native.py picks one at import).

Release builds turn Cython's bounds and wraparound checks off (the Python layer validates every
argument before a kernel runs). CDNN_DEBUG=1 builds with them on, unoptimised and with symbols,
for running the test suite under checks.
"""
import os
import platform
import sys
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("CDNN_DEBUG", "0") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
# -fno-math-errno, -fno-trapping-math: nothing reads errno or traps on floating-point flags, so
# loops with sqrt or a select between products (ReLU's f'·d) vectorise
compile_args = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-math-errno", "-fno-trapping-math"]
link_args = [] if DEBUG else ["-s"]     # release: no symbol tables (halves the wheel)
# OpenMP splits a training step's batch across threads (src/_network.pyx). Without it (e.g.
# Apple clang) Cython's parallel blocks run serially: correct, one core.
if sys.platform.startswith("linux"):
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")

# A wheel must run on any x86-64 CPU, so the portable build's loops are 4 floats wide (SSE2).
# The AVX2 build of the same source runs its element-wise passes (activations, optimizer
# updates) 8 wide: S +20 % samples/s, D +6-15 %. Neither build contracts a·b + c
# into an FMA, so both compute the same bits.
compile_args.append("-ffp-contract=off")
variants = {"": []}
if platform.machine().lower() in ("x86_64", "amd64"):
    variants["_avx2"] = ["-mavx2"]


def extensions(suffix, flags):
    return cythonize(
        [Extension(f"cdnn.{pyx.stem}{suffix}", [str(pyx)], extra_compile_args=compile_args + flags,
                   extra_link_args=link_args, include_dirs=[np.get_include()],
                   define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
         for pyx in sorted(Path("src").glob("*.pyx"))],
        include_path=["src"], compiler_directives=directives,
        # one C file per module and variant
        build_dir=f"build/cython{'-debug' if DEBUG else ''}{suffix}")


class parallel_build_ext(build_ext):
    """Compiles the modules side by side, one per core (pip cannot pass --parallel)."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1


setup(ext_modules=[ext for suffix, flags in variants.items() for ext in extensions(suffix, flags)],
      cmdclass={"build_ext": parallel_build_ext})
