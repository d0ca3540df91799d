"""Detection quality: image and pixel AUROC, MVTec's PRO, the ROC curve, and the counts at a threshold.

Every curve here is computed exactly from the sorted scores (no threshold grid), and
tied scores count half, as in the Mann-Whitney statistic: a detector that gives every
pixel the same value scores 0.5, not 0 or 1 depending on sort order.
Masks: any nonzero value marks a defective pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(labels).ravel().astype(bool)
    if scores.size != positive.size:
        raise ValueError(f"{scores.size} scores but {positive.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        kind = "defective" if n_pos == 0 else "defect-free"
        raise ValueError(f"AUROC needs both classes; there are no {kind} samples")
    rank_sum = float(_average_ranks(scores)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_curve(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(false-alarm rate, recall) as the threshold falls through every distinct score, from (0, 0) to (1, 1).

    Tied scores are flagged together, so a tie is one diagonal step: the curve's trapezoid
    area is roc_auc's ties-count-half statistic.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(labels).ravel().astype(bool)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    recall = np.r_[0.0, (np.cumsum(positive[order]) / positive.sum())[last_of_tie]]
    false_alarm_rate = np.r_[0.0, (np.cumsum(~positive[order]) / (~positive).sum())[last_of_tie]]
    return false_alarm_rate, recall


def thresholds_for_false_alarm_rates(scores: Sequence[float], labels: Sequence[int], rates: Sequence[float]) -> list[dict]:
    """For each target false-alarm rate, the lowest threshold that keeps the good images' false alarms within it.

    With n good images a rate allows floor(rate * n) false alarms, k. Any threshold from the
    (k+1)-th highest good score up to (not including) the next higher score of any image
    makes the same decisions; the one returned is the gap's middle rounded to as few
    significant digits as keep it there, so that it can be typed as it is printed
    (`riad-edge run --threshold`). Chosen on the
    very images it is measured on, the recall there is optimistic for new parts.
    """
    scores = np.asarray(scores, dtype=np.float64)
    defective = np.asarray(labels).astype(bool)
    good = np.sort(scores[~defective])[::-1]
    rows = []
    for rate in rates:
        allowed = int(np.floor(rate * good.size + 1e-9))  # 5 % of 20 is 1, whatever 0.05 * 20 rounds to
        low = float(good[min(allowed, good.size - 1)])
        above = scores[scores > low]
        # Nothing scores higher: any threshold a little above `low` decides the same.
        high = float(above.min()) if above.size else low + abs(low) * 0.01 + 1e-12
        threshold = _shortest_decimal_in(low, high)
        rows.append({"target_false_alarm_rate": rate, "threshold": threshold} | threshold_counts(scores, defective, threshold))
    return rows


def _shortest_decimal_in(low: float, high: float) -> float:
    """(low + high) / 2 with as few significant digits as keep it in [low, high)."""
    for digits in range(1, 18):
        candidate = float(f"{(low + high) / 2:.{digits}g}")
        if low <= candidate < high:
            return candidate
    return low


def image_auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """AUROC of image scores against image labels (1 = defective)."""
    return roc_auc(np.asarray(scores), np.asarray(labels))


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """AUROC over all pixels of all images: map values against ground-truth masks."""
    pairs = _checked_pairs(maps, masks)
    return roc_auc(
        np.concatenate([m.ravel() for m, _ in pairs]),
        np.concatenate([g.ravel() for _, g in pairs]),
    )


def pro_score(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], max_fpr: float = 0.3) -> float:
    """MVTec AD's per-region overlap (PRO), integrated up to `max_fpr` and normalised to [0, 1].

    At each threshold: PRO = mean over every ground-truth region (8-connected, over all
    images) of the fraction of that region above the threshold; FPR = fraction of
    defect-free pixels above it. The area under PRO(FPR) from 0 to max_fpr, divided by
    max_fpr, is 1 for a perfect map and max_fpr / 2 for a random one (PRO = FPR).
    Unlike pixel AUROC, a small scratch weighs as much as a large dent.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    value_parts, share_parts, normal_parts = [], [], []
    regions = 0
    for amap, mask in _checked_pairs(maps, masks):
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        sizes = np.bincount(labels.ravel(), minlength=count)
        # Each pixel of a region carries 1/size of it: summed above a threshold, its overlap.
        share_parts.append(np.where(labels > 0, 1.0 / sizes[labels], 0.0).ravel())
        normal_parts.append(labels.ravel() == 0)
        value_parts.append(amap.ravel().astype(np.float64))
        regions += count - 1
    values, region_share, normal = (np.concatenate(p) for p in (value_parts, share_parts, normal_parts))
    if regions == 0:
        raise ValueError("PRO needs at least one defective region; the masks are empty")
    if not normal.any():
        raise ValueError("PRO needs defect-free pixels; the masks cover everything")
    if not np.isfinite(values).all():
        raise ValueError("maps contain NaN or infinity")

    # Lower the threshold through every distinct value, highest first.
    order = np.argsort(-values, kind="stable")
    sorted_values = values[order]
    last_of_tie = np.r_[sorted_values[1:] != sorted_values[:-1], True]
    fpr = np.r_[0.0, (np.cumsum(normal[order]) / normal.sum())[last_of_tie]]
    pro = np.r_[0.0, (np.cumsum(region_share[order]) / regions)[last_of_tie]]

    # Integrate up to max_fpr, the curve interpolated linearly at max_fpr.
    k = int(np.searchsorted(fpr, max_fpr, side="left"))  # first point at or beyond max_fpr
    t = (max_fpr - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
    pro_at_max = pro[k - 1] + t * (pro[k] - pro[k - 1])
    area = np.trapezoid(np.r_[pro[:k], pro_at_max], np.r_[fpr[:k], max_fpr])
    return float(area / max_fpr)


def threshold_counts(scores: Sequence[float], labels: Sequence[int], threshold: float) -> dict:
    """Image-level decisions at a threshold (defective when score > threshold, as on the edge).

    precision is None when nothing was flagged (it is undefined, not 0 or 1).
    """
    flagged = np.asarray(scores, dtype=np.float64) > threshold
    defective = np.asarray(labels).astype(bool)
    tp = int((flagged & defective).sum())
    fp = int((flagged & ~defective).sum())
    fn = int((~flagged & defective).sum())
    tn = int((~flagged & ~defective).sum())
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "false_alarm_rate": fp / (fp + tn) if fp + tn else None,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "true_negatives": tn,
    }


def percent_mean_and_range(fractions: Sequence[float]) -> str:
    """'72.9 (67.0-77.6)': the mean, lowest and highest of rates such as AUROCs, in percent
    (how the benchmarks report a measure over several mask draws or trainings)."""
    values = [100 * v for v in fractions]
    return f"{sum(values) / len(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    group = np.repeat(np.arange(starts.size), ends - starts)
    ranks = np.empty(values.size)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]
    return ranks


def _checked_pairs(maps, masks) -> list[tuple[np.ndarray, np.ndarray]]:
    maps, masks = list(maps), list(masks)
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} maps but {len(masks)} masks")
    if not maps:
        raise ValueError("no maps to evaluate")
    pairs = []
    for i, (amap, mask) in enumerate(zip(maps, masks, strict=True)):
        amap, mask = np.asarray(amap), np.asarray(mask) != 0
        if amap.shape != mask.shape or amap.ndim != 2:
            raise ValueError(f"map {i} has shape {amap.shape} but its mask {mask.shape}; both must be the same (H, W)")
        pairs.append((amap, mask))
    return pairs
