"""Learning-rate schedules: the multipliers they give, and the Trainer applying them per step."""
import math

import numpy as np
import pytest

import cdnn
from cdnn.schedules import CosineWithWarmup, ExponentialDecay, StepDecay


def test_step_decay_matches_torch_steplr_semantics():
    f = StepDecay(step_size_epochs=2, gamma=0.5)
    steps = np.arange(0, 30)          # 5 steps per epoch: epochs 0..5
    expected = [0.5 ** ((s // 5) // 2) for s in steps]
    np.testing.assert_allclose(f(steps, 5), expected, rtol=1e-15)


def test_exponential_decay_staircase_and_smooth():
    steps = np.arange(0, 12)
    np.testing.assert_allclose(ExponentialDecay(0.9)(steps, 4), 0.9 ** (steps // 4), rtol=1e-15)
    smooth = ExponentialDecay(0.9, staircase=False)(steps, 4)
    np.testing.assert_allclose(smooth, 0.9 ** (steps / 4), rtol=1e-15)
    assert np.all(np.diff(smooth) < 0)


def test_cosine_with_warmup_shape():
    f = CosineWithWarmup(total_steps=100, warmup_steps=10, min_factor=0.1)
    s = np.arange(0, 120)
    m = f(s, 7)
    np.testing.assert_allclose(m[:10], np.arange(1, 11) / 10)        # linear warm-up
    assert m[0] > 0 and m[9] == 1.0 and m[10] == 1.0                  # peak at the end of it
    assert np.all(np.diff(m[10:101]) <= 0)                            # then only down
    np.testing.assert_allclose(m[55], 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    np.testing.assert_allclose(m[100:], 0.1)                          # and stays at the floor


def test_cosine_in_epochs_scales_with_steps_per_epoch():
    by_epochs = CosineWithWarmup(epochs=10, warmup_epochs=2)
    by_steps = CosineWithWarmup(total_steps=30, warmup_steps=6)
    s = np.arange(40)
    np.testing.assert_allclose(by_epochs(s, 3), by_steps(s, 3))


@pytest.mark.parametrize("make", [
    lambda: StepDecay(0), lambda: StepDecay(2, gamma=0), lambda: StepDecay(1.5),
    lambda: ExponentialDecay(-0.5), lambda: CosineWithWarmup(),
    lambda: CosineWithWarmup(total_steps=10, epochs=2),
    lambda: CosineWithWarmup(total_steps=10, warmup_steps=10),
    lambda: CosineWithWarmup(total_steps=10, min_factor=1.5),
    lambda: CosineWithWarmup(epochs=5, warmup_steps=3),
])
def test_bad_arguments_are_refused(make):
    with pytest.raises((ValueError, TypeError)):
        make()


def test_bad_step_numbers_are_refused():
    with pytest.raises(ValueError):
        StepDecay(1)(np.array([-1, 0]), 5)
    with pytest.raises(ValueError):
        StepDecay(1)(np.array([0.5]), 5)


def test_trainer_applies_the_schedule_at_every_step(rng):
    """SGD with a schedule equals plain gradient descent with lr·f(step) at each step, across
    epochs and kernel runs; history records the last step's rate of each epoch."""
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, size=40)
    schedule = CosineWithWarmup(total_steps=12, warmup_steps=3, min_factor=0.2)
    net = cdnn.MLP([4, 6, 3], dtype="float64", seed=1)
    ref = cdnn.MLP([4, 6, 3], dtype="float64", seed=1)
    trainer = cdnn.Trainer(net, cdnn.SGD(lr=0.5), batch_size=10, schedule=schedule)
    history = trainer.fit(X, y, epochs=4, shuffle=False, verbose=0)
    factors = schedule(np.arange(16), 4)
    for s in range(16):
        rows = slice(10 * (s % 4), 10 * (s % 4 + 1))
        _, grad = ref.loss_and_grad(X[rows], y[rows])
        ref.params -= 0.5 * factors[s] * grad
    np.testing.assert_allclose(net.params, ref.params, rtol=0, atol=1e-12)
    np.testing.assert_allclose(history["lr"], 0.5 * factors[3::4])


def test_schedule_continues_across_fit_calls(rng):
    """The step numbers come from the optimizer's count, so a second fit continues the decay."""
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, size=20)
    net = cdnn.MLP([4, 3], dtype="float64", seed=1)
    trainer = cdnn.Trainer(net, cdnn.SGD(lr=1.0), batch_size=10, schedule=StepDecay(1, 0.5))
    first = trainer.fit(X, y, epochs=2, verbose=0)
    second = trainer.fit(X, y, epochs=2, verbose=0)
    assert first["lr"] + second["lr"] == [0.5 ** e for e in range(4)]


@pytest.mark.parametrize("schedule", [lambda s, spe: np.ones(len(s) + 1),
                                      lambda s, spe: -np.ones(len(s)),
                                      lambda s, spe: np.full(len(s), np.nan)])
def test_trainer_refuses_a_bad_schedule_before_any_step(schedule, rng):
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, size=20)
    net = cdnn.MLP([4, 3], seed=1)
    before = net.params.copy()
    with pytest.raises(ValueError, match="schedule"):
        cdnn.Trainer(net, cdnn.SGD(lr=0.1), schedule=schedule).fit(X, y, verbose=0)
    np.testing.assert_array_equal(net.params, before)
