"""The CUDA engine's code path on the CPU: a stand-in for CuPy that refuses what a GPU refuses.

Device arrays are DeviceArray (a numpy array subclass); kernels.cu runs compiled by g++
(cdnn/cuda/kernels.py); GEMMs are numpy's. What the stand-in checks, because CuPy, cuBLAS or
a CUDA graph would fail (or silently compute garbage) where plain numpy would not:

- host and device arrays do not mix: a numpy array assigned into a device array, mixed into
  its arithmetic or passed to a numpy function with it is a TypeError, as in CuPy (which
  copies to the device only when asked: xp.asarray, backend.to_device);
- a kernel's pointer arguments are device arrays (CuPy passes a size-one numpy array *by
  value*, and refuses larger ones), of the signature's dtype, C-contiguous; scalars are numpy
  scalars of the signature's type (a Python float is 8 bytes where a float parameter reads 4);
- GEMM operands are C-contiguous device arrays of one dtype (the GPU passes leading
  dimensions from the shapes);
- capture(launch) records launch()'s kernels, GEMMs and copies, with their arguments as they
  were (pointers and scalars baked in, as a CUDA graph does), and the replay runs the record.
  While recording, nothing may allocate through xp, move data to or from the host other than
  through pinned buffers, or wait for the device: on a GPU those are errors, or memory that
  the pool hands to someone else while the graph still writes it.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

import cdnn.cuda.kernels as kernels


class CaptureError(RuntimeError):
    """Something a CUDA graph cannot hold was done while a run was being recorded."""


def _is_host_array(x) -> bool:
    return isinstance(x, np.ndarray) and not isinstance(x, DeviceArray) and x.ndim > 0


class DeviceArray(np.ndarray):
    """A stand-in device array: numpy underneath, CuPy's rules on top (see the module)."""

    __cdnn_device__ = True      # cdnn._devices.is_device_array

    def get(self, stream=None, out=None, blocking=True) -> np.ndarray:
        """A host copy, as cupy.ndarray.get"""
        _current().check_not_recording("a device-to-host copy (.get) waits for the device")
        host = np.array(self, copy=True, subok=False)
        if out is None:
            return host
        out[...] = host
        return out

    def __setitem__(self, key, value):
        if _is_host_array(value):
            raise TypeError("a numpy array cannot be assigned into a device array (CuPy "
                            "refuses it): copy it to the device first (xp.asarray)")
        super().__setitem__(key, value)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out") or ()
        out = out if isinstance(out, tuple) else (out,)
        if any(_is_host_array(x) for x in inputs + out):
            raise TypeError(f"numpy.{ufunc.__name__} mixes a device array with a numpy array "
                            f"(CuPy refuses it)")
        base = lambda xs: tuple(x.view(np.ndarray) if isinstance(x, DeviceArray) else x
                                for x in xs)
        if out:
            kwargs["out"] = base(out)
        result = getattr(ufunc, method)(*base(inputs), **kwargs)
        if out:
            return out[0] if len(out) == 1 else out
        if isinstance(result, tuple):
            return tuple(_device(r) for r in result)
        return _device(result)

    def __array_function__(self, func, types, args, kwargs):
        if getattr(_state, "inside", False):     # numpy's own calls within a function
            return super().__array_function__(func, types, args, kwargs)
        if any(_is_host_array(x) for x in _flat(args) + _flat(tuple(kwargs.values()))):
            raise TypeError(f"numpy.{func.__name__} mixes a device array with a numpy array "
                            f"(CuPy refuses it)")
        _state.inside = True
        try:
            return super().__array_function__(func, types, args, kwargs)
        finally:
            _state.inside = False


def _device(x):
    return x.view(DeviceArray) if isinstance(x, np.ndarray) else x


class PinnedArray(np.ndarray):
    """A stand-in page-locked host buffer (cupyx.empty_pinned): the one kind of host memory a
    captured copy may read or write."""


def _flat(items) -> tuple:
    out = []
    for x in items:
        out.extend(_flat(x) if isinstance(x, (list, tuple)) else [x])
    return tuple(out)


# numpy functions that make a new array: on the device, an allocation from CuPy's pool
ALLOCATING = {"empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like",
              "full_like", "array", "asarray", "ascontiguousarray", "copy", "arange"}


class DeviceArrays:
    """The stand-in's xp: numpy whose arrays are DeviceArray. While a run is being recorded,
    every call refuses: on a GPU it would allocate, or run outside the graph."""

    ndarray = DeviceArray

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        value = getattr(np, name)
        if isinstance(value, type) or not callable(value):
            return value        # dtypes, constants

        def call(*args, **kwargs):
            self._backend.check_not_recording(f"xp.{name}() allocates or launches outside "
                                              f"the graph")
            result = value(*args, **kwargs)
            if name in ALLOCATING and isinstance(result, np.ndarray):
                return result.view(DeviceArray)
            return result
        return call


_state = threading.local()


def _current():
    return getattr(_state, "backend", None) or _NOT_RECORDING


class _NotRecording:
    def check_not_recording(self, what: str):
        pass


_NOT_RECORDING = _NotRecording()


class _Kernel:
    """A kernel of the CPU build, launched by the engine: its pointers must be device arrays;
    while a run is recorded, the launch is recorded with its arguments bound (baked)."""

    def __init__(self, backend, kernel):
        self.backend, self.kernel = backend, kernel

    def __call__(self, grid, block, args, **kwargs):
        for i, (code, arg) in enumerate(zip(self.kernel.signature, args)):
            if code.isupper() and isinstance(arg, np.ndarray) \
                    and not isinstance(arg, DeviceArray):
                raise TypeError(f"{self.kernel.name}: argument {i} is a numpy array where the "
                                f"kernel takes a device pointer (CuPy would pass a size-one "
                                f"array by value and refuse a larger one)")
        bound = self.kernel.bind(grid, block, args)     # checks the signature now, as CuPy
        self.backend.issue(lambda: self.kernel.launch_bound(bound))  # packs it at capture


class _Module:
    def __init__(self, backend, module):
        self.backend, self.module = backend, module

    def get_function(self, name: str) -> _Kernel:
        return _Kernel(self.backend, self.module.get_function(name))


class StandinBackend:
    """The engine's CUDA path on the CPU (see the module): numpy arrays for device arrays,
    kernels.cu compiled by g++, numpy GEMMs, CUDA graphs as records of launches. The matmul
    precision has no effect here."""

    name = "cuda (CPU stand-in)"
    graphs = True           # recorded and replayed, as on a GPU
    device_name = "CPU stand-in"

    def __init__(self):
        self.xp = DeviceArrays(self)
        self.module = _Module(self, kernels.host_module())
        self._record: list | None = None
        self.replays = 0        # how many recorded runs were replayed (tests count them)

    # --- the rules of a captured region ----------------------------------------------------

    def check_not_recording(self, what: str):
        if self._record is not None:
            raise CaptureError(f"inside a captured CUDA graph: {what}")

    def issue(self, work):
        """Run work now, or record it for the replays while a run is captured"""
        if self._record is None:
            work()
        else:
            self._record.append(work)

    def capture(self, launch):
        """launch() recorded once, as a CUDA graph; returns what replays the record"""
        if self._record is not None:
            raise CaptureError("a capture inside a capture")
        self._record, saved = [], getattr(_state, "backend", None)
        _state.backend = self
        try:
            launch()
            record = self._record
        finally:
            self._record, _state.backend = None, saved

        def replay():
            self.replays += 1
            for work in record:
                work()
        return replay

    # --- the device's work -----------------------------------------------------------------

    def gemm(self, a, b, c, trans_a=False, trans_b=False, accumulate=False,
             precision="float32"):
        """c := op(a) @ op(b) (+ c), checked as cuBLAS would need them"""
        for name, x in (("a", a), ("b", b), ("c", c)):
            if not isinstance(x, DeviceArray) or x.ndim != 2 or not x.flags.c_contiguous:
                raise TypeError(f"gemm: {name} must be a C-contiguous 2-D device array (the "
                                f"leading dimension comes from its shape)")
        if not a.dtype == b.dtype == c.dtype:
            raise TypeError(f"gemm: operands of one dtype, got {a.dtype}, {b.dtype}, {c.dtype}")
        m, k = a.shape[::-1] if trans_a else a.shape
        k2, n = b.shape[::-1] if trans_b else b.shape
        if k != k2 or c.shape != (m, n):
            raise ValueError(f"gemm: shapes {a.shape}, {b.shape} -> {c.shape} do not agree")
        A, B, C = (np.asarray(x).view(np.ndarray) for x in (a, b, c))

        def work():
            with np.errstate(all="ignore"):     # as on a GPU: overflow is the status word's
                product = np.matmul(A.T if trans_a else A, B.T if trans_b else B)
            if accumulate:
                C[...] += product
            else:
                C[...] = product
        self.issue(work)

    def copy_to_device(self, dst, src):
        """dst (device) := src (host), asynchronously on the stream; in a graph, src must be
        pinned"""
        self._check_copy(src, dst, "host-to-device")
        D, S = dst.view(np.ndarray), src.view(np.ndarray)
        self.issue(lambda: np.copyto(D, S))

    def copy_to_host(self, dst, src):
        """dst (host) := src (device), asynchronously: valid after synchronize()"""
        self._check_copy(dst, src, "device-to-host")
        D, S = dst.view(np.ndarray), src.view(np.ndarray)
        self.issue(lambda: np.copyto(D, S))

    def _check_copy(self, host, device, what: str):
        if not isinstance(device, DeviceArray) or isinstance(host, DeviceArray) \
                or not isinstance(host, np.ndarray):
            raise TypeError(f"a {what} copy between a host array and a device array")
        if host.dtype != device.dtype or host.shape != device.shape \
                or not (host.flags.c_contiguous and device.flags.c_contiguous):
            raise ValueError(f"a {what} copy of one C-contiguous shape and dtype")
        if self._record is not None and not isinstance(host, PinnedArray):
            raise CaptureError(f"inside a captured CUDA graph: a {what} copy from pageable "
                               f"memory (the graph would read it at replay; pin it)")

    def pinned_empty(self, shape, dtype) -> np.ndarray:
        self.check_not_recording("a pinned buffer allocated")
        return np.empty(shape, dtype).view(PinnedArray)

    @contextlib.contextmanager
    def on_stream(self, synchronized: bool = False):
        yield
        if synchronized:
            self.synchronize()

    def to_device(self, a, dtype=None):
        self.check_not_recording("a host array copied to the device (pageable, new memory)")
        if isinstance(a, DeviceArray):
            return a.astype(dtype or a.dtype, copy=False)
        return np.array(a, dtype=dtype, copy=True).view(DeviceArray)

    def upload(self, dst, host):
        """dst (an existing device array) := host (a host array of its size)"""
        self.check_not_recording("a pageable host-to-device copy")
        dst.view(np.ndarray)[...] = np.asarray(host, dtype=dst.dtype).reshape(dst.shape)

    def to_host(self, a) -> np.ndarray:
        self.check_not_recording("a device-to-host copy waits for the device")
        if isinstance(a, DeviceArray):
            return a.get()
        return np.array(a, copy=True)

    def is_device_array(self, a) -> bool:
        return isinstance(a, DeviceArray)

    def synchronize(self):
        self.check_not_recording("a wait for the device (synchronize)")
