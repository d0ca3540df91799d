"""The on-disk spool: order, acknowledgement, crash survival and a full disk."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge.sinks.spool import Spool, SpoolError, SpoolFullError


def test_pending_in_insertion_order_until_acked(tmp_path):
    spool = Spool(tmp_path / "s.db")
    ids = [spool.put(f"t/{i}", bytes([i]), 1, i == 2) for i in range(5)]
    assert [m.id for m in spool.pending(10)] == ids
    assert [m.topic for m in spool.pending(2)] == ["t/0", "t/1"]
    assert [m.id for m in spool.pending(10, after=ids[2])] == ids[3:]
    assert spool.pending(10)[2].retain and spool.pending(10)[2].payload == b"\x02"
    spool.ack(ids[1])
    assert spool.depth() == 4
    assert [m.id for m in spool.pending(10)] == [ids[0], *ids[2:]]
    spool.close()


def test_a_killed_process_leaves_its_messages_for_the_next(tmp_path):
    path = tmp_path / "s.db"
    writer = (
        "import os, signal, sys\n"
        "from edge.sinks.spool import Spool\n"
        "s = Spool(sys.argv[1])\n"
        "for i in range(3): s.put('riad/cam/defect', b'event %d' % i, 1, False)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"  # no close(), no clean shutdown
    )
    run = subprocess.run([sys.executable, "-c", writer, str(path)], check=False)
    assert run.returncode == -9
    spool = Spool(path)
    assert [m.payload for m in spool.pending(10)] == [b"event 0", b"event 1", b"event 2"]
    spool.close()


def test_ids_keep_increasing_after_everything_was_acked(tmp_path):
    # A reused id would let a new message hide behind the sender's "already handed" mark.
    spool = Spool(tmp_path / "s.db")
    first = spool.put("t", b"a", 1, False)
    spool.ack(first)
    spool.close()
    spool = Spool(tmp_path / "s.db")
    assert spool.put("t", b"b", 1, False) > first
    spool.close()


def test_one_process_at_a_time(tmp_path):
    spool = Spool(tmp_path / "s.db")
    with pytest.raises(SpoolError, match="in use by another process"):
        Spool(tmp_path / "s.db")
    spool.close()
    Spool(tmp_path / "s.db").close()


def test_a_file_that_is_not_a_spool(tmp_path):
    (tmp_path / "s.db").write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(SpoolError, match="not a database"):
        Spool(tmp_path / "s.db")


def test_size_limit_raises_spool_full_and_recovers_after_acks(tmp_path):
    # max_bytes sets SQLite's max_page_count: the same SQLITE_FULL a full disk gives.
    spool = Spool(tmp_path / "s.db", max_bytes=256 * 1024)
    stored = 0
    with pytest.raises(SpoolFullError, match="full"):
        while stored < 1000:
            spool.put("t", b"x" * 20_000, 1, False)
            stored += 1
    assert 0 < stored < 1000 and spool.depth() == stored  # the failed put left nothing half-written
    for message in spool.pending(stored):
        spool.ack(message.id)
    spool.put("t", b"x" * 20_000, 1, False)
    spool.close()


def test_a_really_full_filesystem(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=False, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        spool = Spool(mount / "s.db")
        with pytest.raises(SpoolFullError, match="no space left"):
            for _ in range(1000):
                spool.put("t", b"x" * 20_000, 1, False)
        assert spool.depth() > 0
        spool.close()
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("tiny_disk", ["4m"], indirect=True)
def test_on_a_small_disk_the_spool_holds_messages_not_its_write_ahead_log(tiny_disk):
    # Events of 5 kB, two of three delivered, while the disk fills: with SQLite's default
    # checkpoint (every 1000 pages) the WAL grew to 4 MB and the disk was full with 45 waiting.
    spool = Spool(tiny_disk / "s.db")
    try:
        with pytest.raises(SpoolFullError):
            for i in range(5000):
                message_id = spool.put("t", bytes(5000), 1, False)
                if i % 3:
                    spool.ack(message_id)
        assert spool.depth() * 5000 > 2_000_000  # over half the disk holds waiting messages
    finally:
        spool.close()  # before the disk is unmounted


def test_a_spool_path_that_cannot_be_a_spool_is_a_clear_error(tmp_path):
    with pytest.raises(SpoolError, match=r"is a folder; give a file in it, such as .*line\.spool"):
        Spool(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(SpoolError, match=r"cannot open spool .*file/line\.spool: .*file is a file, not a folder"):
        Spool(tmp_path / "file" / "line.spool")
    with pytest.raises(SpoolError, match=r"cannot open spool /proc/riad-test\.spool: "):
        Spool("/proc/riad-test.spool")  # a folder no one may create files in


def test_a_symlink_to_a_spool_in_use_is_refused_too(tmp_path):
    # Two names for one spool would let two inspectors send the same messages.
    spool = Spool(tmp_path / "s.db")
    (tmp_path / "link.db").symlink_to(tmp_path / "s.db")
    (tmp_path / "dir-link").symlink_to(tmp_path)
    for other_name in (tmp_path / "link.db", tmp_path / "dir-link" / "s.db"):
        with pytest.raises(SpoolError, match="in use by another process"):
            Spool(other_name)
    spool.close()


def test_set_aside_keeps_the_message_and_why_out_of_the_queue(tmp_path):
    spool = Spool(tmp_path / "s.db")
    first, second = spool.put("#/bad", b"a", 1, False), spool.put("riad/ok", b"b", 1, False)
    spool.set_aside(first, "it contains the wildcard '#'")
    assert [m.id for m in spool.pending(10)] == [second]
    assert (spool.depth(), spool.set_aside_count()) == (1, 1)
    spool.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT topic, payload, reason FROM set_aside").fetchall() == [
            ("#/bad", b"a", "it contains the wildcard '#'")
        ]
