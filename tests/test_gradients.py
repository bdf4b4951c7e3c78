"""loss_and_grad against central finite differences, in float64, for every activation, every
loss and several depths."""
import numpy as np
import pytest

import cdnn
from cdnn.kinds import ACTIVATIONS, LOSSES

DEPTHS = {1: [4, 3], 2: [4, 5, 3], 4: [4, 6, 5, 4, 3]}


def make_targets(rng, loss, n, k):
    if loss == "softmax_cross_entropy":
        return rng.integers(0, k, n)
    if loss == "sigmoid_cross_entropy":
        return (rng.uniform(size=(n, k)) > 0.5).astype(float)
    if loss == "poisson":
        return rng.poisson(1.5, size=(n, k)).astype(float)
    return rng.normal(size=(n, k))


def finite_difference_gradient(net, X, y, h=1e-6, **kwargs):
    grad = np.empty_like(net.params)
    for i in range(net.params.size):
        saved = net.params[i]
        net.params[i] = saved + h
        up = net.loss_and_grad(X, y, **kwargs)[0]
        net.params[i] = saved - h
        down = net.loss_and_grad(X, y, **kwargs)[0]
        net.params[i] = saved
        grad[i] = (up - down) / (2 * h)
    return grad


def relative_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("depth", sorted(DEPTHS))
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backprop_matches_finite_differences(rng, activation, loss, depth):
    sizes = DEPTHS[depth]
    net = cdnn.MLP(sizes, activation=activation, loss=loss, init="glorot_normal",
                   dtype="float64", seed=3)
    net.params += rng.normal(scale=0.1, size=net.params.size)   # non-zero biases too
    X = rng.normal(size=(7, sizes[0]))
    y = make_targets(rng, loss, 7, sizes[-1])
    loss_value, grad = net.loss_and_grad(X, y)
    assert np.isfinite(loss_value)
    assert relative_error(grad, finite_difference_gradient(net, X, y)) < 1e-6


@pytest.mark.parametrize("loss", LOSSES)
def test_gradient_with_l2_one_hot_and_sample_weights(rng, loss):
    net = cdnn.MLP([5, 6, 4], activation="tanh", loss=loss, dtype="float64", seed=1, l2=0.3)
    X = rng.normal(size=(9, 5))
    y = make_targets(rng, loss, 9, 4)
    if loss == "softmax_cross_entropy":
        y = np.eye(4)[y]                                         # one-hot rows
    w = rng.uniform(0.2, 3, size=9)
    _, grad = net.loss_and_grad(X, y, sample_weight=w)
    assert relative_error(grad, finite_difference_gradient(net, X, y, sample_weight=w)) < 1e-6


def test_gradient_is_the_same_in_chunks(rng):
    """loss_and_grad sums over chunks of rows; a large X must agree with the numpy mean."""
    net = cdnn.MLP([3, 4, 2], activation="tanh", dtype="float64", seed=0)
    X, y = rng.normal(size=(10_000, 3)), rng.integers(0, 2, 10_000)
    loss, grad = net.loss_and_grad(X, y)
    halves = [net.loss_and_grad(X[s], y[s]) for s in (slice(0, 5000), slice(5000, None))]
    assert loss == pytest.approx((halves[0][0] + halves[1][0]) / 2, rel=1e-12)
    np.testing.assert_allclose(grad, (halves[0][1] + halves[1][1]) / 2, rtol=1e-9, atol=1e-14)


def test_float32_gradient_agrees_with_float64(rng):
    X, y = rng.normal(size=(16, 8)), rng.integers(0, 3, 16)
    grads = [cdnn.MLP([8, 10, 3], dtype=d, seed=5).loss_and_grad(X, y)[1]
             for d in ("float32", "float64")]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5)
