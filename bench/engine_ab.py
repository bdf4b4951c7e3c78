"""Training samples/s of S, M and D on 20,000 random MNIST-shaped rows (SGD with momentum),
for an A/B of two builds of cdnn in fresh processes, alternating:

    PYTHONPATH=/path/to/other/checkout python bench/engine_ab.py S,M,D [threads]
    python bench/engine_ab.py S,M,D [threads]

(run with env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE, as every benchmark here)."""
import sys, time, numpy as np, cdnn
sizes = {"S": ([784, 128, 10], 32), "M": ([784, 512, 512, 10], 128), "D": ([784] + [256] * 8 + [10], 64)}
rng = np.random.default_rng(0)
X = rng.random((20000, 784), dtype=np.float32); y = rng.integers(0, 10, 20000)
out = []
if len(sys.argv) > 2: cdnn.set_num_threads(int(sys.argv[2]))
for wl in sys.argv[1].split(","):
    layers, batch = sizes[wl]
    net = cdnn.MLP(layers, seed=0)
    tr = cdnn.Trainer(net, cdnn.SGD(0.01, momentum=0.9), batch_size=batch)
    tr.fit(X[:2000], y[:2000], epochs=1, verbose=0)
    t = time.perf_counter(); tr.fit(X, y, epochs=1, verbose=0); dt = time.perf_counter() - t
    out.append(f"{wl} {20000 / dt:,.0f}/s")
print(" ".join(out))
