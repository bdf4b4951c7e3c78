"""cdnn.from_sklearn and cdnn.from_torch (cdnn/convert.py): the MLP predicts what the source
model predicts, for each activation and dtype; the round trips through ONNX agree to rounding;
anything unsupported is a clear error naming the part."""
import re

import numpy as np
import pytest

import cdnn
from cdnn import kinds

# a few iterations are enough to compare predictions
pytestmark = pytest.mark.filterwarnings("ignore:Stochastic Optimizer:Warning")
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(100, 4))
    return X, X @ rng.normal(size=(4, 3))


def assert_close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def onnx_outputs(net_or_model, X):
    """ONNX Runtime's outputs on X for a cdnn.MLP (exported) or an onnx.ModelProto."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = net_or_model.to_onnx() if isinstance(net_or_model, cdnn.MLP) else net_or_model
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"X": X})


# --- scikit-learn --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression"])
def test_from_sklearn_predicts_as_the_estimator(data, kind, activation, dtype):
    neural_network = pytest.importorskip("sklearn.neural_network")
    X, scores = data
    X = X.astype(dtype)     # scikit-learn fits float32 coefs_ to float32 input
    if kind == "regression":
        est = neural_network.MLPRegressor(hidden_layer_sizes=(6, 5), activation=activation,
                                          max_iter=20, random_state=0).fit(X, scores)
    else:
        y = {"multiclass": scores.argmax(axis=1) * 10, "binary": scores[:, 0] > 0,
             "multilabel": (scores > 0).astype(int)}[kind]
        est = neural_network.MLPClassifier(hidden_layer_sizes=(6, 5), activation=activation,
                                           max_iter=20, random_state=0).fit(X, y)
    net = cdnn.from_sklearn(est)
    assert net.dtype == dtype and net.layer_sizes == (4, 6, 5, est.n_outputs_)
    if kind == "regression":
        assert_close(net.predict(X), est.predict(X), dtype)
    elif kind == "multilabel":
        np.testing.assert_array_equal(net.predict(X), est.predict(X))
        assert_close(net.predict_proba(X), est.predict_proba(X), dtype)
    else:
        np.testing.assert_array_equal(net.classes_, est.classes_)
        np.testing.assert_array_equal(net.classes_[net.predict(X)], est.predict(X))
        proba = net.predict_proba(X)
        assert_close(proba if kind == "multiclass" else proba[:, 0],
                     est.predict_proba(X) if kind == "multiclass" else est.predict_proba(X)[:, 1],
                     dtype)


def test_from_sklearn_takes_cdnn_estimators_and_round_trips_through_onnx(data):
    pytest.importorskip("sklearn")
    from cdnn.sklearn import MLPClassifier
    X, scores = data
    est = MLPClassifier(hidden_layer_sizes=(7,), activation="gelu", dtype="float64",
                        max_iter=20, random_state=0).fit(X, scores.argmax(axis=1))
    net = cdnn.from_sklearn(est)
    assert net.activations == ("gelu",)
    assert_close(net.predict_proba(X), est.predict_proba(X), "float64")
    (probabilities,) = onnx_outputs(net, X)             # sklearn -> cdnn -> ONNX
    assert_close(probabilities, est.predict_proba(X), "float64")


def test_from_sklearn_copies_the_weights(data):
    neural_network = pytest.importorskip("sklearn.neural_network")
    X, scores = data
    est = neural_network.MLPRegressor(hidden_layer_sizes=(3,), max_iter=5).fit(X, scores[:, 0])
    net = cdnn.from_sklearn(est)
    net.weights[0][...] = 0
    assert np.abs(est.coefs_[0]).sum() > 0


def test_from_sklearn_bad_input(data):
    neural_network = pytest.importorskip("sklearn.neural_network")
    from sklearn.linear_model import LogisticRegression
    X, scores = data
    with pytest.raises(ValueError, match="not fitted"):
        cdnn.from_sklearn(neural_network.MLPClassifier())
    for wrong in (LogisticRegression(), cdnn.MLP([2, 2]), "MLPClassifier"):
        with pytest.raises(TypeError, match="MLPClassifier or MLPRegressor"):
            cdnn.from_sklearn(wrong)
    identity_out = neural_network.MLPRegressor(hidden_layer_sizes=(3,), max_iter=5).fit(
        X, scores[:, 0])
    identity_out.out_activation_ = "tanh"
    with pytest.raises(ValueError, match="out_activation_ 'tanh'"):
        cdnn.from_sklearn(identity_out)


def test_from_sklearn_poisson_regressor_predicts_the_mean(data):
    neural_network = pytest.importorskip("sklearn.neural_network")
    X, scores = data
    est = neural_network.MLPRegressor(hidden_layer_sizes=(3,), loss="poisson",
                                      max_iter=5).fit(X, np.abs(scores[:, 0]))
    net = cdnn.from_sklearn(est)
    assert net.loss == "poisson"
    np.testing.assert_allclose(net.predict(X), est.predict(X), rtol=1e-12)


# --- PyTorch -------------------------------------------------------------------------------

TORCH_ACTIVATIONS = [a.torch for a in kinds.ACTIVATIONS.values() if a.torch] + ["Identity"]


def torch_layer(name):
    nn = pytest.importorskip("torch").nn
    return nn.LeakyReLU(0.3) if name == "LeakyReLU" else getattr(nn, name)()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", TORCH_ACTIVATIONS)
@pytest.mark.parametrize("ending", ["", "Softmax", "Sigmoid"])
def test_from_torch_computes_the_modules_outputs(activation, ending, dtype):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    layers = [nn.Linear(4, 6), torch_layer(activation), nn.Linear(6, 5, bias=False),
              torch_layer(activation), nn.Linear(5, 3)]
    layers += [nn.Softmax(dim=1)] if ending == "Softmax" else \
        [nn.Sigmoid()] if ending == "Sigmoid" else []
    module = nn.Sequential(*layers).to(getattr(torch, dtype)).eval()
    X = np.random.default_rng(6).normal(scale=2, size=(30, 4)).astype(dtype)
    with torch.no_grad():
        expected = module(torch.from_numpy(X)).numpy()
    net = cdnn.from_torch(module)
    assert net.dtype == dtype and net.layer_sizes == (4, 6, 5, 3)
    assert net.loss == {"": "mean_squared_error", "Softmax": "softmax_cross_entropy",
                        "Sigmoid": "sigmoid_cross_entropy"}[ending]
    assert_close(net.predict_proba(X) if ending else net.predict(X), expected, dtype)
    (exported,) = onnx_outputs(net, X)                  # torch -> cdnn -> ONNX
    assert_close(exported, expected, dtype)


def test_from_torch_nested_dropout_and_consecutive_linears():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    module = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5)), nn.Linear(4, 5),
                           nn.Tanh(), nn.Identity(), nn.Linear(5, 2)).eval()
    net = cdnn.from_torch(module, loss="softmax_cross_entropy")
    assert net.activations == ("identity", "tanh") and net.loss == "softmax_cross_entropy"
    X = np.random.default_rng(7).normal(size=(8, 3)).astype(np.float32)
    with torch.no_grad():
        assert_close(net.forward(X), module(torch.from_numpy(X)).numpy(), "float32")


def bad_modules(nn):
    """(module, words the error names) for each unsupported shape."""
    return [
        (nn.Sequential(nn.Linear(3, 4), nn.GELU(approximate="tanh"), nn.Linear(4, 2)),
         "approximate='tanh'"),
        (nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), "layer 0 (ReLU) comes before"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 2)),
         "layer 2 (Tanh) follows another activation"),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU()), "followed by relu"),
        (nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)), "layer 1 takes 5 inputs"),
        (nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2)),
         "layer 2 (Linear) follows a Softmax"),
        (nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=0)), "Softmax(dim=0)"),
        (nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.1), nn.Linear(4, 4), nn.LeakyReLU(0.2),
                       nn.Linear(4, 2)), "different slopes"),
        (nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(2.0), nn.Linear(4, 2)), "slope 2.0"),
        (nn.Sequential(nn.Linear(3, 2).half()), "float16"),
        (nn.Sequential(nn.Dropout()), "no Linear layer"),
    ]


def test_from_torch_bad_input():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    for module, words in bad_modules(nn):
        with pytest.raises(ValueError, match=re.escape(words)):
            cdnn.from_torch(module)
    with pytest.raises(ValueError, match="ends in softmax"):
        cdnn.from_torch(nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1)),
                        loss="mean_squared_error")
    for wrong in (nn.Linear(3, 2), [nn.Linear(3, 2)], "Sequential"):
        with pytest.raises(TypeError, match="torch.nn.Sequential"):
            cdnn.from_torch(wrong)
    with pytest.raises(TypeError, match=re.escape("layer 1 (Conv1d, class torch.nn.modules")):
        cdnn.from_torch(nn.Sequential(nn.Linear(3, 4), nn.Conv1d(1, 1, 1)))


def test_from_torch_refuses_subclasses_and_look_alikes():
    """Layers are matched by their exact class: a subclass's forward, or a user's class that
    is only named like torch's, computes something cdnn would not (issue 23 #8)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class ScaledLinear(nn.Linear):
        def forward(self, x):
            return 10 * super().forward(x)

    class ReLU(nn.Module):                      # a look-alike: not torch's ReLU
        def forward(self, x):
            return x.abs()

    class Dropout(nn.Module):
        def forward(self, x):
            return x + 1

    class Identity(nn.Tanh):                    # named like a no-op, is a Tanh
        pass

    class MySequential(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2

    for module, words in [
            (nn.Sequential(ScaledLinear(3, 2)), "layer 0 (ScaledLinear, class "),
            (nn.Sequential(nn.Linear(3, 4), ReLU(), nn.Linear(4, 2)), "layer 1 (ReLU, class "),
            (nn.Sequential(nn.Linear(3, 2), Dropout()), "layer 1 (Dropout, class "),
            (nn.Sequential(nn.Sequential(nn.Linear(3, 2), Identity())),
             "layer 0.1 (Identity, class "),
            (nn.Sequential(MySequential(nn.Linear(3, 2))), "layer 0 (MySequential, class ")]:
        with pytest.raises(TypeError, match=re.escape(words) + ".*test_interop"):
            cdnn.from_torch(module)
    with pytest.raises(TypeError, match="subclass .*MySequential"):
        cdnn.from_torch(MySequential(nn.Linear(3, 2)))


def test_from_torch_meta_device_says_so():
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
                                     torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="layer 0 .*meta device"):
        cdnn.from_torch(module)
