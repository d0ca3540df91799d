"""`riad-edge run` as a user runs it: a real process, real videos, the tiny ONNX model, a real broker."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_tiny_onnx
from media import bottle_frames, write_truncated_png, write_video

from edge.manifest import manifest_path
from tests.broker import Subscriber


def riad_edge(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from edge.cli import app; app()", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(*args, timeout: float = 60) -> tuple[int, str, str]:
    process = riad_edge(*args)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


@pytest.fixture
def clip(bottle_dir, tmp_path):
    return write_video(tmp_path / "line.avi", bottle_frames(bottle_dir, 8), "MJPG")


def test_run_on_a_video_prints_each_defect_and_a_summary(clip, tiny_onnx_model, tmp_path):
    code, out, err = finished(
        "run", "--source", clip, "--model", tiny_onnx_model, "--max-frames", 5, "--save-dir", tmp_path / "snaps"
    )
    assert code == 0, err
    assert "backend: cpu (onnxruntime), model tiny-test (64x64 px), threshold 0.5000" in out
    assert "source: video file" in out and "as camera 'line'" in out
    assert "mqtt: off" in out
    defects = int(re.search(r"summary: 5 frames, (\d+) defective, 0 dropped, 0 corrupt", out).group(1))
    lines = [line for line in out.splitlines() if line.startswith("DEFECT line frame ")]
    assert len(lines) == defects
    assert all(re.search(r"score \d\.\d{4} > 0\.5000 boxes [1-9]\d*: \[x=\d+ y=\d+ w=\d+ h=\d+ peak=", line) for line in lines)
    assert len(list((tmp_path / "snaps").glob("*.jpg"))) == 2 * defects
    assert f"snapshots: {defects} defective frames saved" in out


def test_save_limit_keeps_only_the_newest_defects(clip, tiny_onnx_model, tmp_path):
    # A threshold of 0 makes every frame a defect; 0.001 MB holds no pair, so each run
    # keeps only the newest (never deleted).
    code, out, err = finished(
        "run", "--source", clip, "--model", tiny_onnx_model, "--threshold", 0,
        "--save-dir", tmp_path / "snaps", "--save-limit-mb", 0.001,
    )  # fmt: skip
    assert code == 0, err
    names = sorted(p.name.split("_", 1)[1] for p in (tmp_path / "snaps").iterdir())
    assert names == ["f000007_frame.jpg", "f000007_overlay.jpg"]
    assert "snapshots: 8 defective frames saved in" in out and "the oldest 7 deleted to stay under 0.001 MB" in out


def test_the_engine_alias_and_a_threshold_override(clip, tiny_onnx_model):
    code, out, err = finished("run", "--source", f"file://{clip}", "--engine", tiny_onnx_model, "--threshold", 2.0)
    assert code == 0, err
    assert "threshold 2.0000" in out and "summary: 8 frames, 0 defective" in out and "DEFECT" not in out


def test_a_model_that_does_not_match_its_manifest_is_refused_with_exit_2(clip, tiny_onnx_model):
    with open(tiny_onnx_model, "ab") as f:
        f.write(b"\0")  # one byte changed after export, as by a bad copy
    code, out, err = finished("run", "--source", clip, "--model", tiny_onnx_model)
    assert code == 2
    assert err.startswith("error: ") and "does not match its manifest" in err
    assert "Traceback" not in err and out == ""


def test_a_damaged_onnx_model_that_matches_its_manifest_exits_2(clip, tiny_onnx_model):
    # The manifest describes the damaged bytes (a truncated copy exported as is): the hash
    # passes, ONNX Runtime cannot parse the file.
    data = tiny_onnx_model.read_bytes()[:100]
    tiny_onnx_model.write_bytes(data)
    manifest = json.loads(manifest_path(tiny_onnx_model).read_text())
    manifest["model_sha256"] = hashlib.sha256(data).hexdigest()
    manifest_path(tiny_onnx_model).write_text(json.dumps(manifest))
    code, out, err = finished("run", "--source", clip, "--model", tiny_onnx_model)
    assert code == 2, err
    assert err.startswith("error: ") and "ONNX Runtime cannot load" in err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("threshold", [float("nan"), None, "0.5"])
def test_a_manifest_threshold_that_is_not_a_finite_number_exits_2(clip, tiny_onnx_model, threshold):
    # A NaN threshold is never exceeded: the line would run and never alert.
    manifest = json.loads(manifest_path(tiny_onnx_model).read_text())
    manifest["threshold"] = threshold
    manifest_path(tiny_onnx_model).write_text(json.dumps(manifest))
    code, out, err = finished("run", "--source", clip, "--model", tiny_onnx_model)
    assert code == 2, err
    assert err.startswith("error: ") and "threshold" in err and "not a finite number" in err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("field, value", [("input_height", 48), ("input_width", 48), ("input_name", "input"), ("output_name", "output")])
def test_a_manifest_that_misdescribes_the_graph_exits_2_before_any_frame(clip, tiny_onnx_model, field, value):
    manifest = json.loads(manifest_path(tiny_onnx_model).read_text())
    manifest[field] = value
    manifest_path(tiny_onnx_model).write_text(json.dumps(manifest))
    code, out, err = finished("run", "--source", clip, "--model", tiny_onnx_model)
    assert code == 2, err
    assert err.startswith("error: ") and "but its manifest expects" in err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "missing.onnx"], "model file missing.onnx does not exist"),
        (["--model", "model.pt"], "unknown model type '.pt'"),
        (["--model", "model.plan"], "build the engine with 'riad-trainer build-engine'"),  # copied without its manifest
    ],
)
def test_unusable_models_exit_2(clip, tmp_path, args, message):
    (tmp_path / "model.pt").write_bytes(b"torch")
    (tmp_path / "model.plan").write_bytes(b"engine")
    args = [str(tmp_path / a) if a.startswith("model.") else a for a in args]
    code, _, err = finished("run", "--source", clip, *args)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "source, message",
    [
        (["--source", "missing.mp4"], "missing.mp4: no such file or folder"),
        (["--camera", 97], "cannot open camera 97"),
        (["--source", "rtsp://127.0.0.1:9/line"], "cannot open stream rtsp://127.0.0.1:9/line"),
    ],
)
def test_an_unavailable_source_exits_3(tiny_onnx_model, source, message):
    code, out, err = finished("run", *source, "--model", tiny_onnx_model, timeout=20)
    assert code == 3, err
    assert err.strip().startswith("error: ") and message in err and "Traceback" not in err and out == ""


@pytest.mark.parametrize("sources", [[], ["--camera", 0, "--source", "clip.avi"]])
def test_exactly_one_source_is_required(tiny_onnx_model, sources):
    code, _, err = finished("run", *sources, "--model", tiny_onnx_model)
    assert code == 2 and "exactly one of --camera N or --source URI" in err


@pytest.mark.parametrize(
    "option, message",
    [
        (["--threshold", "nan"], "--threshold must be a finite number"),
        (["--threshold", "inf"], "--threshold must be a finite number"),
        (["--camera", "-1"], "greater than or equal to 0"),
    ],
)
def test_options_that_would_never_alert_or_name_no_camera_exit_2(clip, tiny_onnx_model, option, message):
    source = [] if option[0] == "--camera" else ["--source", clip]
    code, out, err = finished("run", *source, "--model", tiny_onnx_model, *option)
    assert code == 2 and message in err and out == ""


def test_a_spool_that_cannot_be_created_names_the_spool(clip, tiny_onnx_model, tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    spool = tmp_path / "not-a-folder" / "line.spool"
    code, _, err = finished(
        "run", "--source", clip, "--model", tiny_onnx_model, "--broker", "mqtt://127.0.0.1:1", "--spool", spool
    )
    assert code == 2, err
    assert err.startswith("error: ") and f"cannot create the spool folder {spool.parent}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_gracefully_with_a_summary_and_exit_0(bottle_dir, tmp_path, tiny_onnx_model, sig):
    long_clip = write_video(tmp_path / "long.avi", bottle_frames(bottle_dir, 8) * 40, "MJPG")
    process = riad_edge("run", "--source", long_clip, "--model", tiny_onnx_model, "--threshold", 0)
    while not process.stdout.readline().startswith("DEFECT"):  # inspecting now
        assert process.poll() is None, process.stderr.read()
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"{sig.name}: finishing queued frames" in err
    processed = int(re.search(r"summary: (\d+) frames", out).group(1))
    assert 1 <= processed < 320


def test_run_publishes_defects_and_goes_offline_at_the_end(broker, clip, tiny_onnx_model, tmp_path):
    subscriber = Subscriber(broker, ["riad/line2/#"])
    try:
        code, out, err = finished(
            "run", "--source", clip, "--model", tiny_onnx_model, "--max-frames", 3, "--threshold", 0,
            "--broker", broker.url, "--camera-id", "line2", "--spool", tmp_path / "spool.db",
        )
        assert code == 0, err
        assert f"mqtt: {broker.url}, topics riad/line2/..." in out
        assert subscriber.wait_for(lambda: len(subscriber.on("riad/line2/defect")) == 3)
        assert subscriber.wait_for(lambda: subscriber.on("riad/line2/available")[-1:] == [b"offline"])
    finally:
        subscriber.close()
    events = [json.loads(payload) for payload in subscriber.on("riad/line2/defect")]
    assert sorted(e["frame_index"] for e in events) == [0, 1, 2]
    assert all(e["camera_id"] == "line2" and e["model_id"] == "tiny-test" and e["boxes"] for e in events)


@pytest.mark.parametrize("folder", [False, True])
def test_a_file_or_folder_with_no_readable_frame_exits_3(bottle_dir, tmp_path, tiny_onnx_model, folder):
    frame = bottle_frames(bottle_dir, 1)[0]
    if folder:
        source = tmp_path / "batch"
        source.mkdir()
        for name in ["a.png", "b.png"]:
            write_truncated_png(source / name, frame)
    else:
        source = write_truncated_png(tmp_path / "part.png", frame)
    code, out, err = finished("run", "--source", source, "--model", tiny_onnx_model)
    assert code == 3, err
    assert f"summary: 0 frames, 0 defective, 0 dropped, {2 if folder else 1} corrupt" in out
    assert f"error: no readable frame in {source}" in err and "Traceback" not in err


def write_fixed_batch_onnx(path, input_size: int = 64):
    """A model whose graph reshapes to a batch of 1 inside, as a careless export leaves it:
    its inputs and outputs say any batch, so it loads, and the first 12-variant batch fails."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    write_tiny_onnx(path, input_size)
    shape = ["batch", 3, input_size, input_size]
    flat = numpy_helper.from_array(np.array([1, 3 * input_size * input_size], np.int64), "flat")
    back = numpy_helper.from_array(np.array([-1, 3, input_size, input_size], np.int64), "back")
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["images", "flat"], ["one"]),
            helper.make_node("Reshape", ["one", "back"], ["reconstructions"]),
        ],
        "fixed-batch",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("reconstructions", TensorProto.FLOAT, shape)],
        [flat, back],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    manifest = json.loads(manifest_path(path).read_text())
    manifest["model_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path(path).write_text(json.dumps(manifest))
    return path


def test_an_error_during_the_inspection_is_one_line_exit_1_and_mqtt_says_offline(broker, clip, tmp_path):
    model = write_fixed_batch_onnx(tmp_path / "fixed.onnx")
    subscriber = Subscriber(broker, ["riad/line3/available"])
    try:
        code, out, err = finished(
            "run", "--source", clip, "--model", model, "--broker", broker.url, "--camera-id", "line3",
            "--spool", tmp_path / "spool.db",
        )
        assert code == 1, err
        assert subscriber.wait_for(lambda: subscriber.on("riad/line3/available")[-1:] == [b"offline"])
    finally:
        subscriber.close()
    assert err.startswith("error: inspection stopped: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and "summary:" not in out


def test_a_second_sigint_aborts_at_once_with_exit_130(bottle_dir, tmp_path, tiny_onnx_model):
    long_clip = write_video(tmp_path / "long.avi", bottle_frames(bottle_dir, 8) * 40, "MJPG")
    # Unreachable broker: the graceful stop spends about a second trying to deliver the spool.
    process = riad_edge(
        "run", "--source", long_clip, "--model", tiny_onnx_model, "--threshold", 0,
        "--broker", "mqtt://127.0.0.1:1", "--spool", tmp_path / "spool.db",
    )
    while not process.stdout.readline().startswith("DEFECT"):
        assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGINT)
    while "finishing queued frames" not in process.stderr.readline():
        assert process.poll() is None
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert err.strip().endswith("aborted") and "Traceback" not in err and "summary:" not in out
