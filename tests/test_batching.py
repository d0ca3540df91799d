"""SharedBackend: cameras sharing a model share one backend; frames ready together are one network run."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.method.preprocess import prepare, read_image
from edge.station.batching import SharedBackend


class CountingSession:
    """The real ONNX Runtime session, with each run's batch size written down."""

    def __init__(self, session):
        self.session = session
        self.batch_sizes: list[int] = []

    def run(self, outputs, feeds):
        (batch,) = feeds.values()
        self.batch_sizes.append(len(batch))
        return self.session.run(outputs, feeds)


def bottle_images(bottle_dir, shape: tuple[int, int], count: int) -> list[np.ndarray]:
    paths = sorted((bottle_dir / "test" / "broken_large").glob("*.png"))[:count]
    return [prepare(read_image(p), shape) for p in paths]


def test_frames_ready_together_are_one_network_run_with_the_same_scores(bottle_dir, tiny_onnx_model):
    backend = OnnxCpuBackend(tiny_onnx_model)
    images = bottle_images(bottle_dir, backend.manifest.input_shape, 3)
    alone = [backend.score(image) for image in images]
    counting = backend.session = CountingSession(backend.session)
    shared = SharedBackend(backend, max_frames=4)  # not started: the frames gather first
    results: dict[int, object] = {}
    cameras = [threading.Thread(target=lambda i=i: results.__setitem__(i, shared.score(images[i]))) for i in range(3)]
    for camera in cameras:
        camera.start()
    while shared.waiting() < 3:
        threading.Event().wait(0.01)
    shared.start()
    for camera in cameras:
        camera.join(10)
    shared.close()
    per_frame = backend.manifest.mask_spec.num_variants
    assert counting.batch_sizes == [3 * per_frame]  # one run: 3 frames x 12 variants
    assert shared.counters() == {"batches": 1, "frames": 3, "largest_batch": 3}
    for i, single in enumerate(alone):
        np.testing.assert_allclose(results[i].anomaly_map, single.anomaly_map, atol=1e-5)
        assert results[i].score == pytest.approx(single.score, abs=1e-5)


def test_a_batch_never_exceeds_its_limit(bottle_dir, tiny_onnx_model):
    backend = OnnxCpuBackend(tiny_onnx_model)
    images = bottle_images(bottle_dir, backend.manifest.input_shape, 3)
    counting = backend.session = CountingSession(backend.session)
    shared = SharedBackend(backend, max_frames=2)
    cameras = [threading.Thread(target=shared.score, args=(image,)) for image in images]
    for camera in cameras:
        camera.start()
    while shared.waiting() < 3:
        threading.Event().wait(0.01)
    shared.start()
    for camera in cameras:
        camera.join(10)
    shared.close()
    assert counting.batch_sizes == [24, 12]


def test_a_backend_error_reaches_every_camera_of_the_batch(tiny_onnx_model):
    backend = OnnxCpuBackend(tiny_onnx_model)
    shared = SharedBackend(backend, max_frames=2).start()
    wrong_size = np.zeros((3, 8, 8), np.float32)
    with pytest.raises(Exception):
        shared.score(wrong_size)
    good = np.zeros((3, 64, 64), np.float32)
    assert shared.score(good).anomaly_map.shape == (64, 64)  # the next frame is served again
    shared.close()
