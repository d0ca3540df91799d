"""Triggered mode: a trigger per part in, one verdict per trigger out, OK / NOK / error, over a real broker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import paho.mqtt.publish as mqtt_publish
import pytest

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.sinks.broker import parse_broker_url
from edge.manifest import Manifest, manifest_path
from edge.method.inspection import FrameJudge
from edge.method.roi import Roi
from edge.sources.cameras import open_source
from edge.station.config import CameraConfig, StationConfig
from edge.station.station import Station
from edge.station.trigger import parse_trigger
from edge.station.triggered import TriggeredCamera
from tests.conftest import OLD_BOTTLE_MODEL

VERDICTS = "riad/line1/verdict"
TRIGGER = "riad/line1/trigger"
# Test images the old bottle model (tests/data) judges far from its threshold (0.200): good 0.095-0.108, defective 0.27-0.38.
GOOD = ["good/000.png", "good/001.png", "good/003.png"]
DEFECTIVE = ["broken_large/000.png", "broken_large/001.png", "broken_large/003.png"]


def line_folder(bottle_dir: Path, folder: Path, images: list[str]) -> Path:
    """The parts in the order they pass the camera: one image per trigger."""
    folder.mkdir()
    for i, name in enumerate(images):
        shutil.copy(bottle_dir / "test" / name, folder / f"{i:03d}.png")
    return folder


def trigger(broker, payload, topic: str = TRIGGER) -> None:
    mqtt_publish.single(topic, payload, qos=1, hostname="127.0.0.1", port=broker.port)


class RunningStation:
    """A Station on its own thread, stopped at the end of the test."""

    def __init__(self, config: StationConfig, broker_url: str | None):
        self.station = Station(config, parse_broker_url(broker_url) if broker_url else None, console=False).__enter__()
        self.thread = threading.Thread(target=self.station.run)
        self.thread.start()
        if self.station.triggers is not None:
            assert self.station.triggers.subscribed.wait(10)

    def stop(self) -> None:
        self.station.stop()
        self.thread.join(30)
        self.station.close()


@pytest.fixture
def running():
    started: list[RunningStation] = []

    def start(config, broker_url=None) -> Station:
        started.append(RunningStation(config, broker_url))
        return started[-1].station

    yield start
    for s in started:
        s.stop()


def verdicts(consumer) -> list[dict]:
    return [json.loads(p) for p in consumer.on(VERDICTS)]


def test_one_verdict_per_trigger_ok_for_good_parts_nok_for_defective(broker, bottle_dir, tmp_path, subscribe, running):
    parts = [GOOD[0], DEFECTIVE[0], DEFECTIVE[1], GOOD[1]]
    source = line_folder(bottle_dir, tmp_path / "line", parts)
    consumer = subscribe(broker, [VERDICTS])
    camera = CameraConfig("line1", str(source), OLD_BOTTLE_MODEL, mode="triggered", deadline_s=60, spool=tmp_path / "line1.spool")
    running(StationConfig([camera]), broker.url)
    for i in range(len(parts)):
        trigger(broker, json.dumps({"part_id": f"part-{i}"}))
    assert consumer.wait_for(lambda: len(verdicts(consumer)) >= len(parts), timeout=60)
    got = verdicts(consumer)
    assert [v["part_id"] for v in got] == [f"part-{i}" for i in range(len(parts))]
    assert [v["verdict"] for v in got] == ["NOK" if p.startswith("broken") else "OK" for p in parts]
    threshold = got[0]["threshold"]
    for v in got:
        assert v["schema_version"] == 1 and v["camera_id"] == "line1" and v["model_id"].startswith("bottle-")
        assert v["error"] is None and v["frames"] == 1 and v["latency_ms"] > 0
        assert (v["score"] > threshold) == (v["verdict"] == "NOK") == bool(v["boxes"])
        for box in v["boxes"]:  # full-frame pixels (the bottle images are 900 x 900)
            assert 0 <= box["x"] < v["frame_width"] == 900 and 0 <= box["y"] < v["frame_height"] == 900


def test_one_triggered_camera_from_run_flags_crops_as_its_model_was_trained(broker, bottle_dir, tmp_path, subscribe, running, tiny_onnx_model):
    # `run --mode triggered` builds its one camera with roi_from_model, as a free-running run crops.
    manifest = Manifest.for_model(tiny_onnx_model)
    manifest.roi = Roi(100, 200, 600, 500).as_dict()
    manifest.save(manifest_path(tiny_onnx_model))
    source = line_folder(bottle_dir, tmp_path / "line", [DEFECTIVE[0]])
    consumer = subscribe(broker, [VERDICTS])
    camera = CameraConfig("line1", str(source), tiny_onnx_model, mode="triggered", deadline_s=60, spool=tmp_path / "s.spool",
                          roi_from_model=True)  # fmt: skip
    running(StationConfig([camera]), broker.url)
    trigger(broker, "p1")
    assert consumer.wait_for(lambda: len(verdicts(consumer)) >= 1, timeout=60)
    (verdict,) = verdicts(consumer)
    assert verdict["verdict"] == "NOK" and verdict["boxes"], verdict  # the tiny untrained net flags everything
    for box in verdict["boxes"]:  # within the crop, in the 900 x 900 frame's pixels
        assert 100 <= box["x"] and box["x"] + box["width"] <= 700 and 200 <= box["y"] and box["y"] + box["height"] <= 700


def test_watch_prints_each_parts_verdict(broker, bottle_dir, tmp_path, running):
    source = line_folder(bottle_dir, tmp_path / "line", [GOOD[0], DEFECTIVE[0]])
    camera = CameraConfig("line1", str(source), OLD_BOTTLE_MODEL, mode="triggered", deadline_s=60, spool=tmp_path / "s.spool")
    running(StationConfig([camera]), broker.url)
    watcher = subprocess.Popen([sys.executable, "-c", "from edge.cli import app; app()", "watch", "--broker", broker.url,
                                "--count", "4", "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert "line1  online  (retained)" in watcher.stdout.readline()  # subscribed
    for part in ("p1", "p2", "p3"):  # the folder holds two parts: p3 gets an error
        trigger(broker, part)
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    lines = out.splitlines()
    assert any("line1  OK  part p1  score " in line and " <= " in line and "ms after its trigger" in line for line in lines), out
    assert any("line1  NOK  part p2  score " in line and " > " in line for line in lines), out
    assert any("line1  error  part p3  " in line and "no more frames" in line for line in lines), out
    assert sum("DEFECT" in line for line in lines) == 1  # p2's defective frame, as for a free camera


def test_a_bare_part_id_and_several_frames_per_part(broker, bottle_dir, tmp_path, subscribe, running):
    source = line_folder(bottle_dir, tmp_path / "line", [GOOD[0], GOOD[1], DEFECTIVE[0]])
    consumer = subscribe(broker, [VERDICTS])
    camera = CameraConfig("line1", str(source), OLD_BOTTLE_MODEL, mode="triggered", deadline_s=60, spool=tmp_path / "s.spool")
    running(StationConfig([camera]), broker.url)
    trigger(broker, "A-17")  # plain text: what a simple PLC gateway sends
    trigger(broker, json.dumps({"part_id": 18, "frames": 2}))  # one defective frame of two: NOK
    assert consumer.wait_for(lambda: len(verdicts(consumer)) >= 2, timeout=60)
    first, second = verdicts(consumer)
    assert (first["part_id"], first["verdict"], first["frames"]) == ("A-17", "OK", 1)
    assert (second["part_id"], second["verdict"], second["frames"]) == ("18", "NOK", 2)


def test_triggers_it_cannot_serve_get_an_explicit_error(broker, bottle_dir, tmp_path, subscribe, running, tiny_onnx_model):
    source = line_folder(bottle_dir, tmp_path / "line", [GOOD[0], GOOD[1]])
    consumer = subscribe(broker, [VERDICTS])
    camera = CameraConfig("line1", str(source), tiny_onnx_model, mode="triggered", deadline_s=60, spool=tmp_path / "s.spool")
    running(StationConfig([camera]), broker.url)
    trigger(broker, json.dumps({"frames": 2}))  # no part id
    trigger(broker, json.dumps({"part_id": "p1", "frames": 0}))
    trigger(broker, json.dumps({"part_id": "p2", "deadline_ms": 0.001}))  # expired before its frame was taken
    trigger(broker, "p3")
    trigger(broker, "p4")  # the last image
    trigger(broker, "p5")  # the recorded line has no more parts
    assert consumer.wait_for(lambda: len(verdicts(consumer)) >= 6, timeout=60)
    got = {v["part_id"]: v for v in verdicts(consumer)}
    assert got[None]["verdict"] == "error" and "no part_id" in got[None]["error"]
    assert got["p1"]["verdict"] == "error" and "frames" in got["p1"]["error"]
    assert got["p2"]["verdict"] == "error" and "deadline passed" in got["p2"]["error"]
    assert got["p2"]["score"] is None  # no frame was taken for it: p3 gets the next part
    assert got["p3"]["error"] is None and got["p4"]["error"] is None
    assert got["p5"]["verdict"] == "error" and "no more frames" in got["p5"]["error"]


def test_a_camera_that_is_down_answers_every_trigger_with_an_error(broker, tmp_path, subscribe, running, tiny_onnx_model):
    consumer = subscribe(broker, [VERDICTS])
    camera = CameraConfig("line1", str(tmp_path / "unplugged.mp4"), tiny_onnx_model, mode="triggered", spool=tmp_path / "s.spool")
    station = running(StationConfig([camera]), broker.url)
    assert "line1" in station.down
    trigger(broker, "p1")
    assert consumer.wait_for(lambda: len(verdicts(consumer)) >= 1)
    (verdict,) = verdicts(consumer)
    assert verdict["verdict"] == "error" and verdict["error"].startswith("camera down") and verdict["score"] is None


def test_a_full_queue_answers_at_once_and_stopping_answers_the_rest(bottle_dir, tmp_path, tiny_onnx_model):
    backend = OnnxCpuBackend(tiny_onnx_model)
    source = open_source(str(line_folder(bottle_dir, tmp_path / "line", [GOOD[0]])))
    answered = []
    camera = TriggeredCamera("line1", source, FrameJudge(backend), answered.append, queue_size=2, deadline_s=60)
    for part in ("p1", "p2", "p3"):  # not running yet: the first two wait, the third finds the queue full
        camera.submit(parse_trigger(part.encode()))
    assert [(v.part_id, v.verdict) for v in answered] == [("p3", "error")]
    assert "queue full" in answered[0].error
    camera.stop()
    camera.run()  # stopped: the queued triggers are answered, not forgotten
    assert [(v.part_id, v.verdict) for v in answered[1:]] == [("p1", "error"), ("p2", "error")]
    assert all("stopped before inspecting" in v.error for v in answered[1:])
    camera.submit(parse_trigger(b"p4"))
    assert answered[-1].part_id == "p4" and answered[-1].verdict == "error"
    camera.close()


def test_a_trigger_that_waited_on_the_broker_past_its_deadline_is_an_error(bottle_dir, tmp_path, tiny_onnx_model):
    source = open_source(str(line_folder(bottle_dir, tmp_path / "line", [GOOD[0], GOOD[1]])))
    answered = []
    camera = TriggeredCamera("line1", source, FrameJudge(OnnxCpuBackend(tiny_onnx_model)), answered.append, deadline_s=30)
    camera.submit(parse_trigger(json.dumps({"part_id": "stale", "epoch": time.time() - 60}).encode()))
    camera.submit(parse_trigger(json.dumps({"part_id": "fresh", "epoch": time.time()}).encode()))
    serving = threading.Thread(target=camera.run)
    serving.start()
    try:
        assert consumer_waits(lambda: len(answered) == 2, timeout=30)
    finally:
        camera.stop()
        serving.join(10)
        camera.close()
    stale, fresh = answered
    assert (stale.part_id, stale.verdict) == ("stale", "error") and "deadline passed" in stale.error
    assert stale.latency_s >= 60
    assert (fresh.part_id, fresh.error) == ("fresh", None)


def test_a_trigger_the_broker_delivers_again_is_answered_once(bottle_dir, tmp_path, tiny_onnx_model):
    source = open_source(str(line_folder(bottle_dir, tmp_path / "line", [GOOD[0]])))
    answered = []
    camera = TriggeredCamera("line1", source, FrameJudge(OnnxCpuBackend(tiny_onnx_model)), answered.append)
    camera.submit(parse_trigger(b"p1"))
    camera.submit(parse_trigger(b"p1", redelivered=True))  # the DUP flag: a resend of a trigger we hold
    camera.submit(parse_trigger(b"p2", redelivered=True))  # DUP, but new to us: served
    camera.submit(parse_trigger(b"p1"))  # not a resend: the line asks again, and gets an answer
    camera.stop()
    camera.run()
    camera.close()
    assert [v.part_id for v in answered] == ["p1", "p2", "p1"]


@pytest.mark.parametrize(
    "payload, part_id, problem",
    [
        (b"1234", "1234", None),
        (b'{"part_id": "A1", "frames": 2, "deadline_ms": 250}', "A1", None),
        (b'"quoted"', "quoted", None),
        # Plain text is the part id as written, however JSON would read it.
        (b"4711.10\n", "4711.10", None),
        (b"1e5", "1e5", None),
        (b"true", "true", None),
        (b"0012", "0012", None),
        (b'"unterminated', '"unterminated', None),
        (b'{"part_id": "A1",}', None, "not valid JSON"),  # a typo in a JSON trigger is named, not taken as a part id
        (b"", None, "no part_id"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"part_id": true}', None, "no part_id"),
        (b'{"part_id": "A1", "frames": 1.5}', "A1", "frames"),
        (b'{"part_id": "A1", "deadline_ms": -1}', "A1", "deadline_ms"),
        (b"\xff\xfe", None, "UTF-8"),
        (b'{"part_id": "A1", "epoch": "yesterday"}', "A1", "epoch"),
    ],
)
def test_trigger_payloads(payload, part_id, problem):
    parsed = parse_trigger(payload)
    assert parsed.part_id == part_id
    assert (parsed.problem is None) if problem is None else (problem in parsed.problem)


def test_no_verdict_is_lost_across_a_broker_crash(persistent_broker, bottle_dir, tmp_path, subscribe, running, tiny_onnx_model):
    source = line_folder(bottle_dir, tmp_path / "line", GOOD + DEFECTIVE)
    # A dependable consumer (the reject gate's bridge) keeps a persistent session.
    consumer = subscribe(persistent_broker, [VERDICTS], client_id="gate", clean_session=False)
    camera = CameraConfig("line1", str(source), tiny_onnx_model, mode="triggered", deadline_s=120, spool=tmp_path / "s.spool")
    station = running(StationConfig([camera]), persistent_broker.url)
    cam = station.triggered["line1"]
    for i in range(2):
        trigger(persistent_broker, f"part-{i}")
    assert consumer.wait_for(lambda: cam.triggers_received == 2)
    persistent_broker.kill()
    # Parts whose triggers were in hand when the broker died: their verdicts wait in the spool.
    for i in range(2, 4):
        cam.submit(parse_trigger(f"part-{i}".encode()))
    assert consumer.wait_for(lambda: sum(cam.stats.snapshot()[k] for k in ("ok", "nok", "error")) == 4, timeout=60)
    assert station.publishers["line1"].spool.depth() >= 2
    persistent_broker.start()
    for i in range(4, 6):  # the station's trigger session survived the crash too
        trigger(persistent_broker, f"part-{i}")
    assert consumer.wait_for(lambda: len({v["part_id"] for v in verdicts(consumer)}) >= 6, timeout=60)
    first: dict[str, str] = {}
    for v in verdicts(consumer):
        first.setdefault(v["part_id"], v["verdict"])
    assert list(first) == [f"part-{i}" for i in range(6)]  # in order, none lost
    assert "error" not in first.values()


def test_one_camera_triggered_from_the_command_line(broker, bottle_dir, tmp_path, subscribe, tiny_onnx_model):
    command = [sys.executable, "-c", "from edge.cli import app; app()", "run", "--mode", "triggered"]
    source = line_folder(bottle_dir, tmp_path / "line", [GOOD[0]])
    refused = subprocess.run([*command, "--source", str(source), "--model", str(tiny_onnx_model)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "need a broker to receive triggers" in refused.stderr
    consumer = subscribe(broker, [VERDICTS])
    args = ["--source", source, "--model", tiny_onnx_model, "--camera-id", "line1", "--broker", broker.url, "--spool", tmp_path / "s.spool"]
    process = subprocess.Popen([*command, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=os.environ | {"PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            if line.startswith("triggers: listening on riad/line1/trigger"):
                break
        trigger(broker, "p1")
        trigger(broker, "p2")  # the folder has one part: p2 gets an error
        assert consumer.wait_for(lambda: len(verdicts(consumer)) >= 2, timeout=60)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    first, second = verdicts(consumer)
    assert first["part_id"] == "p1" and first["error"] is None
    assert second["part_id"] == "p2" and second["verdict"] == "error"
    assert "VERDICT line1 part p2 error" in out and "'error': 1" in out


def test_a_live_camera_answers_with_a_frame_taken_after_the_trigger_and_errors_when_it_drops(bottle_dir, tmp_path):
    from media import bottle_frames, write_video

    from edge.sources.cameras import CaptureSource
    from edge.station.triggered import FrameGrabber, NoFrameError

    clip = write_video(tmp_path / "cam.avi", bottle_frames(bottle_dir, 3), "MJPG")
    unplugged = threading.Event()
    failed_opens = []

    def open_capture():  # a camera whose stream loops, until it is unplugged: then every reconnect fails
        if unplugged.is_set():
            failed_opens.append(1)
            return cv2.VideoCapture(str(tmp_path / "unplugged.avi"))
        return cv2.VideoCapture(str(clip))

    camera = CaptureSource("camera 7", open_capture, live=True, camera_id="cam7", backoff=(0.01, 0.01))
    grabber = FrameGrabber(camera)
    try:
        first = grabber.next_after(0.0, timeout=10)
        assert first.captured_at > 0.0
        second = grabber.next_after(first.captured_at, timeout=10)  # a frame per request, never the same twice
        assert second.captured_at > first.captured_at and second.index > first.index
        unplugged.set()
        assert consumer_waits(lambda: len(failed_opens) > 0)  # the stream has ended: the camera is reconnecting
        asked = time.monotonic()
        with pytest.raises(NoFrameError, match=r"no frame from camera 7 within 300 ms \(camera down or reconnecting\?\)"):
            grabber.next_after(asked, timeout=0.3)
    finally:
        grabber.close()


def consumer_waits(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()
