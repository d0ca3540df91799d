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
    return code
