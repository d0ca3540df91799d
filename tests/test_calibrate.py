"""Threshold calibration on held-out good images."""

from __future__ import annotations

import numpy as np
import pytest

from edge.backends.base import Backend, FrameScore
from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.manifest import Manifest
from edge.preprocess import prepare, read_image
from trainer.calibrate import calibrate_threshold


def test_threshold_from_real_good_images(tiny_onnx_model, bottle_dir):
    paths = sorted((bottle_dir / "test" / "good").glob("*.png"))[:4]
    images = [prepare(read_image(p), (64, 64)) for p in paths]
    with OnnxCpuBackend(tiny_onnx_model, threads=1) as backend:
        result = calibrate_threshold(backend, images)
        scores = np.array([backend.score(image).score for image in images])

    assert result["count"] == 4
    assert result["good_mean"] == pytest.approx(scores.mean())
    assert result["good_std"] == pytest.approx(scores.std(ddof=1))
    assert result["good_max"] == pytest.approx(scores.max())
    # Four scores cannot put their maximum beyond mean + 3 sample std, so the spread decides.
    assert result["threshold"] == pytest.approx(scores.mean() + 3 * scores.std(ddof=1))
    assert result["threshold"] > result["good_max"]


class MeanBrightness(Backend):
    """Scores an image by its mean pixel value, so a test can choose every score."""

    def score(self, image):
        return FrameScore(np.zeros(image.shape[1:], np.float32), float(image.mean()))


def test_threshold_never_below_the_highest_good_score():
    # Eleven black images and one white: mean + 3 std = 0.95 lies below the white one's 1.0.
    images = [np.full((3, 16, 16), 1.0 if i == 0 else 0.0, np.float32) for i in range(12)]
    manifest = Manifest("m", "c", input_height=16, input_width=16, model_width=4, threshold=0.5, model_file="m.onnx", model_sha256="")

    result = calibrate_threshold(MeanBrightness(manifest), images)

    assert result["good_mean"] + 3 * result["good_std"] == pytest.approx(0.9494, abs=1e-4)
    assert result["threshold"] == pytest.approx(1.0)


def test_too_few_images_is_a_clear_error(tiny_onnx_model, bottle_dir):
    image = prepare(read_image(bottle_dir / "test" / "good" / "000.png"), (64, 64))
    with OnnxCpuBackend(tiny_onnx_model, threads=1) as backend, pytest.raises(ValueError, match="at least 2"):
        calibrate_threshold(backend, [image])
