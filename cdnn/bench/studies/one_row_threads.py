"""One-row prediction latency on the short path (net.predict on a ready row: forward_row, one
cdnn thread, the BLAS as it is) against the kernel call that shares each layer's units between
every thread (with the BLAS held at one thread, as the engine does), alternating in one
process. It is why cdnn/_engine.py sends every ready row down the short path:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m cdnn.bench.studies.one_row_threads

MNIST-like rows are 80 % zeros (the row product skips them); dense rows have none. Prints
medians of 7 rounds of 300 calls; never asserts on a timing."""
import time

import numpy as np

import cdnn
from cdnn.threads import single_threaded_blas

ROWS = 300
rng = np.random.default_rng(0)
mnist_like = rng.random((ROWS, 784), dtype=np.float32)
mnist_like[mnist_like < 0.8] = 0
dense = rng.random((ROWS, 784), dtype=np.float32) + 0.05
threads = cdnn.get_num_threads()


def short_path(net):
    return net.predict


def units_shared(net):
    network = net.engine.network
    out = np.empty((1, net.n_outputs), np.float32)
    workspace = np.empty(network.row_width, np.float32)

    def predict(x):
        with single_threaded_blas():
            network.forward(net.params, x, out, workspace, threads, True)
        return out.argmax(axis=1)
    return predict


def per_call_us(predict, X) -> float:
    start = time.perf_counter()
    for i in range(ROWS):
        predict(X[i:i + 1])
    return (time.perf_counter() - start) / ROWS * 1e6


for width in (256, 512, 1024, 2048):
    net = cdnn.MLP([784, width, width, 10], seed=0)
    for name, X in (("MNIST-like", mnist_like), ("dense", dense)):
        times = {"short path": [], "units shared": []}
        for _ in range(7):
            for how, make in (("short path", short_path), ("units shared", units_shared)):
                times[how].append(per_call_us(make(net), X))
        print(f"784-{width}-{width}-10 {name:10s} {threads} threads: "
              + ", ".join(f"{how} {np.median(v):,.1f} µs" for how, v in times.items()))
