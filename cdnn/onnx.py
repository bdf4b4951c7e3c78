"""ONNX export: a cdnn.MLP, or a fitted MLP estimator with its class labels, as an ONNX model.

    net.to_onnx("model.onnx")                      # or cdnn.onnx.to_onnx(net, path)
    estimator.to_onnx("model.onnx")                # cdnn.sklearn's estimators
    cdnn.convert.estimator_to_onnx(sklearn_mlp, path)  # scikit-learn's own MLPClassifier/Regressor

The graph (opset 17) takes one input "X", shape [N, n_inputs], FLOAT for float32 models and
DOUBLE for float64. Each layer is a Gemm and its activation; the output of a network is
"probabilities" (softmax or sigmoid: what predict_proba returns) for the cross-entropy losses
and "predictions" (as predict: the raw outputs for mean_squared_error, their exp for poisson).
An estimator's model follows skl2onnx's convention for classifiers, label first: "label" [N] (the class labels;
[N, n_labels] 0/1 for multi-label) and "probabilities" [N, n_classes], a plain tensor
(skl2onnx's zipmap=False); a regressor's single output is "variable" [N, n_outputs].
The metadata_props hold the network's get_config() as JSON and the cdnn version.
A network with matmul_precision="bfloat16" exports the same float32 graph, whose Gemms
multiply in float32: its outputs are within bf16's rounding of cdnn's own, not bit for bit
(the config in the metadata still says bfloat16).

onnx is imported only here, when a model is exported (pip install 'cdnn[onnx]').
"""
from __future__ import annotations

import json

import numpy as np

from cdnn import kinds
from cdnn._devices import to_numpy
from cdnn._version import __version__

OPSET = 17
IR_VERSION = 8      # the IR version that opset 17 came with: older runtimes can read it
# erfc's Chebyshev degree for float64 GELU: at 24 the largest error over [0, 30] is 8e-16
ERFC_DEGREE = 24


def _import_onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx package (pip install 'cdnn[onnx]')",
                          name="onnx") from e
    return onnx


class _Graph:
    """The nodes and constants of a graph being built; every value gets a fresh name."""

    def __init__(self, onnx, dtype: np.dtype):
        self.onnx, self.dtype = onnx, np.dtype(dtype)
        self.tensor_type = onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.initializers = [], []

    def const(self, value, name: str | None = None, dtype=None) -> str:
        array = to_numpy(value).astype(self.dtype if dtype is None else dtype, copy=False)
        name = name or f"const_{len(self.initializers)}"
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        output = f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [output],
                                                     name=output, **attributes))
        return output

    def normal_cdf(self, z: str) -> str:
        """Φ(z) (for GELU's ONNX form in cdnn/kinds.py)"""
        return _normal_cdf(self, z)

    def output(self, value: str, name: str) -> str:
        """Give a graph output its public name."""
        self.nodes.append(self.onnx.helper.make_node("Identity", [value], [name], name=name))
        return name


def _network(graph: _Graph, net, x: str) -> str:
    """The layers of net applied to x: the output layer's values (logits)."""
    n_layers = len(net.weights)
    for i, (W, b) in enumerate(zip(net.weights, net.biases)):
        x = graph.op("Gemm", x, graph.const(W, f"layers.{i}.weight"),
                     graph.const(b, f"layers.{i}.bias"))
        if i < n_layers - 1:
            x = kinds.ACTIVATIONS[net.activations[i]].onnx(graph, x, net.leaky_slope)
    return x


def _normal_cdf(graph: _Graph, z: str) -> str:
    """Φ(z), for exact GELU z·Φ(z). float32: 0.5·(1 + Erf(z/√2)). ONNX Runtime (1.32) has no
    float64 Erf kernel, so float64 uses erfc from its Chebyshev series in the variable
    y = 2t − 1, t = 2/(2 + u) (Numerical Recipes' erfccheb form), u = |z|/√2:
    erfc(u) = t·exp(−u² + Σ c_k T_k(y)), and Φ(z) = ½erfc(u) for z < 0, 1 − ½erfc(u) else."""
    scaled = graph.op("Mul", z, graph.const(1 / np.sqrt(2)))
    if graph.dtype == np.float32:
        return graph.op("Mul", graph.const(0.5),
                        graph.op("Add", graph.const(1), graph.op("Erf", scaled)))
    u = graph.op("Abs", scaled)
    t = graph.op("Div", graph.const(2), graph.op("Add", graph.const(2), u))
    y = graph.op("Sub", graph.op("Mul", graph.const(2), t), graph.const(1))
    exponent = graph.op("Sub", _chebyshev(graph, y, _erfc_coefficients()),
                        graph.op("Mul", u, u))
    half_erfc = graph.op("Mul", graph.op("Mul", graph.const(0.5), t),
                         graph.op("Exp", exponent))
    return graph.op("Where", graph.op("Less", z, graph.const(0)), half_erfc,
                    graph.op("Sub", graph.const(1), half_erfc))


def _erfc_coefficients() -> np.ndarray:
    """c_k with log(erfcx(u)/t) = Σ c_k T_k(y) (see _normal_cdf), interpolated at Chebyshev
    points from scipy's erfcx, so there are no magic numbers to trust."""
    from scipy.special import erfcx

    def log_erfcx_over_t(y):
        t = (y + 1) / 2
        return np.log(erfcx(2 / t - 2) / t)
    return np.polynomial.chebyshev.chebinterpolate(log_erfcx_over_t, ERFC_DEGREE)


def _chebyshev(graph: _Graph, y: str, coefficients: np.ndarray) -> str:
    """Σ c_k T_k(y) by Clenshaw's recurrence b_k = c_k + 2y·b_{k+1} − b_{k+2}."""
    two_y = graph.op("Mul", graph.const(2), y)
    b1, b2 = graph.const(coefficients[-1]), None
    for c in coefficients[-2:0:-1]:
        b = graph.op("Add", graph.const(c), graph.op("Mul", two_y, b1))
        b1, b2 = (graph.op("Sub", b, b2) if b2 else b), b1
    return graph.op("Sub", graph.op("Add", graph.const(coefficients[0]),
                                    graph.op("Mul", y, b1)), b2)


def _model(graph: _Graph, net, outputs: list[tuple[str, int, list]], path, doc: str):
    """Wrap the graph in a checked model (outputs: name, element type, shape) and write it."""
    onnx, helper = graph.onnx, graph.onnx.helper
    inputs = [helper.make_tensor_value_info("X", graph.tensor_type, ["N", net.n_inputs])]
    outputs = [helper.make_tensor_value_info(*output) for output in outputs]
    model = helper.make_model(
        helper.make_graph(graph.nodes, "cdnn_mlp", inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
        producer_name="cdnn", producer_version=__version__, doc_string=doc)
    helper.set_model_props(model, {"cdnn_version": __version__,
                                   "cdnn_config": json.dumps(net.get_config())})
    onnx.checker.check_model(model, full_check=True)
    if path is not None:   # not onnx.save_model: it truncates the old file first, and
        from cdnn.io import write_atomically   # waits forever on a FIFO
        write_atomically(path, model.SerializeToString())
    return model


def to_onnx(net, path=None, *, classes=None, sklearn_outputs: bool = False):
    """net (a cdnn.MLP) as an onnx.ModelProto, also written to path when one is given. Its
    output is predict_proba's "probabilities" (or predict's "predictions" for regression); with
    sklearn_outputs, skl2onnx's: "label" (from classes) and "probabilities" for a classifier,
    "variable" for a regressor (cdnn.convert.estimator_to_onnx)."""
    if not all(hasattr(net, name) for name in ("get_config", "weights", "biases", "loss")):
        raise TypeError(f"to_onnx takes a cdnn.MLP, got {type(net).__name__} (fitted "
                        f"estimators: cdnn.convert.estimator_to_onnx)")
    graph = _Graph(_import_onnx(), net.dtype)
    logits = _network(graph, net, "X")
    loss = kinds.LOSSES[net.loss]
    if sklearn_outputs and loss.classifier:
        outputs = _label_and_probabilities(graph, net, logits, classes)
    else:
        name = ("probabilities" if loss.classifier else
                "variable" if sklearn_outputs else "predictions")
        graph.output(loss.onnx(graph, logits), name)   # predict_proba's or predict's values
        outputs = [(name, graph.tensor_type, ["N", net.n_outputs])]
    return _model(graph, net, outputs, path, f"{net!r} exported by cdnn")


def _label_and_probabilities(graph: _Graph, net, logits: str, classes: np.ndarray) -> list:
    """The classifier's outputs, as scikit-learn's predict and predict_proba compute them."""
    onnx_types = graph.onnx.TensorProto
    if net.loss == "softmax_cross_entropy":
        probabilities = graph.op("Softmax", logits, axis=-1)
    elif net.n_outputs == 1:    # binary: columns [1 − p, p]
        p = graph.op("Sigmoid", logits)
        probabilities = graph.op("Concat", graph.op("Sub", graph.const([[1]]), p), p, axis=1)
    else:                       # multi-label: an indicator per label, p > 0.5
        probabilities = graph.op("Sigmoid", logits)
        label = graph.op("Cast", graph.op("Greater", probabilities, graph.const(0.5)),
                         to=onnx_types.INT64)
        graph.output(label, "label")
        graph.output(probabilities, "probabilities")
        return [("label", onnx_types.INT64, ["N", net.n_outputs]),
                ("probabilities", graph.tensor_type, ["N", net.n_outputs])]
    label_type, classes = _label_tensor(graph.onnx, classes)
    index = graph.op("ArgMax", probabilities, axis=1, keepdims=0)
    graph.output(graph.op("Gather", graph.const(classes, "classes", classes.dtype), index,
                          axis=0), "label")
    graph.output(probabilities, "probabilities")
    return [("label", label_type, ["N"]),
            ("probabilities", graph.tensor_type, ["N", len(classes)])]


def _label_tensor(onnx, classes) -> tuple[int, np.ndarray]:
    """The ONNX element type for these class labels, and the labels as its numpy type."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "iub":
        return onnx.TensorProto.INT64, classes.astype(np.int64)
    if classes.dtype.kind == "f":
        return onnx.TensorProto.DOUBLE, classes.astype(np.float64)
    if classes.dtype.kind in "US" or all(isinstance(c, str) for c in classes):
        return onnx.TensorProto.STRING, classes.astype(object)
    raise TypeError(f"class labels of type {classes.dtype} have no ONNX tensor type; use "
                    f"integers, floats or strings")
