"""riad_kernels.cu compiles, warning-free, with NVRTC from the CUDA toolkits the Jetsons run.

test_kernels_nvcc.py covers the nvcc on this machine, but CUDA 13 no longer targets sm_72
(Xavier). NVRTC from CUDA 11.8 (JetPack 5's series) and 12.6 (JetPack 6) still does, and
it comes as host-only libraries in the `kernel-check` extra: no GPU or driver is needed.
NVRTC is also the compiler CuPy's RawModule uses, so this is the device check's own
compiler too. Called through ctypes: its C API is five functions.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge.backends.gpu_map import KERNEL_SIGNATURES
from edge.backends.kernel_binary import COMPILE_OPTIONS, KERNELS_DIR

TARGETS = {"sm_72": "Jetson AGX Xavier", "sm_87": "Jetson Orin", "sm_90": "H100"}


def nvrtc_libraries() -> list[Path]:
    try:
        import nvidia.cuda_nvrtc  # type: ignore[import-not-found]
    except ImportError:
        return []
    lib_dir = Path(nvidia.cuda_nvrtc.__file__).parent / "lib"
    return sorted(p for p in lib_dir.glob("libnvrtc.so.*") if "builtins" not in p.name)


class Nvrtc:
    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)))
        self.version = f"{major.value}.{minor.value}"

    def _check(self, status: int) -> None:
        if status != 0:
            self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
            raise RuntimeError(self.lib.nvrtcGetErrorString(status).decode())

    def supported_arches(self) -> set[str]:
        count = ctypes.c_int()
        self._check(self.lib.nvrtcGetNumSupportedArchs(ctypes.byref(count)))
        arches = (ctypes.c_int * count.value)()
        self._check(self.lib.nvrtcGetSupportedArchs(arches))
        return {f"sm_{a}" for a in arches}

    def compile(self, source: Path, options: list[str]) -> tuple[bool, str, bytes]:
        """(compiled, log, cubin).

        On a thread of its own: NVRTC 11 switches its thread to the C locale, after
        which Python on that thread opens text files as ASCII.
        """
        with ThreadPoolExecutor(1) as worker:
            return worker.submit(self._compile, source, options).result()

    def _compile(self, source: Path, options: list[str]) -> tuple[bool, str, bytes]:
        program = ctypes.c_void_p()
        self._check(
            self.lib.nvrtcCreateProgram(
                ctypes.byref(program), source.read_bytes(), source.name.encode(), 0, None, None
            )
        )
        try:
            encoded = [o.encode() for o in options]
            status = self.lib.nvrtcCompileProgram(
                program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded)
            )
            size = ctypes.c_size_t()
            self._check(self.lib.nvrtcGetProgramLogSize(program, ctypes.byref(size)))
            log = ctypes.create_string_buffer(size.value)
            self._check(self.lib.nvrtcGetProgramLog(program, log))
            if status != 0:
                return False, log.value.decode(), b""
            self._check(self.lib.nvrtcGetCUBINSize(program, ctypes.byref(size)))
            cubin = ctypes.create_string_buffer(size.value)
            self._check(self.lib.nvrtcGetCUBIN(program, cubin))
            return True, log.value.decode(), cubin.raw
        finally:
            self._check(self.lib.nvrtcDestroyProgram(ctypes.byref(program)))


LIBRARIES = nvrtc_libraries()


@pytest.mark.skipif(not LIBRARIES, reason="NVRTC not installed (pip install -e '.[kernel-check]')")
def test_both_jetpack_toolkits_are_installed():
    """The extra brings CUDA 11 and 12; losing one would silently drop its checks."""
    assert sorted(Nvrtc(p).version.split(".")[0] for p in LIBRARIES) == ["11", "12"]


@pytest.mark.parametrize("library", LIBRARIES, ids=lambda p: p.name)
@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_kernels_compile_with_nvrtc(library, arch):
    nvrtc = Nvrtc(library)
    if arch not in nvrtc.supported_arches():
        pytest.skip(f"NVRTC {nvrtc.version} cannot target {arch} ({TARGETS[arch]})")
    compiled, log, cubin = nvrtc.compile(
        KERNELS_DIR / "riad_kernels.cu",
        [f"--gpu-architecture={arch}", *COMPILE_OPTIONS, f"-I{KERNELS_DIR}"],
    )
    assert compiled, log
    # NVRTC has no warnings-as-errors switch; any warning is in the log.
    assert log.strip() == "", f"NVRTC {nvrtc.version} for {arch}:\n{log}"
    for name in KERNEL_SIGNATURES:
        assert name.encode() + b"\0" in cubin, f"{name} missing from the {arch} cubin"


@pytest.mark.skipif(not LIBRARIES, reason="NVRTC not installed (pip install -e '.[kernel-check]')")
def test_a_warning_fails_the_check(tmp_path):
    """The log check above is not vacuous: an unused variable shows up in it."""
    source = (KERNELS_DIR / "riad_kernels.cu").read_text()
    marker = 'extern "C" __global__ void max_value('
    body = source.index("{", source.index(marker)) + 1
    noisy = tmp_path / "riad_kernels.cu"
    noisy.write_text(source[:body] + "\n    int unused_variable = 3;" + source[body:])
    nvrtc = Nvrtc(LIBRARIES[-1])
    compiled, log, _ = nvrtc.compile(
        noisy, ["--gpu-architecture=sm_87", *COMPILE_OPTIONS, f"-I{KERNELS_DIR}"]
    )
    assert compiled
    assert "unused_variable" in log and "warning" in log
