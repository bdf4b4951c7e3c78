"""Thread control and thread safety: the BLAS pool size is settable, kernels release the GIL,
concurrent training equals serial training, and one model serves predictions to many threads."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import cdnn
from cdnn.threads import get_num_threads, limit_threads, set_num_threads, single_threaded_blas


def blas_thread_counts():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.fixture(autouse=True)
def restore_threads():
    before = get_num_threads()
    yield
    set_num_threads(before)


def test_set_num_threads_sets_every_blas():
    set_num_threads(1)
    assert get_num_threads() == 1
    assert blas_thread_counts() and set(blas_thread_counts()) == {1}
    set_num_threads(2)
    assert get_num_threads() == 2


def test_limit_threads_restores_on_exit():
    set_num_threads(2)
    with limit_threads(1):
        assert get_num_threads() == 1
    assert get_num_threads() == 2


def scipy_blas_threads():
    import scipy.linalg.cython_blas  # noqa: F401  (loaded, so that threadpoolctl sees it)
    return [i["num_threads"] for i in threadpool_info()
            if i["user_api"] == "blas" and "scipy" in os.path.basename(os.path.dirname(i["filepath"]))]


@pytest.mark.parametrize("in_thread", [False, True], ids=["main thread", "other thread"])
def test_single_threaded_blas_holds_the_kernels_blas_at_one_and_restores_it(in_thread):
    set_num_threads(2)
    before = scipy_blas_threads()
    inside = []

    def hold():
        with single_threaded_blas():
            with single_threaded_blas():    # nested: the outer one restores
                inside.append(scipy_blas_threads())
            inside.append(scipy_blas_threads())

    if in_thread:
        worker = threading.Thread(target=hold)
        worker.start()
        worker.join()
    else:
        hold()
    assert before == [2]
    assert inside == [[1], [1]]
    assert scipy_blas_threads() == before


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                        ("2", TypeError)])
def test_bad_thread_counts_are_rejected(bad, error):
    with pytest.raises(error, match="number of threads"):
        set_num_threads(bad)
    with pytest.raises(error, match="number of threads"):
        limit_threads(bad)


# --- the GIL ------------------------------------------------------------------------------------

class Counter(threading.Thread):
    """Records a timestamp per loop turn: it can only run while no thread holds the GIL."""

    def __init__(self):
        super().__init__(daemon=True)
        self.times, self.stop = [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.times.append(time.perf_counter())
            time.sleep(0)

    def turns_between(self, t0, t1):
        return sum(t0 < t < t1 for t in self.times)


def long_enough(call, make_rows, seconds=0.15):
    """Grow the batch until one call of `call` takes at least `seconds`; return its rows."""
    rows = 2000
    while True:
        data = make_rows(rows)
        start = time.perf_counter()
        call(*data)
        if time.perf_counter() - start >= seconds or rows >= 2_000_000:
            return data
        rows *= 2


@pytest.mark.parametrize("method", ["forward", "loss_and_grad", "evaluate"])
def test_kernels_release_the_gil(method):
    # If a kernel held the GIL the counter could not run at all while it does; it would record
    # nothing in the middle half of a call of 0.15 s or more.
    rng = np.random.default_rng(0)
    net = cdnn.MLP([64, 256, 256, 10], seed=0)
    call = net.forward if method == "forward" else getattr(net, method)

    def make_rows(n):
        X = rng.normal(size=(n, 64)).astype(np.float32)
        return (X,) if method == "forward" else (X, rng.integers(0, 10, n))

    with limit_threads(1):
        data = long_enough(call, make_rows)
        counter = Counter()
        counter.start()
        time.sleep(0.01)
        t0 = time.perf_counter()
        call(*data)
        t1 = time.perf_counter()
        counter.stop.set()
        counter.join()
    quarter = (t1 - t0) / 4
    assert counter.turns_between(t0 + quarter, t1 - quarter) > 10


def test_training_steps_release_the_gil():
    # One step per kernel call, each long: with the GIL held the counter would stall for whole
    # steps; released, its longest pause stays far below one step's time.
    rng = np.random.default_rng(0)
    net = cdnn.MLP([64, 256, 256, 10], seed=0, dropout=0.1)
    trainer = cdnn.Trainer(net, cdnn.SGD(lr=0.01), batch_size=10**9)

    def make_rows(n):
        return rng.normal(size=(n, 64)).astype(np.float32), rng.integers(0, 10, n)

    with limit_threads(1):
        X, y = long_enough(lambda X, y: trainer.fit(X, y, epochs=1, verbose=0), make_rows, 0.12)
        counter = Counter()
        counter.start()
        t0 = time.perf_counter()
        trainer.fit(X, y, epochs=3, verbose=0)
        t1 = time.perf_counter()
        counter.stop.set()
        counter.join()
    times = [t0] + [t for t in counter.times if t0 < t < t1] + [t1]
    assert max(np.diff(times)) < (t1 - t0) / 3 / 2


# --- concurrency --------------------------------------------------------------------------------

def train(dtype, seed, X, y):
    net = cdnn.MLP([X.shape[1], 32, 16, 3], dtype=dtype, seed=seed, dropout=0.2)
    cdnn.Trainer(net, cdnn.Adam(lr=0.01), batch_size=16).fit(X, y, epochs=3, verbose=0)
    return net.params


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_concurrent_training_equals_serial(dtype):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(600, 20)), rng.integers(0, 3, 600)
    with limit_threads(1):   # the thread count is part of the determinism contract
        serial = [train(dtype, seed, X, y) for seed in (1, 2)]
        results = [None, None]

        def worker(i, seed):
            results[i] = train(dtype, seed, X, y)

        threads = [threading.Thread(target=worker, args=(i, seed))
                   for i, seed in enumerate((1, 2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not np.array_equal(serial[0], serial[1])
    for alone, together in zip(serial, results):
        assert np.array_equal(alone, together)


def test_one_model_predicts_from_many_threads():
    rng = np.random.default_rng(2)
    net = cdnn.MLP([30, 64, 64, 5], seed=0)
    # batches of different sizes, so that each thread's workspace is grown while others run
    batches = [rng.normal(size=(int(n), 30)) for n in rng.integers(1, 3000, 24)]
    batches += [rng.normal(size=(1, 30)).astype(np.float32) for _ in range(16)]  # short path
    with limit_threads(1):
        expected = [(net.predict_proba(X), net.predict(X)) for X in batches]
        results = [None] * len(batches)
        barrier = threading.Barrier(8)

        def worker(k):
            barrier.wait()
            for i in range(k, len(batches), 8):
                results[i] = (net.predict_proba(batches[i]), net.predict(batches[i]))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for (p, c), (p2, c2) in zip(expected, results):
        assert np.array_equal(p, p2) and np.array_equal(c, c2)


# --- threads sharing a batch --------------------------------------------------------------------

@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize("optimizer", [lambda: cdnn.SGD(0.1, momentum=0.9),
                                       lambda: cdnn.Adam(0.01)], ids=["sgd", "adam"])
def test_threads_sharing_each_batch_train_the_model_one_thread_trains(monkeypatch, threads,
                                                                      optimizer):
    """The threads of a step split its rows (forward, loss, dL/dz) and its parameters (their
    gradient over the whole batch, and their update), waiting for each other at every layer.
    With everything the split touches (dropout masks, L2, clipping, sample weights, GELU's kept
    pre-activation) and more threads than some layers have units and the last batch has rows,
    the result is one thread's, in float64."""
    monkeypatch.setattr(cdnn._engine, "MIN_FLOPS_PER_THREAD", 1)   # thread even tiny steps
    rng = np.random.default_rng(4)
    X, y, w = rng.normal(size=(103, 7)), rng.integers(0, 3, 103), rng.uniform(0.5, 2, 103)

    def fit(n):
        net = cdnn.MLP([7, 9, 4, 3], activation=["gelu", "relu"], dtype="float64", seed=0,
                       dropout=[0.2, 0.0], l2=1e-3)
        trainer = cdnn.Trainer(net, optimizer(), batch_size=20, clip_norm=0.5, seed=1)
        with limit_threads(n):
            history = trainer.fit(X, y, sample_weight=w, epochs=3, verbose=0)
        return net.params, history.history["loss"]

    one, one_losses = fit(1)
    many, many_losses = fit(threads)
    assert not np.array_equal(one, cdnn.MLP([7, 9, 4, 3], dtype="float64", seed=0).params)
    np.testing.assert_allclose(many, one, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(many_losses, one_losses, rtol=1e-9)


def test_fewer_threads_than_asked_still_cover_every_row(tmp_path):
    """OpenMP may grant a region fewer threads than asked (here OMP_THREAD_LIMIT=1 while cdnn
    asks for 2): the work is split between the threads that run, never left undone."""
    script = tmp_path / "limited.py"
    script.write_text(
        "import numpy as np, cdnn, cdnn._engine\n"
        "cdnn._engine.MIN_FLOPS_PER_THREAD = 1\n"
        "rng = np.random.default_rng(0)\n"
        "X, y = rng.normal(size=(3000, 20)), rng.integers(0, 10, 3000)\n"
        "def run(threads):\n"
        "    net = cdnn.MLP([20, 64, 10], dtype='float64', seed=0)\n"
        "    with cdnn.limit_threads(threads):\n"
        "        out = [net.forward(X), net.loss_and_grad(X, y)[1], net.evaluate(X, y)['loss']]\n"
        "        cdnn.Trainer(net, cdnn.SGD(0.1), batch_size=100).fit(X, y, verbose=0)\n"
        "    return out + [net.params]\n"
        "for a, b in zip(run(1), run(2)):\n"
        "    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)\n"
        "print('same')\n")
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "same"


def test_limit_threads_blocks_in_two_threads_restore_the_pools_whatever_the_order():
    """Thread A opens limit_threads(1), thread B limit_threads(2); A closes first, then B. The
    process once stayed at 1 thread for good."""
    from threadpoolctl import threadpool_info
    before = [lib["num_threads"] for lib in threadpool_info()]
    ceiling = get_num_threads()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with limit_threads(1):
            seen["a"] = get_num_threads()
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with limit_threads(2):
            seen["b"] = get_num_threads()
            b_in.set()
            a_out.wait(10)
            seen["b after a"] = get_num_threads()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"a": 1, "b": 2, "b after a": 2}
    assert get_num_threads() == ceiling
    assert [lib["num_threads"] for lib in threadpool_info()] == before
