"""Callbacks: the protocol's hooks and order, stopping, EarlyStopping, ModelCheckpoint,
LearningRateScheduler and ReduceLROnPlateau."""
import numpy as np
import pytest

import cdnn
from cdnn.callbacks import LearningRateScheduler, ModelCheckpoint, ReduceLROnPlateau


class Recorder(cdnn.Callback):
    """Records every hook call; optionally feeds scripted metric values into the logs."""

    def __init__(self, script=None, key="val_loss"):
        self.calls, self.script, self.key = [], script, key

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(f"begin {epoch}")

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(f"end {epoch}")
        if self.script is not None:
            logs[self.key] = self.script[epoch]

    def on_train_end(self, logs=None):
        self.calls.append("train_end")


@pytest.fixture
def data(rng):
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1).astype(int)
    return X, y


def fit(data, callbacks, epochs=5, lr=0.05, **kwargs):
    net = cdnn.MLP([4, 8, 3], dtype="float64", seed=0)
    trainer = cdnn.Trainer(net, cdnn.SGD(lr=lr, momentum=0.9), batch_size=16)
    X, y = data
    history = trainer.fit(X, y, epochs=epochs, validation_data=(X[:20], y[:20]),
                          callbacks=callbacks, verbose=0, **kwargs)
    return trainer, history


def test_hooks_run_in_order_and_see_the_trainer(data):
    rec = Recorder()
    trainer, history = fit(data, [rec], epochs=2)
    assert rec.calls == ["train_begin", "begin 0", "end 0", "begin 1", "end 1", "train_end"]
    assert rec.trainer is trainer
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}


def test_a_custom_callback_stops_training(data):
    class StopAfter(cdnn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.trainer.stop_training = True

    rec = Recorder()
    _, history = fit(data, [StopAfter(), rec], epochs=10)
    assert history.epoch == [0, 1]
    assert rec.calls[-2:] == ["end 1", "train_end"]   # later callbacks still see the epoch


# --- EarlyStopping ------------------------------------------------------------------------------

def test_early_stopping_waits_patience_epochs_then_stops(data):
    script = [1.0, 0.8, 0.85, 0.9, 0.79, 0.7, 0.7, 0.7, 0.7, 0.7]
    stop = cdnn.EarlyStopping(patience=2)
    _, history = fit(data, [Recorder(script), stop], epochs=10)
    assert history.epoch == [0, 1, 2, 3]           # no improvement at epochs 2 and 3
    assert stop.best == 0.8 and stop.best_epoch == 1 and stop.stopped_epoch == 3


def test_early_stopping_min_delta_and_max_mode(data):
    script = [0.5, 0.52, 0.53, 0.6, 0.6]
    stop = cdnn.EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.05)
    _, history = fit(data, [Recorder(script, "val_accuracy"), stop], epochs=5)
    assert history.epoch == [0, 1]                  # +0.02 is not more than min_delta


def test_restore_best_weights(data):
    class Snapshot(cdnn.Callback):
        params = {}

        def on_epoch_end(self, epoch, logs=None):
            self.params[epoch] = self.trainer.net.params.copy()

    snap = Snapshot()
    script = [1.0, 0.5, 0.9, 0.9, 0.9]
    trainer, history = fit(data, [Recorder(script), snap,
                                  cdnn.EarlyStopping(patience=2, restore_best_weights=True)])
    assert history.epoch == [0, 1, 2, 3]
    np.testing.assert_array_equal(trainer.net.params, snap.params[1])
    assert not np.array_equal(snap.params[3], snap.params[1])


def test_early_stopping_warns_when_the_metric_is_missing(data):
    net = cdnn.MLP([4, 3], seed=0)
    with pytest.warns(UserWarning, match="val_loss"):
        cdnn.Trainer(net, cdnn.SGD(lr=0.1)).fit(*data, epochs=2, verbose=0,
                                                callbacks=[cdnn.EarlyStopping()])


# --- ModelCheckpoint ------------------------------------------------------------------------------

def test_checkpoint_every_epoch_with_formatted_names(data, tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "m-{epoch:02d}-{val_loss:.3f}.safetensors")
    trainer, history = fit(data, [ckpt], epochs=3)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"m-{e + 1:02d}-{v:.3f}.safetensors"
                     for e, v in enumerate(history["val_loss"])]
    last = cdnn.load(tmp_path / files[-1])
    np.testing.assert_array_equal(last.params, trainer.net.params)


def test_checkpoint_save_best_only_keeps_the_best_epoch(data, tmp_path):
    class Snapshot(cdnn.Callback):
        params = {}

        def on_epoch_end(self, epoch, logs=None):
            self.params[epoch] = self.trainer.net.params.copy()

    snap = Snapshot()
    path = tmp_path / "best.safetensors"
    script = [0.9, 0.4, 0.6, 0.5, 0.45]
    fit(data, [Recorder(script), snap, ModelCheckpoint(path, save_best_only=True)])
    np.testing.assert_array_equal(cdnn.load(path).params, snap.params[1])


def test_checkpoint_with_optimizer_state(data, tmp_path):
    path = tmp_path / "ckpt.safetensors"
    trainer, _ = fit(data, [ModelCheckpoint(path, save_optimizer=True)], epochs=2)
    opt = cdnn.SGD(lr=1.0)
    cdnn.load(path, optimizer=opt)
    assert opt.steps == trainer.optimizer.steps == 8 and opt.momentum == 0.9
    np.testing.assert_array_equal(opt.state["momentum"], trainer.optimizer.state["momentum"])


def test_checkpoint_path_with_an_unknown_field(data, tmp_path):
    with pytest.raises(ValueError, match="val_auc"):
        fit(data, [ModelCheckpoint(tmp_path / "{val_auc}.safetensors")], epochs=1)


# --- learning-rate callbacks ----------------------------------------------------------------------

def test_learning_rate_scheduler_sets_lr_at_epoch_begin(data):
    seen = []
    sched = LearningRateScheduler(lambda epoch, lr: seen.append((epoch, lr)) or 0.1 / (epoch + 1))
    trainer, history = fit(data, [sched], epochs=3)
    # once without training at on_train_begin (the up-front check), then at each epoch
    assert seen == [(0, 0.05), (1, 0.1), (2, 0.05)] * 2
    assert history["lr"] == [0.1, 0.05, 0.1 / 3]
    assert trainer.optimizer.lr == 0.1 / 3


def test_learning_rate_scheduler_changes_training(data):
    plain, _ = fit(data, [], epochs=2)
    scheduled, _ = fit(data, [LearningRateScheduler(lambda e, lr: lr * 0.5)], epochs=2)
    assert not np.allclose(plain.net.params, scheduled.net.params)


def test_learning_rate_scheduler_refuses_a_bad_rate(data):
    with pytest.raises(ValueError, match="learning rate"):
        fit(data, [LearningRateScheduler(lambda e, lr: -1.0)], epochs=1)
    with pytest.raises(TypeError):
        LearningRateScheduler(0.1)


def test_reduce_lr_on_plateau(data):
    script = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.8]
    plateau = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=2)
    _, history = fit(data, [Recorder(script), plateau], epochs=8, lr=0.08)
    # (logs show the rate an epoch ran with) two bad epochs (2, 3): halve after epoch 3; epoch 4
    # is cool-down; epochs 5 and 6 are bad again: halve after epoch 6
    assert history["lr"] == [0.08] * 4 + [0.04] * 3 + [0.02]
    floor = ReduceLROnPlateau(factor=0.1, patience=0, min_lr=0.01)
    trainer, history = fit(data, [Recorder([1.0] * 4), floor], epochs=4, lr=0.08)
    assert history["lr"] == [0.08, 0.08, 0.01, 0.01]      # 0.008 is clipped to min_lr
    assert trainer.optimizer.lr == 0.01


@pytest.mark.parametrize("make", [
    lambda: ReduceLROnPlateau(factor=1.0), lambda: ReduceLROnPlateau(factor=0),
    lambda: ReduceLROnPlateau(patience=-1), lambda: ReduceLROnPlateau(mode="up"),
    lambda: cdnn.EarlyStopping(patience=1.5),
])
def test_bad_arguments_are_refused(make):
    with pytest.raises((ValueError, TypeError)):
        make()


# --- settings refused before any step (issue 13, rows 14 and 15) ------------------------------

def fit_must_fail_untouched(data, match, callbacks=(), **trainer_kwargs):
    """fit raises ValueError/OSError matching `match`, and the model and optimizer are as they
    were: the error came before the first step."""
    net = cdnn.MLP([4, 8, 3], dtype="float64", seed=0)
    before = net.params.copy()
    trainer = cdnn.Trainer(net, cdnn.SGD(lr=0.05, momentum=0.9), batch_size=16,
                           **trainer_kwargs)
    X, y = data
    with pytest.raises((ValueError, OSError), match=match):
        trainer.fit(X, y, epochs=3, callbacks=list(callbacks), verbose=0)
    np.testing.assert_array_equal(net.params, before)
    assert trainer.optimizer.steps == 0


def test_checkpoint_field_without_validation_data_fails_before_training(data, tmp_path):
    fit_must_fail_untouched(data, "val_loss", [ModelCheckpoint(tmp_path / "{val_loss}.st")])


def test_checkpoint_into_a_missing_folder_fails_before_training(data, tmp_path):
    missing = tmp_path / "no" / "such" / "m-{epoch}.st"
    fit_must_fail_untouched(data, "no such directory", [ModelCheckpoint(missing)])
    assert not (tmp_path / "no").exists()


def test_checkpoint_check_leaves_no_file_behind(data, tmp_path):
    fit(data, [ModelCheckpoint(tmp_path / "m-{epoch}.st")], epochs=1)
    assert [p.name for p in tmp_path.iterdir()] == ["m-1.st"]   # no probe, no temporary


def test_a_schedule_that_turns_nan_later_fails_before_training(data):
    # 4 steps per epoch: step 10 is in the third epoch
    schedule = lambda steps, per_epoch: np.where(steps >= 10, np.nan, 1.0)   # noqa: E731
    fit_must_fail_untouched(data, "finite multiplier", schedule=schedule)


def test_a_scheduler_callback_returning_zero_later_fails_before_training(data):
    sched = LearningRateScheduler(lambda epoch, lr: 0.0 if epoch == 2 else lr)
    fit_must_fail_untouched(data, "epoch 2 must be > 0", [sched])


def test_class_weights_that_zero_every_row_are_refused(data):
    net = cdnn.MLP([4, 8, 3], seed=0)
    X, y = data
    with pytest.raises(ValueError, match="is all zero"):
        cdnn.Trainer(net, cdnn.SGD(lr=0.1)).fit(X, y, class_weight={0: 0, 1: 0, 2: 0},
                                                verbose=0)
