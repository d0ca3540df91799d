"""Monitoring: Prometheus /metrics and /healthz during real runs, over real media and a real broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import paho.mqtt.publish as mqtt_publish
import pytest
from conftest import write_tiny_onnx
from media import bottle_frames, write_image_folder, write_truncated_png, write_video
from prometheus_client.parser import text_string_to_metric_families

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.method.inspection import FrameJudge
from edge.method.preprocess import prepare, read_image
from edge.monitoring.camera import WatchedCamera
from edge.monitoring.server import MonitoringServer
from edge.pipeline import Pipeline
from edge.sources.cameras import CaptureSource, open_source
from edge.station.config import ConfigError, load_config
from edge.station.station import Station
from edge.station.triggered import TriggeredCamera
from tests.broker import USERS, free_port

RIAD_EDGE = [sys.executable, "-c", "from edge.cli import app; app()"]


class CollectingSink:
    def __init__(self):
        self.results = []

    def handle(self, result) -> None:
        self.results.append(result)

    def close(self) -> None:
        pass


class PacedCamera(CaptureSource):
    """A camera at about 50 frames/s: a looping clip, read no faster than a real camera delivers."""

    def read(self):
        time.sleep(0.02)
        return super().read()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """/metrics parsed by Prometheus's own parser: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def healthz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_metrics_after_a_folder_run_match_what_the_run_did(bottle_dir, tmp_path, tiny_onnx_model):
    frames = bottle_frames(bottle_dir, 6)
    folder = write_image_folder(tmp_path / "parts", frames, [f"{i:02d}.png" for i in range(6)])
    write_truncated_png(folder / "06.png", frames[0])  # one corrupt file, skipped and counted
    sink = CollectingSink()
    backend = OnnxCpuBackend(tiny_onnx_model, threads=1)
    scores = sorted(backend.score(prepare(read_image(folder / f"{i:02d}.png"), backend.manifest.input_shape)).score for i in range(6))
    between = (scores[2] + scores[3]) / 2  # the threshold splits the parts: both counters are tested
    pipeline = Pipeline(open_source(str(folder)), backend, [sink], threshold=between)
    port = free_port()
    with MonitoringServer("127.0.0.1", port, grace_s=0.2) as server:
        server.watch(WatchedCamera("parts", "free", "tiny-test", backend.name, pipeline.stats, live=False))
        summary = pipeline.run()
        time.sleep(0.3)  # past the grace period: a folder that has ended is not a stale camera
        samples = scrape(port)
        status, body = healthz(port)

    defective = sum(r.is_defect for r in sink.results)
    assert defective == 3
    cam = {"camera": "parts"}
    assert value(samples, "riad_frames_processed_total", **cam) == len(sink.results) == summary["frames_processed"] == 6
    assert value(samples, "riad_defective_frames_total", **cam) == defective == summary["defects"]
    assert value(samples, "riad_frames_corrupt_total", **cam) == 1
    assert value(samples, "riad_frames_dropped_total", **cam) == 0
    assert value(samples, "riad_frame_latency_seconds_count", **cam) == 6
    latencies = sorted(r.latency_s for r in sink.results)
    assert value(samples, "riad_frame_latency_seconds_sum", **cam) == pytest.approx(sum(latencies))
    for bound in ("0.01", "0.1", "1.0", "10.0", "+Inf"):
        expected = sum(latency <= float(bound) for latency in latencies)
        assert value(samples, "riad_frame_latency_seconds_bucket", le=bound, **cam) == expected
    model = {"camera": "parts", "model_id": "tiny-test", "backend": "cpu (onnxruntime)", "mode": "free"}
    assert value(samples, "riad_model_info", **model) == 1
    assert value(samples, "riad_camera_connected", **cam) == 1
    last_frame = value(samples, "riad_last_frame_timestamp_seconds", **cam)
    assert time.time() - 60 < last_frame <= time.time()
    assert value(samples, "riad_healthy", **cam) == 1
    assert [name for name, _ in samples if name == "riad_build_info"] == ["riad_build_info"]
    assert value(samples, "process_resident_memory_bytes") > 0
    assert not any(name.startswith("riad_mqtt") for name, _ in samples)  # no broker, no MQTT numbers
    assert status == 200 and body["status"] == "ok" and body["problems"] == []
    state = body["cameras"]["parts"]
    assert (state["healthy"], state["mode"], state["mqtt"]) == (True, "free", "off") and 0.3 <= state["last_frame_age_s"] < 60


def test_a_live_camera_that_stops_delivering_turns_healthz_503_and_back(bottle_dir, tmp_path, tiny_onnx_model):
    clip = write_video(tmp_path / "cam.avi", bottle_frames(bottle_dir, 8), "MJPG")
    unplugged = threading.Event()

    def open_capture():  # a camera whose stream loops until it is unplugged; then reconnects fail
        return cv2.VideoCapture(str(tmp_path / ("unplugged.avi" if unplugged.is_set() else "cam.avi")))

    assert clip.exists()
    camera = PacedCamera("camera 7", open_capture, live=True, camera_id="cam7", backoff=(0.05, 0.1))
    backend = OnnxCpuBackend(tiny_onnx_model, threads=1)
    pipeline = Pipeline(camera, backend)
    port = free_port()
    with MonitoringServer("127.0.0.1", port, grace_s=1.0) as server:
        server.watch(WatchedCamera("cam7", "free", "tiny-test", backend.name, pipeline.stats, live=True))
        runner = threading.Thread(target=pipeline.run)
        runner.start()
        try:
            assert wait_until(lambda: healthz(port)[0] == 200 and pipeline.stats.frames_processed > 0)
            unplugged.set()
            assert wait_until(lambda: healthz(port)[0] == 503)
            status, body = healthz(port)
            assert body["status"] == "unhealthy" and body["cameras"]["cam7"]["healthy"] is False
            assert len(body["problems"]) == 1 and body["problems"][0].startswith("camera cam7: no frame for ")
            samples = scrape(port)
            assert value(samples, "riad_camera_connected", camera="cam7") == 0
            assert value(samples, "riad_healthy", camera="cam7") == 0
            unplugged.clear()  # plugged in again: the source reconnects by itself
            assert wait_until(lambda: healthz(port)[0] == 200)
            samples = scrape(port)
            assert value(samples, "riad_camera_connected", camera="cam7") == 1
            assert value(samples, "riad_camera_reconnects_total", camera="cam7") >= 1
        finally:
            pipeline.stop()
            runner.join(30)


def test_a_triggered_camera_idle_between_parts_stays_healthy(bottle_dir, tmp_path, tiny_onnx_model):
    write_video(tmp_path / "cam.avi", bottle_frames(bottle_dir, 8), "MJPG")
    camera = PacedCamera("camera 3", lambda: cv2.VideoCapture(str(tmp_path / "cam.avi")), live=True, camera_id="cam3",
                         backoff=(0.05, 0.1))  # fmt: skip
    backend = OnnxCpuBackend(tiny_onnx_model, threads=1)
    triggered = TriggeredCamera("cam3", camera, FrameJudge(backend), publish=lambda verdict: None)
    port = free_port()
    try:
        with MonitoringServer("127.0.0.1", port, grace_s=0.5) as server:
            server.watch(WatchedCamera("cam3", "triggered", "tiny-test", backend.name, triggered.frame_stats, live=True,
                                       verdicts=triggered.stats))  # fmt: skip
            time.sleep(1.0)  # twice the grace period without a trigger: no part, no inspection
            status, body = healthz(port)
            samples = scrape(port)
    finally:
        triggered.close()
    assert status == 200 and body["cameras"]["cam3"]["last_frame_age_s"] < 0.5
    assert value(samples, "riad_frames_processed_total", camera="cam3") == 0
    assert value(samples, "riad_verdicts_total", camera="cam3", verdict="OK") == 0


def test_a_station_serves_every_camera_under_its_label(bottle_dir, tmp_path):
    frames = bottle_frames(bottle_dir, 4)
    write_image_folder(tmp_path / "a", frames[:3], ["0.png", "1.png", "2.png"])
    write_image_folder(tmp_path / "b", frames, ["0.png", "1.png", "2.png", "3.png"])
    write_tiny_onnx(tmp_path / "shared.onnx")
    (tmp_path / "line.yaml").write_text(
        "metrics_port: %d\nhealth_grace_s: 0.5\ncameras:\n"
        "  - {id: cam-a, source: a, model: shared.onnx}\n"
        "  - {id: cam-b, source: b, model: shared.onnx, threshold: 0.0}\n"
        "  - {id: cam-c, source: unplugged.mp4, model: shared.onnx, mode: triggered}\n" % free_port()
    )
    config = load_config(tmp_path / "line.yaml")
    with MonitoringServer(config.metrics_host, config.metrics_port, config.health_grace_s) as server, \
            Station(config, None, console=False) as station:  # fmt: skip
        for camera in station.watched():
            server.watch(camera)
        runner = threading.Thread(target=station.run)
        runner.start()
        try:  # the folders run to their end; the triggered camera that is down waits for parts
            assert wait_until(lambda: all(p.stats.frames_processed + p.stats.frames_corrupt == n
                                          for p, n in ((station.pipelines["cam-a"], 3), (station.pipelines["cam-b"], 4))))  # fmt: skip
            time.sleep(0.6)  # past the grace period
            samples = scrape(config.metrics_port)
            status, body = healthz(config.metrics_port)
        finally:
            station.stop()
            runner.join(30)
    assert value(samples, "riad_frames_processed_total", camera="cam-a") == 3
    assert value(samples, "riad_frames_processed_total", camera="cam-b") == 4
    assert value(samples, "riad_defective_frames_total", camera="cam-b") == 4  # threshold 0
    assert ("riad_frames_processed_total", (("camera", "cam-c"),)) not in samples  # never opened: no numbers
    assert [value(samples, "riad_camera_connected", camera=c) for c in ("cam-a", "cam-b", "cam-c")] == [1, 1, 0]
    assert [value(samples, "riad_healthy", camera=c) for c in ("cam-a", "cam-b", "cam-c")] == [1, 1, 0]
    assert value(samples, "riad_verdicts_total", camera="cam-c", verdict="error") == 0
    for camera, mode in (("cam-a", "free"), ("cam-b", "free"), ("cam-c", "triggered")):
        assert value(samples, "riad_model_info", camera=camera, model_id="tiny-test", backend="cpu (onnxruntime)", mode=mode) == 1
    assert status == 503 and len(body["problems"]) == 1
    assert body["problems"][0].startswith("camera cam-c is not inspecting: ") and "unplugged.mp4" in body["problems"][0]
    assert body["cameras"]["cam-a"]["healthy"] and body["cameras"]["cam-b"]["healthy"]


def test_healthz_says_starting_until_a_camera_is_watched():
    port = free_port()
    with MonitoringServer("127.0.0.1", port, grace_s=60) as server:
        assert healthz(port) == (503, {"status": "unhealthy", "problems": ["starting: no camera inspecting yet"], "cameras": {}})
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert server.url == f"http://127.0.0.1:{port}"


def riad_edge(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*RIAD_EDGE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONUNBUFFERED": "1"}, **kwargs)  # fmt: skip


def test_run_serves_metrics_while_it_inspects(bottle_dir, tmp_path, tiny_onnx_model):
    long_clip = write_video(tmp_path / "line.avi", bottle_frames(bottle_dir, 8) * 150, "MJPG")
    port = free_port()
    process = riad_edge("run", "--source", long_clip, "--model", tiny_onnx_model, "--threshold", 0, "--metrics-port", port)
    try:
        lines = []
        while not (line := process.stdout.readline()).startswith("DEFECT"):  # inspecting now
            assert process.poll() is None, process.stderr.read()
            lines.append(line)
        assert f"metrics: http://127.0.0.1:{port}/metrics, health http://127.0.0.1:{port}/healthz\n" in lines
        samples = scrape(port)
        status, body = healthz(port)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    processed = value(samples, "riad_frames_processed_total", camera="line")
    assert processed >= 1
    assert value(samples, "riad_defective_frames_total", camera="line") == processed  # threshold 0: every frame
    assert value(samples, "riad_model_info", camera="line", model_id="tiny-test", backend="cpu (onnxruntime)", mode="free") == 1
    assert status == 200 and body["cameras"]["line"]["mqtt"] == "off"
    summary_frames = int(out.split("summary: ", 1)[1].split(" frames", 1)[0])
    assert processed <= summary_frames < 1200


def test_healthz_follows_the_broker_of_a_triggered_station(broker, bottle_dir, tmp_path, tiny_onnx_model, subscribe):
    frames = bottle_frames(bottle_dir, 2)
    folder = write_image_folder(tmp_path / "parts", frames, ["0.png", "1.png"])
    port = free_port()
    consumer = subscribe(broker, ["riad/line1/verdict"])
    process = riad_edge("run", "--mode", "triggered", "--source", folder, "--model", tiny_onnx_model, "--camera-id", "line1",
                        "--broker", broker.url, "--spool", tmp_path / "s.spool", "--metrics-port", port, "--health-grace", 1)  # fmt: skip
    try:
        for line in process.stdout:
            if line.startswith("triggers: listening on"):
                break
        for part in ("p1", "p2"):
            mqtt_publish.single("riad/line1/trigger", part, qos=1, hostname="127.0.0.1", port=broker.port)
        assert consumer.wait_for(lambda: len(consumer.on("riad/line1/verdict")) == 2, timeout=30)
        samples = scrape(port)
        assert value(samples, "riad_frames_processed_total", camera="line1") == 2
        verdicts = [json.loads(p)["verdict"] for p in consumer.on("riad/line1/verdict")]
        for kind in ("OK", "NOK", "error"):
            assert value(samples, "riad_verdicts_total", camera="line1", verdict=kind) == verdicts.count(kind)
        assert value(samples, "riad_mqtt_connected", camera="line1") == 1
        # Events, overlays and verdicts leave the spool as the broker acknowledges them.
        assert wait_until(lambda: value(scrape(port), "riad_mqtt_spool_messages", camera="line1") == 0)
        assert healthz(port)[0] == 200

        broker.kill()  # a crash: the inspector goes on, events wait in the spool
        assert wait_until(lambda: healthz(port)[0] == 503)
        problems = healthz(port)[1]["problems"]
        assert len(problems) == 1 and problems[0].startswith(f"camera line1: broker {broker.url} unusable for ")
        assert value(scrape(port), "riad_mqtt_connected", camera="line1") == 0

        broker.start()  # same port: paho reconnects by itself (its delay doubles from 1 s)
        assert wait_until(lambda: healthz(port)[0] == 200, timeout=40)
        assert value(scrape(port), "riad_mqtt_connected", camera="line1") == 1
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err


def test_a_port_in_use_is_one_line_and_exit_2_before_the_model_loads(tmp_path, tiny_onnx_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = riad_edge("run", "--source", tmp_path, "--model", tiny_onnx_model, "--metrics-port", port)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert err == f"error: cannot serve metrics on 127.0.0.1:{port}: the port is already in use; stop whatever uses it or choose another --metrics-port\n"
    assert "backend:" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics-port", 0], "Invalid value for '--metrics-port'"),
        (["--metrics-port", 65536], "Invalid value for '--metrics-port'"),
        (["--metrics-port", 9108, "--health-grace", 0], "--health-grace must be a positive number of seconds, not 0.0"),
        (["--metrics-port", 9108, "--health-grace", "nan"], "--health-grace must be a positive number of seconds, not nan"),
        (["--metrics-host", "0.0.0.0"], "--metrics-host needs --metrics-port"),
        (["--metrics-port", 9108, "--view-port", 9108], "--metrics-port and --view-port are both 9108: give them different ports"),
        (["--metrics-port", 9108, "--metrics-host", "192.0.2.1"], "error: cannot serve metrics on 192.0.2.1:9108: Cannot assign requested address"),  # not this machine's
        (["--log-level", "verbose"], "'verbose' is not one of"),
    ],
)
def test_bad_monitoring_options_exit_2(tiny_onnx_model, tmp_path, args, message):
    process = riad_edge("run", "--source", tmp_path, "--model", tiny_onnx_model, *args)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert message in " ".join(err.replace("│", " ").split()) and "Traceback" not in err


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("metrics_port: 0", "metrics_port must be a port number 1 to 65535, not 0"),
        ("metrics_port: '9108'", "metrics_port must be a port number 1 to 65535, not '9108'"),
        ("metrics_host: ''", "metrics_host must be an address like 127.0.0.1 or 0.0.0.0, not ''"),
        ("health_grace_s: -5", "health_grace_s must be a positive number of seconds, not -5"),
        ("health_grace_s: .inf", "health_grace_s must be a positive number of seconds, not inf"),
    ],
)
def test_bad_monitoring_settings_in_a_station_config(tmp_path, setting, problem):
    config = tmp_path / "line.yaml"
    config.write_text(f"{setting}\ncameras:\n  - {{id: a, source: 0, model: m.onnx}}\n")
    with pytest.raises(ConfigError, match=problem.replace(".", r"\.")):
        load_config(config)


def test_station_config_monitoring_settings(tmp_path):
    config = tmp_path / "line.yaml"
    config.write_text("metrics_port: 9200\nmetrics_host: 0.0.0.0\nhealth_grace_s: 30\ncameras:\n  - {id: a, source: 0, model: m.onnx}\n")
    station = load_config(config)
    assert (station.metrics_port, station.metrics_host, station.health_grace_s) == (9200, "0.0.0.0", 30.0)


def test_json_logs_are_one_object_per_line_and_never_show_the_password(broker_with_login, bottle_dir, tmp_path, tiny_onnx_model):
    clip = write_video(tmp_path / "line.avi", bottle_frames(bottle_dir, 4), "MJPG")
    (user, password), = USERS.items()
    url = f"mqtt://{user}:{password}@127.0.0.1:{broker_with_login.port}"
    process = riad_edge("run", "--source", clip, "--model", tiny_onnx_model, "--broker", url, "--spool", tmp_path / "s.spool",
                        "--log-format", "json", "--log-level", "debug")  # fmt: skip
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "summary: 4 frames" in out and password not in out
    entries = [json.loads(line) for line in err.splitlines()]
    assert entries, "debug level logs at least the backend it chose"
    for entry in entries:
        assert set(entry) >= {"time", "level", "logger", "message"} and entry.get("camera", "line") == "line"
        assert entry["level"] in ("debug", "info", "warning", "error") and entry["time"].endswith("Z")
    assert any(e["logger"] == "edge.backends" and e["message"].startswith("backend: cpu") for e in entries)
    assert password not in err

    # A refused login ends the run: its error is a JSON line too, without the wrong password.
    process = riad_edge("run", "--source", clip, "--model", tiny_onnx_model, "--broker", broker_with_login.url,
                        "--username", user, "--password", "not-the-s3cret", "--log-format", "json",
                        "--spool", tmp_path / "s2.spool")  # fmt: skip
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    entries = [json.loads(line) for line in err.splitlines()]
    assert entries[-1]["level"] == "error" and "refused" in entries[-1]["message"] and "not-the-s3cret" not in err
    assert all(e["camera"] == "line" for e in entries)  # the source is open by then: its camera is known


def test_secrets_are_masked_in_text_and_json_logs():
    script = (
        "import logging; from edge.monitoring.logs import configure_logging, url_passwords\n"
        "for fmt in ('text', 'json'):\n"
        "    configure_logging('info', fmt, ['hunter22', *url_passwords('rtsp://cam:p%40ss@10.0.0.9/live'), 'ab'])\n"
        "    logging.getLogger('edge.x').warning('login hunter22 then rtsp://cam:p%40ss@10.0.0.9 and p@ss; ab stays')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    text, as_json = done.stderr.splitlines()
    assert text == "WARNING edge.x: login *** then rtsp://cam:***@10.0.0.9 and ***; ab stays"
    assert json.loads(as_json)["message"] == "login *** then rtsp://cam:***@10.0.0.9 and ***; ab stays"


def test_the_container_health_check_asks_healthz(tmp_path):
    """The HEALTHCHECK of deploy/Dockerfile.jetson and compose.yaml's, run as Docker runs them."""
    yaml = pytest.importorskip("yaml")
    deploy = Path(__file__).resolve().parents[1] / "deploy"
    dockerfile = (deploy / "Dockerfile.jetson").read_text()
    check = json.loads(dockerfile.split("HEALTHCHECK", 1)[1].split("CMD", 1)[1].split("\n", 1)[0])
    inspector = yaml.safe_load((deploy / "compose.yaml").read_text())["services"]["inspector"]
    assert inspector["healthcheck"]["test"] == ["CMD", *check]
    # One port for `riad-edge run` (its --metrics-port reads RIAD_METRICS_PORT) and the check.
    assert inspector["environment"]["RIAD_METRICS_PORT"] == "9108" and "ENV RIAD_METRICS_PORT=9108" in dockerfile
    assert not any(arg.startswith("--metrics-port") for arg in inspector["command"])
    port = free_port()
    env = os.environ | {"RIAD_METRICS_PORT": str(port)}
    check = [sys.executable if c == "python3" else c for c in check]
    with MonitoringServer("127.0.0.1", port, grace_s=60) as server:
        starting = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
        assert starting.returncode == 1 and "starting: no camera inspecting yet" in starting.stderr
        server.watch(WatchedCamera("line1", "free", "m", "cpu", None, stopped=lambda: "camera 0 not connected"))
        down = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
        assert down.returncode == 1 and "camera line1 is not inspecting: camera 0 not connected" in down.stderr
    with MonitoringServer("127.0.0.1", port, grace_s=60) as server:
        from edge.monitoring.stats import PipelineStats

        server.watch(WatchedCamera("line1", "free", "m", "cpu", PipelineStats()))
        healthy = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr
    gone = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "Connection refused" in gone.stderr


def test_a_paused_camera_counts_its_unjudged_frames_and_stays_healthy(broker, http_camera, tmp_path, tiny_onnx_model, subscribe):
    """detect/set OFF (edge/sinks/commands.py): frames go on arriving, counted as paused; a pause is not a fault."""
    port = free_port()
    process = riad_edge("run", "--source", http_camera, "--model", tiny_onnx_model, "--threshold", 0, "--metrics-port", port,
                        "--broker", broker.url, "--camera-id", "line", "--spool", tmp_path / "spool.db", "--commands")  # fmt: skip
    responses = subscribe(broker, ["riad/line/command/response"])
    try:
        while not process.stdout.readline().startswith("DEFECT"):  # inspecting now (threshold 0)
            assert process.poll() is None, process.stderr.read()
        mqtt_publish.single("riad/line/detect/set", "OFF", qos=1, hostname="127.0.0.1", port=broker.port)
        assert responses.wait_for(lambda: responses.messages)
        assert json.loads(responses.messages[0][1])["ok"]
        assert wait_until(lambda: value(scrape(port), "riad_frames_paused_total", camera="line") > 0)
        judged = value(scrape(port), "riad_frames_processed_total", camera="line")
        time.sleep(1.0)
        samples = scrape(port)
        status, body = healthz(port)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert value(samples, "riad_frames_processed_total", camera="line") == judged  # nothing judged while paused
    assert value(samples, "riad_mqtt_connected", camera="line") == 1
    assert status == 200, body
