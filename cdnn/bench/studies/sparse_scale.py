"""The scale check of sparse input: 50,000 × 2^18 float32 CSR rows (about 100 entries a row,
20 classes), one epoch of a 2^18-128-20 MLP (Adam, batch 256, the exact update by default);
prints the peak RSS, the epoch's time and the held-out accuracy (chance is 1/20).

    python -m cdnn.bench.studies.sparse_scale [--lazy]

The dense X would be 52 GB; the CSR rows are about 40 MB, and the network's parameters with
their gradient, Adam's two moments and the per-run copies that restore a diverged step about
1 GB.
"""
import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sparse import make_sparse_classification  # noqa: E402

import cdnn  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20     # kB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lazy", action="store_true", help="the opt-in lazy update")
    args = parser.parse_args()
    X, y = make_sparse_classification(55_000, 2**18, 20, seed=0)
    X_train, y_train, X_test, y_test = X[:50_000], y[:50_000], X[50_000:], y[50_000:]
    print(f"X: {X_train.shape[0]} × {X_train.shape[1]} float32 CSR, {X_train.nnz} entries "
          f"({(X_train.data.nbytes + X_train.indices.nbytes) / 2**20:.0f} MB; dense it would be "
          f"{X_train.shape[0] * X_train.shape[1] * 4 / 2**30:.0f} GB); peak RSS so far "
          f"{peak_rss_gb():.2f} GB")
    net = cdnn.MLP([2**18, 128, 20], seed=0)
    trainer = cdnn.Trainer(net, cdnn.Adam(1e-3), batch_size=256, lazy_update=args.lazy)
    start = time.perf_counter()
    history = trainer.fit(X_train, y_train, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    accuracy = net.evaluate(X_test, y_test)["accuracy"]
    print(f"one epoch of {'-'.join(map(str, net.layer_sizes))} ({net.params.size} parameters, "
          f"{'lazy' if args.lazy else 'exact'} Adam): {seconds:.1f} s, training accuracy "
          f"{history['accuracy'][-1]:.4f}, held-out accuracy {accuracy:.4f} (chance 0.05); "
          f"peak RSS {peak_rss_gb():.2f} GB; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")


if __name__ == "__main__":
    main()
