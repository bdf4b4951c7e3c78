"""cdnn.sklearn: scikit-learn's own estimator checks, its meta-estimators, and agreement with
scikit-learn's MLPClassifier / MLPRegressor (same updates in float64, same accuracy)."""
import pickle
import re
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import cdnn  # noqa: E402
from cdnn._engine import Engine  # noqa: E402
from cdnn.sklearn import MLPClassifier, MLPRegressor  # noqa: E402
from sigint import SigintAfter  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Checks that compare two float32 computations at a tolerance below float32's resolution
# (atol or rtol 1e-7; float32's epsilon is 1.2e-7). The float64 instance passes both.
FLOAT32_ROUNDING = {
    "check_sample_weight_equivalence_on_dense_data":
        "float32: the weighted and the repeated fit agree to ~1e-6 relative, the check "
        "demands 1e-7",
    "check_sample_weight_equivalence_on_sparse_data":
        "float32: as on dense data, ~6e-7 relative where the check demands 1e-7",
    "check_methods_subset_invariance":
        "float32: a row's output can differ in its last bit with the number of rows that "
        "share a GEMM (and a thread's share of them); the check demands atol 1e-7",
}


def _expected_failures(estimator):
    return FLOAT32_ROUNDING if estimator.dtype == "float32" else {}


# scikit-learn's own test suite runs its MLPs with max_iter=100 too
@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100),
                          MLPClassifier(dtype="float64", max_iter=100),
                          MLPRegressor(dtype="float64", max_iter=100),
                          MLPClassifier(solver="lbfgs", dtype="float64", max_iter=100)],
                         expected_failed_checks=_expected_failures)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    return cdnn.datasets.load_digits()


def test_import_cdnn_does_not_import_sklearn(tmp_path):
    code = "import sys, cdnn; print('sklearn' in sys.modules)"
    # run outside the repository, whose uncompiled cdnn/ would shadow the installed package
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == "False"


def test_digits_accuracy_comparable_to_scikit_learn(digits):
    (X, y), (X_test, y_test) = digits
    params = dict(hidden_layer_sizes=(64,), max_iter=60, random_state=0)
    ours = MLPClassifier(**params).fit(X, y).score(X_test, y_test)
    theirs = SkClassifier(**params).fit(X, y).score(X_test, y_test)
    assert ours > 0.93
    assert abs(ours - theirs) < 0.03


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_each_solver_learns_digits(digits, solver):
    (X, y), (X_test, y_test) = digits
    est = MLPClassifier(hidden_layer_sizes=(32,), solver=solver, learning_rate_init=0.01,
                        max_iter=40, random_state=0).fit(X, y)
    assert est.score(X_test, y_test) > 0.9
    assert est.n_iter_ <= 40 and np.isfinite(est.loss_)


# --- scikit-learn machinery -------------------------------------------------------------------

def test_pipeline_grid_search_and_cross_validation(digits):
    (X, y), _ = digits
    X, y = X[:600], y[:600]
    pipe = make_pipeline(StandardScaler(), MLPClassifier(learning_rate_init=0.01,
                                                         max_iter=20, random_state=0))
    search = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(8,), (32,)]}, cv=3)
    search.fit(X, y)
    assert search.best_params_["mlpclassifier__hidden_layer_sizes"] in [(8,), (32,)]
    assert search.best_score_ > 0.8
    scores = cross_val_score(MLPClassifier(learning_rate_init=0.01, max_iter=20,
                                           random_state=0), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.8


def test_clone_and_pickle_round_trip(digits):
    (X, y), (X_test, _) = digits
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0).fit(X, y)
    fresh = clone(est)
    assert fresh.get_params() == est.get_params() and not hasattr(fresh, "coefs_")
    copy = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(copy.predict_proba(X_test), est.predict_proba(X_test))
    np.testing.assert_array_equal(copy.predict(X_test), est.predict(X_test))
    # the copy's coefs_ are its network's weights again, so training it moves them
    before = copy.coefs_[0].copy()
    copy.partial_fit(X, y)
    assert not np.array_equal(copy.coefs_[0], before)
    assert np.shares_memory(copy.coefs_[0], copy._net.params)


# --- targets ----------------------------------------------------------------------------------

def test_arbitrary_labels(digits):
    (X, y), (X_test, y_test) = digits
    names = np.array([f"digit-{d}" for d in range(10)])
    est = MLPClassifier(hidden_layer_sizes=(32,), max_iter=30, random_state=0)
    est.fit(X, names[y])
    assert list(est.classes_) == sorted(names)
    assert est.predict(X_test).dtype == names.dtype
    assert est.score(X_test, names[y_test]) > 0.9
    sparse_ints = est.fit(X, y * 7 + 3).predict(X_test)     # non-contiguous integers
    assert set(sparse_ints) <= set(range(3, 70, 7)) and est.out_activation_ == "softmax"


def test_binary_uses_one_logistic_output(digits):
    (X, y), (X_test, y_test) = digits
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=0)
    est.fit(X, y % 2 == 0)
    assert est.n_outputs_ == 1 and est.out_activation_ == "logistic"
    proba = est.predict_proba(X_test)
    assert proba.shape == (len(X_test), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(est.predict_log_proba(X_test), np.log(proba))
    assert est.score(X_test, y_test % 2 == 0) > 0.85


def test_multilabel_classification(digits):
    (X, y), (X_test, y_test) = digits
    labels = lambda d: np.column_stack([d % 2 == 0, d >= 5, d % 3 == 0]).astype(int)  # noqa
    est = MLPClassifier(hidden_layer_sizes=(32,), max_iter=80, random_state=0)
    est.fit(X, labels(y))
    assert est.out_activation_ == "logistic" and est.n_outputs_ == 3
    pred, proba = est.predict(X_test), est.predict_proba(X_test)
    assert pred.shape == proba.shape == (len(X_test), 3)
    assert ((proba >= 0) & (proba <= 1)).all()
    assert (pred == labels(y_test)).mean() > 0.9      # per-label accuracy
    assert est.score(X_test, labels(y_test)) > 0.75   # every label of a row right


def test_multi_output_regression():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 4))
    Y = np.column_stack([X @ [1.0, -2.0, 0.5, 0.0], np.sin(X[:, 0]) + X[:, 1]])
    est = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=150,
                       random_state=0).fit(X[:300], Y[:300])
    pred = est.predict(X[300:])
    assert pred.shape == (100, 2) and pred.dtype == np.float64
    assert est.score(X[300:], Y[300:]) > 0.9
    assert est.n_outputs_ == 2 and est.out_activation_ == "identity"


# --- fitting options --------------------------------------------------------------------------

def test_partial_fit(digits):
    (X, y), (X_test, y_test) = digits
    est = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        est.partial_fit(X[:100], y[:100])
    est.partial_fit(X[:100], y[:100], classes=np.arange(10))
    losses = [est.loss_]
    for _ in range(10):
        est.partial_fit(X, y)
        losses.append(est.loss_)
    assert losses[-1] < losses[0] / 2
    assert est.n_iter_ == 1 and est.t_ == 100 + 10 * len(X)
    assert est.score(X_test, y_test) > 0.9
    with pytest.raises(ValueError, match="classes not in"):
        est.partial_fit(X[:5], np.full(5, 11))
    with pytest.raises(ValueError, match="4 features"):
        est.partial_fit(X[:5, :4], y[:5])
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")


def test_early_stopping_keeps_the_best_epoch(digits):
    (X, y), _ = digits
    est = MLPClassifier(hidden_layer_sizes=(32,), early_stopping=True, n_iter_no_change=3,
                        learning_rate_init=0.01, max_iter=200, random_state=0).fit(X, y)
    assert est.n_iter_ < 200 and len(est.validation_scores_) == est.n_iter_
    assert est.best_validation_score_ == max(est.validation_scores_)
    assert est.best_loss_ is None
    # the final weights are the best epoch's: re-scoring the held-out rows reproduces it
    from sklearn.model_selection import train_test_split
    # (scikit-learn's split: RandomState(0) after the initial weights, not stratified for
    # several classes)
    _, X_val, _, y_val = train_test_split(X, y, test_size=0.1,
                                          random_state=_rng_after_init(0, est))
    assert est.score(X_val, y_val) == pytest.approx(est.best_validation_score_)


def _rng_after_init(seed, est):
    """The RandomState the estimator splits with: its seed, after drawing the initial
    weights and intercepts."""
    rng = np.random.RandomState(seed)
    for W, b in zip(est.coefs_, est.intercepts_):
        rng.uniform(size=W.shape)
        rng.uniform(size=b.shape)
    return rng


def test_tol_stops_training_and_max_iter_warns(digits):
    (X, y), _ = digits
    stopped = MLPClassifier(hidden_layer_sizes=(16,), tol=0.5, n_iter_no_change=2,
                            max_iter=100, random_state=0).fit(X, y)
    assert stopped.n_iter_ < 100 and len(stopped.loss_curve_) == stopped.n_iter_
    assert stopped.best_loss_ == min(stopped.loss_curve_)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit(X, y)


def test_adaptive_learning_rate_divides_by_five(digits):
    (X, y), _ = digits
    est = MLPClassifier(hidden_layer_sizes=(8,), solver="sgd", learning_rate="adaptive",
                        tol=10.0, n_iter_no_change=1, max_iter=6, random_state=0).fit(X, y)
    # every epoch fails to improve by tol: the rate drops 5x every second epoch
    assert est._lr == pytest.approx(0.001 / 5 ** 2)
    assert est._optimizer.lr == pytest.approx(est._lr)  # c = 1 for softmax


def test_sample_weight_zero_rows_are_ignored():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(60, 3)), np.arange(60) % 3
    w = (np.arange(60) < 40).astype(float)
    kw = dict(solver="lbfgs", dtype="float64", hidden_layer_sizes=(5,), random_state=0)
    weighted = MLPClassifier(**kw).fit(X, y, sample_weight=w)
    trimmed = MLPClassifier(**kw).fit(X[:40], y[:40])
    np.testing.assert_allclose(weighted.predict_proba(X), trimmed.predict_proba(X),
                               rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="all zero"):
        MLPClassifier().fit(X, y, sample_weight=np.zeros(60))


def test_fitted_attributes_and_dtype(digits):
    (X, y), _ = digits
    est = MLPClassifier(hidden_layer_sizes=(16, 8), activation="logistic", max_iter=3,
                        batch_size=64, random_state=0).fit(X, y)
    assert est.n_layers_ == 4 and est.n_features_in_ == 64 and est.n_outputs_ == 10
    assert [W.shape for W in est.coefs_] == [(64, 16), (16, 8), (8, 10)]
    assert [b.shape for b in est.intercepts_] == [(16,), (8,), (10,)]
    assert est.coefs_[0].dtype == np.float32 and est._net.activations == ("sigmoid",) * 2
    assert est.t_ == 3 * len(X) and len(est.loss_curve_) == 3
    assert est.validation_scores_ is None and est.best_validation_score_ is None
    est64 = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, dtype="float64").fit(X, y)
    assert est64.coefs_[0].dtype == np.float64


def test_verbose_prints_each_iteration(digits, capsys):
    (X, y), _ = digits
    MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, verbose=True).fit(X, y)
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Iteration 2, loss = " in out


@pytest.mark.parametrize("params, message", [
    ({"solver": "newton"}, "solver"),
    ({"activation": "swish"}, "activation"),
    ({"hidden_layer_sizes": (10, 0)}, "hidden_layer_sizes"),
    ({"batch_size": 0}, "batch_size"),
    ({"learning_rate": "cyclic"}, "learning_rate"),
    ({"momentum": 1.5}, "momentum"),
    ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"dtype": "float16"}, "dtype"),
])
def test_bad_parameters_fail_at_fit(params, message):
    est = MLPClassifier(**params)     # scikit-learn's rule: __init__ stores, fit validates
    with pytest.raises(ValueError, match=message):
        est.fit(np.zeros((4, 2)), [0, 1, 0, 1])


def test_poisson_regressor_predicts_positive_means():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(600, 3))
    mean = np.exp(0.8 * X[:, 0] - 0.5 * X[:, 1] + 0.3)
    y = rng.poisson(mean).astype(float)
    est = MLPRegressor(loss="poisson", hidden_layer_sizes=(16,), learning_rate_init=0.01,
                       max_iter=100, random_state=0).fit(X[:500], y[:500])
    assert est.out_activation_ == "exp" and est._net.loss == "poisson"
    pred = est.predict(X[500:])
    assert (pred > 0).all()
    assert np.corrcoef(pred, mean[500:])[0, 1] > 0.9
    with pytest.raises(ValueError, match="y ≥ 0"):
        MLPRegressor(loss="poisson").fit(X[:5], -np.ones(5))
    with pytest.raises(ValueError, match="loss"):
        MLPRegressor(loss="huber").fit(X[:5], y[:5])


def test_early_stopping_with_partial_fit_is_refused():
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(np.zeros((20, 2)), np.zeros(20))


def test_warm_start_continues_from_the_fitted_weights(digits):
    (X, y), _ = digits
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, warm_start=True,
                        random_state=0).fit(X, y)
    first = est.loss_
    net = est._net
    est.fit(X, y)
    assert est._net is net and est.loss_ < first
    with pytest.raises(ValueError, match="same classes"):
        est.fit(X[y < 5], y[y < 5])


# --- coefs_ and intercepts_ are the model -----------------------------------------------------

def test_assigning_coefs_and_intercepts_takes_effect(digits):
    (X, y), (X_test, _) = digits
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0).fit(X, y)
    est.coefs_ = [np.zeros_like(W) for W in est.coefs_]
    est.intercepts_[-1] = np.arange(10.0)        # one array, by index: also copied in
    assert (est.predict(X_test) == 9).all()
    np.testing.assert_allclose(est.predict_proba(X_test)[0],
                               np.exp(np.arange(10)) / np.exp(np.arange(10)).sum(), rtol=1e-6)
    est.partial_fit(X, y)                         # training continues from the new weights
    assert np.shares_memory(est.coefs_[0], est._net.params) and est.coefs_[0].any()
    with pytest.raises(ValueError, match=r"list of 2 arrays"):
        est.coefs_ = est.coefs_[:1]
    with pytest.raises(ValueError, match=r"coefs_\[1\] must have shape \(16, 10\)"):
        est.coefs_ = [est.coefs_[0], np.zeros((16, 9))]
    with pytest.raises(ValueError, match="real numbers"):
        est.intercepts_[0] = np.array(["a"] * 16)
    with pytest.raises(AttributeError, match="before it is fitted"):
        MLPClassifier().intercepts_


def test_layers_set_before_any_fit_start_partial_fit():
    """scikit-learn's test_fit (issue 23 #21): coefs_ and intercepts_ set on an unfitted
    estimator, item by item, are where partial_fit starts; its worked example of one SGD step."""
    X, y = np.array([[0.6, 0.8, 0.7]]), np.array([0])
    est = MLPClassifier(solver="sgd", learning_rate_init=0.1, alpha=0.1, activation="logistic",
                        random_state=1, max_iter=1, hidden_layer_sizes=2, momentum=0,
                        dtype="float64")
    est.coefs_ = [0] * 2
    est.intercepts_ = [0] * 2
    est.coefs_[0] = np.array([[0.1, 0.2], [0.3, 0.1], [0.5, 0]])
    est.coefs_[1] = np.array([[0.1], [0.2]])
    est.intercepts_[0] = np.array([0.1, 0.1])
    est.intercepts_[1] = np.array([1.0])
    est.t_, est.loss_curve_ = 5, [9.0]           # set with them: kept, as scikit-learn's
    with pytest.raises(sklearn.exceptions.NotFittedError):
        est.predict(X)                           # layers alone are not a fitted model
    est.partial_fit(X, y, classes=[0, 1])
    np.testing.assert_allclose(est.coefs_[0], [[0.098, 0.195756], [0.2956664, 0.096008],
                                               [0.4939998, -0.002244]], atol=1e-3)
    np.testing.assert_allclose(est.coefs_[1], [[0.04706], [0.154089]], atol=1e-3)
    np.testing.assert_allclose(est.intercepts_[0], [0.098333, 0.09626], atol=1e-3)
    np.testing.assert_allclose(est.intercepts_[1], [0.9235], atol=1e-3)
    np.testing.assert_allclose(est.predict_proba(X)[0, 1], 0.739, atol=1e-3)
    assert est.t_ == 6 and len(est.loss_curve_) == 2 and est.n_layers_ == 3

    fresh = MLPClassifier(hidden_layer_sizes=2, random_state=1, max_iter=1)
    fresh.coefs_ = [np.zeros((3, 2)), np.zeros((2, 1))]
    fresh.intercepts_ = [np.zeros(2), np.zeros(1)]
    assert fresh.fit(X, y).coefs_[0].any()      # fit without warm_start draws a new network
    half = MLPClassifier(hidden_layer_sizes=2)
    half.coefs_ = [np.zeros((3, 2)), np.zeros((2, 1))]
    with pytest.raises(ValueError, match="not both set"):
        half.partial_fit(X, y, classes=[0, 1])
    wrong = MLPClassifier(hidden_layer_sizes=2)
    wrong.coefs_, wrong.intercepts_ = [np.zeros((4, 2)), np.zeros((2, 1))], [0, 0]
    with pytest.raises(ValueError, match="2-D arrays"):
        wrong.partial_fit(X, y, classes=[0, 1])
    wrong.intercepts_ = [np.zeros(2), np.zeros(1)]
    with pytest.raises(ValueError, match="coefs_ take 4 features .* X has 3"):
        wrong.partial_fit(X, y, classes=[0, 1])


@pytest.mark.parametrize("change", [{"hidden_layer_sizes": (9,)},
                                    {"hidden_layer_sizes": (8, 8)},
                                    {"activation": "tanh"}, {"dtype": "float64"}])
@pytest.mark.parametrize("how", ["warm_start", "partial_fit", "lbfgs"])
def test_a_changed_network_is_refused_where_training_continues(change, how):
    """A warm-started fit or a partial_fit trains the fitted network on: a parameter that
    shapes another network is an error naming it, not silently ignored (issue 23 #9)."""
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0,
                        warm_start=how != "partial_fit",
                        solver="lbfgs" if how == "lbfgs" else "adam").fit(X, y)
    before = est._net.params.copy()
    est.set_params(**change)
    (name, value), = change.items()
    with pytest.raises(ValueError, match=rf"whose {name} is .* but "
                                         rf"{re.escape(f'{name}={value!r}')} now"):
        est.partial_fit(X, y) if how == "partial_fit" else est.fit(X, y)
    np.testing.assert_array_equal(est._net.params, before)
    est.set_params(warm_start=False).fit(X, y)                 # a new network is fine
    assert est._net.layer_sizes[1:-1] == tuple(est.get_params()["hidden_layer_sizes"])


def test_regressor_refuses_a_changed_loss_where_training_continues():
    X = np.random.default_rng(0).normal(size=(40, 3))
    est = MLPRegressor(hidden_layer_sizes=(4,), max_iter=2).fit(X, np.abs(X[:, 0]))
    with pytest.raises(ValueError, match="whose loss is 'squared_error', but loss='poisson'"):
        est.set_params(loss="poisson").partial_fit(X, np.abs(X[:, 0]))


# --- divergence, as scikit-learn --------------------------------------------------------------

DIVERGING = dict(hidden_layer_sizes=(50,), activation="identity", solver="sgd",
                 learning_rate_init=1.0, max_iter=20, random_state=0)


def test_divergence_with_early_stopping_keeps_the_best_epoch():
    """scikit-learn's own non-regression test (a diverging fit on iris with early stopping
    does not raise): NaN scores after the divergence, the best epoch's weights kept."""
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    for cls in (SkRegressor, MLPRegressor):
        est = cls(early_stopping=True, **DIVERGING)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est.fit(X, y)
        assert np.isnan(est.validation_scores_[-1]) and est.n_iter_ == 20
        assert all(np.isfinite(W).all() for W in est.coefs_)
        assert any(issubclass(w.category, RuntimeWarning) for w in caught)
        assert np.isfinite(est.predict(X)).all()


def test_divergence_that_overflows_the_validation_outputs_scores_nan():
    """scikit-learn's test_mlp_diverging_loss in float64 (issue 23 #22): the weights stay
    finite while the validation outputs overflow; that epoch scores NaN and training goes on."""
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    est = MLPRegressor(early_stopping=True, dtype="float64",
                       **{**DIVERGING, "hidden_layer_sizes": 100})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        est.fit(X, y)
    assert np.isnan(est.validation_scores_[-1]) and isinstance(est.validation_scores_[-1], float)
    assert est.n_iter_ == 20 and np.isfinite(est.predict(X)).all()


def test_divergence_without_early_stopping_raises_scikit_learns_error():
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    message = "Solver produced non-finite parameter weights"
    for cls in (SkRegressor, MLPRegressor):
        with warnings.catch_warnings(), pytest.raises(ValueError, match=message):
            warnings.simplefilter("ignore", RuntimeWarning)
            cls(**DIVERGING).fit(X, y)


def test_core_trainer_keeps_its_floating_point_error():
    X, y = np.random.default_rng(0).normal(size=(30, 3)), np.zeros(30)
    net = cdnn.MLP([3, 8, 1], loss="mse", dtype="float64", seed=0)
    with pytest.raises(FloatingPointError, match="diverged"):
        cdnn.Trainer(net, cdnn.SGD(lr=1e6), batch_size=10).fit(X * 1e3, y + 1e3, epochs=5,
                                                                 verbose=0)


def test_ctrl_c_stops_a_fit_after_the_run_of_steps_and_counts_its_steps(digits, monkeypatch):
    """As scikit-learn: a warning and the model so far. The SIGINT arrives as the third run of
    steps returns (within the first epoch); the model keeps every step taken, and Adam's step
    count (its bias correction) says so."""
    (X, y), _ = digits
    spies = []
    real = Engine.training_steps
    monkeypatch.setattr(Engine, "training_steps",
                        lambda self, *a, **k: spies.append(SigintAfter(real(self, *a, **k), 3))
                        or spies[-1])
    before = signal.getsignal(signal.SIGINT)
    est = MLPClassifier(hidden_layer_sizes=(16,), batch_size=10, max_iter=5, random_state=0)
    with pytest.warns(UserWarning, match="interrupted by user"):
        est.fit(X, y)
    assert signal.getsignal(signal.SIGINT) is before
    assert est.n_iter_ == 0 and 0 < spies[0].done < len(X) // 10
    assert est._optimizer.steps == spies[0].done and spies[0].deferred
    assert all(np.isfinite(W).all() for W in est.coefs_)


# --- dtype ------------------------------------------------------------------------------------

@pytest.mark.parametrize("input_dtype", [np.float32, np.float64])
def test_dtype_none_follows_the_input(input_dtype):
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(40, 3)).astype(input_dtype), rng.normal(size=40)
    est = MLPRegressor(hidden_layer_sizes=(4,), max_iter=3, dtype=None).fit(X, y)
    assert est.coefs_[0].dtype == input_dtype and est.intercepts_[0].dtype == input_dtype
    assert est.predict(X).dtype == input_dtype
    assert est.predict(X.astype(np.float64)).dtype == np.float64   # X @ coefs_ promotes
    sk = SkRegressor(hidden_layer_sizes=(4,), max_iter=3).fit(X, y)
    assert sk.coefs_[0].dtype == est.coefs_[0].dtype and sk.predict(X).dtype == input_dtype


def test_float32_default_on_float32_input_predicts_float32():
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(40, 3)).astype(np.float32), rng.normal(size=40)
    est = MLPRegressor(hidden_layer_sizes=(4,), max_iter=3).fit(X, y)
    assert est.coefs_[0].dtype == np.float32 and est.predict(X).dtype == np.float32
    est64 = MLPRegressor(hidden_layer_sizes=(4,), max_iter=3, dtype="float64").fit(X, y)
    assert est64.coefs_[0].dtype == np.float64


def test_values_beyond_float32_range_fail_with_scikit_learns_message():
    """scikit-learn's test_nonfinite_params: float64 data near float64's maximum. scikit-learn
    fits it and ends with non-finite weights; cdnn's float32 default cannot hold it, and says
    so with the same message."""
    rng = np.random.RandomState(0)
    X = np.finfo(np.float64).max * rng.uniform(size=(10, 2))
    y = rng.standard_normal(size=10)
    message = "Solver produced non-finite parameter weights. The input data may contain large"
    with warnings.catch_warnings(), pytest.raises(ValueError, match=message):
        warnings.simplefilter("ignore", RuntimeWarning)
        SkRegressor().fit(X, y)
    with pytest.raises(ValueError, match=message):
        MLPRegressor().fit(X, y)
    fitted = MLPRegressor(max_iter=2).fit(X / 1e300, y)
    with pytest.raises(ValueError, match="float32"):
        fitted.predict(X)


def test_a_refit_that_fails_validation_keeps_the_fitted_model():
    """Issue 13, row 19: a fitted classifier refit on 3-feature X with string labels and
    sample_weight=-1 raised, but had already replaced classes_ and n_features_in_."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), rng.integers(0, 3, 60)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y)
    before = clf.predict(X)
    with pytest.raises(ValueError):
        clf.fit(X[:, :3], np.array(["a", "b", "c"] * 20), sample_weight=-np.ones(60))
    assert clf.n_features_in_ == 4 and list(clf.classes_) == [0, 1, 2]
    np.testing.assert_array_equal(clf.predict(X), before)
