"""Where the CUDA tests run: on a GPU through CuPy when CDNN_TEST_CUDA_DEVICE is set (as
bench/gpu_check.py runs them), else on the CPU stand-in, whose kernels g++ compiles."""
import os
import shutil

import pytest

from cdnn.cuda import StandinBackend, use_backend

ON_GPU = bool(os.environ.get("CDNN_TEST_CUDA_DEVICE"))


def skip_without_a_compiler():
    """At a module's top: skip it where neither a GPU nor g++ can run the kernels."""
    if not ON_GPU and shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler to build the CUDA kernels for the CPU",
                    allow_module_level=True)


@pytest.fixture(autouse=True)
def standin():
    """Every test of a module that imports this: the stand-in backend, unless on a GPU."""
    if ON_GPU:
        yield None
    else:
        with use_backend(StandinBackend()) as b:
            yield b
