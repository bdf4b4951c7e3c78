"""Activations and depth: vanishing gradients in an 8-hidden-layer network.

The same 8-hidden-layer network with sigmoid, tanh, ReLU or GELU hidden units (each with its
default initialisation: Glorot for sigmoid and tanh, He for ReLU and GELU), trained with plain
SGD with momentum, whose steps are proportional to the gradient. For each, the norm of the
loss gradient with respect to each layer's weight matrix, on a fixed batch of training rows, at
initialisation and after training, and the test accuracy reached. One more run trains the
sigmoid network with Adam, which divides each parameter's step by that parameter's recent
gradient size, to see how much a tiny gradient still matters then.

Run: python docs/experiments/activations_depth.py [--out DIR]  (about 3 minutes on 2 cores)
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

ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu")
DEPTH, WIDTH = 8, 64
SEEDS = (0, 1, 2)
N_TRAIN, EPOCHS, BATCH, LR, MOMENTUM = 30000, 8, 64, 0.02, 0.9
ADAM_LR = 1e-3
PROBE_ROWS = 1000         # the batch on which gradient norms are measured
RUNS = [(a, "SGD") for a in ACTIVATIONS] + [("sigmoid", "Adam")]


def layer_grad_norms(net, X, y) -> np.ndarray:
    """‖∂loss/∂W_i‖ for every weight matrix, input side first. net.weights[i] is a view into
    net.params, and the gradient has params' layout, so the same offsets slice it."""
    _, grad = net.loss_and_grad(X, y)
    norms = []
    for W in net.weights:
        start = (W.ctypes.data - net.params.ctypes.data) // net.params.itemsize
        norms.append(np.linalg.norm(grad[start:start + W.size].astype(np.float64)))
    return np.array(norms)


def main():
    out = output_folder(__doc__)
    started = time.perf_counter()
    X, y, X_test, y_test, data_name = load_data(N_TRAIN)
    probe = X[:PROBE_ROWS], y[:PROBE_ROWS]
    sizes = [X.shape[1]] + [WIDTH] * DEPTH + [10]
    results, rows = {}, []
    for activation, optimizer in RUNS:
        before, after, curves, accs = [], [], [], []
        for seed in SEEDS:
            net = cdnn.MLP(sizes, activation=activation, seed=seed)
            before.append(layer_grad_norms(net, *probe))
            opt = (cdnn.SGD(lr=LR, momentum=MOMENTUM) if optimizer == "SGD"
                   else cdnn.Adam(lr=ADAM_LR))
            history = cdnn.Trainer(net, opt, batch_size=BATCH, seed=seed).fit(
                X, y, epochs=EPOCHS, validation_data=(X_test, y_test), verbose=0)
            after.append(layer_grad_norms(net, *probe))
            curves.append(history["val_accuracy"])
            accs.append(history["val_accuracy"][-1])
        # geometric means over seeds: the norms span orders of magnitude
        before, after = np.exp(np.log(before).mean(0)), np.exp(np.log(after).mean(0))
        results[activation, optimizer] = before, after, np.array(curves)
        # W₂ … W₈ all have shape (WIDTH, WIDTH), so their norms compare like with like;
        # the per-layer factor is the geometric mean growth from one to the next
        growth = (before[DEPTH - 1] / before[1]) ** (1 / (DEPTH - 2))
        rows.append([activation, net.init, optimizer, f"{before[0]:.2e}", f"{before[-1]:.2e}",
                     f"{before[1] / before[DEPTH - 1]:.2g}", f"{growth:.2f}",
                     f"{after[0]:.2e}", f"{after[-1]:.2e}", f"{after[1] / after[DEPTH - 1]:.2g}",
                     f"{100 * np.mean(accs):.2f} ± {100 * np.std(accs, ddof=1):.2f}"])
        print(f"{activation:8s} {optimizer:4s} W2/W8 gradient ratio "
              f"{before[1] / before[DEPTH - 1]:.2g} at init, {after[1] / after[DEPTH - 1]:.2g} "
              f"after; test accuracy {[round(a, 4) for a in accs]}", flush=True)

    plot(results, data_name, out)
    table = markdown_table(
        ["activation", "init", "optimizer", "‖∂L/∂W₁‖ at init", "‖∂L/∂W₉‖ at init", "W₂/W₈ at init",
         "growth per layer toward the output, at init", "‖∂L/∂W₁‖ trained", "‖∂L/∂W₉‖ trained",
         "W₂/W₈ trained", "test accuracy % (mean ± sd)"], rows)
    settings = (f"Data: {data_name}. Network {'-'.join(map(str, sizes))} "
                f"(W₁ feeds the first hidden layer, W₉ the output), SGD(lr={LR}, "
                f"momentum={MOMENTUM}) or Adam(lr={ADAM_LR}), batch {BATCH}, {EPOCHS} epochs, "
                f"seeds {list(SEEDS)}. "
                f"Gradient norms: on the first {PROBE_ROWS} training rows, geometric mean over "
                f"the seeds. W₁ ({sizes[0]} × {WIDTH}) and W₉ ({WIDTH} × 10) differ in size "
                f"from the rest, so the ratios compare W₂ and W₈ (both {WIDTH} × {WIDTH}); the "
                f"growth per layer is (‖∂L/∂W₈‖ / ‖∂L/∂W₂‖)^(1/{DEPTH - 2}).")
    write_report(out, "activations_depth", "Activations and depth", settings, table, started)


def plot(results, data_name, out):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    layers = np.arange(1, DEPTH + 2)
    colors = dict(zip(ACTIVATIONS, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for (activation, optimizer), (before, after, curves) in results.items():
        kw = dict(color=colors[activation], marker="o", label=f"{activation}, {optimizer}")
        if optimizer != "SGD":
            kw.update(ls="--", marker="x", ms=7)
        axes[0].semilogy(layers, before, **kw)
        axes[1].semilogy(layers, after, **kw)
        axes[2].plot(np.arange(1, EPOCHS + 1), 100 * curves.mean(0), **kw)
    lo = min(min(r[0].min(), r[1].min()) for r in results.values())
    hi = max(max(r[0].max(), r[1].max()) for r in results.values())
    for ax, when in ((axes[0], "at initialisation"), (axes[1], f"after {EPOCHS} epochs")):
        ax.set(xlabel="layer (1 = input side, 9 = output)", ylabel="‖∂loss/∂W‖",
               title=f"Gradient norm per layer, {when}", xticks=layers,
               ylim=(lo / 2, hi * 2))
    axes[2].set(xlabel="epoch", ylabel="test accuracy (%)", ylim=(0, 100),
                title="Test accuracy (mean over seeds)")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"{DEPTH} hidden layers of {WIDTH} units; SGD with momentum unless marked "
                 f"Adam ({data_name})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(figure_path(out, "activations_depth"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
