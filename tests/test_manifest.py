"""Manifests written by other versions of the exporter still load, and mean nothing new."""

from __future__ import annotations

import json

import numpy as np

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.manifest import Manifest, manifest_path
from edge.method.preprocess import prepare, read_image


def test_keys_this_version_does_not_know_are_ignored(tiny_onnx_model, bottle_dir):
    image = prepare(read_image(min((bottle_dir / "train" / "good").glob("*.png"))), (64, 64))
    with OnnxCpuBackend(tiny_onnx_model) as backend:
        expected = backend.score(image)

    # Earlier exports wrote mean/std (always 0 and 1); the net is trained on RGB / 255 with
    # hidden cells 0, so no value here may change its input.
    data = json.loads(manifest_path(tiny_onnx_model).read_text())
    data |= {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "added_later": {"x": 1}}
    manifest_path(tiny_onnx_model).write_text(json.dumps(data))

    assert Manifest.for_model(tiny_onnx_model).model_id == "tiny-test"
    with OnnxCpuBackend(tiny_onnx_model) as backend:
        got = backend.score(image)
    np.testing.assert_array_equal(got.anomaly_map, expected.anomaly_map)
    assert got.score == expected.score


def test_a_square_model_from_before_non_square_inputs_still_loads(tiny_onnx_model):
    # Exports before inputs kept the aspect ratio wrote one `input_size` (the bundled
    # engines/bottle-cpu.onnx.json is one): a square of that side.
    data = json.loads(manifest_path(tiny_onnx_model).read_text())
    data["input_size"] = data.pop("input_height")
    del data["input_width"]
    manifest_path(tiny_onnx_model).write_text(json.dumps(data))
    assert Manifest.for_model(tiny_onnx_model).input_shape == (64, 64)
