"""The evaluation's two pictures, drawn with OpenCV (already a dependency): the ROC curve and the score histogram.

A quality engineer chooses a threshold from these: where the curve bends is the recall a
line gets for its false alarms, and the histogram shows how far apart good and defective
parts score and where the threshold cuts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 760, 580
LEFT, RIGHT, TOP, BOTTOM = 84, 24, 64, 64  # margins around the plot area, in pixels
FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK, GREY, LIGHT_GREY, WHITE = (0, 0, 0), (130, 130, 130), (225, 225, 225), (255, 255, 255)
BLUE, RED, GREEN = (190, 90, 20), (40, 40, 220), (60, 160, 40)  # BGR


@dataclass(frozen=True)
class Axes:
    """Maps data coordinates to the canvas's pixels."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float

    def px(self, x: float, y: float) -> tuple[int, int]:
        u = LEFT + (x - self.x_min) / (self.x_max - self.x_min) * (WIDTH - LEFT - RIGHT)
        v = HEIGHT - BOTTOM - (y - self.y_min) / (self.y_max - self.y_min) * (HEIGHT - TOP - BOTTOM)
        return round(u), round(v)


def draw_roc(
    path: Path,
    false_alarm_rate: np.ndarray,
    recall: np.ndarray,
    auroc: float,
    operating_point: tuple[float, float],
    threshold: float,
    title: str,
) -> None:
    """The ROC curve from (0, 0) to (1, 1), chance's diagonal, and the manifest threshold's point on it."""
    canvas, axes = _blank(title, Axes(0.0, 1.0, 0.0, 1.0))
    ticks = [i / 5 for i in range(6)]
    _frame(canvas, axes, ticks, ticks, _percent, _percent)
    _dashed(canvas, axes.px(0, 0), axes.px(1, 1), GREY)
    points = np.array([axes.px(x, y) for x, y in zip(false_alarm_rate, recall, strict=True)], np.int32)
    cv2.polylines(canvas, [points], False, BLUE, 2, cv2.LINE_AA)
    far, rec = operating_point
    point = axes.px(far, rec)
    cv2.circle(canvas, point, 7, RED, -1, cv2.LINE_AA)
    label = f"recall {_percent(rec)}, false alarms {_percent(far)}"
    # Beside the point, on whichever side has room.
    origin = (point[0] + 12, point[1] + 20) if point[0] < WIDTH / 2 else (point[0] - _text_width(label) - 12, point[1] + 20)
    _text(canvas, label, origin, RED)
    _axis_labels(canvas, "false-alarm rate (share of good parts flagged)", "recall (share of defective parts caught)")
    _legend(canvas, [
        ("line", BLUE, f"ROC curve, image AUROC {auroc:.3f}"),
        ("dash", GREY, "chance (AUROC 0.5)"),
        ("dot", RED, f"at the manifest threshold {threshold:.4g}"),
    ])  # fmt: skip
    _write(path, canvas)


def draw_score_histogram(
    path: Path, good: Sequence[float], defective: Sequence[float], threshold: float, title: str, bins: int = 30
) -> None:
    """Counts of good and defective image scores, overlaid, with the threshold as a vertical line.

    The x axis spans the scores; a threshold far outside them is named at the edge instead
    of squeezing every bar into a corner.
    """
    scores = np.asarray([*good, *defective], np.float64)
    low, high = float(scores.min()), float(scores.max())
    span = high - low or abs(high) or 1.0
    threshold_shown = low - span / 2 <= threshold <= high + span / 2
    if threshold_shown:
        low, high = min(low, threshold), max(high, threshold)
    low, high = low - 0.02 * span, high + 0.02 * span
    edges = np.linspace(low, high, bins + 1)
    good_counts = np.histogram(good, edges)[0]
    defective_counts = np.histogram(defective, edges)[0]
    # Headroom above the tallest bar for the legend in the upper right corner.
    y_ticks = _nice_ticks(0, 1.4 * max(good_counts.max(), defective_counts.max(), 1), integers=True)
    canvas, axes = _blank(title, Axes(low, high, 0.0, y_ticks[-1]))
    _frame(canvas, axes, _nice_ticks(low, high), y_ticks, _number, lambda y: f"{y:g}")
    for counts, colour in ((good_counts, GREEN), (defective_counts, RED)):
        # Translucent bars, so that where good and defective scores overlap both stay visible.
        layer = canvas.copy()
        for count, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
            if count:
                cv2.rectangle(layer, axes.px(left, 0), axes.px(right, count), colour, -1)
        cv2.addWeighted(layer, 0.45, canvas, 0.55, 0, canvas)
        for count, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
            if count:
                cv2.rectangle(canvas, axes.px(left, 0), axes.px(right, count), colour, 1)
    if threshold_shown:
        top, bottom = axes.px(threshold, y_ticks[-1]), axes.px(threshold, 0)
        _dashed(canvas, top, bottom, BLACK, 2)
        note = f"threshold {threshold:.4g}"
    else:
        side = "right" if threshold > high else "left"
        note = f"threshold {threshold:.4g} lies far beyond the {side} edge"
    _axis_labels(canvas, "image score", "images")
    _legend(canvas, [
        ("box", GREEN, f"good ({len(good)})"),
        ("box", RED, f"defective ({len(defective)})"),
        ("dash", BLACK, note),
    ], upper=True)  # fmt: skip
    _write(path, canvas)


def _blank(title: str, axes: Axes) -> tuple[np.ndarray, Axes]:
    canvas = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    _text(canvas, title, (LEFT, 36), BLACK, 0.65, 2)
    return canvas, axes


def _frame(canvas, axes: Axes, x_ticks, y_ticks, x_format, y_format) -> None:
    """Grid lines at the ticks, their labels, and the box around the plot area."""
    for x in x_ticks:
        (u, v_bottom), (_, v_top) = axes.px(x, axes.y_min), axes.px(x, axes.y_max)
        cv2.line(canvas, (u, v_top), (u, v_bottom), LIGHT_GREY, 1)
        label = x_format(x)
        _text(canvas, label, (u - _text_width(label) // 2, v_bottom + 20))
    for y in y_ticks:
        (u_left, v), (u_right, _) = axes.px(axes.x_min, y), axes.px(axes.x_max, y)
        cv2.line(canvas, (u_left, v), (u_right, v), LIGHT_GREY, 1)
        label = y_format(y)
        _text(canvas, label, (u_left - _text_width(label) - 8, v + 5))
    cv2.rectangle(canvas, (LEFT, TOP), (WIDTH - RIGHT, HEIGHT - BOTTOM), BLACK, 1)


def _axis_labels(canvas, x_label: str, y_label: str) -> None:
    _text(canvas, x_label, ((LEFT + WIDTH - RIGHT - _text_width(x_label)) // 2, HEIGHT - 16))
    # OpenCV writes horizontally only: write the y label on its own strip, then turn it.
    strip = np.full((24, _text_width(y_label) + 4, 3), 255, np.uint8)
    _text(strip, y_label, (2, 17))
    strip = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
    top = max(0, (TOP + HEIGHT - BOTTOM - strip.shape[0]) // 2)
    height = min(strip.shape[0], HEIGHT - top)
    canvas[top : top + height, 6 : 6 + strip.shape[1]] = strip[:height]


def _legend(canvas, entries: list[tuple[str, tuple[int, int, int], str]], upper: bool = False) -> None:
    """A boxed legend in the plot area's lower (or upper) right corner: a marker and a label per entry."""
    width, height = max(_text_width(label) for _, _, label in entries) + 56, 24 * len(entries) + 8
    right = WIDTH - RIGHT - 10
    top = TOP + 10 if upper else HEIGHT - BOTTOM - 10 - height
    left, bottom = right - width, top + height
    cv2.rectangle(canvas, (left, top), (right, bottom), WHITE, -1)
    cv2.rectangle(canvas, (left, top), (right, bottom), GREY, 1)
    for i, (kind, colour, label) in enumerate(entries):
        y = top + 18 + 24 * i
        if kind == "line":
            cv2.line(canvas, (left + 10, y - 4), (left + 40, y - 4), colour, 2, cv2.LINE_AA)
        elif kind == "dash":
            _dashed(canvas, (left + 10, y - 4), (left + 40, y - 4), colour, 2)
        elif kind == "dot":
            cv2.circle(canvas, (left + 25, y - 4), 6, colour, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(canvas, (left + 14, y - 11), (left + 36, y + 3), colour, -1)
        _text(canvas, label, (left + 48, y + 1))


def _dashed(canvas, start, end, colour, thickness: int = 1, dash: int = 8) -> None:
    (x0, y0), (x1, y1) = start, end
    steps = max(1, int(math.hypot(x1 - x0, y1 - y0) // dash))
    for i in range(0, steps, 2):
        a, b = i / steps, min(1.0, (i + 1) / steps)
        p = (round(x0 + a * (x1 - x0)), round(y0 + a * (y1 - y0)))
        q = (round(x0 + b * (x1 - x0)), round(y0 + b * (y1 - y0)))
        cv2.line(canvas, p, q, colour, thickness, cv2.LINE_AA)


def _nice_ticks(low: float, high: float, integers: bool = False) -> list[float]:
    """About five round numbers (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    step = (high - low) / 5 or 1.0
    magnitude = 10 ** math.floor(math.log10(step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= step)
    if integers:
        step = max(1.0, math.ceil(step))
        return [i * step for i in range(math.ceil(high / step) + 1)]
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _text(canvas, text: str, origin, colour=BLACK, scale: float = 0.5, thickness: int = 1) -> None:
    cv2.putText(canvas, text, origin, FONT, scale, colour, thickness, cv2.LINE_AA)


def _text_width(text: str, scale: float = 0.5) -> int:
    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def _number(value: float) -> str:
    return f"{value:.3g}"


def _write(path: Path, canvas: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", canvas)
    if not ok:
        raise OSError(f"cannot encode {path}")
    path.write_bytes(png.tobytes())
