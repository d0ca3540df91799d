"""Threshold calibration on held-out good images."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from edge.backends.base import Backend, FrameScore
from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.manifest import Manifest
from edge.method.preprocess import prepare, read_image
from edge.method.threshold import DEFAULT_RULE, RATE_RULE, student_t_quantile
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


def mean_brightness_manifest() -> Manifest:
    return Manifest("m", "c", input_height=16, input_width=16, model_width=4, threshold=0.5, model_file="m.onnx", model_sha256="")


def images_scoring(scores) -> list[np.ndarray]:
    return [np.full((3, 4, 4), s, np.float32) for s in scores]


def test_default_rule_is_recorded():
    result = calibrate_threshold(MeanBrightness(mean_brightness_manifest()), images_scoring([0.1, 0.2, 0.3]))
    assert result["rule"] == DEFAULT_RULE and result["false_alarm_rate"] is None
    assert result["held_out_above_threshold"] == 0


@pytest.mark.parametrize(
    ("p", "df", "table"),  # from printed Student-t tables
    [(0.99, 3, 4.5407), (0.99, 19, 2.5395), (0.975, 10, 2.2281), (0.999, 3, 10.2145), (0.95, 1, 6.3138), (0.5, 7, 0.0)],
)
def test_student_t_quantile_matches_the_tables(p, df, table):
    assert student_t_quantile(p, df) == pytest.approx(table, abs=1e-4)


def test_a_false_alarm_rate_sets_a_normal_prediction_bound():
    scores = [0.10, 0.12, 0.11, 0.15, 0.13]
    result = calibrate_threshold(MeanBrightness(mean_brightness_manifest()), images_scoring(scores), 0.01)
    mean, std = np.mean(scores), np.std(scores, ddof=1)
    assert result["threshold"] == pytest.approx(mean + 3.7469 * std * np.sqrt(1 + 1 / 5), rel=1e-4)  # t(0.99, 4)
    assert result["rule"] == RATE_RULE and result["false_alarm_rate"] == 0.01
    # A generous rate may set it below held-out scores; the count says how many.
    loose = calibrate_threshold(MeanBrightness(mean_brightness_manifest()), images_scoring(scores), 0.4)
    assert loose["threshold"] < max(scores) and loose["held_out_above_threshold"] == 2


def test_the_rate_is_met_on_average_for_normal_scores_from_four_images():
    """The claim behind the rule: a new good part, from the same normal law, exceeds it with the asked probability."""
    rng = np.random.default_rng(11)
    backend, law = MeanBrightness(mean_brightness_manifest()), NormalDist(0.3, 0.02)
    exceed, plug_in = [], []
    for _ in range(300):
        scores = rng.normal(law.mean, law.stdev, 4)
        threshold = calibrate_threshold(backend, images_scoring(scores), 0.05)["threshold"]
        exceed.append(1 - law.cdf(threshold))
        plug_in.append(1 - law.cdf(scores.mean() + 1.6449 * scores.std(ddof=1)))  # the plain normal quantile
    assert np.mean(exceed) == pytest.approx(0.05, abs=0.01)
    assert np.mean(plug_in) > 0.08  # what fitting a normal and taking its quantile would flag


@pytest.mark.parametrize("rate", [0.0, 1.0, 5.0, -0.01, float("nan")])
def test_a_false_alarm_rate_outside_zero_to_one_is_refused(rate):
    with pytest.raises(ValueError, match="between 0 and 1, exclusive"):
        calibrate_threshold(MeanBrightness(mean_brightness_manifest()), images_scoring([0.1, 0.2]), rate)
