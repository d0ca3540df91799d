"""Fixtures shared by many test files: the real bottle data, a tiny ONNX model, a tiny disk."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

# The broker fixtures; registered here, before any test module imports tests.broker,
# so pytest rewrites its asserts.
pytest_plugins = ["tests.broker"]

# Tests press Ctrl-C in child processes (training, riad-edge run) as a terminal would. A
# suite started with SIGINT ignored (nohup, some CI runners) hands that on to every child
# through exec, and the Ctrl-C would then never arrive: restore Python's own handler here.
signal.signal(signal.SIGINT, signal.default_int_handler)

# The shared data sets beside the checkout; RIAD_DATA points elsewhere (a GPU machine
# gets a copy made by bench/pack_for_device).
DATA = Path(os.environ.get("RIAD_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
# The 128 px bottle model the tests of known scores use (threshold 0.1995; tests/data/README.md).
OLD_BOTTLE_MODEL = Path(__file__).resolve().parent / "data" / "bottle-128px-v1.onnx"
BOTTLE = DATA / "mvtec" / "bottle"
BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(name: str) -> ModuleType:
    """bench/<name> as a module (the scripts have no .py suffix), for tests of its functions."""
    loader = SourceFileLoader(f"bench_{name}", str(BENCH / name))
    module = module_from_spec(spec_from_loader(loader.name, loader))
    sys.modules[loader.name] = module  # a dataclass in the script looks its module up there
    loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bottle_dir() -> Path:
    if not (BOTTLE / "train" / "good").is_dir():
        pytest.skip(f"MVTec AD bottle not found at {BOTTLE}")
    return BOTTLE


def write_tiny_onnx(path: Path, input_size: int = 64, threshold: float = 0.5) -> Path:
    """A two-layer conv net (not trained) exported with its manifest.

    It stands in for a real model where a test needs the edge pipeline's plumbing,
    not its accuracy; accuracy tests use a model our trainer produced.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge.method.anomaly_map import SCORE_TOP_FRACTION, default_sigma
    from edge.manifest import Manifest, file_sha256, manifest_path

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((3, 8, 3, 3)) * 0.2).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Conv", ["hr", "w2"], ["o"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["o"], ["reconstructions"]),
    ]
    shape = ["batch", 3, input_size, input_size]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("reconstructions", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    Manifest(
        model_id="tiny-test",
        category="test",
        input_height=input_size,
        input_width=input_size,
        model_width=8,
        threshold=threshold,
        model_file=path.name,
        model_sha256=file_sha256(path),
        map_sigma=default_sigma(input_size, input_size),
        score_top_fraction=SCORE_TOP_FRACTION,  # as export writes it
    ).save(manifest_path(path))
    return path


@pytest.fixture
def tiny_onnx_model(tmp_path: Path) -> Path:
    return write_tiny_onnx(tmp_path / "tiny.onnx")


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory) -> Path:
    """The CUDA kernels built for the host (tests/host_device.py); skips without g++."""
    from tests.host_device import build_host_kernels

    try:
        return build_host_kernels(tmp_path_factory.mktemp("host_kernels"))
    except FileNotFoundError as missing:
        pytest.skip(str(missing))


def write_foreign_engine(onnx_model: Path, source_sha256: str | None = None) -> Path:
    """`<model>.plan` with a manifest as build-engine writes it, but bytes no TensorRT loads.

    Enough where the GPU path is missing: the engine is never deserialised there.
    `source_sha256` is the ONNX model it claims to be built from (default: `onnx_model`).
    """
    from edge.manifest import Manifest, file_sha256, manifest_path

    engine = onnx_model.with_suffix(".plan")
    engine.write_bytes(b"a TensorRT engine for another machine")
    manifest = Manifest.for_model(onnx_model)
    manifest.model_file, manifest.model_sha256 = engine.name, file_sha256(engine)
    manifest.engine = {
        "tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "precision": "fp16",
        "source_onnx_sha256": source_sha256 or file_sha256(onnx_model), "max_batch": 12,
    }  # fmt: skip
    manifest.save(manifest_path(engine))
    return engine


@pytest.fixture
def tiny_disk(tmp_path: Path, request):
    """A real file system (tmpfs) of 256 kB, or the size given by indirect parametrisation,
    so writes fail with ENOSPC as on a full SD card."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    size = getattr(request, "param", "256k")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(folder: Path) -> None:
    """Fill the file system that holds `folder` to the last byte."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.fixture
def http_camera(bottle_dir, tmp_path):
    """An IP camera's HTTP stream of a real clip; it loops, as a live camera never ends."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    from media import bottle_frames, write_video

    write_video(tmp_path / "cam.avi", bottle_frames(bottle_dir, 8), "MJPG")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cam.avi"
    server.shutdown()
    server.server_close()
