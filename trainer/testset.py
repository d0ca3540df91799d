"""An MVTec AD category's test set: test images, their defect type, their ground-truth masks.

    <category>/test/good/000.png                      defect-free, no mask (all zero)
    <category>/test/<defect>/000.png                  defective
    <category>/ground_truth/<defect>/000_mask.png     its mask (PNG, the image's size, bright = defect)

The datasets that copied this layout name things slightly differently, and are read too:
BTAD calls good images `ok` and names a mask like its image (`ground_truth/ko/0000.png`);
MVTec LOCO gives each image a folder of masks, one per defect region
(`ground_truth/<defect>/000/000.png`, `001.png`...), united here. MPDD is MVTec AD's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.preprocess import list_images, read_image
from trainer.data import GOOD_FOLDERS, DataError

GOOD = "good"


class TestSetError(DataError):
    """The test set is missing or inconsistent; the message names the files at fault."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True)
class TestItem:
    __test__ = False

    image_path: Path
    defect_type: str  # "good" for a defect-free image
    mask_path: Path | None  # None for a good image; a file, or a folder of masks to unite

    @property
    def is_defective(self) -> bool:
        return self.defect_type != GOOD


def load_test_set(category_dir: str | Path) -> list[TestItem]:
    """Every test image with its mask, checked: each defective image has a mask of its size.

    Every image, good or defective, and every mask is decoded once here, so that a broken file stops the run
    before minutes of scoring rather than after.
    """
    category_dir = Path(category_dir)
    test_dir = category_dir / "test"
    if not category_dir.is_dir():
        raise TestSetError(f"data directory {category_dir} does not exist")
    if not test_dir.is_dir():
        raise TestSetError(
            f"{category_dir} has no test/ folder, so there is nothing to measure detection on: "
            "a folder of good images only allows calibrating the threshold. Evaluation needs an "
            "MVTec AD layout: test/good, test/<defect>/ and ground_truth/<defect>/<name>_mask.png"
        )
    items = []
    for folder in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for image_path in list_images(folder):
            if folder.name in GOOD_FOLDERS:
                items.append(TestItem(image_path, GOOD, None))
            else:
                items.append(TestItem(image_path, folder.name, _mask_of(category_dir, folder.name, image_path)))
            _check_decodes(items[-1])
    if not any(item.defect_type == GOOD for item in items):
        raise TestSetError(f"{test_dir} has no good images (test/{GOOD}); false alarms and AUROC need them")
    if all(item.defect_type == GOOD for item in items):
        raise TestSetError(f"{test_dir} has no defective images (test/<defect>/); only calibration is possible")
    return items


def _mask_of(category_dir: Path, defect: str, image_path: Path) -> Path:
    """The ground truth of a defective image: the first of the dataset layouts that exists."""
    masks = category_dir / "ground_truth" / defect
    candidates = [masks / f"{image_path.stem}_mask.png", masks / f"{image_path.stem}.png", masks / image_path.stem]
    for candidate in candidates:
        if candidate.is_file() or (candidate.is_dir() and list_images(candidate)):
            return candidate
    raise TestSetError(
        f"defective test image {image_path} has no ground-truth mask; looked for "
        + ", ".join(str(c) + ("/*.png" if c == candidates[-1] else "") for c in candidates)
    )


def read_mask(item: TestItem, shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) bool ground truth at the image's size `shape`; all False for a good image."""
    if item.mask_path is None:
        return np.zeros(shape[:2], bool)
    files = list_images(item.mask_path) if item.mask_path.is_dir() else [item.mask_path]
    union = np.zeros(shape[:2], bool)
    for path in files:
        union |= _read_one_mask(path, item.image_path, shape)
    return union


def _read_one_mask(path: Path, image_path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        mask = read_image(path)
    except ValueError as exc:
        raise TestSetError(str(exc)) from None
    if mask.ndim == 3:
        mask = cv2.cvtColor(mask, cv2.COLOR_BGR2GRAY if mask.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    if mask.shape[:2] != shape[:2]:
        raise TestSetError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} "
            f"is {shape[1]}x{shape[0]}; a mask must have its image's size"
        )
    # Half the mask's own maximum: 0/255 and 0/1 masks alike, soft edges split down the middle.
    return mask > mask.max() / 2


def _check_decodes(item: TestItem) -> None:
    """The image decodes, and so does its mask, at the image's size."""
    try:
        image = read_image(item.image_path)
    except ValueError as exc:
        raise TestSetError(str(exc)) from None
    read_mask(item, image.shape)
