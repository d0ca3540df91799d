"""`riad-edge calibrate`: set a model's threshold again from good parts seen on the line.

Export sets the threshold from the few training images it held out (4 to 20). Good parts
on a line vary more than a handful of images shows: lighting drifts, another batch of
material, a camera knocked a little. When good parts raise alarms, save some of them as
images (a hundred or more) and calibrate on them: each is scored exactly as `riad-edge
run` scores a frame (the model's own ROI included), export's rule
(edge/method/threshold.py) sets the threshold, and the manifest beside the model is
rewritten with it, whole or not at all. The model file is not touched.

A camera's ignore mask is not applied: masking only lowers a frame's score, so a
threshold set without it errs towards fewer false alarms.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from edge.backends import open_backend
from edge.manifest import Manifest, manifest_path
from edge.method.inspection import CorruptFrameError, FrameJudge
from edge.method.preprocess import IMAGE_SUFFIXES, list_images, read_image
from edge.method.threshold import check_false_alarm_rate, threshold_from_scores
from edge.sinks.snapshots import SNAPSHOT_NAME
from edge.sources.cameras import Frame


class CalibrationError(Exception):
    """The threshold cannot be set or written; the message says why."""


class GoodImagesError(CalibrationError):
    """The folder gives fewer than 2 images to score: missing, empty or unreadable."""


@dataclass(frozen=True)
class Calibration:
    manifest_path: Path
    old_threshold: float
    threshold: float
    record: dict  # what the manifest keeps under metrics.calibration
    scores: dict[Path, float]  # each scored image
    skipped: dict[Path, str]  # unreadable images, and why
    overlays: int  # heatmap overlays of `riad-edge run --save-dir` left out
    written: bool
    # The highest-scoring image, its score, and the other images' mean and threshold, where it
    # lies far above them (lone_outlier); else None.
    outlier: tuple[Path, float, float, float] | None = None

    def flagged(self, threshold: float) -> int:
        """How many of the good images score above `threshold`: false alarms, had they run on the line."""
        return sum(score > threshold for score in self.scores.values())


def calibrate_model(
    model_path: Path,
    folder: Path,
    false_alarm_rate: float | None = None,
    write: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Score every image directly in `folder` with the model and set its threshold from them.

    GoodImagesError for a folder without two readable images, CalibrationError for a bad
    false-alarm rate or a manifest that cannot be rewritten; the backend's own errors (BackendError, ManifestError)
    for a model that cannot run here. `progress(done, total)` is called after each image.
    """
    if false_alarm_rate is not None:
        try:
            check_false_alarm_rate(false_alarm_rate)
        except ValueError as exc:
            raise CalibrationError(str(exc)) from None
    paths, overlays = _good_images(folder)
    target = manifest_path(model_path)
    if write:  # before the minutes of scoring, not after them
        _check_writable(target)
    manifest = Manifest.for_model(model_path)
    with open_backend(model_path) as backend:
        if backend.manifest.model_sha256 != manifest.model_sha256:
            # An engine whose GPU path is missing here runs the ONNX model it came from:
            # near its scores, but not its own, and the threshold is the engine's.
            raise CalibrationError(
                f"{model_path} cannot run on this machine (it falls back to {backend.manifest.model_file}); "
                "calibrate the engine on the device it was built for, or calibrate the .onnx model"
            )
        judge = FrameJudge(backend, roi=manifest.crop)
        scores, skipped = {}, {}
        for index, path in enumerate(paths):
            try:
                image = read_image(path)
                scores[path] = judge.judge(Frame(index, time.time(), time.monotonic(), image)).score
            except (ValueError, CorruptFrameError) as exc:  # one bad file among hundreds costs only itself
                skipped[path] = str(exc)
            if progress:
                progress(index + 1, len(paths))
    if len(scores) < 2:
        raise GoodImagesError(
            f"{folder}: {len(scores)} of its {len(paths)} images could be scored; at least 2 are needed"
            + (f" ({next(iter(skipped.values()))})" if skipped else "")
        )
    result = threshold_from_scores(list(scores.values()), false_alarm_rate)
    threshold = result.pop("threshold")
    outlier = lone_outlier(scores)
    record = {
        **result,
        "images": str(folder.resolve()),
        "skipped": len(skipped),
        "overlays_skipped": overlays,
        "previous_threshold": manifest.threshold,
        "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "by": "riad-edge calibrate",
    }
    if outlier:
        record["outlier"] = outlier[0].name
    if write:
        updated = replace(manifest, threshold=threshold, metrics={**manifest.metrics, "calibration": record})
        try:
            updated.save(target)
        except OSError as exc:
            raise CalibrationError(f"cannot write {target}: {exc.strerror or exc}; the old manifest is intact") from None
    return Calibration(target, manifest.threshold, threshold, record, scores, skipped, overlays, write, outlier)


def lone_outlier(scores: dict[Path, float]) -> tuple[Path, float, float, float] | None:
    """(image, score, the others' mean, the others' threshold) where the highest-scoring image
    lies more than twice as far above the other images' mean as the threshold they set by
    export's rule; else None.

    One defective or foreign part among the good ones alone lifts the threshold over it and
    blinds the inspector to every defect scoring less. The top image of a large folder of
    good parts often sits a little above the threshold the rest set (their maximum is part
    of it); twice as far out is another kind of image (README, "calibrate"). So
    calibrate names it and writes the threshold anyway: the user decides what the part is.
    """
    if len(scores) < 3:  # the others' spread needs two of them
        return None
    path, top = max(scores.items(), key=lambda item: item[1])
    others = threshold_from_scores([score for other, score in scores.items() if other != path])
    mean = others["good_mean"]
    return (path, top, mean, others["threshold"]) if top - mean > 2 * (others["threshold"] - mean) else None


def _good_images(folder: Path) -> tuple[list[Path], int]:
    """The images to score, and how many heatmap overlays were left out.

    A folder that `riad-edge run --save-dir` filled holds each frame and its heatmap
    overlay; the overlay is no camera frame, and would score as a wildly defective part.
    """
    if not folder.is_dir():
        raise GoodImagesError(f"{folder} is not a folder; give the folder of good-part images")
    images = list_images(folder)
    paths = [p for p in images if not ((match := SNAPSHOT_NAME.match(p.name)) and match.group(3) == "overlay")]
    if not paths:
        raise GoodImagesError(f"no images directly in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}; heatmap overlays do not count)")
    return paths, len(images) - len(paths)


def _check_writable(target: Path) -> None:
    # The manifest is replaced by a new file beside it, so its folder must take one.
    if not target.is_file():
        return  # open_backend names the missing manifest
    if not os.access(target.parent, os.W_OK) or not os.access(target, os.W_OK):
        raise CalibrationError(f"cannot rewrite {target} (no write permission); run as its owner, or use --dry-run to only see the threshold")
