"""Home Assistant MQTT discovery: payloads valid against Home Assistant's documented schemas, on a real broker.

The schemas in tests/ha_schemas/ are transcribed from Home Assistant's MQTT docs and
source (each file cites where); installing Home Assistant itself here is not an option.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest
from jsonschema import Draft202012Validator
from media import bottle_frames, write_video
from referencing import Registry, Resource

from edge.sinks.broker import parse_broker_url
from edge.sinks.mqtt import MqttPublisher
from edge.sinks.ha_discovery import (
    BIRTH_DELAY_MAX_S,
    HaDiscovery,
    check_ha_prefix,
    discovery_messages,
    node_id,
    publish_configs,
    remove_configs,
)
from edge.sinks.topics import TopicError
from tests.conftest import OLD_BOTTLE_MODEL

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DIR = Path(__file__).parent / "ha_schemas"
SCHEMAS = {p.name.removesuffix(".schema.json"): json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.schema.json")}
REGISTRY = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in SCHEMAS.values())
# Home Assistant's discovery topic after the prefix (core: homeassistant/components/mqtt/discovery.py, TOPIC_MATCHER).
TOPIC_MATCHER = re.compile(r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config")
HOSTILE = [("riad", "line1"), ("plant 1/riad", "Línea 1 ☃"), ("~riad", "{{ value_json }} ~"), ("riad", "カメラ"), ("r", "x" * 3000)]


def schema_errors(component: str, config: dict) -> list[str]:
    validator = Draft202012Validator(SCHEMAS[component], registry=REGISTRY)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]
    if component == "number" and config.get("min", 1) >= config.get("max", 100):  # HA's validate_config; no JSON Schema for it
        errors.append("max must be > min")
    return errors


def check_config_message(ha_prefix: str, topic: str, payload: bytes) -> dict:
    """The config published on `topic`, checked as Home Assistant would read it."""
    assert topic.startswith(f"{ha_prefix}/")
    match = TOPIC_MATCHER.fullmatch(topic[len(ha_prefix) + 1 :])
    assert match, f"Home Assistant ignores the discovery topic {topic!r}"
    config = json.loads(payload)
    assert schema_errors(match["component"], config) == [], topic
    return config


def retained(broker, subscribe, topic: str = "homeassistant/#") -> dict[str, bytes]:
    """What the broker holds retained under `topic` now."""
    consumer = subscribe(broker, [topic])
    count = -1
    while count != len(consumer.messages):  # retained messages arrive right after the SUBACK
        count = len(consumer.messages)
        time.sleep(0.3)
    return {t: payload for t, payload, was_retained in consumer.messages if was_retained}


def retained_when(broker, subscribe, count: int, topic: str = "homeassistant/#") -> dict[str, bytes]:
    """The retained messages under `topic`, once `count` are there or after 10 s: an
    announcement is queued on paho's thread and the broker may not have taken it all yet
    (on a loaded machine, a second camera's a moment after the first's)."""
    deadline = time.monotonic() + 10
    while len(messages := retained(broker, subscribe, topic)) < count and time.monotonic() < deadline:
        pass
    return messages


# --- the payloads, against the schemas ------------------------------------------------


@pytest.mark.parametrize("commands, triggered", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("prefix, camera", HOSTILE)
def test_every_payload_matches_home_assistants_schema(prefix, camera, commands, triggered):
    messages = discovery_messages(prefix, camera, ha_prefix="homeassistant", model_id="bottle-w16-128-59670fb2", commands_enabled=commands,
                                  triggered=triggered)  # fmt: skip
    configs = {topic: check_config_message("homeassistant", topic, payload) for topic, payload in messages if payload}
    components = sorted({topic.split("/")[1] for topic in configs})
    assert components == sorted({"binary_sensor", "sensor", "image"} | ({"switch", "number", "button"} if commands else set()))
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)  # HA refuses a second entity with a unique id
    base = f"{prefix}/{camera}"
    for config in configs.values():
        # One device per camera; topics name the camera literally (no '~' base topic for HA to expand).
        assert config["device"] == next(iter(configs.values()))["device"] and config["device"]["name"] == camera
        assert config["device"]["model_id"] == "bottle-w16-128-59670fb2" and config["origin"]["name"] == "riad-edge"
        assert "~" not in config
        for key in ("state_topic", "command_topic", "image_topic"):
            assert key not in config or config[key].startswith(f"{base}/")
    by_name = {c["name"]: c for c in configs.values()}
    assert by_name["Defect"]["state_topic"] == f"{base}/defect/active" and by_name["Defect"]["device_class"] == "problem"
    assert by_name["Defect overlay"]["image_topic"] == f"{base}/overlay"
    # Unavailable when the inspector is not: everything but the connectivity sensor follows `available`.
    assert by_name["Inspector"]["state_topic"] == f"{base}/available" and "availability_topic" not in by_name["Inspector"]
    assert all(c["availability_topic"] == f"{base}/available" for name, c in by_name.items() if name != "Inspector")
    empties = [topic.split("/")[1] for topic, payload in messages if not payload]
    # A run without commands removes stale controls; a free-running camera, a stale verdict sensor.
    assert empties == ([] if commands else ["switch", "number", "button"]) + ([] if triggered else ["sensor"])
    if triggered:  # the last part's verdict as an enum, the whole verdict as its attributes
        verdict = by_name["Verdict"]
        assert verdict["state_topic"] == verdict["json_attributes_topic"] == f"{base}/verdict"
        assert verdict["device_class"] == "enum" and verdict["options"] == ["OK", "NOK", "error"]


@pytest.mark.parametrize(
    "component, config",
    [
        # Home Assistant's documented examples (sensor.mqtt, binary_sensor.mqtt, switch.mqtt, button.mqtt, image.mqtt).
        ("sensor", {"name": "turned on", "state_topic": "pump/timestamp_on", "device_class": "timestamp",
                    "value_template": "{{ as_datetime(value) }}", "unique_id": "hp_1231232_ts_on",
                    "device": {"name": "Heat pump", "identifiers": ["hp_1231232"]}}),
        ("binary_sensor", {"name": "Window Contact Sensor", "state_topic": "home-assistant/window/contact", "payload_on": "ON",
                           "availability": [{"topic": "home-assistant/window/availability", "payload_available": "online",
                                             "payload_not_available": "offline"}],
                           "qos": 0, "device_class": "opening", "value_template": "{{ value_json.state }}"}),
        ("switch", {"unique_id": "bedroom_switch", "name": "Bedroom Switch", "state_topic": "home/bedroom/switch1",
                    "command_topic": "home/bedroom/switch1/set", "availability": [{"topic": "home/bedroom/switch1/available"}],
                    "payload_on": "ON", "payload_off": "OFF", "state_on": "ON", "state_off": "OFF", "optimistic": False,
                    "qos": 0, "retain": True}),
        ("button", {"unique_id": "bedroom_switch_reboot_btn", "name": "Restart Bedroom Switch",
                    "command_topic": "home/bedroom/switch1/commands", "payload_press": "restart",
                    "availability": [{"topic": "home/bedroom/switch1/available"}], "qos": 0, "retain": False,
                    "entity_category": "config", "device_class": "restart"}),
        ("image", {"image_topic": "mynas/status/file", "content_type": "image/png"}),
        ("image", {"url_topic": "mynas/status/url"}),
        ("number", {"command_topic": "my-device/threshold"}),
    ],
)  # fmt: skip
def test_the_schemas_accept_home_assistants_own_examples(component, config):
    assert schema_errors(component, config) == []


@pytest.mark.parametrize(
    "component, config, problem",
    [
        ("binary_sensor", {"name": "x"}, "'state_topic' is a required property"),
        ("binary_sensor", {"state_topic": "a", "device_class": "defect"}, "is not one of"),
        ("binary_sensor", {"state_topic": "a", "payload_onn": "ON"}, "Unevaluated properties are not allowed"),
        ("binary_sensor", {"state_topic": "a", "platform": "binary_sensor"}, "Unevaluated properties"),  # device discovery only
        ("sensor", {"state_topic": "a", "entity_category": "config"}, "is not one of ['diagnostic']"),
        ("sensor", {"state_topic": "a", "device_class": "duration", "unit_of_measurement": "sec"}, "is not one of"),
        ("sensor", {"state_topic": "a", "state_class": "total_increasing", "device_class": "timestamp"}, "should not be valid"),
        ("sensor", {"state_topic": "a", "options": ["a", "b"]}, "'device_class' is a required property"),
        ("sensor", {"state_topic": "a/#/b"}, "does not match"),
        ("sensor", {"state_topic": "a", "device": {"name": "no identifiers"}, "unique_id": "u"}, "is not valid under any"),
        ("sensor", {"state_topic": "a", "device": {"identifiers": ["d"]}}, "'unique_id' is a dependency of 'device'"),
        ("sensor", {"state_topic": "a", "origin": {"sw_version": "1"}}, "'name' is a required property"),
        ("sensor", {"state_topic": "a", "availability_topic": "b", "availability": [{"topic": "c"}]}, "should not be valid"),
        ("image", {"image_topic": "a", "url_topic": "b"}, "is valid under each of"),
        ("image", {"url_topic": "b", "content_type": "image/jpeg"}, "should not be valid"),
        ("switch", {"command_topic": "a/+/set"}, "does not match"),
        ("number", {"command_topic": "a", "step": 0.0001}, "less than the minimum"),
        ("number", {"command_topic": "a", "min": 1, "max": 0}, "max must be > min"),
        ("button", {"command_topic": "a", "qos": 3}, "is not one of"),
    ],
)  # fmt: skip
def test_the_schemas_refuse_what_home_assistant_refuses_or_drops(component, config, problem):
    assert any(problem in error for error in schema_errors(component, config)), schema_errors(component, config)


def test_node_ids_have_only_the_characters_home_assistant_allows_and_tell_names_apart():
    pairs = [*HOSTILE, ("riad", "line 1"), ("riad", "line_1"), ("riad", "line-1"), ("a_b", "c"), ("a", "b_c"),
             ("riad", "___"), ("riad", "x" * 3001)]  # fmt: skip
    ids = [node_id(prefix, camera) for prefix, camera in pairs]
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in ids), ids
    assert len(set(ids)) == len(set(pairs))
    assert node_id("riad", "line1") == node_id("riad", "line1")  # stable: Home Assistant keeps the same device
    assert node_id("riad", "line1").startswith("riad_line1_")  # readable in the broker's topic tree


@pytest.mark.parametrize(
    "ha_prefix, problem",
    [
        ("", "is empty"),
        ("home+assistant", "wildcard '+'"),
        ("homeassistant/#", "wildcard '#'"),
        ("homeassistant/", "empty topic level"),
        ("/homeassistant", "empty topic level"),
        ("a//b", "empty topic level"),
        ("ha\x00", "control character"),
        ("h" * 65_500, "over MQTT's length limit"),
    ],
)
def test_a_discovery_prefix_that_cannot_work_is_a_clear_error(ha_prefix, problem):
    with pytest.raises(TopicError, match=re.escape(problem)):
        check_ha_prefix(ha_prefix)


# --- on a real broker -----------------------------------------------------------------


def riad_edge(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from edge.cli import app; app()", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_run_announces_the_camera_and_remove_clears_it(bottle_dir, tiny_onnx_model, tmp_path, broker, subscribe):
    clip = write_video(tmp_path / "line.avi", bottle_frames(bottle_dir, 4), "MJPG")
    prefix, camera = "plant 1/riad", "Línea 1 {{ x }}"
    run = riad_edge("run", "--source", clip, "--model", tiny_onnx_model, "--broker", broker.url, "--spool", tmp_path / "spool.db",
                    "--topic-prefix", prefix, "--camera-id", camera, "--ha-discovery")  # fmt: skip
    assert run.returncode == 0, run.stderr
    node = node_id(prefix, camera)
    assert f"home assistant: discovery configs under homeassistant/<component>/{node}/" in run.stdout
    other = publish_configs(parse_broker_url(broker.url), "riad", "line2")  # another camera on the same broker

    configs = retained(broker, subscribe)
    ours = {t: check_config_message("homeassistant", t, p) for t, p in configs.items() if f"/{node}/" in t}
    assert len(ours) == 9 and len(configs) == 9 + other
    assert {c["device"]["model_id"] for c in ours.values()} == {"tiny-test"}
    # The run has ended cleanly: its entities read `offline`, retained, so Home Assistant shows them unavailable.
    assert retained(broker, subscribe, f"{prefix}/{camera}/available") == {f"{prefix}/{camera}/available": b"offline"}

    # An entity of an older version under the same node id goes too; the other camera stays.
    stale = f"homeassistant/sensor/{node}/old_entity/config"
    mqtt_publish.single(stale, "{}", qos=1, retain=True, hostname="127.0.0.1", port=broker.port)
    removed = riad_edge("ha-discovery", "remove", "--broker", broker.url, "--topic-prefix", prefix, "--camera-id", camera)
    assert removed.returncode == 0, removed.stderr
    assert f"removed 10 retained discovery config(s) of camera {camera!r} from homeassistant/" in removed.stdout
    left = retained(broker, subscribe)
    assert len(left) == other and not any(node in t for t in left)


def test_configs_come_again_on_home_assistants_birth_and_after_a_broker_restart(broker, tmp_path, subscribe):
    discovery = HaDiscovery("riad", "line1", ha_prefix="ha", model_id="bottle-w16")
    publisher = MqttPublisher(parse_broker_url(broker.url), "line1", tmp_path / "spool.db", connect_hooks=[discovery.on_connected])
    try:
        configs = retained_when(broker, subscribe, 9, "ha/#")
        assert len(configs) == 9 and discovery.announcements == 1  # the 4 empty ones (no commands, no verdict) are not kept
        for topic, payload in configs.items():
            # The topic of the publisher's last will: the entities turn unavailable when the inspector dies.
            assert check_config_message("ha", topic, payload).get("availability_topic", publisher.availability_topic) == publisher.availability_topic

        # Home Assistant (re)started: it says `online` on its status topic, and all 13 come again, live, within the delay.
        watcher = subscribe(broker, ["ha/+/+/+/config"])
        assert watcher.wait_for(lambda: sum(was_retained for *_, was_retained in watcher.messages) == 9, timeout=10)
        before = len(watcher.messages)
        mqtt_publish.single("ha/status", "offline", qos=1, hostname="127.0.0.1", port=broker.port)
        mqtt_publish.single("ha/status", "online", qos=1, hostname="127.0.0.1", port=broker.port)
        assert watcher.wait_for(lambda: len(watcher.messages) == before + 13, timeout=BIRTH_DELAY_MAX_S + 5)
        assert not any(was_retained for _, _, was_retained in watcher.messages[before:])
        time.sleep(BIRTH_DELAY_MAX_S + 0.3)
        assert len(watcher.messages) == before + 13 and discovery.announcements == 2  # for `online`, not for `offline`
        # Home Assistant's birth topic keeps its default when only the discovery prefix was moved.
        mqtt_publish.single("homeassistant/status", "online", qos=1, hostname="127.0.0.1", port=broker.port)
        assert watcher.wait_for(lambda: discovery.announcements == 3, timeout=BIRTH_DELAY_MAX_S + 5)

        # A broker restarted without persistence forgot the retained configs: the reconnection brings them back.
        broker.kill()
        broker.start()
        assert watcher.wait_for(lambda: discovery.announcements == 4, timeout=30)
        assert len(retained_when(broker, subscribe, 9, "ha/#")) == 9
    finally:
        publisher.close()


def test_a_triggered_cameras_verdict_sensor_appears_and_goes_with_the_mode(broker, subscribe):
    config = parse_broker_url(broker.url)
    assert publish_configs(config, "riad", "line1", triggered=True) == 10
    verdict = [check_config_message("homeassistant", t, p) for t, p in retained(broker, subscribe).items() if t.endswith("/verdict/config")]
    assert len(verdict) == 1 and verdict[0]["name"] == "Verdict" and verdict[0]["value_template"] == "{{ value_json.verdict }}"
    assert publish_configs(config, "riad", "line1") == 9  # the same camera, now free-running
    assert not any(t.endswith("/verdict/config") for t in retained(broker, subscribe))


def test_controls_appear_with_commands_and_are_removed_without(broker, subscribe):
    config = parse_broker_url(broker.url)
    assert publish_configs(config, "riad", "line1", commands_enabled=True) == 12
    with_commands = retained(broker, subscribe)
    switch = next(check_config_message("homeassistant", t, p) for t, p in with_commands.items() if "/switch/" in t)
    assert (switch["command_topic"], switch["state_topic"]) == ("riad/line1/detect/set", "riad/line1/detect/state")
    assert publish_configs(config, "riad", "line1") == 9
    assert sorted(t.split("/")[1] for t in retained(broker, subscribe)) == ["binary_sensor"] * 2 + ["image"] + ["sensor"] * 6
    held = sorted(retained(broker, subscribe))
    assert remove_configs(config, "riad", "line1") == held and len(held) == 9
    assert retained(broker, subscribe) == {}


def test_a_station_announces_every_camera(bottle_dir, tmp_path, broker, subscribe):
    from conftest import write_tiny_onnx

    from edge.station.config import CameraConfig, StationConfig
    from edge.station.station import Station

    model = write_tiny_onnx(tmp_path / "tiny.onnx")
    cameras = [CameraConfig(cid, str(bottle_dir / "test" / "good"), model, mode=mode, spool=tmp_path / f"{cid}.spool")
               for cid, mode in (("cam-a", "free"), ("cam b", "triggered"))]  # fmt: skip
    with Station(StationConfig(cameras), parse_broker_url(broker.url), console=False, ha_prefix="homeassistant"):
        configs = retained_when(broker, subscribe, 19)
    announced = [check_config_message("homeassistant", t, p) for t, p in configs.items()]
    assert len(configs) == 19 and {c["device"]["name"] for c in announced} == {"cam-a", "cam b"}
    assert [c["device"]["name"] for c in announced if c["name"] == "Verdict"] == ["cam b"]  # the triggered camera's


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--ha-discovery"], "--ha-discovery needs --broker"),
        (["--broker", "mqtt://127.0.0.1:1", "--ha-prefix", "ha"], "--ha-prefix goes with --ha-discovery"),
        (["--broker", "mqtt://127.0.0.1:1", "--ha-discovery", "--ha-prefix", "ha/#"], "Home Assistant discovery prefix 'ha/#' cannot be used"),
    ],
)  # fmt: skip
def test_home_assistant_options_that_cannot_work_exit_2(tiny_onnx_model, tmp_path, args, problem):
    result = riad_edge("run", "--source", tmp_path, "--model", tiny_onnx_model, "--spool", tmp_path / "s.db", *args)
    message = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.stderr).split())  # typer's box may wrap the usage error
    assert result.returncode == 2 and problem in message, result.stderr


def test_remove_with_a_bad_name_or_no_broker_is_a_one_line_error(tmp_path):
    result = riad_edge("ha-discovery", "remove", "--broker", "mqtt://127.0.0.1:1", "--camera-id", "line#1")
    assert result.returncode == 2 and result.stderr.startswith("error: camera id 'line#1' cannot be part of an MQTT topic")
    result = riad_edge("ha-discovery", "remove", "--broker", "mqtt://127.0.0.1:1", "--camera-id", "line1")
    assert result.returncode == 2 and result.stderr.startswith("error: cannot reach broker") and "Traceback" not in result.stderr


# --- the entities read what a real run publishes ------------------------------------------


def render(template: str, payload: bytes) -> str:
    """A value_template as Home Assistant renders it: Jinja2 with the payload parsed as `value_json`."""
    import jinja2

    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(value_json=json.loads(payload))


def test_every_entity_reads_a_value_from_what_a_real_run_publishes(broker, bottle_dir, tmp_path, subscribe):
    """The templates and payload values of the configs against the lifecycle, stats and state topics of a run."""
    folder = tmp_path / "line"
    folder.mkdir()
    for i, name in enumerate(["good/000.png", "broken_large/000.png", "contamination/000.png", "good/001.png"]):
        (folder / f"{i}.png").write_bytes((bottle_dir / "test" / name).read_bytes())
    consumer = subscribe(broker, ["riad/line1/#", "homeassistant/#"])
    done = subprocess.run(
        [sys.executable, "-m", "edge", "run", "--source", str(folder), "--model", str(OLD_BOTTLE_MODEL),
         "--broker", broker.url, "--camera-id", "line1", "--spool", str(tmp_path / "spool"), "--ha-discovery", "--commands"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert consumer.wait_for(lambda: consumer.on("riad/line1/available")[-1:] == [b"offline"])
    configs = {t: json.loads(p) for t, p, _ in consumer.messages if t.startswith("homeassistant/") and p}
    assert len(configs) == 12
    worst = json.loads(consumer.on("riad/line1/events")[-1])["worst"]["score"]
    for topic, config in configs.items():
        component = topic.split("/")[1]
        if component == "image":
            assert consumer.on(config["image_topic"]), topic  # the overlay JPEG went out
        elif component == "button":
            assert config["command_topic"] == "riad/line1/snapshot/set"
        else:
            published = consumer.on(config["state_topic"])
            assert published, f"{topic}: nothing on {config['state_topic']}"
            if "value_template" in config:
                value = render(config["value_template"], published[-1])
                float(value)  # a sensor's number, or Home Assistant marks it unknown
                if config["state_topic"].endswith("/events"):
                    assert float(value) == worst
            elif component == "binary_sensor":
                assert {p.decode() for p in published} <= {config["payload_on"], config["payload_off"]}, topic
            elif component == "switch":
                assert published[-1].decode() in (config.get("state_on", config.get("payload_on", "ON")), "OFF")
            elif component == "number":
                assert config["min"] <= float(published[-1]) <= config["max"]
