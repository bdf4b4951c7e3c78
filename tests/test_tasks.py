"""The tasks a Trainer fits (multi-class, binary, multi-label, regression) and the fit options
around them: dropout, L2, sample and class weights, validation, verbosity, Ctrl-C, History."""
import signal
import sys
import warnings

import numpy as np
import pytest

import cdnn
from sigint import SigintAfter


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def cross_entropy(logits, y):
    """Mean softmax cross-entropy, from float64 logits (stable where a probability is 1)."""
    z = logits.astype(np.float64)
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return np.mean(lse - z[np.arange(len(z)), y])


def binary_cross_entropy(logits, t):
    """Mean sigmoid cross-entropy over every output, in the stable form."""
    z = logits.astype(np.float64)
    return np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))))


def train(net, X, y, epochs=30, lr=0.05, **kwargs):
    trainer = cdnn.Trainer(net, cdnn.Adam(lr=lr), batch_size=kwargs.pop("batch_size", 16))
    kwargs.setdefault("verbose", 0)
    return trainer.fit(X, y, epochs=epochs, **kwargs)


@pytest.fixture
def blobs(rng):
    """Three separable clusters in 4-D."""
    centres = rng.normal(scale=3, size=(3, 4))
    y = rng.integers(0, 3, size=90)
    return centres[y] + rng.normal(size=(90, 4)), y


# --- tasks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_multiclass_with_labels(blobs, dtype):
    X, y = blobs
    net = cdnn.MLP([4, 16, 3], dtype=dtype, seed=0)
    before = net.evaluate(X, y)["loss"]
    history = train(net, X, y)
    assert history["loss"][-1] < history["loss"][0] and net.evaluate(X, y)["loss"] < before / 4
    proba = net.predict_proba(X)
    assert proba.shape == (90, 3) and proba.dtype == np.dtype(dtype)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(proba, softmax(net.forward(X).astype(np.float64)), rtol=1e-4)
    pred = net.predict(X)
    assert pred.shape == (90,)
    np.testing.assert_array_equal(pred, proba.argmax(axis=1))
    metrics = net.evaluate(X, y)
    assert set(metrics) == {"loss", "accuracy"}
    assert metrics["accuracy"] == pytest.approx(np.mean(pred == y)) and metrics["accuracy"] > 0.9
    # float32 loses ~eps·|logit| to the cancellation in logsumexp − z_y: an absolute margin
    assert metrics["loss"] == pytest.approx(cross_entropy(net.forward(X), y), rel=1e-4,
                                            abs=1e-5 if dtype == "float32" else 0)


def test_multiclass_one_hot_equals_labels(blobs):
    X, y = blobs
    a, b = (cdnn.MLP([4, 8, 3], dtype="float64", seed=0) for _ in range(2))
    train(a, X, y, epochs=3)
    train(b, X, np.eye(3)[y], epochs=3)
    np.testing.assert_allclose(a.params, b.params, rtol=0, atol=1e-12)
    assert a.evaluate(X, y) == pytest.approx(b.evaluate(X, np.eye(3)[y]))


def test_binary_single_sigmoid_output(blobs):
    X, y = blobs
    y = (y == 1).astype(int)
    net = cdnn.MLP([4, 16, 1], loss="sigmoid_cross_entropy", dtype="float64", seed=0)
    history = train(net, X, y)
    assert history["loss"][-1] < history["loss"][0] / 4
    proba, pred = net.predict_proba(X), net.predict(X)
    assert proba.shape == (90, 1) and pred.shape == (90,)
    assert set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (proba[:, 0] > 0.5).astype(int))
    metrics = net.evaluate(X, y)
    assert metrics["accuracy"] == pytest.approx(np.mean(pred == y)) and metrics["accuracy"] > 0.9
    assert metrics["loss"] == pytest.approx(binary_cross_entropy(net.forward(X)[:, 0], y))


def test_multilabel(blobs):
    X, y = blobs
    Y = np.stack([y == 0, y != 1, X[:, 0] > 0], axis=1).astype(float)
    net = cdnn.MLP([4, 16, 3], loss="sigmoid_cross_entropy", dtype="float64", seed=0)
    history = train(net, X, Y)
    assert history["loss"][-1] < history["loss"][0] / 2
    proba, pred = net.predict_proba(X), net.predict(X)
    assert proba.shape == pred.shape == (90, 3)
    np.testing.assert_allclose(proba, sigmoid(net.forward(X)))
    metrics = net.evaluate(X, Y)
    assert metrics["accuracy"] == pytest.approx(np.mean(pred == Y))    # per label
    assert metrics["loss"] == pytest.approx(binary_cross_entropy(net.forward(X), Y))


@pytest.mark.parametrize("n_outputs", [1, 3])
def test_regression(rng, n_outputs):
    X = rng.normal(size=(80, 3))
    Y = np.stack([X[:, 0] * X[:, 1], np.sin(X[:, 2]), X.sum(axis=1)], axis=1)[:, :n_outputs]
    y = Y[:, 0] if n_outputs == 1 else Y
    net = cdnn.MLP([3, 32, n_outputs], activation="tanh", loss="mse", dtype="float64", seed=0)
    history = train(net, X, y, epochs=40, lr=0.01)
    assert "accuracy" not in history.history
    assert history["loss"][-1] < history["loss"][0] / 3
    pred = net.predict(X)
    assert pred.shape == y.shape
    metrics = net.evaluate(X, y)
    assert set(metrics) == {"loss"}
    assert metrics["loss"] == pytest.approx(np.mean((pred - y) ** 2))
    with pytest.raises(ValueError, match="regressor"):
        net.predict_proba(X)


def test_float32_and_float64_train_alike(blobs):
    X, y = blobs
    nets = [cdnn.MLP([4, 8, 3], dtype=d, seed=0) for d in ("float32", "float64")]
    for net in nets:
        train(net, X, y, epochs=3)
    np.testing.assert_allclose(nets[0].params, nets[1].params, atol=1e-4)


# --- dropout and L2 ------------------------------------------------------------------------------

def test_dropout_only_while_training(blobs):
    X, y = blobs
    net = cdnn.MLP([4, 32, 32, 3], dropout=[0.5, 0.2], dtype="float64", seed=0)
    train(net, X, y, epochs=3)
    twin = cdnn.MLP([4, 32, 32, 3], dtype="float64")
    twin.params[...] = net.params
    np.testing.assert_array_equal(net.predict_proba(X), net.predict_proba(X))
    np.testing.assert_array_equal(net.forward(X), twin.forward(X))     # no dropout at inference
    loss, grad = net.loss_and_grad(X, y)
    loss2, grad2 = twin.loss_and_grad(X, y)
    assert loss == loss2 and np.array_equal(grad, grad2)


def test_dropout_changes_training_and_is_seeded(blobs):
    X, y = blobs

    def run(dropout, seed=None):
        net = cdnn.MLP([4, 32, 3], dropout=dropout, dtype="float64", seed=0)
        cdnn.Trainer(net, cdnn.SGD(lr=0.1), batch_size=16, seed=seed).fit(
            X, y, epochs=2, shuffle=False, verbose=0)
        return net.params

    plain, dropped = run(0.0), run(0.5)
    assert not np.allclose(plain, dropped)
    np.testing.assert_array_equal(dropped, run(0.5))          # same seed, same masks
    assert not np.array_equal(dropped, run(0.5, seed=1))      # another seed, other masks


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5])
def test_dropout_is_inverted_at_its_rate(rate):
    """Hidden units that all output 1 into an all-ones output layer: each row's output is
    (units kept) / (1 − rate), so the first update of the output bias, −2·mean(output),
    measures the kept fraction over rows × units draws — it must be 1 − rate."""
    rows, units = 500, 200
    net = cdnn.MLP([1, units, 1], activation="identity", loss="mse", dropout=rate,
                   dtype="float64", seed=0)
    net.params[...] = 1
    net.biases[0][...] = 0
    net.biases[1][...] = 0
    cdnn.Trainer(net, cdnn.SGD(lr=1.0), batch_size=rows).fit(
        np.ones((rows, 1)), np.zeros(rows), shuffle=False, verbose=0)
    mean_output = -net.biases[1][0] / 2
    kept = mean_output * (1 - rate) / units
    four_sigma = 4 * np.sqrt(rate * (1 - rate) / (rows * units))
    assert kept == pytest.approx(1 - rate, abs=max(four_sigma, 1e-12))


def test_l2_penalty_and_gradient(blobs):
    X, y = blobs
    net = cdnn.MLP([4, 8, 3], l2=0.1, dtype="float64", seed=0)
    plain = cdnn.MLP([4, 8, 3], dtype="float64", seed=0)
    loss, grad = net.loss_and_grad(X, y)
    loss0, grad0 = plain.loss_and_grad(X, y)
    assert loss == pytest.approx(loss0 + 0.05 * sum((W ** 2).sum() for W in net.weights))
    expected = grad0.copy()
    for W, start in zip(net.weights, (0, 4 * 8 + 8)):   # weights only, not biases
        expected[start:start + W.size] += 0.1 * W.ravel()
    np.testing.assert_allclose(grad, expected, rtol=1e-12)
    train(net, X, y, epochs=20)
    train(plain, X, y, epochs=20)
    assert sum((W ** 2).sum() for W in net.weights) < sum((W ** 2).sum() for W in plain.weights)


# --- sample and class weights -------------------------------------------------------------------

def full_batch(net, X, y, **kwargs):
    cdnn.Trainer(net, cdnn.SGD(lr=0.1, momentum=0.9), batch_size=len(X)).fit(
        X, y, epochs=5, shuffle=False, verbose=0, **kwargs)
    return net.params


def new_net():
    return cdnn.MLP([4, 8, 3], dtype="float64", seed=0)


def test_zero_weight_rows_have_no_effect(blobs):
    X, y = blobs
    w = np.ones(len(X))
    w[::3] = 0
    keep = w > 0
    np.testing.assert_allclose(full_batch(new_net(), X, y, sample_weight=w),
                               full_batch(new_net(), X[keep], y[keep]), rtol=0, atol=1e-13)


def test_weight_two_equals_a_duplicated_row(blobs):
    X, y = blobs
    w = np.ones(len(X))
    w[:10] = 2
    doubled = np.concatenate([np.arange(len(X)), np.arange(10)])
    np.testing.assert_allclose(full_batch(new_net(), X, y, sample_weight=w),
                               full_batch(new_net(), X[doubled], y[doubled]), rtol=0, atol=1e-13)


def test_class_weight(blobs):
    X, y = blobs
    zero = full_batch(new_net(), X, y, class_weight={2: 0})
    np.testing.assert_allclose(zero, full_batch(new_net(), X[y != 2], y[y != 2]), atol=1e-13)
    table = {0: 1.0, 1: 3.0, 2: 0.5}
    np.testing.assert_array_equal(full_batch(new_net(), X, y, class_weight=table),
                                  full_batch(new_net(), X, y,
                                             sample_weight=np.vectorize(table.get)(y)))
    counts = np.bincount(y, minlength=3)
    balanced = len(y) / (3 * counts)
    np.testing.assert_array_equal(full_batch(new_net(), X, y, class_weight="balanced"),
                                  full_batch(new_net(), X, y, sample_weight=balanced[y]))


def test_class_weight_bool_keys_are_classes_only_for_bool_labels(blobs):
    """numpy reads table[True] as a mask: {True: 2} weighted every class and {False: 0}
    none (issue 23 #10). A bool key is class 1 or 0 where the labels are bools, else an
    error naming the key."""
    X, y = blobs
    for key in (True, False, np.True_):
        with pytest.raises(ValueError, match=f"key {key!r}, a bool, but the labels are not"):
            full_batch(new_net(), X, y, class_weight={key: 2.0})
    binary = y == 1

    def net():
        return cdnn.MLP([4, 8, 1], loss="sigmoid_cross_entropy", dtype="float64", seed=0)
    np.testing.assert_array_equal(full_batch(net(), X, binary, class_weight={True: 2.0}),
                                  full_batch(net(), X, binary, class_weight={1: 2.0}))
    np.testing.assert_array_equal(full_batch(net(), X, binary, class_weight={False: 0.0}),
                                  full_batch(net(), X, binary, sample_weight=binary * 1.0))


def test_class_weight_applies_to_training_rows_only(blobs):
    """validation_split with class_weight == training on the head with validation_data: the
    "balanced" table counts training rows only and validation stays unweighted (as Keras)."""
    X, y = blobs
    split, given = new_net(), new_net()
    h1 = train(split, X, y, epochs=2, class_weight="balanced", validation_split=0.2)
    h2 = train(given, X[:72], y[:72], epochs=2, class_weight="balanced",
               validation_data=(X[72:], y[72:]))
    np.testing.assert_array_equal(split.params, given.params)
    assert h1["val_loss"] == h2["val_loss"]
    assert h1["val_loss"][-1] == pytest.approx(split.evaluate(X[72:], y[72:])["loss"])


def test_upweighting_a_class_raises_its_predictions(rng):
    """Two overlapping classes: weighting class 1 five times moves the boundary towards
    class 0, so more points are called 1 and their mean probability rises."""
    y = rng.integers(0, 2, size=400)
    X = (y[:, None] + rng.normal(size=(400, 1))).astype(np.float64)
    results = []
    for class_weight in (None, {1: 5.0}):
        net = cdnn.MLP([1, 2], dtype="float64", seed=0)
        train(net, X, y, epochs=20, lr=0.05, class_weight=class_weight)
        results.append((net.predict(X).mean(), net.predict_proba(X)[:, 1].mean()))
    (called, proba), (called_w, proba_w) = results
    assert called_w > called + 0.1 and proba_w > proba + 0.1


def test_weighted_evaluate(blobs):
    X, y = blobs
    net = new_net()
    w = np.random.default_rng(0).uniform(0, 2, size=len(X))
    proba = net.predict_proba(X)
    losses = -np.log(proba[np.arange(len(X)), y])
    metrics = net.evaluate(X, y, sample_weight=w)
    assert metrics["loss"] == pytest.approx((w * losses).sum() / w.sum())
    assert metrics["accuracy"] == pytest.approx((w * (proba.argmax(1) == y)).sum() / w.sum())


@pytest.mark.parametrize("kwargs, error", [
    (dict(sample_weight=-np.ones(90)), ValueError),
    (dict(sample_weight=np.ones(89)), ValueError),
    (dict(class_weight={5: 1.0}), ValueError),
    (dict(class_weight={0: -1.0}), ValueError),
    (dict(class_weight="uniform"), TypeError),
    (dict(validation_split=1.0), ValueError),
    (dict(validation_split=0.3, validation_data=([[0, 0, 0, 0]], [0])), ValueError),
    (dict(validation_data=([[0, 0, 0, 0]],)), ValueError),
    (dict(verbose=3), ValueError),
    (dict(epochs=-1), ValueError),
])
def test_bad_fit_arguments(blobs, kwargs, error):
    with pytest.raises(error):
        train(new_net(), *blobs, **({"epochs": 1} | kwargs))


# --- validation, shuffling, verbosity --------------------------------------------------------------

def test_validation_split_takes_the_last_rows(blobs):
    X, y = blobs
    net = new_net()
    history = train(net, X, y, epochs=2, validation_split=0.2)
    assert history["val_loss"][-1] == pytest.approx(net.evaluate(X[72:], y[72:])["loss"])
    same = new_net()
    history2 = train(same, X[:72], y[:72], epochs=2, validation_data=(X[72:], y[72:]))
    assert history2["val_loss"] == history["val_loss"]
    np.testing.assert_array_equal(same.params, net.params)


def test_shuffle_changes_the_order_but_is_seeded(blobs):
    X, y = blobs

    def run(shuffle):
        net = new_net()
        cdnn.Trainer(net, cdnn.SGD(lr=0.1), batch_size=16).fit(X, y, epochs=2,
                                                              shuffle=shuffle, verbose=0)
        return net.params

    shuffled = run(True)
    np.testing.assert_array_equal(shuffled, run(True))     # the Trainer's seed: the net's
    assert not np.allclose(shuffled, run(False))


def test_verbose_modes(blobs, capsys):
    X, y = blobs
    train(new_net(), X, y, epochs=2, verbose=0)
    assert capsys.readouterr() == ("", "")
    train(new_net(), X, y, epochs=2, verbose=2)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("epoch 2/2") and "loss" in out[1]
    train(new_net(), X, y, epochs=2, verbose=1)
    err = capsys.readouterr().err     # stderr is no terminal here: lines, no bar's redraws
    assert "\r" not in err and err.splitlines()[1].startswith("epoch 2/2 loss ")   # issue 23 #15


def test_the_bar_moves_within_an_epoch(blobs, monkeypatch):
    """Issue 23 #16: it moved only between epochs, so a long MNIST epoch looked hung. It now
    moves after each kernel run of an epoch's steps."""
    X, y = blobs
    updates = []
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(cdnn.training.Progress, "steps", lambda self, n: updates.append(n))
    history = train(new_net(), X, y, epochs=2, batch_size=4, verbose=1)
    steps_per_epoch = -(-len(X) // 4)
    assert len(updates) > 2 * 10 and sum(updates) == 2 * steps_per_epoch, updates
    assert len(history.epoch) == 2


def test_a_fit_that_makes_the_loss_worse_says_so(blobs):
    """Issue 23 #20: lr 1e6 ended at a loss of 1e5..1e29, finite (no divergence error), with
    no word. The warning names the learning rate."""
    X, y = blobs
    with pytest.warns(RuntimeWarning, match=r"made the loss worse.*learning rate \(now 1e\+06"):
        cdnn.Trainer(new_net(), cdnn.SGD(lr=1e6), batch_size=16).fit(X, y, epochs=3, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # a fit that learns says nothing
        cdnn.Trainer(new_net(), cdnn.SGD(lr=0.05), batch_size=16).fit(X, y, epochs=3, verbose=0)


def test_early_stopping_says_when_it_stops(blobs, capsys):
    X, y = blobs
    stop = cdnn.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)   # stops at once
    history = cdnn.Trainer(new_net(), cdnn.SGD(lr=0.05)).fit(X, y, epochs=5, verbose=2,
                                                             callbacks=[stop])
    assert len(history.epoch) == 2
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("stopped after epoch 2 of 5: EarlyStopping: loss has not improved "
                           "for 1 epoch"), last


# --- Ctrl-C ------------------------------------------------------------------------------------

def test_keyboard_interrupt_in_a_callback_stops_cleanly(blobs):
    X, y = blobs

    class Interrupt(cdnn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.params = self.trainer.net.params.copy()
                raise KeyboardInterrupt

    class Ended(cdnn.Callback):
        calls = 0

        def on_train_end(self, logs=None):
            self.calls += 1

    net, cb, ended = new_net(), Interrupt(), Ended()
    history = cdnn.Trainer(net, cdnn.Adam(lr=0.01), batch_size=16).fit(
        X, y, epochs=5, callbacks=[cb, ended], verbose=0)
    assert history.interrupted and history.epoch == [0, 1] and ended.calls == 1
    np.testing.assert_array_equal(net.params, cb.params)
    assert np.isfinite(net.params).all()


def test_ctrl_c_during_training_keeps_the_last_step_and_the_step_count(blobs):
    X, y = blobs
    net, opt = new_net(), cdnn.Adam(lr=0.01)
    spies = []
    training_steps = net.engine.training_steps
    net.engine.training_steps = lambda *a: spies.append(SigintAfter(training_steps(*a), 8)) \
        or spies[-1]
    history = cdnn.Trainer(net, opt, batch_size=4).fit(X, y, epochs=5, shuffle=False,
                                                       verbose=0)
    assert history.interrupted
    steps = spies[0].done
    assert opt.steps == steps and spies[0].deferred    # every update the model holds counts
    assert 0 < steps < 5 * 23
    ref, ref_opt = new_net(), cdnn.Adam(lr=0.01)
    for s in range(steps):
        rows = slice(4 * (s % 23), 4 * (s % 23 + 1))
        _, grad = ref.loss_and_grad(X[rows], y[rows])
        ref_opt.step(ref.params, grad)
    np.testing.assert_allclose(net.params, ref.params, rtol=0, atol=1e-12)


def test_fit_restores_the_sigint_handler(blobs):
    before = signal.getsignal(signal.SIGINT)
    train(new_net(), *blobs, epochs=1)
    assert signal.getsignal(signal.SIGINT) is before


# --- History ------------------------------------------------------------------------------------

def test_history_records_every_epoch(blobs):
    X, y = blobs
    history = train(new_net(), X, y, epochs=3, validation_split=0.25)
    assert history.epoch == [0, 1, 2] and not history.interrupted
    assert all(len(v) == 3 for v in history.history.values())
    assert history["loss"] is history.history["loss"]
    assert "3 epochs" in repr(history)


def test_history_plot_writes_a_png(blobs, tmp_path):
    pytest.importorskip("matplotlib")
    history = train(new_net(), *blobs, epochs=3, validation_split=0.25)
    path = tmp_path / "curves.png"
    history.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history.plot(tmp_path / "acc.png", metrics=["accuracy", "val_accuracy"])
    assert (tmp_path / "acc.png").stat().st_size > 1000
