"""Plain numpy references for every kernel: slow, obviously correct, float64 throughout. Each
activation's, loss's and optimizer's own reference is its entry in cdnn/kinds.py; these compose
them into what the kernels compute."""
import numpy as np
from scipy.special import softmax   # noqa: F401 (the tests' reference for predict_proba)

from cdnn.kinds import ACTIVATIONS, LOSSES, OPTIMIZERS


def activate(z, name, slope=0.01):
    return ACTIVATIONS[name].forward(z, slope)


def derivative(z, name, slope=0.01):
    return ACTIVATIONS[name].derivative(z, slope)


def loss_and_delta(name, z, targets, weights):
    """(Σ w·ℓ / normaliser, dL/dz) with targets as dense rows; the mean over rows (softmax) or
    over all elements (sigmoid, MSE, Poisson), weighted by the rows' weights."""
    n, k = z.shape
    w = np.ones(n) if weights is None else weights
    loss = LOSSES[name]
    rows, grad = loss.reference(z, targets)
    norm = w.sum() * (k if loss.per_output else 1)
    return (w * rows).sum() / norm, w[:, None] * grad / norm


def forward(params_W, params_b, X, activations):
    """Every layer's (z, a), the output layer last."""
    out, a = [], X
    for W, b, act in zip(params_W, params_b, activations):
        z = a @ W + b
        a = activate(z, act)
        out.append((z, a))
    return out


def optimizer_update(name, p, g, state, lr, step, **hyper):
    """The new p after one update by the optimizer name (state: its buffers by name, updated)"""
    return OPTIMIZERS[name].reference(p, g, state, lr, step, **hyper)
