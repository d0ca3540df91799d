"""The device arithmetic (edge/kernels/riad_math.cuh), built for the host with g++,
against the numpy reference (edge/masks.py, edge/anomaly_map.py) on real bottle images.

tests/kernel_host_harness.cpp calls the same per-element functions as the CUDA kernels,
in the kernels' stage order. Tolerances (float32):
- variants, recombination: bit-exact (same operations, no contraction);
- unsmoothed map (1 - MSGMS averaged over k): max abs 1e-6;
- smoothed map and score: max abs 1e-5 (OpenCV sums the Gaussian's taps in its own order).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.anomaly_map import (
    MapSpec,
    anomaly_map,
    default_sigma,
    image_score,
    msgms_map,
    smooth,
)
from edge.gpu_map import KERNELS_DIR, pixel_sets, smoothing_taps
from edge.masks import MaskSpec, fixed_masks, masked_variants, recombine
from edge.preprocess import prepare, read_image

HARNESS = Path(__file__).with_name("kernel_host_harness.cpp")

F32P = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
U8P = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")
I = ctypes.c_int


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> ctypes.CDLL:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed")
    library = tmp_path_factory.mktemp("harness") / "libriad_host.so"
    subprocess.run(
        [gxx, "-O2", "-shared", "-fPIC", "-std=c++14", "-Wall", "-Werror", "-ffp-contract=off",
         f"-I{KERNELS_DIR}", str(HARNESS), "-o", str(library)],
        check=True,
    )  # fmt: skip
    lib = ctypes.CDLL(str(library))
    lib.host_expand_variants.argtypes = [F32P, U8P, I, I, I, I, F32P]
    lib.host_recombine.argtypes = [F32P, U8P, I, I, I, I, F32P]
    lib.host_anomaly_map.argtypes = [F32P, F32P, U8P, I, I, I, I, I, ctypes.c_float, F32P, I,
                                     F32P, F32P, F32P]  # fmt: skip
    return lib


def bottle_pair(bottle_dir: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A good bottle and a defective one at `size`, as (3, S, S) images."""
    good = prepare(read_image(min((bottle_dir / "train" / "good").glob("*.png"))), size)
    broken = prepare(
        read_image(min((bottle_dir / "test" / "broken_large").glob("*.png"))), size
    )
    return good, broken


def altered_outputs(
    original: np.ndarray, defect: np.ndarray, variants: int, seed: int
) -> np.ndarray:
    """What a net might answer: a blurred original with a patch of another image, per-variant noise."""
    size = original.shape[-1]
    blurred = cv2.GaussianBlur(original.transpose(1, 2, 0), (5, 5), 1.2).transpose(
        2, 0, 1
    )
    quarter = size // 4
    # Another image's centre pasted into the upper left: gradients unlike the original's.
    blurred[:, quarter : 2 * quarter, quarter : 2 * quarter] = defect[
        :, 2 * quarter : 3 * quarter, 2 * quarter : 3 * quarter
    ]
    noise = (
        np.random.default_rng(seed)
        .normal(0, 0.005, (variants, *original.shape))
        .astype(np.float32)
    )
    return np.clip(blurred[None] + noise, 0, 1).astype(np.float32)


@pytest.mark.parametrize("size", [64, 128])
def test_variants_and_recombination_are_exact(harness, bottle_dir, size):
    original, defect = bottle_pair(bottle_dir, size)
    spec = MaskSpec()
    masks = fixed_masks(size, size, spec, seed=3)
    sets = pixel_sets(masks)
    k, n = len(spec.cell_sizes), spec.num_sets

    variants = np.empty((k * n, 3, size, size), np.float32)
    harness.host_expand_variants(original, sets, k, n, size, size, variants)
    np.testing.assert_array_equal(variants, masked_variants(original, masks))

    outputs = altered_outputs(original, defect, k * n, seed=size)
    reconstructions = np.empty((k, 3, size, size), np.float32)
    harness.host_recombine(outputs, sets, k, n, size, size, reconstructions)
    np.testing.assert_array_equal(reconstructions, recombine(outputs, masks))


@pytest.mark.parametrize(
    "size, levels, sigma",
    [
        (64, 4, default_sigma(64)),
        (128, 4, default_sigma(128)),
        (128, 2, 0.0),
        (64, 1, 3.0),
    ],
)
def test_anomaly_map_matches_reference(harness, bottle_dir, size, levels, sigma):
    original, defect = bottle_pair(bottle_dir, size)
    mask_spec, map_spec = MaskSpec(), MapSpec(levels=levels, sigma=sigma)
    masks = fixed_masks(size, size, mask_spec, seed=5)
    k, n = len(mask_spec.cell_sizes), mask_spec.num_sets
    outputs = altered_outputs(original, defect, k * n, seed=size + levels)
    taps = smoothing_taps(sigma)

    raw = np.empty((size, size), np.float32)
    amap = np.empty((size, size), np.float32)
    score = np.empty(1, np.float32)
    harness.host_anomaly_map(
        original, outputs, pixel_sets(masks), k, n, size, size, levels,
        map_spec.c, taps, len(taps) // 2, raw, amap, score,
    )  # fmt: skip

    reconstructions = recombine(outputs, masks)
    expected_raw = np.mean(
        [1.0 - msgms_map(original, r, map_spec) for r in reconstructions], axis=0
    )
    expected_map = anomaly_map(original, reconstructions, map_spec)
    np.testing.assert_allclose(raw, expected_raw, rtol=0, atol=1e-6)
    np.testing.assert_allclose(amap, expected_map, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        amap, smooth(expected_raw.astype(np.float32), sigma), rtol=0, atol=1e-5
    )
    assert score[0] == pytest.approx(image_score(expected_map), abs=1e-5)
    # The altered patch must stand out, or this comparison would prove little.
    inside = np.zeros((size, size), bool)
    inside[size // 4 : size // 2, size // 4 : size // 2] = True
    assert raw[inside].mean() > 2 * raw[~inside].mean()
