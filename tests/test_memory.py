"""Memory: long training and repeated calls do not grow the process."""
import gc
import os
import tracemalloc

import numpy as np
import pytest

import cdnn
from cdnn.threads import limit_threads

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 2**20


def rss() -> int:
    """Resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


@pytest.fixture(autouse=True)
def one_thread():
    # small GEMMs on a multi-threaded BLAS crawl when other processes hold the cores
    with limit_threads(1):
        yield


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(256, 20)), rng.integers(0, 4, 256)
    net = cdnn.MLP([20, 64, 64, 4], seed=0, dropout=0.1)
    return net, cdnn.Trainer(net, cdnn.Adam(lr=1e-3), batch_size=32), X, y


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_rss_stays_flat_over_100_epochs(problem):
    net, trainer, X, y = problem
    trainer.fit(X, y, epochs=5, verbose=0)   # warm-up: first-touch allocations, BLAS buffers
    before = rss()
    trainer.fit(X, y, epochs=100, validation_data=(X, y), verbose=0)
    for _ in range(100):                      # and repeated short fits and predictions
        trainer.fit(X, y, epochs=1, verbose=0)
        net.predict_proba(X)
        net.loss_and_grad(X, y)
    assert rss() - before < 5 * MB


class TracedMemory(cdnn.Callback):
    """Python-visible allocations (numpy buffers included) at the end of the given epochs."""

    def __init__(self, epochs):
        self.epochs, self.sizes = epochs, []

    def on_epoch_end(self, epoch, logs=None):
        if epoch in self.epochs:
            gc.collect()   # count what is still referenced, not cyclic garbage awaiting collection
            self.sizes.append(tracemalloc.get_traced_memory()[0])


def test_no_allocation_grows_per_epoch(problem):
    net, trainer, X, y = problem
    trainer.fit(X, y, epochs=2, verbose=0)
    traced = TracedMemory(epochs=(9, 59))
    tracemalloc.start()
    try:
        trainer.fit(X, y, epochs=60, validation_data=(X, y), callbacks=[traced], verbose=0)
    finally:
        tracemalloc.stop()
    # History keeps five floats per epoch (about 200 bytes); a leaked buffer (the gradient
    # alone is 23 KB here) would show as far more
    per_epoch = (traced.sizes[1] - traced.sizes[0]) / 50
    assert per_epoch < 512
