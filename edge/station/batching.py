"""One backend for several cameras: frames submitted together go through it as one batch.

Each camera thread calls `score()` as it would on its own backend and blocks for its
result. One worker thread takes the oldest waiting frame and every other frame
already waiting (up to `max_frames`), and scores them with one `score_batch` call,
N x 12 masked variants through the network at once. Nothing waits for a batch to
fill: while a batch runs, the next one gathers, so batching costs no latency.

ONNX Runtime runs a batch as one network call. The TensorRT backend does not yet: its
device buffers are sized for one frame, so its `score_batch` is the base class's loop
(the engine's profile already allows several frames: `max_batch` in its manifest).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import numpy as np

from edge.backends.base import Backend, FrameScore

_STOP = object()


@dataclass
class _Job:
    image: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    result: FrameScore | None = None
    error: BaseException | None = None


class SharedBackend(Backend):
    def __init__(self, backend: Backend, max_frames: int):
        super().__init__(backend.manifest)
        if max_frames < 1:
            raise ValueError(f"a batch holds at least one frame, not {max_frames}")
        self.backend = backend
        self.name = backend.name
        self.max_frames = max_frames
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.batches = 0  # score_batch calls
        self.frames = 0  # frames scored
        self.largest_batch = 0
        self._worker = threading.Thread(target=self._run, name=f"batch-{backend.manifest.model_id}", daemon=True)

    def start(self) -> SharedBackend:
        self._worker.start()
        return self

    def waiting(self) -> int:
        """Frames submitted and not yet taken into a batch."""
        return self._waiting.qsize()

    def score(self, image: np.ndarray) -> FrameScore:
        job = _Job(image)
        self._waiting.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def counters(self) -> dict:
        with self._lock:
            return {"batches": self.batches, "frames": self.frames, "largest_batch": self.largest_batch}

    def _run(self) -> None:
        while True:
            job = self._waiting.get()
            if job is _STOP:
                return
            jobs = [job]
            stop = False
            while len(jobs) < self.max_frames:
                try:
                    more = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                jobs.append(more)
            self._score(jobs)
            if stop:
                return

    def _score(self, jobs: list[_Job]) -> None:
        try:
            results = self.backend.score_batch([job.image for job in jobs])
        except Exception as exc:  # noqa: BLE001 - every camera in the batch gets the error, in its own thread
            for job in jobs:
                job.error = exc
                job.done.set()
            return
        with self._lock:
            self.batches += 1
            self.frames += len(jobs)
            self.largest_batch = max(self.largest_batch, len(jobs))
        for job, result in zip(jobs, results):
            job.result = result
            job.done.set()

    def close(self) -> None:
        """Scores what is waiting, stops the worker and closes the backend."""
        if self._worker.is_alive():
            self._waiting.put(_STOP)
            self._worker.join()
        self.backend.close()
