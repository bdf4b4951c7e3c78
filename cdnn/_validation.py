"""Argument checks shared by every public entry point.

Everything that reaches a kernel passes through here first: the kernels trust their inputs, so
bad input must become a ValueError or TypeError that names the problem, never a crash.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from cdnn._native import _network
from cdnn._sparse import SparseRows, as_sparse_rows, is_sparse

# The kernels hold layer widths and batch sizes in C ints (BLAS takes them as such), and index a
# sample's workspace (each layer's outputs, pre-activations, dropout outputs and two deltas of
# the widest layer: at most 3·Σwidths + 2·widest + 2) in C ints too.
MAX_WIDTH = 2**31 - 1


def check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(sorted(choices))}")
    return value


def check_positive_int(value, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return int(value)


def check_bool(value, name: str) -> bool:
    """True or False (numpy's booleans and the integers 0 and 1 too), never a string such as
    "false", which bool() would turn into True."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral)
                                               and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def _layer_name(i: int, n_layers: int) -> str:
    if i == 0:
        return "the input layer"
    return "the output layer" if i == n_layers - 1 else f"hidden layer {i}"


def check_layer_sizes(layer_sizes) -> tuple[int, ...]:
    """Widths that the kernels can index with C ints; the message names the layer at fault."""
    sizes = []
    for i, n in enumerate(layer_sizes):
        where = f"layer_sizes[{i}] ({_layer_name(i, len(layer_sizes))})"
        sizes.append(check_positive_int(n, where, maximum=MAX_WIDTH))
    workspace = 3 * sum(sizes) + 2 * max(sizes) + 2
    if workspace > MAX_WIDTH:
        widest = sizes.index(max(sizes))
        raise ValueError(f"layer_sizes[{widest}] ({_layer_name(widest, len(sizes))}) is "
                         f"{sizes[widest]} wide: with the other layers one sample's workspace "
                         f"would hold {workspace} values, above the {MAX_WIDTH} that the "
                         f"kernels index with C ints")
    return tuple(sizes)


def check_real(value, name: str, low=None, high=None, low_open=False, high_open=False) -> float:
    """A finite real number in [low, high] (an open end with low_open / high_open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '≥'} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '≤'} {high}, got {value}")
    return value


def _reject_unsupported(a, name: str):
    if hasattr(a, "toarray") and hasattr(a, "nnz"):
        raise TypeError(f"{name} is a sparse matrix; cdnn takes sparse input only as X, "
                        f"{name} must be a dense array: pass {name}.toarray()")


def _where(index) -> str:
    """'row 3' or 'row 3, column 2' for an index into a 1-D or 2-D array."""
    index = [int(i) for i in index]
    return f"row {index[0]}" + (f", column {index[1]}" if len(index) > 1 else "")


def as_float_array(a, name: str, dtype, ndim: int, finite: bool = True) -> np.ndarray:
    """a as a C-contiguous array of dtype with ndim dimensions (a (n, 1) column is accepted as
    1-D), non-empty and finite (unless finite=False: the caller's kernel checks that itself).
    Integer, boolean and float16 input is converted."""
    _reject_unsupported(a, name)
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    if ndim == 1 and a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != ndim:
        hint = " (for one sample use X.reshape(1, -1))" if ndim == 2 and a.ndim == 1 else ""
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}{hint}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    original = a
    if a.dtype != dtype or not a.flags.c_contiguous:
        with np.errstate(over="ignore"):   # an overflow is reported below, as an error
            a = np.ascontiguousarray(a, dtype=dtype)
    if finite and not _network.all_finite(a.reshape(-1)):   # one native pass, no temporary
        where = tuple(np.argwhere(~np.isfinite(a))[0])
        if np.isfinite(original[where]):   # finite before the conversion: it overflowed
            raise ValueError(f"{name} holds {original[where]:g} at {_where(where)}, too large "
                             f"for {np.dtype(dtype).name}; scale the inputs")
        raise ValueError(f"{name} holds a non-finite value ({original[where]}) at "
                         f"{_where(where)}")
    return a


def check_X(X, dtype, n_features: int, finite: bool = True) -> np.ndarray | SparseRows:
    """X as the kernels read it: a C-contiguous array of dtype or, for a scipy.sparse X,
    validated CSR rows (cdnn._sparse). finite=False leaves the NaN/inf check of dense X to
    the caller's kernel."""
    if is_sparse(X):
        return as_sparse_rows(X, dtype, n_features)
    if isinstance(X, SparseRows):     # validated already (a view of a fit's rows)
        return X
    X = as_float_array(X, "X", dtype, 2, finite)
    if X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features per row, the network expects {n_features}")
    return X


def check_same_length(n: int, other: np.ndarray, name: str):
    if other.shape[0] != n:
        raise ValueError(f"X has {n} rows but {name} has {other.shape[0]}")


def check_labels(y, n_classes: int | None) -> np.ndarray:
    """Integer class indices in [0, n_classes) as C ints; floats are accepted when integral.
    n_classes None: any a C int holds (labels that will size a network). Always a copy,
    checked after it is taken: the kernels read labels without the GIL, so the caller's array
    may change under them (another thread) without ever reaching them."""
    _reject_unsupported(y, "y")
    top = np.iinfo(np.intc).max if n_classes is None else n_classes
    y = np.array(y)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"y must hold class indices (integers), got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        one_hot = "" if n_classes is None else f" (or one-hot rows of {n_classes} columns)"
        raise ValueError(f"y must be 1-D class indices{one_hot}, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("y is empty")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        i = int(np.argmin(np.isfinite(y)))
        raise ValueError(f"y holds a non-finite value ({y[i]}) at row {i}")
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        i = int(np.argmin(y == np.round(y)))
        raise ValueError(f"y holds a non-integer value ({y[i]:g}) at row {i}; class labels "
                         f"must be integers 0..{top - 1} (for regression use "
                         f"loss='mean_squared_error')")
    low, high = y.min(), y.max()
    if low < 0 or high >= top:
        bad = low if low < 0 else high
        raise ValueError(f"y holds label {bad:g}, outside 0..{top - 1}" + (
            "" if n_classes is None else f" for the network's {n_classes} outputs"))
    return np.ascontiguousarray(y, dtype=np.intc)


def check_sample_weight(w, n: int, dtype, scaled: bool = True) -> np.ndarray | None:
    """Non-negative weights, one per row, not all zero; scaled (scaled_weights) unless asked
    for as given."""
    if w is None:
        return None
    w = as_float_array(w, "sample_weight", dtype, 1)
    check_same_length(n, w, "sample_weight")
    if (w < 0).any():
        raise ValueError("sample_weight must be non-negative")
    scaled_w = scaled_weights(w, "sample_weight")
    return scaled_w if scaled else w


def scaled_weights(w: np.ndarray | None, what: str) -> np.ndarray | None:
    """Row weights scaled to a largest weight of 1. The loss is the weighted mean, so this
    changes no result, but keeps 1/Σw and Σw within float32's range for weights of 1e-40 or
    3e38 (each valid float32). At least one row must count: with every weight 0 there is
    nothing to learn or measure."""
    if w is None:
        return None
    top = w.max()
    if not top > 0:
        raise ValueError(f"{what} is all zero: at least one row needs a non-zero weight")
    return w / top if top != 1 else w


DTYPES = {"float32": np.float32, "float64": np.float64}


def check_dtype(dtype) -> np.dtype:
    """float32 or float64 in the machine's byte order (the kernels read native floats only)."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"unknown dtype {dtype!r}; choose float32 or float64") from None
    if dtype.name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype.name}; choose float32 or float64")
    return np.dtype(DTYPES[dtype.name])   # ">f4" becomes the native float32
