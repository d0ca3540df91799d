"""Manifests written by other versions of the exporter still load, and mean nothing new."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import replace

import numpy as np
import pytest

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.manifest import Manifest, ManifestError, decode_reference, encode_reference, manifest_path
from edge.method.preprocess import prepare, read_image
from edge.method.anomaly_map import image_score


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
    # tests/data/bottle-128px-v1.onnx.json is one): a square of that side.
    data = json.loads(manifest_path(tiny_onnx_model).read_text())
    data["input_size"] = data.pop("input_height")
    del data["input_width"]
    manifest_path(tiny_onnx_model).write_text(json.dumps(data))
    assert Manifest.for_model(tiny_onnx_model).input_shape == (64, 64)


def test_the_reference_map_survives_its_storage_and_an_old_manifest_has_none(tiny_onnx_model, bottle_dir):
    assert Manifest.for_model(tiny_onnx_model).reference is None  # the paper's map, unchanged
    reference = np.linspace(0.0, 0.2, 64 * 48, dtype=np.float32).reshape(64, 48)  # smooth, as a smoothed map is
    stored = encode_reference(reference)
    assert (stored["height"], stored["width"]) == (16, 12)
    np.testing.assert_allclose(decode_reference(stored, (64, 48)), reference, atol=0.01)

    data = json.loads(manifest_path(tiny_onnx_model).read_text())
    manifest_path(tiny_onnx_model).write_text(json.dumps(data | {"reference_map": encode_reference(np.full((64, 64), 0.05, np.float32))}))
    manifest = Manifest.for_model(tiny_onnx_model)
    np.testing.assert_allclose(manifest.reference, 0.05, atol=1e-4)
    image = prepare(read_image(min((bottle_dir / "train" / "good").glob("*.png"))), (64, 64))
    with OnnxCpuBackend(tiny_onnx_model, manifest=replace(manifest, reference_map={})) as backend:
        plain = backend.score(image).anomaly_map
    with OnnxCpuBackend(tiny_onnx_model) as backend:
        np.testing.assert_array_equal(backend.score(image).anomaly_map, np.maximum(plain - manifest.reference, 0))


@pytest.mark.parametrize("damage", [
    {"height": 16},  # no data
    {"height": 16, "width": 16, "float16_base64": "not base64!"},
    {"height": 16, "width": 15, "float16_base64": base64.b64encode(np.zeros(256, np.float16).tobytes()).decode()},
    {"height": 1, "width": 1, "float16_base64": base64.b64encode(np.array([np.nan], np.float16).tobytes()).decode()},
    {"height": "x", "width": 1, "float16_base64": ""},
])  # fmt: skip
@pytest.mark.parametrize("key", ["reference_map", "score_reference_map", "score_weight_map"])
def test_a_damaged_reference_map_is_refused_at_start(tiny_onnx_model, damage, key):
    data = json.loads(manifest_path(tiny_onnx_model).read_text())
    manifest_path(tiny_onnx_model).write_text(json.dumps(data | {key: damage}))
    with pytest.raises(ManifestError, match=f"manifest .*: {key} is damaged.*re-export the model"):
        Manifest.for_model(tiny_onnx_model)


def test_the_score_counts_the_maps_rise_above_the_score_reference(tiny_onnx_model, bottle_dir):
    """The map shown is the rise above the reference map (the good maps' mean); the score,
    with a score reference (their per-pixel maximum), only the rise above that: the plain
    map minus the score reference, clipped at 0, whichever reference the map shows."""
    data = json.loads(manifest_path(tiny_onnx_model).read_text())
    mean = np.full((64, 64), 0.02, np.float32)
    highest = np.tile(np.linspace(0.02, 0.2, 64, dtype=np.float32), (64, 1))  # above the mean, by 0 to 0.18
    manifest_path(tiny_onnx_model).write_text(json.dumps(data | {"reference_map": encode_reference(mean),
                                                                  "score_reference_map": encode_reference(highest)}))
    manifest = Manifest.for_model(tiny_onnx_model)
    reference = decode_reference(encode_reference(mean), (64, 64))  # as stored: quarter size, float16
    score_reference = decode_reference(encode_reference(highest), (64, 64))
    np.testing.assert_allclose(manifest.score_margin, score_reference - reference, atol=1e-6)
    image = prepare(read_image(min((bottle_dir / "test" / "broken_large").glob("*.png"))), (64, 64))
    with OnnxCpuBackend(tiny_onnx_model, manifest=replace(manifest, reference_map={}, score_reference_map={})) as backend:
        plain = backend.score(image).anomaly_map
    with OnnxCpuBackend(tiny_onnx_model) as backend:
        scored = backend.score(image)
    np.testing.assert_allclose(scored.anomaly_map, np.maximum(plain - reference, 0), atol=1e-6)  # the map shown
    counted = np.maximum(plain - score_reference, 0)
    assert scored.score == pytest.approx(image_score(counted, manifest.score_top_fraction), abs=1e-6)
    assert scored.score < image_score(scored.anomaly_map, manifest.score_top_fraction)  # it counts less than it shows


def test_a_score_weight_outside_0_to_1_is_refused_at_start(tiny_onnx_model):
    """A weight above 1 would count more than the map shows (boxes and colours read the two
    together), and 0 would blind a pixel: neither is what export writes."""
    data = json.loads(manifest_path(tiny_onnx_model).read_text())
    for bad in (1.5, 0.0):
        weight = np.full((64, 64), 0.5, np.float32)
        weight[10:30, 10:30] = bad
        manifest_path(tiny_onnx_model).write_text(json.dumps(data | {"score_weight_map": encode_reference(weight)}))
        with pytest.raises(ManifestError, match=r"score_weight_map holds values from .* not within \(0, 1\]; re-export the model"):
            Manifest.for_model(tiny_onnx_model)


def test_the_score_counts_the_map_weighted_by_the_score_weight(tiny_onnx_model, bottle_dir):
    """With a score weight the map shown stays the rise above the reference; the score
    counts that map times the weight, pixel by pixel."""
    data = json.loads(manifest_path(tiny_onnx_model).read_text())
    weight = np.tile(np.linspace(0.1, 1.0, 64, dtype=np.float32), (64, 1))  # the left counts a tenth
    manifest_path(tiny_onnx_model).write_text(json.dumps(data | {"score_weight_map": encode_reference(weight)}))
    manifest = Manifest.for_model(tiny_onnx_model)
    assert manifest.score_reference == "spread" and manifest.score_margin is None
    stored = decode_reference(encode_reference(weight), (64, 64))  # as stored: quarter size, float16
    np.testing.assert_array_equal(manifest.score_weight, stored)
    image = prepare(read_image(min((bottle_dir / "test" / "broken_large").glob("*.png"))), (64, 64))
    with OnnxCpuBackend(tiny_onnx_model, manifest=replace(manifest, score_weight_map={})) as backend:
        unweighted = backend.score(image)
    with OnnxCpuBackend(tiny_onnx_model) as backend:
        scored = backend.score(image)
    np.testing.assert_array_equal(scored.anomaly_map, unweighted.anomaly_map)  # the map shown
    assert scored.score == pytest.approx(image_score(unweighted.anomaly_map * stored, manifest.score_top_fraction), abs=1e-6)
    assert scored.score < unweighted.score


def test_format_versions_this_edge_cannot_read_are_refused_with_directions(tiny_onnx_model):
    """An older riad-edge skips keys it does not know, so a new manifest's per-channel map,
    reference map (version 2), top-pixels score (version 3), score reference (version 4) or
    score weight (version 5) or 16-bit white level (version 6) would silently change its
    scores; new exports say version 6, which they refuse. This edge reads all six: older
    manifests mean the paper's grey map and its maximum as the score, of the map itself,
    and 16-bit frames at full scale."""
    path = manifest_path(tiny_onnx_model)
    data = json.loads(path.read_text())
    assert data["format_version"] == 6
    newer = ("score_top_fraction", "score_reference_map", "score_weight_map", "pixel_white")
    for version in (1, 2, 3, 4, 5):
        older = {k: v for k, v in data.items() if k not in newer}
        path.write_text(json.dumps(older | {"format_version": version}))
        manifest = Manifest.for_model(tiny_onnx_model)
        assert manifest.score_top_fraction is None and manifest.score_margin is None  # the map's maximum
        assert manifest.score_weight is None and manifest.score_reference == "mean"  # ... of all of the map
        assert manifest.pixel_white == 65535
    for version in (7, 0, "6", True, None):
        path.write_text(json.dumps(data | {"format_version": version}))
        with pytest.raises(ManifestError, match=r"format version .*; this riad-edge reads versions 1, 2, 3, 4, 5 and 6: upgrade"):
            Manifest.for_model(tiny_onnx_model)
    del data["format_version"]
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="format version None"):
        Manifest.for_model(tiny_onnx_model)


@pytest.mark.parametrize(("sizes", "sets"), [([], 3), ([0], 3), (["4"], 3), ([4, True], 3), ([-4], 3), (4, 3), ([4, 8], 0),
                                             ([4, 8], 2.5)])
def test_damaged_cell_sizes_are_refused_at_start(tiny_onnx_model, sizes, sets):
    """export --cell-sizes and --mask-draws write these; a hand edit must not reach the masks."""
    path = manifest_path(tiny_onnx_model)
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | {"cell_sizes": sizes, "num_sets": sets}))
    with pytest.raises(ManifestError, match=r"must be whole numbers above 0 .*re-export the model"):
        Manifest.for_model(tiny_onnx_model)


# export --mask-seed writes mask_seed, which numpy would refuse at the first frame's masks;
# export measures map_c, which the map divides by (0 would make every flat pixel 0 / 0).
DAMAGED_NUMBERS = [("mask_seed", seed, "must be a whole number, 0 or more") for seed in (-1, 2.5, "3", True, None)]
DAMAGED_NUMBERS += [("map_c", c, "must be a number above 0") for c in (0, -0.0026, "0.0026", True, None, math.inf)]
# export writes score_top_fraction, the share of the map's pixels the score averages.
DAMAGED_NUMBERS += [("score_top_fraction", f, "must be above 0 and at most 1, or null for the map's maximum")
                    for f in (0, -0.01, 1.5, "0.01", True, math.inf, math.nan)]
# export writes pixel_white, a 16-bit frame's white: 2**b - 1 for 8 to 16 bits.
DAMAGED_NUMBERS += [("pixel_white", w, "must be a whole number from 255 to 65535")
                    for w in (0, 254, 65536, 4095.5, "4095", True, None)]
# any seed numpy takes; a c under the floor, set by hand; the whole map's mean; a 10-bit camera's white
ACCEPTED = {"mask_seed": 2**40, "map_c": 1e-5, "score_top_fraction": 1, "pixel_white": 1023}


@pytest.mark.parametrize(("key", "value", "words"), DAMAGED_NUMBERS)
def test_a_damaged_number_is_refused_at_start(tiny_onnx_model, key, value, words):
    path = manifest_path(tiny_onnx_model)
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | {key: value}))
    with pytest.raises(ManifestError, match=rf"{key} .* {words}; re-export the model"):
        Manifest.for_model(tiny_onnx_model)
    path.write_text(json.dumps(data | {key: ACCEPTED[key]}))
    assert getattr(Manifest.for_model(tiny_onnx_model), key) == ACCEPTED[key]


def test_cell_sizes_that_do_not_tile_the_input_are_refused_at_start(tiny_onnx_model):
    path = manifest_path(tiny_onnx_model)
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | {"cell_sizes": [4, 3]}))
    with pytest.raises(ManifestError, match=r"not a multiple of the cell sizes' common multiple 12.*re-export the model"):
        Manifest.for_model(tiny_onnx_model)
    path.write_text(json.dumps(data | {"cell_sizes": [8, 16, 8, 16]}))  # repeats are further draws: fine
    assert Manifest.for_model(tiny_onnx_model).mask_spec.num_variants == 12
