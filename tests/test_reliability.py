"""Numerical faults and determinism: divergence stops fit with a clear error and finite
parameters, softmax and log-sum-exp survive huge logits, and training is bit-reproducible for a
given seed and thread count."""
import re

import numpy as np
import pytest

import cdnn
from cdnn.threads import limit_threads

DTYPES = ["float32", "float64"]


def blobs(n=64, n_in=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return rng.normal(size=(n, n_in)) + 2 * np.eye(k, n_in)[y], y


# --- divergence ---------------------------------------------------------------------------------

def diverge(net, optimizer, X, y, batch_size):
    trainer = cdnn.Trainer(net, optimizer, batch_size=batch_size)
    with pytest.raises(FloatingPointError) as info:
        trainer.fit(X, y, epochs=200, shuffle=False, verbose=0)
    message = str(info.value)
    assert "lower learning rate" in message and "clip_norm" in message
    epoch, step = map(int, re.search(r"epoch (\d+), step (\d+)", message).groups())
    return epoch, step


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss, lr, batch_size", [
    ("softmax_cross_entropy", 1e6, 64), ("softmax_cross_entropy", 1e30, 8),
    ("mean_squared_error", 10.0, 8), ("mean_squared_error", 1e3, 64),
])
def test_divergence_stops_before_the_failing_step(dtype, loss, lr, batch_size):
    X, labels = blobs()
    y = labels if loss == "softmax_cross_entropy" else 100 * X[:, 0] ** 3
    make = lambda: cdnn.MLP([5, 16, 3 if loss == "softmax_cross_entropy" else 1],  # noqa: E731
                            loss=loss, dtype=dtype, seed=0)
    net, opt = make(), cdnn.SGD(lr=lr)
    epoch, step = diverge(net, opt, X, y, batch_size)
    steps_per_epoch = len(X) // batch_size
    assert opt.steps == (epoch - 1) * steps_per_epoch + step - 1
    assert np.isfinite(net.params).all()

    # The same run, stopped by hand just before the failing step, ends with the same parameters
    replay, replay_opt = make(), cdnn.SGD(lr=lr)
    trainer = cdnn.Trainer(replay, replay_opt, batch_size=batch_size)
    if epoch > 1:
        trainer.fit(X, y, epochs=epoch - 1, shuffle=False, verbose=0)
    if step > 1:
        done = (step - 1) * batch_size
        trainer.fit(X[:done], y[:done], epochs=1, shuffle=False, verbose=0)
    assert np.array_equal(net.params, replay.params)
    # … and the failing step's own batch gives a non-finite loss or gradient norm there
    rows = slice((step - 1) * batch_size, step * batch_size)
    with np.errstate(all="ignore"):
        loss_value, grad = net.loss_and_grad(X[rows], y[rows])
        norm = np.sqrt(np.sum(grad.astype(np.float64) ** 2))
    assert not (np.isfinite(loss_value) and np.isfinite(norm))


HUGE_STEPS = [   # (dtype, optimizer from the dtype's largest float)
    ("float32", lambda big: cdnn.SGD(lr=big)), ("float64", lambda big: cdnn.SGD(lr=big)),
    ("float64", lambda big: cdnn.SGD(lr=1e300)),
    ("float32", lambda big: cdnn.SGD(lr=1e300)),
    ("float32", lambda big: cdnn.Adam(lr=0.9 * big)),
    ("float64", lambda big: cdnn.Adam(lr=0.9 * big)),
    ("float32", lambda big: cdnn.RMSprop(lr=0.9 * big, momentum=0.9)),
    ("float64", lambda big: cdnn.RMSprop(lr=0.9 * big, momentum=0.9)),
]


@pytest.mark.parametrize("dtype, optimizer", HUGE_STEPS,
                         ids=["SGD max-32", "SGD max-64", "SGD 1e300-64", "SGD 1e300-32",
                              "Adam-32", "Adam-64", "RMSprop-32", "RMSprop-64"])
def test_an_update_that_overflows_leaves_finite_parameters(dtype, optimizer):
    # A learning rate so large that the update itself overflows (lr · grad or lr itself is not
    # representable): the loss and gradient were finite, the new parameters are not; fit must
    # still end with the last finite ones.
    X, y = blobs()
    net = cdnn.MLP([5, 16, 3], dtype=dtype, seed=0)
    diverge(net, optimizer(float(np.finfo(dtype).max)), X, y, batch_size=16)
    assert np.isfinite(net.params).all()


# --- softmax and log-sum-exp at huge logits -----------------------------------------------------

def with_logits(net, logits):
    """Make the network output `logits` for every input: zero last weights, logits as bias."""
    net.weights[-1][...] = 0
    net.biases[-1][...] = logits
    return net


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logits", [[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4],
                                    [-1e4, 1e4, -1e4]])
def test_softmax_is_finite_for_huge_logits(dtype, logits):
    X, y = blobs(n=12)
    net = with_logits(cdnn.MLP([5, 8, 3], dtype=dtype, seed=0), logits)
    proba = net.predict_proba(X)
    expected = np.exp(np.array(logits) - max(logits))
    expected /= expected.sum()
    np.testing.assert_allclose(proba, np.tile(expected, (len(X), 1)), atol=1e-6)
    # cross-entropy of label c is logsumexp(logits) - logits[c]: up to 2e4, but finite
    lse = max(logits) + np.log(np.exp(np.array(logits) - max(logits)).sum())
    expected_loss = np.mean(lse - np.array(logits)[y])
    # float32 holds 1e4 to within 1e-3, which bounds how well lse - z can come out
    tol = {"float32": 1e-3, "float64": 1e-9}[dtype]
    assert net.evaluate(X, y)["loss"] == pytest.approx(expected_loss, rel=tol, abs=tol)
    loss, grad = net.loss_and_grad(X, y)
    assert loss == pytest.approx(expected_loss, rel=tol, abs=tol)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logits", [[1e4, -1e4], [-1e4, -1e4]])
def test_sigmoid_cross_entropy_is_finite_for_huge_logits(dtype, logits):
    X, _ = blobs(n=12)
    targets = np.tile([0.0, 1.0], (12, 1))
    net = with_logits(cdnn.MLP([5, 8, 2], loss="sigmoid_cross_entropy", dtype=dtype, seed=0),
                      logits)
    proba = net.predict_proba(X)
    assert np.isfinite(proba).all() and set(np.unique(proba)) <= {0.0, 1.0}
    # softplus(z) - t·z per output, averaged over outputs and rows
    expected = np.mean([max(z, 0) - t * z for z, t in zip(logits, [0.0, 1.0])])
    assert net.evaluate(X, targets)["loss"] == pytest.approx(expected, rel=1e-5)
    loss, grad = net.loss_and_grad(X, targets)
    assert loss == pytest.approx(expected, rel=1e-5) and np.isfinite(grad).all()


# --- determinism --------------------------------------------------------------------------------

def train(dtype, seed, trainer_seed=None, threads=1, epochs=3):
    X, y = blobs(n=300, n_in=40, k=4, seed=3)
    net = cdnn.MLP([40, 64, 32, 4], dtype=dtype, seed=seed, dropout=[0.3, 0.1])
    trainer = cdnn.Trainer(net, cdnn.Adam(lr=1e-3), batch_size=32, seed=trainer_seed)
    with limit_threads(threads):
        history = trainer.fit(X, y, epochs=epochs, shuffle=True, verbose=0)
    return net.params, history.history["loss"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_seed_and_threads_give_bit_identical_training(dtype):
    params, losses = train(dtype, seed=7)
    again, again_losses = train(dtype, seed=7)
    assert np.array_equal(params, again) and losses == again_losses


@pytest.mark.parametrize("dtype", DTYPES)
def test_another_seed_gives_another_model(dtype):
    params, _ = train(dtype, seed=7)
    assert not np.array_equal(params, train(dtype, seed=8)[0])
    # the trainer's seed alone (shuffling and dropout) changes the result too
    assert not np.array_equal(params, train(dtype, seed=7, trainer_seed=99)[0])


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-4), ("float64", 1e-10)])
def test_other_thread_counts_agree_to_rounding(dtype, rtol):
    # BLAS may split its sums differently with another thread count: not promised bit-identical
    one, _ = train(dtype, seed=7, threads=1)
    two, _ = train(dtype, seed=7, threads=2)
    np.testing.assert_allclose(two, one, rtol=rtol, atol=rtol * np.abs(one).max())


# --- hostile conditions (issue 13): each reproduces what once crashed, hung or lied ---------------

def run_script(tmp_path, source: str, timeout: float = 120) -> str:
    """Run source in a fresh interpreter; a crash or a hang fails the test instead of the run."""
    import subprocess
    import sys
    script = tmp_path / "script.py"
    script.write_text(source)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    return result.stdout


def test_labels_changed_by_another_thread_during_fit_never_reach_the_kernels(tmp_path):
    """y as np.intc is used without conversion; another thread writes out-of-range labels into
    it while fit runs. The engine trains on its own copy, taken before it is checked."""
    out = run_script(tmp_path, """
import threading, numpy as np, cdnn
rng = np.random.default_rng(0)
X = rng.normal(size=(20000, 20)).astype(np.float32)
y = rng.integers(0, 3, 20000).astype(np.intc)
stop = False
def vandal():
    while not stop:
        y[::7] = 10**6
        y[::7] = 1
t = threading.Thread(target=vandal); t.start()
try:
    for _ in range(3):
        try:
            cdnn.Trainer(cdnn.MLP([20, 64, 3], seed=0), cdnn.SGD(0.1), batch_size=64).fit(
                X, y, epochs=1, verbose=0)
        except ValueError as e:      # the copy was taken mid-write: named, not a crash
            assert "label" in str(e)
finally:
    stop = True; t.join()
print("ok")
""")
    assert out.strip() == "ok"


def test_a_fork_child_predicts_after_the_parent_used_threads(tmp_path):
    """A pool's workers do not survive fork: a child that waited for them would hang forever
    (as with libgomp's). The child starts a pool of its own, also from a Python thread that it
    starts and ends (whose pool is stopped at its end), and trains there as the parent does."""
    out = run_script(tmp_path, """
import multiprocessing as mp, threading, numpy as np, cdnn, cdnn.threads as t
t._USABLE_CORES = 2
net = cdnn.MLP([784, 256, 10], seed=0)
X = np.random.default_rng(0).random((4000, 784), dtype=np.float32)
expected = net.predict(X)                       # a multi-threaded call in the parent
cdnn.Trainer(net, cdnn.SGD(0.01), batch_size=256).fit(X, expected, epochs=1, verbose=0)
expected = net.predict(X)
def child(q):
    same = [bool((net.predict(X) == expected).all())]
    worker = threading.Thread(target=lambda: same.append(bool((net.predict(X) == expected).all())))
    worker.start(); worker.join()
    q.put(all(same) and len(same) == 2 and cdnn.get_num_threads() == 2)
ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=child, args=(q,)); p.start()
print(q.get(timeout=60)); p.join(10)
""", timeout=120)
    assert out.strip() == "True"


def test_more_threads_than_a_fixed_table_held_work_everywhere(tmp_path):
    """set_num_threads(100) (or a machine with more than 64 cores) once broke every call; the
    team is now sized by the work and its partial sums by the team. The ceiling is the cores
    this process may use, so the script pretends to have 100."""
    out = run_script(tmp_path, """
import numpy as np, cdnn
cdnn.threads._USABLE_CORES = 100
cdnn.set_num_threads(100)
rng = np.random.default_rng(0)
X, y = rng.normal(size=(3000, 20)), rng.integers(0, 3, 3000)
net = cdnn.MLP([20, 64, 3], dtype="float64", seed=0)
net.predict(X[:1]); net.predict(X); net.evaluate(X, y); net.loss_and_grad(X, y)
cdnn.Trainer(net, cdnn.SGD(0.1), batch_size=3000).fit(X, y, epochs=2, verbose=0)
print(cdnn.get_num_threads())
""")
    assert out.strip() == "100"


@pytest.mark.parametrize("n", [2**40, 2**16 + 1])
def test_absurd_thread_counts_are_a_value_error(n):
    with pytest.raises(ValueError, match="at most"):
        cdnn.set_num_threads(n)
    with pytest.raises(ValueError, match="at most"):
        cdnn.limit_threads(n)


@pytest.mark.parametrize("optimizer", [lambda: cdnn.Adam(1e-3), lambda: cdnn.RMSprop(1e-3)],
                         ids=["adam", "rmsprop"])
def test_an_overflowing_squared_gradient_is_divergence_not_a_silent_stall(optimizer):
    """float32 inputs × 1e12 and targets near 1e12: g² overflows, the moment estimate becomes
    inf and every update 0 — once a silent stall, now divergence with the model kept finite."""
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(64, 4)) * 1e12).astype(np.float32)
    y = (1e12 + rng.normal(size=64) * 1e11).astype(np.float32)
    net = cdnn.MLP([4, 8, 1], loss="mean_squared_error", seed=0)
    with pytest.raises(FloatingPointError, match="optimizer's state"):
        cdnn.Trainer(net, optimizer(), batch_size=16).fit(X, y, epochs=3, verbose=0)
    assert np.isfinite(net.params).all()


@pytest.mark.parametrize("scale", [1e-40, 3e38])
def test_extreme_but_valid_sample_weights_change_nothing(scale):
    """Weights of 1e-40 (a float32 subnormal) made 1/Σw overflow; 3e38 overflowed Σw. The loss
    is a weighted mean, so equal weights of any size give the unweighted results."""
    X, y = blobs()
    w = np.full(len(y), scale, dtype=np.float32)
    net = cdnn.MLP([5, 8, 3], seed=0)
    assert net.evaluate(X, y, sample_weight=w) == pytest.approx(net.evaluate(X, y), rel=1e-6)
    a, b = cdnn.MLP([5, 8, 3], seed=0), cdnn.MLP([5, 8, 3], seed=0)
    ha = cdnn.Trainer(a, cdnn.SGD(0.1), batch_size=16).fit(X, y, epochs=2, verbose=0,
                                                            sample_weight=w)
    hb = cdnn.Trainer(b, cdnn.SGD(0.1), batch_size=16).fit(X, y, epochs=2, verbose=0)
    np.testing.assert_allclose(ha["accuracy"], hb["accuracy"], rtol=1e-6)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-5, atol=1e-7)


def test_inputs_that_overflow_a_layer_are_an_error_not_nan():
    net = cdnn.MLP([4, 8, 3], seed=0)
    X = np.full((2, 4), 3e38, dtype=np.float32)
    for predict in (net.predict, net.predict_proba, net.forward):
        with pytest.raises(ValueError, match="not finite.*scale the inputs"):
            predict(X)
        with pytest.raises(ValueError, match="not finite"):
            predict(X[:1])          # the one-row short path too
    assert net.engine.network.forward_row(net.params, X[:1]) is None    # declined, not NaN


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_one_hot_rows_that_are_no_distribution_are_rejected(fill):
    X, labels = blobs()
    y = np.full((len(labels), 3), fill)
    with pytest.raises(ValueError, match="must each sum to 1"):
        cdnn.MLP([5, 8, 3], seed=0).evaluate(X, y)
