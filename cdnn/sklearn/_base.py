"""What MLPClassifier and MLPRegressor share: parameters, initialisation, the solvers, and
coefs_ / intercepts_ as the network's own parameters."""
from __future__ import annotations

import numbers
import warnings

import numpy as np
import scipy.optimize
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import validate_data

from cdnn import _devices
from cdnn._validation import (check_choice, check_dtype, check_positive_int, check_real,
                              check_sample_weight)
from cdnn._engine import solver_threads
from cdnn.convert import estimator_to_onnx
from cdnn import kinds
from cdnn.network import ACTIVATIONS, MLP
from cdnn.sklearn._stochastic import NON_FINITE, fit_stochastic, squared_weights

SOLVERS = ("sgd", "adam", "lbfgs")
LEARNING_RATES = ("constant", "invscaling", "adaptive")
FLOAT32_MAX = float(np.finfo(np.float32).max)


class _Layers(list):
    """coefs_ or intercepts_: a list of views of the network's parameters (on device="cuda",
    numpy copies of them, made at each access). Assigning an item copies the values in, as
    assigning the whole list does, so that predicting and training use them (scikit-learn's
    estimators read their plain lists afresh each time)."""

    def __init__(self, views, name: str, engine):
        on_host = engine.device == "cpu"
        super().__init__(views if on_host else [engine.to_host(v) for v in views])
        self.views, self.name, self.engine = views, name, engine

    def __setitem__(self, i, value):
        if not isinstance(i, numbers.Integral):
            raise TypeError(f"assign {self.name} whole, or one array at an integer index")
        _copy_into(self.views[i], value, f"{self.name}[{i}]", self.engine)


def _copy_into(view, value, name: str, engine):
    """view[...] := value (a numpy or a CuPy array), view being one of engine's arrays"""
    value = _devices.to_numpy(value)
    if value.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {value.dtype}")
    if value.shape != view.shape:
        raise ValueError(f"{name} must have shape {view.shape} (this network's layer), "
                         f"got {value.shape}")
    view[...] = engine.asarray(value)


def _layers_property(name: str, attribute: str):
    given = f"_given_{name}"

    def get(self):
        if "_net" not in vars(self):
            if given in vars(self):
                return vars(self)[given]
            raise AttributeError(f"{type(self).__name__} has no {name} before it is fitted")
        return _Layers(getattr(self._net, attribute), name, self._net.engine)

    def set(self, arrays):
        if "_net" not in vars(self):
            # as scikit-learn's: layers set before any fit are where a warm-started fit or a
            # partial_fit starts (_adopt_given_layers). The list itself is kept, since its
            # items may be assigned next (coefs_ = [0] * 2; coefs_[0] = W)
            vars(self)[given] = arrays
            return
        views = get(self).views
        if isinstance(arrays, np.ndarray) or len(arrays) != len(views):
            raise ValueError(f"{name} must be a list of {len(views)} arrays (one per layer)")
        for i, (view, value) in enumerate(zip(views, arrays)):
            _copy_into(view, value, f"{name}[{i}]", self._net.engine)
    return property(get, set, doc=f"The network's {attribute}, as scikit-learn's {name}.")


# coefs_ and intercepts_ set before any fit, until a fit adopts them (_adopt_given_layers)
GIVEN_LAYERS = ("_given_coefs_", "_given_intercepts_")
# a fit's bookkeeping that a partial_fit from given layers keeps when it was set with them
BOOKKEEPING = ("n_iter_", "t_", "loss_curve_", "best_loss_", "_no_improvement_count",
               "validation_scores_", "best_validation_score_")

# what validating a fit's input sets on the estimator (scikit-learn's validate_data and the
# classifier's label binarizer)
VALIDATION_SETS = ("n_features_in_", "feature_names_in_", "classes_", "_label_binarizer")


class _BaseMLP(BaseEstimator):
    """Parameters, fitting and the solvers."""

    to_onnx = estimator_to_onnx     # est.to_onnx(path): with class labels, as skl2onnx
    coefs_ = _layers_property("coefs_", "weights")
    intercepts_ = _layers_property("intercepts_", "biases")

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype="float32", device="cpu", matmul_precision="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype
        self.device = device
        self.matmul_precision = matmul_precision

    # --- parameters ----------------------------------------------------------------------

    def _check_params(self):
        """Validate the constructor parameters (scikit-learn checks them at fit, not init)."""
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
        self._hidden = [check_positive_int(s, "every hidden_layer_sizes entry") for s in sizes]
        self._activation = check_choice(kinds.activation_name(self.activation), "activation",
                                        ACTIVATIONS)   # scikit-learn's names among them
        check_choice(self.solver, "solver", SOLVERS)
        check_choice(self.learning_rate, "learning_rate", LEARNING_RATES)
        check_real(self.alpha, "alpha", 0)
        if self.batch_size != "auto":
            check_positive_int(self.batch_size, "batch_size ('auto' or an integer)")
        check_real(self.learning_rate_init, "learning_rate_init", 0, low_open=True)
        check_real(self.power_t, "power_t", 0)
        check_positive_int(self.max_iter, "max_iter")
        check_positive_int(self.max_fun, "max_fun")
        check_real(self.tol, "tol", 0)
        check_real(self.momentum, "momentum", 0, 1)
        check_real(self.validation_fraction, "validation_fraction", 0, 1, high_open=True)
        check_real(self.beta_1, "beta_1", 0, 1, high_open=True)
        check_real(self.beta_2, "beta_2", 0, 1, high_open=True)
        check_real(self.epsilon, "epsilon", 0, low_open=True)
        if self.n_iter_no_change != np.inf:
            check_positive_int(self.n_iter_no_change, "n_iter_no_change")
        self._dtype = None if self.dtype is None else check_dtype(self.dtype)
        _devices.check_device(self.device)
        check_choice(self.matmul_precision, "matmul_precision", _devices.MATMUL_PRECISIONS)

    def _check_solver(self) -> bool:
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(f"partial_fit is only available for the stochastic solvers "
                                 f"(sgd, adam), not {self.solver!r}")
        return True

    # --- input ---------------------------------------------------------------------------

    def _as_model_dtype(self, X: np.ndarray, dtype, fitting: bool) -> np.ndarray:
        """X (float32 or float64, validated) in the dtype the network computes in."""
        if dtype == np.float32 and X.dtype == np.float64 and X.size \
                and np.abs(X).max() > FLOAT32_MAX:
            problem = ("X holds values beyond float32's range, and this model computes in "
                       "float32 (dtype=None or 'float64' computes float64 data in float64)")
            # scikit-learn, computing in float64, ends such a fit with its NON_FINITE error
            raise ValueError(f"{NON_FINITE} ({problem})" if fitting else problem)
        if sparse.issparse(X):
            return X.tocsr().astype(dtype, copy=False)
        return np.ascontiguousarray(X, dtype=dtype)

    def _check_X(self, X) -> tuple[np.ndarray, np.dtype]:
        """X for the network, and the dtype scikit-learn's forward pass would give (that of
        X @ coefs_)."""
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32),
                             accept_sparse="csr")
        net_dtype = self._net.dtype
        return self._as_model_dtype(X, net_dtype, False), np.result_type(X.dtype, net_dtype)

    # --- fitting -------------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None):
        """Fit the model to X and y (sample_weight: optional per-row weights)."""
        return self._fit(X, y, sample_weight, incremental=False)

    def _fit(self, X, y, sample_weight, incremental: bool):
        self._check_params()
        has_layers = "_net" in vars(self) or GIVEN_LAYERS[0] in vars(self)
        first_pass = not has_layers or (not self.warm_start and not incremental)
        fitted = {k: v for k, v in vars(self).items() if k in VALIDATION_SETS}
        try:    # validation sets the input's attributes: a refit that fails keeps the old ones
            X, y, targets, weights, n_outputs, stratify = self._validate_fit(
                X, y, sample_weight, incremental, first_pass)
        except Exception:
            for name in VALIDATION_SETS:
                vars(self).pop(name, None)
            vars(self).update(fitted)
            raise
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(X.shape[1], n_outputs, X.dtype)
            for name in GIVEN_LAYERS:      # replaced by the drawn network, as in scikit-learn
                vars(self).pop(name, None)
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, targets, weights)
        else:
            fit_stochastic(self, X, y, targets, weights, stratify, incremental)
        if not np.isfinite(self._net.params).all():
            raise ValueError(NON_FINITE)
        return self

    def _validate_fit(self, X, y, sample_weight, incremental: bool, first_pass: bool):
        """X, y, targets and weights for a fit, in the model's dtype"""
        X, y, targets, n_outputs, stratify = self._validate_input(X, y, incremental,
                                                                  reset=first_pass)
        if not first_pass:
            if "_net" not in vars(self):
                self._adopt_given_layers(X, n_outputs)
            self._check_same_network(incremental)
            if n_outputs != self._net.n_outputs:
                raise ValueError(f"y has {n_outputs} outputs, the fitted model "
                                 f"{self._net.n_outputs}")
        dtype = (self._dtype or X.dtype) if first_pass else self._net.dtype
        X = self._as_model_dtype(X, dtype, True)
        targets = targets.astype(np.intc if targets.dtype.kind in "iu" else dtype)
        # as given, not scaled: scikit-learn's L2 term is divided by the weights' sum
        weights = check_sample_weight(sample_weight, X.shape[0], dtype, scaled=False)
        return X, y, targets, weights, n_outputs, stratify

    def _check_same_network(self, incremental: bool):
        """A warm-started fit or a partial_fit trains the fitted network on, so the parameters
        that shape a network must still describe it. scikit-learn fails there for a new depth
        (or for lbfgs) and silently trains the old layers otherwise, with the new activation."""
        net, shown = self._net, {"sigmoid": "logistic", "mean_squared_error": "squared_error"}
        fitted = {"hidden_layer_sizes": net.layer_sizes[1:-1], "activation": net.activations,
                  "loss": net.loss, "dtype": net.dtype.name}
        wanted = {"hidden_layer_sizes": tuple(self._hidden),
                  "activation": (self._activation,) * len(self._hidden),
                  "loss": self._loss_name(), "dtype": (self._dtype or net.dtype).name}
        for name, value in wanted.items():
            if value != fitted[name]:
                was = fitted[name]
                was = (was[0] if was else "none") if name == "activation" else was
                how = "partial_fit" if incremental else "fit with warm_start=True"
                raise ValueError(
                    f"{how} continues training the fitted network, whose {name} is "
                    f"{shown.get(was, was)!r}, but {name}={getattr(self, name, value)!r} now. "
                    f"Call fit with warm_start=False for a new network, or set {name} back")

    def _adopt_given_layers(self, X, n_outputs: int):
        """The network of coefs_ and intercepts_ set before any fit (where scikit-learn's
        partial_fit, or a warm-started fit, starts), with the bookkeeping a new one has, except
        what was set along with them (n_iter_, t_, loss_curve_, ...)."""
        coefs, intercepts = (vars(self).get(name) for name in GIVEN_LAYERS)
        if coefs is None or intercepts is None:
            raise ValueError("coefs_ and intercepts_ were not both set: set both before "
                             "training from given layers")
        coefs = [_devices.to_numpy(W) for W in coefs]
        intercepts = [_devices.to_numpy(b) for b in intercepts]
        if (len(coefs) != len(intercepts) or not coefs
                or any(W.ndim != 2 for W in coefs) or any(b.ndim != 1 for b in intercepts)):
            raise ValueError("coefs_ must be a list of 2-D arrays and intercepts_ one of as "
                             "many 1-D arrays (one of each per layer)")
        sizes = [coefs[0].shape[0]] + [W.shape[1] for W in coefs]
        if sizes[0] != X.shape[1] or sizes[-1] != n_outputs:
            raise ValueError(f"coefs_ take {sizes[0]} features to {sizes[-1]} outputs; X has "
                             f"{X.shape[1]} features and y {n_outputs} outputs")
        saved = {k: v for k, v in vars(self).items() if k in BOOKKEEPING}
        self._initialize(sizes[0], n_outputs, self._dtype or X.dtype, (coefs, intercepts))
        vars(self).update(saved)
        for name in GIVEN_LAYERS:
            del vars(self)[name]

    def _initialize(self, n_features: int, n_outputs: int, dtype, given=None):
        """A new network, drawn as scikit-learn draws its own: per layer, the weights and then
        the intercepts, uniform in ±√(6 / (fan_in + fan_out)) (2, not 6, for logistic), from
        the estimator's RandomState, in float64 and then cast. Or, given (coefs, intercepts),
        one holding those, its hidden layers theirs."""
        hidden = self._hidden if given is None else [W.shape[1] for W in given[0][:-1]]
        net = MLP([n_features, *hidden, n_outputs], activation=self._activation,
                  loss=self._loss_name(), init="zeros", dtype=dtype,
                  matmul_precision=self.matmul_precision)
        factor = 2.0 if self._activation == "sigmoid" else 6.0
        for i, (W, b) in enumerate(zip(net.weights, net.biases)):
            if given is None:
                bound = np.sqrt(factor / sum(W.shape))
                W[...] = self._random_state.uniform(-bound, bound, W.shape)
                b[...] = self._random_state.uniform(-bound, bound, b.shape)
            else:
                _copy_into(W, given[0][i], f"coefs_[{i}]", net.engine)
                _copy_into(b, given[1][i], f"intercepts_[{i}]", net.engine)
        self._net = net.to(self.device)     # drawn on the host, as scikit-learn draws it
        self.n_iter_, self.t_ = 0, 0
        self.n_layers_ = len(hidden) + 2
        self.n_outputs_ = n_outputs
        self.out_activation_ = self._out_activation()
        self._optimizer = None
        self._best_params = net.params.copy()
        if self.solver != "lbfgs":
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _with_l2(self, l2: float) -> MLP:
        """The network with this L2 factor (fixed at construction): a copy when it differs."""
        net = self._net
        if net.l2 == l2:
            return net
        other = MLP(**{**net.get_config(), "l2": l2, "init": "zeros", "device": net.device})
        other.params[...] = net.params
        return other

    def _grad_scale(self) -> float:
        """c = cdnn's gradient ÷ scikit-learn's on the same rows. cdnn's losses are means: over
        rows (softmax), or over rows × k outputs (the others, whose scikit-learn loss sums the
        outputs; squared error's ℓ has no ½ in cdnn)."""
        k = self.n_outputs_
        return {"softmax_cross_entropy": 1.0, "sigmoid_cross_entropy": 1.0 / k,
                "poisson": 1.0 / k, "mean_squared_error": 2.0 / k}[self._net.loss]

    def _reported_loss(self, loss: float, c: float, penalty) -> float:
        """scikit-learn's loss from cdnn's (its data loss + c · the L2 penalty). It is cdnn's
        ÷ c except for several squared-error outputs: scikit-learn reports the mean over the
        outputs there, though its gradient is that of their sum; penalty() gives the L2 term."""
        loss /= c
        k = self.n_outputs_
        if self._net.loss != "mean_squared_error" or k == 1:
            return loss
        p = penalty() if self.alpha > 0 else 0.0
        return (loss - p) / k + p

    def _fit_lbfgs(self, X, targets, weights):
        c = self._grad_scale()
        total = X.shape[0] if weights is None else float(weights.sum())
        net = self._with_l2(c * self.alpha / total)
        rows = net.engine.prepare(X, targets, weights)   # checked once, not every iteration

        def loss_and_grad(p):       # scipy's x and gradient are host arrays
            net.params[...] = net.engine.asarray(p)
            loss, grad = net.engine.loss_and_grad(net.params, rows)
            penalty = lambda: 0.5 * self.alpha * squared_weights(net) / total  # noqa
            return (self._reported_loss(loss, c, penalty),
                    net.engine.to_host(grad).astype(np.float64) / c)

        with solver_threads(net.params.size):
            result = scipy.optimize.minimize(
                loss_and_grad, self._net.engine.to_host(self._net.params).astype(np.float64),
                method="L-BFGS-B",
                jac=True, options={"maxfun": self.max_fun, "maxiter": self.max_iter,
                                   "gtol": self.tol})
        self._net.params[...] = self._net.engine.asarray(result.x)
        self.n_iter_ = min(int(result.nit), self.max_iter)
        self.loss_ = float(result.fun)
        if result.status != 0:
            warnings.warn(f"lbfgs failed to converge after {self.n_iter_} iteration(s) "
                          f"(status={result.status}):\n{result.message}\n", ConvergenceWarning)
        if self.verbose:
            print(f"L-BFGS: {self.n_iter_} iterations, loss = {self.loss_:.8f}")

    # --- scores --------------------------------------------------------------------------

    def _score_with(self, X, y, sample_weight) -> float:
        """The score of already validated X (the early-stopping validation set): NaN when
        the predictions are not finite, as scikit-learn's."""
        try:
            y_pred = self._predict_checked(X)
        except ValueError:
            # X was checked finite when the fit began, so the network's outputs overflowed:
            # a diverging fit, which trains on, as scikit-learn's (its regressor scores NaN
            # there too; its classifier, the labels of NaN probabilities)
            return np.nan
        if y_pred.dtype.kind == "f" and not np.isfinite(y_pred).all():
            return np.nan
        return self._score_function(y, y_pred, sample_weight=sample_weight)

    def __sklearn_is_fitted__(self) -> bool:
        # not every attribute ending in "_": layers set by hand are no network until a fit
        return "_net" in vars(self)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = True
        return tags
