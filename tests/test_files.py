"""Every file cdnn writes goes through cdnn.io.open_atomically (issue 23 #7): a write that
fails part-way (a full disk) leaves the previous file whole, and a FIFO is refused rather than
waited on. Paths given as bytes, and paths through a missing folder, mean the same to save and
load (issue 23 #12)."""
import contextlib
import os
import resource
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cdnn
from cdnn.cli import main

pytest.importorskip("safetensors")


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes past `limit` bytes fail with EFBIG, as a full disk fails them with ENOSPC: the
    same short write part-way through a file, with no privileges needed to set it up."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # else the signal kills us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def no_temporaries(folder) -> bool:
    return not [p for p in folder.iterdir() if ".cdnn-tmp-" in p.name]


def to_onnx(net, path):
    pytest.importorskip("onnx")
    return lambda: net.to_onnx(path)


def cdnn_export(net, path):
    pytest.importorskip("onnx")
    model = model_file(net, path)
    return lambda: command(["export", model, str(path)])


def cdnn_predict(net, path):
    inputs = path.with_name("inputs.npy")
    np.save(inputs, np.random.default_rng(0).normal(size=(2000, net.n_inputs)))
    model = model_file(net, path)
    return lambda: command(["predict", model, str(inputs), "-o", str(path), "--proba"])


def save(net, path):
    return lambda: net.save(path)


def model_file(net, path) -> str:
    model = path.with_name("model.safetensors")
    net.save(model)
    return str(model)


def command(argv):
    """The CLI reports an error as one line and status 1: raise it again for pytest.raises."""
    if main(argv) != 0:
        raise OSError(f"cdnn {argv[0]} failed")


# name -> (a function that prepares a write of this network to path and returns it, file name)
WRITERS = {"to_onnx": (to_onnx, "m.onnx"), "cdnn export": (cdnn_export, "m.onnx"),
           "predict -o .npy": (cdnn_predict, "p.npy"),
           "predict -o .csv": (cdnn_predict, "p.csv"), "save": (save, "m.safetensors")}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_write_that_fails_part_way_keeps_the_previous_file(writer, tmp_path, capsys):
    prepare, name = WRITERS[writer]
    path = tmp_path / name
    prepare(cdnn.MLP([4, 3, 2], seed=0), path)()
    before = path.read_bytes()
    write = prepare(cdnn.MLP([4, 300, 300, 20], seed=1), path)   # a far larger file
    with file_size_limit(len(before) + 100), pytest.raises(OSError):
        write()
    assert path.read_bytes() == before and no_temporaries(tmp_path)


def test_writes_onto_a_fifo_are_refused_not_waited_on(tmp_path):
    """Opening a FIFO to write blocks until a reader comes: to_onnx and `cdnn export` hung
    there. A child process, so that a regression fails by its timeout instead of hanging."""
    pytest.importorskip("onnx")
    os.mkfifo(tmp_path / "fifo.onnx")
    os.mkfifo(tmp_path / "fifo.npy")
    script = textwrap.dedent(f"""
        import numpy as np, cdnn
        from cdnn.cli import main
        folder = {str(tmp_path)!r}
        net = cdnn.MLP([4, 3, 2], seed=0)
        net.save(folder + "/m.safetensors")
        np.save(folder + "/x.npy", np.zeros((3, 4)))
        try:
            net.to_onnx(folder + "/fifo.onnx")
        except ValueError as e:
            print("to_onnx:", e)
        print("export:", main(["export", folder + "/m.safetensors", folder + "/fifo.onnx"]))
        print("predict:", main(["predict", folder + "/m.safetensors", folder + "/x.npy",
                                "-o", folder + "/fifo.npy"]))
        """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=60)
    assert child.returncode == 0, child.stderr
    assert "to_onnx: cannot save to" in child.stdout and "not a regular file" in child.stdout
    assert "export: 1" in child.stdout and "predict: 1" in child.stdout
    assert child.stderr.count("not a regular file") == 2, child.stderr


def test_history_plot_is_written_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    history = cdnn.History()
    for epoch in range(3):
        history.append(epoch, {"loss": 1.0 / (epoch + 1)})
    history.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG") and no_temporaries(tmp_path)


# --- paths: bytes, and folders that do not exist (issue 23 #12) ------------------------------

def test_a_model_saved_to_a_bytes_path_loads_from_it(tmp_path):
    net = cdnn.MLP([3, 4, 2], seed=0)
    path = os.fsencode(tmp_path / "m.safetensors")
    net.save(path)
    assert np.array_equal(cdnn.load(path).params, net.params)


def test_a_path_through_a_missing_folder_is_refused_by_save_as_by_load(tmp_path):
    """save('missing/../m.st') wrote ./m.st (realpath drops 'missing/..' unseen), and then
    load of the same path found nothing: the system needs missing/ to exist."""
    path = tmp_path / "missing" / ".." / "m.safetensors"
    with pytest.raises(FileNotFoundError, match="no such directory"):
        cdnn.MLP([3, 4, 2], seed=0).save(path)
    assert not (tmp_path / "m.safetensors").exists()
    with pytest.raises(FileNotFoundError):
        cdnn.load(path)


def test_a_path_that_is_not_a_path_is_a_type_error():
    with pytest.raises(TypeError, match="str, bytes or os.PathLike"):
        cdnn.MLP([3, 4, 2], seed=0).save(3)
