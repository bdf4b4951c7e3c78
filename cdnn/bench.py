"""Benchmark suite: cdnn against PyTorch, JAX and scikit-learn on MNIST-sized MLPs.

    cdnn bench --quick                      # about a minute, smaller epochs
    python bench/run.py --full --json bench/results.json --markdown bench/RESULTS.md

How it measures, and why:
- Every measurement runs in a worker subprocess that holds one contender only, so the
  contenders' thread pools (OpenBLAS, MKL/OpenMP, XLA's Eigen pool) never share a process,
  and the worker reports its own peak RSS. `--full` starts a fresh process per measurement;
  `--quick` keeps one process per contender and resets the peak-RSS mark (/proc clear_refs)
  before each measurement, which saves the imports but counts what the process already holds.
- Contenders alternate within a repeat (cdnn, torch, jax, sklearn, cdnn, torch, ...) so drift
  on a shared machine hits all of them alike; tables show medians over the repeats.
- Every contender gets the same untimed warm-up (a throwaway model, a few steps); for JAX that
  warm-up is the compile of each batch shape, timed and reported separately.
- The peers are written the way a competent user writes them: PyTorch eager with manual
  batching over a shuffled index; JAX with the whole SGD-momentum step under `jax.jit`;
  scikit-learn's own `MLPClassifier(solver="sgd")`. Thread counts are left at their defaults.
- Benchmarks measure and print. Nothing here asserts on a timing or fails because of one.

This module imports only the standard library and numpy at import time; torch, jax, sklearn
and cdnn's own core are imported inside the worker of the contender that needs them, and a
contender that is not installed is skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import json
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from types import SimpleNamespace

import numpy as np

# ============================================================================================
# Workloads, modes and targets
# ============================================================================================

LR = 0.05
MOMENTUM = 0.9
N_CLASSES = 10
MNIST_TRAIN_ROWS = 60000

CONTENDERS = ("cdnn", "torch", "jax", "sklearn")
PEERS = ("torch", "jax", "sklearn")
MODULE_OF = {"cdnn": "cdnn", "torch": "torch", "jax": "jax", "sklearn": "sklearn"}

M_SIZES = [784, 512, 512, 10]

# kind "train": samples/s over one shuffled epoch; "predict1": single-row latency;
# "predict_batch": rows/s over one call on many rows; "tta": seconds to a test accuracy;
# "alloc": cdnn's memory behaviour across epochs.
WORKLOADS = {
    "S": dict(kind="train", sizes=[784, 128, 10], batch=32),
    "M": dict(kind="train", sizes=M_SIZES, batch=128),
    "L": dict(kind="train", sizes=[784, 2048, 2048, 10], batch=256),
    "D": dict(kind="train", sizes=[784] + [256] * 8 + [10], batch=64),
    "P1": dict(kind="predict1", sizes=M_SIZES),
    "P1s": dict(kind="predict1", sizes=[784, 128, 10]),
    # P1s on rows with no zeros (uniform in [0.05, 1)), which cdnn's one-row product cannot
    # skip: MNIST rows are 81 % zeros. Not one of the targets; it shows what P1s's
    # ratio owes to them.
    "P1s-dense": dict(kind="predict1", sizes=[784, 128, 10], inputs="dense"),
    "PB": dict(kind="predict_batch", sizes=M_SIZES, rows=10000),
    "TTA": dict(kind="tta", sizes=M_SIZES, batch=128, target=0.98),
    "ALLOC": dict(kind="alloc", sizes=M_SIZES, batch=128),
}

# Per mode: rows of the training set per epoch for each training workload, repeats, and the
# sizes of the latency/throughput/TTA runs. --quick trades epoch length, never the recipe.
MODES = {
    "quick": dict(
        workloads=["S", "M", "L", "D", "P1", "P1s", "P1s-dense", "PB", "ALLOC"],
        rows={"S": 8000, "M": 8000, "L": 2048, "D": 8000, "TTA": MNIST_TRAIN_ROWS, "ALLOC": 4000},
        repeats=3, repeats_slow=3, predict_calls=1000, batch_calls=3, tta_epochs=3,
        alloc_epochs=4, gemm_repeats=5, fresh_process=False, task_timeout=900,
    ),
    "full": dict(
        workloads=["S", "M", "D", "P1", "P1s", "P1s-dense", "PB", "ALLOC", "L", "TTA"],  # longest last
        rows={k: MNIST_TRAIN_ROWS for k in ("S", "M", "L", "D", "TTA", "ALLOC")},
        repeats=5, repeats_slow=3, predict_calls=2000, batch_calls=5, tta_epochs=10,
        alloc_epochs=5, gemm_repeats=9, fresh_process=True, task_timeout=3600,
    ),
}
SLOW_WORKLOADS = ("L", "TTA")  # these use `repeats_slow` unless --repeats is given

# The targets. Throughput targets are cdnn/best-peer (higher is better); latency and
# time-to-accuracy targets are cdnn-time/best-peer-time (lower is better).
TARGETS = {
    "S": (">=", 2.0), "M": (">=", 1.3), "L": (">=", 1.0), "D": (">=", 1.8),
    "P1": ("<=", 0.6), "P1s": ("<=", 0.25), "PB": (">=", 1.2), "TTA": ("<=", 0.6),
}
L_SGEMM_TARGET = 0.90  # L's training GFLOP/s as a fraction of the 2048^3 sgemm rate


def param_count(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


# ============================================================================================
# Contenders (each imported only inside its own worker process)
# ============================================================================================


WARMUP_BATCHES = 16  # untimed steps on a throwaway model before every timed run


def _he_uniform(rng, fan_in, fan_out):
    bound = np.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32)


class CdnnContender:
    name = "cdnn"

    def __init__(self):
        import cdnn

        self.cdnn = cdnn

    def build(self, sizes, batch, seed, X, y):
        cdnn = self.cdnn
        net = cdnn.MLP(sizes, activation="relu", loss="softmax_cross_entropy",
                       dtype="float32", seed=seed)
        trainer = cdnn.Trainer(net, cdnn.SGD(lr=LR, momentum=MOMENTUM), batch_size=batch, seed=seed)
        return SimpleNamespace(net=net, trainer=trainer, X=X, y=y)

    def warmup(self, sizes, batch, X, y):
        m = self.build(sizes, batch, 12345, X[: WARMUP_BATCHES * batch], y[: WARMUP_BATCHES * batch])
        self.train_epoch(m)

    def train_epoch(self, m):
        m.trainer.fit(m.X, m.y, epochs=1, shuffle=True, verbose=0)

    def predict(self, m, X):
        return np.asarray(m.net.predict(X))

    def predictor(self, m):
        return m.net.predict, contextlib.nullcontext


class TorchContender:
    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch

    def build(self, sizes, batch, seed, X, y):
        torch, nn = self.torch, self.torch.nn
        torch.manual_seed(seed)
        # The same recipe as the others: He-uniform weights and zero biases (torch's default,
        # U(±1/√fan_in) for both, trains to another one-epoch accuracy)
        rng, layers = np.random.default_rng(seed), []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            linear = nn.Linear(fan_in, fan_out)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(_he_uniform(rng, fan_in, fan_out).T))
                linear.bias.zero_()
            layers += [linear, nn.ReLU()]
        model = nn.Sequential(*layers[:-1])
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        return SimpleNamespace(model=model, opt=opt, loss_fn=nn.CrossEntropyLoss(), batch=batch,
                               X=torch.from_numpy(X), y=torch.from_numpy(y),
                               gen=torch.Generator().manual_seed(seed))

    def warmup(self, sizes, batch, X, y):
        m = self.build(sizes, batch, 12345, X[: WARMUP_BATCHES * batch], y[: WARMUP_BATCHES * batch])
        self.train_epoch(m)

    def train_epoch(self, m):
        model, opt, loss_fn, X, y, batch = m.model, m.opt, m.loss_fn, m.X, m.y, m.batch
        model.train()
        perm = self.torch.randperm(X.shape[0], generator=m.gen)
        for start in range(0, X.shape[0], batch):
            idx = perm[start:start + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()

    def predict(self, m, X):
        m.model.eval()
        with self.torch.inference_mode():
            return m.model(self.torch.from_numpy(X)).argmax(1).numpy()

    def predictor(self, m):
        model, from_numpy = m.model, self.torch.from_numpy
        model.eval()

        def predict(x):
            return model(from_numpy(x)).argmax(1)

        return predict, self.torch.inference_mode


class JaxContender:
    name = "jax"

    def __init__(self):
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp

        def forward(params, x):
            for W, b in params[:-1]:
                x = jax.nn.relu(x @ W + b)
            W, b = params[-1]
            return x @ W + b

        def loss_fn(params, xb, yb):
            logp = jax.nn.log_softmax(forward(params, xb))
            return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

        def step(params, vel, X, y, idx):
            # gather, forward, loss, grad and the momentum update: one compiled call
            grads = jax.grad(loss_fn)(params, X[idx], y[idx])
            vel = jax.tree.map(lambda v, g: MOMENTUM * v + g, vel, grads)
            params = jax.tree.map(lambda p, v: p - LR * v, params, vel)
            return params, vel

        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.predict_fn = jax.jit(lambda params, x: jnp.argmax(forward(params, x), axis=1))

    def build(self, sizes, batch, seed, X, y):
        jax, jnp = self.jax, self.jnp
        rng = np.random.default_rng(seed)
        params = [(jnp.asarray(_he_uniform(rng, a, b)), jnp.zeros(b, jnp.float32))
                  for a, b in zip(sizes[:-1], sizes[1:])]
        vel = jax.tree.map(jnp.zeros_like, params)
        return SimpleNamespace(params=params, vel=vel, batch=batch, rng=rng,
                               X=jax.device_put(X), y=jax.device_put(y.astype(np.int32)))

    def warmup(self, sizes, batch, X, y):
        """Compile the step for the full-batch shape and the epoch's tail shape; return seconds.
        The whole X is an argument of the step, so the warm-up model must hold all of it."""
        m = self.build(sizes, batch, 12345, X, y)
        seconds = 0.0
        for rows in sorted({batch, X.shape[0] % batch} - {0}, reverse=True):
            idx = np.arange(rows, dtype=np.int32)
            t0 = time.perf_counter()
            m.params, m.vel = self.step(m.params, m.vel, m.X, m.y, idx)
            self.jax.block_until_ready(m.params)
            seconds += time.perf_counter() - t0
        return seconds

    def train_epoch(self, m):
        n, batch, step = m.X.shape[0], m.batch, self.step
        perm = m.rng.permutation(n).astype(np.int32)
        params, vel = m.params, m.vel
        for start in range(0, n, batch):
            params, vel = step(params, vel, m.X, m.y, perm[start:start + batch])
        self.jax.block_until_ready(params)
        m.params, m.vel = params, vel

    def predict(self, m, X):
        return np.asarray(self.predict_fn(m.params, X))

    def predictor(self, m):
        params, predict_fn = m.params, self.predict_fn

        def predict(x):
            return predict_fn(params, x).block_until_ready()

        return predict, contextlib.nullcontext


class SklearnContender:
    name = "sklearn"

    def __init__(self):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        self.MLPClassifier, self.ConvergenceWarning = MLPClassifier, ConvergenceWarning

    def build(self, sizes, batch, seed, X, y):
        clf = self.MLPClassifier(
            hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu", solver="sgd",
            learning_rate="constant", learning_rate_init=LR, momentum=MOMENTUM,
            nesterovs_momentum=False, batch_size=batch, alpha=0.0, max_iter=1, shuffle=True,
            tol=0.0, n_iter_no_change=np.inf, early_stopping=False, random_state=seed)
        return SimpleNamespace(clf=clf, X=X, y=y, fitted=False)

    def warmup(self, sizes, batch, X, y):
        m = self.build(sizes, batch, 12345, X[: WARMUP_BATCHES * batch], y[: WARMUP_BATCHES * batch])
        self.train_epoch(m)

    def train_epoch(self, m):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", self.ConvergenceWarning)
            if not m.fitted:  # first epoch: fit(max_iter=1), as the issue specifies
                m.clf.fit(m.X, m.y)
                m.fitted = True
            else:  # later epochs (TTA): partial_fit keeps the momentum buffers
                m.clf.partial_fit(m.X, m.y)

    def predict(self, m, X):
        return m.clf.predict(X)

    def predictor(self, m):
        if not m.fitted:  # MLPClassifier cannot predict before it has seen the classes
            self.train_epoch(m)
        return m.clf.predict, contextlib.nullcontext


CONTENDER_CLASSES = {c.name: c for c in (CdnnContender, TorchContender, JaxContender,
                                           SklearnContender)}


# ============================================================================================
# Worker side: one process, one contender, tasks read as JSON lines from stdin
# ============================================================================================


def _proc_status_mb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if field == "VmHWM":  # ru_maxrss is in KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return None


def _reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Data:
    def __init__(self, folder):
        self.folder, self.cache = folder, {}

    def __getitem__(self, name):
        if name not in self.cache:
            self.cache[name] = np.load(os.path.join(self.folder, name + ".npy"))
        return self.cache[name]


def _accuracy(c, m, data):
    return float(np.mean(c.predict(m, data["X_test"]) == data["y_test"]))


def _task_train(c, data, t):
    X, y = data["X_train"][: t["rows"]], data["y_train"][: t["rows"]]
    compile_s = c.warmup(t["sizes"], t["batch"], X, y)
    m = c.build(t["sizes"], t["batch"], t["seed"], X, y)
    gc.collect()
    cpu0, t0 = time.process_time(), time.perf_counter()
    c.train_epoch(m)
    seconds = time.perf_counter() - t0
    # CPU seconds of all the process's threads over the epoch: far below cores x seconds
    # means the process was waiting for a CPU (another program had it)
    cpu = time.process_time() - cpu0
    return dict(seconds=seconds, cpu_s=cpu, rows=len(X), compile_s=compile_s,
                test_accuracy=_accuracy(c, m, data))


def _task_tta(c, data, t):
    X, y = data["X_train"][: t["rows"]], data["y_train"][: t["rows"]]
    compile_s = c.warmup(t["sizes"], t["batch"], X, y)
    m = c.build(t["sizes"], t["batch"], t["seed"], X, y)
    clock, curve = 0.0, []
    for epoch in range(1, t["max_epochs"] + 1):
        gc.collect()
        t0 = time.perf_counter()
        c.train_epoch(m)
        clock += time.perf_counter() - t0
        acc = _accuracy(c, m, data)  # evaluation is off the clock
        curve.append([epoch, clock, acc])
        if acc >= t["target"]:
            return dict(seconds=clock, reached=True, epochs=epoch, curve=curve, compile_s=compile_s)
    return dict(seconds=None, reached=False, epochs=t["max_epochs"], curve=curve,
                compile_s=compile_s)


def _task_predict1(c, data, t):
    m = c.build(t["sizes"], 32, t["seed"], data["X_train"][:2000], data["y_train"][:2000])
    predict, context = c.predictor(m)
    X_test = data["X_test"]
    if t.get("inputs") == "dense":
        rng = np.random.default_rng(t["seed"])
        X_test = rng.uniform(0.05, 1, X_test.shape).astype(np.float32)
    rows = [X_test[i % len(X_test): i % len(X_test) + 1] for i in range(t["calls"])]
    times = np.empty(len(rows))
    clock = time.perf_counter
    with context():
        for x in rows[:100]:  # warm-up (and JAX's compile for this shape)
            predict(x)
        for i, x in enumerate(rows):
            t0 = clock()
            predict(x)
            times[i] = clock() - t0
    return dict(seconds=float(np.median(times)), p10=float(np.percentile(times, 10)),
                p90=float(np.percentile(times, 90)), calls=len(rows))


def _task_predict_batch(c, data, t):
    m = c.build(t["sizes"], 32, t["seed"], data["X_train"][:2000], data["y_train"][:2000])
    predict, context = c.predictor(m)
    X = np.ascontiguousarray(data["X_test"][: t["rows"]])
    times = []
    with context():
        predict(X)  # warm-up (and JAX's compile for this shape)
        for _ in range(t["calls"]):
            t0 = time.perf_counter()
            predict(X)
            times.append(time.perf_counter() - t0)
    return dict(seconds=statistics.median(times), rows=len(X), inner=times)


def _task_alloc(c, data, t):
    """RSS after each epoch (should be flat from the 2nd on) and tracemalloc over one epoch."""
    import tracemalloc

    X, y = data["X_train"][: t["rows"]], data["y_train"][: t["rows"]]
    m = c.build(t["sizes"], t["batch"], t["seed"], X, y)
    rss = []
    for _ in range(t["epochs"]):
        c.train_epoch(m)
        gc.collect()
        rss.append(_proc_status_mb("VmRSS"))
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    c.train_epoch(m)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return dict(rss_mb_after_epoch=rss, tracemalloc_peak_kib=(peak - base) / 1024.0,
                tracemalloc_growth_kib=(current - base) / 1024.0, rows=len(X))


def _task_gemm(c, data, t):
    n = t["n"]
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a @ b
    times = []
    for _ in range(t["calls"]):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    return dict(seconds=seconds, gflops=2.0 * n ** 3 / seconds / 1e9, inner=times)


def _task_info(c, data, t):
    info = {"pid": os.getpid()}
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [{k: p.get(k) for k in ("internal_api", "num_threads", "version",
                                                     "threading_layer", "filepath")}
                               for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    if c is not None and c.name == "torch":
        info["torch_num_threads"] = c.torch.get_num_threads()
        info["torch_config"] = c.torch.__config__.parallel_info()
    if c is not None and c.name == "jax":
        info["jax_devices"] = [str(d) for d in c.jax.devices()]
    if c is not None and c.name == "cdnn":
        info["cdnn_file"] = c.cdnn.__file__
    return info


TASKS = {"train": _task_train, "tta": _task_tta, "predict1": _task_predict1,
         "predict_batch": _task_predict_batch, "alloc": _task_alloc, "gemm": _task_gemm,
         "info": _task_info}


def _worker_loop(contender, data_folder):
    """Serve tasks until stdin closes. The protocol uses a private copy of stdout; the real
    fd 1 is pointed at stderr so that whatever a library prints cannot corrupt it."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    data = _Data(data_folder)
    try:
        c = CONTENDER_CLASSES[contender]() if contender in CONTENDER_CLASSES else None
    except ImportError as exc:
        send(dict(ready=False, skipped=True, error=f"{type(exc).__name__}: {exc}"))
        return
    except Exception:
        send(dict(ready=False, error=traceback.format_exc()))
        return
    data["X_train"], data["X_test"]  # load before "ready", so the load is never timed
    send(dict(ready=True))
    for line in sys.stdin:
        task = json.loads(line)
        reset = task.get("reset_peak") and _reset_peak_rss()
        rss_before = _proc_status_mb("VmRSS")
        try:
            result = dict(ok=True, **TASKS[task["kind"]](c, data, task))
        except Exception:
            result = dict(ok=False, error=traceback.format_exc())
        result.update(peak_rss_mb=_proc_status_mb("VmHWM"), rss_before_mb=rss_before,
                      peak_reset=bool(reset))
        send(result)


# ============================================================================================
# Parent side: workers, scheduling, data, machine info
# ============================================================================================


class Worker:
    """A subprocess serving one contender; `run` sends one task and waits for its answer."""

    def __init__(self, contender, data_folder, timeout):
        here = os.path.abspath(__file__)
        package_parent = os.path.dirname(os.path.dirname(here))
        # Load this file by path, not as `cdnn.bench`, so a peer's process never imports cdnn;
        # put cdnn's parent first on the path so cdnn's worker gets the same cdnn as we did.
        code = ("import importlib.util, sys\n"
                f"sys.path.insert(0, {package_parent!r})\n"
                f"spec = importlib.util.spec_from_file_location('_cdnn_bench_worker', {here!r})\n"
                "mod = importlib.util.module_from_spec(spec)\n"
                "spec.loader.exec_module(mod)\n"
                f"mod._worker_loop({contender!r}, {data_folder!r})\n")
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
                   PYTHONWARNINGS=os.environ.get("PYTHONWARNINGS", "ignore"))
        self.contender, self.timeout = contender, timeout
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True,
                                     bufsize=1, cwd=os.getcwd(), env=env)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self._receive()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _receive(self):
        try:
            line = self.lines.get(timeout=self.timeout)
        except queue.Empty:
            self.close()
            return dict(ok=False, error=f"timed out after {self.timeout} s")
        if line is None:
            return dict(ok=False, error="worker exited: " + self.stderr_tail())
        return json.loads(line)

    def stderr_tail(self, chars=2000):
        self.stderr.seek(0)
        return self.stderr.read()[-chars:]

    def alive(self):
        return self.proc.poll() is None and self.ready.get("ready", False)

    def run(self, task):
        try:
            self.proc.stdin.write(json.dumps(task) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return dict(ok=False, error="worker is gone: " + self.stderr_tail())
        return self._receive()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def _load1():
    """The 1-minute load average (None where the OS has none): a busy machine skews timings."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


PAUSE_S = 0.3  # longer than the usual OpenMP/OpenBLAS spin-wait after a parallel region


class Runner:
    """Hands tasks to workers: a fresh process per task, or one long-lived process per contender."""

    def __init__(self, data_folder, fresh, timeout, log):
        self.data_folder, self.fresh, self.timeout, self.log = data_folder, fresh, timeout, log
        self.workers, self.unavailable = {}, {}

    def start(self, contenders):
        """Persistent mode: start every worker (imports, data) before anything is timed."""
        if not self.fresh:
            for name in contenders:
                self._worker(name)

    def _worker(self, name):
        w = self.workers.get(name)
        if w is None or not w.alive():
            if w is not None:
                w.close()
            w = Worker(name, self.data_folder, self.timeout)
            self.workers[name] = w
        return w

    def run(self, name, task):
        if name in self.unavailable:
            return dict(ok=False, skipped=True, error=self.unavailable[name])
        w = self._worker(name)
        if not w.ready.get("ready"):
            err = w.ready.get("error", "worker did not start")
            if w.ready.get("skipped"):
                self.unavailable[name] = err
            w.close()
            self.workers.pop(name, None)
            return dict(ok=False, skipped=bool(w.ready.get("skipped")), error=err)
        if not self.fresh and task["kind"] in ("train", "tta"):
            time.sleep(PAUSE_S)  # let the previous contender's spinning thread pool go idle
        load_before, t0 = _load1(), time.perf_counter()
        result = w.run(dict(task, reset_peak=not self.fresh))
        result.update(task_wall_s=time.perf_counter() - t0, load1_before=load_before,
                      load1_after=_load1())
        if self.fresh or not w.alive():
            w.close()
            self.workers.pop(name, None)
        if not result.get("ok"):
            self.log(f"  ! {name} {task['kind']} failed: {result.get('error', '').strip()[-600:]}")
        return result

    def close(self):
        for w in self.workers.values():
            w.close()
        self.workers.clear()


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
    if data_dir is not None and os.path.isdir(data_dir):
        try:
            from cdnn.datasets import load_mnist
        except ImportError as exc:
            note = f"cdnn.datasets.load_mnist unavailable ({exc}); using synthetic MNIST-shaped data"
        else:
            (Xtr, ytr), (Xte, yte) = load_mnist(data_dir)
            to32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
            to64 = lambda a: np.ascontiguousarray(a, dtype=np.int64)  # noqa: E731
            return ((to32(Xtr), to64(ytr)), (to32(Xte), to64(yte))), \
                f"MNIST from {os.path.abspath(data_dir)}"
    else:
        note = ("no MNIST directory found (--data-dir, or ../shared/data/mnist from the current "
                "directory); using synthetic MNIST-shaped data (60000 x 784 float32, 10 classes)")
    return _synthetic_mnist(), note


def _version(dist):
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = dict(cpu=cpu, logical_cores=os.cpu_count(), usable_cores=usable,
                platform=platform.platform(), python=platform.python_version())
    info["versions"] = {name: _version(dist) for name, dist in (
        ("numpy", "numpy"), ("scipy", "scipy"), ("torch", "torch"), ("jax", "jax"),
        ("jaxlib", "jaxlib"), ("sklearn", "scikit-learn"), ("cdnn", "cdnn"),
        ("threadpoolctl", "threadpoolctl"))}
    try:
        import scipy.linalg  # noqa: F401  (so threadpoolctl also lists scipy's BLAS, cdnn's)
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: p.get(k) for k in ("internal_api", "prefix", "version",
                                               "num_threads", "threading_layer", "architecture")}
                        for p in threadpool_info()]
    except ImportError:
        info["blas"] = "threadpoolctl (or scipy) not installed"
    from cdnn._native import VARIANT    # the workers inherit CDNN_KERNELS, so the same build

    info["cdnn_kernels"] = VARIANT
    mem = _proc_meminfo_gib()
    if mem:
        info["memory_gib"] = mem
    return info


def _proc_meminfo_gib():
    try:
        with open("/proc/meminfo") as f:
            return round(int(f.readline().split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        return None


# ============================================================================================
# Running the workloads
# ============================================================================================


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _task_for(wl, mode):
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
    return base


def _brief(kind, res):
    if not res.get("ok"):
        return "skipped" if res.get("skipped") else "FAILED"
    if kind == "predict1":
        return f"{res['seconds'] * 1e6:.0f} us"
    if kind == "tta":
        return f"{res['seconds']:.1f} s" if res["reached"] else "not reached"
    if kind == "alloc":
        return f"rss {['%.0f' % r for r in res['rss_mb_after_epoch']]} MB"
    return f"{res['rows'] / res['seconds']:,.0f}/s"


def _run_workload(wl, mode, args, runner, present, log):
    kind = WORKLOADS[wl]["kind"]
    task = _task_for(wl, mode)
    if kind == "alloc":
        who, repeats = [c for c in present if c == "cdnn"], 1
        if not who:
            log(f"{wl:>5}: needs cdnn, skipped")
    else:
        who = present
        repeats = args.repeats or (mode["repeats_slow"] if wl in SLOW_WORKLOADS else mode["repeats"])
    raw = {c: [] for c in who}
    for r in range(repeats if who else 0):
        for c in who:  # alternate contenders within every repeat
            raw[c].append(runner.run(c, dict(task, seed=r)))
        load = _load1()
        log(f"{wl:>5} repeat {r + 1}/{repeats}: " +
            ", ".join(f"{c} {_brief(kind, raw[c][-1])}" for c in who) +
            ("" if load is None else f"   [load {load:.1f}]"))
    return dict(task=task, repeats=repeats, raw=raw)


def run_suite(args, log, report, checkpoint=lambda: None):
    """Run the workloads, filling `report` in place; `checkpoint()` after each workload."""
    mode = MODES["full" if args.full else "quick"]
    workloads = args.workloads or mode["workloads"]
    notes = []
    report.update(mode="full" if args.full else "quick", config=mode, fresh=args.fresh,
                  notes=notes, workloads={}, contenders=[])

    present = []
    for name in args.contenders:
        if importlib.util.find_spec(MODULE_OF[name]) is None:
            notes.append(f"{name}: not installed, skipped")
        else:
            present.append(name)

    ((X_train, y_train), (X_test, y_test)), data_note = load_data(args.data_dir)
    report["data"] = data_note
    log("data: " + data_note)

    with tempfile.TemporaryDirectory(prefix="cdnn-bench-") as folder:
        for key, arr in (("X_train", X_train), ("y_train", y_train),
                         ("X_test", X_test), ("y_test", y_test)):
            np.save(os.path.join(folder, key + ".npy"), arr)
        del X_train, y_train, X_test, y_test
        runner = Runner(folder, fresh=args.fresh, timeout=mode["task_timeout"], log=log)
        try:
            report["gemm"] = gemm = runner.run("numpy", dict(
                kind="gemm", n=2048, calls=args.gemm_repeats or mode["gemm_repeats"]))
            runner.workers.pop("numpy", SimpleNamespace(close=lambda: None)).close()
            if gemm.get("ok"):
                log(f"sgemm 2048x2048 @ 2048x2048 float32 (numpy): {gemm['gflops']:.1f} GFLOP/s")
            runner.start(present)
            report["worker_info"] = {c: runner.run(c, dict(kind="info")) for c in present}
            for wl in workloads:
                report["workloads"][wl] = _run_workload(wl, mode, args, runner, present, log)
                report["contenders"] = [c for c in present if c not in runner.unavailable]
                checkpoint()
        finally:
            runner.close()
    for name, err in runner.unavailable.items():
        notes.append(f"{name}: could not be imported ({err.splitlines()[-1]}), skipped")
    report["contenders"] = [c for c in present if c not in runner.unavailable]
    return report


# ============================================================================================
# Summaries: medians, ratios, targets
# ============================================================================================


def _metric(kind, res):
    """The number a run is ranked by, and whether higher is better."""
    if kind in ("train", "predict_batch"):
        return res["rows"] / res["seconds"], True
    if kind == "tta":
        return (res["seconds"] if res["reached"] else float("inf")), False
    return res["seconds"], False  # predict1: latency


def summarize(report):
    gemm = report.get("gemm") or {}
    gemm_gflops = gemm.get("gflops") if gemm.get("ok") else None
    rows = []
    for wl, w in report["workloads"].items():
        kind, sizes = w["task"]["kind"], w["task"]["sizes"]
        row = dict(workload=wl, kind=kind, sizes=sizes, params=param_count(sizes), values={},
                   peak_rss_mb={}, compile_s={}, accuracy={}, gflops={}, runs={}, extra={})
        for c, results in w["raw"].items():
            ok = [r for r in results if r.get("ok")]
            row["runs"][c] = len(ok)
            if not ok:
                continue
            row["peak_rss_mb"][c] = _median([r.get("peak_rss_mb") for r in ok])
            if kind == "alloc":
                row["extra"][c] = ok[0]
                continue
            values = [_metric(kind, r)[0] for r in ok]
            row["higher_is_better"] = _metric(kind, ok[0])[1]
            row["values"][c] = statistics.median(values)
            compiles = [r["compile_s"] for r in ok if r.get("compile_s") is not None]
            if compiles:  # a long-lived worker compiles once; report that first compile
                row["compile_s"][c] = max(compiles)
            accs = [r["test_accuracy"] for r in ok if r.get("test_accuracy") is not None]
            if accs:
                row["accuracy"][c] = sum(accs) / len(accs)
            if kind == "train":
                row["gflops"][c] = 6.0 * row["params"] * row["values"][c] / 1e9
            if kind == "tta":
                row["extra"][c] = dict(
                    reached=sum(r["reached"] for r in ok), runs=len(ok),
                    epochs=_median([r["epochs"] for r in ok if r["reached"]]),
                    last_accuracy=statistics.median(r["curve"][-1][2] for r in ok))
        _ratios(row)
        if kind == "train" and gemm_gflops:
            row["sgemm_fraction"] = {c: g / gemm_gflops for c, g in row["gflops"].items()}
        rows.append(row)
    report["summary"] = rows
    report["targets"] = _targets(rows)
    report["parity"] = _parity(rows)
    return report


def _ratios(row):
    row["ratios"], row["best_peer"], row["ratio_best"] = {}, None, None
    cd = row["values"].get("cdnn")
    peers = {p: v for p, v in row["values"].items() if p in PEERS}
    if row["kind"] == "alloc" or cd is None or not peers:
        return
    finite = {p: v for p, v in peers.items() if v not in (0, float("inf"))}
    for p, v in finite.items():
        row["ratios"][p] = cd / v
    if row.get("higher_is_better"):
        best = max(peers, key=peers.get)
    else:
        best = min(peers, key=peers.get)
    row["best_peer"] = best
    row["ratio_best"] = row["ratios"].get(best)


def _targets(rows):
    out = []
    for row in rows:
        if row["workload"] not in TARGETS:
            continue
        op, bound = TARGETS[row["workload"]]
        got = row["ratio_best"]
        met = None if got is None else (got >= bound if op == ">=" else got <= bound)
        if row["kind"] == "tta" and row["values"].get("cdnn") == float("inf"):
            met = False
        out.append(dict(workload=row["workload"],
                        requirement=f"cdnn/{row['best_peer'] or 'best peer'} {op} {bound}",
                        got=got, met=met))
        if row["workload"] == "L":
            frac = (row.get("sgemm_fraction") or {}).get("cdnn")
            out.append(dict(workload="L (sgemm)", requirement=f"cdnn GFLOP/s >= {L_SGEMM_TARGET:.0%} "
                            "of sgemm", got=frac, met=None if frac is None else frac >= L_SGEMM_TARGET))
    return out


def _parity(rows):
    for row in rows:
        if row["workload"] == "M" and {"cdnn", "torch"} <= set(row["accuracy"]):
            a, b = row["accuracy"]["cdnn"], row["accuracy"]["torch"]
            return dict(cdnn=a, torch=b, difference=a - b, seeds=row["runs"]["cdnn"])
    return None


# ============================================================================================
# Output: plain text, markdown, JSON
# ============================================================================================

UNITS = {"train": "samples/s", "predict_batch": "rows/s", "predict1": "latency",
         "tta": "s to 98%"}


def _fmt_value(kind, v):
    if v is None:
        return "-"
    if kind == "predict1":
        return f"{v * 1e6:,.0f} us" if v >= 1e-4 else f"{v * 1e6:.1f} us"
    if kind == "tta":
        return "not reached" if v == float("inf") else f"{v:.1f} s"
    return f"{v:,.0f}"


def _fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def tables(report):
    """Return [(title, header, rows)] for the text and markdown renderers."""
    contenders = report["contenders"]
    peers = [c for c in contenders if c in PEERS]
    out = []
    header = ["workload", "metric"] + contenders + ["best peer", "cdnn/best"] + \
             [f"cdnn/{p}" for p in peers]
    body = []
    for row in report["summary"]:
        if row["kind"] == "alloc":
            continue
        kind, vals = row["kind"], row["values"]
        cells = [row["workload"], UNITS[kind] + ("" if row.get("higher_is_better") else " (lower=better)")]
        for c in contenders:
            cell = _fmt_value(kind, vals.get(c))
            if kind == "tta" and c in row["extra"] and row["extra"][c]["epochs"]:
                cell += f" ({row['extra'][c]['epochs']:g} ep)"
            cells.append(cell)
        cells += [row["best_peer"] or "-", _fmt_ratio(row["ratio_best"])]
        cells += [_fmt_ratio(row["ratios"].get(p)) for p in peers]
        body.append(cells)
    out.append(("Results (medians)", header, body))

    detail = []
    for row in report["summary"]:
        if row["kind"] != "train":
            continue
        rows_per_epoch = report["workloads"][row["workload"]]["task"]["rows"]
        detail.append([row["workload"], "-".join(map(str, row["sizes"])) if len(row["sizes"]) < 6
                       else "784-256x8-10", f"{row['params']:,}",
                       str(report["workloads"][row["workload"]]["task"]["batch"]), f"{rows_per_epoch:,}"]
                      + [_fmt_num(row["gflops"].get(c), ".1f") for c in contenders]
                      + [_fmt_num(row["accuracy"].get(c), ".4f") for c in contenders])
    if detail:
        out.append(("Training: achieved GFLOP/s (6 x params x samples) and test accuracy after one epoch",
                    ["workload", "layers", "params", "batch", "rows/epoch"]
                    + [f"GFLOP/s {c}" for c in contenders] + [f"acc {c}" for c in contenders], detail))

    rss = []
    for row in report["summary"]:
        if row["peak_rss_mb"]:
            rss.append([row["workload"]] + [_fmt_num(row["peak_rss_mb"].get(c), ".0f") for c in contenders])
    if rss:
        how = ("whole fresh process" if report["fresh"] else
               "long-lived process, peak mark reset before each run")
        out.append((f"Peak RSS of each run, MB ({how})", ["workload"] + contenders, rss))

    if report.get("targets"):
        out.append(("Targets (from the issue)", ["workload", "requirement", "cdnn got", "met"],
                    [[t["workload"], t["requirement"],
                      "-" if t["got"] is None else (f"{t['got']:.0%}" if "sgemm" in t["workload"]
                                                    else f"{t['got']:.2f}x"),
                      {True: "yes", False: "NO", None: "n/a"}[t["met"]]] for t in report["targets"]]))
    return out


def _fmt_num(v, spec):
    return "-" if v is None else format(v, spec)


def note_lines(report):
    lines = list(report["notes"])
    gemm = report.get("gemm") or {}
    if gemm.get("ok"):
        lines.append(f"sgemm rate (numpy float32 2048x2048 @ 2048x2048, median of "
                     f"{len(gemm['inner'])}): {gemm['gflops']:.1f} GFLOP/s")
    for row in report["summary"]:
        if row.get("sgemm_fraction") and row["workload"] == "L":
            lines.append("L training GFLOP/s as a share of that sgemm rate: " + ", ".join(
                f"{c} {f:.0%}" for c, f in row["sgemm_fraction"].items()))
    compiles = [f"{row['workload']} {row['compile_s']['jax']:.2f} s" for row in report["summary"]
                if row["compile_s"].get("jax") is not None]
    if compiles:
        lines.append("JAX compile time of the training step, all batch shapes (excluded from the "
                     "timings above): " + ", ".join(compiles))
    if report.get("parity"):
        p = report["parity"]
        lines.append(f"accuracy parity (M recipe, one epoch, mean of {p['seeds']} seeds): cdnn "
                     f"{p['cdnn']:.4f}, torch {p['torch']:.4f}, difference {p['difference']:+.4f}")
    for row in report["summary"]:
        if row["kind"] == "tta":
            for c, e in row["extra"].items():
                if e["reached"] < e["runs"]:
                    lines.append(f"TTA {c}: reached the target in {e['reached']} of {e['runs']} runs "
                                 f"(cap {report['workloads']['TTA']['task']['max_epochs']} epochs; "
                                 f"median final accuracy {e['last_accuracy']:.4f})")
        if row["kind"] == "alloc" and "cdnn" in row["extra"]:
            a = row["extra"]["cdnn"]
            rss = a["rss_mb_after_epoch"]
            lines.append(f"allocation check (cdnn, M recipe, {a['rows']:,} rows/epoch): RSS after each "
                         f"epoch {', '.join(f'{r:.1f}' for r in rss)} MB (growth from epoch 2 on: "
                         f"{rss[-1] - rss[1] if len(rss) > 1 else 0:+.1f} MB); tracemalloc over one "
                         f"epoch: peak {a['tracemalloc_peak_kib']:.0f} KiB, "
                         f"retained {a['tracemalloc_growth_kib']:+.1f} KiB")
    loads = [r.get("load1_before") for w in report["workloads"].values()
             for results in w["raw"].values() for r in results if r.get("load1_before") is not None]
    cores = report["machine"]["usable_cores"] or 1
    if loads:
        busy = statistics.median(loads) > cores + 1  # our own run accounts for about `cores`
        lines.append(f"machine load (1-minute load average before each run): median "
                     f"{statistics.median(loads):.1f}, max {max(loads):.1f} on {cores} cores"
                     + (" -- BUSY: other programs shared the CPUs, so these timings are noisy "
                        "(multithreaded BLAS/OpenMP pools suffer most); rerun on a quiet machine"
                        if busy else ""))
    if report["mode"] == "quick":
        lines.append("quick mode: shorter epochs (rows/epoch above) and one long-lived worker per "
                     "contender; run --full for the published numbers")
    return lines


def render_text(report):
    out = []
    for title, header, body in tables(report):
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
        out.append(title)
        out.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        out.append("  ".join("-" * w for w in widths))
        for cells in body:
            out.append("  ".join(str(c).rjust(w) if i > 0 else str(c).ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))))
        out.append("")
    out += ["Notes:"] + [f"- {line}" for line in note_lines(report)]
    return "\n".join(out)


def render_markdown(report):
    m = report["machine"]
    blas = m.get("blas")
    blas_text = "; ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} threads, "
                          f"{b.get('prefix')})" for b in blas) if isinstance(blas, list) else str(blas)
    v = m["versions"]
    out = ["# cdnn benchmark results", ""]
    if report.get("partial"):
        out += ["**Partial: the run was still going (or was stopped) when this was written.**", ""]
    out += [
           f"- Date: {report['date']}",
           f"- Command: `{report['command']}`",
           f"- Mode: {report['mode']}" + (", a fresh process per run" if report["fresh"] else
                                           ", one long-lived process per contender"),
           f"- Data: {report['data']}",
           f"- CPU: {m['cpu']}, {m['usable_cores']} usable cores"
           + (f", {m['memory_gib']} GiB RAM" if m.get("memory_gib") else ""),
           f"- Python {m['python']} on {m['platform']}",
           "- Versions: " + ", ".join(f"{k} {v[k]}" for k in v if v[k]),
           f"- BLAS (numpy/scipy, threadpoolctl): {blas_text}",
           f"- cdnn's kernels: the {m.get('cdnn_kernels', '?')} build",
           "", "Samples/s = rows per epoch / epoch seconds; ratios above 1 favour cdnn for "
           "throughput, below 1 for latency and time-to-accuracy. Medians over the repeats; "
           "contenders alternate within each repeat.", ""]
    for title, header, body in tables(report):
        out += [f"## {title}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
        out += ["| " + " | ".join(str(c) for c in cells) + " |" for cells in body]
        out.append("")
    out += ["## Notes", ""] + [f"- {line}" for line in note_lines(report)] + [""]
    return "\n".join(out)


# ============================================================================================
# Command line
# ============================================================================================


def _csv(choices):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(choices)}")
        return items
    return parse


def build_parser():
    p = argparse.ArgumentParser(
        prog="cdnn bench", description="Benchmark cdnn against PyTorch, JAX and scikit-learn "
        "on MNIST-sized MLPs (prints a table; never fails on a timing).")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true",
                       help="short epochs, about a minute (the default)")
    speed.add_argument("--full", action="store_true",
                       help="full 60k-row epochs, time-to-accuracy, fresh process per run")
    p.add_argument("--workloads", type=_csv(list(WORKLOADS)), default=None,
                   help="comma list of " + ",".join(WORKLOADS) + " (default: all of the mode's)")
    p.add_argument("--contenders", type=_csv(list(CONTENDERS)), default=list(CONTENDERS),
                   help="comma list (default: cdnn,torch,jax,sklearn)")
    p.add_argument("--data-dir", default=None,
                   help="MNIST directory (default: ../shared/data/mnist if present, else synthetic)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per workload (default 3 or 5)")
    p.add_argument("--gemm-repeats", type=int, default=None, help=argparse.SUPPRESS)
    isolation = p.add_mutually_exclusive_group()
    isolation.add_argument("--fresh", dest="fresh", action="store_true", default=None,
                           help="a fresh process per measurement (default in --full)")
    isolation.add_argument("--reuse", dest="fresh", action="store_false",
                           help="one long-lived process per contender (default in --quick)")
    p.add_argument("--json", metavar="PATH", help="write all raw timings and machine info here")
    p.add_argument("--markdown", metavar="PATH", help="write the tables as markdown here")
    return p


def main(argv=None):
    """Run the benchmarks; return 0 (a benchmark never fails on a timing)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.fresh is None:
        args.fresh = bool(args.full)
    if args.repeats is not None and args.repeats < 1:
        build_parser().error("--repeats must be at least 1")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    report = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  command=" ".join(["cdnn bench"] + argv), argv=argv, machine=machine_info())

    def write(partial):
        report["partial"] = partial
        report["wall_seconds"] = time.perf_counter() - started
        summarize(report)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(_finite(report), f, indent=1, default=_json_default)
                f.write("\n")
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(render_markdown(report))

    # the files are rewritten after every workload, so a long run that is stopped keeps
    # what it measured (marked partial)
    run_suite(args, log, report, checkpoint=lambda: write(partial=True))
    write(partial=False)
    print(render_text(report))
    print(f"\n(wall time {report['wall_seconds']:.0f} s)")
    return 0


def _finite(obj):
    """JSON has no infinity: a run that never reached its target is stored as null."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return str(obj)


if __name__ == "__main__":
    sys.exit(main())
