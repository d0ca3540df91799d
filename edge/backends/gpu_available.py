"""Can the GPU backend run here, and if not, what is missing?

Answers for `riad-edge doctor` and backend selection without importing anything that
needs a GPU: TensorRT is checked for its real runtime, the GPU is asked for through
the driver's own library (libcuda), and pycuda/CuPy only for being installed.
"""

from __future__ import annotations

import ctypes
import importlib.util
from dataclasses import dataclass
from typing import Any

CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


class GpuUnavailable(RuntimeError):
    """Something the GPU backend needs is missing; the message says what."""


@dataclass(frozen=True)
class CudaDevice:
    name: str
    compute_capability: str  # "8.7", as written in an engine's manifest


def cuda_device(index: int = 0) -> CudaDevice:
    """The GPU's name and compute capability, from the NVIDIA driver itself."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        raise GpuUnavailable("no NVIDIA driver (libcuda.so.1 not found)") from None

    def check(result: int, call: str) -> None:
        if result != 0:
            name = ctypes.c_char_p()
            cuda.cuGetErrorName(result, ctypes.byref(name))
            raise GpuUnavailable(
                f"CUDA driver: {call} failed ({(name.value or b'?').decode()})"
            )

    check(cuda.cuInit(0), "cuInit")
    count = ctypes.c_int()
    check(cuda.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    if count.value <= index:
        raise GpuUnavailable(f"no CUDA GPU {index} (the driver sees {count.value})")
    device = ctypes.c_int()
    check(cuda.cuDeviceGet(ctypes.byref(device), index), "cuDeviceGet")
    name = ctypes.create_string_buffer(256)
    check(cuda.cuDeviceGetName(name, len(name), device), "cuDeviceGetName")
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(
        cuda.cuDeviceGetAttribute(
            ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device
        ),
        "cuDeviceGetAttribute",
    )
    check(
        cuda.cuDeviceGetAttribute(
            ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device
        ),
        "cuDeviceGetAttribute",
    )
    return CudaDevice(
        name.value.decode(errors="replace"), f"{major.value}.{minor.value}"
    )


def import_tensorrt() -> Any:
    """The tensorrt module, or GpuUnavailable saying how to get it.

    A type-stub package (tensorrt-stubs) makes `import tensorrt` succeed with an empty
    namespace package, so the runtime is recognised by its Runtime class.
    """
    try:
        import tensorrt
    except ImportError:
        tensorrt = None
    if not hasattr(tensorrt, "Runtime"):
        raise GpuUnavailable(
            "TensorRT is not installed (on a Jetson it comes with JetPack: python3-libnvinfer; "
            "on x86 'pip install .[gpu]'; see docs/gpu.md)"
        )
    return tensorrt


def kernel_launcher() -> str:
    """'pycuda' or 'cupy': what edge.backends.gpu_map will launch its kernels with."""
    for module in ("pycuda", "cupy"):
        if importlib.util.find_spec(module) is not None:
            return module
    raise GpuUnavailable(
        "pycuda is not installed (on a Jetson: apt install python3-pycuda; see docs/gpu.md)"
    )


def gpu_status() -> tuple[bool, str]:
    """(True, what will run) or (False, the first thing missing)."""
    try:
        trt = import_tensorrt()
        launcher = kernel_launcher()
        device = cuda_device()
    except GpuUnavailable as missing:
        return False, str(missing)
    return (
        True,
        f"TensorRT {trt.__version__}, {device.name} (compute {device.compute_capability}), kernels via {launcher}",
    )
