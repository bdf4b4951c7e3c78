"""MLPClassifier and MLPRegressor: what each adds to _BaseMLP (targets, outputs, predictions)."""
from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from cdnn._validation import check_choice
from cdnn.sklearn._base import _BaseMLP


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: scikit-learn's MLPClassifier, trained by cdnn.

    Multiclass targets train a softmax output; binary and multi-label (indicator matrix)
    targets a sigmoid output per label. Class labels may be any values (`classes_` maps them).
    dtype: "float32" (default), "float64", or None to follow the input (see cdnn.sklearn).
    device: "cpu" (default) or "cuda" (see cdnn.sklearn).
    matmul_precision: "float32" (default) or "bfloat16" (bf16 matrix products on the CPU's
    AMX or AVX512-BF16 units, pip install 'cdnn[onednn]'; see cdnn.MLP).
    """

    _score_function = staticmethod(accuracy_score)

    def _loss_name(self) -> str:
        return ("softmax_cross_entropy" if self._label_binarizer.y_type_ == "multiclass"
                else "sigmoid_cross_entropy")

    def _out_activation(self) -> str:
        return "softmax" if self._net.loss == "softmax_cross_entropy" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        """X (float32 or float64), y as given (for scores), the network's targets (class
        indices or 0/1 columns), the number of outputs, and what early stopping stratifies by
        (scikit-learn's rule: the binarized y when it is one column, else nothing)."""
        X, y = validate_data(self, X, y, reset=reset, multi_output=True,
                             dtype=(np.float64, np.float32),
                             accept_sparse="csr")
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (incremental and hasattr(self, "classes_") and y.ndim == 1
                and self._label_binarizer.y_type_ == "multiclass"):
            return X, y, self._class_indices(y), len(self.classes_), None
        check_classification_targets(y)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(f"warm_start can only be used where `y` has the same "
                                     f"classes as in the previous call to fit. Previously "
                                     f"got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` "
                                 f"has {self.classes_}. 'y' has {classes}.")
        Y = self._label_binarizer.transform(y).astype(bool)
        if self._label_binarizer.y_type_ == "multiclass":
            targets = Y.argmax(axis=1).astype(np.intc)
        else:
            targets = Y.astype(np.float64)
        return X, y, targets, Y.shape[1], Y if Y.shape[1] == 1 else None

    def _class_indices(self, y: np.ndarray) -> np.ndarray:
        """y's positions in `classes_` (a fitted multiclass model, a later partial_fit): what
        LabelBinarizer.transform and argmax give, without scikit-learn's checks of the type of
        y, which took most of a 50-row partial_fit; a label not in `classes_` is the same error."""
        labels, inverse = np.unique(y, return_inverse=True)
        where = np.searchsorted(self.classes_, labels).clip(max=len(self.classes_) - 1)
        if not np.array_equal(self.classes_[where], labels):
            raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` "
                             f"has {self.classes_}. 'y' has {labels}.")
        return where[inverse].astype(np.intc)

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
        return self._predict_checked(self._check_X(X)[0])

    def _predict_checked(self, X) -> np.ndarray:
        if self._net.loss == "softmax_cross_entropy":
            return self.classes_[self._net.predict(X)]
        proba = self._net.predict_proba(X)
        return self._label_binarizer.inverse_transform(
            proba.ravel() if self.n_outputs_ == 1 else proba)

    def predict_proba(self, X) -> np.ndarray:
        """Probability of each class, columns in the order of `classes_`."""
        check_is_fitted(self)
        X, dtype = self._check_X(X)
        proba = self._net.predict_proba(X).astype(dtype, copy=False)
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

    loss: "squared_error", or "poisson" (y ≥ 0; the output is exp of the last layer, and the
    loss half the Poisson deviance). dtype: "float32" (default), "float64", or None to follow
    the input (see cdnn.sklearn). predict returns the dtype of `X @ coefs_`, as scikit-learn's.
    device: "cpu" (default) or "cuda" (see cdnn.sklearn).
    matmul_precision: "float32" (default) or "bfloat16" (see MLPClassifier).
    """

    _score_function = staticmethod(r2_score)

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dtype="float32", device="cpu", matmul_precision="float32"):
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init,
            power_t=power_t, max_iter=max_iter, shuffle=shuffle, random_state=random_state,
            tol=tol, verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun, dtype=dtype,
            device=device, matmul_precision=matmul_precision)
        self.loss = loss

    def _check_params(self):
        check_choice(self.loss, "loss", ("squared_error", "poisson"))
        super()._check_params()

    def _loss_name(self) -> str:
        return "poisson" if self.loss == "poisson" else "mean_squared_error"

    def _out_activation(self) -> str:
        return "exp" if self.loss == "poisson" else "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, reset=reset, multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32),
                             accept_sparse="csr")
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and (y < 0).any():
            raise ValueError("loss='poisson' needs y ≥ 0 (counts or rates)")
        return X, y, np.asarray(y, dtype=np.float64), 1 if y.ndim == 1 else y.shape[1], None

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over X, y."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X) -> np.ndarray:
        """The predicted values, shape (n,) for one output, else (n, n_outputs)."""
        check_is_fitted(self)
        X, dtype = self._check_X(X)
        return self._predict_checked(X).astype(dtype, copy=False)

    def _predict_checked(self, X) -> np.ndarray:
        return self._net.predict(X)     # exp of the output for loss='poisson'
