"""From raw runs to a summary: one row per workload with each contender's median (or, for the
small jobs, best) value, the ratios to the peers, and the one-epoch accuracy parity."""
from __future__ import annotations

import statistics

from .workloads import PEERS, param_count


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _metric(kind, res):
    """The number a run is ranked by, and whether higher is better."""
    if kind in ("train", "predict_batch"):
        return res["rows"] / res["seconds"], True
    if kind == "tta":
        return (res["seconds"] if res["reached"] else float("inf")), False
    return res["seconds"], False  # predict1: latency; small: seconds


def summarize(report):
    """Add report["summary"] (rows) and report["parity"]; return the report."""
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
            if ok:
                _summarize_contender(row, c, ok)
        _ratios(row)
        if kind == "train" and gemm_gflops:
            row["sgemm_fraction"] = {c: g / gemm_gflops for c, g in row["gflops"].items()}
        rows.append(row)
    report["summary"] = rows
    report["parity"] = _parity(rows)
    return report


def _summarize_contender(row, c, ok):
    """Fill contender c's cells of `row` from its successful runs `ok`."""
    kind = row["kind"]
    row["peak_rss_mb"][c] = _median([r.get("peak_rss_mb") for r in ok])
    if kind == "alloc":
        row["extra"][c] = ok[0]
        return
    values = [_metric(kind, r)[0] for r in ok]
    row["higher_is_better"] = _metric(kind, ok[0])[1]
    # the small jobs take well under a second: the best run is the least disturbed one
    row["values"][c] = min(values) if kind == "small" else statistics.median(values)
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
    if kind == "small":
        row["extra"][c] = dict(iterations=_median([r["iterations"] for r in ok]))
        if ok[0].get("seconds_one_thread") is not None:
            row["extra"][c].update(
                one_thread=min(r["seconds_one_thread"] for r in ok),
                iterations_one_thread=_median([r["iterations_one_thread"] for r in ok]))


def _ratios(row):
    """cdnn's value over each peer's, and over the best peer's."""
    row["ratios"], row["best_peer"], row["ratio_best"] = {}, None, None
    cd = row["values"].get("cdnn")
    peers = {p: v for p, v in row["values"].items() if p in PEERS}
    if row["kind"] == "alloc" or cd is None or not peers:
        return
    finite = {p: v for p, v in peers.items() if v not in (0, float("inf"))}
    for p, v in finite.items():
        row["ratios"][p] = cd / v
    pick = max if row.get("higher_is_better") else min
    best = pick(peers, key=peers.get)
    row["best_peer"] = best
    row["ratio_best"] = row["ratios"].get(best)


def _parity(rows):
    for row in rows:
        if row["workload"] == "M" and {"cdnn", "torch"} <= set(row["accuracy"]):
            a, b = row["accuracy"]["cdnn"], row["accuracy"]["torch"]
            return dict(cdnn=a, torch=b, difference=a - b, seeds=row["runs"]["cdnn"])
    return None
