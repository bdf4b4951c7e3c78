"""The threads cdnn's kernels run on: the ceiling, cdnn's pool as threadpoolctl sees it, and the
BLAS bracketing.

cdnn's kernels run on cdnn's own thread pool (src/team.pxd), each thread calling
single-threaded GEMMs from the BLAS that scipy ships (`scipy.linalg.cython_blas`); while they
run, that BLAS is held at one thread (`single_threaded_blas`) so the two pools never
oversubscribe the cores. How many threads a call gets follows its work, up to the ceiling
read here: that plan is cdnn/_engine.py's.

The ceiling is the smallest of, as the rest of the ecosystem expects:
- `cdnn.set_num_threads(n)`, or the innermost open `cdnn.limit_threads(n)` block;
- the environment: CDNN_NUM_THREADS, OMP_NUM_THREADS (the first of a list) and
  OMP_THREAD_LIMIT, read once at import, as OpenMP reads them;
- threadpoolctl's limit on cdnn's pool: `threadpool_limits(n)` (cdnn's pool is listed by
  `threadpool_info()`, user_api "openmp", internal_api "cdnn");
- the cores this process may run on: its CPU affinity and its cgroup's CPU quota;
- with MPI, this node's cores shared between the ranks on it (`share_cores_between`).
So joblib/loky workers (which set OMP_NUM_THREADS from n_jobs), Dask workers and
GridSearchCV(n_jobs=k) get one thread each on a machine of k cores, with no code from the user.

`set_num_threads(n)` also sets every BLAS and OpenMP pool of the process (through
threadpoolctl), so numpy's products follow the same limit.

Results are bit-identical for a given seed and team size; with another team the GEMMs take
other shares of the rows or units, so results agree to rounding only (see docs/GUIDE.md,
Reliability).
"""
from __future__ import annotations

import ctypes
import itertools
import math
import os
import threading
import warnings

from threadpoolctl import LibController, register, threadpool_limits

from cdnn._native import _network
from cdnn._validation import check_positive_int

MAX_THREADS = 2**16     # more than any machine has; the kernels take a C int

_num_threads: int | None = None     # set_num_threads's; None: no limit of the user's
_cores_shared_by = 1                # MPI ranks on this node
_pools_lock = threading.Lock()
_open_limits: list = []             # every Python thread's open blocks, oldest first
_pools_before = None                # the pools' limits before the oldest open block


def _env_limit() -> int | None:
    """The smallest positive count among CDNN_NUM_THREADS, OMP_NUM_THREADS (its first
    entry: OpenMP reads "4,2" as 4 at the outer level) and OMP_THREAD_LIMIT."""
    counts = []
    for name in ("CDNN_NUM_THREADS", "OMP_NUM_THREADS", "OMP_THREAD_LIMIT"):
        text = os.environ.get(name, "").strip()
        if not text:
            continue
        first = text.split(",")[0].strip()
        if first.isdigit() and int(first) > 0:
            counts.append(int(first))
        else:
            warnings.warn(f"{name}={text!r} is not a positive thread count: cdnn ignores it",
                          RuntimeWarning, stacklevel=2)
    return min(counts, default=None)


def _cgroup_quota() -> int | None:
    """The CPUs a cgroup CPU quota allows (cgroup v2's cpu.max, or v1's cfs quota) along this
    process's cgroup path, rounded up; None where none is set or it cannot be read."""
    quotas = []
    try:
        with open("/proc/self/cgroup") as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    for _, controllers, path in entries:
        if controllers == "":                                   # v2
            folder, files = "/sys/fs/cgroup", ("cpu.max",)
        elif "cpu" in controllers.split(","):                   # v1
            folder, files = "/sys/fs/cgroup/cpu", ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):                 # this cgroup and its parents
            quota = _read_quota(os.path.join(folder, *parts[:depth]), files)
            if quota is not None:
                quotas.append(quota)
    return min(quotas, default=None)


def _read_quota(folder: str, files: tuple[str, ...]) -> int | None:
    try:
        fields = []
        for name in files:
            with open(os.path.join(folder, name)) as f:
                fields += f.read().split()
        quota, period = fields[0], int(fields[1])
        if quota in ("max", "-1") or period <= 0:
            return None
        return max(1, math.ceil(int(quota) / period))
    except (OSError, ValueError, IndexError):
        return None


def _usable_cores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, _cgroup_quota() or cores)


# read once, as OpenMP does: every call asks for the ceiling
_USABLE_CORES = _usable_cores()
_ENV_LIMIT = _env_limit()


def get_num_threads() -> int:
    """The most threads cdnn's kernels use now: the smallest of the limits above."""
    latest = _open_limits[-1:]      # a slice: another thread may close it meanwhile
    user = latest[0].n if latest else _num_threads
    ceiling = min(_USABLE_CORES // _cores_shared_by or 1, user or MAX_THREADS,
                  _ENV_LIMIT or MAX_THREADS)
    pool_limit = _network.pool_thread_limit()       # threadpoolctl's, 0 when none
    return max(1, min(ceiling, pool_limit or ceiling))


def set_num_threads(n: int) -> None:
    """Use at most n threads in cdnn's kernels, and n in every BLAS and OpenMP pool of the
    process. cdnn's team for a call is smaller when the call is small, and never more than
    the cores this process may use."""
    global _num_threads
    _num_threads = check_positive_int(n, "the number of threads", maximum=MAX_THREADS)
    threadpool_limits(limits=_num_threads)


def share_cores_between(ranks: int) -> None:
    """This node's cores are shared by `ranks` processes (MPI ranks on one node): each
    process's ceiling is its share of them."""
    global _cores_shared_by
    _cores_shared_by = check_positive_int(ranks, "the ranks on this node")


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


class _PoolController(LibController):
    """cdnn's thread pool, for threadpoolctl: threadpool_info() lists it and
    threadpool_limits(n) limits it, as it does OpenMP's and the BLAS's pools."""
    user_api = "openmp"
    internal_api = "cdnn"
    filename_prefixes = ("_network",)
    check_symbols = ("cdnn_pool_get_thread_limit", "cdnn_pool_set_thread_limit")

    def get_num_threads(self):
        return get_num_threads()

    def set_num_threads(self, num_threads):
        self.dynlib.cdnn_pool_set_thread_limit(int(num_threads))

    def get_version(self):
        from cdnn._version import __version__
        return __version__


register(_PoolController)


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
