"""Callbacks: code that runs at fixed points of Trainer.fit.

The protocol (Keras's): subclass Callback and override any of

    on_train_begin(logs)          once, before the first epoch
    on_epoch_begin(epoch, logs)   before each epoch (epoch counts from 0 within this fit)
    on_epoch_end(epoch, logs)     after each epoch's steps and validation
    on_train_end(logs)            once, also after an early stop, an error or Ctrl-C

`self.trainer` is the Trainer (set before on_train_begin), `self.trainer.net` the model,
`self.params` what fit will do: {"epochs", "steps" (per epoch), "metrics" (the keys of the
epoch logs)}, so that on_train_begin can refuse a setting before any step changes the model,
`self.trainer.optimizer` the optimizer: a callback may change `optimizer.lr` (it takes effect
from the next step run) or the model's parameters in place. Set
`self.trainer.stop_training = True` to stop after the current epoch (and, if you like,
`self.trainer.stop_reason` to a sentence that fit's progress report prints). `logs` in
on_epoch_end holds the epoch's metrics: loss, accuracy (classification), val_loss and val_accuracy (with
validation data), lr (the last step's learning rate). Callbacks run in the order given.
Hooks run between epochs: the training steps of an epoch run in native code without them.

Metric-watching callbacks (EarlyStopping, ModelCheckpoint, ReduceLROnPlateau) take `monitor`
(a key of logs) and `mode`: "min", "max" or "auto" (max for names containing "acc").
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from cdnn._validation import check_positive_int, check_real


class Callback:
    """Base class of callbacks: override the hooks you need (each does nothing here)."""

    trainer = None
    params: dict = {}

    def set_trainer(self, trainer):
        """Called by Trainer.fit before on_train_begin: sets self.trainer."""
        self.trainer = trainer

    def set_params(self, params: dict):
        """Called by Trainer.fit before on_train_begin: sets self.params (what fit will do)."""
        self.params = params

    def on_train_begin(self, logs=None):
        """Once, before the first epoch."""

    def on_epoch_begin(self, epoch: int, logs=None):
        """Before each epoch; epoch counts from 0 within this fit."""

    def on_epoch_end(self, epoch: int, logs=None):
        """After each epoch's steps and validation; logs holds the epoch's metrics."""

    def on_train_end(self, logs=None):
        """Once at the end, also after an early stop, an error or Ctrl-C."""


def _improvement_test(monitor: str, mode: str, min_delta: float):
    """is_better(current, best) for a metric that should fall (loss) or rise (accuracy)."""
    if mode == "auto":
        mode = "max" if "acc" in monitor else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"unknown mode {mode!r}; choose auto, min or max")
    if mode == "min":
        return (lambda current, best: current < best - min_delta), math.inf
    return (lambda current, best: current > best + min_delta), -math.inf


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than min_delta for `patience` epochs;
    with restore_best_weights, end with the parameters of the best epoch."""

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False):
        self.monitor = monitor
        self.patience = check_positive_int(patience, "patience", 0)
        self.min_delta = abs(check_real(min_delta, "min_delta"))
        self.is_better, self._initial = _improvement_test(monitor, mode, self.min_delta)
        self.restore_best_weights = restore_best_weights

    def on_train_begin(self, logs=None):
        self.best, self.best_epoch, self.wait = self._initial, None, 0
        self.best_params, self.stopped_epoch = None, None

    def on_epoch_end(self, epoch, logs=None):
        current = _monitored(self, logs)
        if current is None:
            return
        if self.is_better(current, self.best):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights:
                self.best_params = np.copy(self.trainer.net.params)
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True
            self.trainer.stop_reason = (
                f"EarlyStopping: {self.monitor} has not improved for {self.wait} epoch"
                f"{'s' * (self.wait != 1)} (best {self.best:.4g}, at epoch "
                f"{self.best_epoch + 1})" if self.best_epoch is not None else
                f"EarlyStopping: {self.monitor} has not improved")

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_params is not None:
            self.trainer.net.params[...] = self.best_params


def _monitored(callback: Callback, logs) -> float | None:
    """The monitored metric from logs, or None (with a warning naming what is there)."""
    current = (logs or {}).get(callback.monitor)
    if current is None:
        warnings.warn(f"{type(callback).__name__}: {callback.monitor!r} is not among the "
                      f"metrics ({', '.join(logs or {})}); pass validation data or monitor "
                      f"'loss'", stacklevel=3)
    return current


class ModelCheckpoint(Callback):
    """Save the model (net.save) after each epoch, or only when `monitor` improves
    (save_best_only). path may hold format fields: "ckpt-{epoch:03d}-{val_loss:.3f}.safetensors"
    (epoch counts from 1, as in Keras). With save_optimizer the optimizer's state and step count
    go in the file too, so training can resume from it (see cdnn.io)."""

    def __init__(self, path, monitor: str = "val_loss", save_best_only: bool = False,
                 save_optimizer: bool = False, mode: str = "auto"):
        self.path = os.fspath(path)
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self.save_optimizer = bool(save_optimizer)
        self.is_better, self._initial = _improvement_test(monitor, mode, 0.0)
        self.best = self._initial
        self.last_saved: str | None = None

    def on_train_begin(self, logs=None):
        """Fill the path with the metrics fit will log, and try the folder: a bad field or a
        missing folder fails now, not after the first epoch has trained."""
        from cdnn.io import check_writable
        metrics = self.params.get("metrics")
        if metrics is not None:
            check_writable(self._path(0, dict.fromkeys(metrics, 0.0)))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            current = _monitored(self, logs)
            if current is None or not self.is_better(current, self.best):
                return
            self.best = current
        path = self._path(epoch, logs)
        optimizer = self.trainer.optimizer if self.save_optimizer else None
        if getattr(self.trainer, "is_chief", True):     # data-parallel: rank 0 writes
            self.trainer.net.save(path, optimizer)
        self.last_saved = path

    def _path(self, epoch: int, logs: dict) -> str:
        try:
            return self.path.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"ModelCheckpoint path {self.path!r} has a field the logs cannot "
                             f"fill ({e}); available: epoch, {', '.join(logs)}") from e


class LearningRateScheduler(Callback):
    """At the start of each epoch set optimizer.lr = schedule(epoch, lr), as Keras's callback
    (epoch counts from 0 within the fit; lr is the current rate). For per-step schedules use
    Trainer(schedule=...) (cdnn.schedules)."""

    def __init__(self, schedule, verbose: int = 0):
        if not callable(schedule):
            raise TypeError("schedule must be a callable (epoch, lr) -> lr")
        self.schedule = schedule
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        """Run the schedule over every epoch of the fit once, without training (so it should
        be a plain function of its arguments): a rate it would refuse at epoch 5 fails now,
        before any step changes the model."""
        lr = self.trainer.optimizer.lr
        for epoch in range(self.params.get("epochs", 0)):
            lr = self._rate(epoch, lr)

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.trainer.optimizer
        opt.lr = self._rate(epoch, opt.lr)
        if self.verbose:
            print(f"epoch {epoch + 1}: learning rate {opt.lr:.4g}", flush=True)


    def _rate(self, epoch: int, lr: float) -> float:
        return check_real(self.schedule(epoch, lr), f"the learning rate that "
                          f"LearningRateScheduler's schedule gives for epoch {epoch}", 0,
                          low_open=True)


class ReduceLROnPlateau(Callback):
    """Multiply optimizer.lr by factor (never below min_lr) when `monitor` has not improved by
    more than min_delta for `patience` epochs; then wait `cooldown` epochs before counting
    again. As Keras's callback of the same name."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0,
                 mode: str = "auto", verbose: int = 0):
        self.monitor = monitor
        self.factor = check_real(factor, "factor", 0, 1, low_open=True, high_open=True)
        self.patience = check_positive_int(patience, "patience", 0)
        self.min_delta = abs(check_real(min_delta, "min_delta"))
        self.cooldown = check_positive_int(cooldown, "cooldown", 0)
        self.min_lr = check_real(min_lr, "min_lr", 0)
        self.is_better, self._initial = _improvement_test(monitor, mode, self.min_delta)
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.cooldown_counter = self._initial, 0, 0

    def on_epoch_end(self, epoch, logs=None):
        current = _monitored(self, logs)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.is_better(current, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                opt = self.trainer.optimizer
                if opt.lr > self.min_lr:
                    opt.lr = max(opt.lr * self.factor, self.min_lr)
                    if self.verbose:
                        print(f"epoch {epoch + 1}: reducing the learning rate to {opt.lr:.4g}",
                              flush=True)
                self.cooldown_counter, self.wait = self.cooldown, 0
