"""bench/over_seeds: image AUROC and a line's best recall over the mask draws a bench/accuracy run evaluated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def report(image_auroc: float, recall_at_5: float, false_alarms_at_5: float, recall: float = 0.5,
           false_alarms: float = 0.1) -> dict:
    """The parts of an evaluate report the script reads (trainer/evaluate.py writes these keys)."""
    return {
        "overall": {"image_auroc": image_auroc, "recall": recall, "false_alarm_rate": false_alarms},
        "threshold_choices": [
            {"target_false_alarm_rate": 0.01, "recall": 0.0, "false_alarm_rate": 0.0},
            {"target_false_alarm_rate": 0.05, "recall": recall_at_5, "false_alarm_rate": false_alarms_at_5},
        ],
    }


def over_seeds(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "over_seeds"), *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def write_reports(run: Path, reports: dict[str, tuple[float, float, float]]) -> None:
    for folder, values in reports.items():
        (run / folder).mkdir(parents=True)
        (run / folder / "metrics.json").write_text(json.dumps(report(*values)))


def write_scored_run(run: Path, good: list[float], defective: list[float]) -> None:
    """One draw's report with per-image scores, as `riad-trainer evaluate` writes them."""
    images = [{"image": f"test/good/{i}.png", "defect_type": "good", "score": score} for i, score in enumerate(good)]
    images += [{"image": f"test/crack/{i}.png", "defect_type": "crack", "score": score} for i, score in enumerate(defective)]
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(json.dumps(report(0.5, 0.5, 0.0) | {"images": images}))


def test_it_averages_the_own_draw_and_every_other_seed(tmp_path):
    run = tmp_path / "kolektorsdd-cpu"
    write_reports(run, {"eval": (0.76, 0.28, 0.029), "seeds/kolektorsdd-cpu-seed1": (0.70, 0.16, 0.029),
                        "seeds/kolektorsdd-cpu-seed2": (0.73, 0.40, 0.0)})
    (run / "seeds" / "kolektorsdd-cpu-seed1.onnx").write_bytes(b"")  # the models beside the folders are not reports

    result = over_seeds(run)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"| {run} | 3 | 73.0 (70.0-76.0) | 28.0 (16.0-40.0) | 1.9 (0.0-2.9) |"


def test_models_exported_with_other_options_are_not_mixed_into_the_methods_draws(tmp_path):
    """`bench/accuracy --resume --reference-statistic max` leaves eval-refmax and seeds/<run>-refmax-seed<N> beside
    the method's own; each is averaged alone, the second with --variant."""
    run = tmp_path / "bottle-cpu"
    write_reports(run, {"eval": (0.99, 0.96, 0.05), "seeds/bottle-cpu-seed1": (0.97, 0.90, 0.05),
                        "eval-refmax": (0.80, 0.50, 0.05), "seeds/bottle-cpu-refmax-seed1": (0.70, 0.30, 0.0),
                        "seeds/bottle-cpu-refmax-int8": (0.10, 0.10, 0.0)})  # not a seed's folder

    method = over_seeds(run)
    assert method.returncode == 0, method.stderr
    assert method.stdout.splitlines()[-1] == f"| {run} | 2 | 98.0 (97.0-99.0) | 93.0 (90.0-96.0) | 5.0 (5.0-5.0) |"
    refmax = over_seeds(run, "--variant", "refmax")
    assert refmax.returncode == 0, refmax.stderr
    assert refmax.stdout.splitlines()[-1] == f"| {run}-refmax | 2 | 75.0 (70.0-80.0) | 40.0 (30.0-50.0) | 2.5 (0.0-5.0) |"
    missing = over_seeds(run, "--variant=-k4-8-16")  # with its dash, as the folders have it
    assert missing.returncode == 1 and "no eval-k4-8-16/metrics.json" in missing.stderr


def test_a_folder_that_is_not_a_run_is_named_and_nothing_is_printed(tmp_path):
    good = tmp_path / "good"
    (good / "eval").mkdir(parents=True)
    (good / "eval" / "metrics.json").write_text(json.dumps(report(0.9, 0.5, 0.05)))
    result = over_seeds(good, tmp_path / "nothing")
    assert result.returncode == 1 and result.stdout == ""
    assert f"{tmp_path / 'nothing'}: no eval/metrics.json" in result.stderr


def test_line_calibration_sets_the_threshold_on_half_the_good_images_and_judges_the_rest(tmp_path):
    """With every good score 0.1, calibrate's rule puts the threshold at 0.1 whichever half it sees:
    the other half passes (0 false alarms) and one of the two defects (0.05, 0.2) is caught."""
    run = tmp_path / "bottle-cpu"
    write_scored_run(run, good=[0.1] * 4, defective=[0.05, 0.2])

    result = over_seeds(run, "--line-calibration")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "calibrated on half the good" in lines[0] and lines[1].count("--:") == 6
    assert lines[-1] == f"| {run} | 1 | 50.0 (50.0-50.0) | 50.0 (50.0-50.0) | 0.0 (0.0-0.0) | 0.0 | 50.0 |"


def test_at_threshold_averages_each_draws_recall_and_false_alarms_at_its_own_threshold(tmp_path):
    run = tmp_path / "bottle-cpu"
    write_reports(run, {"eval": (0.99, 0.96, 0.05, 1.0, 0.10), "seeds/bottle-cpu-seed1": (0.97, 0.90, 0.05, 0.9, 0.20)})
    result = over_seeds(run, "--at-threshold")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "recall at the model's threshold" in lines[0] and lines[1].count("--:") == 6
    assert lines[-1] == (f"| {run} | 2 | 98.0 (97.0-99.0) | 93.0 (90.0-96.0) | 5.0 (5.0-5.0) "
                         "| 95.0 (90.0-100.0) | 15.0 (10.0-20.0) |")


def test_slipped_defect_counts_the_defects_calibrate_names_among_the_good_images(tmp_path):
    """Good scores 0.010 to 0.014: a defect at 0.5 is far out and named, one at 0.015 barely
    above them is not; one of the two."""
    run = tmp_path / "bottle-cpu"
    write_scored_run(run, good=[0.010 + 0.001 * (i % 5) for i in range(20)], defective=[0.5, 0.015])

    result = over_seeds(run, "--slipped-defect")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "named by calibrate" in lines[0] and lines[1].count("--:") == 5
    assert lines[-1] == f"| {run} | 1 | 50.0 (50.0-50.0) | 50.0 (50.0-50.0) | 0.0 (0.0-0.0) | 50.0 (50.0-50.0) |"
