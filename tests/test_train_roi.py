"""The trainer takes the edge's ROI: it learns the crop the camera will see, and the manifest says which."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.method.inspection import FrameJudge
from edge.manifest import Manifest, ManifestError
from edge.method.preprocess import prepare, read_image
from edge.method.roi import Roi
from trainer.cli import app
from trainer.data import load_images

ROI = "8,4,48,32,90"  # of the 64 px training images: a 48 x 32 crop, turned upright to 32 x 48


@pytest.fixture(scope="module")
def parts(bottle_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "bottle-mini"
    folder.mkdir()
    for source in sorted((bottle_dir / "train" / "good").glob("*.png"))[:6]:
        cv2.imwrite(str(folder / source.name), cv2.resize(read_image(source), (64, 64), interpolation=cv2.INTER_AREA))
    return folder


def test_train_and_export_with_an_roi_the_edge_then_requires(parts, tmp_path):
    run, model = tmp_path / "run", tmp_path / "mini.onnx"
    args = ["train", str(parts), "--out", str(run), "--input-size", "48", "--width", "4", "--epochs", "1", "--roi", ROI]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["export", str(run / "last.pt"), "--out", str(model)])
    assert result.exit_code == 0, result.output
    manifest = Manifest.for_model(model)
    assert manifest.roi == {"x": 8, "y": 4, "width": 48, "height": 32, "rotate": 90}
    # The input takes the upright crop's aspect (taller than wide), not the square frames',
    # and no more pixels than the 48 x 32 crop has (48 x 48 asked for).
    assert manifest.input_shape == (48, 32)
    backend = OnnxCpuBackend(model)
    FrameJudge(backend, roi=Roi.parse(ROI))  # the camera's ROI: accepted
    with pytest.raises(ManifestError, match="trained on ROI 8,4,48,32,90"):
        FrameJudge(backend)


def test_training_images_go_through_the_edges_crop(parts):
    path = sorted(parts.glob("*.png"))[0]
    roi = Roi.parse(ROI)
    np.testing.assert_array_equal(load_images([path], (32, 48), ROI)[0], prepare(roi.view(read_image(path)), (32, 48)))


@pytest.mark.parametrize(
    "roi, problem", [("8,4,48", "x,y,width,height"), ("8,4,48,32,45", "rotation"), ("40,0,48,32", "reaches outside the 64x64 frame")]
)
def test_a_bad_roi_stops_training_with_its_reason(parts, tmp_path, roi, problem):
    args = ["train", str(parts), "--out", str(tmp_path), "--input-size", "32", "--width", "4", "--epochs", "1", "--roi", roi]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and problem in result.output and "Traceback" not in result.output
