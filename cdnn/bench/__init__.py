"""Benchmark suite: cdnn against PyTorch, JAX and scikit-learn on MNIST-sized MLPs (and ONNX
Runtime on prediction), and on small scikit-learn style jobs.

    cdnn bench --quick                      # a few minutes, smaller epochs
    cdnn bench --workloads small            # the small jobs only
    cdnn bench --full --json bench/results.json --markdown bench/RESULTS.md

How it measures, and why:
- Every measurement runs in a worker subprocess that holds one contender only, so the
  contenders' thread pools (OpenBLAS, MKL/OpenMP, XLA's Eigen pool) never share a process,
  and the worker reports its own peak RSS. `--full` starts a fresh process per measurement;
  `--quick` keeps one process per contender and resets the peak-RSS mark (/proc clear_refs)
  before each measurement, which saves the imports but counts what the process already holds.
- Contenders alternate within a repeat (cdnn, torch, jax, sklearn, cdnn, torch, ...) so drift
  on a shared machine hits all of them alike; tables show medians over the repeats (for the
  small jobs, which take under a second or so, the best).
- Every contender gets the same untimed warm-up (a throwaway model, a few steps); for JAX that
  warm-up is the compile of each batch shape, timed and reported separately.
- The peers are written the way a competent user writes them: PyTorch eager with manual
  batching over a shuffled index; JAX with the whole SGD-momentum step under `jax.jit`;
  scikit-learn's own `MLPClassifier(solver="sgd")`. Thread counts are left at their defaults,
  but for ONNX Runtime (predict workloads only), which runs cdnn's own exported network at
  cdnn's thread count: the serving set-up cdnn's predict is weighed against.
- Benchmarks measure and print. Nothing here asserts on a timing or fails because of one.

The package by concern: workloads.py (what is measured, modes, data), contenders.py (each
framework's recipe), small.py (the small jobs), worker.py (the worker process's tasks),
runner.py (worker processes, scheduling, run_suite), summary.py (medians and ratios),
report.py (tables, notes; text, markdown, JSON), cli.py (options and main).

It imports only the standard library and numpy: torch, jax, sklearn and cdnn's own core are
imported inside the worker of the contender that needs them, and a contender that is not
installed is left out with a note that says how to install it.
"""

from .cli import build_parser, main

__all__ = ["build_parser", "main"]
