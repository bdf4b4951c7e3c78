"""The CUDA kernels' source and names, and the source compiled for the CPU (tests, --dry-run).

kernels.cu is one template for float and double. On a GPU, NVRTC compiles it at first use
(cupy.RawModule with the name expressions below). Without one, g++ compiles the same file under
host_shim.h into a shared library whose launches run the grid's threads one after another:
HostModule offers it behind RawModule's get_function(name)(grid, block, args), so the engine's
code path is the same on both.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "kernels.cu"
SHIM = HERE / "host_shim.h"

# kernels instantiated for T = float and double, and those without a type parameter
TEMPLATES = ("gather_rows", "bias_activation", "activation_inplace", "activation_backward_bias",
             "sum_chunks", "dropout", "loss_delta", "loss_scale", "sum_squares", "l2_gradient",
             "finish_loss", "sgd_update", "adam_update", "rmsprop_update", "softmax_rows",
             "find_nonfinite")
PLAIN = ("gather_labels", "strided_sum", "clip_scale")
C_TYPES = {np.float32: "float", np.float64: "double"}


def name_expressions() -> list[str]:
    """Every kernel NVRTC instantiates, as it names them: "gather_rows<float>", …"""
    return [f"{name}<{t}>" for t in C_TYPES.values() for name in TEMPLATES] + list(PLAIN)


def kernel_name(name: str, dtype) -> str:
    """The name expression of kernel `name` for arrays of dtype (plain kernels: the name)."""
    return f"{name}<{C_TYPES[np.dtype(dtype).type]}>" if name in TEMPLATES else name


def source() -> str:
    return SOURCE.read_text()


# --- the kernels compiled for the CPU ----------------------------------------------------------

# numpy scalar types and array dtypes as host_shim.h's type codes
SCALAR_CODES = {np.float32: "f", np.float64: "d", np.int32: "i", np.int64: "l", np.uint64: "u"}
ARRAY_CODES = {np.float32: "F", np.float64: "D", np.int32: "I", np.int64: "L", np.uint64: "U"}
CTYPES = {"f": ctypes.c_float, "d": ctypes.c_double, "i": ctypes.c_int,
          "l": ctypes.c_longlong, "u": ctypes.c_ulonglong}

_build_lock = threading.Lock()
_library = None


def host_library_path() -> Path:
    """Where the CPU build of the kernels is cached: keyed by the sources' hash."""
    digest = hashlib.sha256(source().encode() + SHIM.read_bytes()
                            + "\n".join(name_expressions()).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("CDNN_CACHE_DIR", Path(tempfile.gettempdir()) / "cdnn-cache"))
    return cache / f"cdnn_cuda_host_{digest}.so"


def _host_program() -> str:
    entries = ",\n".join(f"    CDNN_HOST_ENTRY({e})" for e in name_expressions())
    return (f'#include "{SHIM}"\n#include "{SOURCE}"\n'
            f"static const cdnn_entry table[] = {{\n{entries}\n}};\n"
            'extern "C" int cdnn_host_count() { return sizeof table / sizeof table[0]; }\n'
            'extern "C" const cdnn_entry* cdnn_host_entry(int i) { return &table[i]; }\n')


def build_host_library(compiler: str | None = None) -> Path:
    """Compile kernels.cu for this CPU (once; cached), or raise naming what is missing."""
    path = host_library_path()
    if path.exists():
        return path
    compiler = compiler or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("compiling the CUDA kernels for the CPU needs a C++17 compiler (g++)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        program = Path(tmp) / "host.cpp"
        program.write_text(_host_program())
        built = Path(tmp) / path.name
        result = subprocess.run([compiler, "-std=c++17", "-O1", "-fPIC", "-shared",
                                 "-ffp-contract=off", "-o", str(built), str(program)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} could not compile {SOURCE.name}:\n{result.stderr}")
        os.replace(built, path)      # atomic: concurrent builds each write a whole file
    return path


class _Entry(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("signature", ctypes.c_char_p),
                ("launch", ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_uint),
                                            ctypes.POINTER(ctypes.c_uint),
                                            ctypes.POINTER(ctypes.c_void_p)))]


def host_module() -> "HostModule":
    global _library
    with _build_lock:
        if _library is None:
            _library = HostModule(ctypes.CDLL(str(build_host_library())))
    return _library


class HostModule:
    """RawModule's face over the CPU build: get_function(name) -> kernel(grid, block, args)."""

    def __init__(self, library: ctypes.CDLL):
        library.cdnn_host_entry.restype = ctypes.POINTER(_Entry)
        self.library = library
        self.entries = {}
        for i in range(library.cdnn_host_count()):
            entry = library.cdnn_host_entry(i).contents
            self.entries[entry.name.decode()] = (entry.signature.decode(), entry.launch)

    def get_function(self, name: str) -> "HostKernel":
        if name not in self.entries:
            raise KeyError(f"no kernel named {name!r} in {SOURCE.name}")
        return HostKernel(name, *self.entries[name])


class HostKernel:
    """One kernel of the CPU build, called as a cupy.RawKernel: kernel(grid, block, args) with
    arrays for pointers (None or np.uint64(0): NULL) and numpy scalars for values. Each
    argument is checked against the kernel's signature, which the GPU cannot do."""

    def __init__(self, name: str, signature: str, launch):
        self.name, self.signature, self._launch = name, signature, launch

    def __call__(self, grid, block, args, **kwargs):
        self.launch_bound(self.bind(grid, block, args))

    def bind(self, grid, block, args):
        """The launch's arguments checked and packed (as CuPy packs them when a launch is
        issued or captured): later changes to the Python values do not reach it"""
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments, "
                            f"got {len(args)}")
        values = [self._value(i, code, arg) for i, (code, arg)
                  in enumerate(zip(self.signature, args))]
        pointers = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        dims = [tuple(d) + (1,) * (3 - len(d)) if isinstance(d, tuple) else (d, 1, 1)
                for d in (grid, block)]
        # the arrays are kept with the pack: their memory must outlive a recorded launch
        return ((ctypes.c_uint * 3)(*dims[0]), (ctypes.c_uint * 3)(*dims[1]), pointers,
                values, tuple(args))

    def launch_bound(self, bound):
        self._launch(bound[0], bound[1], bound[2])

    def _value(self, i: int, code: str, arg):
        if code.isupper():      # a pointer
            if arg is None or (isinstance(arg, np.uint64) and arg == 0):
                return ctypes.c_void_p(0)
            if not isinstance(arg, np.ndarray) or not arg.flags.c_contiguous:
                raise TypeError(f"{self.name}: argument {i} must be a C-contiguous array")
            if ARRAY_CODES.get(arg.dtype.type) != code:
                raise TypeError(f"{self.name}: argument {i} must be an array of "
                                f"{_code_name(code)}, got {arg.dtype}")
            return ctypes.c_void_p(arg.ctypes.data)
        if SCALAR_CODES.get(type(arg)) != code:
            raise TypeError(f"{self.name}: argument {i} must be a numpy {_code_name(code)} "
                            f"scalar, got {type(arg).__name__}")
        return CTYPES[code](arg)


def _code_name(code: str) -> str:
    return {"f": "float32", "d": "float64", "i": "int32", "l": "int64",
            "u": "uint64"}[code.lower()]


def nvcc_program() -> str:
    """kernels.cu with every kernel NVRTC instantiates taken by address, so that nvcc (which
    has no name expressions) compiles each of them: the suite's check for sm_90"""
    addresses = ", ".join(f"(void*)&{e}" for e in name_expressions())
    return (source() + "\nextern void* const cdnn_kernels[];\n"
            f"void* const cdnn_kernels[] = {{{addresses}}};\n")
