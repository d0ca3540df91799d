"""bench/train_step: the trainer's step timed three ways on real bottle images."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_it_times_the_trainers_step_three_ways(bottle_dir):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "train_step"), "--steps", "1", "--blocks", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = re.findall(r"^\| (.+?) \| (\d+) \| ([\d.]+)x \|$", run.stdout, re.MULTILINE)
    assert [name for name, _, _ in rows] == ["float32", "float32, channels-last", "bfloat16 autocast, channels-last"]
    assert all(int(ms) > 0 for _, ms, _ in rows) and rows[0][2] == "1.00"
    assert "recipe cpu: width 16, batch 4 x 3 masked copies, 160x160 images" in run.stdout


def test_compile_adds_the_net_and_loss_compiled_by_torch_compile(bottle_dir):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "train_step"), "--steps", "1", "--blocks", "1", "--compile"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = re.findall(r"^\| (.+?) \| (\d+) \| ([\d.]+)x \|$", run.stdout, re.MULTILINE)
    assert [name for name, _, _ in rows][-1] == "float32, channels-last, torch.compile" and int(rows[-1][1]) > 0
