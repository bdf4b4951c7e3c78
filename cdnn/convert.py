"""Networks trained elsewhere as cdnn.MLP: scikit-learn's MLP estimators and PyTorch's
nn.Sequential. The weights are copied; the MLP predicts what the source model did.

    net = cdnn.from_sklearn(fitted_mlp_classifier)   # net.classes_: the estimator's labels
    net = cdnn.from_torch(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))

Neither library is imported here: an object that is one of their models comes with its
library already loaded.
"""
from __future__ import annotations

import sys

import numpy as np

from cdnn import kinds, onnx
from cdnn.network import MLP

# scikit-learn's out_activation_ -> the cdnn loss whose predict_proba/predict applies it
SKLEARN_OUTPUTS = {loss.sklearn_output: loss.name for loss in kinds.LOSSES.values()}
# torch.nn class name -> cdnn activation; Identity and Dropout (a no-op when predicting) vanish.
# A layer is matched by its exact class (_torch_kind): a subclass may override forward, and a
# user's class of the same name may compute anything.
TORCH_ACTIVATIONS = {a.torch: a.name for a in kinds.ACTIVATIONS.values() if a.torch} | {
    "Softmax": "softmax"}
TORCH_NO_OPS = ("Identity", "Dropout")
TORCH_CONTAINERS = ("Sequential",)
# an activation after the last Linear is the loss's output function
TORCH_OUTPUTS = {"softmax": "softmax_cross_entropy", "sigmoid": "sigmoid_cross_entropy"}
DTYPE_NAMES = ("float32", "float64")


def _mlp(weights: list, biases: list, activations: list, loss: str, **kwargs) -> MLP:
    """An MLP holding these weights ((fan_in, fan_out) arrays) and biases."""
    dtype = weights[0].dtype
    sizes = [weights[0].shape[0]] + [W.shape[1] for W in weights]
    net = MLP(sizes, activation=activations, loss=loss, dtype=dtype.name, seed=0, **kwargs)
    for W, b, W_net, b_net in zip(weights, biases, net.weights, net.biases):
        W_net[...] = W
        b_net[...] = b
    return net


# --- scikit-learn ----------------------------------------------------------------------------

def _check_estimator(estimator) -> None:
    """A fitted MLPClassifier or MLPRegressor, scikit-learn's or cdnn.sklearn's."""
    # by name and module, not isinstance: importing cdnn.sklearn here would be an import cycle
    # (it exports through this module), and scikit-learn's classes need scikit-learn loaded
    kind = type(estimator)
    if (kind.__name__ not in ("MLPClassifier", "MLPRegressor")
            or not kind.__module__.startswith(("sklearn.", "cdnn.sklearn"))):
        raise TypeError(f"expected a fitted scikit-learn MLPClassifier or MLPRegressor (or "
                        f"cdnn.sklearn's), got {type(estimator).__name__}")
    if not hasattr(estimator, "coefs_"):
        raise ValueError(f"this {type(estimator).__name__} is not fitted yet: call fit first")


def from_sklearn(estimator) -> MLP:
    """A fitted scikit-learn MLPClassifier/MLPRegressor (or cdnn.sklearn's) as a cdnn.MLP
    with the same predictions and the dtype of its `coefs_`. The hidden activation is the
    estimator's; the loss is the one whose output function is `out_activation_` (softmax:
    softmax_cross_entropy; logistic, binary or multi-label: sigmoid_cross_entropy; identity:
    mean_squared_error; exp: poisson). A classifier's labels are kept as `net.classes_`
    (predict returns class indices: `net.classes_[net.predict(X)]` is the estimator's predict
    for a multiclass or binary model); they are not saved by net.save."""
    _check_estimator(estimator)
    out = estimator.out_activation_
    if out not in SKLEARN_OUTPUTS:
        raise ValueError(f"out_activation_ {out!r} has no cdnn loss; supported: "
                         f"{', '.join(SKLEARN_OUTPUTS)}")
    activation = kinds.activation_name(estimator.activation)
    if activation not in kinds.ACTIVATIONS:
        raise ValueError(f"activation {estimator.activation!r} has no cdnn equivalent")
    weights = [np.asarray(W) for W in estimator.coefs_]
    biases = [np.asarray(b) for b in estimator.intercepts_]
    dtypes = {a.dtype.name for a in weights + biases}
    if len(dtypes) != 1 or not dtypes <= set(DTYPE_NAMES):
        raise ValueError(f"coefs_ and intercepts_ must all be float32 or all float64, got "
                         f"{', '.join(sorted(dtypes))}")
    if weights[0].shape[0] != estimator.n_features_in_:
        raise ValueError(f"coefs_[0] has {weights[0].shape[0]} rows for "
                         f"{estimator.n_features_in_} features")
    net = _mlp(weights, biases, [activation] * (len(weights) - 1), SKLEARN_OUTPUTS[out])
    if hasattr(estimator, "classes_"):
        net.classes_ = np.asarray(estimator.classes_).copy()
    return net


# --- PyTorch ---------------------------------------------------------------------------------

def _class_name(obj) -> str:
    """The class's full name, so that a look-alike reads as the user's, not torch's."""
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _torch_kind(name: str, layer) -> str:
    """The torch.nn class name of a layer that from_torch understands; a TypeError naming the
    layer and its class for any other, a subclass of a supported one included."""
    import torch
    for kind in ("Linear", *TORCH_ACTIVATIONS, *TORCH_NO_OPS, *TORCH_CONTAINERS):
        if type(layer) is getattr(torch.nn, kind):
            return kind
    raise TypeError(f"layer {name} ({type(layer).__name__}, class {_class_name(layer)}) is "
                    f"not supported: from_torch takes torch.nn's own Sequential, Linear, "
                    f"{', '.join(TORCH_ACTIVATIONS)}, Identity and Dropout, not subclasses "
                    f"or other modules, since their forward may compute something else")


def _flat_layers(module, prefix: str = ""):
    """(name, kind, layer) for each layer, nested nn.Sequential opened up ("2.1": its 2nd's
    1st); kind is the torch.nn class name."""
    for name, layer in module.named_children():
        kind = _torch_kind(f"{prefix}{name}", layer)
        if kind in TORCH_CONTAINERS:
            yield from _flat_layers(layer, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", kind, layer


def _torch_activation(name: str, kind: str, layer) -> tuple[str, float | None]:
    """The cdnn activation for a torch activation layer, and its slope for LeakyReLU."""
    if kind == "GELU" and layer.approximate != "none":
        raise ValueError(f"layer {name} is GELU(approximate={layer.approximate!r}); cdnn's "
                         f"GELU is the exact one (approximate='none')")
    if kind == "LeakyReLU" and not 0 <= layer.negative_slope <= 1:
        raise ValueError(f"layer {name} has LeakyReLU slope {layer.negative_slope}; cdnn "
                         f"takes a slope in [0, 1]")
    if kind == "Softmax" and layer.dim not in (None, 1, -1):
        raise ValueError(f"layer {name} is Softmax(dim={layer.dim}); only the feature "
                         f"dimension (dim=1 or -1) is supported")
    return TORCH_ACTIVATIONS[kind], getattr(layer, "negative_slope", None)


def _torch_parts(module) -> tuple[list, list, list, str | None]:
    """The Linear layers, the activation after each, and the LeakyReLU slope; checked."""
    linears, activations, slopes = [], [], set()
    for name, kind, layer in _flat_layers(module):
        if kind == "Linear":
            if activations and activations[-1] == "softmax":
                raise ValueError(f"layer {name} (Linear) follows a Softmax; Softmax is "
                                 f"supported only after the last Linear")
            if linears and layer.in_features != linears[-1].out_features:
                raise ValueError(f"layer {name} takes {layer.in_features} inputs, the layer "
                                 f"before gives {linears[-1].out_features}")
            # a meta tensor has a shape but no values (built under torch.device("meta") for
            # a lazy init): there is nothing to copy until module.to_empty() and an init
            if any(p.is_meta for p in layer.parameters()):
                raise ValueError(f"layer {name} (Linear) has its parameters on the meta "
                                 f"device, which holds no values; materialise them first "
                                 f"(module.to_empty(device='cpu') and an init, or load weights)")
            linears.append(layer)
            activations.append(None)
        elif kind in TORCH_NO_OPS:
            continue
        else:                                   # an activation: _torch_kind checked it
            activation, slope = _torch_activation(name, kind, layer)
            if not linears:
                raise ValueError(f"layer {name} ({kind}) comes before the first Linear")
            if activations[-1] is not None:
                raise ValueError(f"layer {name} ({kind}) follows another activation; cdnn "
                                 f"applies one activation per layer")
            activations[-1] = activation
            slopes |= {slope} - {None}
    if not linears:
        raise ValueError("the Sequential has no Linear layer")
    if len(slopes) > 1:
        raise ValueError(f"the LeakyReLU layers have different slopes {sorted(slopes)}; a "
                         f"cdnn network has one")
    return linears, activations[:-1], activations[-1], slopes.pop() if slopes else None


def from_torch(module, loss: str | None = None) -> MLP:
    """An nn.Sequential of nn.Linear layers and activations (ReLU, LeakyReLU, Sigmoid, Tanh,
    GELU(approximate='none'); Identity and Dropout are skipped, as when predicting) as a
    cdnn.MLP computing the same outputs. A Linear without bias gets a zero bias, and two
    Linears with no activation between them an identity hidden layer. Each layer must be of
    torch.nn's own class: a subclass or another module is a TypeError naming it.

    What follows the last Linear sets the loss: Softmax (dim=1): softmax_cross_entropy and
    Sigmoid: sigmoid_cross_entropy, so net.predict_proba(X) is the module's output; nothing:
    `loss` if given (e.g. softmax_cross_entropy for logits trained with CrossEntropyLoss),
    else mean_squared_error; either way net.forward(X) is then the module's output."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"from_torch takes a torch.nn.Sequential of Linear layers and "
                        f"activations, got {type(module).__name__}")
    if type(module) is not torch.nn.Sequential:
        raise TypeError(f"from_torch takes torch.nn.Sequential itself, got a subclass "
                        f"{_class_name(module)}, whose forward may compute something else")
    linears, hidden, output, slope = _torch_parts(module)
    if output is not None and output not in TORCH_OUTPUTS:
        raise ValueError(f"the last Linear is followed by {output}; a cdnn network's output "
                         f"layer is linear, and its loss applies only softmax or sigmoid")
    if output is not None and loss is not None and loss != TORCH_OUTPUTS[output]:
        raise ValueError(f"the module ends in {output}, which is {TORCH_OUTPUTS[output]}, "
                         f"not loss={loss!r}")
    dtypes = {layer.weight.dtype for layer in linears}
    names = {str(dtype).removeprefix("torch.") for dtype in dtypes}
    if len(names) != 1 or not names <= set(DTYPE_NAMES):
        raise ValueError(f"the Linear layers must all be float32 or all float64, got "
                         f"{', '.join(sorted(names))}")
    weights = [layer.weight.detach().cpu().numpy().T for layer in linears]
    biases = [np.zeros(layer.out_features, weights[0].dtype) if layer.bias is None
              else layer.bias.detach().cpu().numpy() for layer in linears]
    return _mlp(weights, biases, [a or "identity" for a in hidden],
                TORCH_OUTPUTS.get(output) or loss or "mean_squared_error",
                leaky_slope=0.01 if slope is None else slope)


def estimator_to_onnx(estimator, path=None):
    """A fitted MLPClassifier/MLPRegressor (cdnn.sklearn's or scikit-learn's) as an
    onnx.ModelProto with skl2onnx's outputs ("label", "probabilities"; or "variable"), also
    written to path when one is given."""
    net = from_sklearn(estimator)
    return onnx.to_onnx(net, path, classes=getattr(net, "classes_", None), sklearn_outputs=True)
