"""Builds the Cython kernels in src/ as extension modules of the cdnn package: src/_x.pyx → cdnn._x,
and on x86-64 the modules the library runs once more for CPUs with AVX2: → cdnn._x_avx2
(cdnn/_native.py picks one at import).

Compiler flags follow the compiler: gcc or clang (Linux, macOS, MinGW) or MSVC (Windows).
Threads: cdnn's own pool (src/team.pxd) on POSIX threads, so -pthread with gcc and clang and no
runtime library to vendor; with MSVC the pool's teams run serially (correct, one core).

Release builds turn Cython's bounds and wraparound checks off (the Python layer validates every
argument before a kernel runs). CDNN_DEBUG=1 builds with them on, unoptimised and with symbols,
for running the test suite under checks; it builds in build/debug, apart from the release's
build/release.

Build time: Cython translates each .pyx once, at build_ext (its AVX2 variant compiles the same
C), and the build directory keeps the C and the compiled modules, so another `pip install .` from the same
checkout (the README's test command after its install command) compiles only what src/ changed.
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
BUILD = Path("build") / ("debug" if DEBUG else "release")
SOURCES = sorted(Path("src").glob("*.pyx"))
# The test-only wrappers are built portable only: tests/test_native.py checks that the AVX2 build
# of the engine computes the same bits as the portable one, so the kernels' own tests need one.
PORTABLE_ONLY = {"_testing"}

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

# Neither build contracts a·b + c into an FMA, so the portable and the AVX2 builds compute the
# same bits. -fno-math-errno, -fno-trapping-math: nothing reads errno or traps on floating-point
# flags, so loops with sqrt or a select between products (ReLU's f'·d) vectorise.
GCC_LIKE = {
    "release": ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"],
    "debug": ["-O0", "-g", "-ffp-contract=off"],
    "avx2": ["-mavx2"],
    "strip": ["-s"],        # release: no symbol tables (halves the wheel)
}
# MSVC: /fp:precise does not contract into FMAs (that takes /fp:contract or /fp:fast)
MSVC = {"release": ["/O2", "/fp:precise"], "debug": ["/Od", "/Zi", "/fp:precise"],
        "avx2": ["/arch:AVX2"], "strip": []}


def thread_flags(compiler_type: str) -> list[str]:
    """Compile and link flags for the thread pool's POSIX threads."""
    return [] if compiler_type == "msvc" else ["-pthread"]


def builds_avx2() -> bool:
    """Whether to build AVX2 variants: on x86-64 only (not when cross-compiling for arm64)."""
    return (platform.machine().lower() in ("x86_64", "amd64")
            and "arm64" not in os.environ.get("ARCHFLAGS", ""))


def c_file(pyx: Path) -> Path:
    return BUILD / "cython" / pyx.with_suffix(".c")


def variant_file(pyx: Path) -> Path:
    """The AVX2 variant's C: the module's C with its init function renamed, in a file of its
    own so that the two builds never share an object file."""
    return c_file(pyx).with_name(f"{pyx.stem}_avx2.c")


def translate():
    """Cython: the modules whose C is older than src/ or setup.py (whose directives shape it)."""
    newest_source = max(p.stat().st_mtime for p in [*Path("src").glob("*.p*"), Path(__file__)])
    stale = [p for p in SOURCES if not c_file(p).exists()
             or c_file(p).stat().st_mtime < newest_source]
    if stale:
        # force: Cython's own check also looks at numpy's and scipy's .pxd files, which are new
        # in every isolated build environment, and so would translate everything every time
        cythonize([Extension(f"cdnn.{p.stem}", [str(p)]) for p in stale], include_path=["src"],
                  compiler_directives=directives, build_dir=str(BUILD / "cython"), force=True)
    for pyx in SOURCES:
        text = f'#define PyInit_{pyx.stem} PyInit_{pyx.stem}_avx2\n#include "{c_file(pyx).name}"\n'
        if not variant_file(pyx).exists() or variant_file(pyx).read_text() != text:
            variant_file(pyx).write_text(text)


def extensions() -> list[Extension]:
    """One extension per .pyx, plus an AVX2 variant of those the library runs; their C is made
    by translate() when they are built (an sdist needs none)."""
    common = dict(include_dirs=[np.get_include()],
                  define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    exts = []
    for pyx in SOURCES:
        exts.append(Extension(f"cdnn.{pyx.stem}", [str(c_file(pyx))], **common))
        if builds_avx2() and pyx.stem not in PORTABLE_ONLY:
            exts.append(Extension(f"cdnn.{pyx.stem}_avx2", [str(variant_file(pyx))],
                                  depends=[str(c_file(pyx))], **common))
    return exts


class build_ext_per_compiler(build_ext):
    """Sets each extension's flags for the compiler in use, and compiles the modules side by
    side, one per core (pip cannot pass --parallel)."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        translate()
        kind = self.compiler.compiler_type
        flags = MSVC if kind == "msvc" else GCC_LIKE
        threads = thread_flags(kind)
        strip = [] if DEBUG or sys.platform == "darwin" else flags["strip"]
        for ext in self.extensions:
            variant = flags["avx2"] if ext.name.endswith("_avx2") else []
            ext.extra_compile_args = flags["debug" if DEBUG else "release"] + threads + variant
            ext.extra_link_args = threads + strip
        super().build_extensions()


setup(ext_modules=extensions(), cmdclass={"build_ext": build_ext_per_compiler},
      options={"build": {"build_base": str(BUILD)}})
