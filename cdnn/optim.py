"""Optimizers, with PyTorch's names, defaults and semantics. Each holds its hyper-parameters and
its state: buffers in the flat parameter layout, by the names cdnn/kinds.py's OPTIMIZERS give
them (as PyTorch's: m and v for Adam, momentum for SGD, square_avg and momentum for RMSprop).
The update itself is a fused kernel over the whole buffer, run inside the training step.

Every hyper-parameter is checked when it is set, in the constructor or later (`opt.lr = 0.01`
from a callback or a hand-written loop), so a bad value is refused where it is given."""
from __future__ import annotations

from functools import partial

import numpy as np

from cdnn import kinds
from cdnn._native import _network
from cdnn._validation import check_bool, check_real


def class_of(kind: kinds.OptimizerKind) -> type:
    """The class of an entry of kinds.OPTIMIZERS."""
    return globals()[kind.class_name]


class Hyperparameter:
    """An attribute checked on every assignment by check(value, name) -> the value to keep.
    The value lives in the instance's __dict__, so vars(optimizer) lists the hyper-parameters."""

    def __init__(self, check):
        self.check = check

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        return self if obj is None else obj.__dict__[self.name]

    def __set__(self, obj, value):
        obj.__dict__[self.name] = self.check(value, self.name)


def _betas(value, name: str) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    return tuple(check_real(b, name, 0, 1, high_open=True) for b in value)


positive = partial(check_real, low=0, low_open=True)
non_negative = partial(check_real, low=0)
fraction = partial(check_real, low=0, high=1)


class Optimizer:
    """Base class. `lr` may be changed between epochs (schedules and callbacks do)."""

    kind = ""         # its name in cdnn/kinds.py's OPTIMIZERS
    lr = Hyperparameter(positive)

    def __init__(self, lr: float):
        self.lr = lr
        self.steps = 0              # updates made so far (Adam's bias correction counts them)
        self.state: dict[str, np.ndarray] | None = None    # name -> buffer (kinds.py's names)

    @classmethod
    def spec(cls) -> kinds.OptimizerKind:
        """Its entry in cdnn/kinds.py: kernel id, state buffers, reference."""
        return kinds.OPTIMIZERS[cls.kind]

    def kernel_config(self) -> dict:
        """The hyper-parameters the update kernel reads, and the kernel's id."""
        raise NotImplementedError

    def state_for(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """The state buffers for these parameters, created (zeroed) on first use."""
        first = None if self.state is None else next(iter(self.state.values()))
        other = first is not None and (first.shape != params.shape
                                       or first.dtype != params.dtype)
        # _is_reset reads every buffer: only for state of another shape, not on every step
        if first is None or (other and self._is_reset()):
            self.state = {name: np.zeros_like(params) for name in self.spec().state}
        elif other:
            raise ValueError(f"this optimizer already holds state for {first.size} "
                             f"{first.dtype} parameters; make a new one for this network")
        return self.state

    def reset(self):
        """Forget the state (momentum, moment estimates) and the step count. Also in a fit,
        from a callback: training goes on from zero state."""
        # zeroed in place, not dropped: a fit's training steps hold these very buffers
        if self.state is not None:
            for buffer in self.state.values():
                buffer.fill(0)
        self.steps = 0

    def _is_reset(self) -> bool:
        """No steps and zero state: the same as none, so it may take another network's shape."""
        return self.steps == 0 and not any(buffer.any() for buffer in self.state.values())

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float | None = None):
        """Update params in place from grad (for loops written around MLP.loss_and_grad):
        numpy arrays, or a CUDA network's CuPy arrays (updated on its GPU, by the kernel a fit
        runs)."""
        lr = self.lr if lr is None else positive(lr, "lr")
        from cdnn import _devices
        if _devices.is_device_array(params) or _devices.is_device_array(grad):
            from cdnn.cuda.steps import optimizer_step     # a CUDA network's arrays
            return optimizer_step(self, params, grad, lr)
        for name, array in (("params", params), ("grad", grad)):
            if not isinstance(array, np.ndarray):
                raise TypeError(f"{name} must be a numpy array (net.params, or the gradient "
                                f"from net.loss_and_grad), got {type(array).__name__}")
        if params.dtype not in (np.float32, np.float64) or params.ndim != 1:
            raise ValueError(f"params must be a 1-D float32 or float64 array (net.params), got "
                             f"{params.dtype} of shape {params.shape}")
        if grad.shape != params.shape or grad.dtype != params.dtype:
            raise ValueError(f"grad must have the shape and dtype of params ({params.shape} "
                             f"{params.dtype}), got {grad.shape} {grad.dtype}")
        if not _network.all_finite(np.ascontiguousarray(grad)):
            raise ValueError("grad holds a non-finite value (NaN or infinity); the step would "
                             "spoil every parameter")
        config = self.kernel_config()
        self.steps += 1
        _network.optimizer_step(config, lr, self.steps, params, grad, self.state_for(params))

    def __setstate__(self, state: dict):
        """Unpickling. cdnn up to 3f99230 held the state as a tuple (state1, state2), its
        buffers in kinds.py's order (SGD's second unused)."""
        if isinstance(state.get("state"), tuple):
            state["state"] = dict(zip(self.spec().state, state["state"]))
        self.__dict__.update(state)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                         if k not in ("state", "steps"))
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as torch.optim.SGD."""

    kind = "sgd"
    momentum = Hyperparameter(non_negative)
    nesterov = Hyperparameter(check_bool)
    weight_decay = Hyperparameter(non_negative)

    def __init__(self, lr: float = 1e-3, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.kernel_config()

    def kernel_config(self):
        if self.nesterov and self.momentum == 0:   # the one check across two attributes
            raise ValueError("Nesterov momentum requires a momentum > 0")
        return {"kernel": self.spec().kernel, "momentum": self.momentum,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam, as torch.optim.Adam; weight_decay adds wd·p to the gradient (L2)."""

    kind = "adam"
    decoupled = False
    betas = Hyperparameter(_betas)
    eps = Hyperparameter(positive)   # > 0: the first step divides by sqrt(v) + eps, v = g²
    weight_decay = Hyperparameter(non_negative)

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def kernel_config(self):
        return {"kernel": self.spec().kernel, "betas": self.betas, "eps": self.eps,
                "weight_decay": self.weight_decay, "decoupled": self.decoupled}


class AdamW(Adam):
    """Adam with decoupled weight decay, as torch.optim.AdamW: p ← p·(1 − lr·wd) each step."""

    kind = "adamw"
    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(lr, betas, eps, weight_decay)


class RMSprop(Optimizer):
    """RMSprop, as torch.optim.RMSprop (not centered)."""

    kind = "rmsprop"
    alpha = Hyperparameter(fraction)
    eps = Hyperparameter(positive)
    momentum = Hyperparameter(non_negative)
    weight_decay = Hyperparameter(non_negative)

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(lr)
        self.alpha, self.eps, self.momentum = alpha, eps, momentum
        self.weight_decay = weight_decay

    def kernel_config(self):
        return {"kernel": self.spec().kernel, "alpha": self.alpha, "eps": self.eps,
                "momentum": self.momentum, "weight_decay": self.weight_decay}
