"""`riad-edge` as a hostile user drives it: bad names, bad URLs, awkward passwords, a spool that
cannot deliver, a full disk, broken files. Each ends in one clear line and its documented exit code."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pytest
from conftest import fill
from media import bottle_frames, write_truncated_png, write_video
from test_cli_run import finished, riad_edge

from edge.local_broker import free_port
from edge.sinks.spool import Spool
from tests.broker import Subscriber

EXIT_UNDELIVERED, EXIT_EVENTS_LOST = 5, 6
RIAD_EDGE = [sys.executable, "-c", "from edge.cli import app; app()"]


@pytest.fixture
def clip(bottle_dir, tmp_path):
    return write_video(tmp_path / "line.avi", bottle_frames(bottle_dir, 4), "MJPG")


def run(clip, model, *args, **kwargs):
    return finished("run", "--source", clip, "--model", model, *args, **kwargs)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--topic-prefix", "#"], "topic prefix '#' cannot be part of an MQTT topic: it contains the wildcard '#'"),
        (["--topic-prefix", "plant/+"], "wildcard '+'"),
        (["--topic-prefix", "riad/"], "did you mean 'riad'?"),  # events would go to riad//<camera>/...
        (["--camera-id", "line#1"], "camera id 'line#1' cannot be part of an MQTT topic"),
        (["--camera-id", "x" * 70_000], "(70000 bytes)"),
        (["--topic-prefix", "p" * 70_000], "(70000 bytes)"),
    ],
)
def test_a_topic_name_the_broker_refuses_exits_2_before_anything_is_spooled(clip, tiny_onnx_model, tmp_path, option, message):
    spool = tmp_path / "spool.db"
    code, out, err = run(clip, tiny_onnx_model, "--broker", "mqtt://127.0.0.1:1", "--spool", spool, *option)
    assert code == 2, err
    assert err.startswith("error: ") and message in err and len(err) < 300
    assert "Traceback" not in err and out == "" and not spool.exists()


def test_watch_refuses_a_wildcard_prefix_with_exit_2():
    code, _, err = finished("watch", "--broker", "mqtt://127.0.0.1:1", "--topic-prefix", "riad/#")
    assert code == 2 and "error: topic prefix 'riad/#' cannot be part of an MQTT topic" in err


def test_an_empty_broker_url_is_an_error_not_mqtt_off(clip, tiny_onnx_model):
    code, out, err = run(clip, tiny_onnx_model, "--broker", "")
    assert code == 2 and "the broker URL is empty" in err and out == ""


def test_events_not_delivered_by_the_end_of_a_file_exit_5_and_the_next_run_delivers_them(broker, clip, tiny_onnx_model, tmp_path):
    spool = tmp_path / "spool.db"
    port = broker.port
    broker.stop()
    down = ["--broker", f"mqtt://127.0.0.1:{port}", "--camera-id", "line1", "--spool", spool, "--threshold", 0]
    code, out, err = run(clip, tiny_onnx_model, *down, "--max-frames", 2)
    assert code == EXIT_UNDELIVERED, err
    # 2 events, their 2 overlays and the defect's lifecycle (edge/sinks/lifecycle.py) wait;
    # the cause is named, at start and in the summary.
    waiting = Spool(spool)
    topics = [m.topic for m in waiting.pending(100)]
    waiting.close()
    assert topics.count("riad/line1/defect") == 2 and len(topics) > 4
    assert f"mqtt: {len(topics)} message(s) undelivered, waiting in spool {spool}; broker: cannot reach broker " in out
    assert "connection refused (is the broker running, on this port?)" in out + err
    assert "error: not every event reached the broker" in err
    broker.start()
    subscriber = Subscriber(broker, ["riad/line1/defect"])
    try:
        code, out, err = run(clip, tiny_onnx_model, *down, "--max-frames", 1)
        assert code == 0, err
        assert "mqtt: every message delivered" in out
        assert subscriber.wait_for(lambda: len(subscriber.on("riad/line1/defect")) == 3)
    finally:
        subscriber.close()


def test_a_spool_disk_that_fills_up_mid_run_loses_events_and_exits_6(bottle_dir, tiny_onnx_model, tiny_disk, tmp_path):
    # 300 frames, every one a defect, the broker down: the disk fills after the first event,
    # far ahead of the run's end; the rest wait in memory and are lost when the run ends.
    long_clip = write_video(tmp_path / "long.avi", bottle_frames(bottle_dir, 10) * 30, "MJPG")
    spool = tiny_disk / "spool.db"
    process = riad_edge("run", "--source", long_clip, "--model", tiny_onnx_model, "--threshold", 0,
                        "--broker", f"mqtt://127.0.0.1:{free_port()}", "--spool", spool)  # fmt: skip
    while not process.stdout.readline().startswith("DEFECT"):  # the spool is open and holds an event
        assert process.poll() is None, process.stderr.read()
    fill(tiny_disk)
    out, err = process.communicate(timeout=120)
    assert process.returncode == EXIT_EVENTS_LOST, err
    lost = int(re.search(r"mqtt: .*; (\d+) defect event\(s\) LOST \(spool full\)", out).group(1))
    assert lost > 0 and f"LOST {lost} defect event(s) held in memory" in err and f"error: {lost} defect event(s) lost" in err
    (tiny_disk / "filler").unlink()
    kept = Spool(spool)  # still usable, with what was spooled before the disk filled
    assert kept.depth() >= 1
    kept.ack(kept.put("riad/line/defect", b"{}", 1, False))
    kept.close()


def test_a_second_ctrl_c_says_how_many_held_events_it_loses(bottle_dir, tiny_onnx_model, tiny_disk, tmp_path):
    # As above, the disk fills and events wait in memory; at the first Ctrl-C the run waits for
    # room in the spool, and a second one leaves at once: what goes with it must be said.
    long_clip = write_video(tmp_path / "long.avi", bottle_frames(bottle_dir, 10) * 30, "MJPG")
    process = riad_edge("run", "--source", long_clip, "--model", tiny_onnx_model, "--threshold", 0,
                        "--broker", f"mqtt://127.0.0.1:{free_port()}", "--spool", tiny_disk / "spool.db")  # fmt: skip
    while not process.stdout.readline().startswith("DEFECT"):
        assert process.poll() is None, process.stderr.read()
    fill(tiny_disk)
    while "holding events in memory" not in process.stderr.readline():
        assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGINT)
    while "before they are lost" not in process.stderr.readline():  # the shutdown's wait for room
        assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGINT, err
    assert re.search(r"aborted: LOST [1-9]\d* defect event\(s\) held in memory \(the spool was full\)", err), err
    assert "Traceback" not in err


def test_mqtts_to_a_plain_port_is_a_tls_error_not_an_outage(broker, clip, tiny_onnx_model, tmp_path):
    code, out, err = run(clip, tiny_onnx_model, "--broker", f"mqtts://127.0.0.1:{broker.port}", "--spool", tmp_path / "s.db")
    assert code == 2, err
    assert err.startswith(f"error: TLS handshake with mqtts://127.0.0.1:{broker.port} failed")
    assert "Traceback" not in err


def test_a_port_that_never_answers_is_named_and_the_events_wait(clip, tiny_onnx_model, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP, never speaks MQTT
        port = silent.getsockname()[1]
        code, out, err = run(clip, tiny_onnx_model, "--broker", f"mqtt://127.0.0.1:{port}", "--spool", tmp_path / "s.db",
                             "--threshold", 0, "--max-frames", 1)
    assert code == EXIT_UNDELIVERED, err
    assert f"broker mqtt://127.0.0.1:{port} accepted the connection but sent no answer within 5 s (no CONNACK)" in err
    assert "broker: broker mqtt://127.0.0.1:" in out  # and again in the summary


PASSWORD = "p/@:%#?[]&= x"  # every character a URL gives a meaning to


@pytest.mark.parametrize(
    "login",
    [
        ["--broker", f"mqtt://edge:{PASSWORD}@127.0.0.1:PORT"],
        ["--broker", f"mqtt://edge:{PASSWORD}@127.0.0.1:PORT/typo"],
        ["--broker", "mqtt://127.0.0.1:PORT", "--username", "edge", "--password", PASSWORD],
        ["--broker", "mqtt://127.0.0.1:PORT", "--username", "edge"],  # RIAD_MQTT_PASSWORD
    ],
)
def test_no_command_prints_the_password(broker_with_login, clip, tiny_onnx_model, tmp_path, login):
    login = [a.replace("PORT", str(broker_with_login.port)) for a in login]
    env = {**os.environ, "RIAD_MQTT_PASSWORD": PASSWORD}
    commands = [
        ["run", "--source", clip, "--model", tiny_onnx_model, "--spool", tmp_path / "s.db", *login],
        ["watch", *login, "--timeout", "1"],
        ["doctor", "--spool-dir", tmp_path, *login],
    ]
    for command in commands:
        process = subprocess.run(
            [*RIAD_EDGE, *map(str, command)], capture_output=True, text=True, env=env, timeout=60, check=False
        )
        assert process.returncode == 2 or command[0] == "doctor", process.stderr
        output = process.stdout + process.stderr
        assert "refused" in output or "no path" in output
        pieces = [PASSWORD[i : i + 4] for i in range(len(PASSWORD) - 3)]  # half masked is shown too
        assert not [piece for piece in pieces if piece in output], output


@pytest.mark.parametrize("save_dir", ["a file", "a file/snaps"])
def test_a_file_in_the_way_of_the_snapshot_folder_is_named(clip, tiny_onnx_model, tmp_path, save_dir):
    (tmp_path / "a file").write_text("kept")
    code, out, err = run(clip, tiny_onnx_model, "--save-dir", tmp_path / save_dir)
    assert code == 2, err
    assert err.strip() == f"error: cannot use snapshot folder {tmp_path / save_dir}: {tmp_path / 'a file'} is a file, not a folder"
    assert (tmp_path / "a file").read_text() == "kept"


def test_a_read_only_snapshot_folder_is_refused_at_start(clip, tiny_onnx_model, tmp_path):
    folder = tmp_path / "snaps"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes through permission bits: a read-only mount stops it
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], check=False).returncode:
            pytest.skip("cannot mount a tmpfs here")
    else:
        folder.chmod(0o500)
    try:
        code, out, err = run(clip, tiny_onnx_model, "--save-dir", folder)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], check=True)
    assert code == 2, err
    assert err.startswith(f"error: cannot use snapshot folder {folder}: ")
    assert "Read-only file system" in err or "Permission denied" in err
    assert "Traceback" not in err and "summary:" not in out


def test_an_empty_view_password_variable_is_refused(clip, tiny_onnx_model):
    env = {**os.environ, "RIAD_VIEW_PASSWORD": ""}
    process = subprocess.run(
        [*RIAD_EDGE, "run", "--source", str(clip), "--model", str(tiny_onnx_model), "--view-port", str(free_port()),
         "--view-host", "0.0.0.0"], capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert process.returncode == 2
    assert "RIAD_VIEW_PASSWORD is set but empty" in process.stderr and process.stdout == ""


def test_an_open_view_on_the_network_is_warned_about(clip, tiny_onnx_model):
    code, out, err = run(clip, tiny_onnx_model, "--view-port", free_port(), "--view-host", "0.0.0.0")
    assert code == 0, err
    assert "the live view on 0.0.0.0 has no password: anyone who can reach this machine sees the line" in err
    code, out, err = run(clip, tiny_onnx_model, "--view-port", free_port())  # loopback only: no warning
    assert code == 0 and "no password" not in err


def test_corrupt_pngs_are_counted_without_libpng_noise(bottle_dir, tiny_onnx_model, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    frames = bottle_frames(bottle_dir, 3)
    write_truncated_png(folder / "a.png", frames[0])
    import cv2

    cv2.imwrite(str(folder / "b.png"), frames[1])
    data = bytearray((folder / "b.png").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the image data, as a bad SD card gives
    (folder / "c.png").write_bytes(bytes(data))
    cv2.imwrite(str(folder / "d.png"), frames[2])
    code, out, err = finished("run", "--source", folder, "--model", tiny_onnx_model)
    assert code == 0, err
    assert "summary: 2 frames, " in out and ", 2 corrupt" in out
    assert "libpng" not in err
