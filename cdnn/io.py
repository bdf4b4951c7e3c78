"""Model files: a network (and optionally its optimizer's state) in one safetensors file.

Tensors: `layers.{i}.weight` (fan_in, fan_out) and `layers.{i}.bias` (fan_out,) in the network's
dtype; with an optimizer also its state buffers `optimizer.{name}` (the flat parameter layout),
by the names cdnn/kinds.py gives them: `optimizer.momentum` for SGD, `optimizer.m` and
`optimizer.v` for Adam and AdamW, `optimizer.square_avg` and `optimizer.momentum` for RMSprop.
Metadata (all strings): format "cdnn", format_version "2", config (JSON of MLP.get_config()),
and with an optimizer `optimizer` (JSON: class, hyper-parameters, steps). Any safetensors
reader opens the file; nothing is pickled, and load checks every part.

Format 1 (cdnn up to 3f99230) differs only in the optimizer's tensors: `optimizer.state1` and
`optimizer.state2`, the buffers in kinds.py's order (SGD's state2 unused). It is read as well.

Resuming: a file saved with its optimizer restores the optimizer's state, hyper-parameters
and step count, so learning-rate schedules and the dropout masks (keyed by the Trainer's seed
and the step count) continue where they stopped. The Trainer's shuffling generator is not
part of the file: a resumed run repeats the uninterrupted one exactly with shuffle=False;
with shuffle=True it continues with a fresh shuffling stream (equally random, not the same).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat

import numpy as np

from cdnn import kinds
from cdnn._devices import to_numpy
from cdnn._validation import check_dtype
from cdnn.optim import Optimizer, class_of

FORMAT = "cdnn"
FORMAT_VERSION = "2"
READS = ("1", FORMAT_VERSION)
# class name -> its kind (kinds.py), the registry of what a file may hold
OPTIMIZERS = {kind.class_name: kind for kind in kinds.OPTIMIZERS.values()}
V1_STATE_NAMES = ("optimizer.state1", "optimizer.state2")
TEMPORARY_MARK = ".cdnn-tmp-"
# A saved step count above this is refused: schedules and Adam's bias correction compute with
# the step number as a double, exact up to 2**53.
MAX_STEPS = 2**53


def save(net, path, optimizer: Optimizer | None = None) -> None:
    """Write net (and optimizer's state, if given) to path as safetensors; see write_atomically
    for what happens on disk."""
    from safetensors.numpy import save as serialize

    if not all(hasattr(net, name) for name in ("get_config", "weights", "biases", "params")):
        raise TypeError(f"net must be a cdnn.MLP, got {type(net).__name__}")
    tensors = {}
    for i, (W, b) in enumerate(zip(net.weights, net.biases)):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(to_numpy(W))
        tensors[f"layers.{i}.bias"] = np.ascontiguousarray(to_numpy(b))
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "config": json.dumps(net.get_config())}
    if optimizer is not None:
        if type(optimizer).__name__ not in OPTIMIZERS or not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be one of cdnn.{', cdnn.'.join(OPTIMIZERS)}, got "
                            f"{type(optimizer).__name__}")
        state = optimizer.state
        if state is None:   # not stepped yet: its state is zeros
            state = {name: np.zeros_like(net.params) for name in optimizer.spec().state}
        elif any(a.shape != net.params.shape or a.dtype != net.params.dtype
                 for a in state.values()):
            raise ValueError("the optimizer holds state for another network")
        tensors.update({f"optimizer.{name}": to_numpy(array) for name, array in state.items()})
        metadata["optimizer"] = json.dumps({"class": type(optimizer).__name__,
                                            "hyperparameters": _hyperparameters(optimizer),
                                            "steps": optimizer.steps})
    # serialised in memory (a second copy of the parameters for a moment) and written by us:
    # safetensors' save_file makes its own ".tmpXXXX" beside the target, which a killed
    # process leaves behind under a name nobody can safely recognise as garbage
    write_atomically(path, serialize(tensors, metadata=metadata))


def write_atomically(path, data: bytes) -> None:
    """Write data to path so that path always holds the old or the whole new file (see
    open_atomically)."""
    with open_atomically(path) as f:
        f.write(data)


@contextlib.contextmanager
def open_atomically(path):
    """A binary file to write, which replaces path only once the block ends without an error:
    path always holds the old or the whole new file. Every file cdnn writes goes through here
    (model files, checkpoints, ONNX, the CLI's predictions, benchmark reports, plots).

    - A symlink is followed: its real target is replaced and the link stays.
    - Anything but a regular file (a directory, /dev/null, a FIFO) is refused before anything
      is opened: opening a FIFO to write would wait for a reader forever.
    - A new file gets the mode the umask gives (0644 under 022); a replaced file keeps its mode.
    - The data goes to a temporary file in the target's folder, named
      ".<name>.cdnn-tmp-<pid>-<random>", then fsync and os.replace. It is removed on any error
      (a full disk, an exception in the block); one that a killed process left behind is
      removed by the next write to the same path.
    """
    target, mode = _save_target(path)
    fd, temporary = _create_temporary(target, path)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(os.path.dirname(target))


def check_writable(path) -> None:
    """Raise now the error that saving to path would raise (for checks before a long fit)."""
    target, _ = _save_target(path)
    fd, temporary = _create_temporary(target, path)
    os.close(fd)
    os.unlink(temporary)


def _save_target(path) -> tuple[str, int | None]:
    """The real file behind path, and the permission bits to keep (None for a new file)."""
    path = file_path(path)
    folder = os.path.dirname(path) or "."
    # realpath drops "missing/.." without looking, where the system (and so load) needs
    # missing/ to exist: ask the system, so that save and load agree on what a path names
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "no such directory to save into", path)
    target = os.path.realpath(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target, None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ValueError(f"cannot save to {path!r}: it is {kind}"
                         + (f" ({target})" if target != os.path.abspath(path) else ""))
    return target, stat.S_IMODE(st.st_mode)


def file_path(path) -> str:
    """A path given as str, bytes or os.PathLike, as the str that every file function here
    uses (so that a path saved to as bytes loads as bytes)."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"a path must be a str, bytes or os.PathLike, got "
                        f"{type(path).__name__}")
    return os.fsdecode(path)


def _create_temporary(target: str, path) -> tuple[int, str]:
    """A new, empty temporary file beside target (stale ones of dead processes removed first);
    an error names the user's path, not the temporary."""
    folder, name = os.path.split(target)
    prefix = f".{name}{TEMPORARY_MARK}"
    try:
        _remove_stale_temporaries(folder, prefix)
        temporary = os.path.join(folder, f"{prefix}{os.getpid()}-{secrets.token_hex(4)}")
        return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
    except OSError as e:
        if not os.path.isdir(folder):
            raise FileNotFoundError(errno.ENOENT, "no such directory to save into",
                                    file_path(path)) from None
        raise type(e)(e.errno, f"cannot write a file there ({e.strerror})",
                      file_path(path)) from None


def _remove_stale_temporaries(folder: str, prefix: str) -> None:
    """Remove the temporaries of saves to this name whose process has died (killed mid-save)."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            pid = entry.name[len(prefix):].split("-")[0]
            if entry.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)   # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):   # another user's process, or not a pid
        pass
    return True


def _fsync_directory(folder: str) -> None:
    """Make the rename durable (where the system lets a directory be opened and synced)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read(path, optimizer: Optimizer | None = None) -> tuple[dict, list]:
    """The config and the (weight, bias) arrays of a network written by save, every tensor
    checked against the config; with optimizer, also restore its state, hyper-parameters and
    step count from the file (the optimizer must be of the class that was saved). Raises
    ValueError naming the problem for anything but a well-formed cdnn file. (cdnn.load builds
    the network.)"""
    metadata, tensors = _read(path)
    where = f"{file_path(path)!r}"
    if metadata is None:
        raise ValueError(f"{where} has no metadata; it was not written by cdnn")
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{where} is not a cdnn model file (format "
                         f"{metadata.get('format')!r}, expected {FORMAT!r})")
    version = metadata.get("format_version")
    if version not in READS:
        raise ValueError(f"{where} has format_version {version!r}; this cdnn reads versions "
                         f"{', '.join(READS)}")
    config = _json(metadata, "config", where)
    if not isinstance(config, dict):
        raise ValueError(f"{where}: config is not a JSON object")
    saved = _saved_optimizer(metadata, where) if "optimizer" in metadata else None
    expected = _expected_shapes(config, where)
    if saved is not None:
        n_params = sum(int(np.prod(shape)) for shape in expected.values())
        state_tensors = _state_tensors(OPTIMIZERS[saved["class"]], version)
        held = V1_STATE_NAMES if version == "1" else state_tensors.values()
        expected.update({name: (n_params,) for name in held})
    _check_names(tensors, expected, where)
    _check_tensors(tensors, expected, _config_dtype(config, where), where)
    if optimizer is not None:
        if saved is None:
            raise ValueError(f"{where} holds no optimizer state; save it with "
                             f"net.save(path, optimizer)")
        _restore_optimizer(optimizer, saved, {name: (tensor, tensors[tensor])
                                              for name, tensor in state_tensors.items()}, where)
    n_layers = len(config["layer_sizes"]) - 1
    return config, [(tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"])
                    for i in range(n_layers)]


def _config_dtype(config: dict, where: str) -> np.dtype:
    try:
        return check_dtype(config.get("dtype", "float32"))
    except ValueError as e:
        raise ValueError(f"{where}: the config does not build a network: {e}") from None


def _check_tensors(tensors: dict, shapes: dict, dtype: np.dtype, where: str):
    """Every tensor of the shape and dtype the config implies, and finite."""
    for name, array in tensors.items():
        if array.shape != shapes[name]:
            raise ValueError(f"{where}: tensor {name} has shape {array.shape}, the config "
                             f"needs {shapes[name]}")
        if array.dtype != dtype:
            raise ValueError(f"{where}: tensor {name} is {array.dtype}, the config says "
                             f"{dtype.name}")
        if not np.isfinite(array).all():
            raise ValueError(f"{where}: tensor {name} holds non-finite values")


def _hyperparameters(optimizer: Optimizer) -> dict:
    """The constructor arguments, which the optimizers keep as attributes of the same names."""
    return {k: v for k, v in vars(optimizer).items() if k not in ("state", "steps")}


def _read(path) -> tuple[dict | None, dict[str, np.ndarray]]:
    from safetensors import safe_open

    path = file_path(path)
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


def _check_json_types(hyper, defaults: dict, where: str):
    """Each hyper-parameter of the JSON type its default has: true/false for a flag (the
    string "false" would turn it on), a number for a number, a pair of numbers for betas."""
    if not isinstance(hyper, dict):
        raise ValueError(f"{where}: the optimizer's hyperparameters are not a JSON object")
    for key, value in hyper.items():
        if key not in defaults:
            raise ValueError(f"{where}: unknown optimizer hyper-parameter {key!r}")
        default = defaults[key]
        if isinstance(default, bool):
            ok = type(value) is bool
        elif isinstance(default, tuple):
            ok = type(value) is list and len(value) == len(default) and all(
                type(v) in (int, float) for v in value)
        else:
            ok = type(value) in (int, float)
        if not ok:
            raise ValueError(f"{where}: optimizer hyper-parameter {key!r} is {value!r}, not "
                             f"{type(default).__name__} like its default {default!r}")


def _check_names(tensors: dict, expected: dict, where: str):
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise ValueError(f"{where} lacks tensors {', '.join(missing)}")
    if extra:
        raise ValueError(f"{where} holds unexpected tensors {', '.join(extra)}")


def _saved_optimizer(metadata: dict, where: str) -> dict:
    """The optimizer metadata, its keys and class checked."""
    saved = _json(metadata, "optimizer", where)
    if not isinstance(saved, dict) or set(saved) != {"class", "hyperparameters", "steps"}:
        raise ValueError(f"{where}: the optimizer metadata must hold class, hyperparameters "
                         f"and steps")
    if not isinstance(saved["class"], str) or saved["class"] not in OPTIMIZERS:
        raise ValueError(f"{where}: unknown optimizer class {saved['class']!r}")
    return saved


def _state_tensors(kind: kinds.OptimizerKind, version: str) -> dict[str, str]:
    """Each state buffer's name -> the tensor that holds it in a file of this version."""
    if version == "1":   # state1, state2 in the kind's order (SGD left state2 unused)
        return dict(zip(kind.state, V1_STATE_NAMES))
    return {name: f"optimizer.{name}" for name in kind.state}


def _restore_optimizer(optimizer: Optimizer, saved: dict, state: dict, where: str):
    """state: each buffer's name -> (its tensor's name, the tensor)"""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a cdnn optimizer, got {type(optimizer).__name__}")
    name, hyper, steps = saved["class"], saved["hyperparameters"], saved["steps"]
    if type(optimizer).__name__ != name:
        raise ValueError(f"{where} holds optimizer state of class {name}, not "
                         f"{type(optimizer).__name__}")
    if type(steps) is not int or not 0 <= steps <= MAX_STEPS:
        raise ValueError(f"{where}: the optimizer's step count {steps!r} is not an integer in "
                         f"0..2**53")
    kind = OPTIMIZERS[name]
    _check_json_types(hyper, _hyperparameters(class_of(kind)()), where)
    try:   # the constructor validates the values (and turns betas back into a tuple)
        fresh = class_of(kind)(**hyper)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: bad optimizer hyper-parameters: {e}") from e
    for buffer in kind.squares:
        tensor, values = state[buffer]
        if (values < 0).any():
            raise ValueError(f"{where}: {tensor} holds running squares of the gradient, which "
                             f"cannot be negative")
    optimizer.__dict__.update(_hyperparameters(fresh))
    optimizer.steps = steps
    optimizer.state = {buffer: values.copy() for buffer, (_, values) in state.items()}
