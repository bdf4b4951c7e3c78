"""Thread control and thread safety: the BLAS pool size is settable, kernels release the GIL,
concurrent training equals serial training, and one model serves predictions to many threads."""
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import cdnn
from cdnn.threads import get_num_threads, limit_threads, set_num_threads


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
