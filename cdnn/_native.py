"""The compiled kernels: the AVX2 build where the CPU has AVX2, else the portable one.

setup.py builds src/_network.pyx and src/_kernels.pyx for any x86-64 CPU (cdnn._network,
cdnn._kernels) and, on x86-64, again with AVX2 (cdnn._network_avx2, cdnn._kernels_avx2). The two
compute the same bits; the AVX2 build's element-wise loops are twice as wide. CDNN_KERNELS=portable
forces the portable build (to compare the two, or on a CPU that misreports its features).
"""
import os

from cdnn import _kernels, _network

VARIANT = "portable"
if os.environ.get("CDNN_KERNELS", "") != "portable" and _network.cpu_supports_avx2():
    try:
        from cdnn import _kernels_avx2 as _kernels, _network_avx2 as _network  # noqa: F811
        VARIANT = "avx2"
    except ImportError:     # built without the AVX2 variant (another architecture or compiler)
        pass

__all__ = ["VARIANT", "_kernels", "_network"]
