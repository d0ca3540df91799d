"""MqttPublisher against a real broker on loopback: the documented topics and payloads, a crash, a full spool."""

from __future__ import annotations

import json
import logging
import re
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime

import cv2
import numpy as np
import pytest

from edge.sinks.broker import BrokerError, parse_broker_url
from edge.sinks.mqtt import MqttPublisher, close_all, events_only_in_memory, iso_utc
from edge.local_broker import MOSQUITTO
from edge.results import DefectTracker
from tests.conftest import fill

CAMERA = "line1"
AVAILABLE, DEFECT, STATS = f"riad/{CAMERA}/available", f"riad/{CAMERA}/defect", f"riad/{CAMERA}/stats"

# A publisher in its own process, so a test can SIGKILL it like a crash or a power cut.
PUBLISHER_PROCESS = """
import sys, time
from pathlib import Path
from edge.sinks.broker import parse_broker_url
from edge.sinks.mqtt import MqttPublisher, iso_utc
from tests.broker import frame_result
url, spool, bottle, count = sys.argv[1:]
publisher = MqttPublisher(parse_broker_url(url), "line1", Path(spool), connect_timeout=2)
for i in range(int(count)):
    publisher.handle(frame_result(Path(bottle), i))
print("handled", flush=True)
time.sleep(60)
"""


def run_publisher_then_kill(url, spool, bottle_dir, count, until=None):
    process = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER_PROCESS, url, str(spool), str(bottle_dir), str(count)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    try:
        assert process.stdout.readline().strip() == "handled"
        if until is not None:
            assert until()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)


@pytest.fixture
def publisher_factory(tmp_path):
    made = []

    def make(broker, **kwargs):
        kwargs.setdefault("spool_path", tmp_path / "spool.db")
        publisher = MqttPublisher(parse_broker_url(broker.url), CAMERA, model_id="bottle-w8", **kwargs)
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.close()


def test_available_online_retained_then_offline_on_close(broker, publisher_factory, subscribe):
    publisher = publisher_factory(broker)
    late = subscribe(broker, [AVAILABLE])  # subscribes after connect: sees the retained state
    assert late.wait_for(lambda: late.messages)
    assert late.messages[0] == (AVAILABLE, b"online", True)
    publisher.close()
    assert late.wait_for(lambda: late.on(AVAILABLE)[-1:] == [b"offline"])
    after = subscribe(broker, [AVAILABLE])
    assert after.wait_for(lambda: after.messages == [(AVAILABLE, b"offline", True)])


def test_last_will_says_offline_when_the_process_is_killed(broker, bottle_dir, tmp_path, subscribe):
    watcher = subscribe(broker, [AVAILABLE])
    run_publisher_then_kill(
        broker.url, tmp_path / "spool.db", bottle_dir, 0, until=lambda: watcher.wait_for(lambda: watcher.on(AVAILABLE))
    )
    assert watcher.wait_for(lambda: watcher.on(AVAILABLE)[-1:] == [b"offline"])
    after = subscribe(broker, [AVAILABLE])
    assert after.wait_for(lambda: after.messages == [(AVAILABLE, b"offline", True)])


def test_defect_event_has_the_documented_schema_and_an_overlay(broker, publisher_factory, subscribe, make_result):
    sub = subscribe(broker, [f"riad/{CAMERA}/defect/#"])
    publisher = publisher_factory(broker)
    result = make_result(3)
    DefectTracker().assign(result)  # as the pipeline does
    publisher.handle(result)
    assert sub.wait_for(lambda: len(sub.messages) == 2)
    (topic, payload, retained), (overlay_topic, jpeg, overlay_retained) = sub.messages
    assert (topic, retained, overlay_retained) == (DEFECT, False, False)
    event = json.loads(payload)
    assert set(event) == {
        "schema_version", "event_id", "camera_id", "model_id", "frame_index", "timestamp", "epoch",
        "score", "threshold", "frame_width", "frame_height", "boxes", "overlay_topic", "defect_id", "defect_frame",
    }  # fmt: skip
    assert event["schema_version"] == 1
    assert uuid.UUID(event["event_id"]).version == 4
    assert (event["camera_id"], event["model_id"], event["frame_index"]) == (CAMERA, "bottle-w8", 3)
    assert uuid.UUID(event["defect_id"]) and event["defect_id"] == result.defect_id and event["defect_frame"] == 1
    assert datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp() == pytest.approx(
        result.timestamp, abs=1e-3
    )
    assert event["epoch"] == result.timestamp
    assert (event["score"], event["threshold"]) == (pytest.approx(0.8), 0.5)
    height, width = result.frame.shape[:2]
    assert (event["frame_width"], event["frame_height"]) == (width, height)
    # The hot square covers map rows 20-27, columns 30-39 of 64: in frame pixels
    [box] = event["boxes"]
    assert box == {
        "x": int(30 * width / 64),
        "y": int(20 * height / 64),
        "width": round(10 * width / 64),
        "height": round(8 * height / 64),
        "peak": pytest.approx(0.8),
    }
    assert overlay_topic == event["overlay_topic"] == f"riad/{CAMERA}/defect/{event['event_id']}/overlay"
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == result.frame.shape
    # The box is drawn in red on the overlay
    b, g, r = image[box["y"] + 1, box["x"] + box["width"] // 2].astype(int)
    assert r > 150 and g < 100 and b < 100


def test_a_good_frame_publishes_nothing(broker, publisher_factory, subscribe, make_result):
    sub = subscribe(broker, [f"riad/{CAMERA}/defect/#"])
    publisher = publisher_factory(broker)
    publisher.handle(make_result(0, defect=False))
    publisher.handle(make_result(1))  # a marker: once it arrives, the good frame had its chance
    assert sub.wait_for(lambda: sub.on(DEFECT))
    assert [json.loads(p)["frame_index"] for p in sub.on(DEFECT)] == [1]
    assert sub.wait_for(lambda: publisher.spool.depth() == 0)  # nothing of the good frame waits either


def test_stats_arrive_with_the_pipeline_numbers_and_the_spool_depth(broker, publisher_factory, subscribe):
    sub = subscribe(broker, [STATS])
    publisher_factory(broker, stats_source=lambda: {"fps": 12.5, "frames": 40}, stats_interval=0.2)
    assert sub.wait_for(lambda: len(sub.on(STATS)) >= 2)
    stats = json.loads(sub.on(STATS)[0])
    assert stats["schema_version"] == 1 and stats["camera_id"] == CAMERA
    assert stats["pipeline"] == {"fps": 12.5, "frames": 40}
    assert stats["mqtt"] == {
        "spool_depth": 0, "memory_queue": 0, "in_flight": 0, "dropped": 0, "set_aside": 0, "reconnects": 0,
        "last_broker_problem": None,
    }  # fmt: skip
    assert not sub.messages[0][2]  # not retained


def test_events_spooled_by_a_crashed_process_are_delivered_by_the_next(broker, bottle_dir, tmp_path, publisher_factory, subscribe):
    spool = tmp_path / "spool.db"
    broker.stop()  # the first process never reaches the broker: everything stays in its spool
    run_publisher_then_kill(broker.url, spool, bottle_dir, 3)
    broker.start()
    sub = subscribe(broker, [DEFECT])
    publisher = publisher_factory(broker, spool_path=spool)
    assert sub.wait_for(lambda: len(sub.on(DEFECT)) == 3)
    assert [json.loads(p)["frame_index"] for p in sub.on(DEFECT)] == [0, 1, 2]
    assert sub.wait_for(lambda: publisher.spool.depth() == 0)


def test_a_full_spool_holds_events_in_memory_and_says_so(broker, publisher_factory, caplog, subscribe, make_result):
    broker.stop()
    # 64 kB: room for a few events but not for their overlays; the same SQLITE_FULL as a full disk.
    publisher = publisher_factory(broker, spool_max_bytes=64 * 1024)
    with caplog.at_level(logging.ERROR, logger="edge.sinks.mqtt"):
        for i in range(8):
            publisher.handle(make_result(i))
    assert "is full" in caplog.text and "holding events in memory" in caplog.text
    assert "DROPPED" not in caplog.text
    broker.start()
    sub = subscribe(broker, [DEFECT])
    assert sub.wait_for(lambda: len(sub.on(DEFECT)) == 8, timeout=15)
    assert [json.loads(p)["frame_index"] for p in sub.on(DEFECT)] == list(range(8))


def test_events_sent_from_memory_and_never_acknowledged_go_back_to_the_spool_at_close(
    tiny_disk, broker, publisher_factory, subscribe, make_result
):  # tiny_disk first: unmounted after the publishers close
    # The chaos test's loss: the disk full, events held in memory went to a broker that never
    # acknowledged them (here: stopped, so the connection stays up and silent). At the end the
    # disk had room again; they were in no spool, and were counted lost.
    spool = tiny_disk / "spool.db"
    publisher = publisher_factory(broker, spool_path=spool)
    broker.process.send_signal(signal.SIGSTOP)
    try:
        fill(tiny_disk)
        for i in range(3):
            publisher.handle(make_result(i))
        handed = lambda: len(publisher._in_flight) == 3 and not publisher._memory_queue  # noqa: E731 (sent, unanswered)
        assert eventually(handed)
        assert events_only_in_memory() == 3  # what an abort now (a second Ctrl-C) would lose
        (tiny_disk / "filler").unlink()
        publisher.close(timeout=0.5)
        assert events_only_in_memory() == 0  # back in the spool
    finally:
        broker.process.send_signal(signal.SIGCONT)
    assert (publisher.lost, publisher.undelivered) == (0, 3)
    sub = subscribe(broker, [DEFECT])
    publisher_factory(broker, spool_path=spool)  # the next start delivers them
    assert sub.wait_for(lambda: sorted(json.loads(p)["frame_index"] for p in sub.on(DEFECT))[-3:] == [0, 1, 2], timeout=15)


def test_at_close_events_held_in_memory_wait_for_the_disk_to_get_room(
    tiny_disk, broker, publisher_factory, caplog, make_result
):  # tiny_disk first: unmounted after the publishers close
    # The broker gone and the disk full when the run ends: room that comes back within the
    # close timeout (a log rotated, a file removed) saves the held events instead of losing them.
    spool = tiny_disk / "spool.db"
    broker.stop()
    publisher = publisher_factory(broker, spool_path=spool)
    fill(tiny_disk)
    for i in range(3):
        publisher.handle(make_result(i))
    assert len(publisher._memory_queue) == 3
    room = threading.Timer(1.0, (tiny_disk / "filler").unlink)
    room.start()
    with caplog.at_level(logging.ERROR, logger="edge.sinks.mqtt"):
        publisher.close(timeout=5.0)
    room.join()
    assert "3 defect event(s) held in memory and spool" in caplog.text and "retrying for" in caplog.text
    assert (publisher.lost, publisher.undelivered) == (0, 3)
    assert "LOST" not in caplog.text


def test_at_close_events_held_in_memory_are_lost_if_the_disk_stays_full(
    tiny_disk, broker, publisher_factory, caplog, make_result
):
    spool = tiny_disk / "spool.db"
    broker.stop()
    publisher = publisher_factory(broker, spool_path=spool)
    fill(tiny_disk)
    publisher.handle(make_result(0))
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="edge.sinks.mqtt"):
        publisher.close(timeout=1.5)
    assert time.monotonic() - started >= 1.5  # it waited for room as long as the timeout allows
    assert publisher.lost == 1 and "LOST 1 defect event(s) held in memory" in caplog.text
    (tiny_disk / "filler").unlink()


def test_a_station_closes_its_cameras_publishers_together(tiny_disk, broker, publisher_factory, caplog, make_result):
    # Each camera waits up to the close timeout for room on a full disk: one after the other,
    # a station's shutdown would take that per camera, beyond systemd's stop timeout.
    broker.stop()
    publishers = [publisher_factory(broker, spool_path=tiny_disk / f"cam{i}.spool") for i in range(3)]
    fill(tiny_disk)
    for publisher in publishers:
        publisher.handle(make_result(0))
    with caplog.at_level(logging.ERROR, logger="edge.sinks.mqtt"):
        close_all(publishers, timeout=1.0)
    said = [r.getMessage() for r in caplog.records if "retrying for" in r.getMessage() or "LOST" in r.getMessage()]
    assert len(said) == 6 and all("retrying for" in m for m in said[:3]), said  # all waited at once
    assert [p.lost for p in publishers] == [1, 1, 1]
    (tiny_disk / "filler").unlink()


def test_a_refused_login_is_a_clear_error(broker_with_login, tmp_path):
    wrong = parse_broker_url(broker_with_login.url, username="edge", password="wrong")
    with pytest.raises(BrokerError, match="refused the connection.*user 'edge'"):
        MqttPublisher(wrong, CAMERA, tmp_path / "spool.db")
    with pytest.raises(BrokerError, match="anonymous"):
        MqttPublisher(parse_broker_url(broker_with_login.url), CAMERA, tmp_path / "spool.db")
    right = parse_broker_url(broker_with_login.url, username="edge", password=broker_with_login.users["edge"])
    MqttPublisher(right, CAMERA, tmp_path / "spool.db").close()  # the spool was released by the failures


def riad_edge(*args):
    return subprocess.Popen(
        [sys.executable, "-c", "from edge.cli import app; app()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_watch_prints_availability_and_each_alert_once(broker, publisher_factory, make_result):
    publisher = publisher_factory(broker)
    watcher = riad_edge("watch", "--broker", broker.url, "--count", "2", "--timeout", "20")
    assert "line1  online  (retained)" in watcher.stdout.readline()  # subscribed: now publish
    result, next_result = make_result(7), make_result(8)
    defects = DefectTracker()  # two consecutive defective frames: one defect
    for r in (result, next_result):
        defects.assign(r)
        publisher.handle(r)
    out, err = watcher.communicate(timeout=20)
    assert watcher.returncode == 0, err
    first, second = out.splitlines()
    assert first.startswith(iso_utc(result.timestamp))
    assert "line1  DEFECT  frame 7  score 0.800 > 0.500  1 region: " in first and "same defect" not in first
    assert "frame 8" in second and second.endswith("(same defect, its frame 2)")


def test_watch_exit_codes(broker, broker_with_login):
    timed_out = riad_edge("watch", "--broker", broker.url, "--count", "1", "--timeout", "0.5")
    assert timed_out.wait(20) == 1 and "with 0 of 1 defect events and verdicts" in timed_out.stderr.read()
    refused_login = riad_edge("watch", "--broker", broker_with_login.url, "--username", "edge", "--password", "nope")
    assert refused_login.wait(20) == 2
    assert "refused the connection" in refused_login.stderr.read()
    broker.stop()
    unreachable = riad_edge("watch", "--broker", broker.url)
    assert unreachable.wait(20) == 2 and "cannot reach broker" in unreachable.stderr.read()
    bad_url = riad_edge("watch", "--broker", "http://x")
    assert bad_url.wait(20) == 2 and "expected mqtt://" in bad_url.stderr.read()


def test_tls_with_the_right_ca_and_a_clear_error_with_the_wrong_one(tls_broker, tmp_path, make_result):
    with_ca = parse_broker_url(tls_broker.url, ca_file=tls_broker.ca_file)
    publisher = MqttPublisher(with_ca, CAMERA, tmp_path / "spool.db")
    watcher = riad_edge("watch", "--broker", tls_broker.url, "--tls-ca", str(tls_broker.ca_file), "--count", "1", "--json")
    assert json.loads(watcher.stdout.readline()) == {"camera_id": CAMERA, "available": "online"}
    publisher.handle(make_result(2))
    out, err = watcher.communicate(timeout=20)
    assert watcher.returncode == 0, err
    assert json.loads(out)["frame_index"] == 2
    publisher.close()
    # The system's CAs do not know the test CA
    with pytest.raises(BrokerError, match="TLS handshake with mqtts://localhost:.* failed.*certificate verify failed"):
        MqttPublisher(parse_broker_url(tls_broker.url), CAMERA, tmp_path / "spool.db")
    untrusted = riad_edge("watch", "--broker", tls_broker.url, "--count", "1")
    assert untrusted.wait(20) == 2
    assert re.search(r"TLS handshake with mqtts://localhost:\d+ failed.*certificate verify failed", untrusted.stderr.read())


def test_a_silent_broker_is_named_again_every_interval_and_remembered_in_the_stats(broker, tmp_path, caplog, subscribe):
    with socket.create_server(("127.0.0.1", 0)) as silent, caplog.at_level(logging.WARNING, logger="edge.sinks.mqtt"):
        url = f"mqtt://127.0.0.1:{silent.getsockname()[1]}"  # accepts TCP, never answers CONNECT
        publisher = MqttPublisher(parse_broker_url(url), CAMERA, tmp_path / "spool.db", connect_timeout=0.5, problem_interval=0.5)
        named = "accepted the connection but sent no answer within 0.5 s (no CONNACK)"
        assert publisher.broker_problem and named in publisher.broker_problem
        # At start, then again by the test connections while it lasts.
        assert eventually(lambda: caplog.text.count(named) >= 3)
        publisher.close()
    assert "stay in spool" not in caplog.text  # nothing was spooled
    # Once a broker answers, the stats still tell what the trouble was.
    sub = subscribe(broker, [STATS])
    publisher = MqttPublisher(parse_broker_url(broker.url), CAMERA, tmp_path / "spool.db", stats_interval=0.2)
    publisher.last_broker_problem = "seen earlier"  # as after an outage in this run
    assert sub.wait_for(lambda: sub.on(STATS))
    assert json.loads(sub.on(STATS)[0])["mqtt"]["last_broker_problem"] == "seen earlier"
    publisher.close()


def eventually(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_an_ipv6_broker(tmp_path, make_result, subscribe):
    from edge.local_broker import LocalBroker, free_port

    if not MOSQUITTO:
        pytest.skip("needs mosquitto (a second listener)")
    port6 = free_port()
    broker = LocalBroker(tmp_path / "broker6", [f"listener {port6} ::1"]).start()
    try:
        sub = subscribe(broker, [DEFECT])
        publisher = MqttPublisher(parse_broker_url(f"mqtt://[::1]:{port6}"), CAMERA, tmp_path / "spool.db")
        assert publisher.broker.url == f"mqtt://[::1]:{port6}"
        publisher.handle(make_result(1))
        assert sub.wait_for(lambda: sub.on(DEFECT))
        publisher.close()
    finally:
        broker.stop()
