"""Data-parallel training over MPI: `cdnn.Trainer(net, opt, batch_size=B, comm=MPI.COMM_WORLD)`.

Launch N processes (`mpiexec -n N python train.py`); every one builds the same network,
optimizer and Trainer and calls fit. B is the global batch: each step, every rank computes the
gradient of its part of the global batch, the step's exchange phase sums the parts across
ranks inside the native run (MPI_Allreduce, called from C without the GIL: src/exchange.pxd),
and every rank applies the same update, so the parameters stay identical on every rank. At the
start of fit, rank 0's parameters, optimizer state and step count, learning rate and shuffling
state go to every rank.

The data:
- replicated (the default): every rank passes the same X, y (e.g. np.load(path, mmap_mode="r")
  on shared storage). Every rank draws the same permutation; rank r takes its contiguous
  part of each global batch. N ranks reproduce one process with batch B, to rounding (dropout
  aside: each rank draws its own masks).
- sharded (fit(X_local, y_local, sharded=True)): each rank passes only its rows; shards may
  differ in length. An epoch is ceil(Σ shard rows / B) steps of B rows; rank r gives
  B // N rows to every step (the first B % N ranks one more), drawn from its own endless
  stream of shuffled passes over its shard. With equal shards that is every row once per
  epoch; a smaller shard's rows come round more often than a larger one's.

Settings: before the first collective of a fit, every rank's network, optimizer, batch size,
epochs, data mode, rows (replicated) and validation are compared (MPIGroup.agree_on); on any
difference every rank raises RankError naming it, instead of waiting for ever in a broadcast
or allreduce of another size or count.

Faults: wherever a rank can fail in Python (checking the data, between native runs,
validation, callbacks, Ctrl-C), the ranks agree on a status collectively before anyone enters
the next collective, and every rank raises RankError naming the rank and the cause (Ctrl-C:
every rank stops as one process does, history.interrupted). Inside a native run the steps
agree on their own (the exchange sums a failure flag first). A rank that dies outright is
MPI's to handle: its launcher ends the job.

mpi4py is needed only here (pip install 'cdnn[mpi]'); the compiled core has no MPI in it.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import sys
import warnings
import zlib

import numpy as np

from cdnn import threads
from cdnn._native import _network


class RankError(RuntimeError):
    """A rank of a distributed fit failed; every rank raises this, naming it and the cause."""


def mpi_library():
    """The MPI library mpi4py loaded (its path), for MPI_Allreduce's address."""
    with open("/proc/self/maps") if os.path.exists("/proc/self/maps") else \
            contextlib.nullcontext(None) as maps:
        paths = {line.split()[-1] for line in maps or () if "mpi" in line.rsplit("/", 1)[-1]
                 and ".so" in line}
    for path in sorted(paths) + [ctypes.util.find_library("mpi")]:
        if path:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(path).MPI_Allreduce
                return path
    raise RuntimeError("cannot find the MPI library that mpi4py loaded")


def find_mpiexec() -> str | None:
    """mpiexec beside this Python (pip's mpich puts it there), else on PATH."""
    return shutil.which("mpiexec", path=os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


def native_exchange(comm, dtype, n: int):
    """The exchange phase over comm for n parameters of dtype (src/exchange.pxd); no
    collective call here (see check_exchange). MPI_IN_PLACE is a macro, not a symbol: its
    value is known for MPICH's ABI (-1) and Open MPI's (1); with any other library the sum
    goes to a second buffer and is copied back."""
    from mpi4py import MPI

    lib = ctypes.CDLL(mpi_library())
    allreduce = ctypes.cast(lib.MPI_Allreduce, ctypes.c_void_p).value
    pointer_handles = MPI._sizeof(MPI.Comm) == ctypes.sizeof(ctypes.c_void_p)
    version = MPI.Get_library_version()
    in_place = -1 if "MPICH" in version and not pointer_handles else (
        1 if "Open MPI" in version else 0)
    itemsize = np.dtype(dtype).itemsize
    return _network.MPIExchange(allreduce, pointer_handles, MPI._handleof(comm),
                                MPI._handleof(MPI.SUM),
                                MPI._handleof(MPI.FLOAT if itemsize == 4 else MPI.DOUBLE),
                                MPI._handleof(MPI.DOUBLE), in_place, n, itemsize)


def check_exchange(mpi, comm):
    """A collective sum through the native call: the handles are right, or this says so."""
    probe = np.array([comm.rank + 1.0])
    mpi.allreduce(probe)
    if probe[0] != comm.size * (comm.size + 1) / 2:
        raise RuntimeError(f"the native MPI_Allreduce summed {probe[0]}, not "
                           f"{comm.size * (comm.size + 1) / 2}")


class ProcessGroup:
    """The processes of one fit, as Trainer.fit sees them: it calls every method at the same
    point on every process, with no branch on how many there are. This, the group of one
    process, does nothing: a failure raises where it happens, Ctrl-C raises at the next
    agree(), the sums and the evaluation are this process's own. MPIGroup is the same
    interface over the ranks of an MPI communicator."""

    rank, size = 0, 1

    def section(self, what: str):
        """A block in which this process alone may fail (MPIGroup: the error waits for agree)."""
        return contextlib.nullcontext()

    def agree(self, interrupted: bool = False):
        """Every process at the same point: raise if any failed, KeyboardInterrupt if any was
        interrupted (Ctrl-C, deferred by the step runner)."""
        if interrupted:
            raise KeyboardInterrupt

    def agree_on(self, settings: dict):
        """Before the first collective that the settings shape: they are the same everywhere."""

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def sum(self, values) -> np.ndarray:
        return np.array(values, dtype=np.float64)

    def columns(self, mine: np.ndarray) -> np.ndarray:
        """Every process's 1-D array of one length, side by side (length × processes)."""
        return np.asarray(mine, dtype=np.float64)[:, None]

    def broadcast_state(self, trainer):
        """Rank 0's parameters, optimizer state and streams to every process."""

    def check_identical(self, trainer):
        """After an epoch: the parameters are the same bits everywhere."""

    def common_weight_scale(self, batch, given):
        """Sharded rows' sample weights, to one scale across the processes."""
        return batch

    def rows_everywhere(self, n: int) -> list[int]:
        """Every process's count of training rows."""
        return [n]

    def own_seed(self, seed: int) -> int:
        """This process's dropout stream (each rank its own masks)."""
        return seed

    def gradient_exchange(self, dtype, n: int):
        """What each training step sums its gradient with (None: nothing to sum)."""
        return None

    def evaluate(self, net, val, sharded: bool) -> dict:
        """Validation metrics over every process's validation rows."""
        return net.evaluate_batch(val)


class MPIGroup(ProcessGroup):
    """A fit's MPI ranks: status agreement, broadcasts, reductions and the data's split. The
    ranks on a node share its cores (cdnn.threads)."""

    def __init__(self, comm):
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ImportError("Trainer(comm=...) needs mpi4py and an MPI: pip install "
                              "'cdnn[mpi]'", name="mpi4py") from e

        if not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL:
            raise TypeError(f"comm must be an mpi4py communicator such as MPI.COMM_WORLD, "
                            f"got {comm!r}")
        self.MPI = MPI
        self.comm = comm
        self.rank, self.size = comm.rank, comm.size
        self.error: str | None = None
        self.interrupted = False
        threads.share_cores_between(self.ranks_on_this_node())

    def ranks_on_this_node(self) -> int:
        """The ranks that share this node's cores."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return node.size
        finally:
            node.Free()

    # --- agreeing on status -----------------------------------------------------------------

    @contextlib.contextmanager
    def section(self, what: str):
        """Run a block in which this rank alone may fail: the error is kept for agree()."""
        try:
            yield
        except KeyboardInterrupt:
            self.interrupted = True
        except Exception as e:          # noqa: BLE001 - every rank must hear of it
            if self.error is None:
                self.error = f"{what}: {type(e).__name__}: {e}"
                self.cause = e

    def agree(self, interrupted: bool = False):
        """Every rank calls this at the same point: if any rank failed, every rank raises
        RankError naming it; if any was interrupted (Ctrl-C), every rank raises
        KeyboardInterrupt."""
        status = 2 if self.error else int(interrupted or self.interrupted)
        worst = self.comm.allreduce(status, op=self.MPI.MAX)
        if worst == 0:
            return
        reports = self.comm.allgather((status, self.error))
        failed = [(r, why) for r, (s, why) in enumerate(reports) if s == 2]
        if failed:
            text = "; ".join(f"rank {r} of {self.size}: {why}" for r, why in failed)
            raise RankError(text) from (self.cause if self.error else None)
        ranks = ", ".join(str(r) for r, (s, _) in enumerate(reports) if s == 1)
        print(f"rank {self.rank}: Ctrl-C on rank {ranks}: every rank stops", file=sys.stderr)
        raise KeyboardInterrupt

    def agree_on(self, settings: dict):
        """Every rank calls this once at the start of a fit, before any collective whose
        shape or count follows from the settings (the broadcasts of the state, the steps'
        allreduces): a rank with another network, optimizer, batch size, number of epochs,
        rows or validation would wait for ever in a call the others never make, or train to
        nonsense. If any setting differs, every rank raises RankError naming each such setting
        and which ranks hold which value."""
        everyone = self.comm.allgather(settings)
        differences = []
        for name in settings:
            values = [rank_settings.get(name) for rank_settings in everyone]
            if any(value != values[0] for value in values):
                held = {}           # value -> ranks, in order of the first rank holding it
                for rank, value in enumerate(values):
                    held.setdefault(repr(value), (value, []))[1].append(rank)
                differences.append(f"ranks disagree on {name}: " + ", ".join(
                    f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} has "
                    f"{value}" for value, ranks in held.values()))
        if differences:
            raise RankError("; ".join(differences) + " (every rank must build the same "
                            "network, optimizer and Trainer and call fit alike)")

    def any(self, flag: bool) -> bool:
        return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX))

    def rows_everywhere(self, n: int) -> list[int]:
        return self.comm.allgather(n)

    def own_seed(self, seed: int) -> int:
        return (seed + self.rank) % 2**63

    def gradient_exchange(self, dtype, n: int):
        """The native exchange (MPI_Allreduce from the steps, src/exchange.pxd), checked with
        one collective sum once every rank has built its own."""
        with self.section("setting up the gradient exchange"):
            exchange = native_exchange(self.comm, dtype, n)
        self.agree()
        check_exchange(exchange, self.comm)
        return exchange

    # --- state --------------------------------------------------------------------------------

    def broadcast_state(self, trainer):
        """Rank 0's parameters, optimizer state, step count, learning rate, shuffling state
        and dropout seed to every rank."""
        opt, net = trainer.optimizer, trainer.net
        for array in (net.params, *opt.state_for(net.params).values()):
            self.comm.Bcast(array, root=0)
        opt.steps, opt.lr, trainer.dropout_seed, rng_state = self.comm.bcast(
            (opt.steps, opt.lr, trainer.dropout_seed, trainer.rng.bit_generator.state), root=0)
        trainer.rng.bit_generator.state = rng_state

    def check_identical(self, trainer):
        """After an epoch: the parameters' checksums agree on every rank (MPI does not promise
        that an allreduce gives every rank the same bits, though the common algorithms do);
        if not, rank 0's go to everyone, with a warning."""
        crc = zlib.crc32(trainer.net.params.view(np.uint8))
        if len(set(self.comm.allgather(crc))) > 1:
            warnings.warn("the ranks' parameters drifted apart (MPI_Allreduce gave ranks "
                          "different bits); resynchronising from rank 0", RuntimeWarning)
            self.broadcast_state(trainer)

    def common_weight_scale(self, batch, given):
        """Sharded rows: the engine scaled each rank's weights (given: the caller's, or None
        for all 1) to a largest of 1; rescale them to the largest over every rank, so that
        weights compare across ranks as given (and the largest is still 1)."""
        top = 1.0 if given is None else float(np.max(np.asarray(given, dtype=np.float64)))
        overall = self.comm.allreduce(top, op=self.MPI.MAX)
        if overall == top and (given is not None or overall == 1.0):
            return batch
        weights = batch.weights if batch.weights is not None else np.ones(
            len(batch.X), batch.X.dtype)
        return batch._replace(weights=(weights * (top / overall)).astype(batch.X.dtype))

    def columns(self, mine: np.ndarray) -> np.ndarray:
        """Every rank's 1-D float64 array of one length, side by side (length × ranks)."""
        out = np.empty((self.size, len(mine)))
        self.comm.Allgather(np.ascontiguousarray(mine, dtype=np.float64), out)
        return out.T.copy()

    def sum(self, values) -> np.ndarray:
        out = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, out, op=self.MPI.SUM)
        return out

    def evaluate(self, net, val, sharded: bool) -> dict:
        """Validation metrics over every rank's validation rows (sharded), or over the one
        replicated set with each rank evaluating its part."""
        if not sharded:
            part = slice(*np.linspace(0, len(val.X), self.size + 1).astype(int)[
                self.rank:self.rank + 2])
            val = type(val)(*(None if a is None else a[part] for a in val))
        n = len(val.X)
        weight = n if val.weights is None else float(val.weights.sum())
        loss, correct = net.engine.evaluate(net.params, val) if n else (0.0, 0.0)
        loss_sum, correct_sum, total = self.sum([loss * weight if n else 0.0, correct, weight])
        metrics = {"loss": float(loss_sum / total) if total > 0 else float("nan")}
        if net.is_classifier:
            metrics["accuracy"] = float(correct_sum / total) if total > 0 else float("nan")
        return metrics
