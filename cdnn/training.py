"""Mini-batch training: Trainer.fit drives the native training loop and keeps a History.

Each call into the kernel runs a run of whole training steps (gather the batch, forward, loss,
backward, update) without the GIL; Python only shuffles, schedules the learning rate, reports
progress and runs the callbacks between runs. The workspace, gradient and optimizer state are
allocated once per fit, so a training step allocates nothing.
"""
from __future__ import annotations

import os
import shutil
import sys
import warnings
from typing import Sequence

import numpy as np

from cdnn._validation import check_positive_int, check_real
from cdnn.callbacks import Callback
from cdnn._engine import DeferredInterrupt, StepRunner
from cdnn._epochs import epoch_plan
from cdnn.distributed import MPIGroup, ProcessGroup
from cdnn.network import MLP
from cdnn.optim import Optimizer
from cdnn.schedules import Schedule

# A last epoch's loss this many times the first step's: the fit made the model worse.
LOSS_GROWTH = 10


class History:
    """Per-epoch metrics, as Keras's: history.history["loss"], ["val_accuracy"], …"""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.interrupted = False

    def append(self, epoch: int, logs: dict):
        """Record one epoch's metrics (Trainer.fit calls this after each epoch)."""
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __repr__(self):
        last = {k: round(v[-1], 4) for k, v in self.history.items()}
        return f"History({len(self.epoch)} epochs, last={last})"

    def plot(self, path: str, metrics: Sequence[str] | None = None):
        """Write the training curves to an image file (needs matplotlib)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib") from e
        metrics = metrics or [k for k in self.history if k != "lr"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in metrics:
            ax.plot(np.array(self.epoch) + 1, self.history[key], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        try:    # to a file object, so matplotlib needs the format that a path would imply
            from cdnn.io import file_path, open_atomically
            fmt = os.path.splitext(file_path(path))[1][1:].lower() or None
            with open_atomically(path) as f:
                fig.savefig(f, dpi=120, format=fmt)
        finally:
            plt.close(fig)


class Trainer:
    """Trains an MLP with an optimizer on mini-batches.

    Args:
        schedule: optional callable (step_numbers, steps_per_epoch) -> learning-rate multipliers
            of optimizer.lr, one per optimizer step (see cdnn.schedules).
        clip_norm: if set, scale each step's gradient to at most this global L2 norm.
        seed: the shuffling and dropout stream (default: the network's seed).
        lazy_update: opt-in, for sparse X: update only the rows of the first layer's weights
            whose input column the batch holds (PyTorch's SparseAdam semantics: the other rows'
            momentum and moments do not decay, weight decay skips them). Much faster for wide
            inputs, but a different optimizer: the default updates every row, as the dense
            path does.
    """

    def __init__(self, net: MLP, optimizer: Optimizer, batch_size: int = 32, *,
                 schedule=None, clip_norm: float | None = None, seed: int | None = None,
                 lazy_update: bool = False, comm=None):
        if not isinstance(net, MLP):
            raise TypeError(f"net must be a cdnn.MLP, got {type(net).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a cdnn optimizer (cdnn.SGD, cdnn.Adam, "
                            f"cdnn.AdamW or cdnn.RMSprop), got {type(optimizer).__name__}")
        self.net, self.optimizer = net, optimizer
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.schedule = schedule
        self.clip_norm = 0.0 if clip_norm is None else check_real(clip_norm, "clip_norm", 0,
                                                                  low_open=True)
        seed = net.seed if seed is None else check_positive_int(seed, "seed", 0)
        self.rng = np.random.default_rng(seed)
        self.dropout_seed = int(self.rng.integers(2**63))
        self.stop_training = False
        self.stop_reason: str | None = None   # a callback's sentence on why it stopped the fit
        self._first_loss: float | None = None
        self.lazy_update = bool(lazy_update)
        if comm is not None and self.lazy_update:
            raise ValueError("lazy_update is for one process: each rank's batch touches other "
                             "rows of the first layer, and the ranks must apply the same update")
        # the processes of the fit (cdnn.distributed): this one alone, or MPI's ranks
        self.group = ProcessGroup() if comm is None else MPIGroup(comm)

    @property
    def is_chief(self) -> bool:
        """True in the process that prints and writes files (rank 0, or the only one)."""
        return self.group.rank == 0

    def fit(self, X, y, epochs: int = 1, *, validation_data=None,
            validation_split: float = 0.0, shuffle: bool = True, sample_weight=None,
            class_weight=None, callbacks: Sequence[Callback] = (), verbose: int = 1,
            sharded: bool = False) -> History:
        """Train for `epochs` passes over (X, y); returns the History. Stops early when a
        callback sets trainer.stop_training, and cleanly on Ctrl-C (the model keeps the last
        completed step; history.interrupted is set). With Trainer(comm=...), sharded=True says
        each rank passes only its own rows (cdnn.distributed)."""
        group = self.group
        if sharded and not isinstance(group, MPIGroup):
            raise ValueError("sharded=True is for data-parallel training: "
                             "Trainer(..., comm=MPI.COMM_WORLD)")
        with group.section("checking the arguments"):   # a rank alone may fail in any of it
            epochs = check_positive_int(epochs, "epochs", 0)
            if verbose not in (0, 1, 2):
                raise ValueError("verbose must be 0 (silent), 1 (progress bar) or 2 (a line "
                                 "per epoch)")
            self.optimizer.state_for(self.net.params)   # not another network's state
        with group.section("checking the data"):
            train, val = self._prepare(X, y, sample_weight, validation_data, validation_split,
                                       class_weight, sharded)
            settings = self._must_match(train, val, epochs, shuffle, sharded, validation_split)
        group.agree()
        group.agree_on(settings)    # before the first collective that the settings shape
        if sharded:     # each rank's weights were scaled to its own largest: to one scale
            val_weights = validation_data[2] if validation_data is not None and len(
                validation_data) == 3 else (sample_weight if validation_split else None)
            train = group.common_weight_scale(train, sample_weight)
            if val is not None:
                val = group.common_weight_scale(val, val_weights)
        plan, steps = self._plan(train, shuffle, sharded)
        history = History()
        self.stop_training, self.stop_reason, self._first_loss = False, None, None
        with group.section("on_train_begin"):
            self._begin(plan.steps, epochs, val is not None, callbacks)
        group.agree()
        ctrl_c = DeferredInterrupt()
        progress = Progress(verbose, epochs, plan.steps) if verbose and self.is_chief else None
        runner = StepRunner(steps, ctrl_c, group, progress)
        try:
            ctrl_c.install()
            for epoch in range(epochs):
                logs = self._epoch(epoch, plan, runner, val, sharded, callbacks)
                history.append(epoch, logs)
                if progress is not None:
                    progress.epoch_end(epoch, logs)
                with group.section("on_epoch_end"):
                    for cb in callbacks:
                        cb.on_epoch_end(epoch, logs)
                group.agree(ctrl_c.pressed)
                self.stop_training = group.any(self.stop_training)
                group.check_identical(self)
                if self.stop_training:
                    if progress is not None and epoch + 1 < epochs:
                        progress.note(f"stopped after epoch {epoch + 1} of {epochs}: "
                                      f"{self.stop_reason or 'a callback set stop_training'}")
                    break
        except KeyboardInterrupt:
            history.interrupted = True
            print(f"\ninterrupted: the model keeps the parameters of its last completed step "
                  f"({self.optimizer.steps} steps in all)", file=sys.stderr)
        finally:
            ctrl_c.restore()
            if progress is not None:
                progress.close()
            for cb in callbacks:
                cb.on_train_end()
        if self.is_chief:
            _warn_if_loss_grew(history, self._first_loss, self.optimizer)
        return history

    def _begin(self, steps_per_epoch: int, epochs: int, validating: bool, callbacks):
        """Check the schedule's every rate (a schedule that fails at step 10 fails before
        step 1) and start the callbacks."""
        opt = self.optimizer
        for epoch in range(epochs if self.schedule is not None else 0):
            self._learning_rates(opt, steps_per_epoch, steps_per_epoch,
                                 opt.steps + epoch * steps_per_epoch)
        metrics = ["loss"] + (["accuracy"] if self.net.is_classifier else [])
        metrics += [f"val_{m}" for m in metrics if validating] + ["lr"]
        for cb in callbacks:   # callbacks check their settings against params in on_train_begin
            cb.set_trainer(self)
            cb.set_params({"epochs": epochs, "steps": steps_per_epoch, "metrics": metrics})
            cb.on_train_begin()

    def _must_match(self, train, val, epochs, shuffle, sharded, validation_split) -> dict:
        """What every rank of a distributed fit must hold alike (Distributed.agree_on). Not
        the parameters, the optimizer's state and step count, its learning rate or the
        shuffling and dropout streams: rank 0's go to every rank (a resumed rank 0 and a fresh
        rank 1 train as one)."""
        config = self.net.get_config()
        optimizer = ", ".join(f"{k}={v!r}" for k, v in self.optimizer.kernel_config().items()
                              if k != "kernel")
        schedule = self.schedule
        if schedule is not None and not isinstance(schedule, Schedule):   # no repr to compare
            schedule = getattr(schedule, "__qualname__", type(schedule).__qualname__)
        return {
            **{name: config[name] for name in ("layer_sizes", "activation", "loss", "dtype",
                                               "dropout", "l2", "leaky_slope")},
            "the optimizer": f"{type(self.optimizer).__name__}({optimizer})",
            "batch_size": self.batch_size, "epochs": epochs, "shuffle": shuffle,
            "the schedule": schedule, "clip_norm": self.clip_norm,
            "sharded": sharded,
            "the training rows": None if sharded else f"{len(train.X)} (replicated data)",
            "sample weights": "given" if train.weights is not None else "none",
            "validation_split": validation_split,
            "validation": "none" if val is None else (
                "given" if sharded else f"{len(val.X)} rows (replicated data)"),
        }

    def _prepare(self, X, y, sample_weight, validation_data, validation_split, class_weight,
                 sharded):
        """The training and validation rows, validated (val None without validation)."""
        if sharded and class_weight is not None:
            raise ValueError("class_weight is per shard with sharded=True; pass the weights "
                             "as sample_weight")
        train, val = self.net.engine.prepare_fit(X, y, sample_weight, validation_data,
                                                 validation_split, class_weight)
        if sharded and len(train.X) == 0:
            raise ValueError("this rank's shard holds no rows")
        return train, val

    def _plan(self, train, shuffle: bool, sharded: bool):
        """The epochs' split of the rows (cdnn._epochs) and the fit's training steps; in a
        group of several processes rank 0's state goes to every rank first."""
        net, group = self.net, self.group
        group.broadcast_state(self)
        counts = group.rows_everywhere(len(train.X))
        with group.section("setting up"):
            plan = epoch_plan(group, train, self.batch_size, self.rng, shuffle, sharded, counts)
        group.agree()
        exchange = group.gradient_exchange(net.params.dtype, net.params.size)
        steps = net.engine.training_steps(net.params, self.optimizer, train, plan.local_batch,
                                          self.clip_norm, group.own_seed(self.dropout_seed),
                                          self.lazy_update, exchange)
        return plan, steps

    def _epoch(self, epoch: int, plan, runner: StepRunner, val, sharded: bool, callbacks):
        """One epoch's steps, validation and callbacks; returns its logs."""
        group, opt = self.group, self.optimizer
        with group.section("on_epoch_begin"):
            for cb in callbacks:
                cb.on_epoch_begin(epoch)
        order, factors = plan.epoch(self.rng, group.columns)
        losses, corrects, lrs = runner.epoch(
            epoch, order, plan.steps,
            lambda count: self._learning_rates(opt, count, plan.steps, opt.steps), factors)
        logs = {"loss": float(losses @ plan.rows / plan.rows.sum())}
        if self.net.is_classifier:
            logs["accuracy"] = float(corrects.sum() / plan.total_weight)
        if val is not None:
            logs.update({f"val_{k}": v for k, v in group.evaluate(self.net, val,
                                                                  sharded).items()})
        logs["lr"] = float(lrs[-1])
        if epoch == 0:    # the loss of the untrained network, for _warn_if_loss_grew
            self._first_loss = float(losses[0])
        return logs

    def _learning_rates(self, opt: Optimizer, count: int, steps_per_epoch: int,
                        first: int) -> np.ndarray:
        if self.schedule is None:
            return np.full(count, opt.lr)
        steps = np.arange(first, first + count)
        factors = np.asarray(self.schedule(steps, steps_per_epoch), dtype=np.float64)
        if factors.shape != (count,) or not (np.isfinite(factors) & (factors >= 0)).all():
            raise ValueError(f"the schedule must return one finite multiplier ≥ 0 per step "
                             f"({count} here), got {factors!r}")
        return opt.lr * factors


def _warn_if_loss_grew(history: History, first_loss: float | None, optimizer: Optimizer):
    """A loss that grew LOSS_GROWTH times over the fit is a divergence that stayed finite (so
    no FloatingPointError): --lr 1e6 ended at losses of 1e5..1e29, accuracy at chance, with no
    word. Compared with the first step's loss, that of the untrained network."""
    losses = history.history.get("loss")
    if losses and first_loss is not None and losses[-1] > LOSS_GROWTH * first_loss:
        warnings.warn(f"training made the loss worse: {first_loss:.4g} at the first step, "
                      f"{losses[-1]:.4g} in the last epoch; the learning rate (now "
                      f"{optimizer.lr:g}) is probably too high. Try a lower one, gradient "
                      f"clipping (Trainer(clip_norm=1.0)) or scaling the inputs.",
                      RuntimeWarning, stacklevel=3)


def metrics_text(logs: dict) -> str:
    """'loss 0.1234 acc 0.9612 val_loss 0.1301 val_acc 0.9588': short enough that a progress
    line with all four fits 80 columns (the learning rate is left out: it is in the History)."""
    return " ".join(f"{key.replace('accuracy', 'acc')} {value:.4g}"
                    for key, value in logs.items() if key != "lr")


class Progress:
    """fit's report, verbose=1 or 2. verbose=1 on a terminal: one bar over the whole fit, at
    most 80 columns, that moves after each kernel run (about CALLS_PER_EPOCH times an epoch,
    so a long epoch does not look hung) and shows the last finished epoch's metrics.
    verbose=1 with stderr not a terminal (a log file, a pipe): one line per epoch on stderr,
    not a bar's \r redraws. verbose=2: one line per epoch on stdout, as Keras."""

    WIDTH = 80

    def __init__(self, verbose: int, epochs: int, steps_per_epoch: int):
        from tqdm.auto import tqdm
        self.epochs, self.bar = epochs, None
        self.file = sys.stdout if verbose == 2 else sys.stderr
        # tqdm.auto found Jupyter, whose widget is no terminal but draws a bar
        notebook = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)
        if verbose == 1 and (notebook or sys.stderr.isatty()):
            columns = shutil.get_terminal_size().columns   # 0 on a terminal of unknown size
            self.bar = tqdm(total=epochs * steps_per_epoch, file=sys.stderr, leave=True,
                            ncols=None if notebook else min(self.WIDTH, columns or self.WIDTH),
                            bar_format=self._format(0, {}))

    def _format(self, epoch: int, logs: dict) -> str:
        """The bar's text: the epoch under way (counting from 1) and the last epoch's metrics
        (numbers and metric names: no braces for tqdm's format)."""
        return (f"epoch {min(epoch + 1, self.epochs)}/{self.epochs} {{elapsed}} |{{bar}}| "
                f"{metrics_text(logs)}")

    def steps(self, count: int):
        if self.bar is not None:
            self.bar.update(count)

    def epoch_end(self, epoch: int, logs: dict):
        if self.bar is not None:
            self.bar.bar_format = self._format(epoch + (epoch + 1 < self.epochs), logs)
            self.bar.refresh()
        else:
            print(f"epoch {epoch + 1}/{self.epochs} {metrics_text(logs)}", file=self.file,
                  flush=True)

    def note(self, text: str):
        """A line of its own below the bar (why training stopped early)."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=self.file, flush=True)

    def close(self):
        """Also after an error: its message then starts on a line of its own."""
        if self.bar is not None:
            self.bar.close()
