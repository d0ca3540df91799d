"""`riad-edge watch`: subscribe to the inspector's alerts and verdicts and print one readable line per event."""

from __future__ import annotations

import collections
import json
import queue
import sys
import time
from typing import TextIO

import paho.mqtt.client as paho

from edge.sinks.broker import BrokerConfig, connect_client
from edge.sinks.mqtt import iso_utc
from edge.sinks.topics import check_names

RECENT_IDS = 10_000  # delivery is at-least-once: remember this many event ids to drop repeats


def describe(event: dict) -> str:
    """One line: time, camera, frame, score, boxes."""
    boxes = event.get("boxes", [])
    regions = "; ".join(f"{b['width']}x{b['height']} at ({b['x']},{b['y']}) peak {b['peak']:.3f}" for b in boxes[:3])
    more = f"; +{len(boxes) - 3} more" if len(boxes) > 3 else ""
    # Events from before defect grouping (schema 1 without the field) read as first frames.
    ongoing = f"  (same defect, its frame {event['defect_frame']})" if event.get("defect_frame", 1) > 1 else ""
    return (
        f"{event['timestamp']}  {event['camera_id']}  DEFECT  frame {event['frame_index']}  "
        f"score {event['score']:.3f} > {event['threshold']:.3f}  "
        f"{len(boxes)} region{'s' if len(boxes) != 1 else ''}{': ' if boxes else ''}{regions}{more}{ongoing}"
    )


def describe_verdict(verdict: dict) -> str:
    """One line per part of a triggered camera: OK, NOK or error, and why."""
    head = f"{verdict['timestamp']}  {verdict['camera_id']}  {verdict['verdict']}  part {verdict['part_id']}"
    if verdict["verdict"] == "error":
        return f"{head}  {verdict['error']}"
    above = verdict["verdict"] == "NOK"
    return (f"{head}  score {verdict['score']:.3f} {'>' if above else '<='} {verdict['threshold']:.3f}  "
            f"{verdict['latency_ms']:.0f} ms after its trigger")


def watch(
    broker: BrokerConfig,
    camera_id: str = "+",
    topic_prefix: str = "riad",
    count: int | None = None,
    timeout: float | None = None,
    as_json: bool = False,
    out: TextIO = sys.stdout,
    connect_timeout: float = 10.0,
) -> int:
    """Prints defect events, triggered cameras' verdicts and availability changes until
    `count` events (defects and verdicts) or `timeout` seconds.

    Returns the number of distinct defect events and verdicts printed. Raises BrokerError when the
    broker cannot be reached or refuses the login: a person is watching, so fail fast;
    TopicError for a prefix or camera id that is no topic level (`+` is all cameras).
    """
    check_names(topic_prefix, "cam" if camera_id == "+" else camera_id)  # a TopicError before any connection
    defect_topic = f"{topic_prefix}/{camera_id}/defect"
    available_topic = f"{topic_prefix}/{camera_id}/available"
    verdict_topic = f"{topic_prefix}/{camera_id}/verdict"
    inbox: queue.SimpleQueue[paho.MQTTMessage] = queue.SimpleQueue()

    def subscribe(client: paho.Client) -> None:
        # The handler first: the retained `available` arrives right after SUBACK.
        client.on_message = lambda c, u, message: inbox.put(message)
        client.subscribe([(defect_topic, 1), (available_topic, 1), (verdict_topic, 1)])

    client = connect_client(broker, connect_timeout, on_connected=subscribe)
    try:
        return _print_messages(inbox, count, timeout, as_json, out)
    finally:
        client.disconnect()
        client.loop_stop()


def _print_messages(inbox, count, timeout, as_json, out) -> int:
    seen: collections.OrderedDict[object, None] = collections.OrderedDict()
    printed = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while count is None or printed < count:
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            break
        try:
            message = inbox.get(timeout=wait)
        except queue.Empty:
            break
        camera = message.topic.split("/")[-2]
        if message.topic.endswith("/available"):
            state = message.payload.decode(errors="replace")
            line = json.dumps({"camera_id": camera, "available": state}) if as_json else (
                f"{iso_utc(time.time())}  {camera}  {state}{'  (retained)' if message.retain else ''}"
            )
        else:
            verdict = message.topic.endswith("/verdict")
            try:
                event = json.loads(message.payload)
                # A verdict has no event id: its part and trigger time name it.
                event_id = (camera, event["part_id"], event["trigger_timestamp"]) if verdict else event["event_id"]
                line = json.dumps(event) if as_json else describe_verdict(event) if verdict else describe(event)
            except (ValueError, KeyError, TypeError) as e:
                print(f"ignored a malformed {'verdict' if verdict else 'event'} on {message.topic}: {e}", file=sys.stderr)
                continue
            if event_id in seen:
                continue
            seen[event_id] = None
            if len(seen) > RECENT_IDS:
                seen.popitem(last=False)
            printed += 1
        print(line, file=out, flush=True)
    return printed
