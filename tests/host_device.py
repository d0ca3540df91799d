"""A kernel device for edge.backends.gpu_map that runs the CUDA kernels on the host.

tests/kernel_host_launch.cpp compiles edge/kernels/riad_kernels.cu with g++ and launches
a kernel the way cuLaunchKernel does. `HostDevice` gives it the interface of gpu_map's
pycuda and CuPy devices: "device" memory is host memory, copies are memmoves, launches
run at once (the stream is the program order). So `GpuAnomalyMap` runs unchanged, its
launch arithmetic, argument order and buffer sizes included, on a machine with no GPU.
What this cannot show: races between threads, and device-only behaviour (fast-math
flags, occupancy); those need the `gpu` tests.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends.gpu_map import KERNEL_SIGNATURES, THREADS, blocks_for
from edge.backends.kernel_binary import KERNELS_DIR

LAUNCHER = Path(__file__).with_name("kernel_host_launch.cpp")
C_TYPES = {"P": ctypes.c_void_p, "i": ctypes.c_int32, "f": ctypes.c_float}


# With ASan and UBSan every kernel's stray read or write, past a buffer or out of an
# int's range, stops the process: on a GPU it would go unnoticed.
SANITIZERS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]


def build_host_kernels(out_dir: Path, sanitized: bool = False) -> Path:
    """g++ build of the kernels and their launcher; warnings are errors, no FMA contraction.

    A `sanitized` library must be loaded by a process started with the sanitizer
    runtimes preloaded (tests/test_kernels_host.py shows how).
    """
    gxx = shutil.which("g++")
    if gxx is None:
        raise FileNotFoundError("g++ not installed")
    library = out_dir / ("libriad_kernels_sanitized.so" if sanitized else "libriad_kernels_host.so")
    subprocess.run(
        [gxx, *(SANITIZERS if sanitized else ["-O2"]), "-shared", "-fPIC", "-std=c++20", "-pthread",
         "-Wall", "-Wextra", "-Werror", "-ffp-contract=off", f"-I{KERNELS_DIR}", str(LAUNCHER), "-o", str(library)],
        check=True,
    )  # fmt: skip
    return library


class HostDevice:
    def __init__(self, library: Path) -> None:
        self.lib = ctypes.CDLL(str(library))
        self.lib.host_launch.argtypes = [
            ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)
        ]  # fmt: skip
        self.allocations: list[np.ndarray] = []

    stream_handle = 0

    def push(self) -> None:
        """No context on the host."""

    def pop(self) -> None:
        """No context on the host."""

    def alloc(self, nbytes: int) -> int:
        # Filled with NaN bytes, as fresh device memory holds garbage: a kernel that
        # reads what nothing wrote shows up in the results.
        memory = np.full(nbytes, 0xFF, np.uint8)
        self.allocations.append(memory)
        return int(memory.ctypes.data)

    def pinned(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        return np.empty(tuple(shape), dtype)

    def to_device(self, address: int, host: np.ndarray) -> None:
        ctypes.memmove(address, host.ctypes.data, host.nbytes)

    def to_host(self, host: np.ndarray, address: int) -> None:
        ctypes.memmove(host.ctypes.data, address, host.nbytes)

    def launch(self, name: str, count: int, *args: Any) -> None:
        signature = KERNEL_SIGNATURES[name]
        if len(args) != len(signature):
            raise TypeError(f"{name} takes {len(signature)} arguments, got {len(args)}")
        values = [C_TYPES[t](a) for t, a in zip(signature, args)]
        params = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
        grid, _, _ = blocks_for(count)
        if self.lib.host_launch(name.encode(), grid, THREADS, params) != 0:
            raise KeyError(f"the host launcher has no kernel {name}")

    def synchronize(self) -> None:
        """Launches and copies ran when they were called."""

    def close(self) -> None:
        self.allocations.clear()
