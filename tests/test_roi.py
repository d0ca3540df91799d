"""Region of interest and ignore mask: what is outside the crop or under the mask never alarms."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.method.inspection import CorruptFrameError, FrameJudge
from edge.manifest import Manifest, ManifestError, manifest_path
from edge.method.preprocess import read_image
from edge.method.roi import IgnoreMask, Roi, RoiError
from edge.sources.cameras import Frame
from edge.station.config import ConfigError, load_config
from tests.conftest import OLD_BOTTLE_MODEL

ROI = Roi(400, 60, 900, 900)  # where the part sits in a 1400 x 1000 conveyor frame


def frame_of(image: np.ndarray) -> Frame:
    return Frame(index=0, timestamp=time.time(), captured_at=time.monotonic(), image=image)


def conveyor(inside: np.ndarray, left: np.ndarray | None = None) -> np.ndarray:
    """A grey 1400 x 1000 frame: `inside` at the ROI, a 350 px wide strip of `left` beside it."""
    frame = np.full((1000, 1400, 3), 90, np.uint8)
    frame[ROI.y : ROI.y + ROI.height, ROI.x : ROI.x + ROI.width] = inside
    if left is not None:
        frame[60:960, 0:350] = left[:, 275:625]  # the middle of another bottle, outside the ROI
    return frame


@pytest.fixture
def roi_model(tmp_path) -> Path:
    """The old bottle model (tests/data) with a manifest saying it was trained on ROI (the bottle images are its crops)."""
    model = tmp_path / "bottle-roi.onnx"
    shutil.copy(OLD_BOTTLE_MODEL, model)
    manifest = Manifest.read(manifest_path(OLD_BOTTLE_MODEL))
    manifest.model_file, manifest.roi = model.name, ROI.as_dict()
    manifest.save(manifest_path(model))
    return model


def test_a_defect_inside_the_roi_alarms_outside_or_under_the_mask_it_does_not(bottle_dir, roi_model):
    backend = OnnxCpuBackend(roi_model)
    good = read_image(bottle_dir / "test" / "good" / "000.png")
    broken = read_image(bottle_dir / "test" / "broken_large" / "003.png")
    judge = FrameJudge(backend, roi=ROI)

    inside = judge.judge(frame_of(conveyor(broken)))
    assert inside.is_defect and inside.boxes
    for box in inside.boxes:  # full-frame pixels, within the ROI
        assert ROI.x <= box.x and box.x + box.width <= ROI.x + ROI.width + 10
        assert ROI.y <= box.y and box.y + box.height <= ROI.y + ROI.height + 10

    outside = judge.judge(frame_of(conveyor(good, left=broken)))
    assert not outside.is_defect and not outside.boxes
    assert outside.anomaly_map.shape[1] > outside.anomaly_map.shape[0]  # a map of the whole frame, zero outside the ROI

    # An ignore polygon over the defect's regions, with a margin for the map's smoothing.
    margin = 60
    polygons = [[[b.x - margin, b.y - margin], [b.x + b.width + margin, b.y - margin],
                 [b.x + b.width + margin, b.y + b.height + margin], [b.x - margin, b.y + b.height + margin]]
                for b in inside.boxes]  # fmt: skip
    masked = FrameJudge(backend, roi=ROI, ignore=IgnoreMask(polygons=polygons)).judge(frame_of(conveyor(broken)))
    assert not masked.is_defect and masked.score < inside.score


def test_one_cameras_run_crops_its_frames_as_the_model_was_trained(bottle_dir, roi_model, tmp_path):
    # `run` has no --roi: the model's own crop is the camera's (it was trained on this camera's frames).
    good = read_image(bottle_dir / "test" / "good" / "000.png")
    broken = read_image(bottle_dir / "test" / "broken_large" / "003.png")
    line = tmp_path / "line"
    line.mkdir()
    cv2.imwrite(str(line / "1.png"), conveyor(good, left=broken))  # a broken bottle beside the ROI: not this part
    cv2.imwrite(str(line / "2.png"), conveyor(broken))
    done = subprocess.run([sys.executable, "-c", "from edge.cli import app; app()", "run", "--source", str(line), "--model", str(roi_model)],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "roi: 400,60,900,900 (the crop the model was trained on)" in done.stdout
    judge = FrameJudge(OnnxCpuBackend(roi_model), roi=ROI)
    expected = judge.judge(frame_of(conveyor(broken)))
    defects = [line for line in done.stdout.splitlines() if line.startswith("DEFECT")]
    assert len(defects) == 1 and "frame 1 " in defects[0] and f"score {expected.score:.4f}" in defects[0], done.stdout
    box = expected.boxes[0]
    assert f"x={box.x} y={box.y} w={box.width} h={box.height}" in defects[0]  # in the frame's pixels


def test_a_station_camera_without_its_models_roi_is_told_which_to_give(roi_model):
    with pytest.raises(ManifestError, match=r"looks at the whole frame; give the camera `roi: 400,60,900,900` if its parts sit there"):
        FrameJudge(OnnxCpuBackend(roi_model))


def test_the_same_mask_as_an_image(bottle_dir, tmp_path):
    ignore = np.zeros((1000, 1400), np.uint8)
    ignore[100:300, 500:700] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), ignore)
    from_image = IgnoreMask.from_file(tmp_path / "mask.png")
    from_polygon = IgnoreMask(polygons=[[[500, 100], [700, 100], [700, 300], [500, 300]]])
    amap = np.ones((100, 140), np.float32)
    a, b = from_image.apply(amap, (1000, 1400, 3)), from_polygon.apply(amap, (1000, 1400, 3))
    assert a[10:30, 50:70].max() == 0 and a.sum() > 0.9 * amap.sum()
    assert np.count_nonzero(a != b) <= 2 * (20 + 20)  # the two agree but for a pixel along the border
    with pytest.raises(RoiError, match="the ignore mask is 1400x1000, the frame 640x480"):
        from_image.apply(amap, (480, 640, 3))


def test_a_rotated_roi_sees_the_part_upright_and_boxes_land_where_it_is(bottle_dir, tiny_onnx_model):
    backend = OnnxCpuBackend(tiny_onnx_model)
    part = read_image(bottle_dir / "test" / "broken_large" / "000.png")[:600, :400]  # 400 wide, 600 high
    lying = cv2.rotate(part, cv2.ROTATE_90_COUNTERCLOCKWISE)  # mounted turned by 90 degrees: 600 x 400
    frame = np.zeros((700, 900, 3), np.uint8)
    frame[50:450, 200:800] = lying
    roi = Roi(200, 50, 600, 400, rotate=90)
    np.testing.assert_array_equal(roi.view(frame), part)
    upright = FrameJudge(backend, threshold=0.0).judge(frame_of(part))
    backend.manifest.roi = roi.as_dict()  # as if trained on this ROI
    turned = FrameJudge(backend, threshold=0.0, roi=roi).judge(frame_of(frame))
    assert turned.score == pytest.approx(upright.score, rel=1e-3)
    # The strongest region: in the upright part at (x, y), in the frame at (200 + y, 50 + 400 - x) or so.
    top_up, top_turned = upright.boxes[0], turned.boxes[0]
    assert abs(turned.boxes[0].x - (200 + top_up.y)) < 40
    assert abs(top_turned.y + top_turned.height - (50 + 400 - top_up.x)) < 40


def test_the_edge_refuses_a_model_trained_on_another_roi(roi_model, tiny_onnx_model):
    backend = OnnxCpuBackend(roi_model)
    with pytest.raises(ManifestError, match=r"trained on ROI 400,60,900,900, but this camera looks at the whole frame"):
        FrameJudge(backend)
    with pytest.raises(ManifestError, match=r"looks at ROI 400,60,900,901; train it with the same --roi"):
        FrameJudge(backend, roi=Roi(400, 60, 900, 901))
    with pytest.raises(ManifestError, match=r"trained on the whole frame, but this camera looks at ROI 0,0,64,64,90"):
        FrameJudge(OnnxCpuBackend(tiny_onnx_model), roi=Roi(0, 0, 64, 64, 90))


def test_a_frame_smaller_than_the_roi_is_a_corrupt_frame_not_a_crash(roi_model):
    judge = FrameJudge(OnnxCpuBackend(roi_model), roi=ROI)
    with pytest.raises(CorruptFrameError, match="reaches outside the 640x480 frame"):
        judge.judge(frame_of(np.zeros((480, 640, 3), np.uint8)))


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,4,45", "-1,0,5,5", "a,b,c,d", "0,0,0,5"])
def test_malformed_rois_are_refused(text):
    with pytest.raises(RoiError):
        Roi.parse(text)


def test_roi_and_mask_in_the_config(tmp_path):
    (tmp_path / "mask.png").write_bytes(cv2.imencode(".png", np.zeros((10, 10), np.uint8))[1].tobytes())
    path = tmp_path / "line.yaml"
    path.write_text(
        "cameras:\n"
        "  - {id: a, source: x, model: m.onnx, roi: '10,20,300,200,270', ignore_mask: mask.png}\n"
        "  - {id: b, source: x, model: m.onnx, roi: {x: 1, y: 2, width: 3, height: 4}, ignore_polygons: [[[0, 0], [5, 0], [5, 5]]]}\n"
    )
    a, b = load_config(path).cameras
    assert a.roi == Roi(10, 20, 300, 200, 270) and a.ignore is not None and a.ignore.image is not None
    assert b.roi == Roi(1, 2, 3, 4) and b.ignore is not None and len(b.ignore.polygons) == 1
    for bad, problem in [("roi: '1,2,3'", "x,y,width,height"), ("ignore_polygons: [[[0, 0], [1, 1]]]", "at least 3"),
                         ("ignore_mask: nothere.png", "cannot read ignore mask"), ("ignore_mask: line.yaml", "cannot decode"), ("roi: {x: 1}", "missing")]:  # fmt: skip
        path.write_text(f"cameras:\n  - {{id: a, source: x, model: m.onnx, {bad}}}\n")
        with pytest.raises(ConfigError, match=problem):
            load_config(path)
    json.dumps(a.roi.as_dict())  # goes into manifests and events as it is
