"""The benchmark suite's plumbing: option parsing, the worker process, the small jobs and the
report. No timing is asserted: a benchmark measures and prints."""
import re
import warnings

import numpy as np
import pytest

import cdnn
from cdnn.bench import build_parser, report, small, summary, workloads
from cdnn.bench.runner import Worker, _missing_note


def test_small_group_expands_to_every_small_job():
    args = build_parser().parse_args(["--workloads", "S,small"])
    assert args.workloads == ["S"] + workloads.SMALL_WORKLOADS
    assert set(workloads.SMALL_WORKLOADS) <= set(workloads.MODES["quick"]["workloads"])
    assert set(workloads.SMALL_WORKLOADS) <= set(workloads.MODES["full"]["workloads"])


def test_unknown_workload_is_refused(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--workloads", "S,nope"])
    assert "unknown nope" in capsys.readouterr().err


@pytest.mark.parametrize("peer, distributions", [("torch", ["torch"]), ("jax", ["jax", "jaxlib"]),
                                                 ("sklearn", ["scikit-learn"]),
                                                 ("ort", ["onnxruntime", "onnx"])])
def test_a_missing_peer_note_says_how_to_install_it(peer, distributions):
    note = _missing_note(peer)
    assert workloads.PEER_NAMES[peer] in note and "pip install 'cdnn[bench]'" in note
    command = note.split("`")[1]
    assert command.startswith("pip install ")
    assert [re.split("[<>=]", word)[0] for word in command.split()[2:]] == distributions


def test_onnx_runtime_runs_the_predict_workloads_only():
    ort = [wl for wl in workloads.WORKLOADS if workloads.runs("ort", wl)]
    assert {"P1", "P1s", "PB", "PBs"} <= set(ort)
    assert all(workloads.WORKLOADS[wl]["kind"] in workloads.PREDICT_KINDS for wl in ort)
    assert workloads.runs("cdnn", "S") and not workloads.runs("ort", "S")
    assert workloads.WORKLOADS["PBs"]["sizes"] == [784, 128, 10]


def test_onnx_runtime_predicts_with_cdnns_weights_and_threads():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cdnn.bench.contenders import CdnnContender, OrtContender, usable_cores
    X = np.random.default_rng(0).random((50, 12), dtype=np.float32)
    ours, theirs = CdnnContender(), OrtContender()
    m = theirs.build([12, 16, 5], 32, 3, X, None)
    options = m.session.get_session_options()
    assert options.intra_op_num_threads == usable_cores() == cdnn.get_num_threads()
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == theirs.ort.ExecutionMode.ORT_SEQUENTIAL
    net = ours.build([12, 16, 5], 32, 3, X, None).net
    probabilities = m.session.run(None, {m.input: X})[0]
    np.testing.assert_allclose(probabilities, net.predict_proba(X), atol=1e-5)
    predict, context = theirs.predictor(m)
    with context():
        np.testing.assert_array_equal(predict(X), net.predict(X))


def _worker_runs(tmp_path, contender, *tasks):
    for name in ("X_train", "X_test"):
        np.save(tmp_path / f"{name}.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "y_train.npy", np.zeros(2, np.int64))
    worker = Worker(contender, str(tmp_path), timeout=120)
    try:
        assert worker.ready.get("ready"), worker.ready
        return [worker.run(task) for task in tasks]
    finally:
        worker.close()


def test_a_peer_worker_does_not_import_cdnn(tmp_path):
    info, = _worker_runs(tmp_path, "numpy", dict(kind="info"))
    assert info["ok"] and info["imports_cdnn"] is False


def test_onnx_runtime_worker_predicts_without_importing_cdnn(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    latency, info = _worker_runs(tmp_path, "ort", dict(kind="predict1", sizes=[3, 4, 2], seed=0,
                                                        calls=5, inputs="test rows"),
                                 dict(kind="info"))
    assert latency["ok"] and latency["calls"] == 5 and latency["seconds"] > 0, latency
    assert info["ok"] and info["imports_cdnn"] is False     # the export ran in a child process
    assert info["ort_threads"] >= 1


SMALL_JOBS = [(contender, case) for case in small.JOBS for contender in ("cdnn", "sklearn")
              if case != "scipy" or contender == "cdnn"]     # the scipy job is cdnn's alone


@pytest.mark.parametrize("contender, case", SMALL_JOBS)
def test_small_jobs_run_on_both_apis(contender, case):
    pytest.importorskip("sklearn")  # the small jobs drive scikit-learn style estimators
    from cdnn.bench.contenders import CONTENDER_CLASSES
    job, _ = small.JOBS[case]
    with cdnn.limit_threads(1), warnings.catch_warnings():  # a couple of iterations: it runs
        warnings.simplefilter("ignore")     # ConvergenceWarning, of course
        assert 1 <= job(CONTENDER_CLASSES[contender](), 2) <= 2


def _run(seconds, **extra):
    return dict(ok=True, seconds=seconds, **extra)


def fake_report():
    """A finished report as run_suite and summarize leave it, without running anything."""
    raw_small = {"cdnn": [_run(0.3, iterations=105), _run(0.2, iterations=105),
                          _run(0.4, iterations=105)],
                 "sklearn": [_run(0.15, iterations=109), _run(0.1, iterations=109),
                             _run(0.2, iterations=109)]}
    raw_scipy = {"cdnn": [_run(s, iterations=100, seconds_one_thread=t, iterations_one_thread=99)
                          for s, t in ((0.9, 0.3), (0.6, 0.2), (0.7, 0.25))]}
    raw_train = {c: [dict(ok=True, rows=1000, seconds=s, test_accuracy=0.9)] for c, s in
                 (("cdnn", 0.5), ("sklearn", 2.0))}
    tasks = {wl: workloads.task_for(wl, workloads.MODES["quick"])
             for wl in ("M", "small-lbfgs", "small-scipy")}
    rep = dict(mode="quick", fresh=False, contenders=["cdnn", "sklearn"], notes=[],
               machine=dict(usable_cores=2), gemm=None,
               workloads={"M": dict(task=tasks["M"], repeats=1, raw=raw_train),
                          "small-lbfgs": dict(task=tasks["small-lbfgs"], repeats=3, raw=raw_small),
                          "small-scipy": dict(task=tasks["small-scipy"], repeats=3,
                                              raw=raw_scipy)})
    return summary.summarize(rep)


def test_small_work_table_reports_the_best_run_and_its_ratio():
    tables = {title: (header, body) for title, header, body in report.tables(fake_report())}
    title = "Small work: seconds, best of 3 (lower is better)"
    header, body = tables[title]
    rows = {cells[0]: dict(zip(header, cells)) for cells in body}
    assert rows["small-lbfgs"]["cdnn"] == "0.200 s"             # the best, not the median
    assert rows["small-lbfgs"]["its time"] == "0.100 s"
    assert rows["small-lbfgs"]["compared with"] == "scikit-learn"
    assert rows["small-lbfgs"]["cdnn/it"] == "2.00x"
    assert rows["small-scipy"]["compared with"] == "cdnn on 1 thread"
    assert rows["small-scipy"]["cdnn/it"] == "3.00x"              # 0.6 s against 0.2 s
    assert rows["small-scipy"]["iterations (cdnn/it)"] == "100 / 99"
    results = {cells[0] for cells in tables["Results (medians)"][1]}
    assert results == {"M"}                                       # small jobs have their own


def test_rendered_report_is_for_users():
    rep = fake_report()
    for text in (report.render_text(rep), report.render_markdown(dict(
            rep, date="today", command="cdnn bench", data="synthetic",
            machine=dict(rep["machine"], cpu="cpu", platform="linux", python="3", versions={},
                         blas=[]))),):
        assert "Small work" in text and "small-scipy" in text
        assert "issue" not in text.lower() and "target" not in text.lower()


def test_accuracy_parity_on_synthetic_data_says_it_means_nothing():
    """Issue 23 #20: "accuracy parity … cdnn 0.3137, torch 0.6700" on synthetic data, bare."""
    parity = {"seeds": 3, "cdnn": 0.3137, "torch": 0.67, "difference": -0.3563}
    for data, caveat in (("synthetic MNIST-shaped data", True), ("MNIST from DIR", False)):
        lines = [line for line in report.note_lines(dict(fake_report(), parity=parity,
                                                         data=data))
                 if line.startswith("accuracy parity")]
        assert len(lines) == 1 and ("not comparable" in lines[0]) == caveat, lines
