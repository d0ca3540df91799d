"""The inspection pipeline end to end: real videos and folders, the tiny ONNX model, real sinks."""

from __future__ import annotations

import itertools
import logging
import threading
import time

import cv2
import numpy as np
import pytest
from media import bottle_frames, write_image_folder, write_truncated_png, write_video

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.pipeline import QUEUE_SIZE, Pipeline
from edge.results import DefectTracker, FrameResult
from edge.sources.cameras import CaptureSource, open_source
from edge.monitoring.stats import PipelineStats


class CollectingSink:
    def __init__(self):
        self.results: list[FrameResult] = []
        self.closed = False

    def handle(self, result: FrameResult) -> None:
        self.results.append(result)

    def close(self) -> None:
        self.closed = True


class FailingSink(CollectingSink):
    def handle(self, result: FrameResult) -> None:
        raise RuntimeError("disk on fire")


class SlowBackend(OnnxCpuBackend):
    """The CPU backend on a slower machine: each frame takes `delay` seconds longer."""

    def __init__(self, model_path, delay: float):
        super().__init__(model_path, threads=1)
        self.delay = delay

    def score(self, image):
        time.sleep(self.delay)
        return super().score(image)


@pytest.fixture
def clip(bottle_dir, tmp_path):
    return write_video(tmp_path / "line.mp4", bottle_frames(bottle_dir, 8), "mp4v")


def test_every_frame_of_a_file_becomes_one_sane_result(clip, tiny_onnx_model):
    sink = CollectingSink()
    backend = OnnxCpuBackend(tiny_onnx_model, threads=1)
    started = time.time()
    summary = Pipeline(open_source(str(clip)), backend, [sink]).run()

    assert [r.frame_index for r in sink.results] == list(range(8))
    for r in sink.results:
        assert r.frame.shape == (128, 128, 3)
        assert r.anomaly_map.shape == (64, 64) and r.anomaly_map.dtype == np.float32
        assert r.score == pytest.approx(np.sort(r.anomaly_map.ravel())[-41:].mean())  # the top 1 % of 4,096 pixels
        assert r.threshold == backend.manifest.threshold
        assert bool(r.boxes) == r.is_defect
        assert all(0 <= b.x < 128 and 0 <= b.y < 128 and b.x + b.width <= 128 and b.y + b.height <= 128 for b in r.boxes)
        assert started <= r.timestamp <= time.time()
        assert 0 < r.latency_s < 30
    assert sink.closed
    assert summary["frames_processed"] == 8 and summary["frames_dropped"] == 0
    assert summary["defects"] == sum(r.is_defect for r in sink.results)
    assert summary["latency_p50_ms"] > 0 and summary["fps"] > 0


def test_threshold_override_decides_defects(clip, tiny_onnx_model):
    backend = OnnxCpuBackend(tiny_onnx_model, threads=1)
    scores = [r.score for r in run_collecting(clip, backend)]
    middle = float(np.median(scores))
    results = run_collecting(clip, backend, threshold=middle)
    assert [r.is_defect for r in results] == [s > middle for s in scores]
    assert all(r.threshold == middle for r in results)


def test_consecutive_defective_frames_are_one_defect():
    def result(index: int, score: float) -> FrameResult:
        return FrameResult(index, 0.0, np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4), np.float32), score, 0.5)

    defects = DefectTracker()
    results = [result(i, s) for i, s in enumerate([0.2, 0.9, 0.8, 0.7, 0.3, 0.6, 0.1])]
    for r in results:
        defects.assign(r)
    assert [r.defect_frame for r in results] == [0, 1, 2, 3, 0, 1, 0]
    assert [r.defect_id is None for r in results] == [True, False, False, False, True, False, True]
    assert results[1].defect_id == results[2].defect_id == results[3].defect_id != results[5].defect_id


def test_the_pipeline_groups_defects_for_every_sink(clip, tiny_onnx_model):
    backend = OnnxCpuBackend(tiny_onnx_model, threads=1)
    results = run_collecting(clip, backend, threshold=0.0)  # every frame defective: one long defect
    assert [r.defect_frame for r in results] == list(range(1, len(results) + 1))
    assert len({r.defect_id for r in results}) == 1 and results[0].defect_id is not None


def run_collecting(clip, backend, **options) -> list[FrameResult]:
    sink = CollectingSink()
    Pipeline(open_source(str(clip)), backend, [sink], **options).run()
    return sink.results


def test_a_file_is_never_dropped_even_when_inference_is_slow(clip, tiny_onnx_model):
    sink = CollectingSink()
    summary = Pipeline(open_source(str(clip)), SlowBackend(tiny_onnx_model, 0.03), [sink]).run()
    assert [r.frame_index for r in sink.results] == list(range(8))
    assert summary["frames_dropped"] == 0


def test_a_live_source_drops_the_oldest_frames_to_stay_current(bottle_dir, tmp_path, tiny_onnx_model):
    clip = write_video(tmp_path / "cam.avi", bottle_frames(bottle_dir, 8), "MJPG")
    # A camera whose stream loops: the source reopens the clip whenever it ends.
    camera = CaptureSource(
        "looping camera", lambda: cv2.VideoCapture(str(clip)), live=True, camera_id="cam", backoff=(0.01, 0.01)
    )
    sink = CollectingSink()
    pipeline = Pipeline(camera, SlowBackend(tiny_onnx_model, 0.08), [sink], max_frames=5)
    summary = pipeline.run()

    indices = [r.frame_index for r in sink.results]
    assert len(indices) == 5 and indices == sorted(set(indices))
    assert summary["frames_dropped"] > 0
    assert any(b - a > 1 for a, b in itertools.pairwise(indices))  # frames skipped, not queued up
    assert camera.read() is None  # the pipeline closed its source


def test_stop_finishes_the_queued_frames_and_closes_the_sinks(bottle_dir, tmp_path, tiny_onnx_model):
    clip = write_video(tmp_path / "long.avi", bottle_frames(bottle_dir, 40), "MJPG")
    sink = CollectingSink()
    pipeline = Pipeline(open_source(str(clip)), SlowBackend(tiny_onnx_model, 0.05), [sink])
    summaries = []
    runner = threading.Thread(target=lambda: summaries.append(pipeline.run()))
    runner.start()
    while pipeline.stats.frames_processed < 2:
        time.sleep(0.01)
    done_at_stop = pipeline.stats.frames_processed
    pipeline.stop()
    runner.join(timeout=10)

    assert not runner.is_alive() and sink.closed
    processed = [r.frame_index for r in sink.results]
    assert processed == list(range(len(processed)))  # nothing lost from the middle
    assert done_at_stop + QUEUE_SIZE <= len(processed) < 40  # the full queue was drained, no more
    assert summaries[0]["frames_processed"] == len(processed) and summaries[0]["queue_depth"] == 0


def test_a_failing_sink_does_not_stop_the_run(clip, tiny_onnx_model, caplog):
    failing, collecting = FailingSink(), CollectingSink()
    with caplog.at_level(logging.ERROR, logger="edge.pipeline"):
        Pipeline(open_source(str(clip)), OnnxCpuBackend(tiny_onnx_model, threads=1), [failing, collecting]).run()
    assert len(collecting.results) == 8
    assert failing.closed and collecting.closed
    errors = [r for r in caplog.records if "FailingSink failed" in r.getMessage()]
    assert len(errors) == 1  # logged once, not once per frame


def test_corrupt_images_are_counted_and_the_rest_inspected(bottle_dir, tmp_path, tiny_onnx_model):
    frames = bottle_frames(bottle_dir, 3)
    folder = write_image_folder(tmp_path / "parts", frames, ["1.png", "2.png", "4.png"])
    write_truncated_png(folder / "3.png", frames[0])
    sink = CollectingSink()
    summary = Pipeline(open_source(str(folder)), OnnxCpuBackend(tiny_onnx_model, threads=1), [sink]).run()
    assert [r.frame_index for r in sink.results] == [0, 1, 3]
    assert summary["frames_corrupt"] == 1 and summary["frames_processed"] == 3


def test_a_backend_failure_ends_the_run_but_still_closes_everything(clip, tiny_onnx_model):
    class BrokenBackend(OnnxCpuBackend):
        def score(self, image):
            raise RuntimeError("device lost")

    sink = CollectingSink()
    source = open_source(str(clip))
    with pytest.raises(RuntimeError, match="device lost"):
        Pipeline(source, BrokenBackend(tiny_onnx_model, threads=1), [sink]).run()
    assert sink.closed and source.read() is None


def test_stats_percentiles_counters_and_thread_safety():
    stats = PipelineStats(latency_window=100)
    for ms in range(1, 101):
        stats.record_frame(ms / 1000, defect=ms % 10 == 0)
    snap = stats.snapshot()
    assert snap["latency_p50_ms"] == pytest.approx(50.5, abs=0.1)
    assert snap["latency_p99_ms"] == pytest.approx(99.0, abs=0.1)
    assert snap["defects"] == 10 and snap["frames_processed"] == 100 and snap["fps"] > 0

    # The window keeps only the most recent latencies.
    for _ in range(100):
        stats.record_frame(0.5, defect=False)
    assert stats.snapshot()["latency_p99_ms"] == pytest.approx(500.0)

    def hammer():
        for _ in range(2000):
            stats.record_frame(0.001, defect=True)
            stats.record_drop()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = stats.snapshot()
    assert snap["frames_processed"] == 8200 and snap["frames_dropped"] == 8000 and snap["defects"] == 8010


def test_fps_falls_when_the_pipeline_stalls():
    stats = PipelineStats(fps_window_s=1.0)  # a window that a loaded machine cannot overrun by chance
    for _ in range(10):
        stats.record_frame(0.01, defect=False)
    assert stats.snapshot()["fps"] > 10  # 10 frames in less than the window
    time.sleep(1.05)
    assert stats.snapshot()["fps"] == 0
