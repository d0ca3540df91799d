"""`riad-edge demo`: the whole loop on what ships in the repo, with nothing of the user's.

A broker is started for the run, `riad-edge watch` subscribes to it the way a line
controller would, and `riad-edge run` inspects the bundled sample clip with the bundled
CPU model, publishing every defect. The user sees the alerts arrive over MQTT and finds
the heatmap overlays in a folder.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge.local_broker import LocalBroker, LocalBrokerError
from edge.runner import EXIT_BAD_INPUT, fail, run_inspection
from edge.sinks.snapshots import SNAPSHOT_NAME

# The sample and the model live in the repository checkout, not in an installed wheel.
REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "engines" / "bottle-cpu.onnx"
DEFAULT_SOURCE = REPO / "samples" / "bottle-line.mp4"
CAMERA_ID = "demo-line"
# The watcher is stopped with Ctrl-C (SIGINT), so that it prints what it has before it
# exits. A demo started in the background (`riad-edge demo &` in a script) has SIGINT
# ignored, which every child inherits; the watcher takes Python's handler back first.
WATCHER = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from edge.cli import app; app()"
EXIT_NO_BROKER = 4


def run_demo(model: Path, source: Path, out_dir: Path, view_port: int = 0) -> int:
    for path, what in ((model, "model"), (source, "sample clip")):
        if not path.exists():
            return fail(
                f"the {what} {path} is not here; the demo runs from a checkout of the repository "
                "(or pass --model and --source)",
                EXIT_BAD_INPUT,
            )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        earlier = set(out_dir.iterdir())  # snapshots of an earlier demo in the same folder are not this run's
    except OSError as exc:
        return fail(f"cannot use {out_dir} for the overlays: {exc}", EXIT_BAD_INPUT)

    with tempfile.TemporaryDirectory(prefix="riad-demo-") as tmp:
        try:
            broker = LocalBroker(Path(tmp) / "broker").start()
        except LocalBrokerError as exc:
            return fail(str(exc), EXIT_NO_BROKER)
        watcher = None
        try:
            print(f"broker: {broker.kind} on {broker.url} (started for this demo)")
            watcher = subprocess.Popen([sys.executable, "-c", WATCHER, "watch", "--broker", broker.url, "--camera-id", CAMERA_ID])
            time.sleep(1.0)  # let the subscriber connect before the first event
            print(f"watching: riad-edge watch --broker {broker.url}  (alerts below arrive over MQTT)")
            code = run_inspection(
                str(source),
                model,
                broker_url=broker.url,
                spool=Path(tmp) / "spool",
                camera_id=CAMERA_ID,
                save_dir=out_dir,
                view=("127.0.0.1", view_port) if view_port else None,
                console=False,
            )
            time.sleep(1.0)  # the last alerts are still on their way to the watcher
        finally:
            try:
                if watcher is not None:
                    watcher.send_signal(signal.SIGINT)
                    try:
                        watcher.wait(10)
                    except subprocess.TimeoutExpired:
                        watcher.kill()
                        watcher.wait()
            finally:
                broker.stop()
    if code == 0:
        print(f"heatmap overlays of the defective frames: {out_dir.resolve()}/")
        labels_file = source.with_suffix(".labels.txt")
        labels = read_labels(labels_file)
        if labels:
            flagged = {int(m[2]) for p in set(out_dir.iterdir()) - earlier if (m := SNAPSHOT_NAME.match(p.name))}
            print(compare_with_labels(flagged, labels, labels_file.name))
    return code


def read_labels(labels_file: Path) -> dict[int, str]:
    """frame index -> the image it shows, from the `<clip>.labels.txt` beside a sample clip
    (`3 broken_large/000.png`: images under good/ are good parts); {} when there is none."""
    try:
        lines = labels_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError):  # no labels, or not a labels file: nothing to compare
        return {}
    labels = {}
    for line in lines:
        index, _, name = line.strip().partition(" ")
        if index.isdigit() and name:
            labels[int(index)] = name.strip()
    return labels


def compare_with_labels(flagged: set[int], labels: dict[int, str], labels_name: str) -> str:
    """What the demo flagged against what each frame really shows, so the user can tell a
    caught defect from a false alarm without opening the overlays."""
    defective = {i for i, name in labels.items() if not name.startswith("good/")}
    good = set(labels) - defective

    def named(frames: set[int]) -> str:
        return ", ".join(f"frame {i} ({labels[i]})" for i in sorted(frames))

    missed, false_alarms = defective - flagged, flagged & good
    lines = [
        f"against {labels_name}: {len(defective) - len(missed)} of {len(defective)} defective frames flagged, "
        f"{len(false_alarms)} of {len(good)} good frames flagged"
    ]
    if missed:
        lines.append(f"  missed: {named(missed)}")
    if false_alarms:
        lines.append(f"  false alarms: {named(false_alarms)}")
    return "\n".join(lines)
