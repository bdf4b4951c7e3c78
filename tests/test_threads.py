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


def run_python(source: str, **env) -> str:
    """source's stdout in a fresh interpreter with env added to the environment."""
    result = subprocess.run([sys.executable, "-c", source], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.mark.parametrize("name, value, threads", [
    ("OMP_NUM_THREADS", "1", 1), ("OMP_NUM_THREADS", "1,4", 1), ("CDNN_NUM_THREADS", "1", 1),
    ("OMP_THREAD_LIMIT", "1", 1)])
def test_thread_environment_variables_set_the_ceiling(name, value, threads):
    """The ecosystem's convention (joblib/loky, Dask, batch schedulers set these): cdnn once
    ran two threads under OMP_NUM_THREADS=1. The script pretends to have 8 cores, so that the
    variable and not this machine's cores sets the count."""
    out = run_python("import cdnn, cdnn.threads as t; t._USABLE_CORES = 8; "
                     "print(cdnn.get_num_threads())", **{name: value})
    assert out == str(threads)


def test_a_bad_thread_variable_is_a_warning_not_an_error():
    out = run_python("import warnings; warnings.simplefilter('error')\n"
                     "try:\n    import cdnn\nexcept RuntimeWarning as w:\n    print(w)",
                     OMP_NUM_THREADS="many")
    assert "OMP_NUM_THREADS='many'" in out


def test_threadpoolctl_lists_cdnn_and_limits_it():
    from threadpoolctl import threadpool_limits
    ours = [lib for lib in threadpool_info() if lib["internal_api"] == "cdnn"]
    assert len(ours) == 1 and ours[0]["num_threads"] == get_num_threads()
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(2000, 30)), rng.integers(0, 3, 2000)
    net = cdnn.MLP([30, 64, 3], dtype="float64", seed=0)
    with threadpool_limits(1):
        assert get_num_threads() == 1
        assert [lib["num_threads"] for lib in threadpool_info()
                if lib["internal_api"] == "cdnn"] == [1]
        one = net.loss_and_grad(X, y)[1]
    with threadpool_limits(1, user_api="openmp"):     # as joblib limits OpenMP libraries
        assert get_num_threads() == 1
    assert get_num_threads() == ours[0]["num_threads"]
    np.testing.assert_allclose(net.loss_and_grad(X, y)[1], one, rtol=1e-12, atol=1e-14)


def test_joblib_workers_get_their_share_of_the_cores():
    """GridSearchCV(n_jobs=2) on 2 cores once ran 2 × 2 threads that spun on each other."""
    joblib = pytest.importorskip("joblib")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = joblib.Parallel(n_jobs=2)(joblib.delayed(get_num_threads)() for _ in range(2))
    assert counts == [max(1, cores // 2)] * 2


def test_a_team_that_cannot_get_memory_is_a_memory_error(tmp_path):
    """Under ulimit -v, a team's worker once hung in OpenBLAS's first buffer allocation (it
    retries forever) or libgomp exited the process. The team checks the room first; after the
    MemoryError, with the limit lifted, the same call works."""
    script = tmp_path / "limited.py"
    script.write_text(
        "import resource, numpy as np, cdnn, cdnn._engine, cdnn.threads as t\n"
        "t._USABLE_CORES = 2; cdnn._engine.MIN_FLOPS_PER_THREAD = 1\n"
        "net = cdnn.MLP([256, 512, 3], seed=0)\n"
        "X = np.random.default_rng(0).normal(size=(4000, 256)).astype(np.float32)\n"
        "size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + (48 << 20), hard))\n"
        "try:\n"
        "    net.predict(X)\n"
        "    print('no error')\n"
        "except MemoryError as e:\n"
        "    print('MemoryError:', e)\n"
        "resource.setrlimit(resource.RLIMIT_AS, (soft, hard))\n"
        "print(net.predict(X).shape)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = result.stdout.strip().splitlines()
    assert first.startswith("MemoryError: cdnn could not start a team of 2 threads"), first
    assert second == "(4000,)"


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


def test_threads_that_predicted_hold_a_bounded_workspace():
    """Each Python thread once kept a workspace of 2 × 1024 rows for as long as it lived (a
    64 MiB one for a 22 MiB model; 8 idle pool threads held 310 MiB). A call now borrows one
    of at most WORKSPACE_BYTES, and two wait between calls."""
    import tracemalloc
    from concurrent.futures import ThreadPoolExecutor
    from cdnn._engine import KEEP_WORKSPACES, WORKSPACE_BYTES
    net = cdnn.MLP([100, 4000, 3], seed=0)
    X = np.random.default_rng(0).normal(size=(2048, 100)).astype(np.float32)
    pool = ThreadPoolExecutor(4)
    tracemalloc.start()
    try:
        expected = net.predict(X)
        for out in pool.map(lambda _: net.predict(X), range(8)):
            np.testing.assert_array_equal(out, expected)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pool.shutdown()
    assert held <= KEEP_WORKSPACES * WORKSPACE_BYTES + (1 << 20)
    assert peak <= 4 * WORKSPACE_BYTES + KEEP_WORKSPACES * WORKSPACE_BYTES + (8 << 20)
