"""Does this TensorRT engine belong to this device?

An engine is compiled for one TensorRT version and one GPU architecture; run anywhere
else it fails to load or, worse, loads and misbehaves. build-engine records both in
the manifest, and the backend refuses a mismatch before deserialising anything.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from edge.backends.gpu_available import CudaDevice
from edge.manifest import Manifest, ManifestError


class EngineMismatchError(ManifestError):
    """The engine was built elsewhere (or is not an engine); it must be rebuilt here."""


def check_engine(
    manifest: Manifest,  # read by Manifest.for_model, which checked the engine's sha256
    engine_path: str | Path,
    tensorrt_version: str,
    device: CudaDevice,
) -> None:
    rebuild = (
        f"rebuild the engine on this device: riad-trainer build-engine MODEL.onnx --out {shlex.quote(str(engine_path))} "
        "(engines are not portable; see docs/gpu.md)"
    )
    facts = manifest.engine
    if not facts:
        raise EngineMismatchError(
            f"the manifest of {engine_path} describes no TensorRT engine (an ONNX model's manifest?); {rebuild}"
        )
    built_with = facts.get("tensorrt_version")
    if built_with != tensorrt_version:
        raise EngineMismatchError(
            f"{engine_path} was built with TensorRT {built_with}, this device runs TensorRT {tensorrt_version}; {rebuild}"
        )
    built_for = facts.get("compute_capability")
    if built_for != device.compute_capability:
        raise EngineMismatchError(
            f"{engine_path} was built for {facts.get('gpu_name')} (compute {built_for}), this device is "
            f"{device.name} (compute {device.compute_capability}); {rebuild}"
        )
