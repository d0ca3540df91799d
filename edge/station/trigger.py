"""Triggers: "part 1234 is in place", from a photo-eye, a PLC or a MES over MQTT.

Topic `<prefix>/<camera>/trigger`, payload either the part id as plain text (`1234`)
or JSON: `{"part_id": "1234", "frames": 3, "deadline_ms": 500, "epoch": 1795598127.1}`.
`frames` (default 1) frames after the trigger are inspected; `deadline_ms` overrides
the camera's deadline; `epoch`, when the sender put it in, is when the part was in
place: the deadline counts from it, so a trigger that waited on the broker while the
inspector was away gets `error`, not a verdict on whatever part is in view now.
A payload that is not a usable trigger still gets a verdict, `error`, never silence.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.sinks.broker import RECONNECT_DELAY_S, BrokerConfig

log = logging.getLogger(__name__)

MAX_FRAMES_PER_TRIGGER = 16
MAX_PART_ID_LENGTH = 200
QOS_TRIGGERS = 1  # a lost trigger is a part without a verdict


@dataclass(frozen=True)
class Trigger:
    part_id: str | None  # None only for a payload in which no part id could be found
    frames: int
    deadline_s: float | None  # None: the camera's own deadline
    received_at: float  # monotonic clock, for the trigger-to-verdict latency
    received_epoch: float
    problem: str | None = None  # why this payload cannot be served; it gets an error verdict
    redelivered: bool = False  # MQTT's DUP flag: the broker may have delivered this trigger before


def parse_trigger(
    payload: bytes, received_at: float | None = None, received_epoch: float | None = None, redelivered: bool = False
) -> Trigger:
    """A trigger from its payload; a malformed one comes back with `problem` set."""
    at = time.monotonic() if received_at is None else received_at
    epoch = time.time() if received_epoch is None else received_epoch

    def bad(problem: str, part_id: str | None = None) -> Trigger:
        return Trigger(part_id, 1, None, at, epoch, problem, redelivered)

    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return bad("trigger payload is not UTF-8 text")
    if text.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            return bad(f"trigger payload is not valid JSON ({exc}): {text[:80]!r}")
    else:
        # A bare part id, what a simple PLC gateway sends, as written: JSON would read
        # 4711.10 as the number 4711.1, and 1e5 or true not as a part id at all.
        try:
            data = json.loads(text) if text.startswith('"') else text
        except ValueError:
            data = text
    if isinstance(data, (str, int)) and not isinstance(data, bool):
        data = {"part_id": data}
    if not isinstance(data, dict):
        return bad(f"trigger payload must be a part id or a JSON object, not {text[:80]!r}")
    part_id = data.get("part_id")
    if isinstance(part_id, bool) or not isinstance(part_id, (str, int)) or not str(part_id).strip():
        return bad(f"trigger has no part_id: {text[:80]!r}")
    part_id = str(part_id).strip()
    if len(part_id) > MAX_PART_ID_LENGTH:
        return bad(f"part_id longer than {MAX_PART_ID_LENGTH} characters", part_id[:MAX_PART_ID_LENGTH])
    frames = data.get("frames", 1)
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES_PER_TRIGGER:
        return bad(f"frames must be a whole number from 1 to {MAX_FRAMES_PER_TRIGGER}, not {frames!r}", part_id)
    deadline_ms = data.get("deadline_ms")
    if deadline_ms is not None and (isinstance(deadline_ms, bool) or not isinstance(deadline_ms, (int, float)) or not deadline_ms > 0):
        return bad(f"deadline_ms must be a positive number, not {deadline_ms!r}", part_id)
    sent = data.get("epoch")
    if sent is not None:
        if isinstance(sent, bool) or not isinstance(sent, (int, float)) or not sent > 0:
            return bad(f"epoch must be seconds since 1970, not {sent!r}", part_id)
        # Clocks of sender and station may differ a little: a trigger is never younger than its arrival.
        at, epoch = at - max(0.0, epoch - sent), min(epoch, sent)
    return Trigger(part_id, frames, None if deadline_ms is None else deadline_ms / 1000.0, at, epoch, None, redelivered)


class TriggerSubscriber:
    """Subscribes to the trigger topics and hands each trigger to its camera's callback.

    A persistent session (fixed client id, clean_session=False): triggers sent while we
    reconnect wait on the broker. The callbacks run on paho's network thread and must
    not block (TriggeredCamera.submit only queues).
    """

    def __init__(self, broker: BrokerConfig, handlers: Mapping[str, Callable[[Trigger], None]], client_id: str):
        self.handlers = handlers  # topic -> callback
        self.subscribed = threading.Event()  # the broker has confirmed the subscription
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=paho.MQTTv311
        )
        broker.apply_to(self._client)
        self._client.reconnect_delay_set(*RECONNECT_DELAY_S)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda client, userdata, mid, reason_codes, properties: self.subscribed.set()
        self._client.connect_async(broker.host, broker.port, 30)
        self._client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("trigger subscription refused by the broker (%s); retrying", reason_code)
            return
        # Again after every reconnect: a broker without persistence has forgotten the session.
        client.subscribe([(topic, QOS_TRIGGERS) for topic in self.handlers])

    def _on_message(self, client, userdata, message) -> None:
        handler = self.handlers.get(message.topic)
        if handler is not None:
            handler(parse_trigger(message.payload, redelivered=bool(message.dup)))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def trigger_client_id(topic_prefix: str, camera_ids: list[str]) -> str:
    """Stable across restarts, so the broker keeps the session; unique per set of cameras."""
    return f"riad-edge-triggers-{uuid.uuid5(uuid.NAMESPACE_URL, topic_prefix + '/' + ','.join(sorted(camera_ids))).hex[:12]}"
