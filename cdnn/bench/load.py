"""`cdnn bench --under-load`: cdnn on a busy machine.

Each case runs cdnn's default thread count and one thread, alternately, each in a fresh
process, and prints the medians: a team that waits badly for a descheduled team-mate shows as
a default far slower than one thread. The cases:
- a fit beside one CPU-bound process (`while True: pass`): digits, and MNIST-shaped S and M;
- two fits at once (the time is the slower one's);
- GridSearchCV(n_jobs=2) against n_jobs=1, and against scikit-learn's own MLPClassifier.

A child process runs one case (`python -m cdnn.bench.load CASE WHO`) and prints its seconds.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

CASES = {   # name: (what it is, processes at once, beside a busy process)
    "digits": ("digits fit 64-256-10, Adam, batch 100, 10 epochs, beside a busy process", 1, True),
    "S": ("S fit 784-128-10, batch 32, 20k rows, beside a busy process", 1, True),
    "M": ("M fit 784-512-512-10, batch 128, 10k rows, beside a busy process", 1, True),
    "digits2": ("two digits fits at once", 2, False),
    "M2": ("two M fits at once", 2, False),
}
GRID = "GridSearchCV(MLPClassifier(max_iter=30), 6 settings, cv=3) on digits"


def _digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype("float32"), y


def _mnist(rows):
    from cdnn.bench.workloads import load_data
    (X, y), _ = load_data(None)
    return X[:rows], y[:rows]


def _fit(case):
    import cdnn
    sizes, batch, epochs, data = {
        "digits": ([64, 256, 10], 100, 10, _digits),
        "S": ([784, 128, 10], 32, 1, lambda: _mnist(20000)),
        "M": ([784, 512, 512, 10], 128, 1, lambda: _mnist(10000)),
    }[case.rstrip("2")]
    X, y = data()
    net = cdnn.MLP(sizes, seed=0)
    trainer = cdnn.Trainer(net, cdnn.Adam(1e-3), batch_size=batch)
    start = time.perf_counter()
    trainer.fit(X, y, epochs=epochs, verbose=0)
    return time.perf_counter() - start


def _grid(who):
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
        start = time.perf_counter()
        grid.fit(X, y)
    return time.perf_counter() - start


def _child(case, who):
    return _grid(who) if case == "grid" else _fit(case)


def _run(case, who, copies, env):
    procs = [subprocess.Popen([sys.executable, "-m", "cdnn.bench.load", case, who], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    times = [float(p.communicate(timeout=600)[0].split()[-1]) for p in procs]
    return max(times)


def under_load(repeats=3, log=print):
    """{case: {who: median seconds}}, measured alternately."""
    base = {k: v for k, v in os.environ.items() if k != "CDNN_NUM_THREADS"}
    one = {**base, "CDNN_NUM_THREADS": "1"}
    plans = [(case, copies, busy, {"default": base, "one thread": one})
             for case, (_, copies, busy) in CASES.items()]
    plans.append(("grid", 1, False, {f"cdnn n_jobs={n}": base for n in (2, 1)}
                  | {f"sklearn n_jobs={n}": base for n in (2, 1)}))
    results = {}
    for case, copies, busy, whos in plans:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            times = {who: [] for who in whos}
            for _ in range(repeats):
                for who, env in whos.items():
                    arg = who.split()[0] + who[-1] if case == "grid" else "fit"
                    times[who].append(_run(case, arg, copies, env))
            results[case] = {who: statistics.median(t) for who, t in times.items()}
            log(f"  {case}: " + ", ".join(f"{w} {s:.3f} s" for w, s in results[case].items()))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    return results


def render(results) -> str:
    lines = ["cdnn under load (medians of alternating fresh processes)",
             f"{'case':<60} {'default':>8} {'1 thread':>8} {'ratio':>6}"]
    for case, (what, _, _) in CASES.items():
        r = results[case]
        lines.append(f"{what[:60]:<60} {r['default']:>8.3f} {r['one thread']:>8.3f} "
                     f"{r['default'] / r['one thread']:>5.2f}x")
    g = results["grid"]
    lines.append(GRID)
    for who, s in g.items():
        lines.append(f"  {who:<20} {s:>8.3f} s")
    lines.append(f"  cdnn n_jobs=2 vs n_jobs=1: {g['cdnn n_jobs=2'] / g['cdnn n_jobs=1']:.2f}x; "
                 f"sklearn n_jobs=2 / cdnn n_jobs=2: "
                 f"{g['sklearn n_jobs=2'] / g['cdnn n_jobs=2']:.1f}x faster")
    return "\n".join(lines)


if __name__ == "__main__":
    print(f"{_child(sys.argv[1], sys.argv[2]):.6f}")
