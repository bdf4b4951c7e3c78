"""The threads cdnn's kernels run on.

A training step (and a large predict) splits its rows across cdnn's own OpenMP threads, each
calling single-threaded GEMMs from the BLAS that scipy ships (`scipy.linalg.cython_blas`); a
predict of a few rows of a large network splits each layer's units instead. While such a kernel
runs, the BLAS is held at one thread so the two pools never oversubscribe the cores; small calls
(one row of a small network) use one cdnn thread and the BLAS as it is.

`set_num_threads(n)` sets cdnn's thread count and every BLAS and OpenMP pool of the process
(through threadpoolctl), so numpy's products follow the same limit. The default is the number of
cores this process may use.

Results are bit-identical for a given seed and thread count; with another thread count the
GEMMs take other shares of the rows or units, so results agree to rounding only (see the
README's Reliability section).
"""
from __future__ import annotations

import ctypes
import itertools
import os
import threading

from threadpoolctl import threadpool_limits

from cdnn._validation import check_positive_int

_num_threads: int | None = None     # None: every usable core


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


_USABLE_CORES = _usable_cores()     # read once: every predict asks


def get_num_threads() -> int:
    """The number of threads cdnn's kernels use."""
    return _num_threads or _USABLE_CORES


def set_num_threads(n: int) -> None:
    """Use n threads in cdnn's kernels and in every BLAS and OpenMP pool of the process."""
    global _num_threads
    _num_threads = check_positive_int(n, "the number of threads")
    threadpool_limits(limits=_num_threads)


class limit_threads:
    """`with cdnn.limit_threads(n): …` runs the block with n threads (cdnn's and every pool's),
    then restores the previous counts."""

    def __init__(self, n: int):
        self.n = check_positive_int(n, "the number of threads")

    def __enter__(self):
        global _num_threads
        self._previous, _num_threads = _num_threads, self.n
        self._pools = threadpool_limits(limits=self.n)
        return self

    def __exit__(self, *exc):
        global _num_threads
        self._pools.restore_original_limits()
        _num_threads = self._previous


_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved: list = []
_kernel_blas: list | None = None


class _BlasThreads:
    """Reads and sets one BLAS library's thread count. For OpenBLAS on its own threads, through
    its C functions directly: a call of ~0.1 µs (a one-row predict holds the BLAS), from any
    Python thread (threadpoolctl lets only one Python thread change OpenBLAS's count). Any
    other library through threadpoolctl's controller."""

    def __init__(self, lib):
        self.get, self.set = lib.get_num_threads, lib.set_num_threads
        if lib.internal_api == "openblas" and getattr(lib, "threading_layer", "") == "pthreads":
            dll = ctypes.CDLL(lib.filepath)     # already loaded: the same library
            for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
                get = getattr(dll, f"{prefix}openblas_get_num_threads{suffix}", None)
                set_ = getattr(dll, f"{prefix}openblas_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    self.get, self.set = get, set_
                    break


def _kernel_blas_threads() -> list:
    """The thread controls of the BLAS the kernels call: scipy's own when its wheel ships one
    (numpy's, beside it, is left alone), else every BLAS. Found once: threadpool_limits
    rescans every library at each call (700 µs)."""
    global _kernel_blas
    if _kernel_blas is None:
        import scipy.linalg.cython_blas  # noqa: F401  (loaded, so that it is found)
        from threadpoolctl import ThreadpoolController
        blas = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        _kernel_blas = [_BlasThreads(lib) for lib in [
            lib for lib in blas if "scipy" in os.path.basename(os.path.dirname(lib.filepath))]
            or blas]
    return _kernel_blas


class single_threaded_blas:
    """Hold the BLAS at one thread while cdnn's own threads call it (nests across Python
    threads: the first to enter sets the limit, the last to leave restores it)."""

    def __enter__(self):
        global _blas_users, _blas_saved
        with _blas_lock:
            if _blas_users == 0:
                _blas_saved = [(blas, blas.get()) for blas in _kernel_blas_threads()]
                for blas, _ in _blas_saved:
                    blas.set(1)
            _blas_users += 1

    def __exit__(self, *exc):
        global _blas_users
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for blas, n in _blas_saved:
                    blas.set(n)
