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


@pytest.fixture(scope="module")
def model(tmp_path_factory):
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


@pytest.mark.parametrize("argv, prog", [
    (["train", "--hidden", "0"], "cdnn train"), (["train", "--epochs", "abc"], "cdnn train"),
    (["train", "--dtype", "float16"], "cdnn train"), (["train", "--foo"], "cdnn train"),
    (["train", "--batch-size", "0"], "cdnn train"), (["train", "--hidden", "64,,32"], "cdnn train"),
    (["train", "--hidden", ","], "cdnn train"), (["train", "--seed", "-1"], "cdnn train"),
    (["train", "--epochs", "-2"], "cdnn train"),
    (["predict", "m.safetensors"], "cdnn predict"), (["evaluate"], "cdnn evaluate"),
    ([], "cdnn"), (["fit"], "cdnn"),
])
def test_argument_errors_are_one_line(argv, prog, capsys):
    """Issue 17: argparse printed 8 lines of usage; `train --foo` the top-level usage."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"{prog}: error: "), err
    assert f"see {prog} --help" in err and "usage:" not in err


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


def test_ctrl_c_in_train_says_what_ran_saves_nothing_and_exits_130(tmp_path, capsys,
                                                                    monkeypatch):
    """Issue 23 #14: Ctrl-C in epoch 3 of 30 printed "… after 30 epochs", saved and exited 0.
    The interrupted model is not saved: --save may hold a good model it must not replace."""
    from cdnn._engine import Engine
    from sigint import SigintAfter
    import math
    steps = math.ceil(len(cdnn.datasets.load_digits()[0][0]) / 32)   # digits' batch: 32
    calls = math.ceil(steps / math.ceil(steps / cdnn._engine.CALLS_PER_EPOCH))   # per epoch
    real = Engine.training_steps
    spies = []
    monkeypatch.setattr(Engine, "training_steps", lambda *a: spies.append(
        SigintAfter(real(*a), 2 * calls + 3)) or spies[-1])    # in the third epoch
    (tmp_path / "m.safetensors").write_bytes(b"the previous model")
    status, out, err = run(["train", "--epochs", "30", "--verbose", "0", "--save",
                            str(tmp_path / "m.safetensors")], capsys)
    assert status == 130 and spies[0].deferred, err
    assert "interrupted after 2 of 30 epochs" in out and "not saved to" in out, out
    assert "after 30 epochs" not in out
    assert (tmp_path / "m.safetensors").read_bytes() == b"the previous model"


def test_labels_of_several_columns_are_refused_not_flattened(tmp_path, capsys):
    """Issue 23 #11: labels of shape (50, 2) for 100 rows were flattened into 100 labels."""
    np.save(tmp_path / "X.npy", np.random.default_rng(0).normal(size=(100, 4)))
    np.save(tmp_path / "y.npy", np.zeros((50, 2)))
    np.save(tmp_path / "y1.npy", np.arange(100) % 3)
    np.savetxt(tmp_path / "y.csv", np.arange(100) % 3, fmt="%d")   # one label per line
    status, _, err = run(["train", "--data", str(tmp_path / "X.npy"), str(tmp_path / "y.npy")],
                         capsys)
    assert_one_line_error(status, err, "train", "y.npy", "shape (50, 2)")
    for labels in ("y1.npy", "y.csv"):
        status, _, err = run(FAST_TRAIN + ["--data", str(tmp_path / "X.npy"),
                                           str(tmp_path / labels)], capsys)
        assert status == 0, err


# --- bad values and files: one line, non-zero status --------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--lr", "-1"], ["lr", "> 0"]), (["--lr", "0"], ["lr", "> 0"]),
    (["--lr", "nan"], ["lr", "finite"]), (["--dropout", "1.5"], ["--dropout", "< 1"]),
    (["--momentum", "-1"], ["momentum", "≥ 0"]), (["--weight-decay", "-1"], ["weight_decay"]),
    (["--clip-norm", "0"], ["--clip-norm", "> 0"]),
    (["--optimizer", "adam", "--nesterov"], ["--nesterov"]),
    (["--save", ""], ["--save", "empty"]),
])
def test_bad_numeric_flags_are_bad_arguments(flags, words, capsys):
    """Issue 23 #17: they ended with status 1; the README promises 2 for a bad argument, which
    --epochs -1 already gave. Checked before any data is read."""
    with pytest.raises(SystemExit) as exit:
        cli.main(FAST_TRAIN + flags)
    err = capsys.readouterr().err
    assert_one_line_error(1, err, "train", *words)
    assert exit.value.code == 2 and err.rstrip().endswith("(see cdnn train --help)")


@pytest.mark.parametrize("argv, words", [
    (["train", "--data-dir", "/nonexistent/mnist"], ["missing in", "train-images"]),
    (["train", "--save", "/nonexistent/dir/model.safetensors"], ["no such directory"]),
    (FAST_TRAIN + ["--hidden", "2000000000"], ["hidden layer 1", "2000000000"]),   # 13.16
])
def test_bad_training_values(argv, words, capsys):
    status, _, err = run(argv, capsys)
    assert_one_line_error(status, err, "train", *words)


@pytest.mark.parametrize("labels, words", [
    (np.array(["a", "b"] * 10), ["class indices (integers)", "<U1"]),
    (np.r_[np.zeros(19), np.inf], ["non-finite value (inf) at row 19"]),
    (np.r_[np.zeros(19), 1e30], ["label 1e+30, outside 0..2147483646"]),
    (np.r_[np.zeros(19), -1], ["label -1, outside"]),
    (np.r_[np.zeros(19), 0.5], ["non-integer value (0.5) at row 19"]),
])
def test_bad_labels_file(labels, words, tmp_path, capsys):
    """--data's labels are checked as the library checks them (issue 23 #12): strings gave
    numpy's "ufunc 'rint' not supported", inf "y holds label -9.22337e+18"."""
    np.save(tmp_path / "x.npy", np.zeros((20, 3)))
    np.save(tmp_path / "y.npy", labels)
    status, _, err = run(["train", "--data", str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         capsys)
    assert_one_line_error(status, err, "train", "y.npy: class labels must be integers", *words)


def test_batch_size_and_clip_norm_reach_the_trainer(capsys, monkeypatch):
    made = []
    real = cdnn.Trainer
    monkeypatch.setattr(cdnn, "Trainer", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    status, _, err = run(FAST_TRAIN + ["--batch-size", "7", "--clip-norm", "0.5"], capsys)
    assert status == 0, err
    assert (made[0].batch_size, made[0].clip_norm) == (7, 0.5)


def test_save_that_cannot_be_written_fails_before_training(tmp_path, capsys, monkeypatch):
    """Row 14: `--save /sys/m.safetensors` trained first, then failed with a traceback. A
    read-only folder stands in for /sys (root may write to a 0o500 folder; /sys it may not)."""
    monkeypatch.setattr(cdnn.Trainer, "fit", lambda *a, **k: pytest.fail("trained first"))
    for path in ["/sys/m.safetensors", str(tmp_path / "missing" / "m.safetensors"),
                 str(tmp_path)]:
        status, out, err = run(FAST_TRAIN + ["--save", path], capsys)
        assert_one_line_error(status, err, "train", path)
        assert out == ""


def test_divergence_names_the_flags(capsys):
    status, _, err = run(FAST_TRAIN + ["--lr", "1e30", "--momentum", "0"], capsys)
    assert_one_line_error(status, err, "train", "diverged", "--lr", "--clip-norm")
    assert "Trainer(" not in err


def test_offline_download_names_data_dir(model, tmp_path, capsys, monkeypatch):
    def offline(url, *args):
        raise OSError("Name or service not known")
    monkeypatch.setattr(cdnn.datasets, "_download_verified", offline)
    monkeypatch.setenv("CDNN_DATA", str(tmp_path / "cache"))
    status, _, err = run(["evaluate", str(model), "--dataset", "mnist"], capsys)
    assert_one_line_error(status, err, "evaluate", "could not download MNIST", "--data-dir")
    assert "path=" not in err


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


# --- in a subprocess: hostile inputs, pipes, terminals ------------------------------------------

def cdnn_command(*argv) -> list[str]:
    return [sys.executable, "-m", "cdnn.cli", *map(str, argv)]


def lying_npy(path: Path, shape=(10**12, 4)):
    """A 193-byte .npy file whose header claims `shape` of float64."""
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}".ljust(117) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                     + header.encode() + bytes(193 - 10 - len(header)))
    return path


PREDICT_EACH = """
import sys
from cdnn import cli
for path in sys.argv[2:]:
    print(cli.main(["predict", sys.argv[1], path]), flush=True)
"""


def test_predict_checks_input_size_before_reading(model, tmp_path):
    """Row 13: a lying .npy header was a MemoryError traceback; a .csv linked to /dev/zero (or
    a FIFO) a read without end. One process runs the three, under a timeout."""
    import os
    lying = lying_npy(tmp_path / "x.npy")
    assert lying.stat().st_size == 193
    (tmp_path / "zero.csv").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.csv")
    result = subprocess.run([sys.executable, "-c", PREDICT_EACH, str(model), str(lying),
                             str(tmp_path / "zero.csv"), str(tmp_path / "fifo.csv")],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["1", "1", "1"], result.stderr
    errors = result.stderr.splitlines()
    assert len(errors) == 3 and "Traceback" not in result.stderr
    assert all(line.startswith("cdnn predict: error: ") for line in errors)
    assert "claims shape (1000000000000, 4)" in errors[0]
    assert all(line.endswith("not a regular file") for line in errors[1:]), errors


def test_a_closed_pipe_ends_quietly(model, tmp_path):
    """`cdnn predict m big.npy | head -1` said "[Errno 32] Broken pipe", exit 1."""
    np.save(tmp_path / "big.npy", np.random.default_rng(0).normal(size=(100_000, 64)))
    child = subprocess.Popen(cdnn_command("predict", model, tmp_path / "big.npy"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = child.stdout.readline()
    child.stdout.close()   # as head does after its line
    err = child.stderr.read()
    assert child.wait(timeout=60) in (0, 141, -13)   # 141 = 128 + SIGPIPE, as `yes | head`
    assert first.strip().isdigit() and err == b""


def in_terminal(argv, columns=120, timeout=120) -> str:
    """argv's output in a pseudo-terminal of the given width, with the \r redraws as lines."""
    import fcntl
    import os
    import pty
    import re
    import struct
    import termios
    main, child_end = pty.openpty()
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    child = subprocess.Popen(argv, stdin=child_end, stdout=child_end, stderr=child_end)
    os.close(child_end)
    output = b""
    while chunk := _read_or_end(main):
        output += chunk
    child.wait(timeout=timeout)
    os.close(main)
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", output.decode())   # cursor movements
    return text


def _read_or_end(fd) -> bytes:
    import os
    try:
        return os.read(fd, 65536)
    except OSError:   # EIO: the child closed the terminal
        return b""


def test_progress_fits_80_columns_and_shows_validation_metrics():
    """Issue 17: at 80 columns the bar was cut before val_accuracy."""
    text = in_terminal(cdnn_command("train", "--epochs", "4", "--hidden", "16"))
    redraws = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    bars = [line for line in redraws if line.startswith("epoch ")]
    assert bars and all(len(line) <= 80 for line in bars), bars
    assert "val_acc" in bars[-1] and bars[-1].startswith("epoch 4/4")
    assert "test accuracy" in text


FIT_IN_A_TERMINAL = """
import cdnn
(X, y), (X_test, y_test) = cdnn.datasets.load_digits()
trainer = cdnn.Trainer(cdnn.MLP([64, 16, 10], seed=0), cdnn.SGD(lr=0.05, momentum=0.9))
trainer.fit(X, y, epochs=3, validation_data=(X_test, y_test), verbose=1)
"""


@pytest.mark.parametrize("argv", [cdnn_command("train", "--epochs", "3", "--hidden", "16"),
                                  [sys.executable, "-c", FIT_IN_A_TERMINAL]],
                         ids=["cdnn train", "fit(verbose=1)"])
def test_everything_fits_an_80_column_terminal(argv):
    """Issue 23 #15/#16: fit(verbose=1) cut its bar at "…accuracy 0.", and the CLI's header
    was 93 characters long: both wrapped or lost the validation metrics at 80 columns."""
    text = in_terminal(argv, columns=80)
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(len(line) <= 80 for line in lines), [l for l in lines if len(l) > 80]
    bars = [line for line in lines if line.startswith("epoch ")]
    assert bars[-1].startswith("epoch 3/3") and "val_acc" in bars[-1], bars


def test_divergence_message_starts_its_own_line_after_the_bar():
    text = in_terminal(cdnn_command("train", "--lr", "1e30", "--momentum", "0", "--epochs", "3"))
    lines = text.replace("\r\n", "\n").split("\n")
    assert any(line.startswith("cdnn train: error: training diverged") for line in lines), text


def test_progress_in_a_log_file_is_a_line_per_epoch(tmp_path):
    """Piped stderr got a bar redrawn with \r per epoch; now one plain line each."""
    result = subprocess.run(cdnn_command("train", "--epochs", "3", "--hidden", "16"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and len(lines) == 3
    assert all(line.startswith(f"epoch {i}/3 loss ") and "val_acc" in line
               for i, line in enumerate(lines, 1))


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
