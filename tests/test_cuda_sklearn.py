"""device="cuda" where users reach it beyond MLP and Trainer: the estimators, Optimizer.step and
loss_and_grad, on the CPU stand-in for CuPy (on a GPU, CDNN_TEST_CUDA_DEVICE=1 runs them on
CuPy). The stand-in refuses what CuPy refuses (a numpy array assigned into a device array,
host pointers to kernels), so a path that works here does not rely on numpy's leniency."""
import pickle
import warnings

import numpy as np
import pytest

import cdnn
from cuda_setup import skip_without_a_compiler, standin  # noqa: F401 (a fixture)

pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from cdnn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
skip_without_a_compiler()


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:300] / 16, y[:300]


def both(cls, X, y, **params):
    """The estimator fitted on "cpu" and on "cuda", float64, same seed"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # max_iter reached
        return [cls(random_state=0, dtype="float64", device=device, **params).fit(X, y)
                for device in ("cpu", "cuda")]


def assert_same_model(cpu, cuda, atol=1e-10):
    for name in ("coefs_", "intercepts_"):
        for a, b in zip(getattr(cpu, name), getattr(cuda, name)):
            assert type(b) is np.ndarray        # scikit-learn's users get numpy arrays
            np.testing.assert_allclose(b, a, rtol=0, atol=atol)
    assert cuda.n_iter_ == cpu.n_iter_


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_the_classifier_trains_on_the_device_as_on_the_cpu(digits, solver):
    X, y = digits
    cpu, cuda = both(MLPClassifier, X, y, hidden_layer_sizes=(16,), solver=solver, max_iter=6)
    assert cuda._net.device == "cuda" and cpu._net.device == "cpu"
    assert_same_model(cpu, cuda)
    np.testing.assert_allclose(cuda.loss_curve_ if solver != "lbfgs" else [cuda.loss_],
                               cpu.loss_curve_ if solver != "lbfgs" else [cpu.loss_],
                               rtol=1e-10)
    proba = cuda.predict_proba(X)
    assert type(proba) is np.ndarray
    np.testing.assert_allclose(proba, cpu.predict_proba(X), rtol=0, atol=1e-10)
    np.testing.assert_array_equal(cuda.predict(X), cpu.predict(X))
    assert cuda.score(X, y) == cpu.score(X, y)


def test_the_regressor_with_early_stopping_and_partial_fit(digits):
    X, _ = digits
    Y = np.column_stack([X[:, :5].sum(1), X[:, 5:9].mean(1)])
    cpu, cuda = both(MLPRegressor, X, Y, hidden_layer_sizes=(12,), solver="sgd",
                     early_stopping=True, max_iter=8, alpha=1e-3)
    assert_same_model(cpu, cuda)
    np.testing.assert_allclose(cuda.validation_scores_, cpu.validation_scores_, rtol=1e-10)
    cpu, cuda = (MLPRegressor(hidden_layer_sizes=(12,), random_state=0, dtype="float64", device=d)
                 for d in ("cpu", "cuda"))
    for _ in range(2):
        for est in (cpu, cuda):
            est.partial_fit(X, Y)
    assert_same_model(cpu, cuda)
    np.testing.assert_allclose(cuda.predict(X[:3]), cpu.predict(X[:3]), rtol=1e-10)


def test_coefs_are_copies_and_assigning_them_reaches_the_device(digits):
    X, y = digits
    est = MLPClassifier((8,), max_iter=2, random_state=0, device="cuda").fit(X, y)
    before = est.predict_proba(X[:5])
    est.coefs_[0][...] = 0          # a copy: the network is unchanged
    np.testing.assert_array_equal(est.predict_proba(X[:5]), before)
    est.coefs_[1] = np.zeros_like(est.coefs_[1])
    est.intercepts_ = [np.zeros_like(b) for b in est.intercepts_]
    np.testing.assert_allclose(est.predict_proba(X[:5]), 0.1)   # every class alike
    assert not est._net.params.get()[-10:].any()


def test_given_layers_before_a_partial_fit_go_to_the_device(digits):
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = MLPClassifier((8,), max_iter=3, random_state=0, dtype="float64").fit(X, y)
    ests = [MLPClassifier((8,), random_state=0, dtype="float64", device=d)
            for d in ("cpu", "cuda")]
    for est in ests:
        est.coefs_, est.intercepts_ = source.coefs_, source.intercepts_
        est.partial_fit(X, y, classes=np.unique(y))
    assert_same_model(*ests)


def test_device_survives_get_params_clone_and_pickle(digits):
    X, y = digits
    est = MLPClassifier((8,), max_iter=3, random_state=0, device="cuda")
    assert est.get_params()["device"] == "cuda"
    assert clone(est).device == "cuda"
    assert est.set_params(device="cpu").device == "cpu"
    est.set_params(device="cuda").fit(X, y)
    back = pickle.loads(pickle.dumps(est))
    assert back.device == "cuda" and back._net.device == "cuda"
    np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back.set_params(warm_start=True, max_iter=1).fit(X, y)     # trains on, on the device
    assert back._net.device == "cuda"


def test_a_bad_device_fails_at_fit(digits):
    X, y = digits
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        MLPClassifier(device="gpu").fit(X, y)


# --- loss_and_grad and Optimizer.step on the device --------------------------------------------

@pytest.mark.parametrize("make", [lambda: cdnn.SGD(0.1, momentum=0.9, nesterov=True,
                                                   weight_decay=1e-3),
                                  lambda: cdnn.Adam(0.01), lambda: cdnn.AdamW(0.01),
                                  lambda: cdnn.RMSprop(0.01, momentum=0.5)])
def test_a_hand_written_loop_on_the_device_steps_as_on_the_cpu(make):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 6)), rng.integers(0, 3, 40)
    nets = [cdnn.MLP([6, 7, 3], dtype="float64", seed=1, device=d) for d in ("cpu", "cuda")]
    opts = [make(), make()]
    for _ in range(3):
        for net, opt in zip(nets, opts):
            loss, grad = net.loss_and_grad(X, y)
            opt.step(net.params, grad)
    grad = nets[1].loss_and_grad(X, y)[1]
    assert type(grad) is type(nets[1].params) and type(grad) is not np.ndarray
    assert opts[1].steps == 3
    np.testing.assert_allclose(nets[1].params.get(), nets[0].params, rtol=0, atol=1e-12)


def test_optimizer_step_refuses_a_mix_of_host_and_device_arrays():
    net = cdnn.MLP([4, 3, 2], device="cuda", seed=0)
    loss, grad = net.loss_and_grad(np.ones((3, 4), np.float32), [0, 1, 0])
    with pytest.raises(TypeError, match="grad must be a device array"):
        cdnn.SGD(0.1).step(net.params, grad.get())
    bad = grad.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        cdnn.SGD(0.1).step(net.params, bad)
