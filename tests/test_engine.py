"""The execution layer's seams (issue 24): the engine interface, the one step runner that every
training loop goes through, and the single-process group."""
import numpy as np
import pytest

import cdnn
from cdnn import _engine
from cdnn._engine import EngineInterface, StepRunner
from cdnn.distributed import ProcessGroup


def _public(cls):
    return {name for name in vars(cls) if not name.startswith("_")}


def test_the_cpu_engine_implements_the_interface():
    net = cdnn.MLP([4, 3, 2], seed=0)
    assert isinstance(net.engine, EngineInterface)
    missing = {name for name in _public(EngineInterface) | set(EngineInterface.__annotations__)
               if not hasattr(net.engine, name)}
    assert not missing, missing
    assert (net.engine.device, net.engine.matmul_precision) == ("cpu", "float32")


@pytest.fixture
def runs(monkeypatch):
    """Every StepRunner.epoch call, as (steps in the epoch, native runs it made)."""
    calls, epoch = [], StepRunner.epoch

    def counted(self, *args, **kwargs):
        run, made = self.steps.run, []

        def counting(*a, **k):
            made.append(1)
            return run(*a, **k)
        self.steps.run = counting
        try:
            return epoch(self, *args, **kwargs)
        finally:
            self.steps.run = run
            calls.append((args[2], len(made)))
    monkeypatch.setattr(StepRunner, "epoch", counted)
    return calls


def _data(n=400):
    rng = np.random.default_rng(0)
    return rng.random((n, 8), dtype=np.float32), rng.integers(0, 3, n)


def test_the_trainer_trains_through_the_step_runner(runs):
    X, y = _data()
    cdnn.Trainer(cdnn.MLP([8, 16, 3], seed=0), cdnn.SGD(0.1), batch_size=4).fit(
        X, y, epochs=2, verbose=0)
    assert runs == [(100, _engine.CALLS_PER_EPOCH)] * 2


def test_the_sklearn_solvers_train_through_the_step_runner(runs):
    pytest.importorskip("sklearn")
    from cdnn.sklearn import MLPClassifier
    X, y = _data(410)
    MLPClassifier((16,), solver="adam", batch_size=200, max_iter=2, random_state=0).fit(X, y)
    # each epoch: the two full batches on the estimator's network, the short one on its copy
    assert [steps for steps, _ in runs] == [2, 1, 2, 1]


def test_one_process_group_is_the_identity():
    group = ProcessGroup()
    assert (group.rank, group.size, group.any(True), group.own_seed(7)) == (0, 1, True, 7)
    assert group.gradient_exchange(np.float32, 10) is None
    np.testing.assert_array_equal(group.columns(np.arange(3.0)), np.arange(3.0)[:, None])
    group.agree()
    with pytest.raises(KeyboardInterrupt):
        group.agree(interrupted=True)
    with pytest.raises(ZeroDivisionError):     # one process: a failure raises where it happens
        with group.section("dividing"):
            1 / 0


def test_a_diverged_step_names_the_epoch_and_step():
    X, y = _data()
    X[:] = 1e30
    trainer = cdnn.Trainer(cdnn.MLP([8, 16, 3], seed=0), cdnn.SGD(1e10), batch_size=4)
    with pytest.raises(FloatingPointError, match=r"diverged at epoch 1, step \d+: .*lr|learning"):
        trainer.fit(X, y, epochs=1, verbose=0)
