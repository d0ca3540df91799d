"""Chaos on a real mosquitto: riad-edge and the broker SIGKILLed and restarted at random (seeded)
points, a broker that stops answering, a spool disk that fills up; a few hundred defect events.

The promise under test (docs/mqtt.md, "Delivery"): every defect a run printed reached the
subscriber at least once, nothing stays stuck in the spool, and the spool is usable after.
Each run publishes under its own topic prefix (run0, run1...) into the one spool, so an
event is known by (prefix, frame) and leftovers of one run are delivered by a later one.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fill
from media import bottle_frames, write_video

from edge.sinks.spool import Spool

SEED = 11
FRAMES = 36  # per run; every frame is a defect (threshold 0)
RUNS = 9  # about 320 defect events
DEFECT_LINE = re.compile(r"^DEFECT line frame (\d+) ")


def start_run(clip: Path, model: Path, url: str, spool: Path, prefix: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from edge.cli import app; app()", "run", "--source", str(clip), "--model", str(model),
         "--threshold", "0", "--broker", url, "--camera-id", "line", "--topic-prefix", prefix, "--spool", str(spool)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def defects_until(process: subprocess.Popen, frames: set[int], count: int) -> None:
    """Reads the run's DEFECT lines into `frames` until `count` of them (or the run's end)."""
    while len(frames) < count:
        line = process.stdout.readline()
        if not line:
            return
        if match := DEFECT_LINE.match(line):
            frames.add(int(match.group(1)))


@pytest.fixture
def spool_disk(tmp_path: Path):
    """A 4 MB tmpfs for the spool, so a spell can fill its disk; a plain folder (no spell) without root."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=False).returncode:
        yield mount, False
        return
    yield mount, True
    subprocess.run(["umount", str(mount)], check=True)


def test_every_printed_defect_arrives_through_kills_a_silent_broker_and_a_full_disk(
    persistent_broker, subscribe, bottle_dir, tiny_onnx_model, tmp_path, spool_disk
):
    disk, can_fill = spool_disk
    spool = disk / "line.spool"
    clip = write_video(tmp_path / "line.avi", (bottle_frames(bottle_dir, 12) * 3)[:FRAMES], "MJPG")
    consumer = subscribe(persistent_broker, ["+/line/defect"], client_id="chaos-consumer", clean_session=False)
    rng = random.Random(SEED)
    printed: dict[str, set[int]] = {}
    actions = ["kill edge", "kill broker", "silent broker", "disk full", "kill edge", "kill broker", "calm", "kill edge", "calm"]
    rng.shuffle(actions)
    if not can_fill:
        actions = [a if a != "disk full" else "calm" for a in actions]
    assert len(actions) == RUNS

    def told(err: str) -> str:
        """The run's stderr, the broker's state and its log (without the autosave lines), to tell what happened."""
        log = [line for line in persistent_broker.log.read_text(errors="replace").splitlines() if "Saving in-memory" not in line]
        process = persistent_broker.process
        state = "none" if process is None else f"pid {process.pid}, exit status {process.poll()}"
        return f"{err}\n--- broker {state}; {persistent_broker.log} ---\n" + "\n".join(log[-60:])

    def broker_back() -> None:
        consumer._subscribed.clear()
        persistent_broker.start()
        assert consumer._subscribed.wait(20), "the consumer did not come back"

    for run, action in enumerate(actions):
        prefix = f"run{run}"
        frames = printed[prefix] = set()
        if action == "silent broker":  # stopped, not dead: TCP is accepted, nothing answers
            persistent_broker.process.send_signal(signal.SIGSTOP)
        process = start_run(clip, tiny_onnx_model, persistent_broker.url, spool, prefix)
        at = rng.randint(1, FRAMES - 2)
        defects_until(process, frames, at)
        if action == "kill edge":
            process.kill()
        elif action == "kill broker":
            persistent_broker.kill()
            defects_until(process, frames, rng.randint(at, FRAMES))
            broker_back()
        elif action == "disk full":
            fill(disk)
            defects_until(process, frames, rng.randint(at, FRAMES))
            (disk / "filler").unlink()
        defects_until(process, frames, FRAMES)
        _, err = process.communicate(timeout=60)
        if action == "silent broker":
            persistent_broker.process.send_signal(signal.SIGCONT)
            assert "sent no answer within 5 s (no CONNACK)" in err
        if action != "disk full":  # 4 MB holds every run's events: the spool's own files must not fill it
            assert "is full" not in err, told(err)
        if action == "kill edge":
            assert process.returncode == -signal.SIGKILL
        else:
            assert len(frames) == FRAMES, told(err)
            # 0, or 5 with messages left in the spool for the next run; never 6 (lost).
            assert process.returncode in (0, 5), told(err)
            assert "LOST" not in err and "DROPPED" not in err, told(err)

    # A last calm run delivers whatever the chaos left in the spool.
    process = start_run(clip, tiny_onnx_model, persistent_broker.url, spool, "final")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, told(err)
    printed["final"] = {int(m.group(1)) for m in map(DEFECT_LINE.match, out.splitlines()) if m}

    expected = {(prefix, frame) for prefix, frames in printed.items() for frame in frames}
    assert len(expected) > 250

    def received() -> set[tuple[str, int]]:
        return {(topic.split("/")[0], json.loads(payload)["frame_index"]) for topic, payload, _ in list(consumer.messages)}

    assert consumer.wait_for(lambda: expected <= received(), timeout=30), sorted(expected - received())[:20]
    kept = Spool(spool)  # usable: nothing stuck, nothing set aside, and it takes new messages
    assert (kept.depth(), kept.set_aside_count()) == (0, 0)
    kept.ack(kept.put("final/line/defect", b"{}", 1, False))
    kept.close()
