"""The model: a multilayer perceptron whose parameters live in one flat buffer."""
from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from cdnn import _devices
from cdnn._engine import Batch
from cdnn._native import _network
from cdnn import io, kinds, onnx
from cdnn._validation import (check_choice, check_dtype, check_layer_sizes,
                              check_positive_int, check_real)
from cdnn.initializers import INITIALIZERS, default_for

LOSSES = kinds.names(kinds.LOSSES)                  # every name accepted, aliases included
ACTIVATIONS = kinds.names(kinds.ACTIVATIONS)


class MLP:
    """A fully-connected feedforward network.

    Args:
        layer_sizes: widths from input to output, e.g. [784, 512, 512, 10].
        activation: of the hidden layers — one name, or one per hidden layer. The output layer is
            linear; the loss applies softmax or sigmoid to it.
        loss: "softmax_cross_entropy" (labels: class indices or one-hot rows),
            "sigmoid_cross_entropy" (binary or multi-label targets in [0, 1]) or
            "mean_squared_error" (regression) or "poisson" (counts or rates ≥ 0: half the
            Poisson deviance of the mean exp(output), which predict returns).
        init: a weight initialiser name (he_uniform for the ReLU family, glorot_uniform otherwise);
            biases start at zero. "zeros" never breaks the symmetry between units.
        dropout: rate on the output of each hidden layer (one number or one per hidden layer),
            active only while training.
        l2: penalty l2/2 · Σ‖W‖² on the weights (not biases), added to the loss.
        device: "cpu", or "cuda" for the current NVIDIA GPU (needs CuPy: pip install
            'cdnn[cuda12]' or 'cdnn[cuda13]'); net.to(device) moves a network.
        matmul_precision: of the inputs of every matrix product, in training and prediction:
            "float32" (the default: the network's dtype) or "bfloat16" (bf16 inputs, float32
            accumulation and outputs). On the CPU bfloat16 runs through oneDNN on the CPU's
            AMX or AVX512-BF16 units (pip install 'cdnn[onednn]'; float32 networks, dense X);
            on the GPU on the tensor cores, which also take "tensorfloat32". Parameters,
            optimizer state, losses and element-wise work stay in the network's dtype, as with
            torch.set_float32_matmul_precision and JAX's default_matmul_precision. "highest"
            is "float32".

    Attributes:
        params: every weight and bias in one flat 1-D array of the network's dtype (a CuPy
            array on device="cuda"); gradients (loss_and_grad) and optimizer state have this
            layout.
        weights: one array per layer, views into params: weights[i] has shape
            (fan_in, fan_out), as layer_sizes[i], layer_sizes[i + 1].
        biases: one array per layer, views into params: biases[i] has shape (fan_out,).
    """

    def __init__(self, layer_sizes: Sequence[int], activation: str | Sequence[str] = "relu",
                 loss: str = "softmax_cross_entropy", init: str | None = None,
                 dtype: str = "float32", seed: int | None = None, *,
                 dropout: float | Sequence[float] = 0.0, l2: float = 0.0,
                 leaky_slope: float = 0.01, device: str = "cpu",
                 matmul_precision: str = "float32"):
        if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__len__"):
            raise TypeError("layer_sizes must be a list of layer widths, e.g. [784, 128, 10]")
        if len(layer_sizes) < 2:
            raise ValueError("layer_sizes needs at least an input and an output width")
        self.layer_sizes = check_layer_sizes(layer_sizes)
        n_hidden = len(self.layer_sizes) - 2
        self.activations = tuple(map(kinds.activation_name,
                                     _per_hidden_layer(activation, n_hidden, "activation")))
        for a in self.activations or ([activation] if isinstance(activation, str) else []):
            check_choice(a, "activation", ACTIVATIONS)
        self.loss = kinds.loss_name(loss)
        check_choice(self.loss, "loss", LOSSES)
        self.init = init if init is not None else default_for(
            self.activations[0] if n_hidden else "identity")
        check_choice(self.init, "init", INITIALIZERS)
        self.dtype = check_dtype(dtype)
        self.dropout = tuple(check_real(r, "dropout", 0, 1, high_open=True)
                             for r in _per_hidden_layer(dropout, n_hidden, "dropout"))
        self.l2 = check_real(l2, "l2", 0)
        self.leaky_slope = check_real(leaky_slope, "leaky_slope", 0, 1)
        check_choice(matmul_precision, "matmul_precision", _devices.MATMUL_PRECISIONS)
        self.matmul_precision = "float32" if matmul_precision == "highest" else matmul_precision
        if seed is not None:
            check_positive_int(seed, "seed", 0)
        self.seed = seed
        self.device = _devices.check_device(device)
        self._build()
        self.initialize(seed)

    def _build(self):
        self.engine = _devices.make_engine(
            self.layer_sizes, self.activations + ("identity",), self.loss, self.leaky_slope,
            self.dropout + (0.0,), self.l2, self.dtype, self.device, self.matmul_precision)
        self.params = self.engine.new_params()
        self.weights, self.biases = [], []
        start = 0
        for fan_in, fan_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            self.weights.append(self.params[start:start + fan_in * fan_out].reshape(fan_in, fan_out))
            start += fan_in * fan_out
            self.biases.append(self.params[start:start + fan_out])
            start += fan_out

    def initialize(self, seed: int | None = None):
        """Draw fresh weights with the network's initialiser; zero the biases."""
        rng = np.random.default_rng(seed)
        for W, b in zip(self.weights, self.biases):
            W[...] = self.engine.asarray(INITIALIZERS[self.init](rng, *W.shape))
            b[...] = 0

    def to(self, device: str) -> "MLP":
        """Move the network to device ("cpu" or "cuda"), in place; returns it. An optimizer's
        state moves with it at the next fit."""
        device = _devices.check_device(device)
        if device != self.device:
            params = self.engine.to_host(self.params)
            self.device = device
            self._build()
            self.params[...] = self.engine.asarray(params)
        return self

    @property
    def matmul_engine(self) -> str:
        """What runs the matrix products: BLAS in the network's dtype, or oneDNN bf16 on the
        CPU's matrix engine (AMX or AVX512-BF16)."""
        return self.engine.matmul_engine

    @property
    def n_inputs(self) -> int:
        """The number of input features (layer_sizes[0])."""
        return self.layer_sizes[0]

    @property
    def is_classifier(self) -> bool:
        """Whether the loss is a cross-entropy, whose predictions have an accuracy."""
        return kinds.LOSSES[self.loss].classifier

    @property
    def n_outputs(self) -> int:
        """The number of outputs (layer_sizes[-1])."""
        return self.layer_sizes[-1]

    def get_config(self) -> dict:
        """What it takes to rebuild this network (without its parameters)."""
        return {"layer_sizes": list(self.layer_sizes), "activation": list(self.activations),
                "loss": self.loss, "init": self.init, "dtype": self.dtype.name,
                "seed": self.seed, "dropout": list(self.dropout), "l2": self.l2,
                "leaky_slope": self.leaky_slope, "matmul_precision": self.matmul_precision}

    def __repr__(self):
        sizes = "-".join(map(str, self.layer_sizes))
        acts = ",".join(sorted(set(self.activations))) or "linear"
        matmul = "" if self.matmul_precision == "float32" else f", {self.matmul_engine}"
        return f"MLP({sizes}, {acts}, {self.loss}, {self.dtype.name}{matmul})"

    # pickling (scikit-learn's clone and joblib need it): the engine is rebuilt, not pickled
    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("engine", "weights", "biases", "params")}
        return state | {"params": self.engine.to_host(self.params)}

    def __setstate__(self, state):
        params = state.pop("params")
        self.__dict__ |= {"device": "cpu", "matmul_precision": "float32"} | state
        self._build()
        self.params[...] = self.engine.asarray(params)

    def save(self, path, optimizer=None):
        """Write the network (and optionally an optimizer's state) to a safetensors file."""
        io.save(self, path, optimizer)

    # --- inference -------------------------------------------------------------------------

    def forward(self, X) -> np.ndarray:
        """The output layer's values (logits for the cross-entropy losses), shape (n, n_outputs)."""
        return self.engine.forward(self.params, X)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities: softmax of the outputs, or per-output sigmoid."""
        if not self.is_classifier:
            raise ValueError("predict_proba needs a classification loss; this network "
                             "is a regressor (use predict)")
        return self.engine.probabilities(self.forward(X))

    def predict(self, X) -> np.ndarray:
        """Class indices (softmax), 0/1 per output (sigmoid) or the outputs (regression);
        shape (n,) when there is a single output or a class index, else (n, n_outputs)."""
        out = self.forward(X)
        if self.loss == "softmax_cross_entropy":
            return out.argmax(axis=1)
        if self.loss == "sigmoid_cross_entropy":
            out = (out > 0).astype(np.int64)
        if self.loss == "poisson":          # the output is the log of the mean
            out = self.engine.xp.exp(out)
        return out[:, 0] if self.n_outputs == 1 else out

    def evaluate(self, X, y, sample_weight=None) -> dict:
        """{"loss": mean loss, "accuracy": fraction correct (classification only)}; dropout off,
        the L2 penalty not included."""
        return self.evaluate_batch(self.engine.prepare(X, y, sample_weight))

    def evaluate_batch(self, batch: Batch) -> dict:
        """evaluate's metrics for rows the engine has already validated (engine.prepare)."""
        loss, correct = self.engine.evaluate(self.params, batch)
        metrics = {"loss": loss}
        if self.is_classifier:
            total = len(batch.X) if batch.weights is None else float(batch.weights.sum())
            metrics["accuracy"] = correct / total if total > 0 else float("nan")
        return metrics

    # --- training --------------------------------------------------------------------------

    def loss_and_grad(self, X, y, sample_weight=None) -> tuple[float, np.ndarray]:
        """The mean loss over the rows of X (plus the L2 penalty) and its gradient with respect
        to params, in params' layout; dropout is off. The gradient lives where params does: a
        numpy array, or on device="cuda" a CuPy array (opt.step(net.params, grad) takes both;
        grad.get() copies it to the host)."""
        return self.engine.loss_and_grad(self.params, self.engine.prepare(X, y, sample_weight))

    def to_onnx(self, path=None):
        """This network as an onnx.ModelProto, written to path when one is given (needs
        pip install 'cdnn[onnx]'; the graph is described in cdnn.onnx)."""
        return onnx.to_onnx(self, path)


def Dense(units: int, activation: str = "identity", dropout: float = 0.0) -> dict:
    """One layer for Sequential: its width, activation and dropout rate on its output."""
    return {"units": units, "activation": activation, "dropout": dropout}


def Sequential(layers: Sequence[dict], input_dim: int, **kwargs) -> MLP:
    """An MLP from a list of Dense layers; the last one is the linear output layer."""
    if isinstance(layers, dict) or not isinstance(layers, Sequence) or not layers:
        raise TypeError("layers must be a non-empty list of cdnn.Dense(...) layers")
    layers = [_dense_layer(layer, i) for i, layer in enumerate(layers)]
    if layers[-1]["activation"] != "identity" or layers[-1]["dropout"]:
        raise ValueError("the last Dense layer is the output: no activation (the loss applies "
                         "softmax or sigmoid) and no dropout")
    hidden = layers[:-1]
    return MLP([input_dim] + [layer["units"] for layer in layers],
               activation=[layer["activation"] for layer in hidden],
               dropout=[layer["dropout"] for layer in hidden], **kwargs)


def _dense_layer(layer, i: int) -> dict:
    """A Dense layer given as a dict, with the defaults Dense gives (only units is required)."""
    if not isinstance(layer, dict) or "units" not in layer:
        raise TypeError(f"layers[{i}] must be a cdnn.Dense(units, ...) layer, got {layer!r}")
    unknown = set(layer) - {"units", "activation", "dropout"}
    if unknown:
        raise ValueError(f"layers[{i}] has unknown keys {sorted(unknown)}; a Dense layer has "
                         f"units, activation and dropout")
    return Dense(**layer)


def _per_hidden_layer(value, n_hidden: int, name: str) -> tuple:
    if value is None or isinstance(value, (str, numbers.Real)):   # numpy scalars included
        return (value,) * n_hidden
    value = tuple(value)
    if len(value) != n_hidden:
        raise ValueError(f"{name} has {len(value)} entries for {n_hidden} hidden layers")
    return value


def load(path, optimizer=None, device: str = "cpu") -> MLP:
    """Read a network written by MLP.save (and, if given, restore the optimizer's state) onto
    device ("cpu" or "cuda")."""
    config, layers = io.read(path, optimizer)
    device = _devices.check_device(device)
    try:   # only after io.read checked every tensor: a config alone may ask for terabytes
        net = MLP(**config, device=device)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path!r}: the config does not build a network: {e}") from e
    for (W, b), (saved_W, saved_b) in zip(zip(net.weights, net.biases), layers):
        W[...] = net.engine.asarray(saved_W)
        b[...] = net.engine.asarray(saved_b)
    return net
