"""bench/soak: the real CLI run with every sink on, its memory read from /proc as it goes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_it_runs_the_cli_with_every_sink_and_reports_its_memory():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "soak"), "--frames", "200"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    messages = int(re.search(r"^riad-edge run: 200 frames of bottle-line.mp4 in \d+ s, (\d+) MQTT messages read back$", run.stdout, re.M)[1])
    assert messages > 20  # the sample's defective frames reached the broker: events, overlays, stats
    warm, end, peak = map(int, re.search(r"^resident memory: (\d+) MiB after 20 frames, (\d+) MiB at \d+, peak (\d+) MiB$", run.stdout, re.M).groups())
    assert 50 < warm <= peak and end <= peak < 4000
    assert re.search(r"^growth over the second half: [+-]\d+\.\d\d MiB per 1,000 frames$", run.stdout, re.M)
