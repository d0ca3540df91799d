"""RIAD inpainting masks: the one place that decides which pixels each variant hides.

An image is cut into a grid of k x k pixel cells, for every k in K; the cells are
split at random into n disjoint sets, and variant i zeroes the cells of set i. The
net inpaints every variant, and `recombine` takes each cell back from the variant
that had it hidden. Trainer and edge both import this module, so training and
inference can never disagree about the masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_CELL_SIZES: tuple[int, ...] = (2, 4, 8, 16)
DEFAULT_NUM_SETS = 3


@dataclass(frozen=True)
class MaskSpec:
    """Which grids and how many disjoint sets per grid."""

    cell_sizes: tuple[int, ...] = DEFAULT_CELL_SIZES
    num_sets: int = DEFAULT_NUM_SETS

    @property
    def num_variants(self) -> int:
        return len(self.cell_sizes) * self.num_sets


def check_input_size(height: int, width: int, spec: MaskSpec) -> None:
    """Every grid must tile the image exactly, or some pixels would never be hidden."""
    common = math.lcm(*spec.cell_sizes)  # the largest, for the method's powers of two
    if height % common or width % common:
        raise ValueError(
            f"input size {height}x{width} is not a multiple of the cell sizes' common multiple "
            f"{common}; choose a size divisible by {common} (e.g. 128 or 256)"
        )


def cell_masks(height: int, width: int, cell: int, num_sets: int, rng: np.random.Generator) -> np.ndarray:
    """(num_sets, H, W) float32 masks, 1 where the variant hides the pixel.

    The sets are disjoint and together cover every cell exactly once.
    """
    rows, cols = height // cell, width // cell
    order = rng.permutation(rows * cols)
    set_of_cell = np.empty(rows * cols, dtype=np.int64)
    for index, cells in enumerate(np.array_split(order, num_sets)):
        set_of_cell[cells] = index
    grid = set_of_cell.reshape(rows, cols)
    # Blow each cell up to k x k pixels.
    pixel_set = np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)
    return (pixel_set[None] == np.arange(num_sets)[:, None, None]).astype(np.float32)


def make_masks(height: int, width: int, spec: MaskSpec, rng: np.random.Generator) -> np.ndarray:
    """(len(K), n, H, W) masks for every cell size in the spec, in spec order."""
    check_input_size(height, width, spec)
    return np.stack([cell_masks(height, width, k, spec.num_sets, rng) for k in spec.cell_sizes])


def fixed_masks(height: int, width: int, spec: MaskSpec, seed: int) -> np.ndarray:
    """The inference masks: the same for every frame, reproducible from the manifest's seed."""
    return make_masks(height, width, spec, np.random.default_rng(seed))


def masked_variants(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(len(K)*n, C, H, W) network input: the image with each set's cells zeroed.

    `image` is (C, H, W); the variants are ordered cell size first, then set.
    """
    keep = 1.0 - masks.reshape(-1, 1, *masks.shape[-2:])
    return (image[None] * keep).astype(np.float32)


def recombine(outputs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(len(K), C, H, W): one reconstruction per cell size from the net's outputs.

    `outputs` is (len(K)*n, C, H, W) in the order `masked_variants` made them; each
    pixel is taken from the variant in which it was hidden.
    """
    num_sizes, num_sets = masks.shape[:2]
    outputs = outputs.reshape(num_sizes, num_sets, *outputs.shape[1:])
    return (outputs * masks[:, :, None]).sum(axis=1).astype(np.float32)
