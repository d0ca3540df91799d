"""MQTT commands (detect, threshold, snapshot) on a real broker, to a pipeline on a live camera.

The camera loops a real MJPG clip; commands are sent as Home Assistant or mosquitto_pub
would, and every one is answered on `command/response`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as paho
import paho.mqtt.publish as mqtt_publish
import pytest
from media import LoopingCamera, bottle_frames, write_video

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.sinks.broker import parse_broker_url
from edge.method.inspection import FrameJudge
from edge.sinks.mqtt import MqttPublisher
from edge.pipeline import Pipeline
from edge.sinks.commands import BURST, RATE_PER_S, CommandListener, camera_controls, parse_threshold, shown_payload, Refused

BASE = "riad/line1"
RESPONSE = f"{BASE}/command/response"
MANIFEST_THRESHOLD = 0.5  # the tiny test model's
START_THRESHOLD = 0.01  # far below the tiny model's scores: every frame is defective until a command says otherwise


class Inspector:
    """One free-running camera wired as `riad-edge run --broker ... [--commands]` wires it, run in a thread."""

    def __init__(self, broker, camera: LoopingCamera, model: Path, spool: Path, enabled: bool):
        self.backend = OnnxCpuBackend(model, threads=1)
        self.pipeline = Pipeline(camera.source, self.backend, judge=FrameJudge(self.backend, threshold=START_THRESHOLD))
        self.publisher = MqttPublisher(parse_broker_url(broker.url), "line1", spool)
        self.controls = camera_controls(self.publisher, self.pipeline.judge, self.pipeline.defects)
        self.results = []
        self.pipeline.sinks.append(self)  # records every judged frame's threshold
        self.pipeline.add_sink(self.controls.snapshot)
        self.pipeline.add_sink(self.controls.lifecycle)
        self.listener = CommandListener(parse_broker_url(broker.url), "riad", {"line1": self.controls}, enabled)
        assert self.listener.subscribed.wait(10)
        self._thread = threading.Thread(target=self.pipeline.run)
        self._thread.start()

    def handle(self, result) -> None:
        self.results.append(result)

    def close(self) -> None:
        """The pipeline's sinks are closed by its run."""

    def stop(self) -> None:
        self.listener.close()
        self.pipeline.stop()
        self._thread.join(30)


@pytest.fixture
def camera(bottle_dir, tmp_path):
    return LoopingCamera(write_video(tmp_path / "cam.avi", bottle_frames(bottle_dir, 4), "MJPG"), tmp_path / "unplugged.avi")


@pytest.fixture
def inspector(broker, camera, tiny_onnx_model, tmp_path, request):
    made = Inspector(broker, camera, tiny_onnx_model, tmp_path / "spool.db", enabled=getattr(request, "param", True))
    yield made
    made.stop()


def send(broker, command: str, payload, retain: bool = False) -> None:
    mqtt_publish.single(f"{BASE}/{command}/set", payload, qos=1, retain=retain, hostname="127.0.0.1", port=broker.port)


def answers(consumer) -> list[dict]:
    return [json.loads(p) for p in consumer.on(RESPONSE)]


def ask(broker, consumer, command: str, payload) -> dict:
    """Sends a command and returns its response."""
    before = len(consumer.on(RESPONSE))
    send(broker, command, payload)
    assert consumer.wait_for(lambda: len(consumer.on(RESPONSE)) > before), f"no response to {command} {payload!r}"
    return answers(consumer)[before]


def latest(consumer, topic: str) -> bytes | None:
    values = consumer.on(topic)
    return values[-1] if values else None


def test_detect_off_pauses_judging_and_ends_the_open_defect_and_on_resumes(broker, inspector, subscribe):
    consumer = subscribe(broker, [f"{BASE}/#"])
    assert consumer.wait_for(lambda: latest(consumer, f"{BASE}/detect/state") == b"ON")  # retained, from the start
    assert consumer.wait_for(lambda: consumer.on(f"{BASE}/events"))  # a defect is open

    answer = ask(broker, consumer, "detect", "OFF")
    assert answer | {"timestamp": None, "epoch": None} == {
        "schema_version": 1, "camera_id": "line1", "command": "detect", "payload": "OFF", "ok": True,
        "reason": "detection is OFF: frames are read and not judged", "timestamp": None, "epoch": None,
    }  # fmt: skip
    assert consumer.wait_for(lambda: latest(consumer, f"{BASE}/detect/state") == b"OFF")
    assert consumer.wait_for(lambda: json.loads(consumer.on(f"{BASE}/events")[-1])["type"] == "end")
    assert json.loads(consumer.on(f"{BASE}/events")[-1])["end_reason"] == "paused"
    assert consumer.wait_for(lambda: latest(consumer, f"{BASE}/defect/active") == b"OFF")
    stats = inspector.pipeline.stats
    judged, events = stats.frames_processed, len(consumer.on(f"{BASE}/defect"))
    paused = stats.frames_paused
    assert consumer.wait_for(lambda: stats.frames_paused > paused + 5)  # the camera is still read
    assert stats.frames_processed <= judged + 1  # at most the frame being judged as the command came
    assert len(consumer.on(f"{BASE}/defect")) <= events + 1
    assert stats.snapshot()["detecting"] is False

    refused = ask(broker, consumer, "snapshot", "PRESS")
    assert not refused["ok"] and "detection is OFF" in refused["reason"]

    assert ask(broker, consumer, "detect", " on\n")["ok"]  # case and whitespace as a hand-typed payload has them
    assert consumer.wait_for(lambda: latest(consumer, f"{BASE}/detect/state") == b"ON")
    assert consumer.wait_for(lambda: [json.loads(p)["type"] for p in consumer.on(f"{BASE}/events")].count("new") == 2)
    lives = {json.loads(p)["defect_id"] for p in consumer.on(f"{BASE}/events")}
    assert len(lives) == 2  # judging again starts a new defect
    assert stats.snapshot()["detecting"] is True


def test_threshold_set_changes_the_decision_at_once(broker, inspector, subscribe):
    consumer = subscribe(broker, [f"{BASE}/threshold/state", RESPONSE])
    assert consumer.wait_for(lambda: latest(consumer, f"{BASE}/threshold/state") == repr(START_THRESHOLD).encode())
    answer = ask(broker, consumer, "threshold", "0.3")
    assert answer["ok"] and answer["reason"].startswith("threshold is 0.3 until the inspector restarts")
    assert consumer.wait_for(lambda: latest(consumer, f"{BASE}/threshold/state") == b"0.3")
    changed_at = len(inspector.results)
    assert consumer.wait_for(lambda: len(inspector.results) > changed_at + 3)
    thresholds = [r.threshold for r in inspector.results]
    assert thresholds[0] == START_THRESHOLD and thresholds[-1] == 0.3
    assert thresholds[changed_at + 1 :] == [0.3] * len(thresholds[changed_at + 1 :])  # never back
    assert all(r.is_defect == (r.score > 0.3) for r in inspector.results[changed_at + 1 :])


def test_snapshot_publishes_the_next_frame_with_its_anomaly_map_retained(broker, inspector, subscribe):
    consumer = subscribe(broker, [RESPONSE])
    answer = ask(broker, consumer, "snapshot", "PRESS")
    assert answer["ok"] and answer["reason"] == f"the frame judged next goes to {BASE}/snapshot"
    live = subscribe(broker, [f"{BASE}/snapshot"])
    assert live.wait_for(lambda: live.messages)  # live, or retained if it went out before this subscription
    later = subscribe(broker, [f"{BASE}/snapshot"])  # a dashboard that starts afterwards still gets it
    assert later.wait_for(lambda: later.messages)
    topic, jpeg, retained = later.messages[0]
    assert retained and jpeg == live.messages[-1][1]
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == inspector.results[-1].frame.shape


HOSTILE = [
    ("detect", b"MAYBE", "payload must be ON or OFF"),
    ("detect", b"", "payload must be ON or OFF"),
    ("detect", b"#", "payload must be ON or OFF"),
    ("threshold", b"nan", "payload must be a number such as 0.25"),
    ("threshold", b"inf", "payload must be a number such as 0.25"),
    ("threshold", b"0x1p-2", "payload must be a number such as 0.25"),
    ("threshold", b"1_000", "payload must be a number such as 0.25"),
    ("threshold", b"+", "payload must be a number such as 0.25"),
    ("threshold", b"riad/+/threshold/#", "payload must be a number such as 0.25"),
    ("threshold", b"1e999", "threshold must be a positive finite number, not 1e999"),
    ("threshold", b"0", "threshold must be a positive finite number, not 0"),
    ("threshold", b"-0.3", "threshold must be a positive finite number, not -0.3"),
    ("threshold", b"5.01", "threshold 5.01 is outside 0.05 to 5 (1/10 to 10 times the model's calibrated 0.5)"),
    ("threshold", b"0.0499", "threshold 0.0499 is outside 0.05 to 5"),
    ("threshold", b"\xff\xfe\x00garbage", "payload is not UTF-8 text"),
    ("threshold", b"0" * 100_000, "payload too long: 100000 bytes, at most 256"),
]


def test_malformed_commands_are_refused_with_their_reason_and_change_nothing(broker, inspector, subscribe):
    consumer = subscribe(broker, [RESPONSE])
    for command, payload, reason in HOSTILE:
        answer = ask(broker, consumer, command, payload)
        assert (answer["command"], answer["ok"]) == (command, False)
        assert answer["reason"].startswith(reason), (payload[:20], answer["reason"])
        assert answer["payload"] == shown_payload(payload) and len(answer["payload"]) < 100
    assert answers(consumer)[-1]["payload"] == "0" * 64 + "... (100000 bytes)"
    assert "\x00" not in answers(consumer)[-2]["payload"]
    assert inspector.pipeline.judge.enabled and inspector.pipeline.judge.threshold == START_THRESHOLD
    states = subscribe(broker, [f"{BASE}/detect/state", f"{BASE}/threshold/state"])
    assert states.wait_for(lambda: len(states.messages) == 2)
    assert {p for _, p, _ in states.messages} == {b"ON", repr(START_THRESHOLD).encode()}


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400", " ", "0.5.1", "1,5", "½", "٣"])
def test_threshold_parsing_takes_plain_decimal_numbers_only(text):
    with pytest.raises(Refused):
        parse_threshold(text.strip(), 0.5)
    assert parse_threshold("0.25", 0.5) == parse_threshold("+.25", 0.5) == parse_threshold("2.5E-1", 0.5) == 0.25


@pytest.mark.parametrize("inspector", [False], indirect=True)
def test_commands_are_refused_until_enabled_and_say_how(broker, inspector, subscribe):
    consumer = subscribe(broker, [RESPONSE, f"{BASE}/detect/state"])
    for command, payload in (("detect", "OFF"), ("threshold", "0.3"), ("snapshot", "PRESS")):
        answer = ask(broker, consumer, command, payload)
        assert not answer["ok"] and answer["reason"] == "commands are off: start riad-edge run with --commands to allow them"
    assert inspector.pipeline.judge.enabled and inspector.pipeline.judge.threshold == START_THRESHOLD
    assert consumer.on(f"{BASE}/detect/state") == [b"ON"]


def test_a_retained_command_left_on_the_broker_is_not_obeyed_at_start(broker, camera, tiny_onnx_model, tmp_path, subscribe):
    send(broker, "detect", "OFF", retain=True)  # someone's mistake, waiting for every future start
    consumer = subscribe(broker, [RESPONSE])
    made = Inspector(broker, camera, tiny_onnx_model, tmp_path / "spool.db", enabled=True)
    try:
        assert consumer.wait_for(lambda: consumer.on(RESPONSE))
        (answer,) = answers(consumer)
        assert not answer["ok"] and answer["reason"].startswith("retained command ignored")
        assert made.pipeline.judge.enabled
        assert consumer.wait_for(lambda: made.pipeline.stats.frames_processed > 3)
    finally:
        made.stop()
        send(broker, "detect", b"", retain=True)  # clears it


def test_a_flood_of_commands_is_cut_to_the_rate_and_inspection_goes_on(broker, inspector, subscribe):
    consumer = subscribe(broker, [RESPONSE])
    flooder = paho.Client(paho.CallbackAPIVersion.VERSION2)
    flooder.connect("127.0.0.1", broker.port)
    flooder.loop_start()
    started = time.monotonic()
    try:
        for _ in range(500):
            flooder.publish(f"{BASE}/threshold/set", "0.3", qos=0)
        flooder.publish(f"{BASE}/threshold/set", "0.3", qos=1).wait_for_publish(10)
    finally:
        flooder.disconnect()
        flooder.loop_stop()
    time.sleep(0.5)
    elapsed = time.monotonic() - started
    assert BURST <= len(answers(consumer)) <= BURST + RATE_PER_S * elapsed + 1
    processed = inspector.pipeline.stats.frames_processed
    assert consumer.wait_for(lambda: inspector.pipeline.stats.frames_processed > processed + 3)
    time.sleep(1.0)  # the bucket refills
    assert ask(broker, consumer, "detect", "ON")["ok"]


def test_commands_and_states_come_back_after_the_broker_restarts(broker, inspector, subscribe):
    consumer = subscribe(broker, [RESPONSE])
    assert ask(broker, consumer, "detect", "OFF")["ok"]
    broker.restart()  # the broker forgets everything retained: the inspector publishes its states again
    later = subscribe(broker, [f"{BASE}/detect/state", RESPONSE])
    assert later.wait_for(lambda: latest(later, f"{BASE}/detect/state") == b"OFF", timeout=30)
    # A command sent while the inspector reconnects is lost with its clean session: it gets no
    # response, so the sender tries again, as this loop does.
    deadline = time.monotonic() + 30
    while not later.on(RESPONSE) and time.monotonic() < deadline:
        send(broker, "detect", "ON")
        later.wait_for(lambda: later.on(RESPONSE), timeout=0.5)
    assert json.loads(later.on(RESPONSE)[0])["ok"] and inspector.pipeline.judge.enabled


@pytest.mark.parametrize("enabled", [True, False])
def test_riad_edge_run_obeys_commands_only_with_the_flag(broker, http_camera, tiny_onnx_model, tmp_path, subscribe, enabled):
    consumer = subscribe(broker, [f"{BASE}/#"])
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--source", http_camera, "--model", str(tiny_onnx_model), "--broker", broker.url,
         "--camera-id", "line1", "--spool", str(tmp_path / "spool"), "--threshold", "0"] + (["--commands"] if enabled else []),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert consumer.wait_for(lambda: consumer.on(f"{BASE}/events"), timeout=60), "no defect from the live camera"
        deadline = time.monotonic() + 20  # the command client may still be subscribing: ask until answered
        while not consumer.on(RESPONSE) and time.monotonic() < deadline:
            send(broker, "detect", "OFF")
            consumer.wait_for(lambda: consumer.on(RESPONSE), timeout=0.5)
        answer = answers(consumer)[0]
        assert answer["ok"] is enabled
        assert consumer.wait_for(lambda: latest(consumer, f"{BASE}/detect/state") == (b"OFF" if enabled else b"ON"))
        if enabled:  # stop only once a frame has met the pause (the stats say so every 10 s)
            assert consumer.wait_for(lambda: any(json.loads(m)["pipeline"]["frames_paused"] > 0 for m in consumer.on(f"{BASE}/stats")), timeout=30)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"commands {'on' if enabled else 'off (--commands)'}" in out
    assert consumer.wait_for(lambda: latest(consumer, f"{BASE}/available") == b"offline")
    final = json.loads(consumer.on(f"{BASE}/stats")[-1])["pipeline"]
    assert final["detecting"] is not enabled and (final["frames_paused"] > 0) is enabled
    last = json.loads(consumer.on(f"{BASE}/events")[-1])
    assert last["type"] == "end" and last["end_reason"] == ("paused" if enabled else "stopped")
    assert latest(consumer, f"{BASE}/defect/active") == b"OFF"


def test_a_station_obeys_commands_per_camera_and_a_triggered_part_is_one_defect_life(broker, bottle_dir, tmp_path, subscribe):
    import shutil

    from edge.station.config import CameraConfig, StationConfig
    from edge.station.station import Station

    from tests.conftest import OLD_BOTTLE_MODEL as model  # threshold 0.1995
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, name in enumerate(["broken_large/000.png", "good/000.png", "broken_large/003.png"]):  # 0.269, 0.095, 0.379
        shutil.copy(bottle_dir / "test" / name, parts / f"{i}.png")
    free = tmp_path / "free"
    free.mkdir()
    shutil.copy(bottle_dir / "test" / "good" / "002.png", free / "0.png")
    config = StationConfig([
        CameraConfig("line1", str(parts), model, mode="triggered", deadline_s=60, spool=tmp_path / "line1.spool"),
        CameraConfig("cam2", str(free), model, spool=tmp_path / "cam2.spool"),
    ])  # fmt: skip
    consumer = subscribe(broker, ["riad/+/#"])
    station = Station(config, parse_broker_url(broker.url), console=False, commands=True).__enter__()
    runner = threading.Thread(target=station.run)
    runner.start()

    def part(part_id: str) -> dict:
        before = len(consumer.on(f"{BASE}/verdict"))
        mqtt_publish.single(f"{BASE}/trigger", part_id, qos=1, hostname="127.0.0.1", port=broker.port)
        assert consumer.wait_for(lambda: len(consumer.on(f"{BASE}/verdict")) > before, timeout=60)
        return json.loads(consumer.on(f"{BASE}/verdict")[-1])

    try:
        assert station.commands.subscribed.wait(10) and station.triggers.subscribed.wait(10)
        assert consumer.wait_for(lambda: consumer.on("riad/cam2/detect/state") == [b"ON"] and consumer.on(f"{BASE}/detect/state") == [b"ON"])
        assert part("p1")["verdict"] == "NOK"
        # `end` on events, then defect/active OFF: wait for the last of them, they arrive in order.
        assert consumer.wait_for(lambda: len(consumer.on(f"{BASE}/events")) == 2 and len(consumer.on(f"{BASE}/defect/active")) == 3)
        (defect,) = [json.loads(p) for p in consumer.on(f"{BASE}/defect")]
        life = [json.loads(p) for p in consumer.on(f"{BASE}/events")]
        assert [(e["type"], e["end_reason"], e["defect_id"]) for e in life] == [
            ("new", None, defect["defect_id"]), ("end", "verdict", defect["defect_id"])]  # fmt: skip
        assert consumer.on(f"{BASE}/defect/active") == [b"OFF", b"ON", b"OFF"]

        answer = ask(broker, consumer, "detect", "OFF")
        assert answer["ok"] and answer["reason"] == "detection is OFF: triggers are answered with an error verdict"
        paused = part("p2")
        assert paused["verdict"] == "error" and paused["error"] == "detection is OFF (paused by a detect/set command)"
        assert ask(broker, consumer, "detect", "ON")["ok"] and ask(broker, consumer, "threshold", "0.39")["ok"]
        assert part("p3")["verdict"] == "OK"  # good/000, the frame p2 did not take
        judged = part("p4")  # broken_large/003, 0.379: a defect at the model's threshold, not at 0.39
        assert (judged["verdict"], judged["threshold"]) == ("OK", 0.39) and judged["score"] > 0.1995
        cam2 = station.controls["cam2"]  # the other camera of the station keeps its own
        assert cam2.judge.threshold == cam2.calibrated and consumer.on("riad/cam2/threshold/state") == [repr(cam2.calibrated).encode()]
        assert consumer.on(f"{BASE}/threshold/state")[-1] == b"0.39"
    finally:
        station.stop()
        runner.join(30)
        station.close()


def test_commands_without_a_broker_is_a_clear_error(tiny_onnx_model, bottle_dir, tmp_path):
    clip = write_video(tmp_path / "clip.avi", bottle_frames(bottle_dir, 2), "MJPG")
    done = subprocess.run([sys.executable, "-m", "edge", "run", "--source", str(clip), "--model", str(tiny_onnx_model), "--commands"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: --commands needs --broker: commands arrive over MQTT"
