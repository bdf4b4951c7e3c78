#!/usr/bin/env python
"""Data-parallel training: cdnn on 2 MPI ranks × 1 thread against cdnn in one process (1 and 2
threads) and PyTorch DDP (gloo, 2 processes × 1 thread), on the suite's S and M workloads
(784-128-10 batch 32; 784-512-512-10 batch 128; float32, SGD with momentum, synthetic rows).
Also the exchange's costs: a native MPI_Allreduce of the gradient against mpi4py's from Python,
and the per-call cost of one native run per step (what splitting each step at its exchange,
to sum from Python, would add).

    python -m cdnn.bench.studies.distributed                    # every contender, S and M
    python -m cdnn.bench.studies.distributed --workloads M --rows 8192 --epochs 3

Each contender runs in its own processes (launched with mpiexec, or as two torch workers). It
prints seconds per epoch (the best epoch after a warm-up one) and rows per second; a timing
is never a pass/fail. Needs pip install 'cdnn[mpi]' torch.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

WORKLOADS = {"S": ([784, 128, 10], 32), "M": ([784, 512, 512, 10], 128)}


def data(rows: int):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(rows, 784)).astype(np.float32),
            rng.integers(0, 10, rows).astype(np.int64))


def cdnn_worker(args) -> dict:
    import cdnn

    comm = None
    if args.worker == "cdnn-mpi":
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    cdnn.set_num_threads(args.threads)
    sizes, batch = WORKLOADS[args.workload]
    X, y = data(args.rows)
    net = cdnn.MLP(sizes, seed=0)
    trainer = cdnn.Trainer(net, cdnn.SGD(lr=0.01, momentum=0.9), batch_size=batch, comm=comm)
    times = []
    for _ in range(args.epochs + 1):
        start = time.perf_counter()
        trainer.fit(X, y, epochs=1, verbose=0)
        times.append(time.perf_counter() - start)
    return {"rank": 0 if comm is None else comm.rank, "epoch": min(times[1:])}


def torch_worker(args) -> dict:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    sizes, batch = WORKLOADS[args.workload]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = DistributedDataParallel(torch.nn.Sequential(*layers[:-1]))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    X, y = (torch.from_numpy(a) for a in data(args.rows))
    X, y = X[rank::world], y[rank::world]       # a DistributedSampler's share
    local = batch // world
    times = []
    for _ in range(args.epochs + 1):
        start = time.perf_counter()
        for i in range(0, len(X), local):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(X[i:i + local]), y[i:i + local])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    dist.destroy_process_group()
    return {"rank": rank, "epoch": min(times[1:])}


def exchange_worker(args) -> dict:
    """Under mpiexec -n 2: the gradient's sum natively and through mpi4py; and in one process
    the cost of a native run per step against a run per 1/20 epoch."""
    from mpi4py import MPI

    import cdnn
    from cdnn.distributed import native_exchange

    comm = MPI.COMM_WORLD
    sizes, batch = WORKLOADS[args.workload]
    n = cdnn.MLP(sizes).params.size
    grad = np.ones(n, dtype=np.float32)
    native = native_exchange(comm, np.float32, n)
    result = {"rank": comm.rank, "params": n, "MB": 4 * n / 1e6}
    for name, call in (("native_ms", lambda: native.allreduce(grad)),
                       ("mpi4py_ms", lambda: comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM))):
        comm.Barrier()
        best = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(20):
                call()
            best.append((time.perf_counter() - start) / 20 * 1e3)
        result[name] = min(best)
    return result


def run_overhead(args) -> dict:
    """One process, 1 thread: an epoch with a native call per step against the usual ~20."""
    import cdnn
    import cdnn._engine as _engine

    cdnn.set_num_threads(1)
    sizes, batch = WORKLOADS[args.workload]
    X, y = data(args.rows)
    out = {}
    for calls in (_engine.CALLS_PER_EPOCH, 10**9):
        _engine.CALLS_PER_EPOCH = calls
        trainer = cdnn.Trainer(cdnn.MLP(sizes, seed=0), cdnn.SGD(lr=0.01), batch_size=batch)
        times = []
        for _ in range(args.epochs + 1):
            start = time.perf_counter()
            trainer.fit(X, y, epochs=1, verbose=0)
            times.append(time.perf_counter() - start)
        out["per_step" if calls > 10**6 else "per_run"] = min(times[1:])
    steps = -(-args.rows // batch)
    out["extra_us_per_step"] = (out["per_step"] - out["per_run"]) / steps * 1e6
    return out


def launch(args, worker: str, threads: int = 1, ranks: int = 1) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", worker, "--workload", args.workload,
           "--rows", str(args.rows), "--epochs", str(args.epochs), "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if worker == "torch-ddp":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(
            env, RANK=str(r), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port))) for r in range(ranks)]
        outputs = [p.communicate(timeout=900)[0] for p in procs]
    else:
        if ranks > 1:
            cmd = [mpiexec(), "-n", str(ranks)] + cmd
        outputs = [subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env,
                                  timeout=900, check=True).stdout]
    return [json.loads(line) for out in outputs for line in out.splitlines()
            if line.startswith("{")]


def mpiexec() -> str:
    from cdnn.distributed import find_mpiexec

    found = find_mpiexec()
    if found is None:
        sys.exit("no mpiexec: pip install 'cdnn[mpi]'")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="S,M")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs, after a warm-up")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="S", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work = {"cdnn": cdnn_worker, "cdnn-mpi": cdnn_worker, "torch-ddp": torch_worker,
                "exchange": exchange_worker, "overhead": run_overhead}[args.worker]
        result = work(args)
        if result.get("rank", 0) == 0:
            print(json.dumps(result), flush=True)
        return
    print("(timings on a shared machine are noisy; compare within one run)")
    for workload in args.workloads.split(","):
        args.workload = workload
        contenders = [("cdnn, 1 process × 1 thread", "cdnn", 1, 1),
                      ("cdnn, 1 process × 2 threads", "cdnn", 2, 1),
                      ("cdnn, 2 MPI ranks × 1 thread", "cdnn-mpi", 1, 2),
                      ("PyTorch DDP gloo, 2 × 1 thread", "torch-ddp", 1, 2)]
        times = {}
        print(f"\n{workload}: {WORKLOADS[workload][0]}, batch {WORKLOADS[workload][1]}, "
              f"{args.rows} rows")
        for label, worker, threads, ranks in contenders:
            try:
                times[label] = launch(args, worker, threads, ranks)[0]["epoch"]
            except (subprocess.SubprocessError, IndexError, OSError) as e:
                print(f"  {label:34s} failed: {e}")
                continue
            print(f"  {label:34s} {times[label]:8.3f} s/epoch  "
                  f"{args.rows / times[label]:10.0f} rows/s", flush=True)
        mpi, two = times.get("cdnn, 2 MPI ranks × 1 thread"), times.get(
            "cdnn, 1 process × 2 threads")
        ddp = times.get("PyTorch DDP gloo, 2 × 1 thread")
        if mpi and two:
            print(f"  2 ranks vs 1 process × 2 threads: {two / mpi:.2f}× (goal ≥ 0.9)")
        if mpi and ddp:
            print(f"  2 ranks vs PyTorch DDP:           {ddp / mpi:.2f}× (goal ≥ 2)")
        ex = launch(args, "exchange", 1, 2)[0]
        over = launch(args, "overhead")[0]
        print(f"  gradient {ex['MB']:.2f} MB: allreduce native {ex['native_ms']:.3f} ms, "
              f"mpi4py {ex['mpi4py_ms']:.3f} ms; a native call per step adds "
              f"{over['extra_us_per_step']:.0f} µs a step")


if __name__ == "__main__":
    main()
