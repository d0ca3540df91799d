"""The GPU path: device pipeline against the CPU pipeline on real bottle images.

Tests marked `gpu` skip without an NVIDIA GPU (and pycuda or CuPy; TensorRT for the
backend). The device-map comparison also runs, unmarked, with the kernels built for the
host (tests/host_device.py). The others check, on any machine, what a user without a GPU meets: a clear
reason, a refused foreign engine, build-engine exiting 2 with directions.

Tolerances against OnnxCpuBackend (float32), with and without a reference map in the
manifest: variants bit-exact; map and score with the same network outputs, max abs 1e-5
(the Gaussian's summation order, as in test_kernels_host.py); through an FP32 TensorRT
engine (TF32 off), max abs 1e-4, as TensorRT's convolutions sum in their own order.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge.backends.engine_check import EngineMismatchError, check_engine
from edge.backends.gpu_available import (
    CudaDevice,
    GpuUnavailable,
    cuda_device,
    gpu_status,
    import_tensorrt,
)
from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.manifest import Manifest, encode_reference, file_sha256, manifest_path
from edge.method.masks import masked_variants
from edge.method.preprocess import prepare, read_image
from tests.conftest import write_foreign_engine


def has_tensorrt() -> bool:
    try:
        import_tensorrt()
    except GpuUnavailable:
        return False
    return True


def has_gpu() -> bool:
    try:
        cuda_device()
    except GpuUnavailable:
        return False
    return any(importlib.util.find_spec(m) for m in ("pycuda", "cupy"))


needs_gpu = pytest.mark.skipif(
    not has_gpu(), reason="no NVIDIA GPU with pycuda or CuPy"
)
needs_tensorrt = pytest.mark.skipif(
    not (has_gpu() and has_tensorrt()), reason="no GPU with TensorRT"
)


def bottle_images(bottle_dir: Path, shape: tuple[int, int]) -> list[np.ndarray]:
    paths = [
        min((bottle_dir / "train" / "good").glob("*.png")),
        min((bottle_dir / "test" / "broken_large").glob("*.png")),
    ]
    return [prepare(read_image(p), shape) for p in paths]


def add_reference(model: Path, bottle_dir: Path) -> None:
    """Give the model's manifest a reference map, as export does.

    The mean map of the two bottle images the tests compare, so each image's map rises
    above it in places and stays below it in others.
    """
    with OnnxCpuBackend(model) as cpu:
        maps = [cpu.score(image).anomaly_map for image in bottle_images(bottle_dir, cpu.manifest.input_shape)]
    manifest = Manifest.read(manifest_path(model))
    manifest.reference_map = encode_reference(np.mean(maps, axis=0))
    manifest.save(manifest_path(model))


@pytest.fixture(
    params=["host", pytest.param("gpu", marks=[pytest.mark.gpu, needs_gpu])]
)
def kernel_device(request, host_kernels):
    """The kernels on GPU 0, or built for the host (tests/host_device.py) on any machine."""
    if request.param == "gpu":
        return None  # GpuAnomalyMap opens GPU 0 itself
    from tests.host_device import HostDevice

    return HostDevice(host_kernels)


@pytest.mark.parametrize(
    ("reference", "map_channels", "cell_sizes"),
    [("none", "grey", "2-4-8-16"), ("measured", "grey", "2-4-8-16"), ("measured", "rgb", "2-4-8-16"), ("measured", "rgb", "4-8-16"),
     ("measured", "grey", "8-16-8-16")],
)
def test_device_map_matches_cpu_pipeline(kernel_device, tiny_onnx_model, bottle_dir, reference, map_channels, cell_sizes):
    from edge.backends.gpu_map import GpuAnomalyMap

    manifest = Manifest.read(manifest_path(tiny_onnx_model))
    manifest.map_channels = map_channels  # a colour part's map: R, G and B each
    # export --cell-sizes 4,8,16 (9 variants); --cell-sizes 8,16 --mask-draws 2 (each size drawn twice)
    manifest.cell_sizes = [int(k) for k in cell_sizes.split("-")]
    manifest.save(manifest_path(tiny_onnx_model))
    if reference == "measured":
        add_reference(tiny_onnx_model, bottle_dir)
    cpu = OnnxCpuBackend(tiny_onnx_model)
    m = cpu.manifest
    assert (m.reference is None) == (reference == "none")
    assert m.map_spec.per_channel == (map_channels == "rgb")
    gpu = GpuAnomalyMap.for_manifest(m, kernel_device)
    try:
        for image in bottle_images(bottle_dir, m.input_shape):
            batch_shape = (gpu.num_variants, 3, *m.input_shape)
            variants = gpu.download(gpu.variants(image), batch_shape)
            np.testing.assert_array_equal(variants, masked_variants(image, cpu.masks))
            (outputs,) = cpu.session.run([m.output_name], {m.input_name: variants})
            gpu.upload(outputs, gpu.outputs_address)
            amap, score = gpu.score()
            expected = cpu.score(image)
            np.testing.assert_allclose(amap, expected.anomaly_map, rtol=0, atol=1e-5)
            assert score == pytest.approx(expected.score, abs=1e-5)
            if m.reference is not None:  # the subtraction zeroed part of the map, not all of it
                assert 0 < (amap == 0).mean() < 1
    finally:
        gpu.close()


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_backend_matches_cpu_backend(tiny_onnx_model, bottle_dir, tmp_path):
    from edge.backends.tensorrt import TensorRTBackend
    from trainer.engine import build_engine

    add_reference(tiny_onnx_model, bottle_dir)  # build-engine carries it into the engine's manifest
    engine_path = tmp_path / "tiny.plan"
    built = build_engine(
        tiny_onnx_model,
        engine_path,
        fp16=False,
        timing_cache=tmp_path / "timing.cache",
    )
    assert built.engine["source_onnx_sha256"] == file_sha256(tiny_onnx_model)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    cpu = OnnxCpuBackend(tiny_onnx_model)
    assert cpu.manifest.reference is not None and built.reference_map == cpu.manifest.reference_map
    with TensorRTBackend(engine_path) as gpu:
        for image in bottle_images(bottle_dir, cpu.manifest.input_shape):
            got, expected = gpu.score(image), cpu.score(image)
            np.testing.assert_allclose(
                got.anomaly_map, expected.anomaly_map, rtol=0, atol=1e-4
            )
            assert got.score == pytest.approx(expected.score, abs=1e-4)


@pytest.mark.gpu
@needs_tensorrt
def test_kernels_that_do_not_compile_are_a_backend_error(tiny_onnx_model, tmp_path, monkeypatch):
    from edge.backends import kernel_binary
    from edge.backends import BackendError, open_backend
    from trainer.engine import build_engine

    engine_path = tmp_path / "tiny.plan"
    build_engine(tiny_onnx_model, engine_path, fp16=False, timing_cache=tmp_path / "timing.cache")
    kernels = shutil.copytree(kernel_binary.KERNELS_DIR, tmp_path / "kernels")
    (kernels / "riad_kernels.cu").write_text("this is not CUDA\n")  # as a damaged install leaves it
    monkeypatch.setattr(kernel_binary, "KERNELS_DIR", kernels)
    with pytest.raises(BackendError, match=r"cannot compile the CUDA kernels .*riad_kernels\.cu: .*error"):
        open_backend(engine_path)


@pytest.fixture(scope="module")
def built_engine(tmp_path_factory) -> Path:
    """tiny.plan, with the tiny.cubin build-engine compiles for this GPU, built once."""
    from tests.conftest import write_tiny_onnx
    from trainer.engine import build_engine

    folder = tmp_path_factory.mktemp("built")
    build_engine(write_tiny_onnx(folder / "tiny.onnx"), folder / "tiny.plan", fp16=False)
    return folder / "tiny.plan"


def no_nvcc(monkeypatch) -> None:
    """This machine as a -runtime image sees it: no nvcc anywhere."""
    from edge.backends import kernel_binary

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(kernel_binary, "NVCC_LOCATIONS", [])


@pytest.mark.gpu
@needs_tensorrt
def test_the_engine_runs_its_cubin_where_there_is_no_nvcc(built_engine, bottle_dir, tmp_path, monkeypatch, caplog):
    from edge.backends.tensorrt import TensorRTBackend
    from edge.backends.kernel_binary import arch_for

    pytest.importorskip("pycuda", reason="CuPy compiles with NVRTC at start; the cubin is pycuda's")
    folder = shutil.copytree(built_engine.parent, tmp_path / "models")
    arch = arch_for(cuda_device().compute_capability)
    assert Manifest.for_model(folder / "tiny.plan").kernels["arch"] == arch
    no_nvcc(monkeypatch)
    cpu = OnnxCpuBackend(folder / "tiny.onnx")
    with caplog.at_level(logging.INFO, logger="edge.backends.kernel_binary"), TensorRTBackend(folder / "tiny.plan") as gpu:
        for image in bottle_images(bottle_dir, cpu.manifest.input_shape):
            got, expected = gpu.score(image), cpu.score(image)
            np.testing.assert_allclose(got.anomaly_map, expected.anomaly_map, rtol=0, atol=1e-4)
    assert f"CUDA kernels: {folder / 'tiny.cubin'} ({arch}, nvcc V" in caplog.text
    assert "compiling" not in caplog.text


@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("nvcc", ["present", "missing"])
def test_a_damaged_cubin_is_recompiled_or_refused(built_engine, tmp_path, monkeypatch, caplog, nvcc):
    from edge.backends import BackendError, open_backend

    pytest.importorskip("pycuda", reason="CuPy compiles with NVRTC at start; the cubin is pycuda's")
    folder = shutil.copytree(built_engine.parent, tmp_path / "models")
    cubin = folder / "tiny.cubin"
    cubin.write_bytes(cubin.read_bytes()[:-1] + b"\x01")
    reason = f"{cubin} does not match the sha256 its manifest recorded"
    if nvcc == "present":
        with caplog.at_level(logging.WARNING, logger="edge.backends.kernel_binary"), open_backend(folder / "tiny.plan"):
            pass
        assert f"{reason}; compiling the CUDA kernels with nvcc" in caplog.text
    else:
        no_nvcc(monkeypatch)
        with pytest.raises(BackendError, match=re.escape(reason) + r", and there is no nvcc .* run 'riad-trainer build-engine' on this device"):
            open_backend(folder / "tiny.plan")


# ---- what a machine without the GPU path sees ---------------------------------------


@pytest.mark.skipif(
    has_gpu() and has_tensorrt(), reason="this machine has the GPU path"
)
@pytest.mark.skipif(has_gpu() and has_tensorrt(), reason="nothing is missing here")
def test_gpu_status_names_what_is_missing():
    ok, reason = gpu_status()
    assert not ok
    assert any(
        word in reason for word in ("TensorRT", "pycuda", "NVIDIA driver", "GPU")
    )


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) for m in ("pycuda", "cupy")), reason="a kernel launcher is installed"
)
def test_no_kernel_launcher_is_the_gpu_unavailable_that_open_backend_reports():
    # open_backend turns GpuUnavailable into a one-line error; any other class is a traceback.
    from edge.backends.gpu_map import open_device

    with pytest.raises(GpuUnavailable, match="neither pycuda nor CuPy"):
        open_device()


no_gpu_path = pytest.mark.skipif(has_gpu() and has_tensorrt(), reason="this machine has the GPU path")


@no_gpu_path
def test_an_engine_falls_back_to_the_onnx_it_was_built_from(tiny_onnx_model, bottle_dir, caplog):
    from edge.backends import open_backend

    engine = write_foreign_engine(tiny_onnx_model)
    with caplog.at_level(logging.WARNING, logger="edge.backends"):
        backend = open_backend(engine)
    with backend, OnnxCpuBackend(tiny_onnx_model) as direct:
        assert isinstance(backend, OnnxCpuBackend)
        (image,) = bottle_images(bottle_dir, direct.manifest.input_shape)[:1]
        assert backend.score(image).score == direct.score(image).score
    assert f"running {tiny_onnx_model}, the model it was built from, on the CPU instead" in caplog.text


@no_gpu_path
@pytest.mark.parametrize("twin", ["missing", "another model"])
def test_no_fallback_without_the_onnx_it_was_built_from(tiny_onnx_model, twin):
    from edge.backends import BackendError, open_backend

    if twin == "missing":
        engine = write_foreign_engine(tiny_onnx_model)
        tiny_onnx_model.unlink()
    else:  # re-exported since: same name, other bytes
        engine = write_foreign_engine(tiny_onnx_model, source_sha256="0" * 64)
    with pytest.raises(BackendError, match=r"no CPU fallback: .*tiny\.onnx is not beside it or is not the model"):
        open_backend(engine)


@no_gpu_path
def test_run_says_it_fell_back_to_the_cpu(tiny_onnx_model, bottle_dir, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for path in sorted((bottle_dir / "test" / "good").glob("*.png"))[:2]:
        shutil.copy(path, folder)
    engine = write_foreign_engine(tiny_onnx_model)
    done = subprocess.run(
        [sys.executable, "-c", "from edge.cli import app; app()", "run", "--source", str(folder), "--engine", str(engine)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "backend: cpu (onnxruntime), model tiny-test" in done.stdout
    assert "is a TensorRT engine, which needs the GPU path" in done.stderr
    assert "on the CPU instead" in done.stderr and "summary: 2 frames" in done.stdout


@pytest.mark.skipif(has_tensorrt(), reason="TensorRT is installed")
def test_tensorrt_backend_import_says_what_to_install():
    with pytest.raises(ImportError, match="TensorRT is not installed"):
        import edge.backends.tensorrt  # noqa: F401


@pytest.mark.skipif(has_tensorrt(), reason="TensorRT is installed")
def test_build_engine_without_tensorrt_exits_2_with_directions(tiny_onnx_model):
    from trainer.cli import app

    result = CliRunner().invoke(
        app,
        [
            "build-engine",
            str(tiny_onnx_model),
            "--out",
            str(tiny_onnx_model.with_suffix(".plan")),
        ],
    )
    assert result.exit_code == 2
    assert (
        "TensorRT is not installed" in result.output and "docs/gpu.md" in result.output
    )
    assert not tiny_onnx_model.with_suffix(".plan").exists()


def engine_manifest(tmp_path: Path) -> tuple[Manifest, Path]:
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"not really an engine, but hashed like one")
    manifest = Manifest(
        model_id="m", category="test", input_height=64, input_width=64, model_width=8, threshold=0.5,
        model_file=engine.name, model_sha256=file_sha256(engine),
        engine={"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "precision": "fp16"},
    )  # fmt: skip
    return manifest, engine


def test_engine_check_accepts_its_own_device(tmp_path):
    manifest, engine = engine_manifest(tmp_path)
    check_engine(manifest, engine, "10.3.0", CudaDevice("Orin", "8.7"))


@pytest.mark.parametrize(
    "trt_version, device, edit, message",
    [
        (
            "10.13.0",
            CudaDevice("Orin", "8.7"),
            None,
            "built with TensorRT 10.3.0, this device runs TensorRT 10.13.0",
        ),
        (
            "10.3.0",
            CudaDevice("NVIDIA H100", "9.0"),
            None,
            "built for Orin (compute 8.7), this device is NVIDIA H100",
        ),
        ("10.3.0", CudaDevice("Orin", "8.7"), "engine", "describes no TensorRT engine"),
    ],
)
def test_engine_check_refuses_a_foreign_engine(
    tmp_path, trt_version, device, edit, message
):
    manifest, engine = engine_manifest(tmp_path)
    if edit == "engine":
        manifest.engine = {}
    with pytest.raises(EngineMismatchError, match=re.escape(message)) as error:
        check_engine(manifest, engine, trt_version, device)
    assert "riad-trainer build-engine" in str(error.value)


def test_the_rebuild_advice_pastes_into_a_shell_whatever_the_engine_is_called(tmp_path):
    folder = tmp_path / "line 1's engines"
    folder.mkdir()
    manifest, engine = engine_manifest(folder)
    with pytest.raises(EngineMismatchError) as error:
        check_engine(manifest, engine, "10.13.0", CudaDevice("Orin", "8.7"))
    command = re.search(r"riad-trainer build-engine .*? \(engines", str(error.value)).group(0).removesuffix(" (engines")
    assert shlex.split(command)[2:] == ["MODEL.onnx", "--out", str(engine)]
