"""A durable outbox on disk: messages wait here until the broker has acknowledged them.

SQLite in WAL mode with synchronous=FULL: a `put` that returned is on the disk and
survives a crash or a power cut; an `ack` deletes the message. Only one process may
use a spool at a time (a lock file beside it, named after the spool's real path, so a
symlink cannot get round it), so two inspectors never send the same messages twice.

A message the broker can never take (an invalid topic left by an older version or a bad
option) is set aside in a second table of the same file: kept, counted, never sent.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from edge.paths import make_folder


def default_spool_path(camera_id: str) -> Path:
    """Undelivered MQTT events survive restarts here (XDG state folder)."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "riad-edge" / f"{camera_id}.spool"


class SpoolError(Exception):
    """The spool cannot be opened or written."""


class SpoolFullError(SpoolError):
    """No room left for another message: the disk (or the spool's size limit) is full."""


@dataclass(frozen=True)
class SpooledMessage:
    id: int  # increases with every put: the delivery order
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Spool:
    """Messages in insertion order, kept until acknowledged. Safe to share between threads."""

    def __init__(self, path: Path | str, max_bytes: int | None = None):
        self.path = Path(path).resolve()  # the lock must be the same for every name of the file
        self._lock = threading.Lock()
        self._lock_file = self._take_process_lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # Without this the WAL file keeps its largest size; checkpoints then truncate it.
            self._db.execute("PRAGMA journal_size_limit=1048576")
            # A checkpoint every 64 pages (256 kB) instead of SQLite's 1000 (4 MB): on a small
            # disk the WAL alone would otherwise fill it (a 4 MB disk held 45 events of 5 kB, now 755).
            self._db.execute("PRAGMA wal_autocheckpoint=64")
            if max_bytes is not None:
                page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
                self._db.execute(f"PRAGMA max_page_count={max(1, max_bytes // page_size)}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS messages ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
                " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS set_aside ("
                " id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,"
                " qos INTEGER NOT NULL, retain INTEGER NOT NULL, reason TEXT NOT NULL)"
            )
        except sqlite3.DatabaseError as e:
            self._lock_file.close()
            raise self._error("open", e) from None

    def _take_process_lock(self):
        if self.path.is_dir():
            raise SpoolError(f"spool {self.path} is a folder; give a file in it, such as {self.path / 'line.spool'}")
        try:
            make_folder(self.path.parent)
            lock_file = open(self.path.with_name(self.path.name + ".lock"), "a+")  # noqa: SIM115 (held open: the lock)
        except OSError as e:
            raise SpoolError(f"cannot open spool {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise SpoolError(f"spool {self.path} is in use by another process") from None
        return lock_file

    def _error(self, action: str, e: Exception) -> SpoolError:
        full = getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
            isinstance(e, OSError) and e.errno == errno.ENOSPC
        )
        if full:
            return SpoolFullError(f"spool {self.path} is full (no space left on its disk or at its size limit): {e}")
        return SpoolError(f"cannot {action} spool {self.path}: {e}")

    def put(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Stores a message durably and returns its id; SpoolFullError when there is no room."""
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT INTO messages (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                    (topic, payload, qos, int(retain)),
                )
            except (sqlite3.DatabaseError, OSError) as e:
                raise self._error("write to", e) from None
            return int(cursor.lastrowid)  # type: ignore[arg-type]  # set by every INSERT

    def pending(self, limit: int, after: int = 0) -> list[SpooledMessage]:
        """Up to `limit` unacknowledged messages with an id above `after`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [SpooledMessage(i, t, bytes(p), q, bool(r)) for i, t, p, q, r in rows]

    def ack(self, message_id: int) -> None:
        """The broker has the message: forget it."""
        with self._lock:
            try:
                self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            except (sqlite3.DatabaseError, OSError) as e:
                raise self._error("update", e) from None

    def set_aside(self, message_id: int, reason: str) -> None:
        """Moves a message the broker can never take out of the queue, keeping it (and why) on disk."""
        with self._lock:
            try:
                with self._db:  # one transaction: the message is in exactly one of the tables
                    self._db.execute("BEGIN")
                    self._db.execute(
                        "INSERT INTO set_aside (id, topic, payload, qos, retain, reason)"
                        " SELECT id, topic, payload, qos, retain, ? FROM messages WHERE id = ?",
                        (reason, message_id),
                    )
                    self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            except (sqlite3.DatabaseError, OSError) as e:
                raise self._error("update", e) from None

    def set_aside_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM set_aside").fetchone()[0]

    def depth(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lock_file.close()

