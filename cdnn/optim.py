"""Optimizers, with PyTorch's names, defaults and semantics. Each holds its hyper-parameters and
its state (in the flat parameter layout); the update itself is a fused kernel over the whole
buffer, run inside the training step."""
from __future__ import annotations

import numpy as np

from cdnn._native import _network
from cdnn._validation import check_real


class Optimizer:
    """Base class. `lr` may be changed between epochs (schedules and callbacks do)."""

    kind = ""

    def __init__(self, lr: float):
        self.lr = check_real(lr, "lr", 0, low_open=True)
        self.steps = 0              # updates made so far (Adam's bias correction counts them)
        self.state: tuple[np.ndarray, np.ndarray] | None = None

    def kernel_config(self) -> dict:
        """The hyper-parameters the update kernel reads."""
        raise NotImplementedError

    def state_for(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The state buffers for these parameters, created (zeroed) on first use."""
        if self.state is None:
            self.state = (np.zeros_like(params), np.zeros_like(params))
        elif self.state[0].shape != params.shape or self.state[0].dtype != params.dtype:
            raise ValueError(f"this optimizer already holds state for {self.state[0].size} "
                             f"{self.state[0].dtype} parameters; make a new one for this network")
        return self.state

    def reset(self):
        """Forget the state (momentum, moment estimates) and the step count."""
        self.state, self.steps = None, 0

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float | None = None):
        """Update params in place from grad (for loops written around MLP.loss_and_grad)."""
        if grad.shape != params.shape or grad.dtype != params.dtype:
            raise ValueError("grad must have the shape and dtype of params")
        self.steps += 1
        _network.optimizer_step(self.kernel_config(), self.lr if lr is None else lr,
                                self.steps, params, grad, *self.state_for(params))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                         if k not in ("state", "steps"))
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as torch.optim.SGD."""

    kind = "sgd"

    def __init__(self, lr: float = 1e-3, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        self.momentum = check_real(momentum, "momentum", 0)
        self.nesterov = bool(nesterov)
        self.weight_decay = check_real(weight_decay, "weight_decay", 0)
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")

    def kernel_config(self):
        return {"kind": "sgd", "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam, as torch.optim.Adam; weight_decay adds wd·p to the gradient (L2)."""

    kind = "adam"
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr)
        if len(betas) != 2:
            raise ValueError("betas must be a pair (beta1, beta2)")
        self.betas = tuple(check_real(b, "betas", 0, 1, high_open=True) for b in betas)
        self.eps = check_real(eps, "eps", 0)
        self.weight_decay = check_real(weight_decay, "weight_decay", 0)

    def kernel_config(self):
        return {"kind": "adam", "betas": self.betas, "eps": self.eps,
                "weight_decay": self.weight_decay, "decoupled": self.decoupled}


class AdamW(Adam):
    """Adam with decoupled weight decay, as torch.optim.AdamW: p ← p·(1 − lr·wd) each step."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(lr, betas, eps, weight_decay)


class RMSprop(Optimizer):
    """RMSprop, as torch.optim.RMSprop (not centered)."""

    kind = "rmsprop"

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(lr)
        self.alpha = check_real(alpha, "alpha", 0, 1)
        self.eps = check_real(eps, "eps", 0)
        self.momentum = check_real(momentum, "momentum", 0)
        self.weight_decay = check_real(weight_decay, "weight_decay", 0)

    def kernel_config(self):
        return {"kind": "rmsprop", "alpha": self.alpha, "eps": self.eps,
                "momentum": self.momentum, "weight_decay": self.weight_decay}
