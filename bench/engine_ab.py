"""Training samples/s of S, M and D on 10,000 random MNIST-shaped rows (SGD with momentum), the
best of `repeats` one-epoch fits in one process, for an A/B of two builds of cdnn in fresh
processes, alternating:

    PYTHONPATH=/path/to/other/checkout python bench/engine_ab.py S,M,D [threads [repeats]]
    python bench/engine_ab.py S,M,D [threads [repeats]]

(run with env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE, as every benchmark here). The best of
several fits, not one fit: on this shared machine a fit's time is its own code plus whatever
the neighbours did meanwhile, and the best is the closest to the code alone."""
import sys
import time

import numpy as np

import cdnn

SIZES = {"S": ([784, 128, 10], 32), "M": ([784, 512, 512, 10], 128),
         "D": ([784] + [256] * 8 + [10], 64)}
ROWS = 10_000

rng = np.random.default_rng(0)
X = rng.random((ROWS, 784), dtype=np.float32)
y = rng.integers(0, 10, ROWS)
if len(sys.argv) > 2:
    cdnn.set_num_threads(int(sys.argv[2]))
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 7
out = []
for workload in sys.argv[1].split(","):
    layers, batch = SIZES[workload]
    trainer = cdnn.Trainer(cdnn.MLP(layers, seed=0), cdnn.SGD(0.01, momentum=0.9),
                           batch_size=batch)
    trainer.fit(X[:2000], y[:2000], epochs=1, verbose=0)      # warm: pages, pools, caches
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.fit(X, y, epochs=1, verbose=0)
        best = max(best, ROWS / (time.perf_counter() - start))
    out.append(f"{workload} {best:,.0f}/s")
print(" ".join(out))
