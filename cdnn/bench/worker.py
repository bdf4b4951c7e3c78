"""The worker side: one process, one contender, tasks read as JSON lines from stdin.

The parent (runner.py) starts `worker_loop` in a fresh interpreter that loads this package by
path, so a peer's process never imports cdnn. Each task function returns a dict of plain
numbers; the loop adds the process's peak RSS and sends it back as one JSON line.
"""
from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import sys
import time
import traceback

import numpy as np

from .contenders import CONTENDER_CLASSES
from .small import task_small

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
    # a peer's worker must not load cdnn (its OpenMP runtime and thread settings)
    info = {"pid": os.getpid(), "imports_cdnn": "cdnn" in sys.modules}
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [{k: p.get(k) for k in ("internal_api", "num_threads", "version",
                                                     "threading_layer", "filepath")}
                               for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    if c is not None and c.name.startswith("torch"):
        info["torch_num_threads"] = c.torch.get_num_threads()
        info["torch_config"] = c.torch.__config__.parallel_info()
    if c is not None and c.name == "jax":
        info["jax_devices"] = [str(d) for d in c.jax.devices()]
    if c is not None and c.name == "ort":
        info["ort_version"], info["ort_threads"] = c.ort.__version__, c.threads
    if c is not None and c.name.startswith("cdnn"):
        info["cdnn_file"] = c.cdnn.__file__
        info["matmul_engine"] = getattr(c, "matmul_engine", None)
    return info


TASKS = {"train": _task_train, "tta": _task_tta, "predict1": _task_predict1,
         "predict_batch": _task_predict_batch, "alloc": _task_alloc, "small": task_small,
         "gemm": _task_gemm, "info": _task_info}


def worker_loop(contender, data_folder):
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
        except ImportError as exc:  # an optional part is missing (cdnn.sklearn without sklearn)
            result = dict(ok=False, skipped=True, error=f"{type(exc).__name__}: {exc}")
        except Exception:
            result = dict(ok=False, error=traceback.format_exc())
        result.update(peak_rss_mb=_proc_status_mb("VmHWM"), rss_before_mb=rss_before,
                      peak_reset=bool(reset))
        send(result)
