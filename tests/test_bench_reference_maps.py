"""bench/reference_maps: the candidate reference maps it compares, and a folder that is not a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import load_bench_script

ROOT = Path(__file__).resolve().parents[1]


def test_max_lies_above_every_good_map_and_the_mean_does_not():
    script = load_bench_script("reference_maps")
    maps = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32)
    candidates = script.references(maps)
    np.testing.assert_array_equal(candidates["max"], maps.max(axis=0))
    np.testing.assert_allclose(candidates["mean (the default)"], maps.mean(axis=0), rtol=1e-6)
    assert (maps <= candidates["max"]).all() and (maps > candidates["mean (the default)"]).any()
    # Dilation only raises a map, up to the highest value within its radius.
    dilated = candidates["mean, dilated 4 px"]
    assert (dilated >= candidates["mean (the default)"]).all() and dilated.max() == candidates["mean (the default)"].max()


def test_the_reference_is_compared_as_the_manifest_stores_it():
    script = load_bench_script("reference_maps")
    reference = np.tile(np.linspace(0, 0.2, 32, dtype=np.float32), (32, 1))
    stored = script.as_stored(reference)
    assert stored.shape == (32, 32)
    np.testing.assert_allclose(stored, reference, atol=0.01)  # quarter size, float16, bilinear back


def test_a_folder_that_is_not_a_run_is_named(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "reference_maps"), str(tmp_path), str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert f"{tmp_path}: no last.pt and exported models" in result.stderr
