"""Drop-in replacements for scikit-learn's MLPClassifier and MLPRegressor, trained by cdnn.

    from cdnn.sklearn import MLPClassifier      # instead of sklearn.neural_network

Same constructor parameters, fitted attributes and methods as scikit-learn's, plus `dtype`
(float32 by default). Training runs through cdnn.MLP and cdnn.Trainer: one native call per run
of mini-batches, with this module's callback doing scikit-learn's per-epoch bookkeeping
(`loss_curve_`, tol / n_iter_no_change, early stopping, the 'invscaling' and 'adaptive' learning
rates). solver='lbfgs' runs scipy's L-BFGS-B over the flat parameter buffer.

How scikit-learn's objective maps onto cdnn's. scikit-learn descends, per batch of B rows::

    Σ_rows Σ_outputs ℓ / B  +  alpha / (2B) · Σ‖W‖²        (ℓ: log loss, or ½ squared error)

cdnn's losses are means: over rows for softmax, over rows × k outputs for sigmoid and squared
error (whose ℓ has no ½). So cdnn's gradient is c × scikit-learn's, with c = 1 (softmax),
1/k (sigmoid) or 2/k (squared error); we pass MLP(l2 = c·alpha/B), divide SGD's learning rate
by c and multiply Adam's epsilon by c, which makes the update the same as scikit-learn's; the
reported losses are converted back to scikit-learn's definition. B is the nominal batch size
(scikit-learn uses each batch's own row count or weight sum, so its last, smaller batch is
penalised slightly more), times the mean sample weight when there are weights.

Differences that remain: weights start Glorot-uniform and biases at zero (scikit-learn also
draws the biases); Adam adds epsilon after its bias correction (PyTorch's form), a ~1e-4
relative difference per step. Sparse X (scipy.sparse) is taken as CSR, never densified.

This module is the only part of cdnn that imports scikit-learn (an optional dependency).
"""
from __future__ import annotations

try:   # the one optional dependency of this module: say how to get it
    import sklearn  # noqa: F401
except ImportError as e:
    raise ImportError("cdnn.sklearn needs scikit-learn: pip install 'cdnn[sklearn]'") from e
import numbers
import warnings

import numpy as np
import scipy.optimize
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from cdnn._validation import (check_choice, check_positive_int, check_real,
                              check_sample_weight)
from cdnn.callbacks import Callback
from cdnn.network import ACTIVATIONS, MLP
from cdnn._validation import check_dtype
from cdnn.convert import estimator_to_onnx
from cdnn.optim import SGD, Adam
from cdnn.training import Trainer

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's activation names that cdnn spells differently
ACTIVATION_NAMES = {"logistic": "sigmoid"}
SOLVERS = ("sgd", "adam", "lbfgs")
LEARNING_RATES = ("constant", "invscaling", "adaptive")


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, fitting, the solvers."""
    to_onnx = estimator_to_onnx     # est.to_onnx(path): with class labels, as skl2onnx

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype="float32"):
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

    # --- parameters ----------------------------------------------------------------------

    def _check_params(self):
        """Validate the constructor parameters (scikit-learn checks them at fit, not init)."""
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else list(sizes)
        self._hidden = [check_positive_int(s, "every hidden_layer_sizes entry") for s in sizes]
        activation = ACTIVATION_NAMES.get(self.activation, self.activation)
        self._activation = check_choice(activation, "activation",
                                        set(ACTIVATIONS) | set(ACTIVATION_NAMES))
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
        self._dtype = check_dtype(self.dtype)

    def _check_solver(self) -> bool:
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(f"partial_fit is only available for the stochastic solvers "
                                 f"(sgd, adam), not {self.solver!r}")
        return True

    # --- fitting -------------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None):
        """Fit the model to X and y (sample_weight: optional per-row weights)."""
        return self._fit(X, y, sample_weight, incremental=False)

    def _fit(self, X, y, sample_weight, incremental: bool):
        self._check_params()
        first_pass = not hasattr(self, "_net") or (not self.warm_start and not incremental)
        X, y, targets, n_outputs = self._validate_input(X, y, incremental, reset=first_pass)
        weights = check_sample_weight(sample_weight, X.shape[0], self._dtype, scaled=False)
        if weights is not None and not weights.any():
            raise ValueError("sample_weight is all zero: at least one sample needs a "
                             "non-zero weight")
        self._random_state = check_random_state(self.random_state)
        if not first_pass and n_outputs != self.n_outputs_:
            raise ValueError(f"y has {n_outputs} outputs, the fitted model {self.n_outputs_}")
        if first_pass:
            self._initialize(X.shape[1], n_outputs)
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, targets, weights)
        else:
            self._fit_stochastic(X, y, targets, weights, incremental)
        return self

    def _initialize(self, n_features: int, n_outputs: int):
        net = MLP([n_features, *self._hidden, n_outputs], activation=self._activation,
                  loss=self._loss_name(), init="glorot_uniform", dtype=self._dtype,
                  seed=int(self._random_state.randint(2**31 - 1)))
        self._link(net)
        self.n_iter_, self.t_ = 0, 0
        self.n_layers_ = len(self._hidden) + 2
        self.n_outputs_ = n_outputs
        self.out_activation_ = self._out_activation()
        self._optimizer = None
        if self.solver != "lbfgs":
            self.loss_curve_ = []
            self._no_improvement_count = 0
            self._best_params = net.params.copy()
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _link(self, net: MLP):
        """Make net the model; coefs_ and intercepts_ are views of its parameters."""
        self._net = net
        self.coefs_ = list(net.weights)
        self.intercepts_ = list(net.biases)

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_net" in state:     # pickling copied the views: point them at the network again
            self._link(self._net)

    def _with_l2(self, l2: float):
        """Rebuild the network with this L2 factor (it is fixed at construction)."""
        if self._net.l2 != l2:
            old = self._net
            net = MLP(**{**old.get_config(), "l2": l2})
            net.params[...] = old.params
            self._link(net)

    def _grad_scale(self) -> float:
        """cdnn's gradient ÷ scikit-learn's on the same data (see the module docstring)."""
        k = self.n_outputs_
        return {"softmax_cross_entropy": 1.0, "sigmoid_cross_entropy": 1.0 / k,
                "mean_squared_error": 2.0 / k}[self._net.loss]

    def _sklearn_loss(self, loss: float, c: float, rows: float) -> float:
        """scikit-learn's loss from cdnn's (data loss + c·P): its data loss is cdnn's ÷ c, but
        ÷ 2 for squared error (a mean over outputs, though its gradient is that of the sum);
        the penalty P = alpha/(2·rows)·Σ‖W‖² is taken at the current weights."""
        penalty = self.alpha / (2 * rows) * sum(float(np.dot(W.ravel(), W.ravel()))
                                                for W in self.coefs_)
        d = 0.5 if self._net.loss == "mean_squared_error" else 1 / c
        return (loss - c * penalty) * d + penalty

    def _make_optimizer(self, c: float):
        if self.solver == "sgd":
            return SGD(lr=self._lr / c, momentum=self.momentum,
                       nesterov=self.nesterovs_momentum and self.momentum > 0)
        return Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2),
                    eps=self.epsilon * c)

    def _fit_stochastic(self, X, y, targets, weights, incremental: bool):
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        c = self._grad_scale()
        if not incremental or self._optimizer is None:
            self._lr = float(self.learning_rate_init)   # scikit-learn's scale, not cdnn's
            self._optimizer = self._make_optimizer(c)
        validation = None
        if self.early_stopping:
            # split indices exactly as scikit-learn splits the arrays: same rows held out
            stratify = y if self._stratify() else None
            train, val = train_test_split(np.arange(X.shape[0]), random_state=self._random_state,
                                          test_size=self.validation_fraction,
                                          stratify=stratify)
            if len(val) < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            validation = (X[val], y[val], None if weights is None else weights[val])
            X, targets = X[train], targets[train]
            weights = None if weights is None else weights[train]
        n = X.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                              "It is going to be clipped")
            batch = min(self.batch_size, n)
        mean_weight = 1.0 if weights is None else float(weights.mean()) or 1.0
        rows = batch * mean_weight
        self._with_l2(c * self.alpha / rows)

        trainer = Trainer(self._net, self._optimizer, batch_size=batch,
                          seed=int(self._random_state.randint(2**31 - 1)))
        progress = _SklearnEpochs(self, c, rows, n, validation)
        self.n_iter_ = 0
        try:
            history = trainer.fit(X, targets, epochs=1 if incremental else self.max_iter,
                                  shuffle=self.shuffle, sample_weight=weights,
                                  callbacks=[progress], verbose=0)
        except FloatingPointError as e:
            raise ValueError(str(e)) from None
        if history.interrupted:
            warnings.warn("Training interrupted by user.")
        elif not incremental and not progress.converged and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                          f"reached and the optimization hasn't converged yet.",
                          ConvergenceWarning)
        if self.early_stopping:
            self._net.params[...] = self._best_params

    def _fit_lbfgs(self, X, targets, weights):
        c = self._grad_scale()
        total = X.shape[0] if weights is None else float(weights.sum())
        self._with_l2(c * self.alpha / total)
        net = self._net

        def loss_and_grad(p):
            net.params[...] = p
            loss, grad = net.loss_and_grad(X, targets, weights)
            return loss / c, grad.astype(np.float64) / c

        result = scipy.optimize.minimize(
            loss_and_grad, net.params.astype(np.float64), method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        net.params[...] = result.x
        self.n_iter_ = min(int(result.nit), self.max_iter)
        self.loss_ = self._sklearn_loss(float(result.fun) * c, c, total)
        if result.status != 0:
            message = result.message.decode() if isinstance(result.message, bytes) \
                else result.message
            warnings.warn(f"lbfgs failed to converge after {self.n_iter_} iteration(s) "
                          f"(status={result.status}): {message}. Increase max_iter or "
                          f"max_fun, or scale the data.", ConvergenceWarning)
        if self.verbose:
            print(f"L-BFGS: {self.n_iter_} iterations, loss = {self.loss_:.8f}")

    # --- prediction ----------------------------------------------------------------------

    def _check_X(self, X) -> np.ndarray:
        return validate_data(self, X, reset=False, dtype=self._net.dtype, order="C",
                             accept_sparse="csr")

    def _score_with(self, X, y, sample_weight, score_function) -> float:
        """The score of already validated X (the early-stopping validation set)."""
        y_pred = self._predict_checked(X)
        if y_pred.dtype.kind == "f" and not np.isfinite(y_pred).all():
            return np.nan
        return score_function(y, y_pred, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = True
        return tags


class _SklearnEpochs(Callback):
    """scikit-learn's end-of-epoch bookkeeping, run by Trainer.fit between epochs."""

    def __init__(self, est: _BaseMLP, c: float, rows: float, n_samples: int, validation):
        self.est, self.c, self.rows, self.n_samples = est, c, rows, n_samples
        self.validation = validation
        self.converged = False

    def on_epoch_end(self, epoch, logs=None):
        est = self.est
        est.n_iter_ += 1
        est.t_ += self.n_samples
        est.loss_ = est._sklearn_loss(logs["loss"], self.c, self.rows)
        est.loss_curve_.append(est.loss_)
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {est.loss_:.8f}")
        self._count_no_improvement()
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            est._lr = est.learning_rate_init / (est.t_ + 1) ** est.power_t
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if self.validation else "Training loss"
            msg = (f"{what} did not improve more than tol={est.tol:f} for "
                   f"{est.n_iter_no_change} consecutive epochs.")
            if est.solver == "sgd" and est.learning_rate == "adaptive" and est._lr > 1e-6:
                est._lr /= 5.0
                est._no_improvement_count = 0
                if est.verbose:
                    print(f"{msg} Setting learning rate to {est._lr:f}")
            else:
                if est.verbose:
                    print(f"{msg} Stopping.")
                self.converged = True
                self.trainer.stop_training = True
        opt, lr = self.trainer.optimizer, est._lr / self.c
        if est.solver == "sgd" and lr != opt.lr:
            if opt.state is not None:
                # scikit-learn's velocity is −lr·(cdnn's momentum buffer) and carries over
                # unchanged when the rate changes: rescale the buffer to match
                momentum = opt.state[0]
                momentum *= opt.lr / lr
            opt.lr = lr

    def _count_no_improvement(self):
        est = self.est
        if self.validation is not None:
            score = est._score_with(*self.validation, est._score_function)
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_params = est._net.params.copy()
        else:
            if est.loss_ > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            est.best_loss_ = min(est.best_loss_, est.loss_)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: scikit-learn's MLPClassifier, trained by cdnn.

    Multiclass targets train a softmax output; binary and multi-label (indicator matrix)
    targets a sigmoid output per label. Class labels may be any values (`classes_` maps them).
    """

    _score_function = staticmethod(accuracy_score)

    def _loss_name(self) -> str:
        return ("softmax_cross_entropy" if self._label_binarizer.y_type_ == "multiclass"
                else "sigmoid_cross_entropy")

    def _out_activation(self) -> str:
        return "softmax" if self._net.loss == "softmax_cross_entropy" else "logistic"

    def _stratify(self) -> bool:
        return self._label_binarizer.y_type_ != "multilabel-indicator"

    def _validate_input(self, X, y, incremental, reset):
        """X as the model's dtype; y as given (for scores) and as the network's targets;
        the number of outputs."""
        X, y = validate_data(self, X, y, reset=reset, multi_output=True, dtype=self._dtype,
                             order="C", accept_sparse="csr")
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start and not incremental:
                if set(classes) != set(self.classes_):
                    raise ValueError(f"warm_start can only be used where `y` has the same "
                                     f"classes as in the previous call to fit. Previously "
                                     f"got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` "
                                 f"has {self.classes_}. 'y' has {classes}.")
        Y = self._label_binarizer.transform(y)
        if self._label_binarizer.y_type_ == "multiclass":
            targets = np.ascontiguousarray(Y.argmax(axis=1), dtype=np.intc)
        else:
            targets = np.ascontiguousarray(Y, dtype=X.dtype)
        return X, y, targets, Y.shape[1]

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over X, y; `classes` (every label there will be) on the first call."""
        if not hasattr(self, "classes_"):
            if classes is None and type_of_target(y) != "multilabel-indicator":
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self._label_binarizer = LabelBinarizer().fit(
                y if type_of_target(y) == "multilabel-indicator" else classes)
            self.classes_ = self._label_binarizer.classes_
        elif classes is not None and not np.array_equal(self.classes_, unique_labels(classes)):
            raise ValueError(f"`classes={classes!r}` is not the same as on last call to "
                             f"partial_fit, was: {self.classes_!r}")
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X) -> np.ndarray:
        """Class labels (an indicator matrix for multi-label targets)."""
        check_is_fitted(self)
        return self._predict_checked(self._check_X(X))

    def _predict_checked(self, X) -> np.ndarray:
        if self._net.loss == "softmax_cross_entropy":
            return self.classes_[self._net.predict(X)]
        proba = self._net.predict_proba(X)
        return self._label_binarizer.inverse_transform(
            proba.ravel() if self.n_outputs_ == 1 else proba)

    def predict_proba(self, X) -> np.ndarray:
        """Probability of each class, columns in the order of `classes_`."""
        check_is_fitted(self)
        proba = self._net.predict_proba(self._check_X(X))
        if self.n_outputs_ == 1:
            return np.column_stack([1 - proba[:, 0], proba[:, 0]])
        return proba

    def predict_log_proba(self, X) -> np.ndarray:
        """log(predict_proba(X)) (-inf where a probability underflowed to 0, as sklearn's)."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: scikit-learn's MLPRegressor, trained by cdnn.

    loss: 'squared_error' only (scikit-learn's 'poisson' is not implemented).
    """

    _score_function = staticmethod(r2_score)

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype="float32"):
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init,
            power_t=power_t, max_iter=max_iter, shuffle=shuffle, random_state=random_state,
            tol=tol, verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun, dtype=dtype)
        self.loss = loss

    def _check_params(self):
        if self.loss == "poisson":
            raise ValueError("loss='poisson' is not implemented in cdnn; use 'squared_error'")
        check_choice(self.loss, "loss", ("squared_error",))
        super()._check_params()

    def _loss_name(self) -> str:
        return "mean_squared_error"

    def _out_activation(self) -> str:
        return "identity"

    def _stratify(self) -> bool:
        return False

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, reset=reset, multi_output=True, y_numeric=True,
                             dtype=self._dtype, order="C", accept_sparse="csr")
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y, np.ascontiguousarray(y, dtype=self._dtype), 1 if y.ndim == 1 else y.shape[1]

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over X, y."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X) -> np.ndarray:
        """The predicted values, shape (n,) for one output, else (n, n_outputs)."""
        check_is_fitted(self)
        return self._predict_checked(self._check_X(X))

    def _predict_checked(self, X) -> np.ndarray:
        # float64 whatever the network's dtype, as scikit-learn's regressors promise
        out = self._net.forward(X).astype(np.float64)
        return out[:, 0] if self.n_outputs_ == 1 else out
