"""The map's GMS constant c (edge.method.anomaly_map.gms_constant): measured on each part's
good images, so that a textured surface's own grain does not light up like a crack, and so
that the map is the same whatever the camera's contrast (export: tests/test_train_export.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge.method.anomaly_map import GMS_C, GMS_C_FLOOR, MapSpec, gms_constant, raw_anomaly_map
from edge.method.preprocess import prepare, read_image
from tests.conftest import DATA

SHAPE = (128, 128)
GREY = MapSpec()


def first_images(folder, count: int = 4) -> np.ndarray:
    paths = sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))[:count]
    return np.stack([prepare(read_image(p), SHAPE) for p in paths])


def with_scratch(image: np.ndarray, contrast: float) -> np.ndarray:
    """A faint straight scratch, `contrast` darker, across the middle: what the net did not paint back."""
    scratched = image.copy()
    scratched[:, 64, 30:100] -= contrast
    return np.clip(scratched, 0, 1)


def test_a_textured_surface_gets_a_higher_floor_than_a_smooth_one(bottle_dir):
    kolektor = DATA / "kolektorsdd" / "train" / "good"
    if not kolektor.is_dir():
        pytest.skip(f"KolektorSDD not found at {kolektor}")
    smooth_part = gms_constant(first_images(bottle_dir / "train" / "good"), GREY)
    ground_metal = gms_constant(first_images(kolektor), GREY)
    # Bottle: mostly flat background, a floor under GMSD's; KolektorSDD: grain everywhere, above it.
    assert smooth_part < GMS_C < ground_metal
    assert ground_metal > 5 * smooth_part


def test_a_camera_with_less_contrast_gives_the_same_map(bottle_dir):
    """Gradients scale with the image, and c, measured on the same camera's good parts, with their square."""
    good = first_images(bottle_dir / "train" / "good")
    image, seen = good[0], with_scratch(good[0], 0.05)
    maps = {}
    for gain in (1.0, 0.4):  # a darker exposure: every pixel 0.4 times as bright
        spec = replace(GREY, c=gms_constant(gain * good, GREY))
        maps[gain] = raw_anomaly_map(gain * image, (gain * seen)[None], spec)
        fixed = raw_anomaly_map(gain * image, (gain * seen)[None], GREY)  # the paper's c, for comparison
        maps[f"fixed {gain}"] = fixed
    np.testing.assert_allclose(maps[0.4], maps[1.0], atol=2e-5)
    assert maps[1.0].max() > 0.05  # the scratch shows
    # With a fixed c the darker camera sees the same scratch fainter.
    assert maps["fixed 0.4"].max() < 0.7 * maps["fixed 1.0"].max()


def test_a_flat_part_gets_the_floor_and_a_clean_map():
    flat = np.full((3, 3, *SHAPE), 0.5, np.float32)
    c = gms_constant(flat, GREY)
    assert c == GMS_C_FLOOR
    amap = raw_anomaly_map(flat[0], flat[:1], replace(GREY, c=c))
    assert np.isfinite(amap).all() and amap.max() == 0
    with pytest.raises(ValueError, match="none were given"):
        gms_constant(flat[:0], GREY)


def test_colour_parts_are_measured_on_the_planes_their_map_compares(bottle_dir):
    good = first_images(bottle_dir / "train" / "good")
    per_channel = MapSpec(per_channel=True)
    assert gms_constant(good, per_channel) != gms_constant(good, GREY)
    grey_copies = np.repeat(good.mean(axis=1, keepdims=True), 3, axis=1)  # R = G = B: every plane is the grey one
    assert gms_constant(grey_copies, per_channel) == pytest.approx(gms_constant(good, GREY), rel=1e-5)
