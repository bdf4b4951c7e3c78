"""Training: the loss falls, the shipped dataset and MNIST reach their accuracy, and a seed
fixes the result bit for bit."""
import numpy as np
import pytest

import cdnn


@pytest.fixture(scope="module")
def digits():
    return cdnn.datasets.load_digits()


def train_digits(digits, seed=0, dtype="float32", epochs=30, **mlp):
    (X, y), _ = digits
    net = cdnn.MLP([64, 128, 10], dtype=dtype, seed=seed, **mlp)
    history = cdnn.Trainer(net, cdnn.SGD(lr=0.05, momentum=0.9), batch_size=32).fit(
        X, y, epochs=epochs, verbose=0)
    return net, history


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_training_lowers_the_loss_and_reaches_95_percent_on_digits(digits, dtype):
    (X, y), (X_test, y_test) = digits
    net = cdnn.MLP([64, 128, 10], dtype=dtype, seed=0)
    initial = net.evaluate(X, y)["loss"]
    net, history = train_digits(digits, dtype=dtype)
    losses = history["loss"]
    assert losses[-1] < losses[0] < initial
    assert net.evaluate(X, y)["loss"] < initial / 10
    assert net.evaluate(X_test, y_test)["accuracy"] >= 0.95


def test_history_has_per_epoch_metrics_and_validation(digits):
    (X, y), (X_test, y_test) = digits
    net = cdnn.MLP([64, 32, 10], seed=0)
    history = cdnn.Trainer(net, cdnn.SGD(lr=0.05, momentum=0.9), batch_size=64).fit(
        X, y, epochs=3, validation_data=(X_test, y_test), verbose=0)
    assert history.epoch == [0, 1, 2]
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert all(len(v) == 3 for v in history.history.values())
    assert history["val_accuracy"][-1] == pytest.approx(net.evaluate(X_test, y_test)["accuracy"])
    assert 0 < history["accuracy"][-1] <= 1


def test_same_seed_gives_bit_identical_parameters(digits):
    a, _ = train_digits(digits, seed=4, epochs=3, dropout=0.2)
    b, _ = train_digits(digits, seed=4, epochs=3, dropout=0.2)
    c, _ = train_digits(digits, seed=5, epochs=3, dropout=0.2)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)


def test_trainer_matches_a_manual_loop_over_loss_and_grad(rng):
    """One native training step = loss_and_grad on the batch, then the optimizer's update."""
    X, y = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    a = cdnn.MLP([5, 7, 3], activation="tanh", dtype="float64", seed=1)
    b = cdnn.MLP([5, 7, 3], activation="tanh", dtype="float64", seed=1)
    cdnn.Trainer(a, cdnn.SGD(lr=0.1, momentum=0.9), batch_size=10).fit(
        X, y, epochs=2, shuffle=False, verbose=0)
    opt = cdnn.SGD(lr=0.1, momentum=0.9)
    for _ in range(2):
        for start in range(0, 40, 10):
            _, grad = b.loss_and_grad(X[start:start + 10], y[start:start + 10])
            opt.step(b.params, grad)
    np.testing.assert_allclose(a.params, b.params, rtol=1e-12, atol=1e-14)


def test_last_partial_batch_is_trained(rng):
    X, y = rng.normal(size=(11, 3)), rng.integers(0, 2, 11)
    a = cdnn.MLP([3, 2], dtype="float64", seed=0)
    b = cdnn.MLP([3, 2], dtype="float64", seed=0)
    cdnn.Trainer(a, cdnn.SGD(lr=0.1), batch_size=4).fit(X, y, shuffle=False, verbose=0)
    opt = cdnn.SGD(lr=0.1)
    for s in (slice(0, 4), slice(4, 8), slice(8, 11)):
        opt.step(b.params, b.loss_and_grad(X[s], y[s])[1])
    np.testing.assert_allclose(a.params, b.params, rtol=1e-12)


def test_mnist_784_256_10_reaches_97_percent_in_3_epochs(mnist):
    (X, y), (X_test, y_test) = mnist
    net = cdnn.MLP([784, 256, 10], seed=0)
    cdnn.Trainer(net, cdnn.SGD(lr=0.05, momentum=0.9), batch_size=128).fit(
        X, y, epochs=3, verbose=0)
    assert net.evaluate(X_test, y_test)["accuracy"] >= 0.97


def test_the_command_line_trains_on_the_shipped_dataset(capsys):
    from cdnn.cli import main
    assert main(["train", "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy")[1].split()[0])
    assert accuracy >= 0.95
