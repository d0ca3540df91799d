"""Training images: find them, hold some out for the threshold, load them as the edge does.

A data folder is either an MVTec AD category (`<category>/train/good`; BTAD's
`train/ok` too) or a plain folder of defect-free images. A seeded share of the images is held out of training:
the threshold is calibrated on good images the net has never seen, otherwise it
would sit too low and raise false alarms on the line.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from edge.method.preprocess import FULL_SCALE_16, IMAGE_SUFFIXES, list_images, prepare, read_image, white_level
from edge.method.roi import Roi

HOLDOUT_FRACTION = 0.1
MIN_HELD_OUT = 4  # fewer cannot give a spread for the threshold
MAX_HELD_OUT = 20  # beyond this the threshold barely moves; train on the rest
# Under this many, export advises setting the threshold from the line's own good parts: a
# spread measured on so few is a guess (docs/benchmarks.md, "How many good images").
FEW_HELD_OUT = 10
MIN_TRAINING = 2
GOOD_FOLDERS = ("good", "ok")  # what MVTec AD (LOCO, MPDD) and BTAD call their good images


class DataError(Exception):
    """The training data cannot be used; the message names the path at fault."""


@dataclass(frozen=True)
class TrainingSet:
    root: Path  # the folder that holds the images
    category: str
    train: list[Path]
    held_out: list[Path]

    def fingerprint(self) -> str:
        """sha256 of every image's name, role (train / held out) and bytes.

        Recorded in the checkpoint and the manifest: the same value means the model
        was trained and calibrated on exactly these files.
        """
        role = {path: "train" for path in self.train} | {path: "held-out" for path in self.held_out}
        digest = hashlib.sha256()
        for path in sorted(role, key=lambda p: p.name):
            digest.update(f"{path.relative_to(self.root).as_posix()}\0{role[path]}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()


def image_folder(data_dir: Path) -> tuple[Path, str]:
    """The folder of good images and the category name for a user's data directory."""
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    for good in GOOD_FOLDERS:
        if (data_dir / "train" / good).is_dir():
            return data_dir / "train" / good, data_dir.resolve().name
    resolved = data_dir.resolve()
    if resolved.name in GOOD_FOLDERS and resolved.parent.name == "train":  # given <category>/train/good itself
        return data_dir, resolved.parent.parent.name
    return data_dir, resolved.name


def held_out_count(total: int, fraction: float) -> int:
    return min(MAX_HELD_OUT, max(MIN_HELD_OUT, math.ceil(fraction * total)))


def find_training_set(
    data_dir: str | Path, holdout_fraction: float = HOLDOUT_FRACTION, seed: int = 0, held_out: int = 0
) -> TrainingSet:
    """The good images, split at random (by `seed`) into training and held-out ones.

    `held_out` images are held out to set the threshold; 0 holds out `holdout_fraction`
    of them, MIN_HELD_OUT to MAX_HELD_OUT.
    """
    folder, category = image_folder(Path(data_dir))
    images = list_images(folder)
    if not images:
        # A folder of good/ and bad/ parts, as evaluate reads: its good/ is what to train on.
        good = [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() in GOOD_FOLDERS]
        hint = f"; it holds {good[0].name}/: train on {good[0]}, keeping the good parts you evaluate with out of it" if good else ""
        raise DataError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}){hint}")
    n_held = held_out or held_out_count(len(images), holdout_fraction)
    if len(images) < n_held + MIN_TRAINING:
        raise DataError(
            f"{folder} has {len(images)} image{'s' if len(images) != 1 else ''}; at least {n_held + MIN_TRAINING} are needed "
            f"({n_held} held out to set the threshold, the rest to train on)"
        )
    order = np.random.default_rng(seed).permutation(len(images))
    held = sorted(images[i] for i in order[:n_held])
    train = sorted(images[i] for i in order[n_held:])
    return TrainingSet(folder, category, train, held)


def _decode(path: Path, roi: str = "") -> np.ndarray:
    """The training image as the edge sees it: decoded, then cropped to the ROI if one is set."""
    try:
        frame = read_image(path)
        return Roi.parse(roi).view(frame) if roi else frame
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot use training image {path}: {exc}") from None


def input_shape(paths: list[Path], side: int, multiple: int, roi: str = "") -> tuple[int, int]:
    """The network input (height, width) for these images: about side x side pixels in all,
    in their median aspect ratio (that of the ROI, if set), each side a multiple of `multiple`,
    and never larger than the images' median size.

    A square input would squash a long part (a 500 x 1260 strip to a third of its
    height), thinning exactly the cracks the map must see. The pixel count, and so the
    edge's cost per frame, stays that of the square the recipe names, except for images
    smaller than that: enlarging them adds no detail and costs frames/s (bottle shrunk to
    80 x 80 px detected as well at 80 as enlarged to 160, 3.7 times faster; docs/benchmarks.md).
    """
    sizes = [_decode(p, roi).shape[:2] for p in paths]
    aspect = float(np.median([h / w for h, w in sizes]))
    height, width = side * math.sqrt(aspect), side / math.sqrt(aspect)
    shrink = min(1.0, float(np.median([h for h, _ in sizes])) / height, float(np.median([w for _, w in sizes])) / width)
    height, width = height * shrink, width * shrink
    if shrink < 1:  # rounded down, so the input stays within the images' size (1e-6: 47.99999 is 48)
        return tuple(max(multiple, int((length + 1e-6) // multiple) * multiple) for length in (height, width))
    return max(multiple, round(height / multiple) * multiple), max(multiple, round(width / multiple) * multiple)


def pixel_white(paths: list[Path], roi: str = "") -> int:
    """The white level of the training images' 16-bit files (edge.method.preprocess.white_level
    of their brightest pixel); full scale for a set whose first image is 8-bit, the rest unread."""
    peak = 0
    for index, path in enumerate(paths):
        frame = _decode(path, roi)
        if frame.dtype == np.uint16:
            peak = max(peak, int(frame.max()))
        elif index == 0:
            break
    return white_level(peak) if peak else FULL_SCALE_16


def load_images(paths: list[Path], shape: tuple[int, int], roi: str = "", white: int = FULL_SCALE_16) -> np.ndarray:
    """(N, 3, H, W) float32: the files through the edge's own ROI crop, read and resize;
    16-bit files read with `white` as white (the model's Manifest.pixel_white)."""
    images = np.empty((len(paths), 3, *shape), np.float32)
    for i, path in enumerate(paths):
        try:
            images[i] = prepare(_decode(path, roi), shape, white)
        except ValueError as exc:
            raise DataError(f"cannot use training image {path}: {exc}") from None
    return images


class GoodImages(Dataset):
    """Decoded, resized training images, all held in memory.

    Resized images are small (a 128 px image is 200 kB), and decoding and resizing a
    900 px PNG takes ~20 ms: repeated, some 4 s of every ~28 s CPU epoch on bottle. So
    each file is decoded once. No augmentation, as in the paper: flips or rotations
    would teach the net that a part mounted the wrong way round is normal.
    """

    def __init__(self, paths: list[Path], shape: tuple[int, int], roi: str = "", white: int = FULL_SCALE_16):
        self.images = torch.from_numpy(load_images(paths, shape, roi, white))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]
