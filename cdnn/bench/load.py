"""`cdnn bench --under-load`: cdnn on a busy machine.

Each case runs cdnn's default thread count and one thread, alternately, each in a fresh
process, and prints the medians: a team that waits badly for a descheduled team-mate shows as
a default far slower than one thread. The cases:
- a fit beside one CPU-bound process (`while True: pass`): digits, and MNIST-shaped S and M;
- two fits at once (the time is the slower one's);
- GridSearchCV(n_jobs=2) against n_jobs=1, and against scikit-learn's own MLPClassifier: a
  first search (joblib starts its worker processes, each importing scikit-learn) and a second
  one in the same process (the workers are reused).

A child process runs one case (`python -m cdnn.bench.load CASE WHO`) and prints its seconds.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

CASES = {   # name: (what it is, processes at once, beside a busy process)
    "digits": ("digits 64-256-10, batch 100, 10 epochs, + busy", 1, True),
    "S": ("S 784-128-10, batch 32, 20k rows, + busy", 1, True),
    "M": ("M 784-512-512-10, batch 128, 10k rows, + busy", 1, True),
    "digits2": ("two digits fits at once", 2, False),
    "M2": ("two M fits at once", 2, False),
}
GRID = "GridSearchCV(MLPClassifier(max_iter=30), 6 settings, cv=3, n_jobs=2) on digits"


def _digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype("float32"), y


def _mnist(rows):
    from cdnn.bench.workloads import load_data
    ((X, y), _), _ = load_data(None)
    return X[:rows], y[:rows]


def _fit(case):
    import cdnn
    sizes, batch, epochs, data = {
        "digits": ([64, 256, 10], 100, 10, _digits),
        "S": ([784, 128, 10], 32, 1, lambda: _mnist(20000)),
        "M": ([784, 512, 512, 10], 128, 1, lambda: _mnist(10000)),
    }[case.rstrip("2")]
    X, y = data()
    net = cdnn.MLP(sizes, seed=0,
                   matmul_precision=os.environ.get("CDNN_BENCH_MATMUL_PRECISION", "float32"))
    trainer = cdnn.Trainer(net, cdnn.Adam(1e-3), batch_size=batch)
    start = time.perf_counter()
    trainer.fit(X, y, epochs=epochs, verbose=0)
    return time.perf_counter() - start


def _grid(who, warm):
    import warnings
    from sklearn.model_selection import GridSearchCV
    if who.startswith("sklearn"):
        from sklearn.neural_network import MLPClassifier
    else:
        from cdnn.sklearn import MLPClassifier
    X, y = _digits()
    grid = GridSearchCV(MLPClassifier(max_iter=30, random_state=0),
                        {"hidden_layer_sizes": [(64,), (128,)], "alpha": [1e-4, 1e-3, 1e-2]},
                        cv=3, n_jobs=int(who[-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # max_iter=30 does not converge, by design
        if warm:        # joblib's workers started and importing done (they stay for the next)
            grid.fit(X, y)
        start = time.perf_counter()
        grid.fit(X, y)
    return time.perf_counter() - start


def _child(case, who):
    return _grid(who, case == "grid-warm") if case.startswith("grid") else _fit(case)


def _run(case, who, copies, env):
    procs = [subprocess.Popen([sys.executable, "-m", "cdnn.bench.load", case, who], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(copies)]
    times = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"the {case} case ({who}) failed: {err.strip()[-1000:]}")
        times.append(float(out.split()[-1]))
    return max(times)


def under_load(repeats=3, log=print, matmul_precision="float32"):
    """{case: {who: median seconds}}, measured alternately; the fits (not the grid searches)
    at matmul_precision."""
    base = {k: v for k, v in os.environ.items() if k != "CDNN_NUM_THREADS"}
    base["CDNN_BENCH_MATMUL_PRECISION"] = matmul_precision
    one = {**base, "CDNN_NUM_THREADS": "1"}
    plans = [(case, copies, busy, {"default": base, "one thread": one})
             for case, (_, copies, busy) in CASES.items()]
    grids = {f"{lib} n_jobs={n}": base for lib in ("cdnn", "sklearn") for n in (2, 1)}
    plans += [("grid", 1, False, grids), ("grid-warm", 1, False, grids)]
    results = {}
    for case, copies, busy, whos in plans:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            times = {who: [] for who in whos}
            for _ in range(repeats):
                for who, env in whos.items():
                    arg = who.split()[0] + who[-1] if case.startswith("grid") else "fit"
                    times[who].append(_run(case, arg, copies, env))
            results[case] = {who: statistics.median(t) for who, t in times.items()}
            log(f"  {case}: " + ", ".join(f"{w} {s:.3f} s" for w, s in results[case].items()))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    return results


def render(results) -> str:
    lines = ["cdnn under load (medians of alternating fresh processes; + busy: beside one",
             "CPU-bound process; default / 1 thread is the slowdown)",
             f"{'case':<50} {'default':>8} {'1 thread':>8} {'ratio':>6}"]
    for case, (what, _, _) in CASES.items():
        r = results[case]
        lines.append(f"{what:<50} {r['default']:>8.3f} {r['one thread']:>8.3f} "
                     f"{r['default'] / r['one thread']:>5.2f}x")
    lines.append(GRID)
    for case, when in (("grid", "first search (joblib starts workers)"),
                       ("grid-warm", "second search (same workers)")):
        g = results[case]
        lines.append(f"  {when}:")
        for lib in ("cdnn", "sklearn"):
            lines.append(f"    {lib + ':':<8} " + ", ".join(
                f"n_jobs={who[-1]} {s:.2f} s" for who, s in g.items() if who.startswith(lib)))
        lines.append(f"    cdnn n_jobs=2 / n_jobs=1 {g['cdnn n_jobs=2'] / g['cdnn n_jobs=1']:.2f}; "
                     f"{g['sklearn n_jobs=2'] / g['cdnn n_jobs=2']:.2f}x faster than sklearn's")
    return "\n".join(lines)


if __name__ == "__main__":
    print(f"{_child(sys.argv[1], sys.argv[2]):.6f}")
