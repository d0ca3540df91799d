"""CPU backend: ONNX Runtime runs a frame's masked variants (12 by default) as one batch; numpy does the map."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.method.anomaly_map import anomaly_map
from edge.backends import BackendError
from edge.backends.base import Backend, FrameScore
from edge.manifest import Manifest
from edge.method.masks import fixed_masks, masked_variants, recombine


class OnnxCpuBackend(Backend):
    name = "cpu (onnxruntime)"

    def __init__(self, model_path: str | Path, manifest: Manifest | None = None, threads: int | None = None):
        super().__init__(manifest or Manifest.for_model(model_path))
        m = self.manifest
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 4  # fatal only: its errors reach the user once, as our exceptions
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class but Exception
            raise BackendError(f"ONNX Runtime cannot load {model_path} ({exc}); re-export it with 'riad-trainer export'") from None
        self._check_io(model_path)
        self.masks = fixed_masks(m.input_height, m.input_width, m.mask_spec, m.mask_seed)

    def _check_io(self, model_path: str | Path) -> None:
        """The graph takes and gives what the manifest says, or the first frame would fail mid-run."""
        m = self.manifest
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}

        def described(tensors: dict) -> str:
            return ", ".join(f"{name} ({', '.join(map(str, shape))})" for name, shape in tensors.items())

        expected = [3, m.input_height, m.input_width]  # after the dynamic batch axis
        shape = inputs.get(m.input_name)
        fixed = shape is not None and all(not isinstance(d, int) or d == e for d, e in zip(shape[1:], expected))
        if len(inputs) != 1 or m.output_name not in outputs or not fixed:
            raise BackendError(
                f"{model_path} takes {described(inputs)} and gives {described(outputs)}, but its manifest expects "
                f"{m.input_name} (batch, {', '.join(map(str, expected))}) and {m.output_name}; "
                "re-export the model with its manifest"
            )

    def reconstruct(self, image: np.ndarray) -> np.ndarray:
        """(len(K), 3, H, W): the per-k recombined reconstructions of one image."""
        batch = masked_variants(image, self.masks)
        (outputs,) = self.session.run([self.manifest.output_name], {self.manifest.input_name: batch})
        return recombine(outputs, self.masks)

    def score(self, image: np.ndarray) -> FrameScore:
        amap = anomaly_map(image, self.reconstruct(image), self.manifest.map_spec, self.manifest.reference)
        return self.frame_score(amap)

    def score_batch(self, images: Sequence[np.ndarray]) -> list[FrameScore]:
        """N frames' variants (N x 12) through the network as one batch: one session run."""
        batch = np.concatenate([masked_variants(image, self.masks) for image in images])
        (outputs,) = self.session.run([self.manifest.output_name], {self.manifest.input_name: batch})
        scores = []
        for image, per_frame in zip(images, np.split(outputs, len(images))):
            amap = anomaly_map(image, recombine(per_frame, self.masks), self.manifest.map_spec, self.manifest.reference)
            scores.append(self.frame_score(amap))
        return scores
