"""Weight initialisers: draw a (fan_in, fan_out) matrix, in float64 so that a float32 and a
float64 network with the same seed start from the same values (up to rounding).

Random initialisation is what breaks the symmetry between the units of a layer: with "zeros"
every unit of a hidden layer computes the same function and receives the same gradient, so the
units stay identical however long the network trains. It is offered to show exactly that.
"""
from __future__ import annotations

import numpy as np

from cdnn.kinds import ACTIVATIONS


def he_uniform(rng, fan_in, fan_out):
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, (fan_in, fan_out))


def he_normal(rng, fan_in, fan_out):
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), (fan_in, fan_out))


def glorot_uniform(rng, fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out))


def glorot_normal(rng, fan_in, fan_out):
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), (fan_in, fan_out))


def lecun_normal(rng, fan_in, fan_out):
    return rng.normal(0.0, np.sqrt(1.0 / fan_in), (fan_in, fan_out))


def zeros(rng, fan_in, fan_out):
    return np.zeros((fan_in, fan_out))


INITIALIZERS = {f.__name__: f for f in
                (he_uniform, he_normal, glorot_uniform, glorot_normal, lecun_normal, zeros)}


def default_for(activation: str) -> str:
    """The activation's initialiser in cdnn/kinds.py: He for the ReLU family (their variance
    halves at each layer), Glorot otherwise."""
    return ACTIVATIONS[activation].init
