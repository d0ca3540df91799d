"""The CUDA kernels (edge/kernels/riad_kernels.cu), built for the host with g++ and
driven by edge/backends/gpu_map.py's own GpuAnomalyMap, against the numpy reference
(edge/method/masks.py, edge/method/anomaly_map.py) on real bottle images.

tests/host_device.py runs each launch's grid of threads on the host, so these check the
kernels' bodies and gpu_map's launches, arguments and buffers, not a copy of them.
Device memory starts as NaN, so a value nothing wrote shows. Tolerances (float32):
- variants, gray pyramids (recombination, channel mean or each channel, pooling):
  bit-exact (same operations, no contraction);
- unsmoothed map (1 - MSGMS averaged over k, and over R, G, B per channel): max abs 1e-6;
- smoothed map and score: max abs 1e-5 (OpenCV sums the Gaussian's taps in its own order),
  with the manifest's reference map subtracted or not;
- excess over the reference, per pixel: bit-exact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.method.anomaly_map import (
    GMS_C,
    GMS_C_FLOOR,
    MapSpec,
    anomaly_map,
    average_pool2,
    channel_mean,
    compared_planes,
    default_sigma,
    excess_over_reference,
    image_score,
    raw_anomaly_map_pair_by_pair,
    smooth,
)
from edge.backends.gpu_map import KERNEL_SIGNATURES, GpuAnomalyMap
from edge.method.masks import MaskSpec, fixed_masks, masked_variants, recombine
from edge.method.preprocess import prepare, read_image
from tests.host_device import HostDevice, build_host_kernels


def host_map(library: Path, shape: tuple[int, int], masks: np.ndarray, spec: MapSpec,
             reference: np.ndarray | None = None, score_top_fraction: float | None = None,
             score_margin: np.ndarray | None = None, score_weight: np.ndarray | None = None) -> GpuAnomalyMap:
    return GpuAnomalyMap(shape, masks, spec, device=HostDevice(library), reference=reference,
                         score_top_fraction=score_top_fraction, score_margin=score_margin, score_weight=score_weight)


def bottle_pair(bottle_dir: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A good bottle and a defective one at `shape`, as (3, H, W) images."""
    good = prepare(read_image(min((bottle_dir / "train" / "good").glob("*.png"))), shape)
    broken = prepare(
        read_image(min((bottle_dir / "test" / "broken_large").glob("*.png"))), shape
    )
    return good, broken


def altered_outputs(
    original: np.ndarray, defect: np.ndarray, variants: int, seed: int
) -> np.ndarray:
    """What a net might answer: a blurred original with a patch of another image, per-variant noise."""
    h, w = original.shape[-2:]
    blurred = cv2.GaussianBlur(original.transpose(1, 2, 0), (5, 5), 1.2).transpose(
        2, 0, 1
    )
    # Another image's centre pasted into the upper left: gradients unlike the original's.
    blurred[:, h // 4 : h // 2, w // 4 : w // 2] = defect[:, h // 2 : 3 * h // 4, w // 2 : 3 * w // 4]
    noise = (
        np.random.default_rng(seed)
        .normal(0, 0.005, (variants, *original.shape))
        .astype(np.float32)
    )
    return np.clip(blurred[None] + noise, 0, 1).astype(np.float32)


@pytest.mark.parametrize(("shape", "per_channel"), [((64, 64), False), ((128, 128), False), ((80, 48), False),
                                                   ((64, 64), True), ((80, 48), True)])
def test_variants_and_gray_pyramids_are_exact(host_kernels, bottle_dir, shape, per_channel):
    original, defect = bottle_pair(bottle_dir, shape)
    spec, map_spec = MaskSpec(), MapSpec(per_channel=per_channel)
    masks = fixed_masks(*shape, spec, seed=3)
    k, n = len(spec.cell_sizes), spec.num_sets
    gpu = host_map(host_kernels, shape, masks, map_spec)

    variants = gpu.download(gpu.variants(original), (k * n, 3, *shape))
    np.testing.assert_array_equal(variants, masked_variants(original, masks))

    outputs = altered_outputs(original, defect, k * n, seed=shape[0] + shape[1])
    gpu.upload(outputs, gpu.outputs_address)
    gpu.score()
    # The original's planes first (its grey mean, or R, G, B), then each cell size k's
    # recombination's, as compared_planes lists them.
    planes = [p for image in [original, *recombine(outputs, masks)] for p in compared_planes(image, map_spec)]
    assert len(planes) == (1 + k) * (3 if per_channel else 1)
    pyramids = gpu.download(gpu.gray_address, (len(planes), gpu.pyramid_size))
    for index, image in enumerate(planes):
        gray, offset = channel_mean(image), 0
        for _ in range(map_spec.levels):
            np.testing.assert_array_equal(pyramids[index, offset : offset + gray.size], gray.ravel())
            offset += gray.size
            gray = average_pool2(gray)
    gpu.close()


@pytest.mark.parametrize(
    "shape, levels, sigma, per_channel",
    [
        ((48, 48), 4, default_sigma(48, 48), False),  # pyramid levels whose size is no multiple of a block
        ((64, 64), 4, default_sigma(64, 64), False),
        ((128, 128), 4, default_sigma(128, 128), False),
        ((128, 128), 2, 0.0, False),
        ((64, 64), 1, 3.0, False),
        ((160, 64), 4, default_sigma(160, 64), False),  # a tall part's input
        ((48, 112), 4, default_sigma(48, 112), False),  # a wide one
        ((64, 64), 4, default_sigma(64, 64), True),  # each colour channel's GMS
        ((160, 64), 4, default_sigma(160, 64), True),
        ((64, 64), 2, 0.0, True),
    ],
)
# The c export measures for a part (gms_constant): the paper's, a smooth part's floor, a textured part's.
@pytest.mark.parametrize("c", [GMS_C, GMS_C_FLOOR, 0.02])
def test_anomaly_map_matches_reference(host_kernels, bottle_dir, shape, levels, sigma, per_channel, c):
    original, defect = bottle_pair(bottle_dir, shape)
    mask_spec, map_spec = MaskSpec(), MapSpec(levels=levels, c=c, sigma=sigma, per_channel=per_channel)
    masks = fixed_masks(*shape, mask_spec, seed=5)
    k, n = len(mask_spec.cell_sizes), mask_spec.num_sets
    outputs = altered_outputs(original, defect, k * n, seed=shape[0] + shape[1] + levels)
    gpu = host_map(host_kernels, shape, masks, map_spec)
    gpu.variants(original)
    gpu.upload(outputs, gpu.outputs_address)
    amap, score = gpu.score()
    raw = gpu.download(gpu.raw_map_address, shape)
    gpu.close()

    reconstructions = recombine(outputs, masks)
    expected_raw = raw_anomaly_map_pair_by_pair(original, reconstructions, map_spec)
    expected_map = anomaly_map(original, reconstructions, map_spec)
    np.testing.assert_allclose(raw, expected_raw, rtol=0, atol=1e-6)
    np.testing.assert_allclose(amap, expected_map, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        amap, smooth(expected_raw.astype(np.float32), sigma), rtol=0, atol=1e-5
    )
    assert score == pytest.approx(image_score(expected_map), abs=1e-5)
    # The altered patch must stand out, or this comparison would prove little.
    h, w = shape
    inside = np.zeros(shape, bool)
    inside[h // 4 : h // 2, w // 4 : w // 2] = True
    assert raw[inside].mean() > 2 * raw[~inside].mean()


@pytest.mark.parametrize(("shape", "per_channel"), [((64, 64), False), ((160, 64), False), ((64, 64), True)])
def test_anomaly_map_above_a_reference_matches_reference(host_kernels, bottle_dir, shape, per_channel):
    """The manifest's reference map subtracted after the Gaussian, as the CPU backend does."""
    original, defect = bottle_pair(bottle_dir, shape)
    mask_spec, map_spec = MaskSpec(), MapSpec(sigma=default_sigma(*shape), per_channel=per_channel)
    masks = fixed_masks(*shape, mask_spec, seed=7)
    k, n = len(mask_spec.cell_sizes), mask_spec.num_sets
    outputs = altered_outputs(original, defect, k * n, seed=shape[0] * 3 + shape[1])
    reconstructions = recombine(outputs, masks)
    plain = anomaly_map(original, reconstructions, map_spec)
    # Positive everywhere, above the map in some places and below it in others, and a
    # band above all of it: every branch of the subtraction is taken.
    rng = np.random.default_rng(shape[0])
    reference = (plain * rng.uniform(0.5, 1.5, shape) + 1e-4).astype(np.float32)
    reference[: shape[0] // 8] = plain.max() + 0.1

    gpu = host_map(host_kernels, shape, masks, map_spec, reference)
    gpu.variants(original)
    gpu.upload(outputs, gpu.outputs_address)
    amap, score = gpu.score()
    gpu.close()

    expected = anomaly_map(original, reconstructions, map_spec, reference)
    np.testing.assert_allclose(amap, expected, rtol=0, atol=1e-5)
    assert score == pytest.approx(image_score(expected), abs=1e-5)
    # The reference must have changed the map and its score, or this would prove little.
    clipped = amap == 0
    assert 0.2 < clipped.mean() < 0.8 and clipped[: shape[0] // 8].all()
    assert score < image_score(plain) - 1e-3


def device_scores(library: Path, bottle_dir: Path, fractions, score_margin=None, score_weight=None) -> tuple[np.ndarray, dict]:
    """A bottle's 64 px map as numpy computes it, and the device's score for each top fraction;
    `score_margin` and `score_weight` make the device's planes from that map."""
    shape = (64, 64)
    original, defect = bottle_pair(bottle_dir, shape)
    map_spec = MapSpec(sigma=default_sigma(*shape))
    masks = fixed_masks(*shape, MaskSpec(), seed=3)
    outputs = altered_outputs(original, defect, masks.shape[0] * masks.shape[1], seed=3)
    expected = anomaly_map(original, recombine(outputs, masks), map_spec)
    margin = None if score_margin is None else score_margin(expected)
    weight = None if score_weight is None else score_weight(expected)
    scores = {}
    for fraction in fractions:
        gpu = host_map(library, shape, masks, map_spec, score_top_fraction=fraction, score_margin=margin, score_weight=weight)
        gpu.variants(original)
        gpu.upload(outputs, gpu.outputs_address)
        amap, scores[fraction] = gpu.score()
        gpu.close()
        np.testing.assert_allclose(amap, expected, rtol=0, atol=1e-5)  # the map shown, whatever the score
    return expected, scores


def test_the_device_maps_score_is_the_manifests(host_kernels, bottle_dir):
    """A manifest's score_top_fraction makes the score the mean of the map's highest pixels,
    as the CPU backend scores it; without one, the device's maximum."""
    expected, scores = device_scores(host_kernels, bottle_dir, (None, 0.01, 0.2))
    for fraction, score in scores.items():
        assert score == pytest.approx(image_score(expected, fraction), abs=1e-5)
    top = np.sort(expected.ravel())[::-1]
    assert scores[None] == pytest.approx(top[0], abs=1e-5)
    assert scores[0.01] == pytest.approx(top[:41].mean(), abs=1e-5)  # 1 % of 4,096 pixels, rounded
    assert scores[None] > scores[0.01] > scores[0.2] + 1e-3


def test_with_a_score_margin_the_device_counts_the_maps_rise_above_it_as_the_cpu_does(host_kernels, bottle_dir):
    """The manifest's score_margin (the good maps' maximum above their mean): the map that
    comes back is the one shown, the score only what rises above the margin, for the
    maximum as for the top pixels' mean (the host's scored_part and image_score)."""
    def ramp(amap: np.ndarray) -> np.ndarray:  # from 0 on the left to twice the map's peak on the right
        return np.tile(np.linspace(0, 2 * float(amap.max()), amap.shape[1], dtype=np.float32), (amap.shape[0], 1))

    expected, scores = device_scores(host_kernels, bottle_dir, (None, 0.01), score_margin=ramp)
    for fraction, score in scores.items():
        assert score == pytest.approx(image_score(np.maximum(expected - ramp(expected), 0), fraction), abs=1e-5)
        assert score < image_score(expected, fraction) - 1e-3  # the margin took something off


def test_with_a_score_weight_the_device_counts_the_weighted_map_as_the_cpu_does(host_kernels, bottle_dir):
    """The manifest's score_weight (less where good maps vary): the map that comes back is
    the one shown, the score that of the map times the weight, for the maximum as for the
    top pixels' mean (the host's scored_part and image_score)."""
    def falling(amap: np.ndarray) -> np.ndarray:  # counts all of the left, a tenth of the right
        return np.tile(np.linspace(1.0, 0.1, amap.shape[1], dtype=np.float32), (amap.shape[0], 1))

    expected, scores = device_scores(host_kernels, bottle_dir, (None, 0.01), score_weight=falling)
    for fraction, score in scores.items():
        assert score == pytest.approx(image_score(expected * falling(expected), fraction), abs=1e-5)
        assert score < image_score(expected, fraction) - 1e-3  # the weight took something off


def test_excess_over_reference_is_numpys_bit_for_bit(host_kernels):
    """subtract_reference per pixel, ties, signed zeros, subnormals and NaN included."""
    rng = np.random.default_rng(11)
    count = 1000  # no multiple of the block size: the last block's guard runs too
    values = rng.uniform(0, 0.3, count).astype(np.float32)
    references = rng.uniform(0, 0.3, count).astype(np.float32)
    tiny = np.float32(1e-40)  # subnormal
    cases = [
        (0.2, 0.2),  # a tie: +0
        (-0.0, 0.0),  # -0 - 0 is -0; numpy's maximum gives +0
        (0.0, -0.0),
        (np.nextafter(np.float32(0.1), np.float32(1)), 0.1),  # one ulp above
        (tiny, 0.0),
        (0.0, tiny),
        (2 * tiny, tiny),
        (-1e-7, 0.0),  # a map's rounding-level negative
        (np.nan, 0.1),  # a value nothing wrote stays NaN
        (0.5, np.inf),
    ]
    for index, (value, reference) in enumerate(cases):
        values[index], references[index] = value, reference
    device = HostDevice(host_kernels)
    map_address, reference_address = device.alloc(4 * count), device.alloc(4 * count)
    device.to_device(map_address, values)
    device.to_device(reference_address, references)
    device.launch("subtract_reference", count, map_address, reference_address, count)
    result = np.empty(count, np.float32)
    device.to_host(result, map_address)
    expected = excess_over_reference(values, references)
    np.testing.assert_array_equal(result.view(np.uint32), expected.view(np.uint32))
    assert (result > 0).any() and (result == 0).any()


def test_a_reference_of_another_size_is_refused(host_kernels):
    masks = fixed_masks(64, 64, MaskSpec(), seed=1)
    with pytest.raises(ValueError, match=r"the reference map is \(32, 32\), the input is 64x64"):
        host_map(host_kernels, (64, 64), masks, MapSpec(), np.zeros((32, 32), np.float32))
    for name in ("margin", "weight"):
        with pytest.raises(ValueError, match=rf"the score's {name} is \(32, 32\), the input is 64x64"):
            host_map(host_kernels, (64, 64), masks, MapSpec(), **{f"score_{name}": np.ones((32, 32), np.float32)})


def test_the_host_launcher_knows_every_kernel_gpu_map_launches(host_kernels):
    """A kernel added to riad_kernels.cu and gpu_map.py but not to kernel_host_launch.cpp
    would fail only where it is launched; a grid of no blocks runs nothing."""
    device = HostDevice(host_kernels)
    for name in KERNEL_SIGNATURES:
        assert device.lib.host_launch(name.encode(), 0, 256, None) == 0, name


@pytest.mark.parametrize("count", [1, 255, 256, 257, 128 * 128 + 3])
def test_max_value_finds_the_maximum_wherever_it_is(host_kernels, count):
    """The score kernel's block reduction, with counts around its block size."""
    device = HostDevice(host_kernels)
    values_address, result_address = device.alloc(4 * count), device.alloc(4)
    result = np.empty(1, np.float32)
    values = np.random.default_rng(count).uniform(-3, -1, count).astype(np.float32)
    for position in sorted({0, count // 2, count - 1}):
        peaked = values.copy()
        peaked[position] = -0.5
        device.to_device(values_address, peaked)
        device.launch("max_value", 1, values_address, count, result_address)
        device.to_host(result, result_address)
        assert result[0] == -0.5, f"count {count}, maximum at {position}"


# Runs in a process with the sanitizer runtimes preloaded: sizes whose pyramid levels
# leave the last block of threads part-empty, so every kernel's bounds guard is needed.
SANITIZED_RUN = """
import sys
from pathlib import Path
import numpy as np
from edge.method.anomaly_map import MapSpec, default_sigma
from edge.backends.gpu_map import GpuAnomalyMap
from edge.method.masks import MaskSpec, fixed_masks
from tests.host_device import HostDevice, build_host_kernels
library = Path(sys.argv[1])
for shape in ((48, 48), (80, 80), (48, 80)):
    masks = fixed_masks(*shape, MaskSpec(), seed=shape[1])
    rng = np.random.default_rng(shape[1])
    reference = rng.uniform(0, 0.05, shape).astype(np.float32) if shape[0] != shape[1] else None
    per_channel = shape[0] < shape[1]  # one shape with each colour channel's pyramids
    gpu = GpuAnomalyMap(shape, masks, MapSpec(sigma=default_sigma(*shape), per_channel=per_channel),
                        device=HostDevice(library), reference=reference)
    gpu.variants(rng.random((3, *shape), dtype=np.float32))
    gpu.upload(rng.random((12, 3, *shape), dtype=np.float32), gpu.outputs_address)
    amap, score = gpu.score()
    assert np.isfinite(amap).all() and score == amap.max()
print("clean")
"""


def sanitizer_runtimes() -> list[str]:
    gcc = shutil.which("gcc")
    if gcc is None:
        return []
    found = [subprocess.run([gcc, f"-print-file-name={name}"], capture_output=True, text=True, check=False)
             .stdout.strip() for name in ("libasan.so", "libubsan.so")]  # fmt: skip
    return found if all(Path(f).is_absolute() and Path(f).exists() for f in found) else []


def test_kernels_stay_in_bounds_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    runtimes = sanitizer_runtimes()
    if not runtimes:
        pytest.skip("gcc's ASan/UBSan runtimes are not installed")
    library = build_host_kernels(tmp_path, sanitized=True)
    env = {
        **os.environ,
        "LD_PRELOAD": " ".join(runtimes),
        "ASAN_OPTIONS": "detect_leaks=0",  # Python itself keeps its allocations to the end
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    run = subprocess.run([sys.executable, "-c", SANITIZED_RUN, str(library)], env=env,
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "clean", run.stderr[-3000:]
