"""Model files: a network (and optionally its optimizer's state) in one safetensors file.

Tensors: `layers.{i}.weight` (fan_in, fan_out) and `layers.{i}.bias` (fan_out,) in the network's
dtype; with an optimizer also `optimizer.state1` and `optimizer.state2` (the flat parameter
layout). Metadata (all strings): format "cdnn", format_version "1", config (JSON of
MLP.get_config()), and with an optimizer `optimizer` (JSON: class, hyper-parameters, steps).
Any safetensors reader opens the file; nothing is pickled, and load checks every part.

Resuming: a file saved with its optimizer restores the optimizer's state, hyper-parameters
and step count, so learning-rate schedules and the dropout masks (keyed by the Trainer's seed
and the step count) continue where they stopped. The Trainer's shuffling generator is not
part of the file: a resumed run repeats the uninterrupted one exactly with shuffle=False;
with shuffle=True it continues with a fresh shuffling stream (equally random, not the same).
"""
from __future__ import annotations

import json
import os

import numpy as np

from cdnn.network import MLP
from cdnn.optim import SGD, Adam, AdamW, Optimizer, RMSprop

FORMAT = "cdnn"
FORMAT_VERSION = "1"
OPTIMIZERS = {cls.__name__: cls for cls in (SGD, Adam, AdamW, RMSprop)}
STATE_NAMES = ("optimizer.state1", "optimizer.state2")


def save(net: MLP, path, optimizer: Optimizer | None = None) -> None:
    """Write net (and optimizer's state, if given) to path as safetensors. The file is written
    beside path and then renamed, so an interrupted save never leaves a broken file."""
    from safetensors.numpy import save_file

    if not isinstance(net, MLP):
        raise TypeError(f"net must be a cdnn.MLP, got {type(net).__name__}")
    tensors = {}
    for i, (W, b) in enumerate(zip(net.weights, net.biases)):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(W)
        tensors[f"layers.{i}.bias"] = np.ascontiguousarray(b)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "config": json.dumps(net.get_config())}
    if optimizer is not None:
        if type(optimizer).__name__ not in OPTIMIZERS or not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be one of cdnn.{', cdnn.'.join(OPTIMIZERS)}, got "
                            f"{type(optimizer).__name__}")
        state = optimizer.state
        if state is None:   # not stepped yet: its state is zeros
            state = (np.zeros_like(net.params), np.zeros_like(net.params))
        elif state[0].shape != net.params.shape or state[0].dtype != net.params.dtype:
            raise ValueError("the optimizer holds state for another network")
        tensors.update(zip(STATE_NAMES, state))
        metadata["optimizer"] = json.dumps({"class": type(optimizer).__name__,
                                            "hyperparameters": _hyperparameters(optimizer),
                                            "steps": optimizer.steps})
    path = os.fspath(path)
    partial = f"{path}.partial-{os.getpid()}"
    try:
        save_file(tensors, partial, metadata=metadata)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def load(path, optimizer: Optimizer | None = None) -> MLP:
    """Read a network written by save; with optimizer, also restore its state, hyper-parameters
    and step count from the file (the optimizer must be of the class that was saved). Raises
    ValueError naming the problem for anything but a well-formed cdnn file."""
    metadata, tensors = _read(path)
    where = f"{os.fspath(path)!r}"
    if metadata is None:
        raise ValueError(f"{where} has no metadata; it was not written by cdnn")
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{where} is not a cdnn model file (format "
                         f"{metadata.get('format')!r}, expected {FORMAT!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{where} has format_version {metadata.get('format_version')!r}; this "
                         f"cdnn reads version {FORMAT_VERSION}")
    config = _json(metadata, "config", where)
    if not isinstance(config, dict):
        raise ValueError(f"{where}: config is not a JSON object")
    has_optimizer = "optimizer" in metadata
    expected = _expected_shapes(config, where)
    if has_optimizer:
        n_params = sum(int(np.prod(shape)) for shape in expected.values())
        expected.update({name: (n_params,) for name in STATE_NAMES})
    _check_names(tensors, expected, where)
    for name, array in tensors.items():   # before building: a config alone may ask for TBs
        if array.shape != expected[name]:
            raise ValueError(f"{where}: tensor {name} has shape {array.shape}, the config "
                             f"needs {expected[name]}")
    try:
        net = MLP(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: the config does not build a network: {e}") from e
    for name, array in tensors.items():
        if array.dtype != net.dtype:
            raise ValueError(f"{where}: tensor {name} is {array.dtype}, the config says "
                             f"{net.dtype}")
        if not np.isfinite(array).all():
            raise ValueError(f"{where}: tensor {name} holds non-finite values")
    for i, (W, b) in enumerate(zip(net.weights, net.biases)):
        W[...] = tensors[f"layers.{i}.weight"]
        b[...] = tensors[f"layers.{i}.bias"]
    if optimizer is not None:
        if not has_optimizer:
            raise ValueError(f"{where} holds no optimizer state; save it with "
                             f"net.save(path, optimizer)")
        _restore_optimizer(optimizer, _json(metadata, "optimizer", where),
                           [tensors[name] for name in STATE_NAMES], where)
    return net


def _hyperparameters(optimizer: Optimizer) -> dict:
    """The constructor arguments, which the optimizers keep as attributes of the same names."""
    return {k: v for k, v in vars(optimizer).items() if k not in ("state", "steps")}


def _read(path) -> tuple[dict | None, dict[str, np.ndarray]]:
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    try:
        with safe_open(path, framework="numpy") as f:
            return f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:   # the library raises its own error type for a malformed file
        raise ValueError(f"{path!r} is not a readable safetensors file: {e}") from e


def _json(metadata: dict, key: str, where: str):
    try:
        return json.loads(metadata[key])
    except KeyError:
        raise ValueError(f"{where}: the metadata has no {key!r} entry") from None
    except (json.JSONDecodeError, RecursionError) as e:   # RecursionError: nested too deep
        raise ValueError(f"{where}: the {key!r} metadata is not valid JSON: {e}") from e


def _expected_shapes(config: dict, where: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the config's layer sizes (checked before any allocation)."""
    sizes = config.get("layer_sizes")
    if (not isinstance(sizes, list) or len(sizes) < 2
            or not all(type(n) is int and n > 0 for n in sizes)):
        raise ValueError(f"{where}: the config's layer_sizes {sizes!r} is not a list of at "
                         f"least two positive integers")
    shapes = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"layers.{i}.weight"] = (fan_in, fan_out)
        shapes[f"layers.{i}.bias"] = (fan_out,)
    return shapes


def _check_names(tensors: dict, expected: dict, where: str):
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise ValueError(f"{where} lacks tensors {', '.join(missing)}")
    if extra:
        raise ValueError(f"{where} holds unexpected tensors {', '.join(extra)}")


def _restore_optimizer(optimizer: Optimizer, saved, state: list[np.ndarray], where: str):
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a cdnn optimizer, got {type(optimizer).__name__}")
    if not isinstance(saved, dict) or set(saved) != {"class", "hyperparameters", "steps"}:
        raise ValueError(f"{where}: the optimizer metadata must hold class, hyperparameters "
                         f"and steps")
    name, hyper, steps = saved["class"], saved["hyperparameters"], saved["steps"]
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"{where}: unknown optimizer class {name!r}")
    if type(optimizer).__name__ != name:
        raise ValueError(f"{where} holds the state of a {name}, not of a "
                         f"{type(optimizer).__name__}")
    if type(steps) is not int or steps < 0:
        raise ValueError(f"{where}: the optimizer's step count {steps!r} is not an integer ≥ 0")
    try:   # the constructor validates the hyper-parameters (and turns betas back into a tuple)
        fresh = OPTIMIZERS[name](**hyper)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: bad optimizer hyper-parameters: {e}") from e
    optimizer.__dict__.update(_hyperparameters(fresh))
    optimizer.steps = steps
    optimizer.state = (state[0].copy(), state[1].copy())
