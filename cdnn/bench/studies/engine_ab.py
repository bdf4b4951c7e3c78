"""An A/B of two builds of cdnn on the bench suite's shapes, in fresh processes, alternating:

    PYTHONPATH=/path/to/other/checkout python cdnn/bench/studies/engine_ab.py S,M,D,P1,P1s,P4,PB
    python cdnn/bench/studies/engine_ab.py S,M,D,P1,P1s,P4,PB [threads]

(by its path, not with -m: the other build need not have this module)

(run with env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE, as every benchmark here, and from a
directory where `import cdnn` finds the build you mean). Random MNIST-shaped rows, 80 % zeros:
S, M and D train one epoch of 10,000 rows (SGD with momentum; samples/s); P1 and P1s predict
one row at a time, P4 four rows (µs per call); PB and PBs predict 10,000 rows (rows/s). Each
prints the best of several repeats in this process: on this shared machine a timing is the
code plus whatever the neighbours did meanwhile, and the best is the closest to the code."""
import sys
import time

import numpy as np

import cdnn

M, SMALL = [784, 512, 512, 10], [784, 128, 10]
TRAIN = {"S": (SMALL, 32), "M": (M, 128), "D": ([784] + [256] * 8 + [10], 64)}
PREDICT = {"P1": (M, 1), "P1s": (SMALL, 1), "P4": (M, 4), "PB": (M, 10_000),
           "PBs": (SMALL, 10_000)}
ROWS = 10_000

rng = np.random.default_rng(0)
X = rng.random((ROWS, 784), dtype=np.float32)
X[X < 0.8] = 0
y = rng.integers(0, 10, ROWS)


def best_of(repeats, run) -> float:
    """The shortest of `repeats` timings of run()"""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def train(layers, batch) -> str:
    trainer = cdnn.Trainer(cdnn.MLP(layers, seed=0), cdnn.SGD(0.01, momentum=0.9),
                           batch_size=batch)
    trainer.fit(X[:2000], y[:2000], epochs=1, verbose=0)      # warm: pages, pools, caches
    seconds = best_of(7, lambda: trainer.fit(X, y, epochs=1, verbose=0))
    return f"{ROWS / seconds:,.0f}/s"


def predict(layers, rows) -> str:
    net = cdnn.MLP(layers, seed=0)
    calls = [X[i:i + rows] for i in range(0, min(ROWS, 1000 * rows), rows)]

    def run():
        for x in calls:
            net.predict(x)
    run()
    seconds = best_of(7, run) / len(calls)
    return f"{rows / seconds:,.0f} rows/s" if rows > 100 else f"{seconds * 1e6:.1f} µs"


workloads = sys.argv[1].split(",") if len(sys.argv) in (2, 3) else []
if not workloads or not set(workloads) <= TRAIN.keys() | PREDICT.keys():
    sys.exit(f"usage: python cdnn/bench/studies/engine_ab.py WORKLOADS [threads]\n"
             f"  WORKLOADS: a comma list of {','.join([*TRAIN, *PREDICT])}")
if len(sys.argv) == 3:
    cdnn.set_num_threads(int(sys.argv[2]))
print(" ".join(f"{w} " + (train(*TRAIN[w]) if w in TRAIN else predict(*PREDICT[w]))
               for w in workloads))
