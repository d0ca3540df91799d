"""The per-channel map (MapSpec.per_channel, manifests' map_channels "rgb") sees a change of
colour that the paper's grey map cannot, and changes nothing for grey parts.

Issue 10 found colour defects scoring at chance on a held-out MVTec category: the grey map
compares gradients of the channel mean, and a stain of the part's own brightness leaves the
channel mean as it was.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.manifest import Manifest, ManifestError, manifest_path
from edge.method.anomaly_map import (
    MapSpec,
    anomaly_map,
    compared_planes,
    map_channels_for,
    raw_anomaly_map,
    raw_anomaly_map_pair_by_pair,
)
from edge.method.preprocess import prepare, read_image
from tests.conftest import DATA
from trainer.data import load_images

SHAPE = (128, 128)
PATCH = (slice(40, 72), slice(48, 80))  # on the bottle's body


def tinted(image: np.ndarray, amount: float) -> np.ndarray:
    """`image` with a stain on PATCH: redder and less green by `amount`, its brightness
    (the channel mean) unchanged to float rounding."""
    stained = image.copy()
    red, green = stained[0][PATCH], stained[1][PATCH]
    assert red.max() + amount <= 1 and green.min() - amount >= 0, "the stain must not clip"
    stained[0][PATCH] = red + amount
    stained[1][PATCH] = green - amount
    return stained


@pytest.fixture
def good_bottle(bottle_dir) -> np.ndarray:
    return prepare(read_image(min((bottle_dir / "train" / "good").glob("*.png"))), SHAPE)


def test_a_stain_of_the_parts_own_brightness_shows_only_in_the_per_channel_map(good_bottle):
    # The net inpaints the good part it learned (here: the good image itself, 4 cell sizes).
    part = tinted(good_bottle, 0.12)
    reconstructions = np.stack([good_bottle] * 4)
    grey = raw_anomaly_map(part, reconstructions, MapSpec())
    per_channel = raw_anomaly_map(part, reconstructions, MapSpec(per_channel=True))
    assert grey.max() < 1e-4  # blind: the channel mean did not change
    # The stain's outline lights up in the red and green channels' gradients ...
    outline = np.zeros(SHAPE, bool)
    outline[PATCH[0].start - 2 : PATCH[0].stop + 2, PATCH[1].start - 2 : PATCH[1].stop + 2] = True
    assert per_channel[outline].max() > 0.1
    # ... and nowhere else: the rest is the good part itself (pyramid levels blur the edge a little).
    far = np.ones(SHAPE, bool)
    far[PATCH[0].start - 16 : PATCH[0].stop + 16, PATCH[1].start - 16 : PATCH[1].stop + 16] = False
    assert per_channel[far].max() < 1e-4
    # The same in the smoothed map the score is taken from.
    spec = MapSpec(sigma=4.0, per_channel=True)
    assert anomaly_map(part, reconstructions, spec).max() > 10 * anomaly_map(part, reconstructions, MapSpec(sigma=4.0)).max()


def test_a_brightness_defect_shows_in_both_maps(good_bottle):
    """The per-channel map keeps what the grey map sees: a darker patch, in every channel."""
    part = good_bottle.copy()
    part[:, PATCH[0], PATCH[1]] *= 0.5
    reconstructions = np.stack([good_bottle] * 4)
    grey = raw_anomaly_map(part, reconstructions, MapSpec())
    per_channel = raw_anomaly_map(part, reconstructions, MapSpec(per_channel=True))
    near = np.zeros(SHAPE, bool)
    near[PATCH[0].start - 4 : PATCH[0].stop + 4, PATCH[1].start - 4 : PATCH[1].stop + 4] = True
    for amap in (grey, per_channel):
        assert amap.max() > 0.1 and near[np.unravel_index(amap.argmax(), SHAPE)]


def test_grey_images_give_the_grey_map_either_way(good_bottle):
    """Where all channels are equal the two maps measure the same thing."""
    grey_part = np.repeat(good_bottle.mean(axis=0, keepdims=True), 3, axis=0)
    rng = np.random.default_rng(3)
    reconstructions = np.repeat(np.clip(grey_part[None, :1] + rng.normal(0, 0.02, (4, 1, *SHAPE)), 0, 1), 3, axis=1)
    reconstructions = reconstructions.astype(np.float32)
    np.testing.assert_allclose(raw_anomaly_map(grey_part, reconstructions, MapSpec(per_channel=True)),
                               raw_anomaly_map(grey_part, reconstructions, MapSpec()), atol=1e-6)


def test_export_picks_the_per_channel_map_for_colour_parts_only(bottle_dir):
    kolektor = DATA / "kolektorsdd" / "train" / "good"
    if not kolektor.is_dir():
        pytest.skip(f"KolektorSDD not found at {kolektor}")
    bottle = load_images(sorted((bottle_dir / "train" / "good").glob("*.png"))[:3], (64, 64))
    grey = load_images(sorted(kolektor.iterdir())[:3], (96, 32))
    assert map_channels_for(bottle) == "rgb"
    assert map_channels_for(grey) == "grey"  # grey files: the same map for a third of the work
    one_coloured_pixel = grey.copy()
    one_coloured_pixel[1, 0, 5, 5] += 0.01
    assert map_channels_for(one_coloured_pixel) == "rgb"


def test_the_manifest_says_which_map(tiny_onnx_model):
    path = manifest_path(tiny_onnx_model)
    data = json.loads(path.read_text())
    assert "map_channels" not in data or data["map_channels"] == "grey"
    data.pop("map_channels", None)
    path.write_text(json.dumps(data))
    assert Manifest.for_model(tiny_onnx_model).map_spec.per_channel is False  # older manifests: the paper's map
    path.write_text(json.dumps(data | {"map_channels": "rgb"}))
    assert Manifest.for_model(tiny_onnx_model).map_spec.per_channel is True
    for wrong in ("RGB", "hsv", 3, None):
        path.write_text(json.dumps(data | {"map_channels": wrong}))
        with pytest.raises(ManifestError, match=r"map_channels .* is none of grey, rgb"):
            Manifest.for_model(tiny_onnx_model)


@pytest.mark.parametrize("per_channel", [False, True])
def test_the_raw_map_is_the_mean_of_one_minus_msgms_over_the_pairs(bottle_dir, good_bottle, per_channel):
    """raw_anomaly_map shares the original's gradients and upsamples once per level; it must
    still be the method's definition, pair by pair, on real images."""
    spec = MapSpec(per_channel=per_channel)
    defect = prepare(read_image(min((bottle_dir / "test" / "contamination").glob("*.png"))), SHAPE)
    reconstructions = np.stack([good_bottle, defect, (good_bottle + defect) / 2, good_bottle[::-1].copy()])
    assert len(compared_planes(defect, spec)) * len(reconstructions) == (12 if per_channel else 4)  # the pairs
    np.testing.assert_allclose(raw_anomaly_map(defect, reconstructions, spec),
                               raw_anomaly_map_pair_by_pair(defect, reconstructions, spec), rtol=0, atol=1e-6)
