"""bench/pack_for_device: the copy a GPU machine trains and evaluates on changes no pixel the net sees.

The GPU numbers in docs/benchmarks.md were measured on such copies, so this is what makes
them the numbers of the real data sets.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.method.preprocess import prepare, read_image
from tests.conftest import DATA
from trainer.evaluate import at_map_size
from trainer.testset import load_test_set, read_mask

ROOT = Path(__file__).resolve().parents[1]
KOLEKTOR = DATA / "kolektorsdd"


def small_category(source: Path, out: Path, defect: str) -> Path:
    """A few real files of a category in its own layout: 6 to train, a good and a defective test image with its mask."""
    category = out / source.name
    picks = sorted((source / "train" / "good").iterdir())[:6]
    picks += sorted((source / "test" / "good").iterdir())[:1]
    defective = sorted((source / "test" / defect).iterdir())[0]
    picks += [defective, *(source / "ground_truth" / defect).glob(defective.stem + "*")]
    for path in picks:
        (category / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, category / path.relative_to(source))
    return category


@pytest.mark.parametrize("name, defect", [("bottle", "broken_large"), ("kolektorsdd", "crack")])
def test_packed_images_prepare_to_the_same_pixels(name, defect, bottle_dir, tmp_path):
    source = {"bottle": bottle_dir, "kolektorsdd": KOLEKTOR}[name]
    if not (source / "train" / "good").is_dir():
        pytest.skip(f"{source} not found")
    original = small_category(source, tmp_path / "original", defect)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pack_for_device"), "--size", "64", "--out", str(tmp_path / "packed"), str(original)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    height, width = map(int, line.split()[1].split("x"))
    packed = tmp_path / "packed" / name
    assert height * width <= 64 * 64 * 1.3 and (name != "kolektorsdd" or height > width)  # tall and thin stays so

    before, after = load_test_set(original), load_test_set(packed)
    assert [i.image_path.stem for i in before] == [i.image_path.stem for i in after] and len(after) == 2
    amap = np.zeros((height, width))
    for old, new in zip(before, after):
        old_frame, new_frame = read_image(old.image_path), read_image(new.image_path)
        assert new_frame.shape[:2] == (height, width)
        np.testing.assert_array_equal(prepare(new_frame, (height, width)), prepare(old_frame, (height, width)))
        old_mask, new_mask = read_mask(old, old_frame.shape), read_mask(new, new_frame.shape)
        np.testing.assert_array_equal(at_map_size(new_mask, amap), at_map_size(old_mask, amap))
        if old.is_defective:
            assert at_map_size(new_mask, amap).any()
    for old in sorted((original / "train" / "good").iterdir()):
        new = packed / "train" / "good" / (old.stem + ".png")
        np.testing.assert_array_equal(prepare(read_image(new), (height, width)), prepare(read_image(old), (height, width)))
    if name == "kolektorsdd":  # grey parts stay one channel, a third of the bytes
        assert cv2.imread(str(new), cv2.IMREAD_UNCHANGED).ndim == 2
