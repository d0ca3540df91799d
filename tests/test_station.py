"""A station: three cameras in one process from one config file, two sharing a model, one failing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest
from conftest import write_tiny_onnx

from edge.sinks.broker import parse_broker_url
from edge.station.config import ConfigError, load_config
from edge.station.station import Station


def image_folder(bottle_dir: Path, folder: Path, count: int) -> Path:
    folder.mkdir()
    for i, path in enumerate(sorted((bottle_dir / "test" / "good").glob("*.png"))[:count]):
        shutil.copy(path, folder / f"{i:03d}.png")
    return folder


@pytest.fixture
def line(bottle_dir, tmp_path):
    """line.yaml: cam-a and cam-b (free-running) share a model; cam-c (triggered) has its own and no camera."""
    image_folder(bottle_dir, tmp_path / "a", 3)
    image_folder(bottle_dir, tmp_path / "b", 4)
    write_tiny_onnx(tmp_path / "shared.onnx")
    write_tiny_onnx(tmp_path / "other.onnx", threshold=0.9)
    config = tmp_path / "line.yaml"
    config.write_text(
        """
cameras:
  - {id: cam-a, source: a, model: shared.onnx, spool: spools/a.spool}
  - {id: cam-b, source: b, model: shared.onnx, threshold: 0.0, spool: spools/b.spool}
  - {id: cam-c, source: unplugged.mp4, model: other.onnx, mode: triggered, deadline_ms: 500, spool: spools/c.spool}
"""
    )
    return config


def test_cameras_sharing_a_model_share_one_backend_and_a_failing_one_stops_nothing(line, tmp_path, broker, subscribe):
    consumer = subscribe(broker, ["riad/+/defect", "riad/+/verdict", "riad/+/stats"])
    config = load_config(line)
    with Station(config, parse_broker_url(broker.url), console=False) as station:
        assert set(station.backends) == {(tmp_path / "shared.onnx").resolve(), (tmp_path / "other.onnx").resolve()}
        shared = station.backends[(tmp_path / "shared.onnx").resolve()]
        assert shared.max_frames == 2  # one frame in flight per camera
        assert station.pipelines["cam-a"].backend is station.pipelines["cam-b"].backend is shared
        assert list(station.down) == ["cam-c"]
        assert station.triggers is not None and station.triggers.subscribed.wait(10)
        mqtt_publish.single("riad/cam-c/trigger", "part-1", qos=1, hostname="127.0.0.1", port=broker.port)
        runner = threading.Thread(target=station.run)
        runner.start()
        # The two file cameras run to their end while the dead one answers its trigger.
        a, b = station.pipelines["cam-a"].stats, station.pipelines["cam-b"].stats
        assert consumer.wait_for(lambda: (a.frames_processed, b.frames_processed) == (3, 4), timeout=60)
        assert consumer.wait_for(lambda: consumer.on("riad/cam-c/verdict"), timeout=10)
        station.stop()
        runner.join(30)
    assert station.pipelines["cam-a"].stats.frames_processed == 3
    assert station.pipelines["cam-b"].stats.frames_processed == 4
    assert shared.counters()["frames"] == 7 and shared.counters()["batches"] <= 7
    assert not station.failed
    (verdict,) = [json.loads(p) for p in consumer.on("riad/cam-c/verdict")]
    assert verdict["part_id"] == "part-1" and verdict["verdict"] == "error" and "camera down" in verdict["error"]
    # Each camera publishes under its own id, with its own threshold: cam-b's 0 makes every frame a defect.
    assert consumer.wait_for(lambda: len(consumer.on("riad/cam-b/defect")) == 4)
    stats = [json.loads(p) for p in consumer.on("riad/cam-b/stats")]
    assert stats and stats[-1]["pipeline"]["batching"]["frames"] == 7


def riad_edge_run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from edge.cli import app; app()", "run", *map(str, args)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_run_config_from_the_command_line(line):
    refused = riad_edge_run("--config", line)
    assert refused.returncode == 2 and "cam-c need a broker to receive triggers" in refused.stderr
    line.write_text(line.read_text().replace("mode: triggered", "mode: free"))
    process = riad_edge_run("--config", line)
    # Without triggered cameras the run ends with the files; the camera that is down stops nothing.
    assert process.returncode == 0, process.stderr
    assert "camera cam-c: free, DOWN" in process.stdout
    assert "up to 2 frame(s) per batch" in process.stdout
    assert process.stdout.count("DEFECT cam-b frame") == 4
    assert "camera cam-c is down" in process.stderr


@pytest.mark.parametrize(
    "text, problem",
    [
        ("cameras: []", "lists no cameras"),
        ("cameras:\n  - {id: a, source: x, model: m.onnx, treshold: 0.3}", "unknown key(s) treshold"),
        ("cameras:\n  - {id: a, source: x}", "lacks 'model'"),
        ("cameras:\n  - {id: a, source: x, model: m.onnx}\n  - {id: a, source: y, model: m.onnx}", "more than once"),
        ("cameras:\n  - {id: a, source: x, model: m.onnx, spool: q.spool}\n  - {id: b, source: y, model: m.onnx, spool: ./q.spool}",
         "cameras a and b share spool"),
        ("cameras:\n  - {id: a/b, source: x, model: m.onnx}", "no '/'"),
        ("cameras:\n  - {id: a, source: x, model: m.onnx, mode: sometimes}", "mode must be one of"),
        ("cameras:\n  - {id: a, source: x, model: m.onnx, threshold: .nan}", "finite number"),
        ("cameras:\n  - {id: a, source: x, model: m.onnx, deadline_ms: 0}", "positive number"),
        ("cameras: {id: a}", "lists no cameras"),
        ("- just a list", "must be a mapping"),
        ("cameras: [", "cannot read config"),
        # A second block pasted below the first: YAML keeps the last, and the first line's cameras would stop.
        ("cameras:\n  - {id: a, source: x, model: m.onnx}\ncameras:\n  - {id: b, source: y, model: m.onnx}",
         "line.yaml\", line 3"),  # where the second one is: "'cameras' is given twice\n  in \".../line.yaml\", line 3"
        ("cameras:\n  - {id: a, source: x, model: m.onnx, threshold: 0.2, threshold: 0.3}", "'threshold' is given twice"),
        ("cameras:\n  - {? [a]: 1, id: a, source: x, model: m.onnx}", "found unhashable key"),
        ("cameras:\n  - {id: , source: x, model: m.onnx}", "camera 1 lacks 'id'"),  # not a camera called None
        ("cameras:\n  - {id: a, source: x, model: [m.onnx]}", "model must be a name or path, not ['m.onnx']"),
    ],
)
def test_a_bad_config_is_refused_with_its_reason(tmp_path, text, problem):
    path = tmp_path / "line.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as error:
        load_config(path)
    assert problem in str(error.value)


def test_ids_and_paths_are_read_as_written_not_as_yaml_numbers_or_booleans(tmp_path):
    # Unquoted, YAML reads 01 as 1, no as False, 12:30 as 750 and 2024.10 as a float:
    # the topics would say riad/1/... where the user wrote 01, or the model path was a traceback.
    path = tmp_path / "line.yaml"
    path.write_text(
        "topic_prefix: 2024\n"
        "cameras:\n"
        "  - {id: 01, source: 007, model: 2024.10, spool: 12}\n"
        "  - {id: no, source: 0, model: m.onnx}\n"
        "  - {id: 12:30, source: \"1\", model: m.onnx, threshold: 0.5}\n"
    )
    config = load_config(path)
    assert [c.camera_id for c in config.cameras] == ["01", "no", "12:30"]
    assert [c.source for c in config.cameras] == ["007", "0", "1"]
    assert config.cameras[0].model == tmp_path / "2024.10" and config.cameras[0].spool == tmp_path / "12"
    assert config.topic_prefix == "2024" and config.cameras[2].threshold == 0.5


def test_paths_in_the_config_are_relative_to_it(tmp_path):
    path = tmp_path / "conf" / "line.yaml"
    path.parent.mkdir()
    path.write_text("cameras:\n  - {id: a, source: clips/a.mp4, model: ../m.onnx}\n  - {id: b, source: rtsp://cam/1, model: /abs/m.onnx}\n  - {id: c, source: 0, model: m.onnx}")
    a, b, c = load_config(path).cameras
    assert a.source == str(tmp_path / "conf" / "clips" / "a.mp4") and a.model == tmp_path / "conf" / ".." / "m.onnx"
    assert b.source == "rtsp://cam/1" and b.model == Path("/abs/m.onnx")
    assert c.source == "0" and a.mode == "free" and a.threshold is None
