"""`riad-edge doctor` against real things: videos and folders of bottle frames, the tiny model
and a tampered copy, a real mosquitto with a password file, a port nobody listens on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from edge.doctor import (
    FAIL,
    OK,
    WARN,
    check_broker,
    check_gpu,
    check_model,
    check_source,
    check_spool,
)
from edge.manifest import Manifest, file_sha256, manifest_path
from edge.method.roi import Roi
from tests.broker import USERS, free_port
from tests.conftest import write_foreign_engine
from tests.media import bottle_frames, write_image_folder, write_video


def doctor(*args) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-c", "from edge.cli import app; app()", "doctor", *map(str, args)],
                          check=False, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


def lines_by_check(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines() if line and not line.startswith(" ")}


def test_a_video_file_yields_a_frame(bottle_dir, tmp_path):
    clip = write_video(tmp_path / "line.avi", bottle_frames(bottle_dir, 4), "MJPG")
    check, frame = check_source(str(clip))
    assert check.status == OK and "128x128 frame" in check.detail
    assert frame.shape == (128, 128, 3)


def test_an_image_folder_yields_a_frame(bottle_dir, tmp_path):
    folder = write_image_folder(tmp_path / "parts", bottle_frames(bottle_dir, 2), ["a.png", "b.jpg"])
    check, frame = check_source(str(folder))
    assert check.status == OK and "folder" in check.detail and frame is not None


def test_a_missing_camera_fails_with_a_hint():
    check, frame = check_source("9")  # there is no /dev/video9 here
    assert check.status == FAIL and frame is None
    assert "camera 9" in check.detail and "video" in check.detail
    assert "v4l2-ctl" in check.fix


def test_an_empty_video_fails(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    check, _ = check_source(str(tmp_path / "empty.mp4"))
    assert check.status == FAIL and "empty" in check.detail


def test_the_model_loads_and_scores_a_real_frame(bottle_dir, tmp_path, tiny_onnx_model):
    _, frame = check_source(str(write_video(tmp_path / "c.avi", bottle_frames(bottle_dir, 2), "MJPG")))
    check = check_model(tiny_onnx_model, frame)
    assert check.status == OK
    assert "tiny-test (64x64 px, threshold 0.5000) on cpu (onnxruntime)" in check.detail
    assert "a camera frame scored" in check.detail
    assert "grey test frame" in check_model(tiny_onnx_model, None).detail


def test_a_tampered_model_fails(tiny_onnx_model):
    with open(tiny_onnx_model, "ab") as f:
        f.write(b"\0")
    check = check_model(tiny_onnx_model, None)
    assert check.status == FAIL and "does not match its manifest" in check.detail
    assert "manifest it was exported with" in check.fix


def test_a_model_without_manifest_fails(tiny_onnx_model):
    manifest_path(tiny_onnx_model).unlink()
    check = check_model(tiny_onnx_model, None)
    assert check.status == FAIL and "no manifest" in check.detail


def test_an_engine_needs_the_gpu(tiny_onnx_model, tmp_path):
    engine = tmp_path / "tiny.plan"
    engine.write_bytes(b"not really an engine")
    manifest = Manifest.read(manifest_path(tiny_onnx_model))
    manifest.model_file, manifest.model_sha256 = engine.name, file_sha256(engine)
    manifest.engine = {"tensorrt_version": "10.3.0", "compute_capability": "8.7", "gpu_name": "Orin"}
    manifest.save(manifest_path(engine))

    gpu = check_gpu(engine)
    if gpu.status == OK:
        pytest.skip("this machine has a GPU; the engine check then compares versions instead")
    assert gpu.status == FAIL and ".onnx" in gpu.fix
    assert check_gpu(tiny_onnx_model).status == WARN  # an ONNX model still runs on the CPU
    model = check_model(engine, None)
    assert model.status == FAIL and "TensorRT engine" in model.detail and "docs/gpu.md" in model.fix


def test_an_engine_with_its_onnx_beside_it_runs_on_the_cpu(tiny_onnx_model):
    engine = write_foreign_engine(tiny_onnx_model)
    gpu = check_gpu(engine)
    if gpu.status == OK:
        pytest.skip("this machine has a GPU; the engine check then compares versions instead")
    assert gpu.status == WARN and f"run falls back to {tiny_onnx_model} on the CPU" in gpu.detail
    model = check_model(engine, None)
    assert model.status == OK and "cpu (onnxruntime)" in model.detail


def test_broker_login_accepted_and_refused(broker_with_login):
    user, password = next(iter(USERS.items()))
    ok = check_broker(broker_with_login.url, user, password)
    assert ok.status == OK and f"logged in as {user}" in ok.detail
    refused = check_broker(broker_with_login.url, user, "wrong")
    assert refused.status == FAIL and "refused" in refused.detail and "password" in refused.fix
    anonymous = check_broker(broker_with_login.url, None, None)
    assert anonymous.status == FAIL and "anonymous" in anonymous.detail


def test_tls_broker_with_its_ca(tls_broker):
    assert check_broker(tls_broker.url, None, None, tls_broker.ca_file).status == OK
    untrusted = check_broker(tls_broker.url, None, None)  # the system CAs do not know the test CA
    assert untrusted.status == FAIL and "TLS" in untrusted.detail and "--tls-ca" in untrusted.fix


def test_unreachable_broker_and_bad_url():
    down = check_broker(f"mqtt://127.0.0.1:{free_port()}", None, None, timeout=2)
    assert down.status == FAIL and "cannot reach" in down.detail and "firewalls" in down.fix
    bad = check_broker("http://broker", None, None)
    assert bad.status == FAIL and "mqtt://" in bad.detail


def test_a_port_that_is_not_mqtt_is_named_as_such():
    with socket.socket() as silent:  # the kernel accepts the connection; nothing ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        check = check_broker(f"mqtt://127.0.0.1:{silent.getsockname()[1]}", None, None, timeout=1)
    assert check.status == FAIL and "sent no answer within 1 s" in check.detail
    assert "MQTT listener" in check.fix


def test_spool_space(tmp_path):
    assert check_spool(tmp_path / "not" / "yet" / "made").status == OK
    low = check_spool(tmp_path, warn_below=1 << 60)
    assert low.status == WARN and "GiB free" in low.detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_spool_fails(tmp_path):
    tmp_path.chmod(0o500)
    try:
        assert check_spool(tmp_path / "spool").status == FAIL
    finally:
        tmp_path.chmod(0o700)


def test_cli_all_good_exits_0(bottle_dir, tmp_path, tiny_onnx_model, broker_with_login):
    folder = write_image_folder(tmp_path / "parts", bottle_frames(bottle_dir, 2), ["1.png", "2.png"])
    user, password = next(iter(USERS.items()))
    code, output = doctor("--source", folder, "--model", tiny_onnx_model, "--broker", broker_with_login.url,
                          "--username", user, "--password", password, "--spool-dir", tmp_path / "spool")
    checks = lines_by_check(output)
    assert code == 0, output
    assert list(checks) == ["source", "gpu", "model", "broker", "spool"]
    assert all(checks[name].split()[1] == OK for name in ("source", "model", "broker", "spool"))


def test_cli_any_failure_exits_1_and_says_what_to_fix(tiny_onnx_model, tmp_path):
    code, output = doctor("--camera", 9, "--model", tiny_onnx_model, "--broker", f"mqtt://127.0.0.1:{free_port()}",
                          "--spool-dir", tmp_path)
    checks = lines_by_check(output)
    assert code == 1
    assert checks["source"].split()[1] == FAIL and checks["broker"].split()[1] == FAIL
    assert checks["model"].split()[1] == OK
    assert output.count("fix:") >= 2
    assert "Traceback" not in output


def test_cli_with_only_a_model_checks_only_the_gpu_and_the_model(tiny_onnx_model):
    # What the compose file's engine service relies on: a FAIL here means "rebuild the engine".
    code, output = doctor("--model", tiny_onnx_model)
    checks = lines_by_check(output)
    assert list(checks) == ["gpu", "model"] and checks["model"].split()[1] == OK
    assert code == 0, output


def test_cli_needs_at_most_one_source(tmp_path):
    code, output = doctor("--camera", 0, "--source", tmp_path)
    assert code == 2 and "one of --camera" in output


def lines_by_camera_check(output: str) -> dict[str, str]:
    """'source line1' -> its line: with --config each source and model line names its camera."""
    return {" ".join(line.split()[:2]): line for line in output.splitlines() if line.split()[:1] in (["source"], ["model"])}


def test_cli_config_checks_every_camera_as_run_config_would_start_it(bottle_dir, tmp_path, tiny_onnx_model, broker_with_login):
    roi_model = tmp_path / "roi.onnx"  # the tiny model, as if trained on the frames' left half
    roi_model.write_bytes(tiny_onnx_model.read_bytes())
    manifest = Manifest.read(manifest_path(tiny_onnx_model))
    manifest.model_file, manifest.roi = roi_model.name, Roi.parse("0,0,64,128").as_dict()
    manifest.save(manifest_path(roi_model))
    write_image_folder(tmp_path / "parts", bottle_frames(bottle_dir, 2), ["1.png", "2.png"])
    config = tmp_path / "line.yaml"
    config.write_text(
        f"broker: mqtt://127.0.0.1:{free_port()}\n"  # nobody there: --broker wins over it, as in run
        "cameras:\n"
        f"  - {{id: line1, source: parts, model: {tiny_onnx_model}, spool: spools/line1.spool}}\n"
        f"  - {{id: line2, source: parts, model: roi.onnx, roi: '0,0,64,128', spool: spools/line2.spool}}\n"
        f"  - {{id: line3, source: '9', model: {tiny_onnx_model}, roi: '0,0,64,128', spool: other/line3.spool}}\n"
    )
    user, password = next(iter(USERS.items()))
    code, output = doctor("--config", config, "--broker", broker_with_login.url, "--username", user, "--password", password)
    cameras, checks = lines_by_camera_check(output), lines_by_check(output)
    assert code == 1, output  # line3 cannot run
    assert all(cameras[f"{what} {cam}"].split()[2] == OK for what in ("source", "model") for cam in ("line1", "line2")), output
    assert "on cpu (onnxruntime): a camera frame scored" in cameras["model line2"]  # scored through its ROI
    assert cameras["source line3"].split()[2] == FAIL and "camera 9" in cameras["source line3"]
    # The whole-frame model on a camera with an ROI: what run --config would refuse at start.
    assert cameras["model line3"].split()[2] == FAIL and "trained on the whole frame" in cameras["model line3"]
    assert checks["broker"].split()[1] == OK and password not in output
    assert f"{tmp_path / 'spools'}:" in output and f"{tmp_path / 'other'}:" in output  # each spool folder, once
    assert "Traceback" not in output and "tcp @" not in output


def test_cli_config_that_cannot_be_read_exits_2(tmp_path, tiny_onnx_model):
    config = tmp_path / "line.yaml"
    config.write_text("cameras: []\n")
    code, output = doctor("--config", config)
    assert code == 2 and output.startswith("error: ") and "lists no cameras" in output
    code, output = doctor("--config", config, "--model", tiny_onnx_model)
    assert code == 2 and "with --config the cameras, models and" in output


def test_a_stream_that_cannot_be_opened_is_one_line_without_ffmpegs_own(tmp_path):
    code, output = doctor("--source", f"rtsp://cam:pw-12345@127.0.0.1:{free_port()}/stream")
    assert code == 1 and "cannot open stream rtsp://cam:***@127.0.0.1" in output
    assert "fix: check the URL, the login and that the camera streams there" in output and "v4l2-ctl" not in output
    # FFmpeg's "[tcp @ 0x...] Connection to tcp://... failed" and OpenCV's "[ WARN:0@0.4] ..." stay out, as in run.
    assert "tcp @" not in output and "WARN:0" not in output and "pw-12345" not in output


def test_without_a_frame_the_model_is_scored_on_a_grey_frame_the_cameras_ignore_mask_fits(tmp_path, tiny_onnx_model):
    from edge.doctor import check_model
    from edge.method.roi import IgnoreMask
    from edge.station.config import CameraConfig

    mask = np.zeros((150, 200), np.uint8)
    mask[:20] = 255  # a label strip along the top of a 200 x 150 frame
    camera = CameraConfig("line1", "9", tiny_onnx_model, ignore=IgnoreMask(image=mask))
    check = check_model(tiny_onnx_model, None, camera, "model line1")  # the camera gave no frame
    assert check.status == OK and "a grey test frame scored" in check.detail, check.detail


def test_a_model_trained_on_an_roi_is_checked_through_it_without_a_config(tmp_path, tiny_onnx_model):
    # `doctor --model X` (the compose file's engine check) must not fail a model for its ROI.
    manifest = Manifest.for_model(tiny_onnx_model)
    manifest.roi = Roi.parse("10,10,64,64").as_dict()
    manifest.save(manifest_path(tiny_onnx_model))
    code, output = doctor("--model", tiny_onnx_model)
    assert code == 0 and "a grey test frame scored" in lines_by_check(output)["model"], output


def test_a_missing_file_is_told_to_check_the_path(tmp_path):
    check, _ = check_source(str(tmp_path / "line.mp4"))
    assert check.status == FAIL and "check the path" in check.fix
