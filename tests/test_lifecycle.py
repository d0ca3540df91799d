"""A defect's whole life on MQTT (`events` new/update/end, `defect/active`, `overlay`) on a real broker.

The first test runs the old bottle model (tests/data) over real bottle images whose scores are known
(docs/mqtt.md); the others drive the pipeline with a live camera that loops a real
encoded clip and is unplugged at will.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from media import LoopingCamera, bottle_frames, write_video

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.sinks.broker import parse_broker_url
from edge.method.inspection import FrameJudge
from edge.sinks.mqtt import MqttPublisher
from edge.pipeline import Pipeline
from edge.sinks.lifecycle import DefectLifecycle
from tests.conftest import OLD_BOTTLE_MODEL

REPO = Path(__file__).resolve().parents[1]
MODEL = OLD_BOTTLE_MODEL  # threshold 0.1995

# MVTec AD bottle test images and what the old bottle model (tests/data) scores them (printed by a run with
# --threshold 0): a defect seen in five frames, worse in the 2nd and 4th, then a good
# frame; then a second defect, open when the folder ends.
SEQUENCE = [
    ("good/000.png", 0.095),
    ("broken_large/000.png", 0.269),  # new
    ("broken_small/003.png", 0.327),  # update: worse
    ("contamination/001.png", 0.248),  # better: no message
    ("contamination/000.png", 0.385),  # update: worse again
    ("broken_large/005.png", 0.266),  # better: no message
    ("good/001.png", 0.105),  # end: good_frame
    ("broken_large/003.png", 0.379),  # new; ends when the inspector stops
]


def messages(subscriber, topic: str) -> list:
    return [json.loads(p) for p in subscriber.on(topic)]


def test_a_defect_lives_new_update_end_over_a_real_image_folder(broker, bottle_dir, tmp_path, subscribe):
    folder = tmp_path / "line"
    folder.mkdir()
    for i, (name, _) in enumerate(SEQUENCE):
        shutil.copy(bottle_dir / "test" / name, folder / f"{i:02d}.png")
    consumer = subscribe(broker, ["riad/line1/#"])
    done = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--source", str(folder), "--model", str(MODEL), "--broker", broker.url,
         "--camera-id", "line1", "--spool", str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert consumer.wait_for(lambda: consumer.on("riad/line1/available")[-1:] == [b"offline"])

    defects = {e["frame_index"]: e for e in messages(consumer, "riad/line1/defect")}
    assert sorted(defects) == [1, 2, 3, 4, 5, 7]
    events = messages(consumer, "riad/line1/events")
    assert [(e["type"], e["frames"], e["worst"]["frame_index"], e["end_reason"]) for e in events] == [
        ("new", 1, 1, None),
        ("update", 2, 2, None),
        ("update", 4, 4, None),
        ("end", 5, 4, "good_frame"),
        ("new", 1, 7, None),
        ("end", 1, 7, "stopped"),
    ]
    first, second = events[:4], events[4:]
    for life, frames in ((first, [1, 2, 3, 4, 5]), (second, [7])):
        assert {e["defect_id"] for e in life} == {defects[i]["defect_id"] for i in frames}  # one id, the events' own
        assert len({e["start_epoch"] for e in life}) == 1 and life[0]["start_epoch"] == defects[frames[0]]["epoch"]
        assert [e["end_time"] for e in life[:-1]] == [None] * (len(life) - 1)
    for event in events:
        worst = defects[event["worst"]["frame_index"]]  # the worst frame's own defect event
        assert event["worst"]["event_id"] == worst["event_id"]
        assert event["worst"]["overlay_topic"] == worst["overlay_topic"]
        assert event["worst"]["score"] == worst["score"] == pytest.approx(SEQUENCE[worst["frame_index"]][1], abs=0.01)
        assert event["worst"]["boxes"] == worst["boxes"]
        assert (event["camera_id"], event["model_id"], event["schema_version"]) == ("line1", worst["model_id"], 1)
    # A good_frame end is the good frame's capture time; a stop, the last defective frame's.
    assert first[-1]["end_epoch"] > defects[5]["epoch"]
    assert second[-1]["end_epoch"] == defects[7]["epoch"]
    assert [p for p in consumer.on("riad/line1/defect/active")] == [b"OFF", b"ON", b"OFF", b"ON", b"OFF"]
    # The retained overlay follows the worst frame: frame 1, 2, 4, then the second defect's 7.
    overlays = consumer.on("riad/line1/overlay")
    assert overlays == [consumer.on(defects[i]["overlay_topic"])[0] for i in (1, 2, 4, 7)]

    later = subscribe(broker, ["riad/line1/#"])  # a dashboard starting now sees the states at once
    assert later.wait_for(lambda: {t for t, _, _ in later.messages} >= {
        "riad/line1/defect/active", "riad/line1/overlay", "riad/line1/detect/state", "riad/line1/threshold/state"})  # fmt: skip
    retained = {t: p for t, p, was_retained in later.messages if was_retained}
    assert retained["riad/line1/defect/active"] == b"OFF"
    assert retained["riad/line1/overlay"] == overlays[-1]
    assert retained["riad/line1/detect/state"] == b"ON"
    assert float(retained["riad/line1/threshold/state"]) == defects[1]["threshold"]
    assert "riad/line1/events" not in retained  # a history, not a state
    image = cv2.imdecode(np.frombuffer(retained["riad/line1/overlay"], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (900, 900, 3)


@pytest.fixture
def looping_camera(bottle_dir, tmp_path):
    return LoopingCamera(write_video(tmp_path / "cam.avi", bottle_frames(bottle_dir, 4), "MJPG"), tmp_path / "unplugged.avi")


def test_a_camera_that_stops_ends_its_defect_after_the_idle_timeout_and_a_stop_ends_the_next(
    broker, tmp_path, subscribe, looping_camera, tiny_onnx_model
):
    consumer = subscribe(broker, ["riad/line1/events", "riad/line1/defect/active", "riad/line1/defect"])
    backend = OnnxCpuBackend(tiny_onnx_model, threads=1)
    pipeline = Pipeline(looping_camera.source, backend, judge=FrameJudge(backend, threshold=1e-9))  # every frame defective
    publisher = MqttPublisher(parse_broker_url(broker.url), "line1", tmp_path / "spool.db")
    pipeline.add_sink(DefectLifecycle(publisher, pipeline.defects, idle_timeout_s=0.5))
    runner = threading.Thread(target=pipeline.run)
    runner.start()

    def types() -> list[str]:
        return [e["type"] for e in messages(consumer, "riad/line1/events")]

    try:
        assert consumer.wait_for(lambda: "new" in types())
        looping_camera.plugged.clear()  # the camera stops: the pipeline waits on it, the timer ends the defect
        assert consumer.wait_for(lambda: "end" in types())
        looping_camera.plugged.set()  # back, and still looking at a defect: a new one, with a new id
        assert consumer.wait_for(lambda: types().count("new") == 2)
    finally:
        pipeline.stop()
        runner.join(30)
    assert consumer.wait_for(lambda: types()[-1] == "end")
    events = messages(consumer, "riad/line1/events")
    ends = [e for e in events if e["type"] == "end"]
    assert [e["end_reason"] for e in ends] == ["timeout", "stopped"]
    assert ends[0]["defect_id"] != ends[1]["defect_id"]
    for end in ends:
        frames = [e for e in messages(consumer, "riad/line1/defect") if e["defect_id"] == end["defect_id"]]
        life = [e for e in events if e["defect_id"] == end["defect_id"]]
        assert life[0]["type"] == "new" and all(e["type"] == "update" for e in life[1:-1])
        assert end["frames"] == len(frames) and end["end_epoch"] == frames[-1]["epoch"]  # the last frame seen
        # An update only for a worse frame: each is the worst of the frames up to it.
        for message in life[:-1]:
            seen = [f["score"] for f in frames if f["frame_index"] <= message["worst"]["frame_index"]]
            assert message["worst"]["score"] == max(seen) and message["frames"] == len(seen)
        assert end["worst"]["score"] == max(f["score"] for f in frames)
    assert consumer.wait_for(lambda: consumer.on("riad/line1/defect/active")[-1:] == [b"OFF"])
    assert consumer.on("riad/line1/defect/active") == [b"OFF", b"ON", b"OFF", b"ON", b"OFF"]


def test_a_triggered_part_is_one_defect_life_whatever_other_triggers_do_meanwhile(broker, bottle_dir, tmp_path, subscribe):
    import paho.mqtt.publish as mqtt_publish

    from edge.station.config import CameraConfig, StationConfig
    from edge.station.station import Station

    parts = tmp_path / "parts"
    parts.mkdir()
    for i, (name, _) in enumerate(SEQUENCE[1:4]):  # one part seen in three frames: 0.269, 0.327, 0.248
        shutil.copy(bottle_dir / "test" / name, parts / f"{i}.png")
    camera = CameraConfig("line1", str(parts), MODEL, mode="triggered", deadline_s=60, spool=tmp_path / "line1.spool")
    consumer = subscribe(broker, ["riad/line1/#"])
    station = Station(StationConfig([camera]), parse_broker_url(broker.url), console=False).__enter__()
    runner = threading.Thread(target=station.run)
    runner.start()
    try:
        assert station.triggers.subscribed.wait(10)
        mqtt_publish.single("riad/line1/trigger", '{"part_id": "p1", "frames": 3}', qos=1, hostname="127.0.0.1", port=broker.port)
        assert consumer.wait_for(lambda: consumer.on("riad/line1/events"), timeout=60)
        # While p1's other frames are judged, a malformed trigger is answered at once with an error.
        mqtt_publish.single("riad/line1/trigger", "{}", qos=1, hostname="127.0.0.1", port=broker.port)
        assert consumer.wait_for(lambda: len(consumer.on("riad/line1/verdict")) == 2, timeout=60)
        assert consumer.wait_for(lambda: len(consumer.on("riad/line1/events")) == 3)
    finally:
        station.stop()
        runner.join(30)
        station.close()
    events = messages(consumer, "riad/line1/events")
    assert [(e["type"], e["frames"], e["worst"]["frame_index"], e["end_reason"]) for e in events] == [
        ("new", 1, 0, None), ("update", 2, 1, None), ("end", 3, 1, "verdict")]  # fmt: skip
    verdicts = {json.loads(p)["part_id"]: json.loads(p) for p in consumer.on("riad/line1/verdict")}
    assert verdicts["p1"]["verdict"] == "NOK" and verdicts["p1"]["score"] == events[-1]["worst"]["score"]
    assert verdicts[None]["verdict"] == "error"
    order = [(t, p) for t, p, _ in consumer.messages if t in ("riad/line1/events", "riad/line1/verdict")]
    p1_verdict = next(i for i, (t, p) in enumerate(order) if t.endswith("verdict") and json.loads(p)["part_id"] == "p1")
    assert order[p1_verdict + 1][0] == "riad/line1/events" and json.loads(order[p1_verdict + 1][1])["type"] == "end"
    assert [p for p in consumer.on("riad/line1/defect/active")] == [b"OFF", b"ON", b"OFF"]
