"""solver='sgd' and 'adam' as scikit-learn runs them, on cdnn's native training steps.

Each epoch is scikit-learn's: the same shuffle of the row indices (drawn from the estimator's
RandomState), the same mini-batches (gen_batches: full batches, then a short one), the same
updates, then its bookkeeping (loss_curve_, tol / n_iter_no_change, early stopping, the
'invscaling' and 'adaptive' learning rates).

How scikit-learn's objective maps onto cdnn's. Per batch of B rows scikit-learn descends
    Σ_rows Σ_outputs ℓ / B  +  alpha / (2B) · Σ‖W‖²        (ℓ: log loss, ½ squared error or
                                                             half Poisson deviance)
cdnn's gradient of its mean loss is c × that data term (see _BaseMLP._grad_scale), so the
network gets the L2 factor c·alpha/B, SGD the learning rate lr/c and Adam the epsilon c·eps:
the updates are then scikit-learn's. B differs for the last, short batch, so that batch runs on
a copy of the network with its own L2 factor. Adam adds epsilon before v's bias correction, as
scikit-learn does (cdnn's kernel has that form as an option); SGD's velocity is −lr × cdnn's
momentum buffer, so when the learning rate changes the buffer is rescaled to keep it.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import shuffle

from cdnn.optim import SGD, Adam
from cdnn._engine import DeferredInterrupt, StepRunner

NON_FINITE = ("Solver produced non-finite parameter weights. The input data may contain large "
              "values and need to be preprocessed.")


class _SklearnAdam(Adam):
    """Adam as scikit-learn's: p −= lr·√(1−β2ᵗ)/(1−β1ᵗ) · m / (√v + ε)."""

    def kernel_config(self):
        return {**super().kernel_config(), "eps_inside": True}


def fit_stochastic(est, X, y, targets, weights, stratify, incremental: bool):
    """scikit-learn's _fit_stochastic, for the estimator est (X, targets already the
    network's; y as given, for the validation score)."""
    if est.early_stopping and incremental:
        raise ValueError("partial_fit does not support early_stopping=True")
    c = est._grad_scale()
    if not incremental or est._optimizer is None:
        est._lr = float(est.learning_rate_init)     # scikit-learn's scale, not cdnn's
        est._optimizer = _make_optimizer(est, c)
    validation = None
    if est.early_stopping:
        X, targets, weights, validation = _split(est, X, y, targets, weights, stratify)
    n = X.shape[0]
    epoch = _Epoch(est, X, targets, weights, _batch_size(est, n), c)
    order = np.arange(n)
    est.n_iter_ = 0
    with DeferredInterrupt() as interrupt:      # Ctrl-C: after a run of steps, not inside
        for _ in range(est.max_iter):
            if est.shuffle:
                order = shuffle(order, random_state=est._random_state)
            try:
                loss, penalty = epoch.run(order if est.shuffle else None, interrupt)
            except FloatingPointError:
                if not est.early_stopping:
                    raise ValueError(NON_FINITE) from None
                _diverged(est, n)
                break
            except KeyboardInterrupt:
                warnings.warn("Training interrupted by user.")
                break
            est.n_iter_ += 1
            est.t_ += n
            est.loss_ = est._reported_loss(loss, c, penalty)
            est.loss_curve_.append(est.loss_)
            if est.verbose:
                print(f"Iteration {est.n_iter_}, loss = {est.loss_:.8f}")
            _count_no_improvement(est, validation)
            if est.solver == "sgd" and est.learning_rate == "invscaling":
                est._lr = est.learning_rate_init / (est.t_ + 1) ** est.power_t
            if est._no_improvement_count > est.n_iter_no_change and _stop_or_slow_down(est):
                break
            _set_learning_rate(est, c)
            if incremental:
                break
            if est.n_iter_ == est.max_iter:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({est.max_iter}) "
                              f"reached and the optimization hasn't converged yet.",
                              ConvergenceWarning)
    if est.early_stopping:
        est._net.params[...] = est._best_params


class _Epoch:
    """One epoch of scikit-learn's mini-batches, as one or two runs of cdnn's training steps
    over the rows, checked and converted once per fit: the full batches on the estimator's
    network, whose L2 factor suits `batch` rows, then the short last batch (if any) on a copy
    whose factor suits its own rows. With sample weights, scikit-learn divides each batch's
    penalty by that batch's weight sum; here the rows are counted at the mean weight."""

    def __init__(self, est, X, targets, weights, batch: int, c: float):
        self.est, self.n = est, X.shape[0]
        mean_weight = 1.0 if weights is None else float(weights.mean()) or 1.0
        data = est._net.engine.prepare(X, targets, weights)
        full = self.n - self.n % batch
        self.runs = []
        for start, stop, rows in ((0, full, batch), (full, self.n, self.n - full)):
            if stop > start:
                net = est._with_l2(c * est.alpha / (rows * mean_weight))
                if start == 0:
                    est._net = net      # the estimator's network: coefs_ follow it
                steps = net.engine.training_steps(net.params, est._optimizer, data, rows,
                                                  clip_norm=0.0, seed=0)
                self.runs.append((net, steps, start, stop, rows))
        self.n_batches = -(-self.n // batch)

    def run(self, order, interrupt: DeferredInterrupt) -> tuple[float, callable]:
        """Train one epoch over the rows in order (None: as they are); returns cdnn's mean
        loss over the rows (with the penalty), and a function giving scikit-learn's mean L2
        term (taken at the epoch's start and end weights). Raises KeyboardInterrupt after the
        run of steps in which Ctrl-C was pressed."""
        est = self.est
        order = np.arange(self.n) if order is None else np.asarray(order, dtype=np.intp)
        before = squared_weights(est._net)
        total = 0.0
        for net, steps, start, stop, rows in self.runs:
            total += _train(est.n_iter_, net, steps, est._net, order[start:stop], rows,
                            interrupt)
        return total / self.n, lambda: (0.25 * est.alpha * self.n_batches
                                        * (before + squared_weights(est._net)) / self.n)


def _train(epoch: int, net, steps, main, order: np.ndarray, rows: int, interrupt) -> float:
    """The steps of `rows` rows over the rows in order, through the step runner (Ctrl-C after
    a run of steps; divergence: FloatingPointError); returns the sum of their losses times
    their rows. The network takes main's parameters for them and gives them back, also when
    training diverges."""
    if net is not main:
        net.params[...] = main.params
    try:
        losses, _, _ = StepRunner(steps, interrupt).epoch(
            epoch, order, len(order) // rows,
            lambda count: np.full(count, steps.optimizer.lr))
    finally:
        if net is not main:
            main.params[...] = net.params
    return float(losses.sum()) * rows


def squared_weights(net) -> float:
    """Σ‖W‖² over the weight matrices (scikit-learn's L2 term leaves out the intercepts)."""
    return sum(float(np.dot(W.ravel(), W.ravel())) for W in net.weights)


def _make_optimizer(est, c: float):
    if est.solver == "sgd":
        return SGD(lr=est.learning_rate_init / c, momentum=est.momentum,
                   nesterov=est.nesterovs_momentum and est.momentum > 0)
    return _SklearnAdam(lr=est.learning_rate_init, betas=(est.beta_1, est.beta_2),
                        eps=est.epsilon * c)


def _batch_size(est, n: int) -> int:
    if est.batch_size == "auto":
        return min(200, n)
    if est.batch_size > n:
        warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going "
                      "to be clipped")
    return min(est.batch_size, n)


def _split(est, X, y, targets, weights, stratify):
    """scikit-learn's early-stopping split: the same rows held out, in the same order."""
    train, val = train_test_split(np.arange(X.shape[0]), random_state=est._random_state,
                                  test_size=est.validation_fraction, stratify=stratify)
    if len(val) < 2:
        raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                         "or the size of your dataset.")
    validation = (X[val], y[val], None if weights is None else weights[val])
    return X[train], targets[train], None if weights is None else weights[train], validation


def _count_no_improvement(est, validation):
    if validation is not None:
        score = est._score_with(*validation)
        est.validation_scores_.append(score)
        if est.verbose:
            print(f"Validation score: {score:f}")
        if score < est.best_validation_score_ + est.tol:
            est._no_improvement_count += 1
        else:                        # NaN included: scikit-learn resets the count then
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


def _stop_or_slow_down(est) -> bool:
    """No improvement for n_iter_no_change epochs: stop, or (sgd, 'adaptive') divide the
    learning rate by 5 while it is above 1e-6."""
    what = "Validation score" if est.early_stopping else "Training loss"
    msg = (f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} "
           f"consecutive epochs.")
    if est.solver == "sgd" and est.learning_rate == "adaptive" and est._lr > 1e-6:
        est._lr /= 5.0
        est._no_improvement_count = 0
        if est.verbose:
            print(f"{msg} Setting learning rate to {est._lr:f}")
        return False
    if est.verbose:
        print(f"{msg} Stopping.")
    return True


def _set_learning_rate(est, c: float):
    opt, lr = est._optimizer, est._lr / c
    if est.solver == "sgd" and lr != opt.lr:
        if opt.state is not None:
            # scikit-learn's velocity is −lr × cdnn's momentum buffer, and it carries over
            # unchanged when the rate changes: rescale the buffer to match
            momentum = opt.state["momentum"]
            momentum *= opt.lr / lr
        opt.lr = lr


def _diverged(est, n: int):
    """Early stopping, and the loss or the weights turned non-finite. scikit-learn trains on
    with NaN weights to max_iter (a NaN score never stops it), then keeps the best epoch's
    weights: record the same, without the pointless epochs."""
    warnings.warn(f"Training diverged in epoch {est.n_iter_ + 1}: the loss or the weights "
                  f"became non-finite. As in scikit-learn, every later epoch scores NaN and "
                  f"the model keeps the weights of its best epoch.", RuntimeWarning)
    while est.n_iter_ < est.max_iter:
        est.n_iter_ += 1
        est.t_ += n
        est.loss_ = np.nan
        est.loss_curve_.append(np.nan)
        est.validation_scores_.append(np.nan)
    est._no_improvement_count = 0
    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({est.max_iter}) reached and the "
                  f"optimization hasn't converged yet.", ConvergenceWarning)
