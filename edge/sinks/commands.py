"""Commands from the line over MQTT, as Frigate's `<camera>/detect/set`: pause, threshold, snapshot.

    <prefix>/<camera>/detect/set       ON / OFF        resume / pause inspection
    <prefix>/<camera>/threshold/set    a number        the decision threshold, until the next start
    <prefix>/<camera>/snapshot/set     anything        the next judged frame's overlay, to <camera>/snapshot

Each command is answered on `<prefix>/<camera>/command/response` (JSON, QoS 1, not
retained) with ok true or false and the reason. States are retained on `detect/state`
and `threshold/state`, published at every (re)connect and after every change.

Anyone who can publish on the broker could pause a line, so commands are refused unless
`riad-edge run --commands` enabled them; refused commands are still answered, saying
how to enable them. Retained command messages are never obeyed: a `detect/set OFF` left
retained on the broker would otherwise pause the line silently at every start. A client
flooding commands gets those beyond RATE_PER_S dropped, unanswered (logged): answering a
flood would only grow the flood.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.sinks.broker import RECONNECT_DELAY_S, BrokerConfig
from edge.method.inspection import FrameJudge
from edge.sinks.mqtt import SCHEMA_VERSION, MqttPublisher, iso_utc
from edge.results import FrameResult
from edge.sinks.lifecycle import PAUSED, DefectLifecycle

log = logging.getLogger(__name__)

COMMANDS = ("detect", "threshold", "snapshot")  # <prefix>/<camera>/<command>/set
QOS_COMMANDS = 1
MAX_PAYLOAD_BYTES = 256  # "ON", "0.25", "PRESS": anything longer is not a command
SHOWN_CHARACTERS = 64  # of a payload, in the response
THRESHOLD_RANGE = 10.0  # a new threshold is within 1/10 and 10 times the model's calibrated one
RATE_PER_S, BURST = 10.0, 20  # commands acted on per camera; more are dropped unanswered
FLOOD_LOG_INTERVAL_S = 10.0
MAX_QUEUED_ANSWERS = 100  # responses and states paho holds while the broker is away
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)  # plain decimal: no nan, inf, 0x1p3, 1_000

ENABLE_HINT = "commands are off: start riad-edge run with --commands to allow them"


class Refused(Exception):
    """A command not carried out; its message is the response's reason."""


def shown_payload(payload: bytes) -> str:
    """A payload for the response: text, printable, cut short; never the raw bytes of a hostile sender."""
    text = payload[: SHOWN_CHARACTERS * 4].decode("utf-8", errors="replace")
    text = "".join(c if c.isprintable() else "\ufffd" for c in text)
    if len(payload) > SHOWN_CHARACTERS or len(text) > SHOWN_CHARACTERS:
        return f"{text[:SHOWN_CHARACTERS]}... ({len(payload)} bytes)"
    return text


def payload_text(payload: bytes) -> str:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Refused(f"payload too long: {len(payload)} bytes, at most {MAX_PAYLOAD_BYTES}")
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise Refused("payload is not UTF-8 text") from None


def parse_detect(text: str) -> bool:
    if text.upper() not in ("ON", "OFF"):
        raise Refused("payload must be ON or OFF")
    return text.upper() == "ON"


def parse_threshold(text: str, calibrated: float) -> float:
    """A threshold within 1/THRESHOLD_RANGE and THRESHOLD_RANGE times the model's calibrated one."""
    if not _NUMBER.fullmatch(text):
        raise Refused("payload must be a number such as 0.25")
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise Refused(f"threshold must be a positive finite number, not {text}")
    low, high = calibrated / THRESHOLD_RANGE, calibrated * THRESHOLD_RANGE
    if not low <= value <= high:
        raise Refused(
            f"threshold {value:g} is outside {low:.6g} to {high:.6g} "
            f"(1/{THRESHOLD_RANGE:g} to {THRESHOLD_RANGE:g} times the model's calibrated {calibrated:.6g})"
        )
    return value


class SnapshotOnRequest:
    """A ResultSink that publishes the overlay of the next judged frame after a request, retained."""

    def __init__(self, publisher: MqttPublisher):
        self.publisher = publisher
        self._wanted = threading.Event()

    def request(self) -> None:
        self._wanted.set()

    def handle(self, result: FrameResult) -> None:
        if self._wanted.is_set():
            self._wanted.clear()
            self.publisher.send_image("snapshot", result.overlay_jpeg(), f"snapshot of frame {result.frame_index}", retain=True)

    def close(self) -> None:
        """The publisher is closed by its lifecycle."""


@dataclass
class CameraControls:
    """What the commands change on one camera: its judge, and the lifecycle and snapshot sinks beside it."""

    judge: FrameJudge
    lifecycle: DefectLifecycle
    snapshot: SnapshotOnRequest
    triggered: bool = False  # a triggered camera judges frames only at its triggers

    @property
    def calibrated(self) -> float:
        return self.judge.backend.manifest.threshold

    def state(self, command: str) -> bytes | None:
        """The retained state of `command`; None for the snapshot button, which has none."""
        if command == "detect":
            return b"ON" if self.judge.enabled else b"OFF"
        if command == "threshold":
            return repr(float(self.judge.threshold)).encode()
        return None

    def apply(self, command: str, text: str) -> str:
        """Carries out one command; returns what it did, raises Refused with why not."""
        if command == "detect":
            on = parse_detect(text)
            self.judge.enabled = on
            if on:
                return "detection is ON"
            self.lifecycle.end(PAUSED)
            if self.triggered:
                return "detection is OFF: triggers are answered with an error verdict"
            return "detection is OFF: frames are read and not judged"
        if command == "threshold":
            if self.calibrated <= 0:
                raise Refused(f"the model's calibrated threshold {self.calibrated} is not positive; change it in the manifest")
            self.judge.threshold = parse_threshold(text, self.calibrated)
            return f"threshold is {self.judge.threshold!r} until the inspector restarts (then the configured one again)"
        if not self.judge.enabled:
            raise Refused("detection is OFF, so no frame is judged; turn it ON first (detect/set ON)")
        self.snapshot.request()
        when = "at the next trigger" if self.triggered else "next"
        return f"the frame judged {when} goes to {self.snapshot.publisher.base_topic}/snapshot"


class _Bucket:
    """RATE_PER_S commands a second, BURST at once."""

    def __init__(self) -> None:
        self.tokens, self.at = float(BURST), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.at) * RATE_PER_S)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class CommandListener:
    """Subscribes to the command topics of `cameras` (camera id -> its controls), answers each command.

    Its own connection with a clean session: a command sent while the inspector is away
    is not carried out later (it might be hours old); it gets no response, so the sender
    knows. The callbacks run on paho's network thread and only set flags and publish.
    """

    def __init__(self, broker: BrokerConfig, topic_prefix: str, cameras: Mapping[str, CameraControls], enabled: bool):
        self.enabled = enabled
        self.subscribed = threading.Event()  # the broker has confirmed the subscriptions
        self._prefix = topic_prefix
        self._cameras = dict(cameras)
        self._topics = {f"{topic_prefix}/{cid}/{command}/set": (cid, command) for cid in cameras for command in COMMANDS}
        self._buckets = {cid: _Bucket() for cid in cameras}
        self._flooded = 0
        self._flood_logged = 0.0
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"riad-edge-commands-{uuid.uuid4().hex[:12]}", protocol=paho.MQTTv311
        )
        broker.apply_to(self._client)
        self._client.max_queued_messages_set(MAX_QUEUED_ANSWERS)
        self._client.reconnect_delay_set(*RECONNECT_DELAY_S)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect_async(broker.host, broker.port, 30)
        self._client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("command subscription refused by the broker (%s); retrying", reason_code)
            return
        for camera_id in self._cameras:
            for command in COMMANDS:
                self._publish_state(camera_id, command)
        # Again after every reconnect: the session is clean.
        client.subscribe([(topic, QOS_COMMANDS) for topic in self._topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [topic for topic, code in zip(self._topics, reason_codes, strict=False) if code.is_failure]
        if refused:
            log.error("the broker refused the subscription to %s (not authorised?); those commands cannot reach the inspector",
                      ", ".join(refused))  # fmt: skip
        self.subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        try:
            self._command(message)
        except Exception:  # an exception here would stop paho's network thread, and with it every command
            log.exception("command on %r failed", message.topic[:200])

    def _command(self, message: paho.MQTTMessage) -> None:
        camera_id, command = self._topics.get(message.topic, (None, None))
        if camera_id is None or command is None:
            return
        payload = bytes(message.payload)
        if not self._buckets[camera_id].take():
            self._note_flood(camera_id)
            return
        ok, reason = False, ""
        try:
            if not self.enabled:
                raise Refused(ENABLE_HINT)
            if message.retain:
                raise Refused("retained command ignored: send commands without the retain flag "
                              "(clear it with an empty retained message)")  # fmt: skip
            reason = self._cameras[camera_id].apply(command, payload_text(payload))
            ok = True
        except Refused as refusal:
            reason = str(refusal)
        if ok:
            log.warning("camera %s: command %s %s: %s", camera_id, command, shown_payload(payload), reason)
            self._publish_state(camera_id, command)
        else:
            log.info("camera %s: command %s refused: %s", camera_id, command, reason)
        self._answer(camera_id, command, payload, ok, reason)

    def _note_flood(self, camera_id: str) -> None:
        self._flooded += 1
        now = time.monotonic()
        if now - self._flood_logged >= FLOOD_LOG_INTERVAL_S:
            self._flood_logged = now
            log.warning("camera %s: more than %g commands a second; %d dropped unanswered so far",
                        camera_id, RATE_PER_S, self._flooded)  # fmt: skip

    def _publish_state(self, camera_id: str, command: str) -> None:
        state = self._cameras[camera_id].state(command)
        if state is not None:
            self._client.publish(f"{self._prefix}/{camera_id}/{command}/state", state, QOS_COMMANDS, retain=True)

    def _answer(self, camera_id: str, command: str, payload: bytes, ok: bool, reason: str) -> None:
        now = time.time()
        response = {
            "schema_version": SCHEMA_VERSION,
            "camera_id": camera_id,
            "command": command,
            "payload": shown_payload(payload),
            "ok": ok,
            "reason": reason,
            "timestamp": iso_utc(now),
            "epoch": now,
        }
        self._client.publish(f"{self._prefix}/{camera_id}/command/response", json.dumps(response), QOS_COMMANDS, retain=False)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def camera_controls(publisher: MqttPublisher, judge: FrameJudge, tracker=None, triggered: bool = False) -> CameraControls:
    """The lifecycle and snapshot sinks around a camera's publisher (sinks in place of it), and what commands change."""
    lifecycle = DefectLifecycle(publisher, tracker, detecting=lambda: judge.enabled)
    return CameraControls(judge, lifecycle, SnapshotOnRequest(publisher), triggered)


def attach_controls(pipeline, publisher: MqttPublisher) -> CameraControls:
    """A free-running camera's controls, their lifecycle and snapshot sinks in the pipeline in place of the bare publisher."""
    controls = camera_controls(publisher, pipeline.judge, pipeline.defects)
    pipeline.add_sink(controls.snapshot)
    pipeline.add_sink(controls.lifecycle)  # added last, so first: the events go out before any other sink reports the defect
    return controls
