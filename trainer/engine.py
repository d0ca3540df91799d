"""ONNX model -> TensorRT engine, built on the device that will run it.

An engine is specific to its TensorRT version and GPU, so a Jetson builds its own
(`riad-trainer build-engine` runs there with JetPack's TensorRT). The engine takes
batches from one frame's variants (K*n) up to `max_batch`, tuned for one frame; its
manifest is the ONNX model's, plus what it was built with and for. The CUDA kernels are
compiled here too, into a cubin beside the engine (edge/backends/kernel_binary.py), so the
device that runs them needs no compiler.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from edge.backends.gpu_available import cuda_device, import_tensorrt
from edge.backends.kernel_binary import CompiledKernels, KernelCompileError, NvccNotFound, arch_for, kernels_for_engine
from edge.manifest import Manifest, file_sha256, manifest_path
from edge.paths import make_folder, replaced_when_done

if TYPE_CHECKING:
    import tensorrt


class EngineBuildError(RuntimeError):
    """The engine could not be built; the message says why."""


def _phase_printer() -> tensorrt.IProgressMonitor:
    """An IProgressMonitor printing the build's phases on one line of stderr."""
    import tensorrt as trt

    class PhasePrinter(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.lock = threading.Lock()  # TensorRT reports from several threads
            self.phases: dict[str, tuple[int, int]] = {}  # name -> (steps done, steps)

        def phase_start(
            self, phase_name: str, parent_phase: str, num_steps: int
        ) -> None:
            with self.lock:
                self.phases[phase_name] = (0, num_steps)
                self.show()

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self.lock:
                self.phases[phase_name] = (
                    step + 1,
                    self.phases.get(phase_name, (0, 0))[1],
                )
                self.show()
            return True

        def phase_finish(self, phase_name: str) -> None:
            with self.lock:
                self.phases.pop(phase_name, None)
                self.show()

        def show(self) -> None:
            line = " > ".join(
                f"{name} {done}/{total}" for name, (done, total) in self.phases.items()
            )
            sys.stderr.write(f"\r\033[K{line[-150:]}")
            sys.stderr.flush()

    return PhasePrinter()


def cubin_path(engine_path: Path) -> Path:
    """Where build-engine writes the engine's kernels: engines/bottle.plan -> engines/bottle.cubin."""
    return engine_path.with_suffix(".cubin")


def compiled_kernels(arch: str) -> CompiledKernels:
    """The kernels for this GPU, or EngineBuildError saying how to get a compiler."""
    try:
        return kernels_for_engine(arch)
    except NvccNotFound as missing:
        raise EngineBuildError(
            f"cannot compile the CUDA kernels for {arch}: {missing}. Install the CUDA toolkit's nvcc "
            "(on a Jetson: sudo apt install nvidia-jetpack) or build in the riad-edge:jetson image (docs/gpu.md)"
        ) from None
    except KernelCompileError as exc:
        raise EngineBuildError(str(exc)) from None


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    fp16: bool = True,
    max_batch: int | None = None,
    timing_cache: Path | None = None,
) -> Manifest:
    """Build and write the engine and its manifest; returns the manifest.

    `max_batch` defaults to 4 frames' variants. Raises GpuUnavailable without TensorRT
    or a GPU, ManifestError for a model without a valid manifest, EngineBuildError when
    TensorRT cannot build it.
    """
    import_tensorrt()
    import tensorrt as trt

    source = Manifest.for_model(onnx_path)
    device = cuda_device()
    per_frame = source.mask_spec.num_variants
    max_batch = max_batch or 4 * per_frame
    if max_batch < per_frame or max_batch % per_frame:
        raise EngineBuildError(
            f"--max-batch must be a multiple of the {per_frame} variants of one frame"
        )
    kernels = compiled_kernels(arch_for(device.compute_capability))  # before TensorRT's minutes, not after

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch: required by TensorRT 8.5 (JetPack 5, Xavier), implied from TensorRT 10.
    network = builder.create_network(
        1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    )
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    if fp16:
        if not builder.platform_has_fast_fp16:
            raise EngineBuildError(f"{device.name} has no fast FP16; build with --fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.clear_flag(
            trt.BuilderFlag.TF32
        )  # TF32 rounds to 10 mantissa bits: not full precision
    height, width = source.input_shape
    profile = builder.create_optimization_profile()
    one_frame = trt.Dims([per_frame, 3, height, width])
    profile.set_shape(
        source.input_name, one_frame, one_frame, trt.Dims([max_batch, 3, height, width])
    )
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(
        timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    )
    config.set_timing_cache(cache, ignore_mismatch=False)
    if hasattr(
        trt, "IProgressMonitor"
    ):  # TensorRT >= 10; JetPack 5's 8.5 builds silently
        monitor = _phase_printer()  # held here: it must outlive the build
        config.progress_monitor = monitor

    serialized = builder.build_serialized_network(network, config)
    sys.stderr.write("\n")
    if serialized is None:
        raise EngineBuildError(
            "TensorRT could not build the engine (see its messages above)"
        )
    make_folder(engine_path.parent)
    source.kernels = kernels.save(cubin_path(engine_path))
    with replaced_when_done(engine_path) as partial:  # a kill mid-write leaves the old engine whole
        partial.write_bytes(memoryview(serialized))
    if timing_cache:
        timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))

    onnx_sha256 = source.model_sha256  # Manifest.for_model checked it is the file's
    source.model_file = engine_path.name
    source.model_sha256 = file_sha256(engine_path)
    source.engine = {
        "tensorrt_version": trt.__version__,
        "gpu_name": device.name,
        "compute_capability": device.compute_capability,
        "precision": "fp16" if fp16 else "fp32",
        "source_onnx_sha256": onnx_sha256,
        "max_batch": max_batch,
    }
    source.save(manifest_path(engine_path))
    return source
