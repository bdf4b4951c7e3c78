"""oneDNN's GEMMs against the OpenBLAS that cdnn's kernels call (scipy's), per shape.

    python -m cdnn.bench.studies.onednn_gemm [--seconds 0.3] [--json out.json]

For each product of the training workloads (S, M, D, L of cdnn/bench/workloads.py: forward
Z = X·W, dW = Aᵀ·δ and dX = δ·Wᵀ, each thread's share at two threads, row-major as the kernels
call them) and of the 10,000-row predictions (chunks of 1,024 rows): GFLOP/s of OpenBLAS sgemm,
oneDNN's dnnl_sgemm and dnnl_gemm_bf16bf16f32, each on one thread (what each of cdnn's threads
runs), median of alternating timed bursts. Then the best bf16 rate on every core (one oneDNN
call on its own OpenMP team): the ceiling the bf16 training step is held against.
Needs the [onednn] extra.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time

import numpy as np
from scipy.linalg import blas
from threadpoolctl import threadpool_limits

from cdnn import _onednn

I64, F32, PTR = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
SIGNATURE = [ctypes.c_char, ctypes.c_char, I64, I64, I64, F32, PTR, I64, PTR, I64, F32, PTR, I64]


def products(sizes, batch, team=2):
    """(name, trans_a, trans_b, m, n, k) of one training step's products, thread 0's share"""
    out = []
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        units, rows_w = -(-n_out // team), -(-n_in // team)
        out.append((f"fwd {n_in}x{n_out}", False, False, batch, units, n_in))
        out.append((f"dW {n_in}x{n_out}", True, False, rows_w, n_out, batch))
        if l > 0:
            out.append((f"dX {n_in}x{n_out}", False, True, batch, rows_w, n_out))
    return out


SHAPES = {"S b32": products([784, 128, 10], 32), "M b128": products([784, 512, 512, 10], 128),
          "D b64": products([784] + [256] * 8 + [10], 64)[:4],
          "L b256": products([784, 2048, 2048, 10], 256),
          "predict 784-128-10": [("fwd 784x128", False, False, 1024, 128, 784),
                                 ("fwd 128x10", False, False, 1024, 10, 128)],
          "predict 784-512-512-10": [("fwd 784x512", False, False, 1024, 512, 784),
                                     ("fwd 512x512", False, False, 1024, 512, 512)]}


class Gemms:
    def __init__(self):
        self.lib, _ = _onednn.load_library()
        for name in ("dnnl_sgemm", "dnnl_gemm_bf16bf16f32"):
            getattr(self.lib, name).argtypes = SIGNATURE
        self.set_threads = self.lib.omp_set_num_threads

    def runner(self, kind, ta, tb, m, n, k):
        """A function computing the product once (row-major operands of the right shapes)"""
        rng = np.random.default_rng(0)
        a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
        c = np.zeros((m, n), np.float32)
        if kind == "openblas":     # row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ
            at, bt = a.T, b.T      # Fortran-ordered views of the row-major arrays
            return lambda: blas.sgemm(1.0, bt, at, trans_a=tb, trans_b=ta, c=c.T,
                                      overwrite_c=True)
        if kind == "bf16":
            a, b = (x.view(np.uint32).__rshift__(16).astype(np.uint16) for x in (a, b))
        fn = getattr(self.lib, "dnnl_sgemm" if kind == "dnnl_sgemm" else "dnnl_gemm_bf16bf16f32")
        args = (b"T" if ta else b"N", b"T" if tb else b"N", m, n, k, 1.0, a.ctypes.data,
                a.shape[1], b.ctypes.data, b.shape[1], 0.0, c.ctypes.data, n)
        keep = (a, b, c)
        return lambda: fn(*args) and keep

    def rate(self, call, flops, seconds):
        call()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            call()
            n += 1
        return flops * n / (time.perf_counter() - t0) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=0.3, help="per timed burst")
    p.add_argument("--bursts", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    g = Gemms()
    rows = []
    print(f"load {os.getloadavg()[0]:.2f}; GFLOP/s on one thread, median of {args.bursts}")
    print(f"{'workload':24s} {'product':16s} {'m x n x k':>18s} {'OpenBLAS':>9s} "
          f"{'dnnl_sgemm':>10s} {'bf16':>7s}  sgemm/OpenBLAS")
    with threadpool_limits(1):
        g.set_threads(1)
        for workload, shapes in SHAPES.items():
            for name, ta, tb, m, n, k in shapes:
                calls = {kind: g.runner(kind, ta, tb, m, n, k)
                         for kind in ("openblas", "dnnl_sgemm", "bf16")}
                rates = {kind: [] for kind in calls}
                for _ in range(args.bursts):         # alternating
                    for kind, call in calls.items():
                        rates[kind].append(g.rate(call, 2 * m * n * k, args.seconds))
                med = {kind: statistics.median(r) for kind, r in rates.items()}
                rows.append(dict(workload=workload, product=name, m=m, n=n, k=k, **med))
                print(f"{workload:24s} {name:16s} {f'{m}x{n}x{k}':>18s} {med['openblas']:9.1f} "
                      f"{med['dnnl_sgemm']:10.1f} {med['bf16']:7.1f}  "
                      f"{med['dnnl_sgemm'] / med['openblas']:.2f}x")
        cores = len(os.sched_getaffinity(0))
        g.set_threads(cores)
        best = {}
        for m, n, k in ((256, 2048, 2048), (1024, 2048, 2048), (2048, 2048, 2048)):
            call = g.runner("bf16", False, False, m, n, k)
            best[f"{m}x{n}x{k}"] = max(g.rate(call, 2 * m * n * k, args.seconds)
                                       for _ in range(args.bursts))
        print(f"best bf16 GEMM on {cores} threads (one oneDNN call): "
              + ", ".join(f"{s} {r:.0f}" for s, r in best.items()) + " GFLOP/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(load=os.getloadavg()[0], rows=rows, best_bf16=best), f, indent=1)


if __name__ == "__main__":
    main()
