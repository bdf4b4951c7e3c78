"""ONNX export (cdnn/onnx.py): ONNX Runtime running the exported graph gives what cdnn gives,
for every activation, loss and dtype; the fitted estimators export with their class labels;
the file carries its metadata and passes onnx's full check; bad input is a clear error."""
import json
import sys

import numpy as np
import pytest

import cdnn
from cdnn import cli
from cdnn.convert import estimator_to_onnx
from cdnn.kinds import ACTIVATIONS, LOSSES
from cdnn.onnx import to_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

DTYPES = ["float32", "float64"]
# a few iterations are enough to compare predictions
pytestmark = pytest.mark.filterwarnings("ignore:Stochastic Optimizer:Warning")
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


def run(model, X) -> list:
    """Every output of model (an onnx.ModelProto) on X, in ONNX Runtime."""
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"X": X})


def random_net(activation, loss, dtype, seed=0, sizes=(5, 8, 7, 3)):
    """A small network with random biases (they start at zero) and an unusual leaky slope."""
    net = cdnn.MLP(list(sizes), activation=activation, loss=loss, dtype=dtype, seed=seed,
                   leaky_slope=0.2)
    rng = np.random.default_rng(seed)
    for b in net.biases:
        b[...] = rng.normal(size=b.shape)
    return net


def cdnn_output(net, X):
    return net.predict_proba(X) if net.is_classifier else net.predict(X).reshape(len(X), -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_onnx_runtime_matches_cdnn(activation, loss, dtype):
    net = random_net(activation, loss, dtype)
    X = np.random.default_rng(1).normal(scale=3, size=(50, 5)).astype(dtype)
    (out,) = run(net.to_onnx(), X)
    assert out.dtype == net.dtype and out.shape == (50, 3)
    np.testing.assert_allclose(out, cdnn_output(net, X), rtol=TOLERANCE[dtype],
                               atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_far_into_both_tails(dtype):
    """GELU alone (one unit, weights 1): float64's erfc series holds out to |z| = 40."""
    net = cdnn.MLP([1, 1, 1], activation="gelu", loss="mse", dtype=dtype)
    net.params[...] = [1, 0, 1, 0]
    z = np.linspace(-40, 40, 801, dtype=dtype).reshape(-1, 1)
    (out,) = run(net.to_onnx(), z)
    np.testing.assert_allclose(out, net.forward(z), rtol=TOLERANCE[dtype],
                               atol=TOLERANCE[dtype])
    if dtype == "float64":    # and to 1e-14 of z·Φ(z) itself
        from scipy.special import ndtr
        np.testing.assert_allclose(out, z * ndtr(z), rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype, element_type", [("float32", 1), ("float64", 11)])
def test_model_declares_its_input_output_and_metadata(tmp_path, dtype, element_type):
    net = random_net(["gelu", "leaky_relu"], "softmax_cross_entropy", dtype)
    path = tmp_path / "model.onnx"
    returned = net.to_onnx(path)
    model = onnx.load(path)
    assert model == returned
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    (x,), (y,) = model.graph.input, model.graph.output
    assert x.type.tensor_type.elem_type == element_type == y.type.tensor_type.elem_type
    assert [d.dim_value or d.dim_param for d in x.type.tensor_type.shape.dim] == ["N", 5]
    assert y.name == "probabilities"
    props = {p.key: p.value for p in model.metadata_props}
    assert props["cdnn_version"] == cdnn.__version__
    assert json.loads(props["cdnn_config"]) == net.get_config()


def test_regression_output_is_named_predictions():
    model = random_net("relu", "mean_squared_error", "float32").to_onnx()
    assert [o.name for o in model.graph.output] == ["predictions"]


def test_cli_export(tmp_path, capsys):
    net = random_net("tanh", "softmax_cross_entropy", "float32")
    net.save(tmp_path / "model.safetensors")
    out_path = tmp_path / "model.onnx"
    assert cli.main(["export", str(tmp_path / "model.safetensors"), str(out_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    X = np.random.default_rng(2).normal(size=(10, 5)).astype(np.float32)
    np.testing.assert_allclose(run(onnx.load(out_path), X)[0], net.predict_proba(X),
                               rtol=1e-5, atol=1e-5)


def test_cli_export_errors(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "missing.safetensors"),
                     str(tmp_path / "m.onnx")]) == 1
    assert "cdnn export: error:" in capsys.readouterr().err
    random_net("relu", "mse", "float32").save(tmp_path / "model.safetensors")
    assert cli.main(["export", str(tmp_path / "model.safetensors"),
                     str(tmp_path / "no" / "dir" / "m.onnx")]) == 1
    assert "no such directory to save into" in capsys.readouterr().err   # as save says


def test_bad_input_is_a_clear_error(monkeypatch):
    with pytest.raises(TypeError, match="cdnn.MLP"):
        to_onnx("not a network")
    with pytest.raises(TypeError, match="MLPClassifier"):
        estimator_to_onnx(random_net("relu", "mse", "float32"))
    monkeypatch.setitem(sys.modules, "onnx", None)     # as if onnx were not installed
    with pytest.raises(ImportError, match=r"pip install 'cdnn\[onnx\]'"):
        random_net("relu", "mse", "float32").to_onnx()


# --- fitted estimators -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 4))
    return X, X @ rng.normal(size=(4, 3))


def classification_targets(kind, scores):
    if kind == "multiclass":      # string labels: the label output is a STRING tensor
        return np.array(["ant", "bee", "cat"])[scores.argmax(axis=1)]
    if kind == "binary":
        return np.where(scores[:, 0] > 0, 7, -2)
    return (scores > 0).astype(int)     # multi-label indicator


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel"])
@pytest.mark.parametrize("library", ["cdnn", "sklearn"])
def test_classifier_exports_labels_and_probabilities(data, library, kind, dtype):
    pytest.importorskip("sklearn")
    X, scores = data
    X = X.astype(dtype)
    if library == "cdnn":
        from cdnn.sklearn import MLPClassifier
        est = MLPClassifier(hidden_layer_sizes=(6,), activation="gelu", dtype=dtype,
                            max_iter=20, random_state=0)
    else:
        from sklearn.neural_network import MLPClassifier
        est = MLPClassifier(hidden_layer_sizes=(6,), activation="tanh", max_iter=20,
                            random_state=0)
    est.fit(X, classification_targets(kind, scores))
    model = estimator_to_onnx(est) if library == "sklearn" else est.to_onnx()
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    label, probabilities = run(model, X)
    np.testing.assert_array_equal(label, est.predict(X))
    expected = est.predict_proba(X)
    np.testing.assert_allclose(probabilities, expected, rtol=TOLERANCE[expected.dtype.name],
                               atol=TOLERANCE[expected.dtype.name])


@pytest.mark.parametrize("n_targets", [1, 3])
def test_regressor_exports_variable(data, n_targets):
    pytest.importorskip("sklearn")
    from cdnn.sklearn import MLPRegressor
    X, scores = data
    est = MLPRegressor(hidden_layer_sizes=(5,), max_iter=20, random_state=0)
    est.fit(X, scores[:, 0] if n_targets == 1 else scores)
    model = est.to_onnx()
    (variable,) = run(model, X.astype(np.float32))
    assert model.graph.output[0].name == "variable" and variable.shape == (len(X), n_targets)
    np.testing.assert_allclose(variable, est.predict(X).reshape(len(X), -1), rtol=1e-5,
                               atol=1e-5)


def test_poisson_regressor_exports_the_mean(data):
    pytest.importorskip("sklearn")
    from cdnn.sklearn import MLPRegressor
    X, scores = data
    est = MLPRegressor(loss="poisson", hidden_layer_sizes=(5,), max_iter=20, random_state=0,
                       dtype="float64").fit(X, np.abs(scores[:, 0]))
    (variable,) = run(est.to_onnx(), X.astype(np.float64))
    np.testing.assert_allclose(variable[:, 0], est.predict(X), rtol=1e-10)


def test_unfitted_estimator_is_a_clear_error():
    pytest.importorskip("sklearn")
    from cdnn.sklearn import MLPClassifier
    with pytest.raises(ValueError, match="not fitted"):
        MLPClassifier().to_onnx()
