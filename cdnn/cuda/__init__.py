"""cdnn on an NVIDIA GPU: MLP(..., device="cuda").

Needs CuPy (pip install 'cdnn[cuda12]' or 'cdnn[cuda13]'); the core package does not. The engine
(engine.py) implements cdnn's engine interface over a backend (backend.py): CuPy with cuBLAS,
NVRTC-compiled kernels (kernels.cu) and CUDA graphs on a GPU, or a CPU stand-in that runs the
same code path on numpy arrays (tests, bench/gpu_check.py --dry-run).
"""
from cdnn.cuda.backend import CudaUnavailable, CupyBackend, current, use_backend
from cdnn.cuda.standin import StandinBackend


def is_available() -> bool:
    """Whether device="cuda" can run here (CuPy imports and a GPU is found)"""
    try:
        current()
    except CudaUnavailable:
        return False
    return True


__all__ = ["CudaUnavailable", "CupyBackend", "StandinBackend", "current", "use_backend",
           "is_available"]
