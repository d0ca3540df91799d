"""edge.method.masks: the inpainting masks every model is trained and run with."""

from __future__ import annotations

import numpy as np
import pytest

from edge.method.masks import (
    MaskSpec,
    check_input_size,
    fixed_masks,
    make_masks,
    masked_variants,
    recombine,
)

SPEC = MaskSpec()
SIZE = 64


@pytest.fixture(scope="module")
def masks():
    return fixed_masks(SIZE, SIZE, SPEC, seed=7)


def test_shape_and_values(masks):
    assert masks.shape == (4, 3, SIZE, SIZE)
    assert set(np.unique(masks)) == {0.0, 1.0}


def test_sets_are_disjoint_and_cover_every_pixel_once(masks):
    np.testing.assert_array_equal(masks.sum(axis=1), np.ones((4, SIZE, SIZE)))


@pytest.mark.parametrize("index", range(4))
def test_cells_are_aligned_to_the_k_grid(masks, index):
    k = SPEC.cell_sizes[index]
    cells = masks[index].reshape(3, SIZE // k, k, SIZE // k, k)
    # Every k x k cell is wholly hidden or wholly shown in every variant.
    assert (cells.min(axis=(2, 4)) == cells.max(axis=(2, 4))).all()


def test_set_sizes_are_balanced(masks):
    for index, k in enumerate(SPEC.cell_sizes):
        cells_per_set = masks[index].sum(axis=(1, 2)) / (k * k)
        assert cells_per_set.sum() == (SIZE // k) ** 2
        assert cells_per_set.max() - cells_per_set.min() <= 1


def test_reproducible_from_the_seed(masks):
    np.testing.assert_array_equal(fixed_masks(SIZE, SIZE, SPEC, seed=7), masks)
    assert not np.array_equal(fixed_masks(SIZE, SIZE, SPEC, seed=8), masks)


def test_random_masks_differ_between_draws():
    rng = np.random.default_rng(0)
    first, second = make_masks(32, 32, SPEC, rng), make_masks(32, 32, SPEC, rng)
    assert not np.array_equal(first, second)


def test_variants_hide_exactly_their_set(masks):
    image = np.random.default_rng(1).uniform(0.1, 1.0, (3, SIZE, SIZE)).astype(np.float32)
    variants = masked_variants(image, masks).reshape(4, 3, 3, SIZE, SIZE)
    hidden = masks[:, :, None].astype(bool).repeat(3, axis=2)
    assert (variants[hidden] == 0).all()
    np.testing.assert_array_equal(variants[~hidden], np.broadcast_to(image, variants.shape)[~hidden])


def test_recombination_takes_each_pixel_from_the_variant_that_hid_it(masks):
    # Variant v outputs the constant v, so the recombined image names its source per pixel.
    outputs = np.broadcast_to(np.arange(12, dtype=np.float32)[:, None, None, None], (12, 3, SIZE, SIZE))
    recombined = recombine(outputs, masks)
    assert recombined.shape == (4, 3, SIZE, SIZE)
    hiding_set = masks.argmax(axis=1)  # (4, H, W): the set that hid each pixel
    expected = np.arange(4)[:, None, None] * 3 + hiding_set
    for channel in range(3):
        np.testing.assert_array_equal(recombined[:, channel], expected)


def test_size_must_tile_the_largest_cell():
    with pytest.raises(ValueError, match="40x40 is not a multiple of the cell sizes' common multiple 16"):
        check_input_size(40, 40, SPEC)
