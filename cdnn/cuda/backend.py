"""Where the CUDA engine's arrays live and how its work is launched: CuPy on a GPU, or a stand-in.

A backend offers the engine: an array module (xp), the compiled kernels (get_function(name)
(grid, block, args), as cupy.RawModule), row-major GEMMs, copies between pinned host buffers
and device arrays, a stream to order the work on, and capture(launch): a run of launches
replayed as one CUDA graph. CupyBackend is the real one (cuBLAS, NVRTC, graphs).
StandinBackend (cdnn/cuda/standin.py) runs the same engine code on the CPU and refuses what
a GPU would refuse, so that everything but cuBLAS, NVRTC and the graphs themselves is
exercised without a GPU.
"""
from __future__ import annotations

import contextlib
import ctypes
import threading

import numpy as np

import cdnn.cuda.kernels as kernels
from cdnn.cuda.standin import StandinBackend

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
    cupy = _import_cupy()
    key = ("backend", cupy.cuda.runtime.getDevice())     # streams and handles are per GPU
    with _lock:
        if key not in _backends:
            _backends[key] = CupyBackend()
        return _backends[key]


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
            # no FMA contraction: the CPU builds compute a·b + c in two roundings too, so the
            # element-wise kernels give the CPU's values (src/ is built the same way)
            _backends[key] = cupy.RawModule(code=kernels.source(),
                                            options=("-std=c++17", "--fmad=false"),
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


CUDA_MEMCPY_HOST_TO_DEVICE, CUDA_MEMCPY_DEVICE_TO_HOST = 1, 2


def _load_cublas(cupy) -> ctypes.CDLL:
    """The libcublas that CuPy itself loaded (the same library, so the same version)"""
    cupy.cuda.device.get_cublas_handle()        # makes CuPy load it, if it has not yet
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libcublas.so" in line}
    except OSError:
        paths = set()
    for name in sorted(paths) + ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise CudaUnavailable("device='cuda': CuPy imports but libcublas could not be loaded")


class _Cublas:
    """cuBLAS called directly, on a handle of the engine's own. CuPy's wrappers
    (cupy_backends.cuda.libs.cublas) set the handle's stream before every call and refuse to
    while the stream is being captured (CuPy 14: "calling cuBLAS API during stream capture is
    currently unsupported"), so a run of steps with its GEMMs could not become a graph. cuBLAS
    itself supports capture (its docs, "CUDA Graphs Support"): with host-pointer scalars, which
    a graph bakes in, and a workspace of the handle's own, so that nothing is allocated in the
    graph. The handle is bound to one stream once (cublasSetStream resets the workspace, so it
    is set after)."""

    def __init__(self, cupy, stream_ptr: int):
        self.lib = lib = _load_cublas(cupy)
        p, i = ctypes.c_void_p, ctypes.c_int
        lib.cublasCreate_v2.argtypes = [ctypes.POINTER(p)]
        lib.cublasSetStream_v2.argtypes = [p, p]
        lib.cublasSetWorkspace_v2.argtypes = [p, p, ctypes.c_size_t]
        lib.cublasGemmEx.argtypes = [p, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i]
        for f in (lib.cublasCreate_v2, lib.cublasSetStream_v2, lib.cublasSetWorkspace_v2,
                  lib.cublasGemmEx):
            f.restype = i
        self.handle = p()
        self._check("cublasCreate", lib.cublasCreate_v2(ctypes.byref(self.handle)))
        self._check("cublasSetStream", lib.cublasSetStream_v2(self.handle, p(stream_ptr)))
        self.workspace = cupy.empty(CUBLAS_WORKSPACE_BYTES, np.uint8)
        self._check("cublasSetWorkspace", lib.cublasSetWorkspace_v2(
            self.handle, p(self.workspace.data.ptr), CUBLAS_WORKSPACE_BYTES))
        # alpha and beta by host pointer (the handle's default mode): read when a GEMM is
        # enqueued, or baked into a graph when it is captured
        self.scalars = {(t, v): np.array(v, t) for t in (np.float32, np.float64)
                        for v in (0.0, 1.0)}
        self.gemm_ex = lib.cublasGemmEx

    @staticmethod
    def _check(what: str, status: int):
        if status != 0:
            raise RuntimeError(f"{what} failed: cuBLAS status {status}")


class CupyBackend:
    """CuPy on the current GPU: cuBLAS GEMMs (cublasGemmEx: the compute type is the matmul
    precision), NVRTC kernels, and runs of launches captured as CUDA graphs, on a stream of
    the backend's own that every engine call orders after the caller's current stream (and
    the caller's stream after it), so that CuPy code around the engine needs no syncs."""

    name = "cuda"
    graphs = True

    def __init__(self):
        self.cupy = cupy = _import_cupy()
        self.xp = cupy
        self.module = cupy_module()
        self.device_name = cupy.cuda.runtime.getDeviceProperties(
            cupy.cuda.runtime.getDevice())["name"].decode()
        # non-blocking: the legacy default stream never joins a run being captured
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.blas = _Cublas(cupy, self.stream.ptr)
        self._events = threading.local()

    def gemm(self, a, b, c, trans_a=False, trans_b=False, accumulate=False,
             precision="float32"):
        """c := op(a) @ op(b) (+ c) on the backend's stream: C-contiguous row-major arrays, as
        the column-major product with the operands swapped (src/blas.pxd)"""
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        t = c.dtype.type
        if t is np.float64:
            data, compute = CUDA_R_64F, CUBLAS_COMPUTE_64F
        else:
            data, compute = CUDA_R_32F, COMPUTE_TYPES[precision]
        s = self.blas.scalars
        alpha, beta = s[(t, 1.0)], s[(t, 1.0 if accumulate else 0.0)]
        status = self.blas.gemm_ex(
            self.blas.handle, CUBLAS_OP_T if trans_b else CUBLAS_OP_N,
            CUBLAS_OP_T if trans_a else CUBLAS_OP_N, n, m, k, alpha.ctypes.data, b.data.ptr,
            data, b.shape[1], a.data.ptr, data, a.shape[1], beta.ctypes.data, c.data.ptr,
            data, n, compute, CUBLAS_GEMM_DEFAULT)
        if status != 0:
            raise RuntimeError(f"cublasGemmEx failed: cuBLAS status {status} ({m}×{k}·{k}×{n},"
                               f" {c.dtype}, {precision})")

    @contextlib.contextmanager
    def on_stream(self, synchronized: bool = False):
        """The block's work on the backend's stream, after what the caller's current stream
        holds; the caller's stream then waits for it, or (synchronized) the host waits for
        the block's work, when its answers are host arrays"""
        caller = self.cupy.cuda.get_current_stream()
        if caller.ptr == self.stream.ptr:
            yield
            if synchronized:
                self.stream.synchronize()
            return
        events = self._events
        if not hasattr(events, "enter"):
            make = self.cupy.cuda.Event
            events.enter, events.leave = make(disable_timing=True), make(disable_timing=True)
        events.enter.record(caller)
        self.stream.wait_event(events.enter)
        try:
            with self.stream:
                yield
        except BaseException:
            synchronized = False
            raise
        finally:
            if synchronized:        # all done: nothing for the caller's stream to wait for
                self.stream.synchronize()
            else:
                events.leave.record(self.stream)
                caller.wait_event(events.leave)

    def capture(self, launch):
        """launch() recorded once as a CUDA graph (nothing runs yet); returns what replays it
        on the stream"""
        with self.stream:
            self.stream.begin_capture()
            try:
                launch()
            except BaseException:
                with contextlib.suppress(Exception):    # the first error is the one to see
                    self.stream.end_capture()
                raise
            graph = self.stream.end_capture()
        stream = self.stream
        return lambda: graph.launch(stream)

    def copy_to_device(self, dst, src: np.ndarray):
        """dst (device) := src (a pinned host array), asynchronously on the stream"""
        self.cupy.cuda.runtime.memcpyAsync(dst.data.ptr, src.ctypes.data, src.nbytes,
                                           CUDA_MEMCPY_HOST_TO_DEVICE, self.stream.ptr)

    def copy_to_host(self, dst: np.ndarray, src):
        """dst (a pinned host array) := src (device): valid after synchronize()"""
        self.cupy.cuda.runtime.memcpyAsync(dst.ctypes.data, src.data.ptr, src.nbytes,
                                           CUDA_MEMCPY_DEVICE_TO_HOST, self.stream.ptr)

    def pinned_empty(self, shape, dtype) -> np.ndarray:
        import cupyx
        return cupyx.empty_pinned(shape, dtype)

    def to_device(self, a, dtype=None):
        return self.cupy.asarray(a, dtype=dtype)

    def upload(self, dst, host):
        """dst (an existing contiguous device array) := host, on the stream"""
        dst.set(np.ascontiguousarray(host, dtype=dst.dtype).reshape(dst.shape),
                stream=self.stream)

    def to_host(self, a) -> np.ndarray:
        return a.get(stream=self.stream) if isinstance(a, self.cupy.ndarray) else np.asarray(a)

    def is_device_array(self, a) -> bool:
        return isinstance(a, self.cupy.ndarray)

    def synchronize(self):
        self.stream.synchronize()
