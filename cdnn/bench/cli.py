"""`cdnn bench`: the options, and main, which runs the suite and prints the report."""
from __future__ import annotations

import argparse
import datetime
import sys
import time

from .report import render_markdown, render_text, write_json
from .runner import machine_info, run_suite
from .studies import STUDIES
from .summary import summarize
from .workloads import CONTENDERS, OPTIONAL_CONTENDERS, SMALL_WORKLOADS, WORKLOADS

# `--workloads small` stands for every small job
GROUPS = {"small": SMALL_WORKLOADS}


def _csv(choices, groups=None):
    groups = groups or {}

    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices and t not in groups]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {','.join(bad)}; choose from {','.join(list(choices) + list(groups))}")
        return [name for t in items for name in groups.get(t, [t])]
    return parse


def build_parser():
    p = argparse.ArgumentParser(
        prog="cdnn bench", description="Benchmark cdnn against PyTorch, JAX and scikit-learn: "
        "training and prediction on MNIST-sized networks, and small scikit-learn style jobs; "
        "and against ONNX Runtime on prediction. "
        "Prints tables; never fails on a timing. Peers that are not installed are left out "
        "(pip install 'cdnn[bench]' installs them all).")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true",
                       help="short epochs, one process per contender (the default); 3-5 "
                            "minutes on an idle 2-core machine, far longer on a busy one")
    speed.add_argument("--full", action="store_true",
                       help="full 60k-row epochs, time-to-accuracy, fresh process per run "
                            "(about 15 minutes on 2 cores)")
    p.add_argument("--workloads", type=_csv(list(WORKLOADS), GROUPS), default=None,
                   help="comma list of " + ",".join(WORKLOADS) + "; 'small' means every "
                   "small-* job (default: all of the mode's)")
    p.add_argument("--contenders", type=_csv(list(CONTENDERS + OPTIONAL_CONTENDERS)),
                   default=list(CONTENDERS),
                   help="comma list (default: " + ",".join(CONTENDERS) + "; also "
                   + ",".join(OPTIONAL_CONTENDERS) + ")")
    p.add_argument("--data-dir", default=None,
                   help="MNIST directory (default: ../shared/data/mnist if present, "
                        "else synthetic)")
    p.add_argument("--repeats", type=int, default=None,
                   help="repeats per workload (default 3, or 5 in --full; small jobs: best of 3)")
    p.add_argument("--gemm-repeats", type=int, default=None, help=argparse.SUPPRESS)
    isolation = p.add_mutually_exclusive_group()
    isolation.add_argument("--fresh", dest="fresh", action="store_true", default=None,
                           help="a fresh process per measurement (default in --full)")
    isolation.add_argument("--reuse", dest="fresh", action="store_false",
                           help="one long-lived process per contender (default in --quick)")
    p.add_argument("--under-load", action="store_true",
                   help="only the busy-machine table: cdnn's default threads against one "
                        "thread beside a busy process and beside a second fit, and "
                        "GridSearchCV(n_jobs=2) against n_jobs=1 and scikit-learn's (needs "
                        "scikit-learn; about 3 minutes on 2 cores)")
    p.add_argument("--study", metavar="NAME", choices=STUDIES,
                   help="run one study instead, with the arguments after NAME: "
                        + "; ".join(f"{k}: {v}" for k, v in STUDIES.items()))
    p.add_argument("--matmul-precision", default="float32", choices=["float32", "bfloat16"],
                   help="--under-load: the fits' matmul_precision (bfloat16: the same table "
                        "with oneDNN's products on, to show they keep one team of threads)")
    p.add_argument("--json", metavar="PATH", help="write all raw timings and machine info here")
    p.add_argument("--markdown", metavar="PATH", help="write the tables as markdown here")
    return p


def _study(name: str, argv: list[str]) -> int:
    """Run cdnn.bench.studies.<name> as a script with argv."""
    import runpy
    saved = sys.argv
    sys.argv = [f"cdnn bench --study {name}", *argv]
    try:
        runpy.run_module(f"cdnn.bench.studies.{name}", run_name="__main__")
    finally:
        sys.argv = saved
    return 0


def main(argv=None):
    """Run the benchmarks; return 0 (a benchmark never fails on a timing)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if "--study" in argv:       # the arguments after its name are the study's
        at = argv.index("--study")
        args = parser.parse_args(argv[:at + 2])
        return _study(args.study, argv[at + 2:])
    args = parser.parse_args(argv)
    if args.fresh is None:
        args.fresh = bool(args.full)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.under_load:
        from .load import render, under_load
        print(render(under_load(args.repeats or 3, log, args.matmul_precision)))
        return 0

    started = time.perf_counter()
    report = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  command=" ".join(["cdnn bench"] + argv), argv=argv, machine=machine_info())

    def write(partial):
        report["partial"] = partial
        report["wall_seconds"] = time.perf_counter() - started
        summarize(report)
        if args.json:
            write_json(report, args.json)
        if args.markdown:
            from cdnn.io import write_atomically   # here, as in report.write_json
            write_atomically(args.markdown, render_markdown(report).encode())

    # the files are rewritten after every workload, so a long run that is stopped keeps
    # what it measured (marked partial)
    run_suite(args, log, report, checkpoint=lambda: write(partial=True))
    write(partial=False)
    print(render_text(report))
    print(f"\n(wall time {report['wall_seconds']:.0f} s)")
    return 0
