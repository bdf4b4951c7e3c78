"""The device check of issue 26, in one run on a GPU machine (an NVIDIA H200 with CuPy, PyTorch,
Cython and nvcc; nothing downloadable there). From the repository root:

    python bench/gpu_check.py                 # build, GPU tests, correctness, benchmarks
    python bench/gpu_check.py --skip-build    # cdnn already built in place
    python bench/gpu_check.py --dry-run       # without a GPU: the CPU stand-in, tiny shapes

It prints a markdown table for bench/RESULTS.md (and writes it with --output). Each phase has
a time limit, so the whole run stays well under 8 minutes. Benchmarks: one-epoch-like runs of a
fixed number of steps on random data resident on the GPU for both contenders, PyTorch eager
(nn.Sequential, the same optimizer) against cdnn's device="cuda"; samples/s, medians of
alternating repeats.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# (name, sizes, batch, steps): the cases and its targets against PyTorch eager
CASES = [("S", [784, 128, 10], 32, 600, 10.0), ("M", [784, 512, 512, 10], 128, 400, 5.0),
         ("L", [784, 2048, 2048, 10], 256, 200, 2.0), ("L", [784, 2048, 2048, 10], 4096, 40, 1.0)]
REPEATS = 3
BUDGET_S = 420      # phases not started by then are skipped: the run stays under 8 minutes
TESTS = ["tests/test_cuda_kernels.py", "tests/test_cuda_engine.py", "tests/test_cuda_sklearn.py",
         "tests/test_cuda_standin.py"]


def sh(command: list[str], timeout: float, env=None) -> tuple[int, str]:
    print("$", " ".join(command), flush=True)
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    return done.returncode, (done.stdout + done.stderr)[-4000:]


def preflight(dry_run: bool, building: bool) -> list[str]:
    """The modules cdnn and this check import, and which are missing"""
    needed = ["numpy", "scipy", "threadpoolctl", "tqdm", "safetensors", "pytest"]
    needed += ["Cython", "setuptools"] if building else []
    needed += [] if dry_run else ["cupy", "torch"]
    missing = []
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def build(report: list):
    code, out = sh([sys.executable, "setup.py", "build_ext", "--inplace", "-j",
                    str(os.cpu_count() or 4)], timeout=240)
    report.append(("build (setup.py build_ext --inplace)", "ok" if code == 0 else
                   f"FAILED ({code})", ""))
    if code != 0:
        print(out)
        raise SystemExit("the build failed")


def run_tests(report: list, dry_run: bool):
    env = {} if dry_run else {"CDNN_TEST_CUDA_DEVICE": "1"}
    env["PYTHONPATH"] = str(REPO)
    # on a GPU: the kernels through NVRTC, the engine, the estimators, Optimizer.step and the
    # graphs on CuPy (test_cuda_standin runs on the stand-in either way: it tests its rules)
    code, out = sh([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                    *TESTS], 180, env)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    names = ", ".join(Path(t).stem for t in TESTS)
    report.append((f"GPU tests ({names})" if not dry_run else f"stand-in tests ({names})",
                   "ok" if code == 0 else f"FAILED ({code})", last))
    if code != 0:
        print(out)


# --- correctness: one epoch on "cuda" and on "cpu", same seed and batches -----------------------

def correctness(report: list, rows: int):
    import cdnn
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 784)).astype(np.float32)
    y = rng.integers(0, 10, rows)
    for dtype, limit in (("float64", 1e-10), ("float32", 1e-4)):
        params = []
        for device in ("cpu", "cuda"):
            net = cdnn.MLP([784, 128, 10], dtype=dtype, seed=0, device=device)
            cdnn.Trainer(net, cdnn.Adam(1e-3), batch_size=32, seed=0).fit(
                X, y, epochs=1, verbose=0)
            params.append(_host(net.params).astype(np.float64))
        diff = np.abs(params[1] - params[0]).max()
        if dtype == "float32":
            diff /= np.abs(params[0]).max()
        ok = diff < limit
        what = "max abs Δ" if dtype == "float64" else "max abs Δ / max abs p"
        report.append((f"one epoch cuda vs cpu, {dtype}, 784-128-10 b32 Adam, {rows} rows",
                       "ok" if ok else "FAILED", f"{what} = {diff:.2e} (limit {limit:g})"))


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


# --- speed -------------------------------------------------------------------------------------

def cdnn_rate(sizes, batch, steps, precision="float32") -> float:
    """samples/s of cdnn's device="cuda" over `steps` steps (after a run that records them)"""
    import cdnn
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch * steps, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], len(X))
    net = cdnn.MLP(sizes, seed=0, device="cuda", matmul_precision=precision)
    opt = cdnn.SGD(0.01, momentum=0.9)
    train = net.engine.prepare(X, y)
    run = net.engine.training_steps(net.params, opt, train, batch, 0.0, 0)
    order = np.arange(len(X), dtype=np.intp)
    lrs, losses, corrects = np.full(steps, 0.01), np.empty(steps), np.empty(steps)
    run.run(lrs, order, losses, corrects)           # records the graph, uploads the data
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run.run(lrs, order, losses, corrects)       # waits for the losses: synchronised
        times.append(time.perf_counter() - start)
    return batch * steps / statistics.median(times)


def torch_rate(sizes, batch, steps, precision="float32") -> float:
    """samples/s of PyTorch eager, data resident on the GPU, the same SGD with momentum"""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    model = torch_model(sizes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    X = torch.randn(batch * steps, sizes[0], device="cuda")
    y = torch.randint(0, sizes[-1], (batch * steps,), device="cuda")

    def epoch():
        for s in range(steps):
            xb, yb = X[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch]
            with torch.autocast("cuda", torch.bfloat16, enabled=precision == "bfloat16"):
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
    epoch()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - start)
    return batch * steps / statistics.median(times)


def sgemm_rate(n=4096, k=2048, m=2048) -> float:
    """cuBLAS SGEMM's FLOP/s (float32, no tensor cores) on the L layer's shape at b4096"""
    import cupy
    from cdnn.cuda import current
    be = current()
    a, b = cupy.random.rand(n, k, dtype=np.float32), cupy.random.rand(k, m, dtype=np.float32)
    c = cupy.empty((n, m), np.float32)
    with be.on_stream():
        be.gemm(a, b, c)
        be.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            be.gemm(a, b, c)
        be.synchronize()
    return 20 * 2 * n * k * m / (time.perf_counter() - start)


def torch_model(sizes):
    """nn.Sequential of Linear layers with ReLU between them, on the GPU"""
    import torch
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [torch.nn.Linear(n_in, n_out)] + ([torch.nn.ReLU()] if i < len(sizes) - 2
                                                     else [])
    return torch.nn.Sequential(*layers).cuda()


def one_row_latency(sizes, calls=300, with_torch=True) -> tuple[float, float, int]:
    """Median seconds of one row's predict_proba, host in and host out: cdnn, PyTorch (NaN
    without); and the recorded plans cdnn used (1: every call was one replay of one graph)"""
    import cdnn
    x = np.random.default_rng(0).normal(size=(1, sizes[0])).astype(np.float32)
    net = cdnn.MLP(sizes, seed=0, device="cuda")
    runs = {"cdnn": lambda: net.predict_proba(x)}
    context = contextlib.nullcontext()
    if with_torch:
        import torch
        model = torch_model(sizes).eval()
        runs["torch"] = lambda: torch.softmax(model(torch.from_numpy(x).cuda()), 1).cpu().numpy()
        context = torch.inference_mode()
    times = {name: [] for name in runs}
    with context:
        for _ in range(calls):
            for name, call in runs.items():     # alternating
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t[calls // 10:]) for name, t in times.items()}
    return median["cdnn"], median.get("torch", float("nan")), len(net.engine.plans.plans)


def dry_speed(report: list):
    """The speed phase's cdnn code on the stand-in, at tiny shapes (no timings worth a table)"""
    rate = cdnn_rate([20, 8, 3], 4, 5)
    _, _, plans = one_row_latency([20, 8, 3], calls=20, with_torch=False)
    report.append(("speed code on the stand-in (cdnn_rate, one_row_latency), tiny shapes",
                   "ok" if rate > 0 and plans == 1 else "FAILED",
                   f"{plans} recorded plan for one row"))


def speed(report: list, started: float):
    ours, theirs, plans = one_row_latency([784, 128, 10])   # first: it is the cheapest
    report.append(("predict_proba one row, host in/out, 784-128-10: cdnn / torch",
                   "ok" if ours <= theirs else "SLOWER",
                   f"{ours * 1e6:.0f} µs / {theirs * 1e6:.0f} µs ({plans} recorded plan)"))
    for name, sizes, batch, steps, target in CASES:
        if time.perf_counter() - started > BUDGET_S:
            report.append((f"train {name} b{batch}", "SKIPPED", f"past {BUDGET_S} s"))
            continue
        ours, theirs = cdnn_rate(sizes, batch, steps), torch_rate(sizes, batch, steps)
        ratio = ours / theirs
        report.append((f"train {name} {'-'.join(map(str, sizes))} b{batch}: cdnn / torch eager",
                       "ok" if ratio >= target else "BELOW", f"{ours:,.0f} / {theirs:,.0f} "
                       f"samples/s = {ratio:.2f}× (target ≥ {target:g}×)"))
        if batch == 4096:
            params = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
            rate, peak = 6 * params * ours, sgemm_rate()
            report.append(("L b4096: the step's GEMM FLOP/s / cuBLAS SGEMM's",
                           "ok" if rate >= 0.7 * peak else "BELOW",
                           f"{rate / 1e12:.1f} / {peak / 1e12:.1f} TFLOP/s = "
                           f"{rate / peak:.0%} (target ≥ 70%; the step's other work counted "
                           f"against it)"))
            bf16 = cdnn_rate(sizes, batch, steps, "bfloat16")
            report.append(("L b4096: bfloat16 / float32 (cdnn)", "ok" if bf16 >= 3 * ours
                           else "BELOW", f"{bf16:,.0f} / {ours:,.0f} samples/s = "
                           f"{bf16 / ours:.2f}× (target ≥ 3×)"))


def table(report: list, device: str, command: str) -> str:
    lines = [f"## {time.strftime('%Y-%m-%d')}: device=\"cuda\" check (issue 26)", "",
             f"- Command: `{command}`", f"- Device: {device}", "",
             "| check | result | measured |", "|---|---|---|"]
    lines += [f"| {what} | {result} | {detail} |" for what, result, detail in report]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: the CPU stand-in, the tests and the correctness check only")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--output", help="also write the table to this file")
    args = parser.parse_args(argv)
    started, report = time.perf_counter(), []
    missing = preflight(args.dry_run, not args.skip_build)
    if missing:
        print(f"missing modules: {', '.join(missing)} (carry their wheels)", flush=True)
        report.append(("preflight", "FAILED", f"missing: {', '.join(missing)}"))
    if not args.skip_build:
        build(report)
    sys.path.insert(0, str(REPO))
    run_tests(report, args.dry_run)
    from cdnn.cuda import StandinBackend, current, use_backend
    if args.dry_run:
        with use_backend(StandinBackend()):
            correctness(report, rows=320)
            dry_speed(report)
        device = "CPU stand-in (no GPU): correctness on 320 rows, no benchmarks"
    else:
        device = current().device_name
        correctness(report, rows=60000)
        speed(report, started)
    report.append(("wall time of this check", "", f"{time.perf_counter() - started:.0f} s"))
    text = table(report, device, "python bench/gpu_check.py " + " ".join(argv or sys.argv[1:]))
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0 if all(r[1] in ("ok", "") for r in report) else 1


if __name__ == "__main__":
    sys.exit(main())
