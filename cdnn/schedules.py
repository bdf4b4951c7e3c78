"""Learning-rate schedules for Trainer(schedule=...).

A schedule is a callable (step_numbers, steps_per_epoch) -> multipliers: step_numbers is an
integer array of optimizer steps counted from 0 (the optimizer's step count before each update,
so a resumed run continues its schedule), and the result is one factor per step by which
optimizer.lr is multiplied. The Trainer asks for a run of steps at a time, so a schedule is
vectorised numpy with no per-step Python. Any function of that shape works as well:

    Trainer(net, opt, schedule=lambda s, spe: 0.5 ** (s // (10 * spe)))

For a schedule that reacts to the metrics, see cdnn.callbacks.ReduceLROnPlateau.
"""
from __future__ import annotations

import numpy as np

from cdnn._validation import check_positive_int, check_real

__all__ = ["Schedule", "StepDecay", "ExponentialDecay", "CosineWithWarmup"]


class Schedule:
    """Base class: subclasses implement factors(steps, steps_per_epoch) on a float array."""

    def __call__(self, step_numbers, steps_per_epoch: int) -> np.ndarray:
        steps = np.asarray(step_numbers)
        if steps.dtype.kind not in "iu" or (steps < 0).any():
            raise ValueError("step_numbers must be non-negative integers")
        steps_per_epoch = check_positive_int(steps_per_epoch, "steps_per_epoch")
        return self.factors(steps.astype(np.float64), steps_per_epoch)

    def factors(self, steps: np.ndarray, steps_per_epoch: int) -> np.ndarray:
        """The multiplier of lr at each of steps (float optimizer step numbers from 0)."""
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class StepDecay(Schedule):
    """lr · gamma^⌊epoch / step_size_epochs⌋, as torch.optim.lr_scheduler.StepLR."""

    def __init__(self, step_size_epochs: int, gamma: float = 0.1):
        self.step_size_epochs = check_positive_int(step_size_epochs, "step_size_epochs")
        self.gamma = check_real(gamma, "gamma", 0, low_open=True)

    def factors(self, steps, steps_per_epoch):
        epochs = np.floor_divide(steps, steps_per_epoch)
        return self.gamma ** np.floor_divide(epochs, self.step_size_epochs)


class ExponentialDecay(Schedule):
    """lr · gamma^epoch (torch's ExponentialLR); staircase=False decays smoothly within an
    epoch, gamma^(step / steps_per_epoch)."""

    def __init__(self, gamma: float, staircase: bool = True):
        self.gamma = check_real(gamma, "gamma", 0, low_open=True)
        self.staircase = bool(staircase)

    def factors(self, steps, steps_per_epoch):
        epochs = steps / steps_per_epoch
        return self.gamma ** (np.floor(epochs) if self.staircase else epochs)


class CosineWithWarmup(Schedule):
    """Linear warm-up to lr over the first warmup steps (the first step already moves, at
    lr/warmup), then a half cosine down to min_factor·lr at total steps, and min_factor·lr
    after that. Give the lengths in steps (total_steps, warmup_steps) or in epochs (epochs,
    warmup_epochs), not both."""

    def __init__(self, total_steps: int | None = None, warmup_steps: int = 0,
                 min_factor: float = 0.0, *, epochs: int | None = None,
                 warmup_epochs: int | None = None):
        if (total_steps is None) == (epochs is None):
            raise ValueError("give the schedule's length as total_steps or as epochs (one of them)")
        if epochs is not None and warmup_steps:
            raise ValueError("with epochs, give the warm-up as warmup_epochs")
        if total_steps is not None and warmup_epochs is not None:
            raise ValueError("with total_steps, give the warm-up as warmup_steps")
        self.total_steps = None if total_steps is None else check_positive_int(
            total_steps, "total_steps")
        self.epochs = None if epochs is None else check_positive_int(epochs, "epochs")
        self.warmup_steps = check_positive_int(warmup_steps, "warmup_steps", 0)
        self.warmup_epochs = None if warmup_epochs is None else check_positive_int(
            warmup_epochs, "warmup_epochs", 0)
        self.min_factor = check_real(min_factor, "min_factor", 0, 1)
        total = self.total_steps if self.total_steps is not None else self.epochs
        warmup = self.warmup_steps if self.warmup_epochs is None else self.warmup_epochs
        if warmup >= total:
            raise ValueError(f"the warm-up ({warmup}) must be shorter than the schedule ({total})")

    def factors(self, steps, steps_per_epoch):
        if self.total_steps is not None:
            total, warmup = self.total_steps, self.warmup_steps
        else:
            total = self.epochs * steps_per_epoch
            warmup = (self.warmup_epochs or 0) * steps_per_epoch
        progress = np.clip((steps - warmup) / (total - warmup), 0.0, 1.0)
        cosine = self.min_factor + (1 - self.min_factor) * 0.5 * (1 + np.cos(np.pi * progress))
        if warmup == 0:
            return cosine
        return np.where(steps < warmup, (steps + 1) / warmup, cosine)
