"""Camera frame -> network input: the one resize and colour convention, used everywhere."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import cv2
import numpy as np

# The image files a folder source, training and evaluation read: what read_image decodes.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# The 16-bit value read as white by default. A camera with 10 or 12 bits saves them in 16-bit
# files (0 to 4095 for 12 bits), which at full scale keep 16 grey levels of 256: a model reads
# its frames with the white level of its training images instead (Manifest.pixel_white).
FULL_SCALE_16 = 65535


def white_level(peak: int) -> int:
    """The white level of 16-bit images whose brightest pixel is `peak`: 2**b - 1 for the
    fewest bits b, 8 to 16, that hold it (4095 for a 12-bit camera's images)."""
    bits = max(8, int(peak).bit_length())
    return min(2**bits - 1, FULL_SCALE_16)


def to_rgb8(frame: np.ndarray, white: int | None = FULL_SCALE_16) -> np.ndarray:
    """Any OpenCV frame (grey, BGR or BGRA, 8 or 16 bit) as an 8-bit RGB image.

    A 16-bit frame's `white` and above read as 255; None takes the frame's own white_level,
    for showing a frame rather than scoring it (a model reads every frame with one level).
    """
    if frame.dtype == np.uint16:
        white = white_level(frame.max()) if white is None else white
        # Multiplied before dividing: 4095 * 255 / 4095 is 255 exactly, and 65535 is the old / 257.
        frame = (np.minimum(frame, white) * 255.0 / white).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise ValueError(f"unsupported frame dtype {frame.dtype}; expected 8- or 16-bit pixels")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    raise ValueError(f"unsupported frame shape {frame.shape}")


def prepare(frame: np.ndarray, shape: tuple[int, int], white: int = FULL_SCALE_16) -> np.ndarray:
    """(3, H, W) float32 RGB in [0, 1] from an OpenCV frame of any size.

    `shape` is the model's input (height, width), which the trainer chose in the aspect
    ratio of its training images, so a part framed as in training is not distorted.
    `white`: what a 16-bit frame's white is (to_rgb8), the model's Manifest.pixel_white.
    """
    if frame is None or frame.size == 0:
        raise ValueError("empty frame")
    rgb = to_rgb8(frame, white)
    h, w = rgb.shape[:2]
    height, width = shape
    # Area averaging when shrinking (no aliasing); linear when enlarging.
    interpolation = cv2.INTER_AREA if h >= height and w >= width else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (width, height), interpolation=interpolation)
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / 255.0


def png_intact(data: bytes) -> bool:
    """Every chunk of a PNG complete with a matching CRC, up to IEND.

    libpng prints its own "libpng error: ..." line to stderr for a damaged file before
    OpenCV returns None; checking first keeps that line out of the output (our one-line
    error says it instead). Costs a CRC over the file, far less than decoding it.
    """
    at = len(PNG_SIGNATURE)
    while at + 12 <= len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        end = at + 8 + length
        if end + 4 > len(data) or zlib.crc32(data[at + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            return False
        if data[at + 4 : at + 8] == b"IEND":
            return True
        at = end + 4
    return False


def read_image(path) -> np.ndarray:
    """An image file as an OpenCV BGR frame; a clear error when it cannot be decoded."""
    data = np.fromfile(str(path), dtype=np.uint8)
    damaged_png = data[: len(PNG_SIGNATURE)].tobytes() == PNG_SIGNATURE and not png_intact(data.tobytes())
    frame = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size and not damaged_png else None
    if frame is None:
        raise ValueError(f"cannot decode image {path} (corrupt, empty or not an image)")
    return frame


def natural_key(path: Path) -> list:
    """Sort key that puts img2.png before img10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: Path) -> list[Path]:
    """The image files (IMAGE_SUFFIXES) directly in `folder`, in natural order."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=natural_key,
    )
