"""The `cdnn` command: each subcommand in-process through cdnn.cli.main, the installed console
script once in a subprocess, and bad input ending in one line on stderr, never a traceback."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cdnn
from cdnn import cli

FAST_TRAIN = ["train", "--epochs", "2", "--hidden", "16", "--verbose", "0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny fits: one thread, so a loaded machine's thread barriers do not dominate."""
    with cdnn.limit_threads(1):
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory, one_thread):
    """A model file written by `cdnn train --save`."""
    pytest.importorskip("safetensors", reason="model files need the safetensors package")
    path = tmp_path_factory.mktemp("model") / "digits.safetensors"
    assert cli.main(FAST_TRAIN + ["--save", str(path)]) == 0
    return path


def run(argv, capsys) -> tuple[int, str, str]:
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status, err, command, *words):
    assert status != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cdnn {command}: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]


# --- help and argument errors -----------------------------------------------------------------

@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["predict"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(command + ["--help"])
    assert exit_.value.code == 0
    assert f"usage: cdnn {' '.join(command)}".strip() in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--hidden", "16,x"], "expected widths"),
    (["train", "--optimizer", "lion"], "invalid choice"),
    (["predict", "model.safetensors"], "required: input"),
    ([], "required: COMMAND"),
])
def test_argument_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_forwards_its_arguments(monkeypatch):
    import cdnn.bench
    seen = []
    monkeypatch.setattr(cdnn.bench, "main", lambda argv: seen.append(argv) or 7)
    assert cli.main(["bench", "--quick", "--help"]) == 7
    assert seen == [["--quick", "--help"]]


# --- train, evaluate, predict -----------------------------------------------------------------

def test_train_saves_and_evaluate_agrees(tmp_path, capsys):
    pytest.importorskip("safetensors", reason="model files need the safetensors package")
    path = tmp_path / "adam.safetensors"
    status, out, err = run(FAST_TRAIN + ["--save", str(path), "--optimizer", "adam",
                                       "--lr", "0.01"], capsys)
    assert status == 0, err
    assert "64-16-10" in out and f"saved the model to {path}" in out
    trained_accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert trained_accuracy > 0.5
    status, out, err = run(["evaluate", str(path)], capsys)
    assert status == 0, err
    assert f"accuracy {trained_accuracy:.4f}" in out


def test_predict_npy_csv_and_stdout(model, tmp_path, capsys):
    net = cdnn.load(model)
    _, (X_test, _) = cdnn.datasets.load_digits()
    np.save(tmp_path / "x.npy", X_test[:20])
    np.savetxt(tmp_path / "x.csv", X_test[:20], delimiter=",")
    expected = net.predict(X_test[:20])

    assert run(["predict", str(model), str(tmp_path / "x.npy"), "-o",
                str(tmp_path / "y.npy")], capsys)[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)

    assert run(["predict", str(model), str(tmp_path / "x.csv"), "-o",
                str(tmp_path / "y.csv")], capsys)[0] == 0
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "y.csv", dtype=int), expected)

    status, out, _ = run(["predict", str(model), str(tmp_path / "x.npy"), "--proba"], capsys)
    proba = np.loadtxt(out.splitlines(), delimiter=",")
    assert status == 0 and proba.shape == (20, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(axis=1), expected)


def test_train_options_reach_the_optimizer(capsys, monkeypatch):
    made = []
    real = cli._optimizer
    monkeypatch.setattr(cli, "_optimizer", lambda args: made.append(real(args)) or made[-1])
    status, _, err = run(FAST_TRAIN + ["--optimizer", "sgd", "--lr", "0.02", "--momentum",
                                       "0.5", "--nesterov", "--weight-decay", "1e-4"], capsys)
    assert status == 0, err
    opt = made[0]
    assert isinstance(opt, cdnn.SGD) and (opt.lr, opt.momentum, opt.nesterov,
                                          opt.weight_decay) == (0.02, 0.5, True, 1e-4)


# --- bad values and files: one line, non-zero status --------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (FAST_TRAIN + ["--lr", "-1"], ["lr"]),
    (FAST_TRAIN + ["--epochs", "-2"], ["epochs"]),
    (FAST_TRAIN + ["--dropout", "1.5"], ["dropout"]),
    (FAST_TRAIN + ["--optimizer", "adam", "--nesterov"], ["--nesterov"]),
    (["train", "--data-dir", "/nonexistent/mnist"], ["missing in", "train-images"]),
    (["train", "--save", "/nonexistent/dir/model.safetensors"], ["no directory"]),
])
def test_bad_training_values(argv, words, capsys):
    status, _, err = run(argv, capsys)
    assert_one_line_error(status, err, "train", *words)


def test_evaluate_missing_or_foreign_model(tmp_path, capsys):
    status, _, err = run(["evaluate", str(tmp_path / "none.safetensors")], capsys)
    assert_one_line_error(status, err, "evaluate", "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model at all")
    status, _, err = run(["evaluate", str(tmp_path / "junk.safetensors")], capsys)
    assert_one_line_error(status, err, "evaluate", "junk.safetensors")


@pytest.fixture
def bad_inputs(tmp_path):
    np.save(tmp_path / "narrow.npy", np.zeros((3, 5)))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "garbage.npy").write_bytes(b"\x00\x01garbage")
    (tmp_path / "truncated.npy").write_bytes((tmp_path / "narrow.npy").read_bytes()[:100])
    (tmp_path / "words.csv").write_text("a,b,c\n")
    (tmp_path / "x.json").write_text("[]")
    return tmp_path


@pytest.mark.parametrize("name, words", [
    ("missing.npy", ["No such file", "missing.npy"]),
    ("garbage.npy", ["garbage.npy", "not a .npy file"]),
    ("truncated.npy", ["truncated.npy"]),
    ("objects.npy", ["objects.npy"]),
    ("narrow.npy", ["5 features", "takes 64"]),
    ("words.csv", ["words.csv", "CSV"]),
    ("x.json", ["unknown input format"]),
])
def test_predict_bad_input_files(model, bad_inputs, name, words, capsys):
    status, _, err = run(["predict", str(model), str(bad_inputs / name)], capsys)
    assert_one_line_error(status, err, "predict", *words)


def test_predict_unknown_output_format(model, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 64)))
    status, _, err = run(["predict", str(model), str(tmp_path / "x.npy"), "-o",
                          str(tmp_path / "y.parquet")], capsys)
    assert_one_line_error(status, err, "predict", "unknown output format")


# --- the installed console script -------------------------------------------------------------

def _console_script() -> str:
    script = Path(sys.executable).with_name("cdnn")
    found = str(script) if script.exists() else shutil.which("cdnn")
    if found is None:
        pytest.fail("the cdnn console script is not installed next to this Python")
    return found


def test_console_script_trains():
    result = subprocess.run([_console_script(), *FAST_TRAIN], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout


def test_console_script_bad_file_has_no_traceback(tmp_path):
    result = subprocess.run([_console_script(), "predict", str(tmp_path / "m.safetensors"),
                             str(tmp_path / "x.npy")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("cdnn predict: error:") and "Traceback" not in result.stderr
