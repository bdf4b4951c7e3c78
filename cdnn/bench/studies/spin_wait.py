"""The spin before a pool waiter sleeps: one-epoch fits of 20k random rows at spins of 0-50 us.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m cdnn.bench.studies.spin_wait 784-128-10 32
"""
import sys, time, numpy as np, cdnn
from cdnn._native import _network
if len(sys.argv) != 3 or not sys.argv[2].isdigit():
    sys.exit("usage: spin_wait LAYERS BATCH, e.g. 784-128-10 32")
sizes = [int(v) for v in sys.argv[1].split("-")]; batch = int(sys.argv[2])
rng = np.random.default_rng(0); X = rng.random((20000, sizes[0]), dtype=np.float32); y = rng.integers(0, sizes[-1], 20000)
res = {}
for spin in (0, 5000, 20000, 50000) * 3:
    _network.set_spin_ns(spin)
    net = cdnn.MLP(sizes, seed=0); tr = cdnn.Trainer(net, cdnn.Adam(1e-3), batch_size=batch)
    s = time.perf_counter(); tr.fit(X, y, epochs=1, verbose=0); res.setdefault(spin, []).append(time.perf_counter() - s)
print(sys.argv[1], batch, "  ".join(f"spin {k/1000:g}us {np.median(v):.3f}" for k, v in res.items()))
