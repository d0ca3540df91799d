"""The CUDA kernels compiled once, on the device, and the check that a compiled copy still fits.

`riad-trainer build-engine` compiles edge/kernels/riad_kernels.cu with nvcc for the GPU
it runs on and writes the cubin beside the engine (engines/bottle.plan ->
engines/bottle.cubin). The engine's manifest records, under `kernels`, the cubin's
sha256, the architecture it is for (sm_87) and the hash of the kernel sources and
compile options it came from. At start the GPU backend loads that cubin, so the device
needs no CUDA compiler: a -runtime image will do. `find_kernels` compiles instead only
when the cubin cannot be used, and logs why in one line.

A machine that builds engines without nvcc (the riad-edge:jetson image) takes the cubin
from $RIAD_KERNELS_DIR, where `riad-trainer build-kernels` put it in the image's build
stage, checked the same way.

nvcc is called directly, with the flags pycuda's SourceModule passed it before
(`--cubin --fmad=false -arch sm_XX -I edge/kernels`; SourceModule also added its own
header folder, which our kernels do not include). pycuda.compiler would need a CUDA
driver just to import, and the image's build stage and CI have none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge.paths import replaced_when_done

log = logging.getLogger(__name__)

KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels"  # edge/kernels
KERNEL_SOURCE = "riad_kernels.cu"
# Contraction into FMA would round once where numpy rounds twice.
COMPILE_OPTIONS = ["--fmad=false"]
# Where nvcc is looked for after PATH: JetPack installs it here without putting it on PATH.
NVCC_LOCATIONS = ["$CUDA_HOME/bin/nvcc", "/usr/local/cuda/bin/nvcc"]
PREBUILT_DIR_VARIABLE = "RIAD_KERNELS_DIR"
EM_CUDA = 190  # the ELF machine number of CUDA binaries


class KernelCompileError(RuntimeError):
    """The CUDA kernels do not compile here (a toolkit too old for the GPU, a broken install)."""


class NvccNotFound(KernelCompileError):
    """No nvcc on this machine (a runtime image), and no usable cubin either."""


def compile_failure(launcher: str, compiler_log: str) -> KernelCompileError:
    """The error naming the kernel file and the compiler's first error line."""
    lines = [line.strip() for line in compiler_log.splitlines() if line.strip()]
    reason = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "no compiler output")
    return KernelCompileError(f"{launcher} cannot compile the CUDA kernels {KERNELS_DIR / KERNEL_SOURCE}: {reason}")


def arch_for(compute_capability: str) -> str:
    """'8.7' (as cuda_device and engine manifests write it) -> 'sm_87'."""
    major, _, minor = compute_capability.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(f"compute capability {compute_capability!r} is not like 8.7")
    return f"sm_{major}{minor}"


def check_arch(arch: str) -> str:
    """`arch` if it names a real GPU architecture like sm_87, else ValueError."""
    if not re.fullmatch(r"sm_[1-9][0-9]+", arch):
        raise ValueError(f"GPU architecture {arch!r} is not like sm_87 (Jetson Orin) or sm_90 (H100)")
    return arch


def source_sha256() -> str:
    """The hash of what a cubin is compiled from: every kernel file and the compile options."""
    digest = hashlib.sha256(" ".join(COMPILE_OPTIONS).encode() + b"\0")
    for path in sorted([*KERNELS_DIR.glob("*.cu"), *KERNELS_DIR.glob("*.cuh")]):  # .cuh: riad_math, included
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cubin_arch(data: bytes) -> str:
    """The architecture a cubin's ELF header names ('sm_87'); ValueError for anything else.

    nvcc from CUDA 12.8 on writes ELF ABI version 8, with the SM in bits 8-15 of e_flags;
    older ones (JetPack's CUDA 11 and 12.6) write version 7, with it in bits 0-7.
    """
    if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit ELF only
        raise ValueError("not a CUDA binary (no 64-bit ELF header)")
    (machine,) = struct.unpack_from("<H", data, 18)
    if machine != EM_CUDA:
        raise ValueError(f"not a CUDA binary (ELF machine {machine}, CUDA is {EM_CUDA})")
    (flags,) = struct.unpack_from("<I", data, 48)
    sm = (flags >> 8) & 0xFF if data[8] >= 8 else flags & 0xFF
    return f"sm_{sm}"


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for location in NVCC_LOCATIONS:
        path = Path(os.path.expandvars(location))
        if "$" not in str(path) and path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


@dataclass(frozen=True)
class CompiledKernels:
    cubin: bytes
    arch: str  # sm_87
    compiler: str  # "nvcc V12.6.68", for the reader of a manifest
    source_sha256: str

    def save(self, path: Path) -> dict:
        """Write the cubin (whole or not at all); returns its manifest section."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced_when_done(path) as partial:
            partial.write_bytes(self.cubin)
        return {
            "file": path.name,
            "sha256": hashlib.sha256(self.cubin).hexdigest(),
            "arch": self.arch,
            "compiler": self.compiler,
            "source_sha256": self.source_sha256,
        }


def compile_kernels(arch: str) -> CompiledKernels:
    """riad_kernels.cu compiled by nvcc for one architecture.

    NvccNotFound without nvcc; KernelCompileError when it fails.
    """
    check_arch(arch)
    nvcc = find_nvcc()
    if nvcc is None:
        raise NvccNotFound(f"no nvcc on this machine (looked on PATH and in {', '.join(NVCC_LOCATIONS)})")
    try:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    except OSError as exc:  # there, but not a program this machine runs
        raise KernelCompileError(f"cannot run {nvcc}: {exc.strerror or exc}") from None
    release = re.search(r"V\d+\.\d+\.\d+", version)
    sources = source_sha256()  # before compiling: a file edited meanwhile then fails the next start's check
    with tempfile.TemporaryDirectory(prefix="riad-kernels-") as scratch:
        out = Path(scratch) / "riad_kernels.cubin"
        done = subprocess.run(
            [nvcc, "--cubin", *COMPILE_OPTIONS, "-arch", arch, f"-I{KERNELS_DIR}", str(KERNELS_DIR / KERNEL_SOURCE),
             "-o", str(out)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not out.is_file():
            raise compile_failure("nvcc", done.stderr + done.stdout)
        cubin = out.read_bytes()
    return CompiledKernels(cubin, arch, f"nvcc {release.group() if release else 'of unknown version'}", sources)


def check_recorded(recorded: dict, folder: Path, arch: str) -> tuple[CompiledKernels | None, str]:
    """The cubin a manifest section describes, if it fits this GPU and these kernel sources.

    Returns (kernels, what was loaded) or (None, the reason it cannot be used), one line
    each. `folder` holds the cubin (the engine's folder).
    """
    name = recorded.get("file") if isinstance(recorded, dict) else None
    if not name:
        return None, "the engine's manifest records no compiled kernels (built by an older riad-trainer build-engine)"
    if not isinstance(name, str) or Path(name).name != name:
        return None, f"the manifest's kernel file {name!r} is not a file name in {folder}"
    path = folder / name
    try:
        cubin = path.read_bytes()
    except FileNotFoundError:
        return None, f"{path} is missing"
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    if hashlib.sha256(cubin).hexdigest() != recorded.get("sha256"):
        return None, f"{path} does not match the sha256 its manifest recorded"
    try:
        built_for = cubin_arch(cubin)
    except ValueError as exc:
        return None, f"{path} is {exc}"
    if built_for != arch:
        return None, f"{path} was compiled for {built_for}, this GPU is {arch}"
    sources = source_sha256()
    if recorded.get("source_sha256") != sources:
        return None, f"{path} was compiled from other kernel sources than this riad-edge's (it was updated since)"
    compiler = str(recorded.get("compiler", "nvcc"))
    return CompiledKernels(cubin, arch, compiler, sources), f"CUDA kernels: {path} ({arch}, {compiler})"


def prebuilt_path(folder: Path, arch: str) -> Path:
    return folder / f"riad_kernels.{arch}.cubin"


def save_prebuilt(kernels: CompiledKernels, folder: Path) -> Path:
    """Write kernels for `prebuilt_kernels` to find: the cubin and its section in a .json beside it."""
    path = prebuilt_path(folder, kernels.arch)
    section = kernels.save(path)
    path.with_suffix(".cubin.json").write_text(json.dumps(section, indent=2, sort_keys=True) + "\n")
    return path


def prebuilt_kernels(arch: str) -> tuple[CompiledKernels | None, str]:
    """The cubin for `arch` that `riad-trainer build-kernels` left in $RIAD_KERNELS_DIR, if it fits."""
    folder = os.environ.get(PREBUILT_DIR_VARIABLE)
    if not folder:
        return None, f"${PREBUILT_DIR_VARIABLE} is not set"
    section = prebuilt_path(Path(folder), arch).with_suffix(".cubin.json")
    try:
        recorded = json.loads(section.read_text("utf-8"))
    except FileNotFoundError:
        return None, f"${PREBUILT_DIR_VARIABLE} ({folder}) has no kernels for {arch}"
    except (OSError, ValueError) as exc:
        return None, f"cannot read {section}: {exc}"
    if not isinstance(recorded, dict):
        return None, f"{section} is not a JSON object"
    return check_recorded(recorded, Path(folder), arch)


def kernels_for_engine(arch: str) -> CompiledKernels:
    """What build-engine writes beside the engine: compiled by nvcc, else taken from
    $RIAD_KERNELS_DIR. NvccNotFound when neither can be had."""
    try:
        return compile_kernels(arch)
    except NvccNotFound as missing:
        kernels, why_not = prebuilt_kernels(arch)
        if kernels is None:
            raise NvccNotFound(f"{missing}, and {why_not}") from None
        return kernels


def find_kernels(recorded: dict, folder: Path | None, arch: str) -> CompiledKernels:
    """At start: the cubin build-engine wrote, else the kernels compiled now with nvcc.

    Logs which, and why when it compiles. NvccNotFound, saying to run build-engine,
    when the cubin cannot be used and nothing here can compile.
    """
    kernels, reason = check_recorded(recorded, folder or Path("."), arch)
    if kernels is not None:
        log.info(reason)
        return kernels
    log.warning("%s; compiling the CUDA kernels with nvcc (rebuild the engine to skip this)", reason)
    try:
        return compile_kernels(arch)
    except NvccNotFound as missing:
        raise NvccNotFound(
            f"{reason}, and there is {missing}: run 'riad-trainer build-engine' on this device, which "
            "compiles the CUDA kernels once beside the engine (docs/gpu.md)"
        ) from None
