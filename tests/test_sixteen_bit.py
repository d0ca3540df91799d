"""16-bit image files holding fewer bits: a 12-bit camera's frames saved as 16-bit PNG or TIFF.

Read at 16-bit full scale, values 0 to 4095 keep 16 grey levels of 256: the part is black
and its defects with it. A model reads them with its training images' white level, in
training, export, evaluate and the edge alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from edge.manifest import Manifest, manifest_path
from edge.method.preprocess import FULL_SCALE_16, prepare, read_image, to_rgb8, white_level
from trainer.cli import app
from trainer.data import load_images, pixel_white
from trainer.export import export_onnx
from trainer.train import load_checkpoint, recipe, train

TINY = {"input_size": 32, "base_width": 4, "batch_size": 2, "epochs": 1}


def test_the_white_level_is_the_fewest_bits_that_hold_the_brightest_pixel():
    assert white_level(4080) == 4095 and white_level(4095) == 4095 and white_level(4096) == 8191
    assert white_level(1000) == 1023 and white_level(65535) == 65535
    assert white_level(3) == 255  # never fewer than 8 bits
    twelve_bit = np.array([[0, 16, 2048, 4095, 5000]], np.uint16)
    assert to_rgb8(twelve_bit, 4095)[0, :, 0].tolist() == [0, 0, 127, 255, 255]  # above white: white
    assert to_rgb8(twelve_bit)[0, :, 0].tolist() == [0, 0, 7, 15, 19]  # at full scale: nearly black
    # Full scale is the rule of every model before the white level: exactly x / 257, truncated.
    every = np.arange(65536, dtype=np.uint16)[None]
    assert np.array_equal(to_rgb8(every)[..., 0], (every / 257).astype(np.uint8))
    # Shown (an overlay, a snapshot), a frame is scaled to its own range.
    assert to_rgb8(twelve_bit[:, :4], white=None)[0, :, 0].tolist() == [0, 0, 127, 255]


@pytest.fixture(scope="module")
def twelve_bit_parts(bottle_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The same six good bottles, shrunk to 64 px, as 8-bit PNGs and as a 12-bit camera saves
    them: 16-bit PNGs of values 0 to 4080."""
    root = tmp_path_factory.mktemp("sixteen")
    eight, twelve = root / "eight", root / "twelve"
    eight.mkdir()
    twelve.mkdir()
    for source in sorted((bottle_dir / "train" / "good").glob("*.png"))[:6]:
        small = cv2.resize(read_image(source), (64, 64), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(eight / source.name), small)
        cv2.imwrite(str(twelve / source.name), small.astype(np.uint16) * 16)
    return eight, twelve


def test_training_and_export_read_a_twelve_bit_set_as_its_eight_bit_twin(twelve_bit_parts, tmp_path):
    eight, twelve = twelve_bit_parts
    paths = sorted(twelve.glob("*.png"))
    assert read_image(paths[0]).dtype == np.uint16
    assert pixel_white(paths) == 4095 and pixel_white(sorted(eight.glob("*.png"))) == FULL_SCALE_16
    as_twelve = load_images(paths, (32, 32), white=4095)
    as_eight = load_images(sorted(eight.glob("*.png")), (32, 32))
    assert np.abs(as_twelve - as_eight).max() <= 1.5 / 255  # 16 x v * 255 / 4095 is v less a level at most
    assert as_eight.mean() > 0.5 and load_images(paths, (32, 32)).mean() < 0.06  # full scale: black

    result = CliRunner().invoke(app, ["train", str(twelve), "--out", str(tmp_path / "run"), "--input-size", "32",
                                      "--width", "4", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "16-bit images with values up to 4095: read with 4095 as white" in result.output
    assert load_checkpoint(tmp_path / "run" / "last.pt")["pixel_white"] == 4095
    manifest = export_onnx(tmp_path / "run" / "last.pt", tmp_path / "twelve.onnx")
    assert manifest.pixel_white == 4095 and Manifest.for_model(tmp_path / "twelve.onnx").pixel_white == 4095
    # The edge prepares a 12-bit frame as training did, not as a black one.
    frame = read_image(paths[0])
    assert np.array_equal(manifest.prepare(frame), load_images(paths[:1], manifest.input_shape, white=4095)[0])
    assert np.abs(manifest.prepare(frame) - prepare(read_image(sorted(eight.glob("*.png"))[0]), manifest.input_shape)).max() <= 1.5 / 255


def test_an_eight_bit_set_and_an_older_checkpoint_keep_full_scale(twelve_bit_parts, tmp_path):
    eight, twelve = twelve_bit_parts
    checkpoint = train(eight, tmp_path / "run", recipe("cpu", **TINY))
    assert load_checkpoint(checkpoint)["pixel_white"] == FULL_SCALE_16
    manifest = export_onnx(checkpoint, tmp_path / "eight.onnx")
    assert manifest.pixel_white == FULL_SCALE_16
    assert json.loads(manifest_path(tmp_path / "eight.onnx").read_text())["format_version"] == 6


def test_evaluate_scores_twelve_bit_test_images_with_the_models_white(twelve_bit_parts, tmp_path):
    """A 12-bit set evaluated: its good images score as their 8-bit twins do, not as black frames."""
    eight, twelve = twelve_bit_parts
    train(twelve, tmp_path / "run", recipe("cpu", **TINY))
    export_onnx(tmp_path / "run" / "last.pt", tmp_path / "twelve.onnx")
    for bits, source in (("12", twelve), ("8", eight)):
        data = tmp_path / f"test{bits}"
        (data / "test" / "good").mkdir(parents=True)
        (data / "test" / "bad").mkdir()
        for path in sorted(source.glob("*.png"))[:2]:
            (data / "test" / "good" / path.name).write_bytes(path.read_bytes())
        # A dark blot as the defect, at the set's own depth.
        frame = read_image(sorted(source.glob("*.png"))[2])
        frame[20:40, 20:40] = 0
        cv2.imwrite(str(data / "test" / "bad" / "blot.png"), frame)
        result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "twelve.onnx"), str(data), "--out",
                                          str(tmp_path / f"eval{bits}"), "--no-overlays"])
        assert result.exit_code == 0, result.output
    scores = {bits: {image["image"]: image["score"] for image in
                     json.loads((tmp_path / f"eval{bits}" / "metrics.json").read_text())["images"]} for bits in ("12", "8")}
    assert scores["12"].keys() == scores["8"].keys()
    for image, score in scores["8"].items():
        assert scores["12"][image] == pytest.approx(score, rel=0.1, abs=1e-3), image
