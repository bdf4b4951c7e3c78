"""The report for people: tables, notes, and their plain-text, markdown and JSON forms."""
from __future__ import annotations

import json
import statistics

import numpy as np

from .workloads import PEER_NAMES, PEERS, WORKLOADS

SMALL_WORK_NOTE = (
    "small work: each library with its defaults on float64 data (cdnn's estimators compute in "
    "float32 unless given dtype='float64', scikit-learn's in float64), timed after an untimed "
    "warm-up run; the scipy job uses a float64 cdnn.MLP")
TEXT_COLUMNS = ("metric", "layers", "best peer", "job", "compared with")  # left-aligned
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


def _fmt_num(v, spec):
    return "-" if v is None else format(v, spec)


def _fmt_seconds(v):
    return "-" if v is None else f"{v:.3f} s"


def tables(report):
    """Return [(title, header, rows)] for the text and markdown renderers."""
    out = [_results_table(report), _training_table(report), _small_table(report),
           _rss_table(report)]
    return [table for table in out if table[2]]


def _results_table(report):
    contenders = report["contenders"]
    peers = [c for c in contenders if c in PEERS]
    header = (["workload", "metric"] + contenders + ["best peer", "cdnn/best"]
              + [f"cdnn/{p}" for p in peers])
    body = []
    for row in report["summary"]:
        if row["kind"] in ("alloc", "small"):
            continue
        kind, vals = row["kind"], row["values"]
        cells = [row["workload"],
                 UNITS[kind] + ("" if row.get("higher_is_better") else " (lower=better)")]
        for c in contenders:
            cell = _fmt_value(kind, vals.get(c))
            if kind == "tta" and c in row["extra"] and row["extra"][c]["epochs"]:
                cell += f" ({row['extra'][c]['epochs']:g} ep)"
            cells.append(cell)
        cells += [row["best_peer"] or "-", _fmt_ratio(row["ratio_best"])]
        cells += [_fmt_ratio(row["ratios"].get(p)) for p in peers]
        body.append(cells)
    return "Results (medians)", header, body


def _training_table(report):
    contenders = report["contenders"]
    body = []
    for row in report["summary"]:
        if row["kind"] != "train":
            continue
        task = report["workloads"][row["workload"]]["task"]
        layers = "-".join(map(str, row["sizes"])) if len(row["sizes"]) < 6 else "784-256x8-10"
        body.append([row["workload"], layers, f"{row['params']:,}", str(task["batch"]),
                     f"{task['rows']:,}"]
                    + [_fmt_num(row["gflops"].get(c), ".1f") for c in contenders]
                    + [_fmt_num(row["accuracy"].get(c), ".4f") for c in contenders])
    header = (["workload", "layers", "params", "batch", "rows/epoch"]
              + [f"GFLOP/s {c}" for c in contenders] + [f"acc {c}" for c in contenders])
    return ("Training: achieved GFLOP/s (6 x params x samples) and test accuracy after one "
            "epoch", header, body)


def _small_table(report):
    """cdnn's seconds against scikit-learn's (or, for the scipy job, against itself on one
    thread), and the iterations each ran, so that unequal work shows."""
    body, repeats = [], set()
    for row in report["summary"]:
        if row["kind"] != "small" or "cdnn" not in row["values"]:
            continue
        repeats.add(report["workloads"][row["workload"]]["repeats"])
        mine, extra = row["values"]["cdnn"], row["extra"]["cdnn"]
        if "one_thread" in extra:
            other, theirs = "cdnn on 1 thread", extra["one_thread"]
            iterations = (extra["iterations"], extra["iterations_one_thread"])
        else:
            other, theirs = PEER_NAMES["sklearn"], row["values"].get("sklearn")
            iterations = (extra["iterations"], row["extra"].get("sklearn", {}).get("iterations"))
        ratio = None if not theirs else mine / theirs
        body.append([row["workload"], WORKLOADS[row["workload"]]["what"], _fmt_seconds(mine),
                     other, _fmt_seconds(theirs), _fmt_ratio(ratio),
                     " / ".join(_fmt_num(i, "g") for i in iterations)])
    best = "best of " + "/".join(str(r) for r in sorted(repeats))
    header = ["workload", "job", "cdnn", "compared with", "its time", "cdnn/it",
              "iterations (cdnn/it)"]
    return f"Small work: seconds, {best} (lower is better)", header, body


def _rss_table(report):
    contenders = report["contenders"]
    body = [[row["workload"]] + [_fmt_num(row["peak_rss_mb"].get(c), ".0f") for c in contenders]
            for row in report["summary"] if any(row["peak_rss_mb"].values())]
    how = ("whole fresh process" if report["fresh"] else
           "long-lived process, peak mark reset before each run")
    return f"Peak RSS of each run, MB ({how})", ["workload"] + contenders, body


# On random synthetic data one epoch learns little, and where each framework's initial weights
# and batch order land decides the figure: it says nothing about either one's correctness.
SYNTHETIC_PARITY_NOTE = ("; on the synthetic data (no MNIST found) these accuracies are not "
                         "comparable, give --data-dir for a parity check that means something")


def note_lines(report):
    """The notes under the tables: set-up, side measurements, and how far to trust them."""
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
                     f"{p['cdnn']:.4f}, torch {p['torch']:.4f}, difference {p['difference']:+.4f}"
                     + (SYNTHETIC_PARITY_NOTE if "synthetic" in report.get("data", "") else ""))
    lines += [line for row in report["summary"] for line in _workload_notes(report, row)]
    kinds = {row["kind"] for row in report["summary"] if row["values"]}
    if "small" in kinds:
        lines.append(SMALL_WORK_NOTE)
    lines += _load_notes(report)
    if report["mode"] == "quick" and "train" in kinds:
        lines.append("quick mode: shorter epochs (rows/epoch above) and one long-lived worker per "
                     "contender; run --full for the published numbers")
    return lines


def _workload_notes(report, row):
    if row["kind"] == "tta":
        for c, e in row["extra"].items():
            if e["reached"] < e["runs"]:
                yield (f"TTA {c}: reached the target in {e['reached']} of {e['runs']} runs "
                       f"(cap {report['workloads']['TTA']['task']['max_epochs']} epochs; "
                       f"median final accuracy {e['last_accuracy']:.4f})")
    if row["kind"] == "alloc" and "cdnn" in row["extra"]:
        a = row["extra"]["cdnn"]
        rss = a["rss_mb_after_epoch"]
        yield (f"allocation check (cdnn, M recipe, {a['rows']:,} rows/epoch): RSS after each "
               f"epoch {', '.join(f'{r:.1f}' for r in rss)} MB (growth from epoch 2 on: "
               f"{rss[-1] - rss[1] if len(rss) > 1 else 0:+.1f} MB); tracemalloc over one "
               f"epoch: peak {a['tracemalloc_peak_kib']:.0f} KiB, "
               f"retained {a['tracemalloc_growth_kib']:+.1f} KiB")


def _load_notes(report):
    loads = [r.get("load1_before") for w in report["workloads"].values()
             for results in w["raw"].values() for r in results if r.get("load1_before") is not None]
    cores = report["machine"]["usable_cores"] or 1
    if not loads:
        return []
    busy = statistics.median(loads) > cores + 1  # our own run accounts for about `cores`
    return [f"machine load (1-minute load average before each run): median "
            f"{statistics.median(loads):.1f}, max {max(loads):.1f} on {cores} cores"
            + (" -- BUSY: other programs shared the CPUs, so these timings are noisy "
               "(multithreaded BLAS/OpenMP pools suffer most); rerun on a quiet machine"
               if busy else "")]


def render_text(report):
    out = []
    for title, header, body in tables(report):
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
        out.append(title)
        out.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        out.append("  ".join("-" * w for w in widths))
        left = [i == 0 or h in TEXT_COLUMNS for i, h in enumerate(header)]
        for cells in body:
            out.append("  ".join(str(c).ljust(w) if is_left else str(c).rjust(w)
                                 for c, w, is_left in zip(cells, widths, left)))
        out.append("")
    out += ["Notes:"] + [f"- {line}" for line in note_lines(report)]
    return "\n".join(out)


def _machine_lines(report):
    m = report["machine"]
    blas = m.get("blas")
    blas_text = "; ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} "
                          f"threads, {b.get('prefix')})" for b in blas) \
        if isinstance(blas, list) else str(blas)
    v = m["versions"]
    return [f"- Date: {report['date']}",
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
            f"- bf16 matrix engine (CPU flags): {m.get('matrix_engine', '?')}"
            + "".join(f"; {c}: {i['matmul_engine']}"
                      for c, i in report.get("worker_info", {}).items()
                      if isinstance(i, dict) and i.get("matmul_engine"))]


def render_markdown(report):
    out = ["# cdnn benchmark results", ""]
    if report.get("partial"):
        out += ["**Partial: the run was still going (or was stopped) when this was written.**", ""]
    out += _machine_lines(report)
    out += ["", "Samples/s = rows per epoch / epoch seconds; ratios above 1 favour cdnn for "
            "throughput, below 1 for latency, time-to-accuracy and small work. Medians over the "
            "repeats (small work: the best); contenders alternate within each repeat.", ""]
    for title, header, body in tables(report):
        out += [f"## {title}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
        out += ["| " + " | ".join(str(c) for c in cells) + " |" for cells in body]
        out.append("")
    out += ["## Notes", ""] + [f"- {line}" for line in note_lines(report)] + [""]
    return "\n".join(out)


def write_json(report, path):
    from cdnn.io import write_atomically   # here: the peers' workers import this module
    # without cdnn, whose import would count in their measurements
    text = json.dumps(_finite(report), indent=1, default=_json_default) + "\n"
    write_atomically(path, text.encode())


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
