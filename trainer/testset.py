"""A labelled test set: test images, their defect type, their ground-truth masks where there are any.

    <category>/test/good/000.png                      defect-free (`good` or `ok`, any case)
    <category>/test/<defect>/000.png                  defective; any other folder name is a defect type
    <category>/ground_truth/<defect>/000_mask.png     its mask, if there is one (PNG, the image's size, bright = defect)

The data directory may also be that test folder itself (`<category>/test`, its masks still read from
`<category>/ground_truth`), or any folder holding `good/` beside folders of defective images
(`parts/good`, `parts/bad`), with masks, if any, in its own `ground_truth/`.

Masks are optional: most users have a folder of good and a folder of bad parts. A defective
image without a mask still counts for the image metrics; the pixel metrics are measured on
the defective images that have one, and are reported as not measured where none has.

The datasets that copied MVTec AD's layout name masks slightly differently, and are read too:
BTAD calls good images `ok` and names a mask like its image (`ground_truth/ko/0000.png`);
MVTec LOCO gives each image a folder of masks, one per defect region
(`ground_truth/<defect>/000/000.png`, `001.png`...), united here. MPDD is MVTec AD's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.method.preprocess import list_images, read_image
from trainer.data import GOOD_FOLDERS, DataError

GOOD = "good"
MASKS_FOLDER = "ground_truth"
# Where a defective image test/<defect>/<name>.* may have its mask; reports name them.
MASK_LAYOUTS = "ground_truth/<defect>/<name>_mask.png, <name>.png or <name>/*.png"


class TestSetError(DataError):
    """The test set is missing or inconsistent; the message names the files at fault."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True)
class TestItem:
    __test__ = False

    image_path: Path
    defect_type: str  # "good" for a defect-free image
    mask_path: Path | None  # a file, or a folder of masks to unite; None for a good image or an unmasked defect

    @property
    def is_defective(self) -> bool:
        return self.defect_type != GOOD

    @property
    def has_pixel_labels(self) -> bool:
        """Whether every pixel's label is known: a good image's are all defect-free, a defect's need its mask."""
        return not self.is_defective or self.mask_path is not None


def load_test_set(category_dir: str | Path) -> list[TestItem]:
    """Every test image with its mask where it has one, checked: every mask has its image's size.

    Every image, good or defective, and every mask is decoded once here, so that a broken file stops the run
    before minutes of scoring rather than after.
    """
    test_dir, masks_root = folders_of_test_set(Path(category_dir))
    items = []
    # Hidden folders (.ipynb_checkpoints, a file manager's thumbnails) hold no defect type, nor do the masks'.
    for folder in sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder == masks_root / MASKS_FOLDER:
            continue
        for image_path in list_images(folder):
            if folder.name.lower() in GOOD_FOLDERS:
                items.append(TestItem(image_path, GOOD, None))
            else:
                items.append(TestItem(image_path, folder.name, _mask_of(masks_root, folder.name, image_path)))
            _check_decodes(items[-1])
    if not any(item.defect_type == GOOD for item in items):
        raise TestSetError(f"{test_dir} has no good images (good/ or ok/); false alarms and AUROC need them")
    if all(item.defect_type == GOOD for item in items):
        raise TestSetError(f"{test_dir} has no defective images (<defect>/ beside good/); only calibration is possible")
    return items


def folders_of_test_set(data_dir: Path) -> tuple[Path, Path]:
    """(the folder of good/ and defect folders, the folder whose ground_truth/ holds the masks) of a data directory."""
    if not data_dir.is_dir():
        raise TestSetError(f"data directory {data_dir} does not exist")
    if (data_dir / "test").is_dir():
        return data_dir / "test", data_dir
    if any(p.is_dir() and p.name.lower() in GOOD_FOLDERS for p in data_dir.iterdir()):
        # <category>/test given itself: MVTec AD keeps the masks beside it, not in it.
        category = _category_of_test_folder(data_dir)
        return data_dir, category if category is not None and (category / MASKS_FOLDER).is_dir() else data_dir
    raise TestSetError(
        f"{data_dir} has no test/ folder and no good/ folder, so there is nothing to measure detection on: "
        "a folder of good images only allows calibrating the threshold. Evaluation needs good/ and one or more "
        "folders of defective images (<defect>/), in DATA/test/ or in DATA itself "
        f"(pixel masks in {MASKS_FOLDER}/<defect>/<name>_mask.png are optional)"
    )


def _category_of_test_folder(data_dir: Path) -> Path | None:
    """The category folder of a data directory that is <category>/test itself, else None."""
    resolved = data_dir.resolve()
    return resolved.parent if resolved.name == "test" else None


def name_of_test_set(data_dir: Path) -> str:
    """The test set's name for a report: its category's, where the data directory is <category>/test."""
    return (_category_of_test_folder(data_dir) or data_dir.resolve()).name


def _mask_of(masks_root: Path, defect: str, image_path: Path) -> Path | None:
    """The ground truth of a defective image: the first of the MASK_LAYOUTS that exists, or None."""
    masks = masks_root / MASKS_FOLDER / defect
    candidates = [masks / f"{image_path.stem}_mask.png", masks / f"{image_path.stem}.png", masks / image_path.stem]
    for candidate in candidates:
        if candidate.is_file() or (candidate.is_dir() and list_images(candidate)):
            return candidate
    return None


def read_mask(item: TestItem, shape: tuple[int, ...]) -> np.ndarray | None:
    """(H, W) bool ground truth at the image's size `shape`; all False for a good image.

    None for a defective image without a mask: its pixels' labels are unknown, not defect-free.
    """
    if not item.has_pixel_labels:
        return None
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
    """The image decodes, and so does its mask if it has one, at the image's size."""
    try:
        image = read_image(item.image_path)
    except ValueError as exc:
        raise TestSetError(str(exc)) from None
    read_mask(item, image.shape)
