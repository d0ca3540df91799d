"""Detection metrics on cases small enough to check by hand."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from trainer.metrics import (
    image_auroc,
    percent_mean_and_range,
    pixel_auroc,
    pro_score,
    roc_curve,
    threshold_counts,
    thresholds_for_false_alarm_rates,
)


def test_image_auroc_hand_cases():
    assert image_auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert image_auroc([0.8, 0.9, 0.1, 0.2], [0, 0, 1, 1]) == 0.0
    assert image_auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # Of the four (defective, good) pairs only 0.35 < 0.4 is ordered wrongly.
    assert image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # Pairs: 0.5~0.5 half, 0.5>0.2, 0.9>0.5, 0.9>0.2 -> 3.5 of 4.
    assert image_auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == 0.875


def test_auroc_needs_both_classes_and_finite_scores():
    with pytest.raises(ValueError, match="no defective"):
        image_auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="no defect-free"):
        image_auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0.1, float("nan")], [0, 1])


def test_pixel_auroc_over_all_images():
    masks = [np.array([[0, 1], [0, 0]]), np.array([[0, 0], [1, 0]])]
    perfect = [m * 0.9 + 0.05 for m in masks]
    assert pixel_auroc(perfect, masks) == 1.0
    assert pixel_auroc([1 - m for m in perfect], masks) == 0.0
    assert pixel_auroc([np.zeros((2, 2))] * 2, masks) == 0.5
    # Second image's defect (0.3) is beaten by one good pixel (0.4) of the first: 11 of 12 pairs.
    maps = [np.array([[0.1, 0.9], [0.4, 0.2]]), np.array([[0.0, 0.1], [0.3, 0.2]])]
    assert pixel_auroc(maps, masks) == pytest.approx(11 / 12)
    with pytest.raises(ValueError, match="no defective"):
        pixel_auroc(maps, [np.zeros((2, 2))] * 2)
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc([np.zeros((2, 3))], [np.zeros((2, 2))])


def two_regions() -> np.ndarray:
    mask = np.zeros((32, 32), np.uint8)
    mask[2:12, 2:12] = 1  # a large defect, 100 px
    mask[25:27, 25:27] = 1  # a small one, 4 px
    return mask


def test_pro_of_a_perfect_map_is_one():
    mask = two_regions()
    amap = np.where(mask > 0, 0.7, 0.1)
    amap[2, 2] = 0.9  # regions need not be uniform, only above every good pixel
    assert pro_score([amap], [mask]) == pytest.approx(1.0)
    assert pro_score([amap], [mask], max_fpr=1.0) == pytest.approx(1.0)


def test_pro_weighs_regions_equally_whatever_their_size():
    mask = two_regions()
    amap = np.full(mask.shape, 0.5)  # good pixels in between
    amap[2:12, 2:12] = 1.0  # the large defect found
    amap[25:27, 25:27] = 0.0  # the small one below every good pixel
    # PRO = 0.5 from FPR 0 to 1; pixel AUROC would call this 100 of 104 defect pixels found.
    assert pro_score([amap], [mask]) == pytest.approx(0.5)


def test_pro_interpolates_the_curve_at_max_fpr():
    mask = two_regions()
    amap = np.zeros(mask.shape)
    amap[2:12, 2:12] = 1.0
    # Curve (0, 0) -> (0, 0.5) -> (1, 1): PRO at FPR 0.3 is 0.65, area 0.3 * (0.5 + 0.65) / 2.
    assert pro_score([amap], [mask]) == pytest.approx(0.575)


def test_pro_regions_are_8_connected():
    mask = np.zeros((8, 8), np.uint8)
    mask[1, 1] = mask[2, 2] = 1  # diagonal neighbours: one region
    mask[6, 6] = 1
    amap = np.full(mask.shape, 0.5)
    amap[1, 1] = amap[6, 6] = 1.0
    amap[2, 2] = 0.0
    # Regions {(1,1),(2,2)} half found and {(6,6)} found: 0.75 (4-connected would give 2/3).
    assert pro_score([amap], [mask]) == pytest.approx(0.75)


def test_pro_of_a_random_or_constant_map_is_half_max_fpr():
    # A map that ignores the defects finds every region as often as good pixels: PRO = FPR.
    rng = np.random.default_rng(0)
    masks = [np.zeros((64, 64), np.uint8) for _ in range(8)]
    for i, mask in enumerate(masks):
        mask[4 * i : 4 * i + 20, 10:30] = 1
    maps = [rng.random(mask.shape) for mask in masks]
    assert pro_score(maps, masks) == pytest.approx(0.15, abs=0.01)
    assert pro_score([np.zeros((64, 64))] * 8, masks) == pytest.approx(0.15)


def test_pro_matches_a_plain_threshold_sweep():
    rng = np.random.default_rng(1)
    masks = [two_regions(), np.zeros((32, 32), np.uint8)]
    maps = [np.round(rng.random((32, 32)) + 0.5 * m, 2) for m in masks]  # rounding makes ties
    assert pro_score(maps, masks) == pytest.approx(threshold_sweep_pro(maps, masks), abs=1e-9)


def threshold_sweep_pro(maps, masks, max_fpr=0.3):
    """PRO the slow, obvious way: one pass over the images per threshold."""
    labelled = [cv2.connectedComponents(m.astype(np.uint8), connectivity=8) for m in masks]
    thresholds = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    normal_total = sum((m == 0).sum() for m in masks)
    points = [(0.0, 0.0)]
    for t in thresholds:
        overlaps, false_positives = [], 0
        for amap, mask, (count, labels) in zip(maps, masks, labelled, strict=True):
            above = amap >= t
            false_positives += (above & (mask == 0)).sum()
            overlaps += [above[labels == r].mean() for r in range(1, count)]
        points.append((false_positives / normal_total, np.mean(overlaps)))
    fpr, pro = map(np.array, zip(*points, strict=True))
    inside = fpr < max_fpr
    pro_at_max = np.interp(max_fpr, fpr, pro)
    return np.trapezoid(np.r_[pro[inside], pro_at_max], np.r_[fpr[inside], max_fpr]) / max_fpr


def test_pro_rejects_masks_without_regions_or_without_good_pixels():
    with pytest.raises(ValueError, match="at least one defective region"):
        pro_score([np.zeros((4, 4))], [np.zeros((4, 4))])
    with pytest.raises(ValueError, match="defect-free pixels"):
        pro_score([np.zeros((4, 4))], [np.ones((4, 4))])
    with pytest.raises(ValueError, match="max_fpr"):
        pro_score([np.zeros((4, 4))], [two_regions()[:4, :4]], max_fpr=0)


def test_threshold_counts():
    counts = threshold_counts([0.1, 0.6, 0.5, 0.9, 0.2], [0, 0, 1, 1, 1], threshold=0.5)
    # Flagged (score > 0.5): 0.6 (good) and 0.9 (defective); 0.5 itself is not flagged.
    assert counts["true_positives"] == 1 and counts["false_positives"] == 1
    assert counts["false_negatives"] == 2 and counts["true_negatives"] == 1
    assert counts["precision"] == 0.5
    assert counts["recall"] == pytest.approx(1 / 3)
    assert counts["false_alarm_rate"] == 0.5
    assert threshold_counts([0.1], [1], threshold=0.5)["precision"] is None


def test_roc_curve_steps_through_every_distinct_score():
    # Highest first: 0.9 (defective), 0.8 (good), 0.5 (defective and good, tied), 0.1 (good).
    far, recall = roc_curve([0.9, 0.8, 0.5, 0.5, 0.1], [1, 0, 1, 0, 0])
    np.testing.assert_allclose(far, [0, 0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(recall, [0, 0.5, 0.5, 1, 1])
    # The tie is one diagonal step, so the trapezoid area is the ties-count-half AUROC.
    assert np.trapezoid(recall, far) == pytest.approx(image_auroc([0.9, 0.8, 0.5, 0.5, 0.1], [1, 0, 1, 0, 0]))


def test_roc_curve_area_is_the_auroc_on_random_scores():
    rng = np.random.default_rng(4)
    scores = np.round(rng.random(300), 2)  # many ties
    labels = rng.random(300) < 0.3
    far, recall = roc_curve(scores, labels)
    assert (far[0], recall[0], far[-1], recall[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(recall) >= 0)
    assert np.trapezoid(recall, far) == pytest.approx(image_auroc(scores, labels))


def test_thresholds_for_false_alarm_rates_allow_the_floor_of_rate_times_good_images():
    good = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # 10 good images
    defective = [0.35, 0.75, 0.95, 2.0]
    scores, labels = good + defective, [0] * 10 + [1] * 4
    rows = thresholds_for_false_alarm_rates(scores, labels, [0.0, 0.05, 0.1, 0.2, 0.5])
    # 0 % and 5 % of 10 allow no false alarm: the threshold lies between the top good score
    # 1.0 and the next higher score 2.0; 10 % allows one (above 0.9), 20 % two, 50 % five.
    assert [r["false_positives"] for r in rows] == [0, 0, 1, 2, 5]
    assert [r["true_positives"] for r in rows] == [1, 1, 2, 2, 3]
    assert rows[0]["threshold"] == 1.5  # the middle of [1.0, 2.0); "2", its one-digit form, would miss 2.0
    for row, low, high in zip(rows, [1.0, 1.0, 0.9, 0.8, 0.5], [2.0, 2.0, 0.95, 0.9, 0.6], strict=True):
        assert low <= row["threshold"] < high
        assert row["recall"] == row["true_positives"] / 4 and row["false_alarm_rate"] == row["false_positives"] / 10
    assert rows[3]["target_false_alarm_rate"] == 0.2


def test_a_threshold_choice_is_short_enough_to_type_and_decides_the_same():
    rng = np.random.default_rng(7)
    good = list(rng.normal(0.2, 0.01, 200))
    defective = list(rng.normal(0.24, 0.02, 100))
    rows = thresholds_for_false_alarm_rates(good + defective, [0] * 200 + [1] * 100, [0.01, 0.05])
    for row in rows:
        assert len(repr(row["threshold"])) <= 10  # not 17 digits of a midpoint
        assert row["false_positives"] == int(row["target_false_alarm_rate"] * 200)
        # No score lies between it and the good score it sits on: the same decisions.
        below = max(s for s in good if s <= row["threshold"])
        assert not any(below < s <= row["threshold"] for s in good + defective)


def test_threshold_choices_when_every_score_is_good_or_nothing_scores_higher():
    rows = thresholds_for_false_alarm_rates([0.5, 0.5, 0.2, 0.1], [0, 0, 1, 1], [0.0, 0.5])
    assert [r["false_positives"] for r in rows] == [0, 0]  # the tie at 0.5 cannot be split
    assert all(r["threshold"] >= 0.5 and r["recall"] == 0.0 for r in rows)
    zero = thresholds_for_false_alarm_rates([0.0, 0.0, 0.0], [0, 0, 1], [0.0])[0]
    assert zero["threshold"] >= 0.0 and zero["false_positives"] == 0


def test_a_measure_over_draws_reads_as_its_mean_and_range_in_percent():
    assert percent_mean_and_range([0.76, 0.70, 0.73]) == "73.0 (70.0-76.0)"
    assert percent_mean_and_range([0.995]) == "99.5 (99.5-99.5)"
