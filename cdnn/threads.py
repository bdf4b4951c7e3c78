"""The thread pools cdnn's kernels run on.

cdnn's GEMMs call the BLAS that scipy ships (`scipy.linalg.cython_blas`, an OpenBLAS in the
scipy wheels); numpy loads its own OpenBLAS beside it. cdnn uses no OpenMP pool of its own.
These functions set every BLAS and OpenMP pool loaded in the process (through threadpoolctl),
so numpy's matrix products follow the same limit and no two pools oversubscribe the cores.

Results are bit-identical for a given seed and thread count; with another thread count the BLAS
may split its sums differently, so they agree to rounding only (see docs/RELIABILITY.md).
"""
from __future__ import annotations

import os

from threadpoolctl import threadpool_info, threadpool_limits

import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS the kernels use, so it is seen)

from cdnn._validation import check_positive_int


def set_num_threads(n: int) -> None:
    """Use n threads in every BLAS (and OpenMP) pool of the process, until changed again."""
    threadpool_limits(limits=check_positive_int(n, "the number of threads"))


def get_num_threads() -> int:
    """The thread count of the BLAS that cdnn's kernels call (scipy's)."""
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    if not blas:
        return 1
    scipy_dir = os.path.dirname(os.path.dirname(scipy.__file__))
    ours = [lib for lib in blas if lib["filepath"].startswith(os.path.join(scipy_dir, "scipy"))]
    return (ours or blas)[0]["num_threads"]


def limit_threads(n: int) -> threadpool_limits:
    """`with cdnn.limit_threads(n): …` runs the block with n threads per pool, then restores
    the previous counts."""
    return threadpool_limits(limits=check_positive_int(n, "the number of threads"))
