"""Home Assistant MQTT discovery: each camera appears in Home Assistant as one device, with no YAML.

One retained config message per entity on `<ha_prefix>/<component>/<node_id>/<key>/config`
(per-component discovery, which every Home Assistant with MQTT discovery reads; the
device-based `<ha_prefix>/device/...` needs 2024.11). The entities read the topics the
inspector already publishes (docs/mqtt.md); their availability is the inspector's
`<prefix>/<camera>/available`, so they turn unavailable when it stops or dies.

Configs are published on every connection of the camera's publisher and again when
Home Assistant announces itself (`online` on `homeassistant/status` or `<ha_prefix>/status`),
as Home Assistant's MQTT docs ask; they are retained too, so a Home Assistant that starts
later finds them.
Sources of every option: the JSON Schemas in tests/ha_schemas/ cite them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import random
import re
import threading
import time

import paho.mqtt.client as paho

from edge.sinks.broker import BrokerConfig, BrokerError, connect_client
from edge.sinks.lifecycle import ACTIVE, EVENTS, OVERLAY
from edge.sinks.topics import TopicError, check_names, shown, topic_problem

log = logging.getLogger(__name__)

DEFAULT_HA_PREFIX = "homeassistant"
QOS_CONFIG = 1
BIRTH_DELAY_MAX_S = 1.0  # Home Assistant asks for a random delay after its birth message, to spread the load
# The lifecycle topic `<prefix>/<camera>/events` carries the defect's worst score so far here.
ANOMALY_SCORE_TEMPLATE = "{{ value_json.worst.score }}"
_NOT_IN_NODE_ID = re.compile(r"[^a-zA-Z0-9_-]+")  # Home Assistant allows only these in node_id and object_id
SLUG_CHARACTERS = 32
RETAINED_QUIET_S = 0.5  # `remove`: no retained config for this long after the SUBACK means all have arrived


def node_id(topic_prefix: str, camera_id: str) -> str:
    """The camera's id in Home Assistant: device identifier, discovery node id, unique-id stem.

    Readable (`riad_line1_...`), and unique per topic prefix and camera: the characters
    Home Assistant refuses are folded away, so a hash of the exact `<prefix>/<camera>`
    tells apart `line 1` and `line_1`, or prefix `a_b` with camera `c` and prefix `a`
    with camera `b_c`.
    """
    slug = _NOT_IN_NODE_ID.sub("_", camera_id).strip("_")[:SLUG_CHARACTERS].strip("_") or "cam"
    digest = hashlib.sha256(f"{topic_prefix}/{camera_id}".encode()).hexdigest()[:8]
    return f"riad_{slug}_{digest}"


def check_ha_prefix(ha_prefix: str) -> None:
    """Raises TopicError unless `ha_prefix` can start our discovery topics (as edge/sinks/topics.py checks ours)."""
    if not ha_prefix:
        raise TopicError("the Home Assistant discovery prefix is empty; its default is 'homeassistant'")
    problem = topic_problem(ha_prefix)
    if problem is None and "" in ha_prefix.split("/"):
        problem = "it has an empty topic level (a leading, trailing or double '/')"
    longest = config_topic(ha_prefix, "binary_sensor", "x" * (len("riad__") + SLUG_CHARACTERS + 8), "defective_frames")
    if problem is None and topic_problem(longest):
        problem = "its discovery topics would be over MQTT's length limit"
    if problem:
        raise TopicError(f"Home Assistant discovery prefix {shown(ha_prefix)} cannot be used: {problem}")


def _software_version() -> str | None:
    try:
        return importlib.metadata.version("riad-edge-inspector")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing it
        return None


def _entities(base: str, commands_enabled: bool, triggered: bool = False) -> list[tuple[str, str, dict]]:
    """(component, key, options) for every entity a camera may have; command entities only
    when enabled, the verdict only for a triggered camera."""
    stats = f"{base}/stats"
    sensors: list[tuple[str, str, dict]] = [
        ("sensor", "anomaly_score", {
            "name": "Anomaly score", "state_topic": f"{base}/{EVENTS}", "value_template": ANOMALY_SCORE_TEMPLATE,
            "state_class": "measurement", "suggested_display_precision": 3, "qos": 1,
        }),
        ("sensor", "fps", {
            "name": "Frames per second", "state_topic": stats, "value_template": "{{ value_json.pipeline.fps }}",
            "unit_of_measurement": "fps", "state_class": "measurement", "suggested_display_precision": 1,
        }),
        ("sensor", "defective_frames", {
            "name": "Defective frames", "state_topic": stats, "value_template": "{{ value_json.pipeline.defects }}",
            "state_class": "total_increasing",
        }),
        ("sensor", "latency", {
            "name": "Latency (median)", "state_topic": stats,
            "value_template": "{{ value_json.pipeline.latency_p50_ms }}", "device_class": "duration",
            "unit_of_measurement": "ms", "state_class": "measurement", "suggested_display_precision": 0,
            "entity_category": "diagnostic",
        }),
        ("sensor", "dropped_frames", {
            "name": "Dropped frames", "state_topic": stats, "value_template": "{{ value_json.pipeline.frames_dropped }}",
            "state_class": "total_increasing", "entity_category": "diagnostic",
        }),
        ("sensor", "events_waiting", {
            "name": "Events waiting", "state_topic": stats, "value_template": "{{ value_json.mqtt.spool_depth }}",
            "state_class": "measurement", "entity_category": "diagnostic",
        }),
    ]  # fmt: skip
    commands: list[tuple[str, str, dict]] = [
        ("switch", "inspection", {
            "name": "Inspection", "command_topic": f"{base}/detect/set", "state_topic": f"{base}/detect/state",
            "payload_on": "ON", "payload_off": "OFF", "qos": 1,
        }),
        ("number", "threshold", {
            "name": "Threshold", "command_topic": f"{base}/threshold/set", "state_topic": f"{base}/threshold/state",
            "min": 0.0, "max": 1.0, "step": 0.001, "mode": "box", "entity_category": "config", "qos": 1,
        }),
        ("button", "snapshot", {
            "name": "Snapshot", "command_topic": f"{base}/snapshot/set", "payload_press": "PRESS", "qos": 1,
        }),
    ]  # fmt: skip
    return [
        ("binary_sensor", "defect", {
            "name": "Defect", "device_class": "problem", "state_topic": f"{base}/{ACTIVE}",
            "payload_on": "ON", "payload_off": "OFF", "qos": 1,
        }),
        # Not tied to availability: it shows the inspector disconnected instead of turning unavailable.
        ("binary_sensor", "online", {
            "name": "Inspector", "device_class": "connectivity", "state_topic": f"{base}/available",
            "payload_on": "online", "payload_off": "offline", "entity_category": "diagnostic", "qos": 1,
        }),
        *sensors,
        ("image", "overlay", {"name": "Defect overlay", "image_topic": f"{base}/{OVERLAY}", "content_type": "image/jpeg"}),
        *(commands if commands_enabled else [(component, key, {}) for component, key, _ in commands]),
        # The last part's verdict; the whole verdict (part id, score, error...) as its attributes.
        ("sensor", "verdict", {
            "name": "Verdict", "state_topic": f"{base}/verdict", "value_template": "{{ value_json.verdict }}",
            "device_class": "enum", "options": ["OK", "NOK", "error"], "json_attributes_topic": f"{base}/verdict", "qos": 1,
        } if triggered else {}),
    ]  # fmt: skip


def config_topic(ha_prefix: str, component: str, node: str, key: str) -> str:
    return f"{ha_prefix}/{component}/{node}/{key}/config"


def discovery_messages(
    topic_prefix: str,
    camera_id: str,
    *,
    ha_prefix: str = DEFAULT_HA_PREFIX,
    model_id: str = "",
    commands_enabled: bool = False,
    triggered: bool = False,
) -> list[tuple[str, bytes]]:
    """(config topic, retained payload) for each entity; an empty payload removes an entity this run does not offer.

    Without commands the switch, number and button get empty payloads, so a run that had
    them before leaves no controls behind that nothing answers; a free-running camera's
    verdict sensor likewise.
    """
    base = f"{topic_prefix}/{camera_id}"
    node = node_id(topic_prefix, camera_id)
    version = _software_version()
    device = {"identifiers": [node], "name": camera_id, "manufacturer": "RIAD", "model": "riad-edge inspector"}
    origin: dict = {"name": "riad-edge"}
    if model_id:
        device["model_id"] = model_id
    if version:
        device["sw_version"] = origin["sw_version"] = version
    messages = []
    for component, key, options in _entities(base, commands_enabled, triggered):
        topic = config_topic(ha_prefix, component, node, key)
        if not options:
            messages.append((topic, b""))
            continue
        config = {**options, "unique_id": f"{node}_{key}", "device": device, "origin": origin}
        if key != "online":
            config.update(availability_topic=f"{base}/available", payload_available="online", payload_not_available="offline")
        messages.append((topic, json.dumps(config, ensure_ascii=False).encode()))
    return messages


def ha_hooks(topic_prefix: str, camera_id: str, ha_prefix: str | None, model_id: str, commands_enabled: bool = False,
             triggered: bool = False) -> list:  # fmt: skip
    """MqttPublisher's connect hooks for one camera: none when `ha_prefix` is None (discovery off)."""
    if ha_prefix is None:
        return []
    discovery = HaDiscovery(topic_prefix, camera_id, ha_prefix=ha_prefix, model_id=model_id, commands_enabled=commands_enabled,
                            triggered=triggered)  # fmt: skip
    return [discovery.on_connected]


class HaDiscovery:
    """Announces one camera to Home Assistant over its publisher's connection.

    `on_connected` is a connect hook of MqttPublisher: it runs on paho's network thread
    at every accepted connection, subscribes to Home Assistant's birth topic and publishes
    the configs.
    """

    def __init__(self, topic_prefix: str, camera_id: str, *, ha_prefix: str = DEFAULT_HA_PREFIX,
                 model_id: str = "", commands_enabled: bool = False, triggered: bool = False):  # fmt: skip
        self.ha_prefix = ha_prefix
        # Home Assistant's birth topic is a setting of its own, `homeassistant/status` unless changed;
        # whoever moved the discovery prefix may have moved it along.
        self.birth_topics = sorted({f"{DEFAULT_HA_PREFIX}/status", f"{ha_prefix}/status"})
        self.messages = discovery_messages(
            topic_prefix, camera_id, ha_prefix=ha_prefix, model_id=model_id, commands_enabled=commands_enabled, triggered=triggered
        )
        self.announcements = 0  # how often the configs went out (connections and births)

    def on_connected(self, client: paho.Client) -> None:
        # An exception here would stop paho's network thread and with it the event delivery.
        try:
            for topic in self.birth_topics:
                client.message_callback_add(topic, self._on_birth)
            client.subscribe([(topic, 1) for topic in self.birth_topics])
            self.publish(client)
        except Exception:
            log.exception("Home Assistant discovery could not be published")

    def _on_birth(self, client: paho.Client, userdata, message: paho.MQTTMessage) -> None:
        if message.payload != b"online":
            return
        timer = threading.Timer(random.uniform(0, BIRTH_DELAY_MAX_S), self.publish, args=(client,))
        timer.daemon = True
        timer.start()

    def publish(self, client: paho.Client) -> None:
        for topic, payload in self.messages:
            client.publish(topic, payload, qos=QOS_CONFIG, retain=True)
        self.announcements += 1
        log.info("Home Assistant discovery: %d config(s) published under %s/", len(self.messages), self.ha_prefix)


# --- `riad-edge ha-discovery publish | remove`: without running the inspector ---------------


def publish_configs(broker: BrokerConfig, topic_prefix: str, camera_id: str, *, ha_prefix: str = DEFAULT_HA_PREFIX,
                    model_id: str = "", commands_enabled: bool = False, triggered: bool = False, timeout: float = 10.0) -> int:  # fmt: skip
    """Publishes a camera's configs and returns their number; BrokerError when the broker does not take them."""
    check_names(topic_prefix, camera_id)
    check_ha_prefix(ha_prefix)
    messages = discovery_messages(
        topic_prefix, camera_id, ha_prefix=ha_prefix, model_id=model_id, commands_enabled=commands_enabled, triggered=triggered
    )
    client = connect_client(broker, timeout)
    try:
        _publish_acknowledged(client, broker, messages, timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return sum(1 for _, payload in messages if payload)


def remove_configs(broker: BrokerConfig, topic_prefix: str, camera_id: str, *, ha_prefix: str = DEFAULT_HA_PREFIX,
                   timeout: float = 10.0) -> list[str]:  # fmt: skip
    """Clears every retained discovery config of a camera and returns the topics that held one.

    Those we would publish, and any other retained config under the camera's node id (an
    older version's entities): an empty retained payload removes the entity from Home
    Assistant and the config from the broker.
    """
    check_names(topic_prefix, camera_id)
    check_ha_prefix(ha_prefix)
    node = node_id(topic_prefix, camera_id)
    found: set[str] = set()
    last_arrival = [time.monotonic()]
    subscribed = threading.Event()

    def on_message(client, userdata, message: paho.MQTTMessage) -> None:
        if message.retain and message.payload:
            found.add(message.topic)
        last_arrival[0] = time.monotonic()

    def subscribe(client: paho.Client) -> None:
        client.on_message = on_message
        client.on_subscribe = lambda *args: subscribed.set()
        client.subscribe(config_topic(ha_prefix, "+", node, "+"), qos=1)

    client = connect_client(broker, timeout, on_connected=subscribe)
    try:
        if not subscribed.wait(timeout):
            raise BrokerError(f"broker {broker.url} did not confirm a subscription within {timeout:g} s")
        # Retained messages follow the SUBACK at once; a short quiet spell means all have come.
        deadline = time.monotonic() + timeout
        last_arrival[0] = max(last_arrival[0], time.monotonic())
        while time.monotonic() - last_arrival[0] < RETAINED_QUIET_S and time.monotonic() < deadline:
            time.sleep(0.05)
        ours = discovery_messages(topic_prefix, camera_id, ha_prefix=ha_prefix, commands_enabled=True, triggered=True)
        topics = sorted(found | {topic for topic, _ in ours})
        _publish_acknowledged(client, broker, [(topic, b"") for topic in topics], timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return sorted(found)


def _publish_acknowledged(client: paho.Client, broker: BrokerConfig, messages: list[tuple[str, bytes]], timeout: float) -> None:
    infos = [client.publish(topic, payload, qos=QOS_CONFIG, retain=True) for topic, payload in messages]
    deadline = time.monotonic() + timeout
    for info in infos:
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError) as exc:
            raise BrokerError(f"broker {broker.url}: {exc}") from None
        if not info.is_published():
            raise BrokerError(f"broker {broker.url} did not acknowledge the discovery messages within {timeout:g} s")
