"""Data-parallel training under `mpiexec -n 2` (tests/test_distributed.py launches this file;
its name keeps the main suite from collecting it in one process). Every rank runs every test
in the same order; a test that fails on one rank fails the launcher's exit status."""
import os
import signal
import tempfile

import numpy as np
import pytest

import cdnn
from cdnn.distributed import RankError

MPI = pytest.importorskip("mpi4py.MPI")
comm = MPI.COMM_WORLD
pytestmark = pytest.mark.skipif(comm.size < 2, reason="run under mpiexec -n 2 or more")


def blobs(n=203, seed=0, dtype=np.float64, apart=2.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 10)) + apart * np.eye(3, 10)[y]
    return X.astype(dtype), y


def new(comm_or_none, dtype="float64", opt=None, batch_size=20, **net_kw):
    net = cdnn.MLP([10, 16, 3], dtype=dtype, seed=1, **net_kw)
    opt = opt or cdnn.SGD(lr=0.1, momentum=0.9)
    return net, cdnn.Trainer(net, opt, batch_size=batch_size, comm=comm_or_none)


def same_on_every_rank(array):
    everyone = comm.allgather(np.asarray(array))
    return all(np.array_equal(everyone[0], a) for a in everyone)


@pytest.mark.parametrize("weighted", [False, True])
def test_replicated_reproduces_one_process(weighted):
    X, y = blobs()          # 203 rows, batch 20: uneven last batches, split unevenly
    w = np.random.default_rng(5).uniform(0.5, 2, len(y)) if weighted else None
    kw = dict(epochs=3, verbose=0, validation_split=0.2, sample_weight=w)
    net, trainer = new(comm, l2=1e-3, opt=cdnn.Adam(lr=0.01))
    history = trainer.fit(X, y, **kw)
    alone, solo = new(None, l2=1e-3, opt=cdnn.Adam(lr=0.01))
    expected = solo.fit(X, y, **kw)
    assert np.abs(net.params - alone.params).max() <= 1e-9 * np.abs(alone.params).max()
    assert net.params is not alone.params and not np.array_equal(net.params, new(None)[0].params)
    for key, values in expected.history.items():
        np.testing.assert_allclose(history[key], values, rtol=1e-9, err_msg=key)
    assert same_on_every_rank(list(history.history.items()).__repr__())


def test_parameters_are_bit_identical_on_every_rank_after_every_epoch():
    X, y = blobs(dtype=np.float32)
    w = np.random.default_rng(comm.rank).uniform(0.5, 2, len(y))   # differs by rank: sharded

    class Check(cdnn.Callback):
        epochs = 0

        def on_epoch_end(self, epoch, logs=None):
            assert same_on_every_rank(self.trainer.net.params)
            for buffer in self.trainer.optimizer.state.values():     # Adam's m and v
                assert same_on_every_rank(buffer)
            self.epochs += 1

    for sharded in (False, True):
        check = Check()
        net, trainer = new(comm, dtype="float32", opt=cdnn.Adam(lr=0.01), dropout=0.2)
        trainer.fit(X, y, epochs=3, verbose=0, sharded=sharded, callbacks=[check],
                    sample_weight=w if sharded else None)
        assert check.epochs == 3


def test_rank_0_parameters_and_optimizer_go_to_every_rank():
    net, trainer = new(comm)
    if comm.rank == 1:
        net.params[:] = 7.0         # a rank that built (or loaded) something else
        trainer.optimizer.steps = 99
    trainer.fit(*blobs(40), epochs=1, verbose=0)
    assert same_on_every_rank(net.params) and trainer.optimizer.steps == 2


def test_sharded_data_learns_and_validation_is_reduced_over_every_shard():
    X, y = blobs(600, seed=comm.rank, apart=4)   # each rank its own rows, shards of
    X, y = X[:400 - 150 * comm.rank], y[:400 - 150 * comm.rank]     # different lengths
    Xv, yv = blobs(100, seed=10 + comm.rank, apart=4)
    net, trainer = new(comm, batch_size=32)
    history = trainer.fit(X, y, epochs=6, verbose=0, sharded=True, validation_data=(Xv, yv))
    assert history["accuracy"][-1] > 0.95 and history["val_accuracy"][-1] > 0.95
    assert history["loss"][-1] < history["loss"][0] / 2
    everyone = comm.allgather((Xv, yv))
    whole = net.evaluate(np.concatenate([a for a, _ in everyone]),
                         np.concatenate([b for _, b in everyone]))
    assert history["val_loss"][-1] == pytest.approx(whole["loss"], rel=1e-9)
    assert history["val_accuracy"][-1] == pytest.approx(whole["accuracy"], rel=1e-12)
    assert same_on_every_rank(repr(history.history))


def test_bad_data_on_one_rank_makes_every_rank_raise():
    X, y = blobs()
    if comm.rank == 1:
        X = X.copy()
        X[5, 3] = np.nan
    net, trainer = new(comm)
    before = net.params.copy()
    with pytest.raises(RankError, match=r"rank 1 of 2: checking the data: ValueError: X "
                                        r"holds a non-finite value \(nan\) at row 5"):
        trainer.fit(X, y, epochs=2, verbose=0)
    np.testing.assert_array_equal(net.params, before)


def test_an_exception_on_one_rank_makes_every_rank_raise():
    class Fails(cdnn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1 and comm.rank == 1:
                raise OSError("disk full")

    net, trainer = new(comm)
    with pytest.raises(RankError, match="rank 1 of 2: on_epoch_end: OSError: disk full"):
        trainer.fit(*blobs(), epochs=4, verbose=0, callbacks=[Fails()])
    assert trainer.optimizer.steps == 2 * 11      # both ranks stopped after epoch 2


def test_divergence_stops_every_rank_alike():
    X, y = blobs()
    X = X * (1e300 if comm.rank == 1 else 1)     # one rank's rows overflow the loss
    net, trainer = new(comm, opt=cdnn.SGD(lr=0.1))
    with pytest.raises(FloatingPointError, match="diverged at epoch 1, step ") as raised:
        trainer.fit(X, y, epochs=1, verbose=0)
    assert same_on_every_rank(str(raised.value)) and same_on_every_rank(net.params)
    assert trainer.optimizer.steps < 11 and np.isfinite(net.params).all()


def test_ctrl_c_on_one_rank_stops_every_rank():
    class CtrlC(cdnn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0 and comm.rank == 1:
                os.kill(os.getpid(), signal.SIGINT)

    net, trainer = new(comm)
    history = trainer.fit(*blobs(), epochs=5, verbose=0, callbacks=[CtrlC()])
    assert history.interrupted and history.epoch == [0]
    assert same_on_every_rank(net.params)


def test_a_checkpoint_resumes_under_mpi():
    directory = comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None)
    path = os.path.join(directory, "ckpt-{epoch}.safetensors")
    X, y = blobs()
    net, trainer = new(comm, opt=cdnn.Adam(lr=0.01))
    trainer.fit(X, y, epochs=2, verbose=0,
                callbacks=[cdnn.ModelCheckpoint(path, monitor="loss", save_optimizer=True)])
    saved = comm.allgather(sorted(os.listdir(directory)) if comm.rank == 0 else None)[0]
    assert saved == ["ckpt-1.safetensors", "ckpt-2.safetensors"]
    comm.barrier()
    # rank 0 resumes from the file; rank 1 starts from nothing and is given rank 0's state
    opt = cdnn.Adam(lr=0.01)
    net = (cdnn.load(path.format(epoch=2), opt) if comm.rank == 0
           else cdnn.MLP([10, 16, 3], dtype="float64", seed=9))
    resumed = cdnn.Trainer(net, opt, batch_size=20, comm=comm)
    resumed.fit(X, y, epochs=1, verbose=0)
    alone_opt = cdnn.Adam(lr=0.01)
    alone = cdnn.load(path.format(epoch=2), alone_opt)
    cdnn.Trainer(alone, alone_opt, batch_size=20).fit(X, y, epochs=1, verbose=0)
    assert opt.steps == alone_opt.steps == 3 * 11
    assert np.abs(net.params - alone.params).max() <= 1e-9 * np.abs(alone.params).max()


def test_a_global_batch_smaller_than_the_ranks_is_a_clear_error_when_sharded():
    net, trainer = new(comm, batch_size=1)
    with pytest.raises(RankError, match="rank 0 of 2: setting up: ValueError: batch_size=1 is "
                                        "the global batch: it needs at least one row for each"):
        trainer.fit(*blobs(), sharded=True, verbose=0)


def test_a_global_batch_smaller_than_the_ranks_pads_when_replicated():
    X, y = blobs(41)         # batch 1 replicated: rank 1's part is empty, every step
    net, trainer = new(comm, batch_size=1)
    alone, solo = new(None, batch_size=1)
    history, expected = (t.fit(X, y, epochs=1, verbose=0) for t in (trainer, solo))
    assert np.abs(net.params - alone.params).max() <= 1e-9 * np.abs(alone.params).max()
    assert history["accuracy"] == pytest.approx(expected["accuracy"], rel=1e-12)


def test_sharded_sample_weights_compare_across_ranks_as_given():
    """Each rank's weights are scaled to one largest weight over every rank, not each its own:
    weights (1, 2) on the two ranks train differently from (1, 1), and like (3, 6)."""
    X, y = blobs(120, seed=comm.rank)
    results = []
    for per_rank in ((1, 1), (1, 2), (3, 6)):
        net, trainer = new(comm, batch_size=16)
        trainer.fit(X, y, epochs=2, verbose=0, sharded=True,
                    sample_weight=np.full(len(y), per_rank[comm.rank], dtype=float))
        results.append(net.params)
    assert not np.allclose(results[0], results[1], rtol=1e-6)
    np.testing.assert_array_equal(results[1], results[2])


def test_sparse_rows_reproduce_one_process():
    sparse = pytest.importorskip("scipy.sparse")
    X = sparse.random(203, 50, density=0.1, format="csr", random_state=0)
    y = np.random.default_rng(0).integers(0, 3, 203)
    results = []
    for c in (comm, None):
        net = cdnn.MLP([50, 16, 3], dtype="float64", seed=1)
        cdnn.Trainer(net, cdnn.Adam(lr=0.01), batch_size=20, comm=c).fit(
            X, y, epochs=2, verbose=0, validation_split=0.2)
        results.append(net.params)
    assert np.abs(results[0] - results[1]).max() <= 1e-9 * np.abs(results[1]).max()
    with pytest.raises(ValueError, match="lazy_update is for one process"):
        cdnn.Trainer(net, cdnn.Adam(), comm=comm, lazy_update=True)


def test_derived_communicators_train_as_the_world_does():
    """Issue 23 #4: MPICH's handles of derived communicators (0x84000000 and up) used to
    overflow MPIExchange's signed argument; a Dup, a Split and a sub-communicator of one rank
    train like COMM_WORLD and like one process."""
    X, y = blobs(120)
    results = {}
    for name, c in (("world", comm), ("dup", comm.Dup()), ("split", comm.Split(0, comm.rank)),
                    ("alone", comm.Split(comm.rank, 0)), ("none", None)):
        net, trainer = new(c)
        trainer.fit(X, y, epochs=2, verbose=0)
        results[name] = net.params
        if c is not None and c != comm:
            c.Free()
    for name in ("dup", "split"):
        np.testing.assert_array_equal(results[name], results["world"], err_msg=name)
    np.testing.assert_array_equal(results["alone"], results["none"])
    assert np.abs(results["world"] - results["none"]).max() <= 1e-9 * np.abs(
        results["none"]).max()


def _state_for_another_network(opt):
    # state that training left (not zero, or a reset optimizer may take another network)
    opt.state_for(np.zeros(7))["momentum"][:] = 0.5


# Issue 23 #2 and #3: what rank 1 does differently, and what every rank is told. Each of these
# hung (a Bcast or allreduce of another size or count) or trained silently to nonsense.
DISAGREEMENTS = [
    ("epochs", dict(fit=dict(epochs=3)), "epochs: rank 0 has 2, rank 1 has 3"),
    ("batch_size", dict(batch_size=32), "batch_size: rank 0 has 20, rank 1 has 32"),
    ("rows", dict(rows=150), r"the training rows: rank 0 has 203 \(replicated data\), rank 1 "
                             r"has 150 \(replicated data\)"),
    ("validation_data", dict(fit=dict(validation_data=blobs(30))),
     "validation: rank 0 has none, rank 1 has 30 rows"),
    ("validation_split", dict(fit=dict(validation_split=0.2)),
     "validation_split: rank 0 has 0.0, rank 1 has 0.2"),
    ("sharded", dict(fit=dict(sharded=True)), "sharded: rank 0 has False, rank 1 has True"),
    ("sharded sample weights", dict(fit=dict(sample_weight=np.ones(203)), both=dict(
        fit=dict(sharded=True))), "sample weights: rank 0 has none, rank 1 has given"),
    ("widths", dict(net=dict(sizes=[10, 8, 3])),
     r"layer_sizes: rank 0 has \[10, 16, 3\], rank 1 has \[10, 8, 3\]"),
    ("SGD and Adam", dict(opt=lambda: cdnn.Adam(lr=0.1)),
     r"the optimizer: rank 0 has SGD\(momentum=0.9, .*\), rank 1 has Adam\(betas="),
    ("momentum", dict(opt=lambda: cdnn.SGD(lr=0.1, momentum=0.5)),
     r"the optimizer: rank 0 has SGD\(momentum=0.9, .*rank 1 has SGD\(momentum=0.5"),
    ("activation", dict(net=dict(activation="tanh")),
     r"activation: rank 0 has \['relu'\], rank 1 has \['tanh'\]"),
    ("loss", dict(net=dict(loss="sigmoid_cross_entropy"), both=dict(one_hot=True)),
     "loss: rank 0 has softmax_cross_entropy, rank 1 has sigmoid_cross_entropy"),
    ("l2", dict(net=dict(l2=1e-3)), "l2: rank 0 has 0.0, rank 1 has 0.001"),
    ("dropout", dict(net=dict(dropout=0.2)), r"dropout: rank 0 has \[0.0\], rank 1 has \[0.2\]"),
    ("dtype", dict(net=dict(dtype="float32")), "dtype: rank 0 has float64, rank 1 has float32"),
    ("optimizer state", dict(prefit=_state_for_another_network),
     r"rank 1 of 2: checking the arguments: ValueError: this optimizer already holds state "
     r"for 7 float64"),
]


@pytest.mark.parametrize("mine, message", [case[1:] for case in DISAGREEMENTS],
                         ids=[case[0] for case in DISAGREEMENTS])
def test_ranks_that_disagree_all_raise_before_training(mine, message):
    changes = {**mine.get("both", {}), **(mine if comm.rank == 1 else {})}
    X, y = blobs(changes.get("rows", 203))
    if changes.get("one_hot"):
        y = np.eye(3)[y]
    kw = {"dtype": "float64", **changes.get("net", {})}
    net = cdnn.MLP(kw.pop("sizes", [10, 16, 3]), seed=1, **kw)
    opt = changes.get("opt", lambda: cdnn.SGD(lr=0.1, momentum=0.9))()
    changes.get("prefit", lambda opt: None)(opt)
    trainer = cdnn.Trainer(net, opt, batch_size=changes.get("batch_size", 20), comm=comm)
    before = net.params.copy()
    fit = {"epochs": 2, "verbose": 0, **mine.get("both", {}).get("fit", {}),
           **(mine.get("fit", {}) if comm.rank == 1 else {})}
    with pytest.raises(RankError, match=message):
        trainer.fit(X, y, **fit)
    np.testing.assert_array_equal(net.params, before)      # nothing trained, nothing sent
    assert opt.steps == 0
