"""Workload SP: one epoch of a 65536-128-10 MLP on sparse, text-like CSR rows.

cdnn against scikit-learn's MLPClassifier (float64 and float32 CSR) and PyTorch with
torch.sparse_csr_tensor batches; each trains one epoch (Adam, learning rate 1e-3, batch 256,
ReLU, no L2) on the same rows, then predicts a held-out set. Prints seconds per epoch and the
held-out accuracy. Standalone (the bench package has no sparse workload yet):

    python -m cdnn.bench.studies.sparse [--rows 20000] [--features 65536] [--repeats 1] [--contenders ...]

The data: each row holds about 100 entries (Poisson), a tenth of them from a thousand columns
its class favours and the rest anywhere, with exponential values scaled to unit L2 norm (as
tf-idf rows are). A contender that is not installed is skipped with a note.
"""
from __future__ import annotations

import argparse
import functools
import os
import time
import warnings

import numpy as np
import scipy.sparse as sp

HIDDEN, BATCH, LR = 128, 256, 1e-3


def make_sparse_classification(n_rows: int, n_features: int, n_classes: int, per_row: int = 100,
                               topic_share: float = 0.1, seed: int = 0, dtype=np.float32):
    """(X, y): CSR rows of unit norm, ~per_row entries each, a topic_share of them from
    columns that row's class favours."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n_rows)
    counts = rng.poisson(per_row, n_rows).clip(1)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    owner = np.repeat(np.arange(n_rows), counts)
    topics = rng.integers(0, n_features, (n_classes, 1000))
    from_topic = rng.random(len(owner)) < topic_share
    columns = np.where(from_topic, topics[y[owner], rng.integers(0, 1000, len(owner))],
                       rng.integers(0, n_features, len(owner)))
    values = rng.exponential(1.0, len(owner))
    values /= np.sqrt(np.add.reduceat(values**2, indptr[:-1]))[owner]
    X = sp.csr_matrix((values.astype(dtype), columns, indptr), shape=(n_rows, n_features))
    X.sum_duplicates()
    return X, y


def run_cdnn(X, y, X_test, y_test, seed, lazy=False):
    import cdnn
    net = cdnn.MLP([X.shape[1], HIDDEN, int(y.max()) + 1], dtype=X.dtype.name, seed=seed)
    start = time.perf_counter()
    cdnn.Trainer(net, cdnn.Adam(LR), batch_size=BATCH, seed=seed, lazy_update=lazy).fit(
        X, y, verbose=0)
    seconds = time.perf_counter() - start
    return seconds, float((net.predict(X_test) == y_test).mean())


def run_sklearn(X, y, X_test, y_test, seed):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    model = MLPClassifier((HIDDEN,), solver="adam", learning_rate_init=LR, batch_size=BATCH,
                          alpha=0.0, max_iter=1, random_state=seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    seconds = time.perf_counter() - start
    return seconds, float(model.score(X_test, y_test))


def run_torch(X, y, X_test, y_test, seed):
    import torch
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count())
    n_classes = int(y.max()) + 1
    W1 = torch.nn.Parameter(torch.empty(X.shape[1], HIDDEN))
    torch.nn.init.kaiming_uniform_(W1.T, a=5 ** 0.5)       # nn.Linear's initialisation
    b1 = torch.nn.Parameter(torch.zeros(HIDDEN))
    out = torch.nn.Linear(HIDDEN, n_classes)
    params = [W1, b1, *out.parameters()]
    opt = torch.optim.Adam(params, lr=LR)
    labels = torch.from_numpy(y)

    warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant)")

    def batch_tensor(rows):
        return torch.sparse_csr_tensor(torch.from_numpy(rows.indptr.astype(np.int64)),
                                       torch.from_numpy(rows.indices.astype(np.int64)),
                                       torch.from_numpy(rows.data), size=rows.shape)

    def logits(rows):
        return out(torch.relu(torch.sparse.mm(batch_tensor(rows), W1) + b1))

    order = np.random.default_rng(seed).permutation(X.shape[0])
    start = time.perf_counter()
    for first in range(0, len(order), BATCH):
        idx = order[first:first + BATCH]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits(X[idx]), labels[idx])
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        predicted = logits(X_test).argmax(1).numpy()
    return seconds, float((predicted == y_test).mean())


CONTENDERS = {
    "cdnn float32": (run_cdnn, np.float32),
    "cdnn float32, lazy update (opt-in)": (functools.partial(run_cdnn, lazy=True), np.float32),
    "scikit-learn float64": (run_sklearn, np.float64),
    "scikit-learn float32": (run_sklearn, np.float32),
    "pytorch float32 (sparse_csr_tensor)": (run_torch, np.float32),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=65_536)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--contenders", default=",".join(c.split()[0] for c in CONTENDERS),
                        help="comma-separated: cdnn, scikit-learn, pytorch")
    args = parser.parse_args(argv)
    X, y = make_sparse_classification(args.rows + 5000, args.features, args.classes)
    X_train, y_train, X_test, y_test = X[:args.rows], y[:args.rows], X[args.rows:], y[args.rows:]
    print(f"SP: {args.rows} rows × {args.features} columns, {X_train.nnz / args.rows:.0f} "
          f"entries a row, {args.classes} classes; {args.features}-{HIDDEN}-{args.classes}, "
          f"Adam, batch {BATCH}, one epoch; held-out accuracy on 5000 rows; "
          f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f})")
    wanted = args.contenders.split(",")
    for name, (run, dtype) in CONTENDERS.items():
        if name.split()[0] not in wanted:
            continue
        try:
            results = [run(X_train.astype(dtype), y_train, X_test.astype(dtype), y_test, seed)
                       for seed in range(args.repeats)]
        except ImportError as e:
            print(f"{name:38s} skipped: {e.name} is not installed")
            continue
        seconds = min(r[0] for r in results)
        accuracy = np.mean([r[1] for r in results])
        print(f"{name:38s} {seconds:7.2f} s/epoch (best of {args.repeats})  "
              f"accuracy {accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
