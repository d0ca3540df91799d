"""Defect alerts over MQTT, delivered at least once: spooled to disk first, deleted when the broker has them.

The topics and payloads are a public API, documented in docs/mqtt.md (schema_version 1).

Threads: `handle` runs on the pipeline thread and only writes to the spool; a sender
thread hands spooled messages to paho in order; paho's network thread (loop_start)
connects, reconnects and calls `_on_publish` when the broker acknowledges a message.
A message handed to paho stays with paho, which re-sends it after a reconnect, until
the broker's PUBACK; so within one process each spooled message is handed over once.
paho calls `_on_publish` while holding its own lock, so the callbacks never take ours:
they pass acknowledgements to the sender through a queue and wake it with an event.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.sinks.broker import RECONNECT_DELAY_S, BrokerConfig, BrokerError, BrokerTlsFailed, connect_client, connection_failed, refused, silent
from edge.results import FrameResult
from edge.sinks.spool import Spool, SpoolError
from edge.sinks.topics import check_names, topic_problem

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
QOS_EVENTS = 1  # defects and their overlays: acknowledged by the broker, hence never lost
QOS_STATS = 0  # superseded every few seconds; losing one costs nothing
IN_FLIGHT = 20  # messages handed to paho and not yet acknowledged (paho's default window)
MEMORY_QUEUE_LIMIT = 1000  # defect events held in memory while the spool is full (about 1 kB each)
KEEPALIVE_S = 30
PROBLEM_INTERVAL_S = 60.0  # while the broker cannot be used, find out why and say so this often


class HeldEvent(NamedTuple):
    """A defect event the full spool could not take, kept in memory until it can, or until acknowledged."""

    topic: str
    event: bytes
    retain: bool


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def frame_fields(result: FrameResult, overlay_topic: str) -> dict:
    """One judged frame as a `defect` event and a lifecycle's `worst` describe it (docs/mqtt.md)."""
    height, width = result.frame.shape[:2]
    return {
        "frame_index": result.frame_index,
        "timestamp": iso_utc(result.timestamp),
        "epoch": result.timestamp,
        "score": float(result.score),
        "threshold": float(result.threshold),
        "frame_width": width,
        "frame_height": height,
        "boxes": [b.as_dict() for b in result.boxes],
        "overlay_topic": overlay_topic,
    }


class MqttPublisher:
    """A ResultSink that publishes each defective frame as an event and its heatmap overlay.

    The constructor connects; it raises BrokerError when the broker refuses the login or
    the TLS handshake fails (a configuration error), and TopicError (a ValueError) for a
    prefix or camera id that cannot be in a topic. An unreachable or silent broker is not
    an error: events wait in the spool, paho keeps retrying, and every `problem_interval`
    seconds a test connection names the cause in the log and `broker_problem`.

    After close(): `lost` events were never spooled (the disk was full), `undelivered`
    messages wait in the spool, `set_aside` messages were moved aside in this run, kept in
    the spool unsent (the broker can never take them; stats count all the spool keeps).
    """

    def __init__(
        self,
        broker: BrokerConfig,
        camera_id: str,
        spool_path: Path,
        topic_prefix: str = "riad",
        model_id: str = "",
        stats_source: Callable[[], dict] | None = None,
        stats_interval: float = 10.0,
        client_id: str | None = None,
        spool_max_bytes: int | None = None,
        connect_timeout: float = 5.0,
        problem_interval: float = PROBLEM_INTERVAL_S,
        connect_hooks: Sequence[Callable[[paho.Client], None]] = (),
    ):
        check_names(topic_prefix, camera_id)
        self.broker = broker
        self.camera_id = camera_id
        self.model_id = model_id
        self.base_topic = f"{topic_prefix}/{camera_id}"
        self.availability_topic = f"{self.base_topic}/available"
        self._stats_source = stats_source
        self._stats_interval = stats_interval
        self._connect_hooks = list(connect_hooks)  # run on paho's thread at each connection (Home Assistant discovery)
        self.spool = Spool(spool_path, max_bytes=spool_max_bytes)

        self._lock = threading.Lock()  # guards the state below (pipeline and sender threads)
        self._kick = threading.Event()  # wakes the sender: new event, acknowledgement, connection
        self._acked_mids: queue.SimpleQueue[int] = queue.SimpleQueue()  # from paho's thread
        # paho mid -> spool id, or the held event itself (sent from memory: in no spool until acknowledged)
        self._in_flight: dict[int, int | HeldEvent] = {}
        self._last_handed = 0  # highest spool id handed to paho by this process
        self._memory_queue: collections.deque[HeldEvent] = collections.deque()
        self._to_delete: collections.deque[int] = collections.deque()  # delivered spool ids
        self._dropped = 0
        self._connections = 0
        self._closing = False
        self._answered = threading.Event()  # the broker answered our first CONNECT
        self._refusal: BrokerError | None = None
        self._connect_timeout = connect_timeout
        self._problem_interval = problem_interval
        self.broker_problem: str | None = None  # why the broker cannot be used now; None while connected
        self.last_broker_problem: str | None = None  # the latest cause in this run, kept after recovery (stats)
        self._problem_logged: tuple[str, float] | None = None  # (what, when) was last logged
        self.disconnected_since: float | None = time.monotonic()  # None while connected (health, metrics)
        self._stop_probing = threading.Event()
        self.lost = self.undelivered = self.set_aside = 0  # for the exit code; lost and undelivered set by close()

        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"riad-edge-{camera_id[:64]}-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv311,  # what every broker speaks, Node-RED's and amqtt included
        )
        broker.apply_to(self._client)
        self._client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        self._client.reconnect_delay_set(*RECONNECT_DELAY_S)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._connect(connect_timeout)

        self._sender = threading.Thread(target=self._send_loop, name=f"mqtt-sender-{camera_id[:64]}", daemon=True)
        self._sender.start()
        self._prober = threading.Thread(target=self._probe_loop, name=f"mqtt-prober-{camera_id[:64]}", daemon=True)
        self._prober.start()
        _OPEN_PUBLISHERS.add(self)
        left = self.spool.depth()
        if left:
            log.info("%d message(s) left in spool %s by a previous run; delivering them first", left, spool_path)

    # --- connection -------------------------------------------------------------------

    def _connect(self, timeout: float) -> None:
        """Raises BrokerError for a refused login or a failed TLS handshake; an unreachable broker is retried."""
        try:
            self._client.connect(self.broker.host, self.broker.port, KEEPALIVE_S)
            reached = True
        except OSError as e:
            error = connection_failed(self.broker, e)
            if isinstance(error, BrokerTlsFailed):
                self.spool.close()
                raise error from None
            self._report_problem(str(error))
            self._client.connect_async(self.broker.host, self.broker.port, KEEPALIVE_S)
            reached = False
        self._client.loop_start()
        if not reached:
            return
        if not self._answered.wait(timeout):
            self._report_problem(str(silent(self.broker, timeout)))
        elif self._refusal is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self.spool.close()
            raise self._refusal

    def _report_problem(self, problem: str) -> None:
        """Logs why the broker cannot be used: when the cause changes, and again every interval while it lasts."""
        self.broker_problem = self.last_broker_problem = problem
        now = time.monotonic()
        last = self._problem_logged
        if last is None or last[0] != problem or now - last[1] >= self._problem_interval * 0.9:
            self._problem_logged = (problem, now)
            log.warning("%s; events wait in spool %s (retrying)", problem, self.spool.path)

    def _probe_loop(self) -> None:
        """While paho cannot connect, a test connection like doctor's finds out why (refused, TLS, silent...)."""
        while not self._stop_probing.wait(self._problem_interval):
            if self._client.is_connected():
                continue
            try:
                probe = connect_client(self.broker, self._connect_timeout)
                probe.disconnect()  # the broker is fine now: paho's next retry gets through
                probe.loop_stop()
            except BrokerError as e:
                if not self._client.is_connected() and not self._stop_probing.is_set():
                    self._report_problem(str(e))

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            error = refused(self.broker, reason_code)
            if not self._answered.is_set():
                self._refusal = error
            self._report_problem(str(error))
            self._answered.set()
            return
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        for hook in self._connect_hooks:
            hook(client)
        self._connections += 1
        if self._connections > 1 or self.broker_problem:
            log.warning("%s broker %s", "reconnected to" if self._connections > 1 else "connected to", self.broker.url)
        self.broker_problem = None
        self._problem_logged = None
        self.disconnected_since = None
        self._answered.set()
        self._kick.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self._closing:
            self.disconnected_since = self.disconnected_since or time.monotonic()  # not after close(): no broker problem
            log.warning("lost the broker %s (%s); spooling events until it is back", self.broker.url, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acked_mids.put(mid)
        self._kick.set()

    # --- the pipeline side ------------------------------------------------------------

    def handle(self, result: FrameResult) -> str | None:
        """Spools an event (and its overlay) for a defective frame and returns its event id; good frames publish nothing."""
        if not result.is_defect:
            return None
        event_id = str(uuid.uuid4())
        overlay_topic = self.overlay_topic(event_id)
        event = self._event(result, event_id, overlay_topic)
        overlay = result.overlay_jpeg()
        with self._lock:
            if self._closing:
                raise RuntimeError("MqttPublisher.handle() after close()")
            self._spool_or_hold(f"{self.base_topic}/defect", event, f"defect event {event_id}")
            self._spool_image(overlay_topic, overlay, f"overlay of event {event_id}", retain=False)
        self._kick.set()
        return event_id

    def overlay_topic(self, event_id: str) -> str:
        """Where the overlay of the defect event `event_id` goes (docs/mqtt.md)."""
        return f"{self.base_topic}/defect/{event_id}/overlay"

    def send(self, subtopic: str, payload: bytes, label: str, retain: bool = False) -> None:
        """Another durable message under this camera's topic (a station's verdict), in order with the events.

        `label` names the message in the log if it is ever dropped. `retain`: a state
        (`defect/active`, the latest overlay) that the broker keeps for later subscribers.
        """
        with self._lock:
            if self._closing:
                raise RuntimeError("MqttPublisher.send() after close()")
            self._spool_or_hold(f"{self.base_topic}/{subtopic}", payload, label, retain)
        self._kick.set()

    def send_image(self, subtopic: str, jpeg: bytes, label: str, retain: bool = False) -> None:
        """A JPEG under this camera's topic, in order with the events; like an event's overlay it is
        kept on disk only, never in memory when the spool is full (then it is dropped, logged)."""
        with self._lock:
            if self._closing:
                raise RuntimeError("MqttPublisher.send_image() after close()")
            self._drain_memory_queue()
            self._spool_image(f"{self.base_topic}/{subtopic}", jpeg, label, retain)
        self._kick.set()

    def _spool_image(self, topic: str, jpeg: bytes, label: str, retain: bool) -> None:
        """An image into the spool, never into memory: held events come first, and an image is
        only worth its space next to them. Dropped (logged) when the spool cannot take it."""
        if self._memory_queue:
            log.error("%s dropped: the spool is full", label)
            return
        try:
            self.spool.put(topic, jpeg, QOS_EVENTS, retain)
        except SpoolError as e:
            log.error("%s not kept: %s", label, e)

    def _spool_or_hold(self, topic: str, event: bytes, label: str, retain: bool = False) -> None:
        """The event into the spool; into the bounded memory queue when the spool is full."""
        self._drain_memory_queue()
        if not self._memory_queue:  # newer events never overtake held ones
            try:
                self.spool.put(topic, event, QOS_EVENTS, retain)
                return
            except SpoolError as e:
                log.error("%s; holding events in memory (up to %d) until there is room", e, MEMORY_QUEUE_LIMIT)
        if len(self._memory_queue) >= MEMORY_QUEUE_LIMIT:
            self._dropped += 1
            log.error("DROPPED %s: spool full and %d events already held in memory", label, MEMORY_QUEUE_LIMIT)
            return
        self._memory_queue.append(HeldEvent(topic, event, retain))

    def _drain_memory_queue(self) -> None:
        while self._memory_queue:
            held = self._memory_queue[0]
            try:
                self.spool.put(held.topic, held.event, QOS_EVENTS, held.retain)
            except SpoolError:
                return
            self._memory_queue.popleft()

    def _event(self, result: FrameResult, event_id: str, overlay_topic: str) -> bytes:
        return json.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "event_id": event_id,
                "camera_id": self.camera_id,
                "model_id": self.model_id,
                **frame_fields(result, overlay_topic),
                "defect_id": result.defect_id,
                "defect_frame": result.defect_frame,
            }
        ).encode()

    # --- the sender thread ------------------------------------------------------------

    def _send_loop(self) -> None:
        next_stats = time.monotonic() + self._stats_interval
        while True:
            self._kick.clear()
            with self._lock:
                self._collect_acks()
                self._delete_delivered()
                self._drain_memory_queue()
                connected = self._client.is_connected()
                if connected:
                    self._hand_over()
                if self._closing and (not connected or self._idle()):
                    return
            self._kick.wait(timeout=max(0.0, min(1.0, next_stats - time.monotonic())))
            if time.monotonic() >= next_stats:
                self._publish_stats()
                next_stats = time.monotonic() + self._stats_interval

    def _collect_acks(self) -> None:
        while not self._acked_mids.empty():
            spool_id = self._in_flight.pop(self._acked_mids.get(), None)  # None for availability and stats
            if isinstance(spool_id, int):
                self._to_delete.append(spool_id)

    def _delete_delivered(self) -> None:
        # A full disk can refuse even a delete (WAL): keep the ids and retry, never re-send them.
        while self._to_delete:
            try:
                self.spool.ack(self._to_delete[0])
            except SpoolError as e:
                log.error("%s; a delivered message stays in the spool (re-sent after a restart if never deleted)", e)
                return
            self._to_delete.popleft()

    def _hand_over(self) -> None:
        room = IN_FLIGHT - len(self._in_flight)
        for message in self.spool.pending(room, after=self._last_handed) if room > 0 else []:
            self._last_handed = message.id
            problem = topic_problem(message.topic)
            if problem is None:
                try:
                    info = self._client.publish(message.topic, message.payload, message.qos, message.retain)
                except ValueError as e:  # paho refuses it before sending (a payload over MQTT's size limit)
                    problem = str(e)
                else:
                    self._in_flight[info.mid] = message.id
                    room -= 1
                    continue
            self._put_aside(message.id, message.topic, problem)
        # Held events go out only when nothing older waits in the spool; paho keeps them until acknowledged.
        while room > 0 and self._memory_queue and not self.spool.pending(1, after=self._last_handed):
            held = self._memory_queue.popleft()
            info = self._client.publish(held.topic, held.event, QOS_EVENTS, held.retain)
            self._in_flight[info.mid] = held
            room -= 1

    def _put_aside(self, message_id: int, topic: str, problem: str) -> None:
        """A message the broker can never take must not block the ones behind it: keep it on disk, unsent."""
        try:
            self.spool.set_aside(message_id, f"topic {topic[:200]!r}: {problem}")
        except SpoolError as e:
            log.error("%s; message %d is skipped in this run", e, message_id)
            return
        self.set_aside += 1
        log.error(
            "message %d in spool %s set aside, never to be sent: topic %r: %s (kept in the spool's set_aside table)",
            message_id, self.spool.path, topic[:200], problem,
        )  # fmt: skip

    def _idle(self) -> bool:
        return not self._in_flight and not self._memory_queue and not self.spool.pending(1, after=self._last_handed)

    def _publish_stats(self) -> None:
        if not self._client.is_connected():
            return
        try:
            pipeline = self._stats_source() if self._stats_source else {}
        except Exception:
            log.exception("stats source failed; publishing MQTT stats only")
            pipeline = {}
        now = time.time()
        with self._lock:
            mqtt = {
                "spool_depth": self.spool.depth(),
                "memory_queue": len(self._memory_queue),
                "in_flight": len(self._in_flight),
                "dropped": self._dropped,
                "set_aside": self.spool.set_aside_count(),
                "reconnects": max(0, self._connections - 1),
                "last_broker_problem": self.last_broker_problem,
            }
        payload = {
            "schema_version": SCHEMA_VERSION,
            "camera_id": self.camera_id,
            "model_id": self.model_id,
            "timestamp": iso_utc(now),
            "epoch": now,
            "pipeline": pipeline,
            "mqtt": mqtt,
        }
        self._client.publish(f"{self.base_topic}/stats", json.dumps(payload, default=float), QOS_STATS, False)

    # --- shutdown ---------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Delivers what it can within `timeout`, publishes `offline` and disconnects.

        Whatever is still in the spool is delivered by the next start on the same spool.
        Events held in memory (the spool was full) wait for room in it until `timeout`.
        """
        started = time.monotonic()
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._stop_probing.set()
        self._kick.set()
        self._sender.join(timeout)
        if self._client.is_connected():
            # A last stats message: the run's final counts, also for runs shorter than the interval.
            self._publish_stats()
            self._client.publish(self.availability_topic, "offline", qos=1, retain=True).wait_for_publish(2.0)
        self._client.disconnect()
        self._client.loop_stop()
        self._sender.join()  # returns within a second now that the client is disconnected
        with self._lock:
            self._collect_acks()
            self._delete_delivered()
            # Held events handed to paho but never acknowledged are in no spool: back into the
            # spool with the rest (the disk may have room again), ahead of the newer ones.
            self._memory_queue.extendleft(reversed(self._held_in_flight()))
        self._spool_held_events(deadline=started + timeout)
        lost = len(self._memory_queue)
        self.undelivered = self.spool.depth()
        self.lost = self._dropped + lost
        self.spool.close()
        if self.undelivered:
            why = f" ({self.broker_problem})" if self.broker_problem else ""
            log.warning("%d message(s) stay in spool %s%s; the next start delivers them", self.undelivered, self.spool.path, why)
        if self.set_aside:
            log.error("%d message(s) set aside in spool %s in this run: the broker can never take them", self.set_aside, self.spool.path)
        if lost:
            log.error("LOST %d defect event(s) held in memory: the spool was full at shutdown", lost)
        _OPEN_PUBLISHERS.discard(self)  # what it could not keep is reported above

    def only_in_memory(self) -> int:
        """Defect events in no spool (it was full): held, or sent from memory and not yet acknowledged."""
        return len(self._memory_queue) + len(self._held_in_flight())

    def _held_in_flight(self) -> list[HeldEvent]:
        """Held events handed to paho and not yet acknowledged, in the order they were sent."""
        in_flight = list(self._in_flight.values())  # one C call: no other thread changes it midway
        return [held for held in in_flight if isinstance(held, HeldEvent)]

    def _spool_held_events(self, deadline: float) -> None:
        """At shutdown, events held in memory go into the spool; while it is full, retried until
        `deadline` (at least a second), as a disk often gets room back soon (a log rotated, a file removed)."""
        deadline = max(deadline, time.monotonic() + 1.0)
        waiting = False
        while True:
            with self._lock:
                self._drain_memory_queue()
                if not self._memory_queue:
                    return
                if not waiting:
                    waiting = True
                    log.error(
                        "%d defect event(s) held in memory and spool %s is full; retrying for %.0f s before they are lost",
                        len(self._memory_queue), self.spool.path, deadline - time.monotonic(),
                    )  # fmt: skip
            if time.monotonic() >= deadline:
                return
            time.sleep(0.1)


# Publishers not yet closed: a second Ctrl-C, which exits at once, says what it loses.
_OPEN_PUBLISHERS: weakref.WeakSet[MqttPublisher] = weakref.WeakSet()


def events_only_in_memory() -> int:
    """Defect events of every open publisher that are in no spool: what exiting now loses.
    It only reads, so a signal handler may call it."""
    return sum(publisher.only_in_memory() for publisher in list(_OPEN_PUBLISHERS))


def close_all(publishers: Iterable[MqttPublisher], timeout: float = 5.0) -> None:
    """Closes several cameras' publishers at once: a station's shutdown takes one close
    timeout, not one per camera (systemd's stop timeout would kill it before the last)."""
    publishers = list(publishers)
    with ThreadPoolExecutor(max_workers=max(1, len(publishers)), thread_name_prefix="mqtt-close") as pool:
        for closing in [pool.submit(publisher.close, timeout) for publisher in publishers]:
            closing.result()
