"""Backpropagation vs numerical differentiation.

One full gradient of the loss by backpropagation (MLP.loss_and_grad: one forward and one
backward pass) against central finite differences ((L(θ + h·e_i) − L(θ − h·e_i)) / 2h for
every parameter i: 2·P forward passes, each through MLP.evaluate), for networks whose parameter
count P grows from about 100 to about 285,000. Prints the times and how closely the two
gradients agree (float64), and writes a log-log plot of time against P.

For the largest networks a full finite-difference gradient would take minutes, so its time is
measured on a random sample of coordinates and scaled by P / sample (every coordinate costs the
same two forward passes); the agreement is then checked on that sample. The table marks these.

Run: python docs/experiments/backprop_vs_numerical.py [--out DIR]  (about 1 minute on 2 cores)
"""
import os

# One BLAS thread, set before numpy loads OpenBLAS: on 2 cores shared with other jobs, the
# threaded GEMM made these small products up to 10x slower (100x, erratically, for timings).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

import cdnn  # noqa: E402
from common import figure_path, markdown_table, output_folder, pyplot, write_report  # noqa: E402

WIDTHS = (2, 4, 8, 16, 32, 64, 128, 256, 512)
N_IN, N_OUT, ROWS, SEED = 32, 10, 64, 0
STEP = 1e-5                 # central differences in float64: truncation ~h², rounding ~eps/h
FULL_UP_TO = 25_000         # parameters; above this, sample coordinates
SAMPLE = 1500


def backprop_seconds(net, X, y) -> tuple[float, np.ndarray]:
    """The fastest of repeated gradient computations (repeated for at least 0.2 s)."""
    best, total, grad = np.inf, 0.0, None
    while total < 0.2:
        t = time.perf_counter()
        _, grad = net.loss_and_grad(X, y)
        elapsed = time.perf_counter() - t
        best, total = min(best, elapsed), total + elapsed
    return best, grad


def finite_differences(net, X, y, coords) -> tuple[float, np.ndarray]:
    """Central differences for the given coordinates; (seconds, derivatives)."""
    params, out = net.params, np.empty(len(coords))
    t = time.perf_counter()
    for k, i in enumerate(coords):
        saved = params[i]
        params[i] = saved + STEP
        up = net.evaluate(X, y)["loss"]
        params[i] = saved - STEP
        down = net.evaluate(X, y)["loss"]
        params[i] = saved
        out[k] = (up - down) / (2 * STEP)
    return time.perf_counter() - t, out


def main():
    out = output_folder(__doc__)
    started = time.perf_counter()
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((ROWS, N_IN))
    y = rng.integers(0, N_OUT, ROWS)
    rows, points = [], []
    for width in WIDTHS:
        net = cdnn.MLP([N_IN, width, width, N_OUT], activation="tanh", dtype="float64",
                       seed=SEED)
        P = net.params.size
        t_bp, grad = backprop_seconds(net, X, y)
        full = P <= FULL_UP_TO
        coords = np.arange(P) if full else np.sort(rng.choice(P, SAMPLE, replace=False))
        t_fd, numeric = finite_differences(net, X, y, coords)
        t_fd *= P / len(coords)
        exact = grad[coords]
        scale = np.abs(exact).max()
        # elementwise relative error, with a floor so that components near zero do not divide
        # by rounding noise; and the error of the whole vector relative to its norm
        rel = np.abs(exact - numeric) / np.maximum(np.maximum(np.abs(exact), np.abs(numeric)),
                                                   1e-6 * scale)
        normwise = np.linalg.norm(exact - numeric) / np.linalg.norm(exact)
        points.append((P, t_bp, t_fd, full, rel.max(), normwise, np.median(rel)))
        rows.append([f"{N_IN}-{width}-{width}-{N_OUT}", f"{P:,}", f"{1e3 * t_bp:.3f}",
                     f"{t_fd:.3g}" + ("" if full else " (est.)"), f"{t_fd / t_bp:,.0f}",
                     "all" if full else f"{len(coords)} sampled",
                     f"{rel.max():.1e}", f"{np.median(rel):.1e}", f"{normwise:.1e}"])
        print(f"P={P:>6}: backprop {1e3 * t_bp:.3f} ms, finite differences {t_fd:.3g} s, "
              f"max rel. error {rel.max():.1e}", flush=True)

    P, t_bp, t_fd = (np.array([p[k] for p in points]) for k in range(3))
    big = P >= 1000
    slope_bp = np.polyfit(np.log(P[big]), np.log(t_bp[big]), 1)[0]
    slope_fd = np.polyfit(np.log(P[big]), np.log(t_fd[big]), 1)[0]
    plot(points, slope_bp, slope_fd, out)
    table = markdown_table(["network", "parameters P", "backprop (ms)",
                            "finite differences (s)", "ratio", "coordinates compared",
                            "max relative error", "median relative error",
                            "‖error‖ / ‖gradient‖"], rows)
    settings = (f"{ROWS} random rows (standard normal inputs, {N_IN} features, random labels of "
                f"{N_OUT} classes), two tanh hidden layers, softmax cross-entropy, float64, seed "
                f"{SEED}; finite-difference step h = {STEP:g}. Backprop time: the fastest of "
                f"repeated calls of `loss_and_grad`; finite differences: 2·P calls of `evaluate`. "
                f"Fitted log-log slopes for P ≥ 1000: backprop {slope_bp:.2f}, finite "
                f"differences {slope_fd:.2f}. Elementwise relative error: "
                f"|g − ĝ| / max(|g|, |ĝ|, 10⁻⁶·max|g|).")
    write_report(out, "backprop_vs_numerical", "Backpropagation vs numerical differentiation",
                 settings, table, started)


def plot(points, slope_bp, slope_fd, out):
    plt = pyplot()
    P, t_bp, t_fd, full, rel, normwise, median = (np.array([p[k] for p in points])
                                                  for k in range(7))
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_t.loglog(P, t_bp, "o-", label=f"backprop (slope {slope_bp:.2f})")
    ax_t.loglog(P, t_fd, "s-", color="tab:red", label=f"finite differences (slope {slope_fd:.2f})")
    ax_t.loglog(P[~full], t_fd[~full], "s", mfc="white", color="tab:red",
                label="  estimated from sampled coordinates")
    ref = P / P[-1]
    ax_t.loglog(P, t_fd[-1] * ref ** 2, ":", color="gray", label="∝ P²")
    ax_t.loglog(P, t_bp[-1] * ref, "--", color="gray", label="∝ P")
    ax_t.set(xlabel="parameters P", ylabel="seconds for one full gradient",
             title="Time for one gradient")
    ax_t.legend(fontsize=8)
    ax_e.loglog(P, rel, "o-", label="max elementwise relative error")
    ax_e.loglog(P, median, "^-", label="median elementwise relative error")
    ax_e.loglog(P, normwise, "s-", label="‖error‖ / ‖gradient‖")
    ax_e.set(xlabel="parameters P", ylabel="relative error", ylim=(1e-13, 1e-3),
             title="Agreement (float64, h = 1e-5)")
    ax_e.legend(fontsize=8)
    for ax in (ax_t, ax_e):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(figure_path(out, "backprop_vs_numerical"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
