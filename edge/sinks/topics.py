"""MQTT topic names the broker accepts: checked once, up front, so no event is spooled under a topic it refuses.

MQTT 3.1.1 (section 4.7): a topic name is UTF-8 text of 1 to 65 535 bytes without the
wildcards `+` and `#` and without U+0000; mosquitto also refuses control characters
(U+0001-U+001F, U+007F-U+009F). A broker that gets such a topic in a PUBLISH drops the
connection, and paho refuses wildcards before sending: either way the message could never
be delivered.
"""

from __future__ import annotations

import re

MAX_TOPIC_BYTES = 65_535
# The longest topic we publish below `<prefix>/<camera>`: "/defect/<36-character uuid>/overlay".
LONGEST_SUFFIX_BYTES = len("/defect/") + 36 + len("/overlay")
_FORBIDDEN = re.compile(r"[+#\x00-\x1f\x7f-\x9f]")


class TopicError(ValueError):
    """A name that cannot be part of an MQTT topic."""


def shown(name: str, limit: int = 40) -> str:
    """A name for an error message: quoted, cut short when long (a 70 000-character id is not a message)."""
    if len(name) <= limit:
        return repr(name)
    return f"{name[:limit]!r}... ({len(name.encode('utf-8', 'surrogatepass'))} bytes)"


def topic_problem(topic: str) -> str | None:
    """Why the broker would refuse `topic` as a PUBLISH topic name; None when it would take it."""
    if not topic:
        return "it is empty"
    bad = _FORBIDDEN.search(topic)
    if bad:
        char = bad.group()
        return f"it contains the wildcard {char!r}" if char in "+#" else f"it contains the control character {char!r}"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8 text"
    if size > MAX_TOPIC_BYTES:
        return f"it is {size} bytes long, over MQTT's limit of {MAX_TOPIC_BYTES}"
    return None


def check_names(topic_prefix: str, camera_id: str) -> None:
    """Raises TopicError unless every topic under `<prefix>/<camera>/` is one the broker accepts.

    The prefix may have several levels (`plant1/riad`); the camera id is one level.
    """
    if not topic_prefix:
        raise TopicError("the topic prefix is empty; give one such as 'riad'")
    if not camera_id:
        raise TopicError("the camera id is empty")
    if "/" in camera_id:
        raise TopicError(f"camera id {shown(camera_id)} contains '/'; it is one topic level")
    if "" in topic_prefix.split("/"):
        # Legal MQTT, but riad//line1/... is not what anyone subscribing to riad/# means.
        levels = "/".join(level for level in topic_prefix.split("/") if level)
        raise TopicError(
            f"topic prefix {shown(topic_prefix)} has an empty topic level (a leading, trailing or double '/')"
            + (f"; did you mean {shown(levels)}?" if levels else "")
        )
    if topic_prefix.startswith("$"):
        # Brokers keep $-topics for themselves ($SYS): most refuse clients' publishes there,
        # and a subscription to # does not see them.
        raise TopicError(f"topic prefix {shown(topic_prefix)} starts with '$', which brokers keep for their own topics")
    for what, name in (("topic prefix", topic_prefix), ("camera id", camera_id)):
        problem = topic_problem(name)
        if problem:
            raise TopicError(f"{what} {shown(name)} cannot be part of an MQTT topic: {problem}")
    longest = len(f"{topic_prefix}/{camera_id}".encode()) + LONGEST_SUFFIX_BYTES
    if longest > MAX_TOPIC_BYTES:
        raise TopicError(
            f"topic prefix and camera id are too long: their topics would be up to {longest} bytes, "
            f"over MQTT's limit of {MAX_TOPIC_BYTES}"
        )
