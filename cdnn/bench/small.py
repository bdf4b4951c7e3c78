"""The small jobs: short scikit-learn style fits, where the cost of each call (thread wake-ups,
validation, Python overhead) decides the time rather than the arithmetic.

The same code runs cdnn's drop-in estimators (`cdnn.sklearn`) and scikit-learn's own
(`sklearn.neural_network`), each with its defaults apart from what the job fixes, on float64
data as a user would pass it. The stochastic jobs run exactly their epochs (tol=0, and
n_iter_no_change as long as the run) so both do the same work. Every job runs once untimed with
a few iterations (imports, first-call set-up), then once on the clock; the suite repeats that
in alternation and reports the best time. The scipy job is cdnn's alone: scipy's L-BFGS-B over
`MLP.loss_and_grad` at the default thread count, then inside `cdnn.limit_threads(1)`.
"""
from __future__ import annotations

import time
import warnings

import numpy as np

SEED = 0            # the same data and initial weights in every repeat: best of N is noise only
CLASSES = [0, 1, 2]
WARMUP_ITERATIONS = 5
PARTIAL_FIT_ROWS = 50


def regression_data():
    """200 x 10 float64, a smooth target plus noise."""
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((200, 10))
    y = np.sin(X @ rng.standard_normal(10)) + 0.1 * rng.standard_normal(200)
    return X, y


def classification_data():
    """500 x 20 float64, three overlapping Gaussian blobs."""
    rng = np.random.default_rng(SEED)
    y = rng.integers(0, len(CLASSES), 500)
    X = rng.standard_normal((len(CLASSES), 20))[y] + rng.standard_normal((500, 20))
    return X, y


def lbfgs_regression(c, iterations):
    X, y = regression_data()
    est = c.estimators().MLPRegressor(solver="lbfgs", max_iter=iterations, random_state=SEED)
    return est.fit(X, y).n_iter_


def stochastic_classification(solver):
    def job(c, epochs):
        X, y = classification_data()
        est = c.estimators().MLPClassifier(solver=solver, max_iter=epochs, tol=0.0,
                                           n_iter_no_change=epochs, random_state=SEED)
        return est.fit(X, y).n_iter_
    return job


def partial_fit_calls(c, calls):
    X, y = classification_data()
    est = c.estimators().MLPClassifier(random_state=SEED)
    for call in range(calls):
        start = call * PARTIAL_FIT_ROWS % len(X)
        rows = slice(start, start + PARTIAL_FIT_ROWS)
        est.partial_fit(X[rows], y[rows], classes=CLASSES)
    return calls


def scipy_lbfgs(c, iterations):
    """scipy.optimize.minimize over a 10-100-1 mean-squared-error network's loss_and_grad."""
    import scipy.optimize

    X, y = regression_data()
    net = c.cdnn.MLP([10, 100, 1], loss="mse", dtype="float64", seed=SEED)
    targets = y[:, None]

    def loss_and_grad(params):
        net.params[:] = params
        return net.loss_and_grad(X, targets)

    result = scipy.optimize.minimize(loss_and_grad, net.params.copy(), jac=True,
                                     method="L-BFGS-B", options=dict(maxiter=iterations))
    return result.nit


# case: (job, the iterations, epochs or calls it runs on the clock)
JOBS = {
    "lbfgs": (lbfgs_regression, 200),
    "adam": (stochastic_classification("adam"), 200),
    "sgd": (stochastic_classification("sgd"), 200),
    "partial_fit": (partial_fit_calls, 100),
    "scipy": (scipy_lbfgs, 100),
}


def _timed(job, c, size):
    t0 = time.perf_counter()
    iterations = job(c, size)
    return time.perf_counter() - t0, int(iterations)


def task_small(c, data, t):
    """Run one small job (warm-up, then timed); the scipy job also inside limit_threads(1)."""
    if t["case"] == "scipy" and c.name != "cdnn":
        raise ValueError("the scipy job runs cdnn's loss_and_grad only")
    job, size = JOBS[t["case"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # ConvergenceWarning at max_iter, from both
        job(c, WARMUP_ITERATIONS)
        seconds, iterations = _timed(job, c, size)
        result = dict(seconds=seconds, iterations=iterations)
        if t["case"] == "scipy":
            with c.cdnn.limit_threads(1):
                seconds, iterations = _timed(job, c, size)
            result.update(seconds_one_thread=seconds, iterations_one_thread=iterations)
    return result
