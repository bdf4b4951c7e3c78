"""cdnn's execution layer: a network's compiled engine, its workspaces, the thread plan and the
BLAS bracketing. MLP, Trainer and the estimators run every kernel through an Engine; nothing
else calls the compiled modules' network.

The thread plan. cdnn's kernels run on cdnn's own thread pool (src/team.pxd) with the BLAS
held at one thread, so the two pools never oversubscribe the cores. The team follows the work
in a call: a thread is worth waking only for a few MFLOP of it, so small calls (an L-BFGS
iteration on a small network, a partial_fit on 50 rows) run on the calling thread alone.
cdnn/threads.py sets the ceiling (the user's limits, the environment's, the cores).
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from cdnn import _onednn, kinds
from cdnn._native import _network
from cdnn._sparse import SparseRows
from cdnn._validation import (as_float_array, check_labels, check_real, check_same_length,
                              check_sample_weight, check_X, scaled_weights)
from cdnn.threads import get_num_threads, limit_threads, single_threaded_blas

# FLOPs of a call per thread of its team: below this a second thread costs more (waking it,
# its barriers, its spinning afterwards) than it saves. 6 FLOPs per parameter and row for a
# gradient (forward, and two products backward), 2 for a forward pass.
MIN_FLOPS_PER_THREAD = 4_000_000
# Rows per thread and kernel call when predicting or evaluating: large enough for efficient
# GEMMs, small enough that a call's workspace stays within WORKSPACE_BYTES; KEEP_WORKSPACES are
# kept between calls for the next ones.
CHUNK_ROWS = 1024
WORKSPACE_BYTES = 16 << 20
KEEP_WORKSPACES = 2
# Weights × rows from which a prediction of a few rows (too few to share by rows) shares each
# layer's units instead, each thread reading only its part of the weights.
MIN_WORK_TO_SHARE_UNITS = 250_000
# One ready row always takes the short path (forward_row: one cdnn thread, the BLAS as it is,
# which threads a large gemv itself; no Python-side plan): sharing its units between threads
# lost at every width measured (bench/RESULTS.md, "One row: the short path against shared units").

def team_for(flops: float) -> int:
    """The threads worth waking for a call of this many FLOPs, within the user's ceiling."""
    return int(max(1, min(get_num_threads(), flops // MIN_FLOPS_PER_THREAD)))


def solver_threads(n_params: int):
    """A context for an optimizer that alternates with cdnn's calls, such as scipy's L-BFGS-B:
    its own BLAS work is about 50 FLOPs per parameter an iteration (a history of 10 pairs), and
    below MIN_FLOPS_PER_THREAD of it every BLAS pool runs on one thread. OpenBLAS wakes its
    threads for such small calls and their spinning costs more than they save: L-BFGS-B over a
    1,201-parameter quadratic, no cdnn at all, took 8.2 ms an iteration at 2 OpenBLAS threads
    and 0.32 ms at one on this 2-core machine (under load;
    cdnn/bench/studies/small_lbfgs_scipy_alone.py)."""
    if 50 * n_params >= MIN_FLOPS_PER_THREAD or team_for(math.inf) == 1:
        return contextlib.nullcontext()
    return limit_threads(1)


class Batch(NamedTuple):
    """Validated arrays, ready for the kernels: exactly one of labels and targets is set.
    labels are always the engine's own copy: the kernels read them without the GIL. The
    kernels take a Batch whole and read its fields by name."""
    X: np.ndarray
    labels: np.ndarray | None
    targets: np.ndarray | None
    weights: np.ndarray | None


def _check_distributions(targets: np.ndarray):
    """One-hot or probability rows for the softmax loss must each sum to 1: an all-zero row
    would train nothing and count as correct, an all-one row is no distribution."""
    sums = targets.sum(axis=1, dtype=np.float64)
    bad = np.flatnonzero(np.abs(sums - 1) > 1e-3)
    if bad.size:
        raise ValueError(f"y row {bad[0]} sums to {sums[bad[0]]:g}: one-hot or probability rows "
                         f"for softmax_cross_entropy must each sum to 1")


@runtime_checkable
class EngineInterface(Protocol):
    """What an engine provides: everything MLP, Trainer and the estimators ask of the code that
    runs a network. The CPU engine (Engine, below) is its first implementation; another device
    or matmul precision is another implementation chosen by cdnn._devices.make_engine, not a
    branch in network.py or training.py. docs/ARCHITECTURE.md, "The engine interface", says more.

    - The parameters: one flat buffer of n_params values of dtype (new_params), layer by layer
      W_0 (n_0 × n_1, row-major), b_0, W_1, b_1, …; MLP's weights and biases are views of it,
      gradients and optimizer state have its layout. Its arrays are of the module xp; asarray
      and to_host move values in and out.
    - prepare: validate a batch of rows (X, y, weights) into the engine's Batch once, for
      every later call (a device engine uploads it here); prepare_fit does it for a fit.
    - forward / evaluate / loss_and_grad: a call over every row of X or a Batch.
    - training_steps: a fit's steps, built once per fit (its buffers and workspace live as
      long as the fit); their run() trains a run of steps in one call, restoring the last good
      step when one fails; exchange (a process group's gradient_exchange) is summed into each
      step's gradient before the update.
    - Workspaces for forward/evaluate/loss_and_grad are the engine's to lend per call."""

    n_inputs: int
    n_outputs: int
    n_params: int
    dtype: np.dtype
    device: str
    matmul_precision: str
    matmul_engine: str      # what runs the products, in words

    xp: object      # the array module of the engine's arrays (numpy, CuPy)

    def new_params(self): ...
    def asarray(self, a): ...
    def to_host(self, a) -> np.ndarray: ...
    def probabilities(self, out): ...
    def prepare(self, X, y, sample_weight=None) -> Batch: ...
    def prepare_fit(self, X, y, sample_weight=None, validation_data=None,
                    validation_split: float = 0.0, class_weight=None): ...
    def forward(self, params, X): ...
    def evaluate(self, params, batch: Batch) -> tuple[float, float]: ...
    def loss_and_grad(self, params, batch: Batch) -> tuple[float, object]: ...
    def training_steps(self, params, optimizer, train: Batch, batch_size: int,
                       clip_norm: float, seed: int, lazy: bool = False, exchange=None): ...


# The matmul precisions: the inputs of every matrix product (forward, dW = aᵀδ, dX = δWᵀ) in
# the network's dtype through BLAS, or in bfloat16 through oneDNN (cdnn/_onednn.py) with
# float32 accumulation and outputs. Parameters, optimizer state, losses and the element-wise
# work stay in the network's dtype either way (cdnn/_devices.py lists every device's choices).
BLAS_ENGINE = "BLAS (scipy's OpenBLAS)"


def matmul_products(precision: str, dtype: np.dtype):
    """(the kernels' products for a network of dtype at this precision: None for BLAS, else
    oneDNN's addresses; the matrix engine's name). Errors name what is missing. float32 takes
    oneDNN's sgemm for the shapes where it beats OpenBLAS, when the [onednn] extra is in."""
    if precision != "bfloat16":
        sgemm = _onednn.sgemm_products() if np.dtype(dtype) == np.float32 else None
        if sgemm is not None:
            return sgemm.addresses, sgemm.engine
        return None, f"{BLAS_ENGINE} {np.dtype(dtype).name}"
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"matmul_precision='bfloat16' is for float32 networks; this one is "
                         f"{np.dtype(dtype).name} (use matmul_precision='float32')")
    products = _onednn.bf16_products()
    return products.addresses, products.engine


class Engine:
    """Runs one network's kernels: predict, evaluate, gradients and training steps. Its matmul
    precision chooses the kernels' matrix product (src/matmul.pxd)."""

    def __init__(self, layer_sizes, activations, loss: str, slope: float, dropout, l2: float,
                 dtype: np.dtype, matmul_precision: str = "float32"):
        products, self.matmul_engine = matmul_products(matmul_precision, dtype)
        self.matmul_precision = "bfloat16" if matmul_precision == "bfloat16" else "float32"
        self.network = _network.Network(layer_sizes,
                                        [kinds.ACTIVATIONS[a].kernel for a in activations],
                                        kinds.LOSSES[loss].kernel, slope, dropout, l2, products)
        self.n_inputs, self.n_outputs = layer_sizes[0], layer_sizes[-1]
        self.n_hidden_1 = layer_sizes[1]     # the first layer's width
        self.loss, self.dtype, self.l2 = loss, dtype, l2
        self.device = "cpu"
        self.n_params = self.network.n_params
        self._spare, self._spare_lock = [], threading.Lock()   # see _workspace

    xp = np          # the array module of the engine's arrays

    def new_params(self) -> np.ndarray:
        """A zeroed flat parameter buffer in this engine's layout."""
        return np.zeros(self.n_params, dtype=self.dtype)

    def asarray(self, a) -> np.ndarray:
        """a as an array where this engine keeps its parameters"""
        return np.asarray(a)

    def to_host(self, a) -> np.ndarray:
        """A numpy copy of one of this engine's arrays"""
        return np.array(a)

    def probabilities(self, out: np.ndarray) -> np.ndarray:
        """out := softmax rows, or the sigmoid of each output, in place"""
        if self.loss == "softmax_cross_entropy":
            _network.softmax_rows(out)
        else:
            _network.apply_activation(out, kinds.ACTIVATIONS["sigmoid"].kernel)
        return out

    # --- inputs ---------------------------------------------------------------------------

    def check_X(self, X, finite: bool = True) -> np.ndarray | SparseRows:
        X = check_X(X, self.dtype, self.n_inputs, finite)
        if isinstance(X, SparseRows) and self.network.bf16:
            raise ValueError("matmul_precision='bfloat16' takes dense X (a sparse first layer "
                             "is no matrix product); densify X or use matmul_precision="
                             "'float32'")
        return X

    def params_per_row(self, X) -> float:
        """The parameters a row of X works with: all of them for dense rows; for sparse rows,
        the first layer's only for the row's stored entries (the thread plan's FLOPs)."""
        if not isinstance(X, SparseRows):
            return self.n_params
        return self.n_params - (self.n_inputs - X.mean_entries()) * self.n_hidden_1

    def prepare(self, X, y, sample_weight=None) -> Batch:
        """Validate X, y and sample weights against the network."""
        X = self.check_X(X)
        n, k = X.shape[0], self.n_outputs
        y_array = np.asarray(y) if not hasattr(y, "nnz") else y
        if self.loss == "softmax_cross_entropy" and not (
                getattr(y_array, "ndim", 1) == 2 and y_array.shape[1] == k and k > 1):
            labels, targets = check_labels(y, k), None
            check_same_length(n, labels, "y")
        else:
            labels = None
            targets = as_float_array(y, "y", self.dtype, 2 if getattr(y_array, "ndim", 1) == 2
                                     and y_array.shape[1] != 1 else 1)
            targets = targets.reshape(len(targets), -1)
            check_same_length(n, targets, "y")
            if targets.shape[1] != k:
                columns = "column" if targets.shape[1] == 1 else "columns"
                raise ValueError(f"y has {targets.shape[1]} {columns}, the network {k} "
                                 f"output{'s' if k > 1 else ''}")
            if self.loss == "poisson" and (targets < 0).any():
                raise ValueError("targets for poisson must be ≥ 0")
            if self.loss not in ("mean_squared_error", "poisson") and (
                    (targets < 0) | (targets > 1)).any():
                raise ValueError(f"targets for {self.loss} must lie in [0, 1]")
            if self.loss == "softmax_cross_entropy":
                _check_distributions(targets)
        return Batch(X, labels, targets, check_sample_weight(sample_weight, n, self.dtype))

    def prepare_fit(self, X, y, sample_weight=None, validation_data=None,
                    validation_split: float = 0.0, class_weight=None) -> tuple[Batch, Batch | None]:
        """A fit's training and validation rows, validated (validation None without it):
        validation_data = (X, y[, sample_weight]), or the last validation_split of the rows
        (before shuffling), as Keras; class_weight multiplies the training rows' weights."""
        check_real(validation_split, "validation_split", 0, 1, high_open=True)
        if validation_data is not None and validation_split:
            raise ValueError("give validation_data or validation_split, not both")
        train = self.prepare(X, y, sample_weight)
        if validation_split:
            train, val = _split(train, validation_split)
        elif validation_data is not None:
            if len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be (X_val, y_val) or "
                                 "(X_val, y_val, sample_weight_val)")
            val = self.prepare(*validation_data)
        else:
            val = None
        if class_weight is not None:   # training rows only, as Keras: validation is unweighted
            train = _with_class_weight(train, class_weight, self.n_outputs,
                                       np.asarray(y).dtype.kind == "b")
            train = train._replace(weights=scaled_weights(train.weights,
                                                          "class_weight (times sample_weight)"))
        return train, val

    @contextlib.contextmanager
    def _workspace(self, rows: int):
        """A workspace of `rows` rows, lent for one call. Calls in several Python threads each
        get their own; between calls at most KEEP_WORKSPACES wait (the largest), so threads
        that have stopped predicting hold none."""
        size = rows * self.network.row_width
        with self._spare_lock:
            fits = [i for i, w in enumerate(self._spare) if w.size >= size]
            ws = self._spare.pop(fits[0]) if fits else None
        if ws is None:
            ws = np.empty(size, dtype=self.dtype)
        try:
            yield ws
        finally:
            with self._spare_lock:
                self._spare = sorted(self._spare + [ws], key=len)[-KEEP_WORKSPACES:]

    def _plan(self, X, flops_per_param: int) -> tuple[int, int]:
        """The team for a call over the rows of X, and the rows of its workspace: a share of at
        most CHUNK_ROWS rows for each thread, and at most WORKSPACE_BYTES in all."""
        rows = len(X)
        team = min(team_for(rows * flops_per_param * self.params_per_row(X)), rows)
        return team, team * self._share_rows(team, rows)

    def _share_rows(self, team: int, rows: int) -> int:
        row_bytes = self.network.row_width * np.dtype(self.dtype).itemsize
        return max(1, min(math.ceil(rows / team), CHUNK_ROWS,
                          WORKSPACE_BYTES // (team * row_bytes)))

    # --- the calls ------------------------------------------------------------------------

    def forward(self, params: np.ndarray, X) -> np.ndarray:
        """The output layer's values for the rows of X, shape (n, n_outputs)."""
        out = self.network.forward_row(params, X)   # one ready row with finite outputs: no
        if out is not None:                         # copy, no plan
            return out
        given, X = X, self.check_X(X, finite=False)   # the kernel checks each chunk's rows
        out = np.empty((X.shape[0], self.n_outputs), dtype=self.dtype)
        team, rows = self._plan(X, 2)
        threads = team_for(math.inf)
        if len(X) == 1:         # one row (converted): on this thread, as the short path
            team, share_units = 1, False
        else:                   # a few rows of a large network: every thread, a share of each
            share_units = (team == 1 and threads > 1     # layer's units
                           and len(X) * self.params_per_row(X) >= MIN_WORK_TO_SHARE_UNITS)
            if share_units:
                team, rows = threads, self._share_rows(1, len(X))
        with self._workspace(rows) as workspace, single_threaded_blas():
            self.network.forward(params, X, out, workspace, team, share_units)
        # the kernel gives the rows of a chunk holding NaN or ±inf NaN outputs: check_X names it
        return _finite_outputs(out, lambda: self.check_X(given))

    def evaluate(self, params: np.ndarray, batch: Batch) -> tuple[float, float]:
        """(mean loss, weighted count of correct predictions); dropout off, no L2 term."""
        team, rows = self._plan(batch.X, 2)
        with self._workspace(rows) as workspace, single_threaded_blas():
            return self.network.evaluate(params, batch, workspace, team)

    def loss_and_grad(self, params: np.ndarray, batch: Batch) -> tuple[float, np.ndarray]:
        """The mean loss (plus the L2 penalty) and its gradient in params' layout."""
        team, rows = self._plan(batch.X, 6)
        grads = np.empty((team, self.n_params), dtype=self.dtype)
        with self._workspace(rows) as workspace, single_threaded_blas():
            loss = self.network.loss_and_grad(params, batch, grads, workspace)
        return loss, grads[0] if team == 1 else grads[0].copy()

    def training_steps(self, params: np.ndarray, optimizer, train: Batch, batch_size: int,
                       clip_norm: float, seed: int, lazy: bool = False,
                       exchange=None) -> TrainingSteps:
        """The training steps of one fit over the rows of train (built once per fit); with
        exchange (cdnn.distributed), each step's gradient is summed across processes."""
        return TrainingSteps(self, params, optimizer, train, batch_size, clip_norm, seed, lazy,
                             exchange)


def _split(batch: Batch, fraction: float) -> tuple[Batch, Batch]:
    """The last `fraction` of the rows (before shuffling) for validation, as Keras does."""
    n_val = int(round(len(batch.X) * fraction))
    if not 0 < n_val < len(batch.X):
        raise ValueError(f"validation_split={fraction} leaves no rows for training or "
                         f"for validation out of {len(batch.X)}")
    cut = len(batch.X) - n_val
    head = Batch(*(None if a is None else a[:cut] for a in batch))
    tail = Batch(*(None if a is None else a[cut:] for a in batch))
    return head, tail


def _with_class_weight(batch: Batch, class_weight, n_outputs: int,
                       bool_labels: bool = False) -> Batch:
    """Multiply each row's sample weight by its class's weight ("balanced": n / (k · count)).
    Keys are class indices; False and True too where the labels given were bools."""
    if batch.labels is not None:
        classes = batch.labels
    elif n_outputs > 1:
        classes = batch.targets.argmax(axis=1)
    else:
        classes = (batch.targets[:, 0] > 0.5).astype(np.intc)
    k = max(n_outputs, 2)
    if class_weight == "balanced":
        counts = np.bincount(classes, minlength=k).astype(np.float64)
        table = np.where(counts > 0, len(classes) / (k * np.maximum(counts, 1)), 0.0)
    elif isinstance(class_weight, dict):
        table = np.ones(k)
        for c, w in class_weight.items():
            # a bool key is a class only where the labels were bools (numpy would read
            # table[True] as a mask of every class, and table[False] as none)
            if isinstance(c, (bool, np.bool_)):
                if not bool_labels:
                    raise ValueError(f"class_weight has a key {c!r}, a bool, but the labels "
                                     f"are not bools: the classes are the indices 0..{k - 1}")
                c = int(c)
            if not (isinstance(c, (int, np.integer)) and 0 <= c < k):
                raise ValueError(f"class_weight has a key {c!r} that is not a class in 0..{k - 1}")
            table[c] = check_real(w, "class_weight values", 0)
    else:
        raise TypeError("class_weight must be a dict {class: weight} or 'balanced'")
    weights = table[classes].astype(batch.X.dtype)
    if batch.weights is not None:
        weights *= batch.weights
    return batch._replace(weights=weights)


def _finite_outputs(out: np.ndarray, check_inputs=None) -> np.ndarray:
    """out, when every value is finite: finite inputs can still overflow a layer (float32 X of
    3e38), and a NaN output would pass for a prediction. Otherwise check_inputs() (when given)
    raises first for a non-finite input."""
    if not _network.all_finite(out.reshape(-1)):
        if check_inputs is not None:
            check_inputs()
        row = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise ValueError(f"the network's output for row {row} is not finite: its inputs or the "
                         f"parameters are too large for {out.dtype} (scale the inputs)")
    return out


class TrainingSteps:
    """The buffers of one fit and the native calls that run its training steps.

    The team shares every batch (src/step.pxd). Before each run of steps the parameters and
    optimizer state are copied, so that when an update turns a parameter non-finite they can be
    restored and the good steps replayed (the kernel detects the fault only after writing the
    update).

    lazy (sparse X only, opt-in): each step updates only the rows of the first layer's weights
    whose input column the batch holds, as PyTorch's SparseAdam does; the exact update reads
    and writes all of them (and their optimizer state) every step."""

    def __init__(self, engine: Engine, params: np.ndarray, optimizer, train: Batch,
                 batch_size: int, clip_norm: float, seed: int, lazy: bool = False,
                 exchange=None):
        self.params, self.optimizer, self.batch_size = params, optimizer, batch_size
        state = optimizer.state_for(params)
        self.team = min(batch_size, team_for(6 * engine.params_per_row(train.X) * batch_size))
        lazy_buffers = None
        if lazy:
            if not isinstance(train.X, SparseRows):
                raise ValueError("the lazy update is for sparse X (scipy.sparse); dense rows "
                                 "touch every row of the first layer's weights")
            if engine.l2 > 0:
                raise ValueError("the lazy update skips the first layer's rows without "
                                 "gradient, but the network's l2 penalty gives every row one; "
                                 "use the optimizer's weight_decay instead")
            lazy_buffers = _lazy_buffers(engine, train.X, batch_size, len(state))
        self.grad = np.zeros_like(params) if lazy else np.empty_like(params)   # lazy: dW₁ = 0
        # the lazy update restores a failed step itself: no copy of every parameter per run
        self.saved = [] if lazy else [np.empty_like(a) for a in (params, *state.values())]
        self.native = _network.TrainingSteps(
            engine.network, params=params, grad=self.grad, state=state,
            optimizer=optimizer.kernel_config(), train=train,
            workspace=np.empty(batch_size * engine.network.row_width, params.dtype),
            label_buffer=np.empty(batch_size, dtype=np.intc),
            batch_buffer=_batch_buffer(train.X, batch_size), n_threads=self.team,
            clip_norm=clip_norm, seed=seed, lazy=lazy_buffers)
        self.exchange = exchange
        self.native.exchange_over(exchange)

    def run(self, lrs: np.ndarray, order: np.ndarray, losses: np.ndarray,
            corrects: np.ndarray, factors=None) -> tuple[int, str | None]:
        """Run len(lrs) steps over the rows in order; return how many completed and, when a
        step failed (training diverged), why: the parameters are then those after the last
        completed step. factors: the steps' (loss factors, uniform) for the exchange."""
        live = (self.params, *self.optimizer.state.values())
        for saved, array in zip(self.saved, live):
            np.copyto(saved, array)
        with single_threaded_blas():
            done, failure, dirty = self._call(lrs, order, losses, corrects, factors)
            if dirty:
                for saved, array in zip(self.saved, live):
                    np.copyto(array, saved)
                if done:
                    self._call(lrs[:done], order[:done * self.batch_size], losses, corrects,
                               factors)
        self.optimizer.steps += done
        return done, failure

    def _call(self, lrs, order, losses, corrects, factors):
        if factors is not None:         # from the first step again, also for a replay
            self.exchange.set_factors(*factors)
        return self.native.run(order, self.batch_size, lrs, self.optimizer.steps, losses,
                               corrects)


class LazyBuffers(NamedTuple):
    """The lazy update's marks (one per input column), room for the rows of W₁ a batch can
    touch, and its undo buffer (their values and the other parameters', and the same of each
    optimizer state buffer)."""
    touched: np.ndarray
    touched_rows: np.ndarray
    undo: np.ndarray


def _lazy_buffers(engine: Engine, X: SparseRows, batch_size: int,
                  n_state: int) -> LazyBuffers:
    rooms = max(min(X.batch_entries_bound(batch_size), engine.n_inputs), 1)
    rest = engine.n_params - engine.n_inputs * engine.n_hidden_1
    return LazyBuffers(np.zeros(engine.n_inputs, np.uint8), np.empty(rooms, np.intp),
                       np.empty((1 + n_state) * (rooms * engine.n_hidden_1 + rest),
                                engine.dtype))


def _batch_buffer(X, batch_size: int):
    """Where each step gathers its batch's rows of X: dense rows, or CSR rows with room for the
    largest batch of a permutation of X's rows."""
    if isinstance(X, SparseRows):
        return SparseRows.buffer(batch_size, X.batch_entries_bound(batch_size), X.shape[1],
                                 X.dtype)
    return np.empty((batch_size, X.shape[1]), X.dtype)


# --- running a fit's steps ------------------------------------------------------------------

# Kernel calls per epoch: enough for a live progress bar and a prompt Ctrl-C, few enough that
# Python's share of the time stays negligible.
CALLS_PER_EPOCH = 20


class StepRunner:
    """Runs a fit's training steps an epoch at a time, in about CALLS_PER_EPOCH native runs.
    Before each run the learning rates are drawn and the process group agrees (a failure or
    a Ctrl-C on any process stops every one at the same step); after it the progress moves.
    A step that fails (training diverged) raises FloatingPointError, the model keeping the
    parameters of its last completed step. Trainer.fit and the scikit-learn estimators'
    sgd/adam solvers both train through it."""

    def __init__(self, steps: TrainingSteps, interrupt: DeferredInterrupt, group=None,
                 progress=None):
        from cdnn.distributed import ProcessGroup
        self.steps, self.interrupt, self.progress = steps, interrupt, progress
        self.group = ProcessGroup() if group is None else group

    def epoch(self, epoch: int, order: np.ndarray, n_steps: int, rates, factors=None):
        """Run n_steps steps over the rows in order (the steps' batches, one after another);
        rates(count) gives the next count steps' learning rates, drawn before each run so
        that a schedule sees the optimizer's step count; factors: the steps' (loss factors,
        uniform) for the exchange. Returns the steps' losses, weighted counts of correct
        predictions and learning rates."""
        steps, group, batch = self.steps, self.group, self.steps.batch_size
        losses, corrects, lrs = np.empty(n_steps), np.empty(n_steps), np.empty(n_steps)
        run, step = max(1, math.ceil(n_steps / CALLS_PER_EPOCH)), 0
        while step < n_steps:
            count = min(run, n_steps - step)
            with group.section("the learning-rate schedule"):
                lrs[step:step + count] = rates(count)
            group.agree(self.interrupt.pressed)
            done, failure = steps.run(
                lrs[step:step + count], order[step * batch:(step + count) * batch],
                losses[step:], corrects[step:],
                None if factors is None else tuple(f[step:step + count] for f in factors))
            step += done
            if self.progress is not None:
                self.progress.steps(done)
            if failure is not None:     # the same on every rank: the steps agree natively
                raise FloatingPointError(
                    f"training diverged at epoch {epoch + 1}, step {step + 1}: {failure}; "
                    f"the model keeps its last finite parameters. Try a lower learning rate "
                    f"(now {steps.optimizer.lr:g}), gradient clipping "
                    f"(Trainer(clip_norm=1.0)) or scaling the inputs.")
        group.agree(self.interrupt.pressed)
        return losses, corrects, lrs


class DeferredInterrupt:
    """During a fit, Ctrl-C sets `pressed`, which the step runner checks between kernel runs,
    instead of raising wherever Python happens to be: a Ctrl-C pressed during a run is
    delivered as the run returns, and raising there would skip its bookkeeping (the step count
    that Adam's bias correction, dropout masks, schedules and checkpoints rely on). A second
    Ctrl-C raises at once. Installed only in the main thread and over Python's default
    handler."""

    def __init__(self):
        self.pressed = self.installed = False

    def install(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            signal.signal(signal.SIGINT, self._handle)
            self.installed = True

    def _handle(self, signum, frame):
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def restore(self):
        if self.installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.installed = False

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, *exc):
        self.restore()
