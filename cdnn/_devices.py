"""Which engine runs a network: the one place where the device is chosen.

device="cpu" is cdnn/_engine.py's Engine; device="cuda" is cdnn/cuda's engine on the current GPU
(CuPy's: CUDA_VISIBLE_DEVICES or cupy.cuda.Device(n).use() choose it), imported only when asked
for, so the core needs no CuPy.
"""
from __future__ import annotations

import numpy as np

from cdnn._engine import Engine

DEVICES = ("cpu", "cuda")
# The inputs of the matrix products: the network's dtype (float32), or bf16 (the CPU's AMX or
# AVX512-BF16 units through oneDNN; a GPU's tensor cores), or on a GPU tf32; float32
# accumulation always. "highest" (PyTorch's and JAX's name) is float32.
MATMUL_PRECISIONS = ("float32", "bfloat16", "tensorfloat32", "highest")
ON_CPU = ("float32", "bfloat16")


def check_device(device) -> str:
    """"cpu" or "cuda", or a ValueError naming the choices"""
    if isinstance(device, str) and device in DEVICES:
        return device
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def make_engine(layer_sizes, activations, loss, slope, dropout, l2, dtype, device="cpu",
                matmul_precision: str = "float32"):
    """The engine for a network on device at a matmul precision (checked by MLP)"""
    if matmul_precision == "highest":
        matmul_precision = "float32"
    if check_device(device) == "cpu":
        if matmul_precision not in ON_CPU:
            raise ValueError(f"matmul_precision={matmul_precision!r} runs on device='cuda'; on "
                             f"the CPU choose one of {', '.join(ON_CPU)}")
        return Engine(layer_sizes, activations, loss, slope, dropout, l2, dtype,
                      matmul_precision)
    from cdnn.cuda.engine import CudaEngine
    return CudaEngine(layer_sizes, activations, loss, slope, dropout, l2, dtype, matmul_precision)


def is_device_array(a) -> bool:
    """Whether a is a GPU array (CuPy's, or the CPU stand-in's in tests), without importing
    CuPy"""
    kind = type(a)
    return kind.__module__.split(".")[0] == "cupy" or getattr(kind, "__cdnn_device__", False)


def to_numpy(a) -> np.ndarray:
    """a as a numpy array: a GPU array is copied back, anything else converted (no copy when
    it is one already)"""
    return a.get() if is_device_array(a) else np.asarray(a)
