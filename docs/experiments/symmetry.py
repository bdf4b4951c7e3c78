"""Initialisation and symmetry: zeros vs a constant vs random (Glorot, He) initial weights.

A hidden unit is a column of the weight matrix feeding it. If every column starts equal, every
unit computes the same value and receives the same gradient, so the columns stay equal: the
layer behaves as a single unit however wide it is. This script trains the same network from
each initialisation and, after every epoch, counts the distinct columns of the first hidden
layer's weights (exact equality) and their mean pairwise distance; it also reports the test
accuracy reached. Biases start at zero in every case.

Run: python docs/experiments/symmetry.py [--out DIR]  (about 1 minute on 2 cores)
"""
import os

# One BLAS thread, set before numpy loads OpenBLAS: on 2 cores shared with other jobs, the
# threaded GEMM made these small products up to 10x slower (100x, erratically, for timings).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

import cdnn  # noqa: E402
from common import (  # noqa: E402
    figure_path, load_data, markdown_table, output_folder, pyplot, write_report)

HIDDEN = [64, 64]
ACTIVATIONS = ("relu", "sigmoid")
INITS = ("zeros", "constant", "glorot_uniform", "he_uniform")
# (activation, init, dtype): every init in float32, and the symmetric ones again in float64 to
# tell a real break of symmetry from rounding noise
RUNS = ([(a, i, "float32") for a in ACTIVATIONS for i in INITS]
        + [(a, i, "float64") for a in ACTIVATIONS for i in ("zeros", "constant")])
CONSTANT = 0.01           # every weight starts at this value in the "constant" case
TOLERANCE = 1e-3          # units closer than this × the RMS column norm count as one
N_TRAIN, EPOCHS, BATCH, LR, SEED = 10000, 10, 64, 1e-3, 0


def unit_spread(W: np.ndarray) -> tuple[int, int, float]:
    """(distinct columns bit for bit, distinct columns at a relative tolerance, mean Euclidean
    distance over all pairs of columns)."""
    columns = W.T.astype(np.float64)
    exact = len(np.unique(W.T, axis=0))
    # direct differences: the |a|² + |b|² − 2a·b shortcut cancels catastrophically here
    dist = np.sqrt(((columns[:, None, :] - columns[None, :, :]) ** 2).sum(axis=2))
    k = len(columns)
    scale = TOLERANCE * max(np.sqrt((columns ** 2).sum(axis=1).mean()), np.finfo(float).tiny)
    groups = []                    # greedy: a unit farther than tol from every group starts one
    for j in range(k):
        if all(dist[j, g] > scale for g in groups):
            groups.append(j)
    return exact, len(groups), float(dist[np.triu_indices(k, 1)].mean())


class Spread(cdnn.Callback):
    """Records unit_spread of the first hidden layer after every epoch."""

    def __init__(self, net):
        self.values = [unit_spread(net.weights[0])]

    def on_epoch_end(self, epoch, logs=None):
        self.values.append(unit_spread(self.trainer.net.weights[0]))


def run(activation: str, init: str, dtype: str, data):
    X, y, X_test, y_test = data
    net = cdnn.MLP([X.shape[1], *HIDDEN, 10], activation=activation,
                   init="zeros" if init == "constant" else init, dtype=dtype, seed=SEED)
    if init == "constant":
        for W in net.weights:
            W[...] = CONSTANT
    spread = Spread(net)
    history = cdnn.Trainer(net, cdnn.Adam(lr=LR), batch_size=BATCH, seed=SEED).fit(
        X, y, epochs=EPOCHS, validation_data=(X_test, y_test), callbacks=[spread], verbose=0)
    W = net.weights[0]
    max_dev = float(np.abs(W - W[:, :1]).max())   # largest gap between any unit and unit 0
    return spread.values, [np.nan] + history["val_accuracy"], max_dev, float(np.abs(W).max())


def main():
    out = output_folder(__doc__)
    started = time.perf_counter()
    X, y, X_test, y_test, data_name = load_data(N_TRAIN)
    results, rows = {}, []
    for activation, init, dtype in RUNS:
        spread, acc, max_dev, max_w = run(activation, init, dtype, (X, y, X_test, y_test))
        results[activation, init, dtype] = spread, acc
        label = f"constant {CONSTANT}" if init == "constant" else init
        rows.append([activation, label, dtype, f"{spread[0][0]} → {spread[-1][0]}",
                     f"{spread[0][1]} → {spread[-1][1]}",
                     f"{spread[0][2]:.3g} → {spread[-1][2]:.3g}", f"{max_dev:.3g}",
                     f"{max_w:.3g}", f"{100 * acc[-1]:.2f}"])
        print(f"{activation:8s} {label:15s} {dtype} distinct {spread[0][0]}→{spread[-1][0]} "
              f"(at tolerance {spread[-1][1]}), test accuracy {acc[-1]:.4f}", flush=True)

    plot(results, data_name, out)
    table = markdown_table(
        ["activation", "initial weights", "dtype",
         f"distinct units (of {HIDDEN[0]}), bit for bit, start → end",
         f"distinct at tolerance {TOLERANCE:g}, start → end", "mean pairwise distance, start → end",
         "largest gap between units, max \\|W[:, j] − W[:, 0]\\| at end",
         "max \\|W\\| at end", "test accuracy %"], rows)
    n_in = X.shape[1]
    settings = (f"Data: {data_name}. Network {n_in}-{'-'.join(map(str, HIDDEN))}-10, biases "
                f"zero at the start, Adam(lr={LR}), batch {BATCH}, {EPOCHS} epochs, seed {SEED}. "
                f"The units are the {HIDDEN[0]} columns of the first hidden layer's weight "
                f"matrix ({n_in} × {HIDDEN[0]}). Bit for bit: the number of different columns; "
                f"at tolerance: columns within {TOLERANCE:g} × the RMS column norm of each other "
                f"count as one unit.")
    write_report(out, "symmetry", "Initialisation and symmetry", settings, table, started)


def plot(results, data_name, out):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    epochs = np.arange(EPOCHS + 1)
    colors = dict(zip(INITS, ("tab:red", "tab:orange", "tab:blue", "tab:green")))
    styles = dict(zip(ACTIVATIONS, ("-", "--")))
    for (activation, init, dtype), (spread, acc) in results.items():
        label = f"{init if init != 'constant' else f'constant {CONSTANT}'}, {activation}"
        kw = dict(color=colors[init], ls=styles[activation], marker="o", ms=3, label=label)
        if dtype == "float64":
            kw.update(marker="x", ms=6, lw=0.8, label=label + ", float64")
        axes[0].plot(epochs, [s[0] for s in spread], **kw)
        axes[1].plot(epochs, [s[2] for s in spread], **kw)
        axes[2].plot(epochs, 100 * np.array(acc), **kw)
    axes[0].set(title=f"Distinct units in hidden layer 1 (of {HIDDEN[0]})", xlabel="epoch",
                ylabel="distinct weight columns (bit for bit)", yscale="log")
    axes[1].set(title="Mean pairwise distance between units", xlabel="epoch",
                ylabel="mean ‖W[:, i] − W[:, j]‖ (0 at the bottom)")
    # symlog: exact zeros stay visible, and rounding-level gaps (~1e-7) still show
    axes[1].set_yscale("symlog", linthresh=1e-8)
    axes[2].set(title="Test accuracy", xlabel="epoch", ylabel="%", ylim=(0, 100))
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(0.83, 0.5))
    fig.suptitle(f"The units of hidden layer 1 under each initialisation ({data_name})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    fig.savefig(figure_path(out, "symmetry"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
