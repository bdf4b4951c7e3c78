"""What the suite measures: the contenders, the workloads, the two modes, and the data.

Standard library and numpy only: the worker processes import this before any framework.
"""
from __future__ import annotations

import os
import re

import numpy as np

LR = 0.05
MOMENTUM = 0.9
N_CLASSES = 10
MNIST_TRAIN_ROWS = 60000

# "-bf16": bf16 matrix products on the CPU's matrix engine (AMX or AVX512-BF16): cdnn's
# matmul_precision="bfloat16" (the [onednn] extra), PyTorch's torch.autocast("cpu", bfloat16)
CONTENDERS = ("cdnn", "cdnn-bf16", "torch", "torch-bf16", "jax", "sklearn", "ort")
PEERS = ("torch", "torch-bf16", "jax", "sklearn", "ort")
PEER_NAMES = {"cdnn": "cdnn", "cdnn-openblas": "cdnn (OpenBLAS only)", "cdnn-bf16": "cdnn bf16",
              "torch": "PyTorch",
              "torch-bf16": "PyTorch bf16 autocast", "jax": "JAX", "sklearn": "scikit-learn",
              "ort": "ONNX Runtime"}
# the modules each contender needs (by default its own name): ONNX Runtime runs the model that
# cdnn's to_onnx writes, which needs onnx
MODULES = {"ort": ("onnxruntime", "onnx"), "torch-bf16": ("torch",), "cdnn-bf16": ("cdnn",),
           "cdnn-openblas": ("cdnn",)}
# the distributions behind each peer, as named in pyproject.toml's [bench] extra
DISTRIBUTIONS = {"torch": ("torch",), "torch-bf16": ("torch",), "jax": ("jax", "jaxlib"),
                 "sklearn": ("scikit-learn",), "ort": ("onnxruntime", "onnx")}
# on request only (--contenders): cdnn with every float32 product through OpenBLAS, as it runs
# without the [onednn] extra
OPTIONAL_CONTENDERS = ("cdnn-openblas",)
PREDICT_ONLY = ("ort",)     # an inference runtime: it runs only the predict workloads
PREDICT_KINDS = ("predict1", "predict_batch")

M_SIZES = [784, 512, 512, 10]


def _small(case, sizes, what, contenders=("cdnn", "sklearn")):
    """A small job (cdnn/bench/small.py): `what` describes it in the report."""
    return dict(kind="small", case=case, sizes=sizes, what=what, contenders=contenders)


# kind "train": samples/s over one shuffled epoch; "predict1": single-row latency;
# "predict_batch": rows/s over one call on many rows; "tta": seconds to a test accuracy;
# "alloc": cdnn's memory behaviour across epochs; "small": seconds of one short scikit-learn
# style job (best of the repeats), see cdnn/bench/small.py. `contenders` limits who runs it.
WORKLOADS = {
    "S": dict(kind="train", sizes=[784, 128, 10], batch=32),
    "M": dict(kind="train", sizes=M_SIZES, batch=128),
    "L": dict(kind="train", sizes=[784, 2048, 2048, 10], batch=256),
    "D": dict(kind="train", sizes=[784] + [256] * 8 + [10], batch=64),
    "P1": dict(kind="predict1", sizes=M_SIZES),
    "P1s": dict(kind="predict1", sizes=[784, 128, 10]),
    # P1s on rows with no zeros (uniform in [0.05, 1)), which cdnn's one-row product cannot
    # skip: MNIST rows are 81 % zeros. It shows what P1s's ratio owes to them.
    "P1s-dense": dict(kind="predict1", sizes=[784, 128, 10], inputs="dense"),
    "PB": dict(kind="predict_batch", sizes=M_SIZES, rows=10000),
    "PBs": dict(kind="predict_batch", sizes=[784, 128, 10], rows=10000),
    "TTA": dict(kind="tta", sizes=M_SIZES, batch=128, target=0.98),
    "ALLOC": dict(kind="alloc", sizes=M_SIZES, batch=128, contenders=("cdnn",)),
    "small-lbfgs": _small("lbfgs", [10, 100, 1], "MLPRegressor lbfgs, 200x10"),
    "small-adam": _small("adam", [20, 100, 3], "MLPClassifier adam, 500x20, 200 epochs"),
    "small-sgd": _small("sgd", [20, 100, 3], "MLPClassifier sgd, 500x20, 200 epochs"),
    "small-partial": _small("partial_fit", [20, 100, 3], "100 partial_fit calls of 50 rows"),
    "small-scipy": _small("scipy", [10, 100, 1], "scipy L-BFGS-B on loss_and_grad, 200x10",
                          contenders=("cdnn",)),
}
SMALL_WORKLOADS = [name for name, spec in WORKLOADS.items() if spec["kind"] == "small"]

# Per mode: rows of the training set per epoch for each training workload, repeats, and the
# sizes of the latency/throughput/TTA runs. --quick trades epoch length, never the recipe.
# The small jobs are the same in both modes: they take seconds.
MODES = {
    "quick": dict(
        workloads=(["S", "M", "L", "D", "P1", "P1s", "P1s-dense", "PB", "PBs", "ALLOC"]
                   + SMALL_WORKLOADS),
        rows={"S": 8000, "M": 8000, "L": 2048, "D": 8000, "TTA": MNIST_TRAIN_ROWS, "ALLOC": 4000},
        repeats=3, repeats_slow=3, predict_calls=1000, batch_calls=3, tta_epochs=3,
        alloc_epochs=4, gemm_repeats=5, task_timeout=900,
    ),
    "full": dict(
        workloads=(["S", "M", "D", "P1", "P1s", "P1s-dense", "PB", "PBs", "ALLOC"] + SMALL_WORKLOADS
                   + ["L", "TTA"]),  # longest last
        rows={k: MNIST_TRAIN_ROWS for k in ("S", "M", "L", "D", "TTA", "ALLOC")},
        repeats=5, repeats_slow=3, predict_calls=2000, batch_calls=5, tta_epochs=10,
        alloc_epochs=5, gemm_repeats=9, task_timeout=3600,
    ),
}
SLOW_WORKLOADS = ("L", "TTA")  # these use `repeats_slow` unless --repeats is given
SMALL_REPEATS = 3              # the small jobs report the best of 3 unless --repeats is given


def runs(contender, wl):
    """Whether `contender` takes part in workload `wl`."""
    spec = WORKLOADS[wl]
    if contender in PREDICT_ONLY and spec["kind"] not in PREDICT_KINDS:
        return False
    return contender in spec.get("contenders", (contender,))


def modules(contender):
    """The modules a contender's worker imports (find_spec tells whether it is installed)."""
    return MODULES.get(contender, (contender,))


def param_count(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def task_for(wl, mode):
    """The task a worker runs for workload `wl` in `mode` (a plain dict, sent as JSON)."""
    spec, rows = WORKLOADS[wl], mode["rows"]
    base = dict(kind=spec["kind"], sizes=spec["sizes"])
    if spec["kind"] == "train":
        base.update(batch=spec["batch"], rows=rows[wl])
    elif spec["kind"] == "tta":
        base.update(batch=spec["batch"], rows=rows[wl], target=spec["target"],
                    max_epochs=mode["tta_epochs"])
    elif spec["kind"] == "predict1":
        base.update(calls=mode["predict_calls"], inputs=spec.get("inputs", "test rows"))
    elif spec["kind"] == "predict_batch":
        base.update(rows=spec["rows"], calls=mode["batch_calls"])
    elif spec["kind"] == "alloc":
        base.update(batch=spec["batch"], rows=rows[wl], epochs=mode["alloc_epochs"])
    elif spec["kind"] == "small":
        base.update(case=spec["case"])
    return base


def install_hint(peer):
    """The pip command that installs a peer, with the versions cdnn's [bench] extra names."""
    pins = _bench_extra_pins()
    return "pip install " + " ".join(pins.get(d, d) for d in DISTRIBUTIONS[peer])


def _bench_extra_pins():
    """{distribution: requirement} from the installed cdnn's [bench] extra ({} if not installed)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        requirements = requires("cdnn") or []
    except PackageNotFoundError:
        return {}
    pins = {}
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        if "extra" in marker and '"bench"' in marker:
            name = re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0]
            pins[name] = spec.strip()
    return pins


def _synthetic_mnist(seed=0):
    """MNIST-shaped stand-in: 10 class prototypes plus noise, float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    protos = rng.random((N_CLASSES, 784), dtype=np.float32)

    def make(n):
        y = rng.integers(0, N_CLASSES, n).astype(np.int64)
        X = 0.25 * protos[y] + 0.75 * rng.random((n, 784), dtype=np.float32)
        return X.astype(np.float32), y

    return make(MNIST_TRAIN_ROWS), make(10000)


def load_data(data_dir):
    """Return ((X_train, y_train), (X_test, y_test)), source note."""
    if data_dir is None:
        default = os.path.join(os.getcwd(), "..", "shared", "data", "mnist")
        data_dir = default if os.path.isdir(default) else None
    if data_dir is None or not os.path.isdir(data_dir):
        return _synthetic_mnist(), (
            "no MNIST directory found (--data-dir, or ../shared/data/mnist from the current "
            "directory); using synthetic MNIST-shaped data (60000 x 784 float32, 10 classes)")
    from cdnn.datasets import load_mnist

    (Xtr, ytr), (Xte, yte) = load_mnist(data_dir)

    def f32(a):
        return np.ascontiguousarray(a, dtype=np.float32)

    def i64(a):
        return np.ascontiguousarray(a, dtype=np.int64)

    return ((f32(Xtr), i64(ytr)), (f32(Xte), i64(yte))), f"MNIST from {os.path.abspath(data_dir)}"
