"""Choosing a backend: the model file decides.

    model.onnx               -> OnnxCpuBackend (ONNX Runtime on the CPU; runs anywhere)
    model.plan / .engine     -> TensorRTBackend (a serialized TensorRT engine; needs an NVIDIA GPU)

A TensorRT engine only runs on the GPU and TensorRT version it was built for, so
there is nothing to fall back to from a .plan file: the error says to pass the .onnx.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge.backends.base import Backend
from edge.manifest import ManifestError

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


def _tensorrt(model_path: Path) -> Backend:
    if not model_path.is_file():
        raise ManifestError(f"model file {model_path} does not exist")
    needs = f"{model_path} is a TensorRT engine, which needs TensorRT, pycuda and an NVIDIA GPU"
    use_onnx = "pass the .onnx model instead to use the CPU backend"
    try:
        from edge.backends.tensorrt import TensorRTBackend
    except ImportError as exc:
        raise BackendError(f"{needs} ({exc}); {use_onnx}") from None
    from edge.backends.gpu_available import GpuUnavailable
    from edge.gpu_map import KernelCompileError

    try:
        return TensorRTBackend(model_path)
    except GpuUnavailable as exc:
        raise BackendError(f"{needs} ({exc}); {use_onnx}") from None
    except KernelCompileError as exc:
        raise BackendError(
            f"{exc}. The CUDA toolkit must support this GPU and driver (see docs/gpu.md); {use_onnx}"
        ) from None
