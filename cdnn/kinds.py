"""Every activation, loss and optimizer, declared once.

Each entry says what the rest of cdnn needs to know about a kind: its name (and the other names
it answers to), its id in the kernels' enum (src/activations.pxd, src/losses.pxd,
src/optim.pxd), its ONNX form, its plain numpy reference (which the tests compare the kernels
with), and for an optimizer its class (cdnn.optim.class_of) and its state buffers. The names
MLP accepts, the CLI's choices, the model file's optimizer registry, the ONNX export and the
tests' parametrisation are all read from these tables; tests/test_kinds.py checks them against
the kernels' enums.

The ONNX forms build on cdnn.onnx's graph (op, const, dtype, normal_cdf), which imports onnx
only when a model is exported.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
from scipy.special import erf, log_softmax, softmax, xlogy


# --- activations ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ActivationKind:
    name: str
    kernel: int                         # its value in src/activations.pxd's enum Activation
    forward: Callable                   # reference f(z, slope), float64
    derivative: Callable                # reference f'(z, slope)
    onnx: Callable                      # (graph, z, slope) -> the name of f(z) in the graph
    init: str = "glorot_uniform"        # the initialiser for a network of this activation
    aliases: tuple[str, ...] = ()       # other names it is given (scikit-learn's)
    torch: str | None = None            # its torch.nn module (cdnn.from_torch)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _leaky_relu_onnx(graph, z, slope):
    # LeakyRelu's alpha attribute is a 32-bit float: a float64 slope would be rounded
    if graph.dtype == np.float32:
        return graph.op("LeakyRelu", z, alpha=float(slope))
    return graph.op("Where", graph.op("Greater", z, graph.const(0)), z,
                    graph.op("Mul", z, graph.const(slope)))


def _gelu_derivative(z, slope):
    return 0.5 * (1 + erf(z / np.sqrt(2))) + z * np.exp(-z * z / 2) / np.sqrt(2 * np.pi)


ACTIVATIONS: dict[str, ActivationKind] = {a.name: a for a in (
    ActivationKind("identity", 0, lambda z, slope: z, lambda z, slope: np.ones_like(z),
                   lambda graph, z, slope: z),
    ActivationKind("relu", 1, lambda z, slope: np.maximum(z, 0),
                   lambda z, slope: (z > 0).astype(float),
                   lambda graph, z, slope: graph.op("Relu", z), init="he_uniform", torch="ReLU"),
    ActivationKind("leaky_relu", 2, lambda z, slope: np.where(z > 0, z, slope * z),
                   lambda z, slope: np.where(z > 0, 1.0, slope), _leaky_relu_onnx,
                   init="he_uniform", torch="LeakyReLU"),
    ActivationKind("sigmoid", 3, lambda z, slope: _sigmoid(z),
                   lambda z, slope: _sigmoid(z) * (1 - _sigmoid(z)),
                   lambda graph, z, slope: graph.op("Sigmoid", z), aliases=("logistic",),
                   torch="Sigmoid"),
    ActivationKind("tanh", 4, lambda z, slope: np.tanh(z), lambda z, slope: 1 - np.tanh(z) ** 2,
                   lambda graph, z, slope: graph.op("Tanh", z), torch="Tanh"),
    ActivationKind("gelu", 5, lambda z, slope: 0.5 * z * (1 + erf(z / np.sqrt(2))),
                   _gelu_derivative, lambda graph, z, slope: graph.op("Mul", z,
                                                                      graph.normal_cdf(z)),
                   init="he_uniform", torch="GELU"),
)}


# --- losses ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LossKind:
    name: str
    kernel: int                         # its value in src/losses.pxd's enum Loss
    reference: Callable                 # (z, dense targets) -> (ℓ of each row, dℓ/dz), float64
    onnx: Callable                      # (graph, outputs) -> predict_proba's or predict's values
    classifier: bool                    # outputs are probabilities, predictions have an accuracy
    per_output: bool = True             # the mean is over rows × outputs (else over rows)
    aliases: tuple[str, ...] = ()
    sklearn_output: str = "identity"    # scikit-learn's out_activation_ for it


def _softmax_cross_entropy(z, t):
    return (-(t * log_softmax(z, axis=1)).sum(axis=1),
            softmax(z, axis=1) * t.sum(axis=1, keepdims=True) - t)


def _sigmoid_cross_entropy(z, t):
    p = _sigmoid(z)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(axis=1), p - t


def _squared_error(z, t):
    return ((z - t) ** 2).sum(axis=1), 2 * (z - t)


def _poisson(z, t):
    """Half the Poisson deviance of the mean exp(z), as scikit-learn's"""
    mu = np.exp(z)
    return (xlogy(t, t / mu) - t + mu).sum(axis=1), mu - t


LOSSES: dict[str, LossKind] = {loss.name: loss for loss in (
    LossKind("softmax_cross_entropy", 0, _softmax_cross_entropy,
             lambda graph, z: graph.op("Softmax", z, axis=-1), classifier=True,
             per_output=False, sklearn_output="softmax"),
    LossKind("sigmoid_cross_entropy", 1, _sigmoid_cross_entropy,
             lambda graph, z: graph.op("Sigmoid", z), classifier=True,
             aliases=("binary_cross_entropy",), sklearn_output="logistic"),
    LossKind("mean_squared_error", 2, _squared_error, lambda graph, z: z, classifier=False,
             aliases=("mse",)),
    LossKind("poisson", 3, _poisson, lambda graph, z: graph.op("Exp", z), classifier=False,
             sklearn_output="exp"),
)}


# --- optimizers -----------------------------------------------------------------------------
# A reference update(p, g, state, lr, step, **hyper-parameters) returns the new p and updates
# the state's arrays in place; step counts from 1, and the state starts at zero.

def _sgd(p, g, state, lr, step, momentum=0.0, nesterov=False, weight_decay=0.0):
    g = g + weight_decay * p
    if momentum:
        buf = state["momentum"]
        buf[...] = momentum * buf + g
        g = g + momentum * buf if nesterov else buf
    return p - lr * g


def _adam(p, g, state, lr, step, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          decoupled=False, eps_inside=False):
    m, v = state["m"], state["v"]
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m[...] = betas[0] * m + (1 - betas[0]) * g
    v[...] = betas[1] * v + (1 - betas[1]) * g * g
    if eps_inside:      # scikit-learn's form: the bias corrections folded into the rate
        lr_t = lr * np.sqrt(1 - betas[1] ** step) / (1 - betas[0] ** step)
        return p - lr_t * m / (np.sqrt(v) + eps)
    m_hat = m / (1 - betas[0] ** step)
    v_hat = v / (1 - betas[1] ** step)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def _rmsprop(p, g, state, lr, step, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0):
    sq, buf = state["square_avg"], state["momentum"]
    g = g + weight_decay * p
    sq[...] = alpha * sq + (1 - alpha) * g * g
    update = g / (np.sqrt(sq) + eps)
    if momentum:
        buf[...] = momentum * buf + update
        update = buf
    return p - lr * update


@dataclass(frozen=True)
class OptimizerKind:
    name: str                           # the CLI's name
    class_name: str                     # its class in cdnn.optim (and in model files)
    kernel: int                         # its value in src/optim.pxd's enum OptimizerKind
    state: tuple[str, ...]              # its buffers (PyTorch's names), each in the flat
                                        # parameter layout; format 1 files stored them in this
                                        # order as optimizer.state1, state2
    reference: Callable
    squares: tuple[str, ...] = ()       # the buffers of running squares (never < 0)


OPTIMIZERS: dict[str, OptimizerKind] = {o.name: o for o in (
    OptimizerKind("sgd", "SGD", 0, ("momentum",), _sgd),
    OptimizerKind("adam", "Adam", 1, ("m", "v"), _adam, squares=("v",)),
    OptimizerKind("adamw", "AdamW", 1, ("m", "v"), partial(_adam, decoupled=True),
                  squares=("v",)),
    OptimizerKind("rmsprop", "RMSprop", 2, ("square_avg", "momentum"), _rmsprop,
                  squares=("square_avg",)),
)}


# --- looking a name up ----------------------------------------------------------------------

def _resolve(table: dict, name):
    """The canonical name for name or one of its aliases; other values are returned as given
    (the caller's check_choice names the problem)."""
    if isinstance(name, str) and name not in table:
        for kind in table.values():
            if name in kind.aliases:
                return kind.name
    return name


activation_name = partial(_resolve, ACTIVATIONS)
loss_name = partial(_resolve, LOSSES)


def names(table: dict) -> tuple[str, ...]:
    """Every name the table's kinds answer to, canonical names first."""
    return tuple(table) + tuple(alias for kind in table.values() for alias in kind.aliases)
