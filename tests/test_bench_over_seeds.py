"""bench/over_seeds: image AUROC and a line's best recall over the mask draws a bench/accuracy run evaluated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def report(image_auroc: float, recall_at_5: float, false_alarms_at_5: float) -> dict:
    """The parts of an evaluate report the script reads (trainer/evaluate.py writes these keys)."""
    return {
        "overall": {"image_auroc": image_auroc},
        "threshold_choices": [
            {"target_false_alarm_rate": 0.01, "recall": 0.0, "false_alarm_rate": 0.0},
            {"target_false_alarm_rate": 0.05, "recall": recall_at_5, "false_alarm_rate": false_alarms_at_5},
        ],
    }


def over_seeds(*runs: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "over_seeds"), *map(str, runs)], capture_output=True, text=True, cwd=ROOT)


def test_it_averages_the_own_draw_and_every_other_seed(tmp_path):
    run = tmp_path / "kolektorsdd-cpu"
    for folder, values in [("eval", (0.76, 0.28, 0.029)), ("seeds/m-seed1", (0.70, 0.16, 0.029)), ("seeds/m-seed2", (0.73, 0.40, 0.0))]:
        (run / folder).mkdir(parents=True)
        (run / folder / "metrics.json").write_text(json.dumps(report(*values)))
    (run / "seeds" / "m-seed1.onnx").write_bytes(b"")  # the models beside the folders are not reports

    result = over_seeds(run)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"| {run} | 3 | 73.0 (70.0-76.0) | 28.0 (16.0-40.0) | 1.9 (0.0-2.9) |"


def test_a_folder_that_is_not_a_run_is_named_and_nothing_is_printed(tmp_path):
    good = tmp_path / "good"
    (good / "eval").mkdir(parents=True)
    (good / "eval" / "metrics.json").write_text(json.dumps(report(0.9, 0.5, 0.05)))
    result = over_seeds(good, tmp_path / "nothing")
    assert result.returncode == 1 and result.stdout == ""
    assert f"{tmp_path / 'nothing'}: no eval/metrics.json" in result.stderr
