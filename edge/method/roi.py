"""Where to look in a frame: a crop rectangle (the part, not the conveyor), optionally rotated,
and an ignore mask (fixtures, labels, reflections that must never raise an alarm).

The crop is its own step before edge.method.preprocess.prepare: the network sees only the
rotated crop, as it did in training (`riad-trainer train --roi`, recorded in the
manifest). Its anomaly map is then put back in frame geometry, zero outside the
crop, so boxes, overlays and the ignore mask all work in full-frame pixels.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.method.preprocess import read_image

ROTATIONS = {0: None, 90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
UNDO = {0: None, 90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


class RoiError(ValueError):
    """An ROI or ignore mask that cannot be used: malformed, or outside the frame."""


@dataclass(frozen=True)
class Roi:
    """A crop rectangle in frame pixels, then a clockwise rotation by 0, 90, 180 or 270 degrees."""

    x: int
    y: int
    width: int
    height: int
    rotate: int = 0

    def __post_init__(self):
        if min(self.x, self.y) < 0 or min(self.width, self.height) < 1:
            raise RoiError(f"ROI {self.spec()}: x and y must be >= 0, width and height >= 1")
        if self.rotate not in ROTATIONS:
            raise RoiError(f"ROI rotation must be one of 0, 90, 180, 270 degrees, not {self.rotate}")

    @classmethod
    def parse(cls, text: str) -> Roi:
        """From 'x,y,width,height' or 'x,y,width,height,rotation' (the --roi syntax)."""
        numbers = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*(?:,\s*(\d+)\s*)?", text)
        if numbers is None:
            raise RoiError(f"ROI {text!r} must be x,y,width,height[,rotation] in whole pixels (rotation 0, 90, 180 or 270)")
        return cls(*(int(n) for n in numbers.groups(default="0")))

    @classmethod
    def from_dict(cls, data) -> Roi:
        if not isinstance(data, dict) or set(data) - {"x", "y", "width", "height", "rotate"}:
            raise RoiError(f"ROI {data!r} must be a mapping of x, y, width, height and optionally rotate")
        try:
            return cls(**{k: int(v) for k, v in data.items()})
        except (TypeError, ValueError) as exc:
            raise RoiError(f"ROI {data!r}: {exc}") from None

    def as_dict(self) -> dict:
        return asdict(self)

    def spec(self) -> str:
        return f"{self.x},{self.y},{self.width},{self.height}" + (f",{self.rotate}" if self.rotate else "")

    def view(self, frame: np.ndarray) -> np.ndarray:
        """What the network sees: the crop, rotated. RoiError when the crop leaves the frame."""
        height, width = frame.shape[:2]
        if self.x + self.width > width or self.y + self.height > height:
            raise RoiError(f"ROI {self.spec()} reaches outside the {width}x{height} frame")
        crop = frame[self.y : self.y + self.height, self.x : self.x + self.width]
        rotation = ROTATIONS[self.rotate]
        return crop if rotation is None else cv2.rotate(crop, rotation)

    def to_frame(self, amap: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
        """The view's (H, W) map in frame geometry, 0 outside the crop.

        At about the map's own resolution over the crop (never above the frame's), so a
        small ROI of a large frame does not cost a full-resolution map.
        """
        undo = UNDO[self.rotate]
        amap = amap if undo is None else cv2.rotate(amap, undo)
        canvas_shape, (x0, y0, x1, y1) = self._placement(amap.shape, frame_shape)
        canvas = np.zeros(canvas_shape, np.float32)
        canvas[y0:y1, x0:x1] = cv2.resize(amap, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        return canvas

    def pixels_in_frame_map(self, map_shape: tuple[int, ...], frame_shape: tuple[int, ...]) -> int:
        """How many pixels of to_frame's result the crop covers: the area an image score is of."""
        _, (x0, y0, x1, y1) = self._placement(map_shape, frame_shape)
        return (x1 - x0) * (y1 - y0)

    def _placement(self, map_shape: tuple[int, ...], frame_shape: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """to_frame's canvas (height, width) and the crop's (x0, y0, x1, y1) in it."""
        scale = min(1.0, max(map_shape[:2]) / max(self.width, self.height))
        frame_h, frame_w = frame_shape[:2]
        canvas = (max(1, round(frame_h * scale)), max(1, round(frame_w * scale)))
        x0, y0 = round(self.x * scale), round(self.y * scale)
        x1 = min(canvas[1], max(x0 + 1, round((self.x + self.width) * scale)))
        y1 = min(canvas[0], max(y0 + 1, round((self.y + self.height) * scale)))
        return canvas, (x0, y0, x1, y1)


class IgnoreMask:
    """Frame regions whose anomaly map is zeroed: an image (non-zero pixels ignored) or polygons.

    Both are in full-frame pixels, whatever the ROI; a mask image must have the frame's size.
    """

    def __init__(self, image: np.ndarray | None = None, polygons: list | None = None):
        if (image is None) == (polygons is None):
            raise RoiError("an ignore mask is an image or a list of polygons")
        self.image = None if image is None else (image if image.ndim == 2 else image.max(axis=2)) > 0
        self.polygons = [self._polygon(p) for p in polygons] if polygons is not None else []
        self._cache: dict[tuple, np.ndarray] = {}  # (frame shape, map shape) -> ignored pixels of the map

    @classmethod
    def from_file(cls, path: Path) -> IgnoreMask:
        try:
            return cls(image=read_image(path))
        except ValueError as exc:
            raise RoiError(f"ignore mask: {exc}") from None
        except OSError as exc:
            raise RoiError(f"cannot read ignore mask {path}: {exc.strerror or exc}") from None

    @staticmethod
    def _polygon(points) -> np.ndarray:
        try:
            polygon = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError):
            polygon = np.empty(0)
        if polygon.ndim != 2 or polygon.shape[1] != 2 or len(polygon) < 3:
            raise RoiError(f"an ignore polygon is a list of at least 3 [x, y] points, not {points!r}")
        return polygon

    def ignored(self, frame_shape: tuple[int, ...], map_shape: tuple[int, ...]) -> np.ndarray:
        """Boolean (map shape): map pixels that touch an ignored frame pixel."""
        key = (tuple(frame_shape[:2]), tuple(map_shape))
        if key not in self._cache:
            frame_h, frame_w = frame_shape[:2]
            if self.image is not None:
                if self.image.shape != (frame_h, frame_w):
                    raise RoiError(f"the ignore mask is {self.image.shape[1]}x{self.image.shape[0]}, the frame {frame_w}x{frame_h}")
                full = self.image.astype(np.float32)
                small = cv2.resize(full, (map_shape[1], map_shape[0]), interpolation=cv2.INTER_AREA)
            else:
                small = np.zeros(map_shape[:2], np.uint8)
                sx, sy = map_shape[1] / frame_w, map_shape[0] / frame_h
                for polygon in self.polygons:
                    cv2.fillPoly(small, [np.round(polygon * (sx, sy)).astype(np.int32)], 1)
            self._cache[key] = small > 0
        return self._cache[key]

    def apply(self, amap: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
        return np.where(self.ignored(frame_shape, amap.shape), np.float32(0), amap)
