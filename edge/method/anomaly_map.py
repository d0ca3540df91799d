"""RIAD anomaly map: 1 - multi-scale gradient magnitude similarity, averaged over k.

This numpy module is the reference arithmetic. The trainer's torch loss, the CUDA
kernels (edge/kernels) and the CPU pipeline are all tested against it, so each step
is written out plainly rather than left to a library whose border rules may differ.

Conventions (those of the RIAD reference code):
- images are float32 (C, H, W) in [0, 1]; gradients are taken on the channel mean, or
  (MapSpec.per_channel) on each colour channel, their GMS maps averaged (see there);
- Prewitt 3x3 kernels divided by 3, zero padding outside the image;
- GMS = (2 g1 g2 + c) / (g1^2 + g2^2 + c): the training loss uses GMSD's c = 0.0026
  (170 / 255^2); the map uses the part's own c from the manifest (gms_constant);
- 4 pyramid levels, each a 2x2 average of the one above, upsampled back bilinearly
  with half-pixel centres (torch's align_corners=False) and averaged;
- the map is smoothed with a separable Gaussian, border reflected (OpenCV's REFLECT_101).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

GMS_C = 0.0026
PYRAMID_LEVELS = 4
# The reference smooths with sigma 4 at 256 x 256 (MapSpec's default). Twice that raised
# image and pixel AUROC on both shared sets (bench/map_variants, docs/benchmarks.md), so
# export writes 8, kept relative to the input's scale, into every new model's manifest.
SIGMA_AT_256 = 4.0
EXPORT_SIGMA_AT_256 = 8.0

# c is the map's contrast floor: 1 - GMS = (g1 - g2)^2 / (g1^2 + g2^2 + c), so a gradient
# change well under sqrt(c) counts little. GMSD fixed c for photographs of natural scenes;
# a part's good surface decides what is noise instead. A textured surface (KolektorSDD's
# ground metal) has gradients everywhere that the net cannot reproduce grain by grain, and
# GMSD's floor lit them up like cracks; a smooth one (a bottle) hid faint defects under it.
# So export measures c on the part's good images: SURFACE_GRADIENT_MULTIPLE times their
# median gradient magnitude, squared (bench/gms_constant, docs/benchmarks.md). It also makes
# the map the same for a camera with more or less contrast: gradients and sqrt(c) scale alike.
SURFACE_GRADIENT_MULTIPLE = 2.0
GMS_C_FLOOR = (1.0 / 255.0) ** 2  # under one grey level a gradient is the camera's quantisation, not the part


def default_sigma(height: int, width: int) -> float:
    """The smoothing width export records for an input of this size (its pixel count)."""
    return EXPORT_SIGMA_AT_256 * math.sqrt(height * width) / 256.0


@dataclass(frozen=True)
class MapSpec:
    levels: int = PYRAMID_LEVELS
    c: float = GMS_C
    sigma: float = SIGMA_AT_256
    # False: the paper's GMS of the grey image (the channel mean), where a colour defect of
    # the part's own brightness (a red patch on a green part) cancels out and scores nothing.
    # True: the GMS of R, G and B each, the maps averaged, so a change in any channel counts.
    # Measured neutral on both shared sets (docs/benchmarks.md); export sets it for colour
    # training images (trainer/export.py), the manifest records it ("map_channels").
    per_channel: bool = False


def channel_mean(image: np.ndarray) -> np.ndarray:
    return image.mean(axis=0, dtype=np.float32)


def prewitt_magnitude(gray: np.ndarray) -> np.ndarray:
    """Gradient magnitude with Prewitt kernels / 3, zero padded (as conv2d padding=1)."""
    p = np.pad(gray, 1)
    h, w = gray.shape
    # Column sums over the 3 rows, and row sums over the 3 columns.
    cols = p[0:h] + p[1 : h + 1] + p[2 : h + 2]  # (h, w + 2)
    rows = p[:, 0:w] + p[:, 1 : w + 1] + p[:, 2 : w + 2]  # (h + 2, w)
    gx = (cols[:, 0:w] - cols[:, 2 : w + 2]) / 3.0
    gy = (rows[0:h] - rows[2 : h + 2]) / 3.0
    return np.sqrt(gx * gx + gy * gy).astype(np.float32)


def gms_of_magnitudes(ga: np.ndarray, gb: np.ndarray, c: float = GMS_C) -> np.ndarray:
    return ((2.0 * ga * gb + c) / (ga * ga + gb * gb + c)).astype(np.float32, copy=False)


def gms(gray_a: np.ndarray, gray_b: np.ndarray, c: float = GMS_C) -> np.ndarray:
    return gms_of_magnitudes(prewitt_magnitude(gray_a), prewitt_magnitude(gray_b), c)


def average_pool2(gray: np.ndarray) -> np.ndarray:
    """2 x 2 means, each row's pair added first, then the two rows (as the CUDA kernel does;
    written out with strided views, which is also ten times faster than a reshaped mean)."""
    h, w = gray.shape[0] // 2, gray.shape[1] // 2
    g = gray[: 2 * h, : 2 * w]
    return (((g[0::2, 0::2] + g[0::2, 1::2]) + (g[1::2, 0::2] + g[1::2, 1::2])) / np.float32(4)).astype(np.float32)


def _linear_taps(out_len: int, in_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights for half-pixel linear resampling along one axis."""
    scale = in_len / out_len
    src = np.maximum((np.arange(out_len, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
    i1 = np.minimum(i0 + 1, in_len - 1)
    return i0, i1, (src - i0).astype(np.float32)


def upsample_bilinear(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres, identical to torch align_corners=False."""
    r0, r1, wr = _linear_taps(height, gray.shape[0])
    c0, c1, wc = _linear_taps(width, gray.shape[1])
    rows = gray[r0] * (1 - wr)[:, None] + gray[r1] * wr[:, None]
    return (rows[:, c0] * (1 - wc) + rows[:, c1] * wc).astype(np.float32)


def msgms_map(original: np.ndarray, reconstruction: np.ndarray, spec: MapSpec = MapSpec()) -> np.ndarray:
    """(H, W) multi-scale GMS between two (C, H, W) images; 1 means identical gradients."""
    a, b = channel_mean(original), channel_mean(reconstruction)
    height, width = a.shape
    total = np.zeros((height, width), np.float32)
    for level in range(spec.levels):
        if level:
            a, b = average_pool2(a), average_pool2(b)
        total += upsample_bilinear(gms(a, b, spec.c), height, width)
    return total / spec.levels


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian, truncated at 3 sigma (as the CUDA kernel builds it)."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return (k / k.sum()).astype(np.float32)


def smooth(amap: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return amap
    k = gaussian_kernel(sigma)
    return cv2.sepFilter2D(amap, cv2.CV_32F, k, k, borderType=cv2.BORDER_REFLECT_101)


def map_channels_for(images: np.ndarray) -> str:
    """The manifest's map_channels for a part seen in these (N, 3, H, W) images: "rgb" when
    any has colour, so a defect that differs from the part only in hue still shows;
    "grey" when every pixel's channels are equal (a grey camera, grey files), where the
    per-channel map would measure the same thing at three times the work."""
    colour = any(not (np.array_equal(image[0], image[1]) and np.array_equal(image[1], image[2])) for image in images)
    return "rgb" if colour else "grey"


def compared_planes(image: np.ndarray, spec: MapSpec) -> list[np.ndarray]:
    """What the map compares, as (C, H, W) images that msgms_map greys: the whole image
    (its channel mean), or with spec.per_channel each channel alone, in RGB order."""
    return [image[c : c + 1] for c in range(image.shape[0])] if spec.per_channel else [image]


def typical_gradient(images: np.ndarray, spec: MapSpec) -> float:
    """The median gradient magnitude, over every pixel, of the planes the map compares
    (spec.per_channel) in `images` (N, C, H, W) in [0, 1]."""
    magnitudes = [prewitt_magnitude(channel_mean(plane)) for image in images for plane in compared_planes(image, spec)]
    if not magnitudes:
        raise ValueError("the GMS constant is measured on good images, and none were given")
    return float(np.median(np.concatenate([m.ravel() for m in magnitudes])))


def gms_constant(images: np.ndarray, spec: MapSpec) -> float:
    """The map's c for a part seen in the good `images` (export's choice)."""
    return gms_constant_for(typical_gradient(images, spec))


def usable_gms_constant(c) -> bool:
    """Whether the map can divide by c: a real number above 0 (at 0 a flat pixel is 0 / 0).
    The one check for export's --map-c and for a manifest's map_c."""
    return isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c > 0


def gms_constant_for(typical: float, multiple: float = SURFACE_GRADIENT_MULTIPLE) -> float:
    """c for a part whose typical gradient is `typical`: `multiple` times it, squared; never
    under GMS_C_FLOOR."""
    return max((multiple * typical) ** 2, GMS_C_FLOOR)


def raw_anomaly_map_pair_by_pair(original: np.ndarray, reconstructions: np.ndarray,
                                 spec: MapSpec = MapSpec()) -> np.ndarray:
    """The unsmoothed map as the method defines it: the mean of 1 - msgms_map over every
    (k, plane) pair, k-major. raw_anomaly_map computes the same with shared work; the tests
    hold it and the CUDA kernels to this."""
    pairs = [1.0 - msgms_map(a, b, spec)
             for recon in reconstructions for a, b in zip(compared_planes(original, spec), compared_planes(recon, spec))]
    return np.mean(pairs, axis=0).astype(np.float32)


def raw_anomaly_map(original: np.ndarray, reconstructions: np.ndarray, spec: MapSpec = MapSpec()) -> np.ndarray:
    """(H, W) 1 - MSGMS averaged over the per-k reconstructions (len(K), C, H, W), and with
    spec.per_channel over the channels too, before smoothing.

    It is raw_anomaly_map_pair_by_pair, computed level by level:
    the original's pyramid and gradients once for all k, and the pairs' GMS averaged before
    the one upsampling per level (upsampling is linear). The CUDA kernels upsample each
    pair's GMS, as msgms_map does; the two agree to float32 rounding (tests/test_kernels_host.py).
    """
    originals = [channel_mean(plane) for plane in compared_planes(original, spec)]
    recons = [channel_mean(plane) for recon in reconstructions for plane in compared_planes(recon, spec)]
    height, width = originals[0].shape
    total = np.zeros((height, width), np.float32)
    for level in range(spec.levels):
        if level:
            originals = [average_pool2(a) for a in originals]
            recons = [average_pool2(b) for b in recons]
        magnitudes = [prewitt_magnitude(a) for a in originals]
        gms_sum = np.zeros(originals[0].shape, np.float32)
        for pair, b in enumerate(recons):  # k-major: k0's planes, then k1's
            gms_sum += gms_of_magnitudes(magnitudes[pair % len(magnitudes)], prewitt_magnitude(b), spec.c)
        mean_gms = gms_sum / np.float32(len(recons))
        total += mean_gms if level == 0 else upsample_bilinear(mean_gms, height, width)
    return (1.0 - total / np.float32(spec.levels)).astype(np.float32)


def excess_over_reference(amap: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """How far the map rises above a defect-free part's, never below 0.

    `reference` is the mean (or with export's --reference-statistic max, the per-pixel
    maximum) of defect-free training images' smoothed maps, measured at export
    (trainer/export.py): edges, highlights and textures that the net
    always inpaints imperfectly score high on every part, good or bad, and would hide a real
    defect's peak among them. Subtracting what good parts score there leaves what is new.
    None: the map as the paper defines it (manifests from before the reference).
    """
    if reference is None:
        return amap
    return np.maximum(amap - reference, np.float32(0)).astype(np.float32)


def anomaly_map(original: np.ndarray, reconstructions: np.ndarray, spec: MapSpec = MapSpec(),
                reference: np.ndarray | None = None) -> np.ndarray:
    """(H, W) anomaly map of one image from its per-k reconstructions (len(K), C, H, W)."""
    return excess_over_reference(smooth(raw_anomaly_map(original, reconstructions, spec), spec.sigma), reference)


# The image score of new models: the mean of the map's highest 1 % of pixels (about one
# smoothed peak's area at the ~160 x 160 px inputs), where the paper takes the single
# highest pixel. One pixel's maximum is the noisiest summary of a map: on both shared
# sets the mean of the top 1 % ranks parts better over every mask draw, and on KolektorSDD
# it lifts recall at <= 5 % false alarms from 30-46 % to 51-54 % (docs/benchmarks.md).
SCORE_TOP_FRACTION = 0.01


def usable_top_fraction(value) -> bool:
    """A manifest's score_top_fraction: None (the maximum) or a number in (0, 1]."""
    if value is None:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


# What the image score counts of the map shown (the rise above the good maps' mean):
# "mean", all of it; "max", its rise above the highest good map at each pixel; "spread",
# all of it, weighted down where good parts' maps vary (score_weight). Export's
# --score-reference; Manifest.score_reference reads it back. "max" ranks parts better than
# "mean", but its threshold from held-out images sits so close to them that bottle's test
# photographs cross it (docs/benchmarks.md).
SCORE_REFERENCES = ("mean", "max", "spread")
DEFAULT_SCORE_REFERENCE = "spread"


def describe_score(top_fraction: float | None, score_reference: str = "mean") -> str:
    """What a manifest's image score computes, in words (export's summary, evaluate's report)."""
    counted = {
        "mean": "the anomaly map",
        "max": "the anomaly map's rise above the good training maps' per-pixel maximum",
        "spread": "the anomaly map weighted by how little good training maps vary at each pixel",
    }[score_reference]
    if top_fraction is None:
        return "the anomaly map's maximum (the paper's)" if score_reference == "mean" else f"the maximum of {counted}"
    if score_reference == "mean":
        return f"the mean of the anomaly map's highest {100 * top_fraction:g} % of pixels"
    return f"the mean of the highest {100 * top_fraction:g} % of pixels of {counted}"


def score_margin(reference: np.ndarray | None, score_reference: np.ndarray | None) -> np.ndarray | None:
    """(H, W) float32: how far above the shown map's reference (the good maps' mean) a map
    must rise at each pixel before the image score counts it, up to `score_reference` (the
    good maps' per-pixel maximum); None where the score counts the shown map itself.

    A frame's shown map is its rise above the average good part: it marks a defect's whole
    extent. Its score counts only the rise above every good part measured, so a highlight
    or edge that some good parts also have at that pixel does not score (docs/benchmarks.md).
    """
    if score_reference is None:
        return None
    return np.maximum(score_reference - (0 if reference is None else reference), 0).astype(np.float32)


def score_weight(good_maps_spread: np.ndarray) -> np.ndarray:
    """(H, W) float32 in (0, 1]: how much of the map shown the image score counts at each
    pixel, from the per-pixel standard deviation of good parts' maps (measured at export).

    Where good parts' maps vary a lot (edges, highlights, a texture the net paints back
    unevenly) a good part's map rises there by chance, and a defect's rise must be larger
    to mean as much; where they hardly vary, a small rise is already news. The weight is
    typical / (spread + typical), typical being the mean spread over the map: a pixel that
    varies as much as a typical one counts half, a still one counts whole, and the floor
    keeps a pixel that never varied from turning the camera's noise into a score. The map
    divided by spread + typical is the map's rise in units of that spread (a z-score with a
    floor); times the typical spread it stays in the map's units, so the threshold and the
    heatmap's colours keep theirs. On a part of even texture it scales every score alike.
    """
    typical = float(good_maps_spread.mean())
    if not typical > 0:  # good maps identical everywhere: nothing to weigh by
        return np.ones(good_maps_spread.shape, np.float32)
    return (typical / (good_maps_spread + typical)).astype(np.float32)


def scored_part(amap: np.ndarray, margin: np.ndarray | None, weight: np.ndarray | None = None) -> np.ndarray:
    """The part of a shown map (minus the mean reference, clipped at 0) that the image score
    counts: its rise above the margin (exactly the raw map minus the score's reference,
    clipped at 0), times the weight (score_weight). The map itself where there is neither.
    Never more than the map, so warm colours and boxes can be read off the two together."""
    counted = amap if margin is None else np.maximum(amap - margin, 0)
    return counted if weight is None else counted * weight


def image_score(amap: np.ndarray, top_fraction: float | None = None, pixels: int | None = None) -> float:
    """The image's score: the mean of the map's highest `top_fraction` of `pixels` values,
    or its maximum when top_fraction is None (the paper's score; manifests before it).

    `pixels` is the area the fraction is of, the map's size unless given: a map placed in a
    larger frame (edge.method.roi.Roi.to_frame) scores the same as the map alone.
    """
    if top_fraction is None:
        return float(amap.max())
    flat = amap.ravel()
    count = min(max(1, round(top_fraction * (flat.size if pixels is None else pixels))), flat.size)
    return float(np.partition(flat, flat.size - count)[flat.size - count :].mean(dtype=np.float64))
