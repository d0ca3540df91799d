"""Topic names the broker refuses: refused up front, and a spooled one never blocks the others."""

from __future__ import annotations

import json
import logging

import pytest

from edge.sinks.broker import parse_broker_url
from edge.sinks.mqtt import MqttPublisher
from edge.sinks.spool import Spool
from edge.sinks.topics import MAX_TOPIC_BYTES, TopicError, check_names, topic_problem


@pytest.mark.parametrize(
    "prefix, camera, message",
    [
        ("#", "line1", "topic prefix '#' cannot be part of an MQTT topic: it contains the wildcard '#'"),
        ("+", "line1", "wildcard '+'"),
        ("plant/+/riad", "line1", "wildcard '+'"),
        ("riad", "line#1", "camera id 'line#1' cannot be part of an MQTT topic: it contains the wildcard '#'"),
        ("riad", "line\x001", "control character '\\x00'"),
        ("ri\nad", "line1", "control character '\\n'"),
        ("riad", "a/b", "contains '/'"),
        ("", "line1", "the topic prefix is empty"),
        ("riad/", "line1", "topic prefix 'riad/' has an empty topic level (a leading, trailing or double '/'); did you mean 'riad'?"),
        ("/plant//riad", "line1", "did you mean 'plant/riad'?"),
        ("/", "line1", "empty topic level (a leading, trailing or double '/')"),
        ("$SYS", "line1", "starts with '$'"),
        ("riad", "", "the camera id is empty"),
        ("riad", "\udcff", "not valid UTF-8"),  # what a command line of undecodable bytes gives
        ("riad", "x" * 70_000, "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (70000 bytes)"),
        ("p" * 65_500, "line1", "their topics would be up to 65558 bytes, over MQTT's limit of 65535"),
    ],
)
def test_names_the_broker_would_refuse_are_clear_errors(prefix, camera, message):
    with pytest.raises(TopicError) as error:
        check_names(prefix, camera)
    assert message in str(error.value)
    assert len(str(error.value)) < 200  # one readable line, however long the name


def test_names_the_broker_takes():
    check_names("plant 1/riad", "Linie-3_ä")  # several prefix levels, spaces, any letters
    check_names("riad", "$line1")  # '$' is only the broker's at the topic's start
    assert topic_problem("a" * MAX_TOPIC_BYTES) is None
    assert "over MQTT's limit" in topic_problem("é" * (MAX_TOPIC_BYTES // 2 + 1))  # counted in UTF-8 bytes


def test_the_publisher_refuses_a_bad_name_before_it_spools_anything(broker, tmp_path):
    with pytest.raises(TopicError, match="wildcard"):
        MqttPublisher(parse_broker_url(broker.url), "line1", tmp_path / "spool.db", topic_prefix="riad/#")
    assert not (tmp_path / "spool.db").exists()


def test_a_spooled_message_the_broker_can_never_take_is_set_aside_and_the_rest_delivered(
    broker, tmp_path, subscribe, make_result, caplog
):
    # What an older version left with `--topic-prefix '#'`: events under topics no broker takes.
    spool = Spool(tmp_path / "spool.db")
    spool.put("#/line1/defect", b'{"event_id": "poison"}', 1, False)
    spool.put("riad/line1/defect", b'{"event_id": "older", "frame_index": -1}', 1, False)
    spool.put("riad/li\x00ne1/defect", b"{}", 1, False)
    spool.close()
    sub = subscribe(broker, ["riad/line1/defect"])
    with caplog.at_level(logging.ERROR, logger="edge.sinks.mqtt"):
        publisher = MqttPublisher(parse_broker_url(broker.url), "line1", tmp_path / "spool.db", stats_interval=0.2)
        publisher.handle(make_result(4))
        assert sub.wait_for(lambda: len(sub.on("riad/line1/defect")) == 2)
        assert sub.wait_for(lambda: publisher.spool.depth() == 0)
        publisher.close()
    assert [json.loads(p)["frame_index"] for p in sub.on("riad/line1/defect")] == [-1, 4]
    assert (publisher.set_aside, publisher.undelivered, publisher.lost) == (2, 0, 0)
    assert "set aside, never to be sent: topic '#/line1/defect': it contains the wildcard '#'" in caplog.text
    assert "2 message(s) set aside in spool" in caplog.text
    # Kept on disk, with the reason; a later run counts them in its stats but sends nothing.
    kept = Spool(tmp_path / "spool.db")
    assert kept.set_aside_count() == 2 and kept.depth() == 0
    kept.close()
    stats = subscribe(broker, ["riad/line1/stats"])
    later = MqttPublisher(parse_broker_url(broker.url), "line1", tmp_path / "spool.db", stats_interval=0.2)
    assert stats.wait_for(lambda: stats.on("riad/line1/stats"))
    later.close()
    assert json.loads(stats.on("riad/line1/stats")[0])["mqtt"]["set_aside"] == 2
    assert later.set_aside == 0  # set aside by an earlier run: not this run's failure
