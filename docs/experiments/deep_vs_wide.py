"""Deep vs wide at an equal parameter count.

Networks with 1, 2, 4 and 8 hidden ReLU layers of equal width, the widths chosen so that every
network has (within 2%) as many parameters as the 1-layer network of width 64. Same data,
optimizer, batch size and epochs for all; 3 seeds each. Prints test accuracy (mean ± sd) and
writes the learning curves to docs/figures/deep_vs_wide.png.

Run: python docs/experiments/deep_vs_wide.py [--out DIR]  (about 3 minutes on 2 cores)
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

DEPTHS = (1, 2, 4, 8)
BASE_WIDTH = 64           # the 1-hidden-layer network sets the parameter budget
SEEDS = (0, 1, 2)
N_TRAIN, EPOCHS, BATCH, LR = 60000, 10, 64, 1e-3


def n_params(n_in: int, depth: int, width: int, n_out: int) -> int:
    sizes = [n_in] + [width] * depth + [n_out]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def width_for(n_in: int, depth: int, n_out: int, budget: int) -> int:
    """The width whose parameter count is closest to the budget."""
    return min(range(1, 4 * BASE_WIDTH),
               key=lambda w: abs(n_params(n_in, depth, w, n_out) - budget))


def main():
    out = output_folder(__doc__)
    started = time.perf_counter()
    X, y, X_test, y_test, data_name = load_data(N_TRAIN)
    n_in, n_out = X.shape[1], 10
    budget = n_params(n_in, 1, BASE_WIDTH, n_out)
    rows, curves = [], {}
    for depth in DEPTHS:
        width = width_for(n_in, depth, n_out, budget)
        sizes = [n_in] + [width] * depth + [n_out]
        count = n_params(n_in, depth, width, n_out)
        assert abs(count - budget) <= 0.02 * budget, (depth, width, count)
        accs, test_curves, loss_curves, seconds = [], [], [], []
        for seed in SEEDS:
            net = cdnn.MLP(sizes, activation="relu", seed=seed)
            assert net.params.size == count
            t = time.perf_counter()
            history = cdnn.Trainer(net, cdnn.Adam(lr=LR), batch_size=BATCH, seed=seed).fit(
                X, y, epochs=EPOCHS, validation_data=(X_test, y_test), verbose=0)
            seconds.append(time.perf_counter() - t)
            accs.append(history["val_accuracy"][-1])
            test_curves.append(history["val_accuracy"])
            loss_curves.append(history["loss"])
        curves[depth] = (width, np.array(loss_curves), np.array(test_curves))
        rows.append([depth, width, f"{count:,}", f"{100 * (count - budget) / budget:+.2f}%",
                     f"{100 * np.mean(accs):.2f} ± {100 * np.std(accs, ddof=1):.2f}",
                     f"{100 * max(accs):.2f}", f"{np.mean(seconds):.1f}"])
        print(f"depth {depth}: width {width}, {count} params, test accuracy "
              f"{[round(a, 4) for a in accs]}", flush=True)

    plot(curves, data_name, out)
    table = markdown_table(["hidden layers", "width", "parameters", "vs budget",
                            "test accuracy % (mean ± sd, 3 seeds)", "best seed %",
                            "train s / run"], rows)
    settings = (f"Data: {data_name}. ReLU hidden layers, He-uniform init, Adam(lr={LR}), "
                f"batch {BATCH}, {EPOCHS} epochs, seeds {list(SEEDS)}; the parameter budget is "
                f"the 1×{BASE_WIDTH} network's {budget:,}. Accuracy is on the test set after the "
                f"last epoch.")
    write_report(out, "deep_vs_wide", "Deep vs wide at an equal parameter count", settings, table,
                 started)


def plot(curves, data_name, out):
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, EPOCHS + 1)
    for depth, (width, losses, tests) in curves.items():
        label = f"{depth} × {width}"
        for ax, values in ((ax_loss, losses), (ax_acc, 100 * tests)):
            mean, sd = values.mean(axis=0), values.std(axis=0, ddof=1)
            line, = ax.plot(epochs, mean, marker="o", ms=3, label=label)
            ax.fill_between(epochs, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
    ax_loss.set(xlabel="epoch", ylabel="training loss (epoch mean)", yscale="log",
                title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(title="hidden layers × width")
    fig.suptitle(f"Equal parameter count ({data_name}); mean ± sd over {len(SEEDS)} seeds",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(figure_path(out, "deep_vs_wide"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
