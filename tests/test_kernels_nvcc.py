"""riad_kernels.cu compiles, warning-free, to real code for the GPUs we ship to.

Targets: Xavier (sm_72), Orin (sm_87), H100 (sm_90). CUDA 13 dropped sm_72 (its
`nvcc --list-gpu-arch` starts at compute_75); Xavier runs JetPack 5, whose CUDA 11.4
nvcc builds it, so here an arch the installed nvcc does not list is skipped, not failed.
test_kernels_nvrtc.py compiles sm_72 with NVRTC from CUDA 11.8 and 12.6 instead.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from edge.backends.gpu_map import KERNEL_SIGNATURES
from edge.backends.kernel_binary import COMPILE_OPTIONS, KERNELS_DIR

TARGETS = {"sm_72": "Jetson AGX Xavier", "sm_87": "Jetson Orin", "sm_90": "H100"}


@pytest.fixture(scope="module")
def nvcc() -> str:
    path = shutil.which("nvcc")
    if path is None:
        pytest.skip("nvcc not installed")
    return path


@pytest.fixture(scope="module")
def supported_arches(nvcc) -> set[str]:
    listed = subprocess.run(
        [nvcc, "--list-gpu-code"], capture_output=True, text=True, check=True
    ).stdout
    return set(listed.split())


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_kernels_compile_without_warnings(nvcc, supported_arches, arch, tmp_path):
    if arch not in supported_arches:
        pytest.skip(
            f"this nvcc cannot target {arch} ({TARGETS[arch]}); test_kernels_nvrtc.py covers it"
        )
    cubin = tmp_path / f"riad_{arch}.cubin"
    result = subprocess.run(
        [nvcc, "-cubin", f"-arch={arch}", *COMPILE_OPTIONS, "--Werror", "all-warnings",
         "-Xcompiler", "-Wall,-Werror", f"-I{KERNELS_DIR}", str(KERNELS_DIR / "riad_kernels.cu"), "-o", str(cubin)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Every kernel gpu_map.py launches is in the binary, with C linkage (unmangled).
    symbols = cubin.read_bytes()
    for name in KERNEL_SIGNATURES:
        assert name.encode() + b"\0" in symbols, f"{name} missing from the {arch} cubin"


def test_ptx_declares_every_kernel_with_its_arguments(nvcc, tmp_path):
    """The launch signatures in gpu_map.py agree with the kernels' parameter lists."""
    ptx = tmp_path / "riad.ptx"
    subprocess.run(
        [nvcc, "-ptx", "-arch=compute_87", *COMPILE_OPTIONS, f"-I{KERNELS_DIR}",
         str(KERNELS_DIR / "riad_kernels.cu"), "-o", str(ptx)],
        check=True,
    )  # fmt: skip
    text = ptx.read_text()
    ptx_types = {"P": ".u64", "i": ".u32", "f": ".f32"}
    for name, signature in KERNEL_SIGNATURES.items():
        start = text.index(f".entry {name}(")
        params = [
            line.split()[1]
            for line in text[start : text.index(")", start)].splitlines()
            if ".param" in line
        ]
        assert params == [ptx_types[t] for t in signature], (
            f"{name}: ptx {params} vs gpu_map {signature}"
        )
