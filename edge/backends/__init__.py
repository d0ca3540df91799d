"""Choosing a backend: the model file decides.

    model.onnx               -> OnnxCpuBackend (ONNX Runtime on the CPU; runs anywhere)
    model.plan / .engine     -> TensorRTBackend (a serialized TensorRT engine; needs an NVIDIA GPU)

Where the GPU path is missing altogether (no TensorRT, no GPU, no pycuda/CuPy), an
engine falls back to the CPU with the ONNX model it was built from, when that sits
beside it (`model.plan` -> `model.onnx`, checked against the sha256 the engine's manifest
recorded), and says so. It does not fall back from an engine that is foreign to this
GPU or TensorRT, or whose kernels fail to compile: there the GPU is present, and
running a line at CPU speed instead of fixing the engine would drop most frames
unnoticed. Those are errors that say how to fix them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge.backends.base import Backend
from edge.manifest import Manifest, ManifestError, file_sha256

log = logging.getLogger(__name__)

ONNX_SUFFIXES = frozenset({".onnx"})
ENGINE_SUFFIXES = frozenset({".plan", ".engine"})


class BackendError(Exception):
    """No backend can run this model file on this machine."""


def open_backend(model_path: str | Path) -> Backend:
    """The backend for a model file, its manifest checked (ManifestError when they disagree)."""
    model_path = Path(model_path)
    suffix = model_path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from edge.backends.onnx_cpu import OnnxCpuBackend

        backend: Backend = OnnxCpuBackend(model_path)
    elif suffix in ENGINE_SUFFIXES:
        backend = _tensorrt(model_path)
    else:
        kinds = ", ".join(sorted(ONNX_SUFFIXES | ENGINE_SUFFIXES))
        raise BackendError(f"{model_path}: unknown model type '{suffix}' (expected {kinds})")
    log.info("backend: %s for %s (model %s)", backend.name, model_path, backend.manifest.model_id)
    return backend


def cpu_twin(engine_path: Path) -> Path | None:
    """The ONNX model an engine was built from, if it sits beside it under the same name.

    ManifestError when the engine does not match its own manifest.
    """
    candidate = engine_path.with_suffix(".onnx")
    recorded = (Manifest.for_model(engine_path).engine or {}).get("source_onnx_sha256")
    if recorded and candidate.is_file() and file_sha256(candidate) == recorded:
        return candidate
    return None


def _tensorrt(model_path: Path) -> Backend:
    if not model_path.is_file():
        raise ManifestError(f"model file {model_path} does not exist")
    from edge.backends.gpu_available import GpuUnavailable
    from edge.backends.kernel_binary import KernelCompileError, NvccNotFound

    try:
        from edge.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(model_path)
    except (ImportError, GpuUnavailable) as exc:
        missing = str(exc)
    except NvccNotFound as exc:  # says to run build-engine here
        raise BackendError(f"{exc}; or pass the .onnx model instead to use the CPU backend") from None
    except KernelCompileError as exc:
        raise BackendError(
            f"{exc}. The CUDA toolkit must support this GPU and driver (see docs/gpu.md); "
            "pass the .onnx model instead to use the CPU backend"
        ) from None

    needs = f"{model_path} is a TensorRT engine, which needs the GPU path ({missing})"
    twin = cpu_twin(model_path)
    if twin is None:
        raise BackendError(
            f"{needs}; no CPU fallback: {model_path.with_suffix('.onnx')} is not beside it or is not the "
            "model it was built from. Pass the .onnx model to use the CPU backend"
        )
    from edge.backends.onnx_cpu import OnnxCpuBackend

    log.warning("%s; running %s, the model it was built from, on the CPU instead", needs, twin)
    return OnnxCpuBackend(twin)
