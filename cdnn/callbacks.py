"""Callbacks: code that runs at fixed points of Trainer.fit.

The protocol (Keras's): subclass Callback and override any of on_train_begin(logs),
on_epoch_begin(epoch, logs), on_epoch_end(epoch, logs), on_train_end(logs). `self.trainer` is
the Trainer, `self.trainer.net` the model; set `self.trainer.stop_training = True` to stop after
the current epoch. `logs` holds the epoch's metrics: loss, accuracy, val_loss, val_accuracy, lr.
Hooks run between epochs: the training steps of an epoch run in native code without them.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from cdnn._validation import check_positive_int, check_real


class Callback:
    trainer = None

    def set_trainer(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch: int, logs=None):
        pass

    def on_epoch_end(self, epoch: int, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


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
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(f"EarlyStopping: {self.monitor!r} is not among the metrics "
                          f"({', '.join(logs or {})}); pass validation data or monitor 'loss'",
                          stacklevel=2)
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

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_params is not None:
            self.trainer.net.params[...] = self.best_params
