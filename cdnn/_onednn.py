"""oneDNN's bfloat16 matrix products (matmul_precision="bfloat16"), found at run time.

The core wheel neither links nor ships oneDNN: `pip install 'cdnn[onednn]'` installs the
onednn-cpu-gomp wheel, whose libdnnl is loaded here, as cdnn/distributed.py loads MPI, and
the addresses of dnnl_gemm_bf16bf16f32 (bf16 inputs, float32 accumulation and output) and of
the OpenMP runtime's omp_get_max_threads/omp_set_num_threads go to the kernels
(src/matmul.pxd). The kernels call oneDNN on one OpenMP thread from each of cdnn's threads, so
the process keeps one team: cdnn's.

bf16 pays only where the CPU multiplies bf16 in hardware: AMX-BF16 (Intel Xeon since Sapphire
Rapids) or AVX512-BF16 (Intel Cooper Lake, AMD Zen 4 and later). Elsewhere oneDNN would
emulate it, slower than float32, so asking for it is an error naming what is missing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import site
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple

INSTALL_HINT = "pip install 'cdnn[onednn]'"
LIBRARY_NAMES = ("libdnnl.so.3", "libdnnl.so", "libdnnl.3.dylib", "libdnnl.dylib", "dnnl.dll")
# dnnl_cpu_isa_t (oneapi/dnnl/dnnl_types.h): each ISA's value holds the bits of those below it
ISA_AVX512_BF16 = 0xE7
ISA_AMX = 0xFEF


class MissingOneDNN(ImportError):
    """matmul_precision="bfloat16" without the oneDNN library."""


class UnsupportedCPU(ValueError):
    """matmul_precision="bfloat16" on a CPU without bf16 arithmetic (AMX or AVX512-BF16): a
    setting this machine cannot honour at speed."""


# dnnl_sgemm takes a float32 product from OpenBLAS where it measured faster on one thread
# (cdnn/bench/studies/onednn_gemm.py, bench/RESULTS.md): at least this many columns, and columns × depth;
# the narrow output layers' products (n ≤ 10) stay with OpenBLAS
SGEMM_MIN_N = 64
SGEMM_MIN_NK = 8192


class Products(NamedTuple):
    """oneDNN's products for the kernels (src/_network.pyx's Network takes addresses)."""
    addresses: tuple[int, int, int, int, int, int]  # bf16 gemm (or 0), sgemm (or 0), sgemm's
    engine: str                                     #   min n, min n·k, omp_get/set threads
    library: str


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
                ("gpu_runtime", ctypes.c_uint)]


def _candidates():
    """Where the onednn-cpu-* wheels put libdnnl: the lib folder of the install scheme's data
    path (the environment's prefix, or the user base for pip install --user)."""
    if os.environ.get("CDNN_ONEDNN_LIBRARY"):
        yield os.environ["CDNN_ONEDNN_LIBRARY"]
        return
    folders = [Path(sysconfig.get_paths()["data"]) / "lib", Path(sys.prefix) / "lib",
               Path(site.getuserbase()) / "lib", Path(sys.base_prefix) / "lib"]
    for folder in dict.fromkeys(folders):
        for name in LIBRARY_NAMES:
            if (folder / name).exists():
                yield str(folder / name)
    found = ctypes.util.find_library("dnnl")
    if found:
        yield found


def load_library() -> tuple[ctypes.CDLL, str]:
    """libdnnl, or MissingOneDNN naming the extra to install."""
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            lib.dnnl_gemm_bf16bf16f32, lib.dnnl_sgemm, lib.omp_set_num_threads  # noqa: B018
            return lib, path
        except (OSError, AttributeError) as e:
            errors.append(f"{path}: {e}")
    where = f" (tried {'; '.join(errors)})" if errors else ""
    raise MissingOneDNN(f"matmul_precision='bfloat16' needs oneDNN: {INSTALL_HINT}{where}",
                        name="'cdnn[onednn]'")


def cpu_engine(isa: int) -> str | None:
    """The matrix engine oneDNN runs bf16 products on, for its effective ISA; None: none."""
    if isa & ISA_AMX == ISA_AMX:
        return "AMX"
    if isa & ISA_AVX512_BF16 == ISA_AVX512_BF16:
        return "AVX512-BF16"
    return None


def _address(f) -> int:
    return ctypes.cast(f, ctypes.c_void_p).value


def _version(lib) -> str:
    lib.dnnl_version.restype = ctypes.POINTER(_Version)
    v = lib.dnnl_version().contents
    return f"{v.major}.{v.minor}.{v.patch}"


@functools.cache
def sgemm_products() -> Products | None:
    """oneDNN's sgemm for the float32 products where it beats OpenBLAS, when the extra is
    installed; None (OpenBLAS for every product) without it, or with CDNN_ONEDNN_SGEMM=0."""
    if os.environ.get("CDNN_ONEDNN_SGEMM", "1") == "0":
        return None
    try:
        lib, path = load_library()
    except MissingOneDNN:
        return None
    return Products((0, _address(lib.dnnl_sgemm), SGEMM_MIN_N, SGEMM_MIN_NK,
                     _address(lib.omp_get_max_threads), _address(lib.omp_set_num_threads)),
                    f"oneDNN {_version(lib)} sgemm and OpenBLAS float32, by shape", path)


@functools.cache
def bf16_products() -> Products:
    """The kernels' bf16 product: oneDNN's addresses and the name of the engine it runs on."""
    lib, path = load_library()
    lib.dnnl_get_effective_cpu_isa.restype = ctypes.c_int
    isa = lib.dnnl_get_effective_cpu_isa()
    engine = cpu_engine(isa)
    if engine is None:
        raise UnsupportedCPU(
            f"matmul_precision='bfloat16' needs a CPU with AMX-BF16 or AVX512-BF16 (Intel Xeon "
            f"since Cooper Lake/Sapphire Rapids, AMD Zen 4 and later); oneDNN finds ISA "
            f"{isa:#x} here{_limit_note()}, where bf16 would be emulated, slower than float32: "
            f"use matmul_precision='float32'")
    return Products((_address(lib.dnnl_gemm_bf16bf16f32), 0, 0, 0,
                     _address(lib.omp_get_max_threads), _address(lib.omp_set_num_threads)),
                    f"oneDNN {_version(lib)} bf16 ({engine})", path)


def _limit_note() -> str:
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return f" (limited by ONEDNN_MAX_CPU_ISA={limit})" if limit else ""
