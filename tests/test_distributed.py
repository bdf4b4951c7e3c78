"""Data-parallel training (cdnn.distributed): the checks under `mpiexec -n 2`, launched from
here with a timeout (a hang fails, never blocks the suite), and what one process can check.
Skips without mpi4py or an mpiexec."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cdnn
from cdnn.distributed import find_mpiexec

MPI = pytest.importorskip("mpi4py.MPI")
CHECKS = Path(__file__).parent / "mpi" / "distributed_checks.py"


def mpiexec():
    found = find_mpiexec()
    if found is None:
        pytest.skip("no mpiexec (pip install 'cdnn[mpi]')")
    return found


def test_two_ranks_under_mpiexec():
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    try:
        done = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "pytest", "-q",
                               "-p", "no:cacheprovider", str(CHECKS)],
                              capture_output=True, text=True, timeout=240, env=env,
                              cwd=CHECKS.parents[2])
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the ranks hung: {(e.stdout or b'')[-3000:]}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert output.count(" passed") == 2 and "skipped" not in output, output[-3000:]


def blobs(n=120):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    return rng.normal(size=(n, 10)) + 2.0 * np.eye(3, 10)[y], y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_rank_through_the_native_exchange_is_one_process(dtype):
    runs = []
    for comm in (None, MPI.COMM_SELF):
        net = cdnn.MLP([10, 16, 3], dtype=dtype, seed=1)
        with cdnn.limit_threads(1):
            history = cdnn.Trainer(net, cdnn.Adam(lr=0.01), batch_size=16, comm=comm).fit(
                *blobs(), epochs=2, verbose=0, sample_weight=np.linspace(0.5, 2, 120))
        runs.append((net.params, history.history))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_bad_arguments_are_clear_errors():
    net = cdnn.MLP([10, 3])
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        cdnn.Trainer(net, cdnn.SGD(), comm="world")
    with pytest.raises(ValueError, match="sharded=True is for data-parallel training"):
        cdnn.Trainer(net, cdnn.SGD()).fit(*blobs(), sharded=True)


def test_the_command_line_trains_data_parallel(tmp_path):
    model = tmp_path / "model.safetensors"
    done = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c",
                           "import sys; from cdnn.cli import main; sys.exit(main())",
                           "train", "--distributed", "--epochs", "3", "--verbose", "2",
                           "--save", str(model)],
                          capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1",
                                   OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    # only rank 0 prints: one result, and each epoch once (--verbose 2 lines go to stdout)
    assert done.stdout.count("test accuracy") == 1 and done.stdout.count("epoch 3/3") == 1
    accuracy = float(done.stdout.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.9 and cdnn.load(model).evaluate(
        *cdnn.datasets.load_digits()[1])["accuracy"] == pytest.approx(accuracy, abs=1e-4)
