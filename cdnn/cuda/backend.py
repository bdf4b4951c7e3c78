"""Where the CUDA engine's arrays live and how its work is launched: CuPy on a GPU, or a stand-in.

A backend offers the engine five things: an array module (xp), the compiled kernels
(get_function(name)(grid, block, args), as cupy.RawModule), row-major GEMMs, a stream to order
the work on, and capture(launches): a run of launches replayed as one CUDA graph. CupyBackend
is the real one (cuBLAS through CuPy, NVRTC, graphs). StandinBackend runs the same engine code
on numpy arrays with kernels.cu compiled for the CPU (cdnn/cuda/kernels.py): GEMMs by numpy,
launches eagerly, so everything but cuBLAS, NVRTC and graphs is exercised without a GPU.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from cdnn.cuda import kernels

INSTALL_HINT = ("pip install 'cdnn[cuda12]' (CUDA 12) or 'cdnn[cuda13]' (CUDA 13), which "
                "install CuPy")
PRECISIONS = ("float32", "tensorfloat32", "bfloat16")

_lock = threading.Lock()
_backends: dict = {}
_override = None            # a stand-in installed by use_backend (tests, --dry-run)


class CudaUnavailable(ImportError, RuntimeError):
    """device="cuda" where CuPy or a GPU is missing (an ImportError, as for any optional
    dependency that is absent)."""


def current() -> "CupyBackend | StandinBackend":
    """The backend device="cuda" runs on: a stand-in when one is installed, else CuPy's for the
    current GPU; or CudaUnavailable, naming what to install or that no GPU was found."""
    if _override is not None:
        return _override
    with _lock:
        if "cupy" not in _backends:
            _backends["cupy"] = CupyBackend()
        return _backends["cupy"]


@contextlib.contextmanager
def use_backend(backend):
    """Run device="cuda" on backend (e.g. StandinBackend()) inside the block."""
    global _override
    saved, _override = _override, backend
    try:
        yield backend
    finally:
        _override = saved


def _import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise CudaUnavailable(f"device='cuda' needs CuPy: {INSTALL_HINT}") from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise CudaUnavailable(f"device='cuda': no usable NVIDIA GPU was found ({e})") from e
    if count == 0:
        raise CudaUnavailable("device='cuda': no NVIDIA GPU was found")
    return cupy


def cupy_module():
    """kernels.cu compiled by NVRTC for the current GPU (once per process and GPU)."""
    cupy = _import_cupy()
    key = ("module", cupy.cuda.runtime.getDevice())
    with _lock:
        if key not in _backends:
            _backends[key] = cupy.RawModule(code=kernels.source(), options=("-std=c++17",),
                                            name_expressions=kernels.name_expressions())
        return _backends[key]


# cuBLAS's codes (cublas_api.h, library_types.h)
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUDA_R_32F, CUDA_R_64F = 0, 1
CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_64F = 68, 70
CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_COMPUTE_32F_FAST_TF32 = 75, 77
CUBLAS_GEMM_DEFAULT = -1
COMPUTE_TYPES = {"float32": CUBLAS_COMPUTE_32F, "tensorfloat32": CUBLAS_COMPUTE_32F_FAST_TF32,
                 "bfloat16": CUBLAS_COMPUTE_32F_FAST_16BF}
CUBLAS_WORKSPACE_BYTES = 32 << 20


class CupyBackend:
    """CuPy on the current GPU: cuBLAS GEMMs (cublasGemmEx: the compute type is the matmul
    precision), NVRTC kernels, and runs of launches captured as CUDA graphs."""

    name = "cuda"
    graphs = True

    def __init__(self):
        self.cupy = cupy = _import_cupy()
        from cupy_backends.cuda.libs import cublas
        self.xp, self.cublas = cupy, cublas
        self.module = cupy_module()
        self.device_name = cupy.cuda.runtime.getDeviceProperties(
            cupy.cuda.runtime.getDevice())["name"].decode()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        # alpha and beta by host pointer: read when a GEMM is enqueued (or captured)
        self._scalars = {(t, v): np.array(v, t) for t in (np.float32, np.float64)
                         for v in (0.0, 1.0)}
        self.handle = cupy.cuda.device.get_cublas_handle()
        # a workspace of cuBLAS's own, so that no GEMM allocates while a graph is captured
        self._workspace = cupy.empty(CUBLAS_WORKSPACE_BYTES, np.uint8)
        if hasattr(cublas, "setWorkspace"):
            cublas.setWorkspace(self.handle, self._workspace.data.ptr, CUBLAS_WORKSPACE_BYTES)

    def gemm(self, a, b, c, trans_a=False, trans_b=False, accumulate=False,
             precision="float32"):
        """c := op(a) @ op(b) (+ c): row-major arrays, as the column-major product with the
        operands swapped (src/blas.pxd)"""
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        t = c.dtype.type
        if t is np.float64:
            data, compute = CUDA_R_64F, CUBLAS_COMPUTE_64F
        else:
            data, compute = CUDA_R_32F, COMPUTE_TYPES[precision]
        alpha, beta = self._scalars[(t, 1.0)], self._scalars[(t, 1.0 if accumulate else 0.0)]
        self.cublas.gemmEx(self.handle, CUBLAS_OP_T if trans_b else CUBLAS_OP_N,
                           CUBLAS_OP_T if trans_a else CUBLAS_OP_N, n, m, k, alpha.ctypes.data,
                           b.data.ptr, data, b.shape[1], a.data.ptr, data, a.shape[1],
                           beta.ctypes.data, c.data.ptr, data, n, compute, CUBLAS_GEMM_DEFAULT)

    @contextlib.contextmanager
    def on_stream(self):
        with self.stream:
            yield

    def capture(self, launch):
        """launch() recorded once as a CUDA graph; returns what replays it on the stream"""
        with self.stream:
            self.stream.begin_capture()
            try:
                launch()
            finally:
                graph = self.stream.end_capture()
        return lambda: graph.launch(self.stream)

    def to_device(self, a, dtype=None):
        return self.cupy.asarray(a, dtype=dtype)

    def to_host(self, a) -> np.ndarray:
        return a.get(stream=self.stream) if isinstance(a, self.cupy.ndarray) else np.asarray(a)

    def is_device_array(self, a) -> bool:
        return isinstance(a, self.cupy.ndarray)

    def synchronize(self):
        self.stream.synchronize()


class StandinBackend:
    """The engine's CUDA path on the CPU: numpy arrays for device arrays, kernels.cu compiled by
    g++ (each launch runs its grid's threads in turn), numpy GEMMs, launches run eagerly where
    a GPU replays a graph. The matmul precision has no effect here."""

    name = "cuda (CPU stand-in)"
    graphs = False
    device_name = "CPU stand-in"

    def __init__(self):
        self.xp = np
        self.module = kernels.host_module()

    def gemm(self, a, b, c, trans_a=False, trans_b=False, accumulate=False,
             precision="float32"):
        with np.errstate(all="ignore"):     # as on a GPU: overflow is the status word's job
            product = np.matmul(a.T if trans_a else a, b.T if trans_b else b)
        if accumulate:
            c += product
        else:
            c[...] = product

    def on_stream(self):
        return contextlib.nullcontext()

    def capture(self, launch):
        return launch

    def to_device(self, a, dtype=None):
        return np.array(a, dtype=dtype, copy=True)     # a device copy is not the host's array

    def to_host(self, a) -> np.ndarray:
        return np.array(a, copy=True)

    def is_device_array(self, a) -> bool:
        return False        # every array is a host array: copied in, answers copied out

    def synchronize(self):
        pass
