"""The kernels compiled once, by build-engine, and the start-up check that decides whether
that cubin still fits (edge/backends/kernel_binary.py).

Everything here runs without a GPU: nvcc compiles real cubins for Orin (sm_87) and H100
(sm_90), their ELF headers are read back, and the decision "load the cubin, or compile,
and why" runs on real files. Loading a cubin into a GPU is in test_gpu.py (marked gpu).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.backends import kernel_binary
from edge.backends.gpu_available import GpuUnavailable, cuda_device
from edge.backends.gpu_map import KERNEL_SIGNATURES
from edge.backends.kernel_binary import (
    COMPILE_OPTIONS,
    KERNELS_DIR,
    CompiledKernels,
    NvccNotFound,
    check_recorded,
    compile_kernels,
    cubin_arch,
    find_kernels,
    prebuilt_kernels,
    save_prebuilt,
)
from edge.manifest import Manifest, manifest_path
from tests.conftest import write_foreign_engine
from trainer.cli import app as trainer_app
from trainer.engine import EngineBuildError, compiled_kernels, cubin_path


@pytest.fixture(scope="module")
def nvcc() -> str:
    path = kernel_binary.find_nvcc()
    if path is None:
        pytest.skip("nvcc not installed")
    return path


@pytest.fixture(scope="module")
def orin_kernels(nvcc) -> CompiledKernels:
    return compile_kernels("sm_87")


@pytest.fixture(scope="module")
def h100_kernels(nvcc) -> CompiledKernels:
    return compile_kernels("sm_90")


@pytest.fixture
def no_nvcc(monkeypatch):
    """This machine as a -runtime image sees it: no nvcc anywhere."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(kernel_binary, "NVCC_LOCATIONS", [])
    monkeypatch.delenv(kernel_binary.PREBUILT_DIR_VARIABLE, raising=False)


@pytest.fixture
def engine_folder(tmp_path, orin_kernels) -> tuple[dict, Path]:
    """An engine's folder with the cubin build-engine writes, and its manifest section."""
    return orin_kernels.save(cubin_path(tmp_path / "bottle.plan")), tmp_path


# ---- compiling ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_compiled_for_the_arch_asked(request, arch):
    kernels = request.getfixturevalue({"sm_87": "orin_kernels", "sm_90": "h100_kernels"}[arch])
    # nvcc 13 writes ELF ABI version 8 (byte 8), with the SM in bits 8-15 of e_flags.
    assert kernels.cubin[8] >= 8 and cubin_arch(kernels.cubin) == kernels.arch == arch
    assert kernels.compiler.startswith("nvcc V") and kernels.source_sha256 == kernel_binary.source_sha256()
    for name in KERNEL_SIGNATURES:
        assert name.encode() + b"\0" in kernels.cubin, f"{name} missing from the {arch} cubin"


def test_the_same_binary_pycuda_compiled_at_every_start(nvcc, orin_kernels, tmp_path):
    """SourceModule (pycuda 2025.1) copied the source to kernel.cu in a scratch folder and ran
    `nvcc --cubin OPTIONS -arch ARCH -I INCLUDE_DIRS -I PYCUDA_HEADERS kernel.cu`: byte for
    byte what compile_kernels makes, so the arithmetic on the device has not changed."""
    shutil.copy(KERNELS_DIR / "riad_kernels.cu", tmp_path / "kernel.cu")
    subprocess.run(
        [nvcc, "--cubin", *COMPILE_OPTIONS, "-arch", "sm_87", f"-I{KERNELS_DIR}", f"-I{tmp_path / 'pycuda' / 'cuda'}",
         "kernel.cu"],
        cwd=tmp_path, check=True,
    )  # fmt: skip
    assert (tmp_path / "kernel.cubin").read_bytes() == orin_kernels.cubin


def test_a_compile_error_names_the_file_and_the_first_error(nvcc, tmp_path, monkeypatch):
    broken = shutil.copytree(KERNELS_DIR, tmp_path / "kernels")
    (broken / "riad_kernels.cu").write_text("this is not CUDA\n")
    monkeypatch.setattr(kernel_binary, "KERNELS_DIR", broken)
    with pytest.raises(kernel_binary.KernelCompileError, match=r"nvcc cannot compile the CUDA kernels .*riad_kernels\.cu: .*error"):
        compile_kernels("sm_87")


@pytest.mark.parametrize("arch", ["87", "sm87", "sm_", "compute_87", "sm_87; rm -rf /", ""])
def test_an_arch_that_is_not_sm_xx_is_refused_before_nvcc(arch):
    with pytest.raises(ValueError, match="is not like sm_87"):
        compile_kernels(arch)


def test_an_nvcc_that_does_not_run_is_a_compile_error(no_nvcc, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_bytes(b"\x7fELF for another machine")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    with pytest.raises(kernel_binary.KernelCompileError, match=f"cannot run {fake}: Exec format error"):
        compile_kernels("sm_87")


def test_without_nvcc_compiling_says_where_it_looked(no_nvcc):
    with pytest.raises(NvccNotFound, match=r"no nvcc on this machine \(looked on PATH"):
        compile_kernels("sm_87")


# ---- the cubin's architecture, from its ELF header --------------------------------------


def test_arch_read_from_jetpack_toolkit_cubins():
    """JetPack's CUDA (11.4, 12.6) writes ELF ABI version 7: the SM is in bits 0-7."""
    from tests.test_kernels_nvrtc import LIBRARIES, Nvrtc

    if not LIBRARIES:
        pytest.skip("NVRTC not installed (pip install -e '.[kernel-check]')")
    for library in LIBRARIES:
        nvrtc = Nvrtc(library)
        for arch in ("sm_72", "sm_87"):  # Xavier, Orin
            compiled, log, cubin = nvrtc.compile(
                KERNELS_DIR / "riad_kernels.cu", [f"--gpu-architecture={arch}", *COMPILE_OPTIONS, f"-I{KERNELS_DIR}"]
            )
            assert compiled, log
            assert cubin[8] == 7 and cubin_arch(cubin) == arch, f"NVRTC {nvrtc.version}"


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "no 64-bit ELF header"),
        (b"\x7fELF" + bytes(60), "no 64-bit ELF header"),  # a 32-bit ELF
        (Path(sys.executable).resolve().read_bytes()[:4096], "ELF machine"),  # this machine's own code
        (b"P" * 100, "no 64-bit ELF header"),
    ],
)
def test_anything_but_a_cubin_has_no_arch(data, why):
    with pytest.raises(ValueError, match=why):
        cubin_arch(data)


# ---- the start-up decision: the cubin beside the engine, or compile, and why -------------


def test_the_cubin_build_engine_wrote_is_used(engine_folder):
    recorded, folder = engine_folder
    kernels, line = check_recorded(recorded, folder, "sm_87")
    assert kernels is not None and kernels.cubin == (folder / "bottle.cubin").read_bytes()
    assert line == f"CUDA kernels: {folder / 'bottle.cubin'} (sm_87, {recorded['compiler']})"


def test_a_manifest_from_before_build_engine_compiled_kernels(engine_folder):
    _, folder = engine_folder
    assert check_recorded({}, folder, "sm_87") == (
        None, "the engine's manifest records no compiled kernels (built by an older riad-trainer build-engine)"
    )  # fmt: skip


def test_a_missing_cubin(engine_folder):
    recorded, folder = engine_folder
    (folder / "bottle.cubin").unlink()
    assert check_recorded(recorded, folder, "sm_87") == (None, f"{folder / 'bottle.cubin'} is missing")


def test_a_cubin_changed_since(engine_folder):
    recorded, folder = engine_folder
    cubin = folder / "bottle.cubin"
    cubin.write_bytes(cubin.read_bytes()[:-1] + b"\x01")  # one byte, as a bad SD card sector would
    assert check_recorded(recorded, folder, "sm_87") == (None, f"{cubin} does not match the sha256 its manifest recorded")


def test_a_cubin_for_another_gpu(engine_folder, h100_kernels):
    _, folder = engine_folder
    recorded = h100_kernels.save(folder / "bottle.cubin")  # recorded truthfully, for an H100
    assert check_recorded(recorded, folder, "sm_87") == (None, f"{folder / 'bottle.cubin'} was compiled for sm_90, this GPU is sm_87")


def test_a_manifest_that_lies_about_the_arch_is_caught_by_the_header(engine_folder):
    recorded, folder = engine_folder
    kernels, line = check_recorded(recorded | {"arch": "sm_90"}, folder, "sm_90")
    assert kernels is None and "was compiled for sm_87, this GPU is sm_90" in line


@pytest.mark.parametrize("edit", ["riad_math.cuh", "riad_kernels.cu", "compile options"])
def test_kernel_sources_changed_since(engine_folder, tmp_path, monkeypatch, edit):
    """riad-edge upgraded after build-engine: the included header counts, and so do the options."""
    recorded, folder = engine_folder
    if edit == "compile options":
        monkeypatch.setattr(kernel_binary, "COMPILE_OPTIONS", [*COMPILE_OPTIONS, "-O2"])
    else:
        newer = shutil.copytree(KERNELS_DIR, tmp_path / "newer")
        (newer / edit).write_text((newer / edit).read_text() + "\n// a fix\n")
        monkeypatch.setattr(kernel_binary, "KERNELS_DIR", newer)
    assert check_recorded(recorded, folder, "sm_87") == (
        None, f"{folder / 'bottle.cubin'} was compiled from other kernel sources than this riad-edge's (it was updated since)"
    )  # fmt: skip


@pytest.mark.parametrize("name", ["../bottle.cubin", "/etc/passwd", "sub/bottle.cubin", 7, ["bottle.cubin"]])
def test_a_kernel_file_outside_the_engine_folder_is_not_read(engine_folder, name):
    recorded, folder = engine_folder
    kernels, line = check_recorded(recorded | {"file": name}, folder, "sm_87")
    assert kernels is None and "is not a file name in" in line


def test_a_recorded_file_that_is_no_cubin(engine_folder):
    recorded, folder = engine_folder
    text = folder / "notes.cubin"
    text.write_text("not a binary")
    recorded = CompiledKernels(text.read_bytes(), "sm_87", "nvcc", kernel_binary.source_sha256()).save(text)
    assert check_recorded(recorded, folder, "sm_87") == (None, f"{text} is not a CUDA binary (no 64-bit ELF header)")


def test_an_unreadable_cubin(engine_folder):
    recorded, folder = engine_folder
    (folder / "bottle.cubin").unlink()
    (folder / "bottle.cubin").mkdir()  # a folder where the file should be
    kernels, line = check_recorded(recorded, folder, "sm_87")
    assert kernels is None and line.startswith(f"cannot read {folder / 'bottle.cubin'}")


def test_find_kernels_loads_the_cubin_without_any_compiler(engine_folder, no_nvcc, caplog):
    recorded, folder = engine_folder
    with caplog.at_level("INFO", logger="edge.backends.kernel_binary"):
        kernels = find_kernels(recorded, folder, "sm_87")
    assert kernels.cubin == (folder / "bottle.cubin").read_bytes()
    assert [r.levelname for r in caplog.records] == ["INFO"] and "CUDA kernels:" in caplog.text


def test_find_kernels_compiles_when_the_cubin_does_not_fit_and_says_why(engine_folder, nvcc, caplog):
    recorded, folder = engine_folder
    with caplog.at_level("INFO", logger="edge.backends.kernel_binary"):
        kernels = find_kernels(recorded, folder, "sm_90")  # an engine folder copied to an H100
    assert cubin_arch(kernels.cubin) == "sm_90"
    (warning,) = caplog.records
    assert warning.levelname == "WARNING" and "\n" not in warning.getMessage()
    assert warning.getMessage() == (
        f"{folder / 'bottle.cubin'} was compiled for sm_87, this GPU is sm_90; "
        "compiling the CUDA kernels with nvcc (rebuild the engine to skip this)"
    )


def test_without_nvcc_a_stale_cubin_says_to_run_build_engine(engine_folder, no_nvcc):
    recorded, folder = engine_folder
    (folder / "bottle.cubin").unlink()
    with pytest.raises(NvccNotFound) as error:
        find_kernels(recorded, folder, "sm_87")
    message = str(error.value)
    assert message.startswith(f"{folder / 'bottle.cubin'} is missing, and there is no nvcc on this machine")
    assert "run 'riad-trainer build-engine' on this device" in message and "\n" not in message


# ---- the manifest ----------------------------------------------------------------------


def test_kernels_round_trip_through_the_engine_manifest(tiny_onnx_model, orin_kernels):
    engine = write_foreign_engine(tiny_onnx_model)  # the manifest build-engine wrote before kernels
    old = Manifest.for_model(engine)
    assert old.kernels == {}
    assert check_recorded(old.kernels, engine.parent, "sm_87")[0] is None

    old.kernels = orin_kernels.save(cubin_path(engine))
    old.save(manifest_path(engine))
    again = Manifest.for_model(engine)
    assert again.kernels == old.kernels and set(again.kernels) == {"file", "sha256", "arch", "compiler", "source_sha256"}
    assert check_recorded(again.kernels, engine.parent, "sm_87")[0] == orin_kernels
    assert json.loads(manifest_path(engine).read_text())["kernels"]["file"] == "tiny.cubin"


# ---- build-engine's part and build-kernels --------------------------------------------


def test_build_engine_compiles_the_kernels_beside_the_engine(nvcc, tmp_path):
    """The part of build_engine that runs before TensorRT's build and after it writes the engine."""
    engine = tmp_path / "engines" / "bottle.plan"
    recorded = compiled_kernels("sm_87").save(cubin_path(engine))
    assert recorded["file"] == "bottle.cubin" and recorded["arch"] == "sm_87"
    assert check_recorded(recorded, engine.parent, "sm_87")[0] is not None
    assert not list(engine.parent.glob("*.partial"))


def test_build_engine_without_nvcc_stops_before_tensorrt_with_directions(no_nvcc):
    with pytest.raises(EngineBuildError) as error:
        compiled_kernels("sm_87")
    assert "cannot compile the CUDA kernels for sm_87: no nvcc on this machine" in str(error.value)
    assert "RIAD_KERNELS_DIR is not set" in str(error.value) and "riad-edge:jetson image" in str(error.value)


def test_build_kernels_then_build_engine_without_nvcc(nvcc, tmp_path, monkeypatch):
    """The image's two stages: build-kernels where nvcc is, build-engine where it is not."""
    done = CliRunner().invoke(trainer_app, ["build-kernels", "--arch", "sm_87", "--out", str(tmp_path / "kernels")])
    assert done.exit_code == 0, done.output
    cubin = tmp_path / "kernels" / "riad_kernels.sm_87.cubin"
    assert f"kernels: {cubin} (sm_87)" in done.output and "RIAD_KERNELS_DIR=" in done.output
    assert cubin_arch(cubin.read_bytes()) == "sm_87"

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(kernel_binary, "NVCC_LOCATIONS", [])
    monkeypatch.setenv("RIAD_KERNELS_DIR", str(tmp_path / "kernels"))
    kernels = compiled_kernels("sm_87")
    assert kernels.cubin == cubin.read_bytes()
    with pytest.raises(EngineBuildError, match=r"has no kernels for sm_90"):
        compiled_kernels("sm_90")  # the image was built for Orin; this is an H100


def test_prebuilt_kernels_from_older_sources_are_not_used(nvcc, tmp_path, monkeypatch, orin_kernels):
    stale = CompiledKernels(orin_kernels.cubin, "sm_87", orin_kernels.compiler, "0" * 64)
    save_prebuilt(stale, tmp_path)
    monkeypatch.setenv("RIAD_KERNELS_DIR", str(tmp_path))
    kernels, why = prebuilt_kernels("sm_87")
    assert kernels is None and "compiled from other kernel sources" in why


def has_gpu() -> bool:
    try:
        cuda_device()
    except GpuUnavailable:
        return False
    return True


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "87"], "GPU architecture '87' is not like sm_87"),
        (["--arch", "sm_1"], "is not like sm_87"),
        ([], "pass --arch, e.g. --arch sm_87"),  # no GPU here to take it from
    ],
)
def test_build_kernels_refuses_with_one_line(tmp_path, args, message):
    if not args and has_gpu():
        pytest.skip("this machine has a GPU, whose architecture build-kernels takes")
    done = CliRunner().invoke(trainer_app, ["build-kernels", "--out", str(tmp_path / "k"), *args])
    assert done.exit_code == 2 and message in done.output
    assert len(done.output.strip().splitlines()) == 1
    assert not (tmp_path / "k").exists()


def test_build_kernels_into_a_file_is_refused(nvcc, tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    done = CliRunner().invoke(trainer_app, ["build-kernels", "--arch", "sm_87", "--out", str(tmp_path / "taken")])
    assert done.exit_code == 2 and done.output.startswith(f"error: cannot write the kernels into {tmp_path / 'taken'}: ")
    assert (tmp_path / "taken").read_text() == "a file, not a folder"


@pytest.mark.parametrize("out", ["bottle.cubin", "bottle.onnx", "bottle"])
def test_build_engine_refuses_an_engine_name_run_would_not_take(tiny_onnx_model, out):
    done = CliRunner().invoke(trainer_app, ["build-engine", str(tiny_onnx_model), "--out", str(tiny_onnx_model.parent / out)])
    assert done.exit_code == 2 and "an engine's name ends in .plan or .engine" in done.output
    assert Manifest.for_model(tiny_onnx_model).model_file == "tiny.onnx"  # the ONNX model untouched
