"""Builds the Cython kernels in src/ as extension modules of the cdnn package: src/_x.pyx → cdnn._x.

Release builds turn Cython's bounds and wraparound checks off (the Python layer validates every
argument before a kernel runs). CDNN_DEBUG=1 builds with them on, unoptimised and with symbols,
for running the test suite under checks.
"""
import os
import sys
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

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

extensions = [
    Extension(f"cdnn.{pyx.stem}", [str(pyx)], extra_compile_args=compile_args,
              extra_link_args=link_args, include_dirs=[np.get_include()],
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    for pyx in sorted(Path("src").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(extensions, include_path=["src"], compiler_directives=directives,
                          build_dir="build/cython-debug" if DEBUG else "build/cython"),
)
