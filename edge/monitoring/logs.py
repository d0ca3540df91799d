"""The inspector's log: stderr, as text for people or as JSON lines for journald, Loki or Elastic.

stdout is the program's output (DEFECT and VERDICT lines, the start-up report, the
summary) and stays text whatever the log format: scripts read it. stderr is the log:

    text   WARNING edge.sources.cameras: camera 0 dropped; reconnecting
    json   {"time": "2025-01-30T07:12:03.114Z", "level": "warning", "logger": "edge.sources.cameras",
            "message": "camera 0 dropped; reconnecting", "camera": "cam0"}

`camera` is the camera the process watches (a single-camera run), or the one a log call
names with `extra={"camera": ...}`; a station's messages name their camera in the text.
A JSON line has `exception` too when the message comes with a traceback (debug level).

Known secrets (the broker and live-view passwords, a stream URL's password) are
replaced by *** in every line, whatever module wrote it: a log is read by more people
than the password was meant for.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from enum import Enum
from urllib.parse import unquote

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
SHORTEST_SECRET = 4  # a shorter "secret" would mask ordinary words in every line


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(str, Enum):
    text = "text"
    json = "json"


class _Masking:
    """Replaces each secret in a formatted line by ***."""

    secrets: tuple[str, ...] = ()

    def mask(self, line: str) -> str:
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line


class TextFormatter(_Masking, logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return self.mask(super().format(record))


class JsonFormatter(_Masking, logging.Formatter):
    """One JSON object per record, on one line (newlines in a message or traceback are escaped)."""

    camera: str | None = None  # the process's only camera, when it has one

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.mask(record.getMessage()),
        }
        camera = getattr(record, "camera", None) or self.camera
        if camera is not None:
            entry["camera"] = camera
        if record.exc_info:
            entry["exception"] = self.mask(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


_formatter: TextFormatter | JsonFormatter | None = None


def configure_logging(level: LogLevel | str = LogLevel.warning, fmt: LogFormat | str = LogFormat.text,
                      secrets: Iterable[str | None] = ()) -> None:
    """Sends the log to stderr at `level` in `fmt`, hiding `secrets` (None and short ones are skipped)."""
    global _formatter
    _formatter = JsonFormatter() if LogFormat(fmt) is LogFormat.json else TextFormatter()
    _formatter.secrets = tuple(sorted({s for s in secrets if s and len(s) >= SHORTEST_SECRET}, key=len, reverse=True))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LogLevel(level).value.upper())


def url_passwords(url: str | None) -> list[str]:
    """The password inside a URL (mqtt://user:pw@host, rtsp://user:pw@cam/...), as written and decoded."""
    if not url or "://" not in url:
        return []
    # As edge.sinks.broker.redact reads it: the password runs from the login's first ':' to the last '@'.
    login, at, _ = url.split("://", 1)[1].rpartition("@")
    password = login.partition(":")[2] if at else ""
    return [password, unquote(password)] if password else []


def set_camera(camera_id: str) -> None:
    """The JSON lines' `camera` from now on: for a process that watches one camera."""
    if isinstance(_formatter, JsonFormatter):
        _formatter.camera = camera_id


def print_error(message: str) -> None:
    """A run's final error: `error: ...` on stderr, or a JSON line (level error) when the log is JSON."""
    if isinstance(_formatter, JsonFormatter):
        logging.getLogger("edge").error(message)
    else:
        print(f"error: {message}", file=sys.stderr)

