"""The threads cdnn's kernels run on: the user's ceiling, and the BLAS bracketing.

cdnn's kernels run on cdnn's own OpenMP team, each thread calling single-threaded GEMMs from the
BLAS that scipy ships (`scipy.linalg.cython_blas`); while they run, that BLAS is held at one
thread (`single_threaded_blas`) so the two pools never oversubscribe the cores. How many threads
a call gets follows its work, up to the ceiling set here: that plan is cdnn/_engine.py's.

`set_num_threads(n)` sets cdnn's ceiling and every BLAS and OpenMP pool of the process (through
threadpoolctl), so numpy's products follow the same limit. The default is the number of cores
this process may use.

Results are bit-identical for a given seed and team size; with another team the GEMMs take
other shares of the rows or units, so results agree to rounding only (see the README's
Reliability section).
"""
from __future__ import annotations

import ctypes
import itertools
import os
import threading

from threadpoolctl import threadpool_limits

from cdnn._validation import check_positive_int

MAX_THREADS = 2**16     # more than any machine has; OpenMP and the BLAS take a C int

_num_threads: int | None = None     # None: every usable core
_pools_lock = threading.Lock()
_open_limits: list = []             # every Python thread's open blocks, oldest first
_pools_before = None                # the pools' limits before the oldest open block


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


_USABLE_CORES = _usable_cores()     # read once: every predict asks


def get_num_threads() -> int:
    """The most threads cdnn's kernels use."""
    latest = _open_limits[-1:]      # a slice: another thread may close it meanwhile
    if latest:
        return latest[0].n
    return _num_threads or _USABLE_CORES


def set_num_threads(n: int) -> None:
    """Use at most n threads in cdnn's kernels, and n in every BLAS and OpenMP pool of the
    process. cdnn's team for a call is smaller when the call is small."""
    global _num_threads
    _num_threads = check_positive_int(n, "the number of threads", maximum=MAX_THREADS)
    threadpool_limits(limits=_num_threads)


class limit_threads:
    """`with cdnn.limit_threads(n): …` runs the block with at most n threads, cdnn's and every
    BLAS and OpenMP pool's (the process's, as threadpoolctl's). Blocks may nest and may be open
    in several Python threads at once: the limit is the most recently opened block's still
    open, and the previous limits return when the last one closes."""

    def __init__(self, n: int):
        self.n = check_positive_int(n, "the number of threads", maximum=MAX_THREADS)

    def __enter__(self):
        global _pools_before
        with _pools_lock:
            if not _open_limits:
                _pools_before = threadpool_limits(limits=self.n)
            else:
                threadpool_limits(limits=self.n)
            _open_limits.append(self)
        return self

    def __exit__(self, *exc):
        with _pools_lock:
            _open_limits.remove(self)
            if _open_limits:
                threadpool_limits(limits=_open_limits[-1].n)
            else:
                _pools_before.restore_original_limits()


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
