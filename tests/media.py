"""Real media for source and pipeline tests, made from bottle images in a test's tmp_path.

Videos are encoded with cv2.VideoWriter (the codecs a camera or a recording gives
us: MJPG in AVI, MPEG-4 part 2 in MP4), folders hold real PNG/JPEG files.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

SIZE = 128  # small enough to keep every test fast, big enough for real compression


def bottle_frames(bottle_dir: Path, count: int, size: int = SIZE) -> list[np.ndarray]:
    """BGR frames: the first `count` defect-free bottles, then broken ones, resized to size x size."""
    paths = sorted((bottle_dir / "train" / "good").glob("*.png"))[: count // 2]
    paths += sorted((bottle_dir / "test" / "broken_large").glob("*.png"))[: count - len(paths)]
    assert len(paths) == count, f"not enough bottle images for {count} frames"
    return [cv2.resize(cv2.imread(str(p)), (size, size), interpolation=cv2.INTER_AREA) for p in paths]


def write_video(path: Path, frames: list[np.ndarray], fourcc: str, fps: float = 10.0) -> Path:
    """Encodes frames into a video file; fourcc 'MJPG' for .avi, 'mp4v' for .mp4."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"this OpenCV cannot encode {fourcc} into {path.suffix}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    assert path.stat().st_size > 0
    return path


def write_image_folder(folder: Path, frames: list[np.ndarray], names: list[str]) -> Path:
    """One image file per frame under the given names (the extension picks the format)."""
    folder.mkdir(parents=True, exist_ok=True)
    for frame, name in zip(frames, names, strict=True):
        assert cv2.imwrite(str(folder / name), frame)
    return folder


def write_truncated_png(path: Path, frame: np.ndarray) -> Path:
    """A PNG cut off after its first 100 bytes: what a copy interrupted by a full disk leaves."""
    ok, data = cv2.imencode(".png", frame)
    assert ok
    path.write_bytes(data.tobytes()[:100])
    return path


def nearest(frame: np.ndarray, originals: list[np.ndarray]) -> int:
    """Index of the original a decoded (lossy) frame came from."""
    errors = [np.abs(frame.astype(np.int16) - o.astype(np.int16)).mean() for o in originals]
    return int(np.argmin(errors))


class LoopingCamera:
    """A live camera (a real encoded clip, looped) that can be unplugged and plugged back in."""

    def __init__(self, clip: Path, missing: Path):
        from edge.sources.cameras import CaptureSource

        self.plugged = threading.Event()
        self.plugged.set()
        self.source = CaptureSource(
            "camera 3", lambda: cv2.VideoCapture(str(clip if self.plugged.is_set() else missing)),
            live=True, camera_id="cam3", backoff=(0.01, 0.05),
        )  # fmt: skip
