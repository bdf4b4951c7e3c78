"""Shared fixtures. The suite tests an installed package (what a wheel gives users) or an
editable install (`pip install -e .`, whose cdnn/ holds the compiled kernels beside the source)."""
import os
import signal
from pathlib import Path

import numpy as np
import pytest

import cdnn

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"

if (Path(cdnn.__file__).resolve().parent == REPO / "cdnn"
        and not any((REPO / "cdnn").glob("_network*.so"))):
    raise RuntimeError("the tests imported cdnn from the source tree; install it "
                       "(pip install .) and run `pytest` from the repository root")

# Subprocesses started by the tests (`python -c …`, `python -m cdnn.cli`) would put the current
# folder first on sys.path; run from the repository root, they would then import the source
# tree, which has no compiled kernels outside an editable install. Python 3.11+ leaves it out.
os.environ.setdefault("PYTHONSAFEPATH", "1")

# A shell without job control starts a background job (`pytest … &`, nohup) with SIGINT ignored,
# and Python then leaves it ignored; the Ctrl-C tests send a real SIGINT and need Python's own
# handler, as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

DTYPES = [np.float32, np.float64]
# per-dtype tolerance for comparing a kernel with its numpy reference
RTOL = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def mnist():
    """((X_train, y_train), (X_test, y_test)) from ../shared/data/mnist, or a skip."""
    if not MNIST_DIR.is_dir():
        pytest.skip(f"MNIST not found at {MNIST_DIR}")
    return cdnn.datasets.load_mnist(MNIST_DIR)
