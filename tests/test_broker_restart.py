"""The broker crashes mid-run and comes back: every defect event arrives, by event id, in order."""

from __future__ import annotations

import json
import time

from edge.sinks.broker import parse_broker_url
from edge.sinks.mqtt import MqttPublisher


DEFECT = "riad/line1/defect"


def test_every_event_arrives_once_by_id_and_in_order_across_a_broker_crash(persistent_broker, tmp_path, subscribe, make_result):
    # The consumer keeps a persistent session (clean_session=False), as docs/mqtt.md asks of
    # consumers that must not miss events; the broker saves it, so it survives the crash.
    consumer = subscribe(persistent_broker, [DEFECT], client_id="test-consumer", clean_session=False)
    publisher = MqttPublisher(parse_broker_url(persistent_broker.url), "line1", tmp_path / "spool.db")
    sent = []

    def publish(indices):
        for i in indices:
            publisher.handle(make_result(i))
            sent.append(i)

    publish(range(10))
    persistent_broker.kill()  # SIGKILL mid-run: no goodbye to anyone
    publish(range(10, 20))  # while the broker is down
    time.sleep(0.5)
    publish(range(20, 25))
    assert publisher.spool.depth() > 0
    persistent_broker.start()  # same port
    publish(range(25, 30))

    def received():
        return [json.loads(p) for p in consumer.on(DEFECT)]

    assert consumer.wait_for(lambda: len({e["event_id"] for e in received()}) >= len(sent), timeout=30)
    events = received()
    first_seen: dict[str, int] = {}
    for event in events:
        first_seen.setdefault(event["event_id"], event["frame_index"])
    # Exactly once by event id: one id per frame, every frame present, in the order they were handled.
    assert list(first_seen.values()) == sent
    duplicates = len(events) - len(first_seen)
    assert duplicates <= 20, f"{duplicates} re-deliveries: more than the in-flight window"  # at-least-once
    assert consumer.wait_for(lambda: publisher.spool.depth() == 0)
    publisher.close()
