"""The alert threshold: where good parts' image scores end, read from scores of good parts
the model never trained on. Export sets it from held-out training images; `riad-edge
calibrate` sets it again from good parts seen on the line. Both call this one rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPREAD = 3.0  # standard deviations above the mean good score
DEFAULT_RULE = "max(mean + 3 std, max) of the good images' scores"
RATE_RULE = (
    "mean + t * std * sqrt(1 + 1/n) of the n good images' scores, t the Student-t quantile at "
    "1 - false_alarm_rate with n - 1 degrees of freedom (a normal prediction bound)"
)


def rule_summary(false_alarm_rate: float | None, scored: str) -> str:
    """The rule in a few words for a command's output, `scored` naming what it read."""
    if false_alarm_rate is None:
        return f"max(mean + 3 std, max) of {scored}"
    return f"for {100 * false_alarm_rate:g} % false alarms, a normal fit to {scored}"


def threshold_from_scores(scores: Sequence[float], false_alarm_rate: float | None = None) -> dict:
    """Threshold = max(mean + 3 * std, max) of good parts' scores, or one for a false-alarm rate.

    A quality engineer pays for every false alarm on a good part, so the threshold sits
    in the far tail of the good scores: mean + 3 std (about 1 false alarm in 740 parts
    if good scores were normal) and never below the highest good score seen, so every
    calibration image passes. The std is the sample std (ddof=1): with the 4 to 20
    images trainer.data holds out it is the less optimistic estimate. Defects whose
    score lands below the threshold are missed; `riad-trainer evaluate` measures that.

    With a `false_alarm_rate` (0 < rate < 1) the line asks for that share of good parts
    flagged instead, trading false alarms for recall. 4 to 20 scores cannot show a rate of
    1 % directly, so a normal distribution is assumed: the threshold is the upper
    prediction bound mean + t * std * sqrt(1 + 1/n), t the Student-t quantile at 1 - rate
    with n - 1 degrees of freedom. Under that assumption a new good part exceeds it with
    probability `rate` exactly, the uncertainty of mean and std from n images included
    (the plain normal quantile, mean + z * std, would flag several times the rate when n
    is 4). Real scores have a heavier upper tail than a normal; `evaluate` measures the
    rate on a labelled test set.

    Returns {"threshold", "rule", "false_alarm_rate" (None by default), "good_mean", "good_std",
    "good_max", "count", "held_out_above_threshold"}. ValueError for fewer than 2 scores.
    """
    if false_alarm_rate is not None:
        check_false_alarm_rate(false_alarm_rate)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size < 2:
        raise ValueError(
            f"calibration needs at least 2 defect-free images the model did not train on, to measure their spread; got {scores.size}"
        )
    mean, std, top, n = float(scores.mean()), float(scores.std(ddof=1)), float(scores.max()), int(scores.size)
    if false_alarm_rate is None:
        threshold, rule = max(mean + SPREAD * std, top), DEFAULT_RULE
    else:
        t = student_t_quantile(1 - false_alarm_rate, n - 1)
        threshold, rule = mean + t * std * (1 + 1 / n) ** 0.5, RATE_RULE
    return {
        "threshold": threshold,
        "rule": rule,
        "false_alarm_rate": false_alarm_rate,
        "good_mean": mean,
        "good_std": std,
        "good_max": top,
        "count": n,
        "held_out_above_threshold": int((scores > threshold).sum()),
    }


def check_false_alarm_rate(rate: float) -> None:
    if not 0 < rate < 1:  # also refuses NaN
        raise ValueError(
            f"the false-alarm rate must lie between 0 and 1, exclusive (0.01 is 1 % of good parts flagged); got {rate}"
        )


def student_t_quantile(p: float, df: int) -> float:
    """x with P(T <= x) = p for T Student-t distributed with `df` degrees of freedom.

    Numerically, to keep scipy out of the install: with T = sqrt(df) * tan(theta), theta
    has the density cos(theta) ** (df - 1) on (-pi/2, pi/2), smooth and bounded, whose
    cumulative sum on a fine grid is inverted by interpolation (relative error below 1e-5
    for the rates a line asks for).
    """
    theta = np.linspace(-np.pi / 2, np.pi / 2, 100_001)
    density = np.cos(theta) ** (df - 1)
    cdf = np.r_[0.0, np.cumsum((density[1:] + density[:-1]) / 2)]
    return float(np.sqrt(df) * np.tan(np.interp(p, cdf / cdf[-1], theta)))
