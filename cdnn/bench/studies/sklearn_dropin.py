"""scikit-learn's MLPClassifier against cdnn's drop-in, on MNIST, with the same settings.

    python -m cdnn.bench.studies.sklearn_dropin                       # both, one after the other
    python -m cdnn.bench.studies.sklearn_dropin --impl cdnn --max-iter 20 --hidden 256,256

The only difference between the two runs is the import line:
    from sklearn.neural_network import MLPClassifier     # --impl sklearn
    from cdnn.sklearn import MLPClassifier               # --impl cdnn
Each implementation runs in its own subprocess (its own thread pools, nothing left warm by the
other). Wall time covers fit and predict, not loading the data. It prints a table; it never
asserts on a timing.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
IMPORTS = {"sklearn": "from sklearn.neural_network import MLPClassifier",
           "cdnn": "from cdnn.sklearn import MLPClassifier"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=["sklearn", "cdnn", "both"], default="both")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                   help=f"MNIST IDX files (default {DEFAULT_DATA})")
    p.add_argument("--hidden", default="256", help="hidden layer widths, e.g. 256,128")
    p.add_argument("--solver", choices=["adam", "sgd", "lbfgs"], default="adam")
    p.add_argument("--max-iter", type=int, default=10, help="epochs (default 10)")
    p.add_argument("--batch-size", default="auto")
    p.add_argument("--learning-rate-init", type=float, default=1e-3)
    p.add_argument("--alpha", type=float, default=1e-4)
    p.add_argument("--train-size", type=int, default=None,
                   help="use the first N training images (default: all 60000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="limit both to N threads (default: each library's own default)")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # worker output
    return p.parse_args(argv)


def run_one(args) -> dict:
    """Fit and score one implementation in this process."""
    namespace: dict = {}
    exec(IMPORTS[args.impl], namespace)        # the one line a user changes
    MLPClassifier = namespace["MLPClassifier"]
    from cdnn.datasets import load_mnist       # data loading is not timed
    if args.threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)            # numpy's BLAS (scikit-learn's GEMMs)
        if args.impl == "cdnn":
            import cdnn
            cdnn.set_num_threads(args.threads)
    (X, y), (X_test, y_test) = load_mnist(args.data_dir)
    if args.train_size:
        X, y = X[:args.train_size], y[:args.train_size]
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    est = MLPClassifier(hidden_layer_sizes=tuple(int(h) for h in args.hidden.split(",")),
                        solver=args.solver, alpha=args.alpha, batch_size=batch,
                        learning_rate_init=args.learning_rate_init, max_iter=args.max_iter,
                        random_state=args.seed, tol=0.0)   # tol=0: every run does max_iter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # ConvergenceWarning at max_iter
        start = time.perf_counter()
        est.fit(X, y)
        fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    accuracy = float((est.predict(X_test) == y_test).mean())
    predict_seconds = time.perf_counter() - start
    return {"impl": args.impl, "fit_s": fit_seconds, "predict_s": predict_seconds,
            "epochs": int(est.n_iter_), "loss": float(est.loss_), "accuracy": accuracy,
            "n_train": len(X)}


def run_worker(args, impl: str) -> dict | None:
    argv = [sys.executable, __file__, "--impl", impl, "--json", "--data-dir", str(args.data_dir),
            "--hidden", args.hidden, "--solver", args.solver, "--max-iter", str(args.max_iter),
            "--batch-size", str(args.batch_size), "--alpha", str(args.alpha),
            "--learning-rate-init", str(args.learning_rate_init), "--seed", str(args.seed)]
    if args.train_size:
        argv += ["--train-size", str(args.train_size)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"{impl}: failed: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict], args):
    print(f"MNIST, {rows[0]['n_train']} training images, MLPClassifier(hidden_layer_sizes="
          f"({args.hidden}), solver={args.solver!r}, batch_size={args.batch_size}, "
          f"max_iter={args.max_iter}, alpha={args.alpha}, "
          f"learning_rate_init={args.learning_rate_init}); threads: "
          f"{args.threads or 'library default'}\n")
    print("| implementation | fit (s) | predict (s) | epochs | final loss | test accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {IMPORTS[r['impl']].split()[1]} | {r['fit_s']:.1f} | {r['predict_s']:.2f} | "
              f"{r['epochs']} | {r['loss']:.4f} | {r['accuracy']:.4f} |")
    if len(rows) == 2 and rows[1]["fit_s"] > 0:
        print(f"\nfit speed-up of cdnn over scikit-learn: {rows[0]['fit_s'] / rows[1]['fit_s']:.1f}x")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"no MNIST directory at {args.data_dir}; pass --data-dir", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(run_one(args)))
        return 0
    impls = ["sklearn", "cdnn"] if args.impl == "both" else [args.impl]
    rows = [r for r in (run_worker(args, impl) for impl in impls) if r is not None]
    if rows:
        print_table(rows, args)
    return 0 if len(rows) == len(impls) else 1


if __name__ == "__main__":
    sys.exit(main())
