"""The parent side: worker processes, the runner that schedules tasks on them, and run_suite.

Every measurement runs in a worker subprocess that holds one contender only, so the contenders'
thread pools (OpenBLAS, MKL/OpenMP, XLA's Eigen pool) never share a process. `--full` starts a
fresh process per measurement; `--quick` keeps one process per contender and resets the
peak-RSS mark before each measurement. Contenders alternate within a repeat (cdnn, torch, jax,
sklearn, cdnn, ...) so drift on a shared machine hits all of them alike.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from .workloads import (MODES, PEER_NAMES, SLOW_WORKLOADS, SMALL_REPEATS, WORKLOADS,
                        install_hint, load_data, modules, runs, task_for)

class Worker:
    """A subprocess serving one contender; `run` sends one task and waits for its answer."""

    def __init__(self, contender, data_folder, timeout):
        package_dir = os.path.dirname(os.path.abspath(__file__))
        cdnn_parent = os.path.dirname(os.path.dirname(package_dir))
        # Load this package by path under another name, not as `cdnn.bench`, so a peer's
        # process never imports cdnn; put cdnn's parent first on the path so cdnn's worker
        # gets the same cdnn as we did.
        init = os.path.join(package_dir, "__init__.py")
        code = ("import importlib.util, sys\n"
                f"sys.path.insert(0, {cdnn_parent!r})\n"
                f"spec = importlib.util.spec_from_file_location('_cdnn_bench', {init!r}, "
                f"submodule_search_locations=[{package_dir!r}])\n"
                "sys.modules['_cdnn_bench'] = importlib.util.module_from_spec(spec)\n"
                "spec.loader.exec_module(sys.modules['_cdnn_bench'])\n"
                "from _cdnn_bench.worker import worker_loop\n"
                f"worker_loop({contender!r}, {data_folder!r})\n")
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
            self.retire(name)
            return dict(ok=False, skipped=bool(w.ready.get("skipped")), error=err)
        if not self.fresh and task["kind"] in ("train", "tta", "small"):
            time.sleep(PAUSE_S)  # let the previous contender's spinning thread pool go idle
        load_before, t0 = _load1(), time.perf_counter()
        result = w.run(dict(task, reset_peak=not self.fresh))
        result.update(task_wall_s=time.perf_counter() - t0, load1_before=load_before,
                      load1_after=_load1())
        if self.fresh or not w.alive():
            self.retire(name)
        if not result.get("ok"):
            what = "skipped" if result.get("skipped") else "failed"
            self.log(f"  ! {name} {task['kind']} {what}: {result.get('error', '').strip()[-600:]}")
        return result

    def retire(self, name):
        """Close `name`'s worker now (the next task for it starts a fresh one)."""
        w = self.workers.pop(name, None)
        if w is not None:
            w.close()

    def close(self):
        for w in self.workers.values():
            w.close()
        self.workers.clear()


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
                platform=platform.platform(), python=platform.python_version(),
                matrix_engine=_matrix_engine())
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


def _matrix_engine():
    """The CPU's units for bf16 matrix products, from its flags (what the -bf16 contenders
    run on): "AMX-BF16", "AVX512-BF16", or "none" (bf16 would be emulated)"""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    found = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))
             if flag in flags]
    return " and ".join(found) or "none"


def _proc_meminfo_gib():
    try:
        with open("/proc/meminfo") as f:
            return round(int(f.readline().split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        return None


def _brief(kind, res):
    if not res.get("ok"):
        return "skipped" if res.get("skipped") else "FAILED"
    if kind == "predict1":
        return f"{res['seconds'] * 1e6:.0f} us"
    if kind == "tta":
        return f"{res['seconds']:.1f} s" if res["reached"] else "not reached"
    if kind == "alloc":
        return f"rss {['%.0f' % r for r in res['rss_mb_after_epoch']]} MB"
    if kind == "small":
        one = res.get("seconds_one_thread")
        return f"{res['seconds']:.3f} s" + ("" if one is None else f" ({one:.3f} s on 1 thread)")
    return f"{res['rows'] / res['seconds']:,.0f}/s"


def _repeats(wl, mode, args):
    if args.repeats:
        return args.repeats
    kind = WORKLOADS[wl]["kind"]
    if kind == "alloc":
        return 1
    if kind == "small":
        return SMALL_REPEATS
    return mode["repeats_slow"] if wl in SLOW_WORKLOADS else mode["repeats"]


def _run_workload(wl, mode, args, runner, present, log):
    task, repeats = task_for(wl, mode), _repeats(wl, mode, args)
    who = _needed(present, [wl])
    if not who:
        log(f"{wl:>5}: needs {' or '.join(c for c in PEER_NAMES if runs(c, wl))}, skipped")
    raw = {c: [] for c in who}
    for r in range(repeats if who else 0):
        for c in who:  # alternate contenders within every repeat
            raw[c].append(runner.run(c, dict(task, seed=r)))
        load = _load1()
        log(f"{wl:>5} repeat {r + 1}/{repeats}: " +
            ", ".join(f"{c} {_brief(task['kind'], raw[c][-1])}" for c in who) +
            ("" if load is None else f"   [load {load:.1f}]"))
    return dict(task=task, repeats=repeats, raw=raw)


def _needed(contenders, workloads):
    """The contenders that run at least one of the workloads."""
    return [c for c in contenders if any(runs(c, wl) for wl in workloads)]


def _missing_note(name):
    return (f"{PEER_NAMES[name]} is not installed, so it was left out. To compare with it: "
            f"`{install_hint(name)}` (every peer: `pip install 'cdnn[bench]'`)")


def run_suite(args, log, report, checkpoint=lambda: None):
    """Run the workloads, filling `report` in place; `checkpoint()` after each workload."""
    mode = MODES["full" if args.full else "quick"]
    workloads = args.workloads or mode["workloads"]
    notes = []
    report.update(mode="full" if args.full else "quick", config=mode, fresh=args.fresh,
                  notes=notes, workloads={}, contenders=[])

    present = []
    for name in _needed(args.contenders, workloads):
        if any(importlib.util.find_spec(module) is None for module in modules(name)):
            notes.append(_missing_note(name))
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
            runner.retire("numpy")
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
        notes.append(f"{PEER_NAMES.get(name, name)} could not be imported "
                     f"({err.splitlines()[-1]}), so it was left out")
    report["contenders"] = [c for c in present if c not in runner.unavailable]
    return report
