"""cdnn: fast multilayer perceptrons on the CPU.

Cython kernels over BLAS run the forward pass, loss, backward pass and optimizer update of a
whole training step in one native call; this package is the thin Python layer around them.
"""
from cdnn.callbacks import (Callback, EarlyStopping, LearningRateScheduler, ModelCheckpoint,
                            ReduceLROnPlateau)
from cdnn.convert import from_sklearn, from_torch
from cdnn.network import MLP, Dense, Sequential, load
from cdnn.optim import SGD, Adam, AdamW, Optimizer, RMSprop
from cdnn.threads import get_num_threads, limit_threads, set_num_threads
from cdnn.training import History, Trainer
from cdnn import datasets, schedules

from cdnn._version import __version__

__all__ = ["MLP", "Dense", "Sequential", "Optimizer", "SGD", "Adam", "AdamW", "RMSprop",
           "Trainer", "History", "Callback", "EarlyStopping", "ModelCheckpoint",
           "LearningRateScheduler", "ReduceLROnPlateau", "datasets", "schedules", "load",
           "set_num_threads", "get_num_threads", "limit_threads", "from_sklearn", "from_torch"]
