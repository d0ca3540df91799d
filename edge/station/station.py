"""A station: the cameras of one config in one process, each isolated from the others.

Cameras that name the same model share one SharedBackend, so their frames are
batched. Each camera has its own thread, source, MQTT publisher (availability, stats,
spool and ordering of its own) and stats; a camera that cannot be opened, or fails
later, is logged and answers its triggers with `error` while the others go on.
"""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from pathlib import Path

from edge.backends import open_backend
from edge.sinks.broker import BrokerConfig
from edge.method.inspection import FrameJudge
from edge.monitoring.camera import WatchedCamera
from edge.pipeline import Pipeline
from edge.runner import ConsoleSink, open_publisher
from edge.sinks.commands import CommandListener, attach_controls, camera_controls
from edge.sinks.lifecycle import VERDICT
from edge.sinks.mqtt import close_all
from edge.sources.cameras import SourceError, open_source
from edge.station.batching import SharedBackend
from edge.station.config import CameraConfig, StationConfig
from edge.station.trigger import TriggerSubscriber, trigger_client_id
from edge.station.triggered import TriggeredCamera
from edge.station.verdict import Verdict

log = logging.getLogger(__name__)


class Station:
    """Open with `with Station(...) as station:` (ManifestError/BackendError for a bad model),
    then `run()` until `stop()`, or until every free-running camera's source has ended
    when no camera is triggered."""

    def __init__(self, config: StationConfig, broker: BrokerConfig | None = None, console: bool = True, ha_prefix: str | None = None,
                 commands: bool = False):
        self.config = config
        self.broker = broker
        self.ha_prefix = ha_prefix  # announce every camera to Home Assistant under this prefix; None: off
        self.console = console
        self.commands_enabled = commands
        self.backends: dict[Path, SharedBackend] = {}
        self.pipelines: dict[str, Pipeline] = {}
        self.triggered: dict[str, TriggeredCamera] = {}
        self.down: dict[str, str] = {}  # camera id -> why it could not be opened
        self.failed: dict[str, str] = {}  # camera id -> why its inspection stopped
        self.triggers: TriggerSubscriber | None = None
        self.publishers: dict = {}  # camera id -> MqttPublisher
        self.controls: dict = {}  # camera id -> CameraControls: its defect lifecycle, snapshot, what commands change
        self.commands: CommandListener | None = None  # of every camera, with a broker
        self._stop = threading.Event()
        self._stack = ExitStack()

    # --- wiring -----------------------------------------------------------------------

    def __enter__(self) -> Station:
        try:
            self._open_backends()
            for camera in self.config.cameras:
                self._open_camera(camera)
            if self.broker is not None and self.triggered:
                topics = {f"{self.config.topic_prefix}/{cid}/trigger": cam.submit for cid, cam in self.triggered.items()}
                self.triggers = TriggerSubscriber(self.broker, topics, trigger_client_id(self.config.topic_prefix, list(self.triggered)))
            if self.broker is not None and self.controls:
                self.commands = CommandListener(self.broker, self.config.topic_prefix, self.controls, self.commands_enabled)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_backends(self) -> None:
        users: dict[Path, int] = {}
        for camera in self.config.cameras:
            key = camera.model.resolve()
            users[key] = users.get(key, 0) + 1
        for model, cameras in users.items():
            backend = self._stack.enter_context(open_backend(model))
            # Each camera has at most one frame in flight; an engine's profile may allow fewer.
            per_frame = backend.manifest.mask_spec.num_variants
            engine_frames = (backend.manifest.engine or {}).get("max_batch", per_frame * cameras) // per_frame
            shared = SharedBackend(backend, max(1, min(cameras, engine_frames))).start()
            self._stack.callback(shared.close)
            self.backends[model] = shared

    def _open_camera(self, camera: CameraConfig) -> None:
        backend = self.backends[camera.model.resolve()]
        roi = backend.manifest.crop if camera.roi_from_model else camera.roi
        judge = FrameJudge(backend, camera.threshold, roi, camera.ignore)
        try:
            source = self._stack.enter_context(open_source(camera.source))
        except SourceError as exc:
            source = None
            down = str(exc)
        camera_id = camera.camera_id or (source.camera_id if source is not None else "cam")
        camera.camera_id = camera_id
        if source is None:
            self.down[camera_id] = down
            log.error("camera %s is down: %s; the other cameras go on", camera_id, down)
        sinks: list = [ConsoleSink(camera_id)] if self.console else []
        if camera.mode == "triggered":
            cam = TriggeredCamera(
                camera_id,
                source,
                judge,
                self._verdict_sink(camera_id, backend.manifest.model_id),
                sinks,
                deadline_s=camera.deadline_s,
                down_reason=self.down.get(camera_id),
            )
            self._stack.callback(cam.close)
            self.triggered[camera_id] = cam
            if self.broker is not None:
                stats = lambda: {**cam.frame_stats.snapshot(), "verdicts": cam.stats.snapshot(), "batching": backend.counters()}  # noqa: E731
                publisher = self._publisher(camera_id, camera, backend, stats)
                controls = self.controls[camera_id] = camera_controls(publisher, judge, triggered=True)  # it groups each part's frames itself
                cam.sinks += [controls.lifecycle, controls.snapshot]
                cam.part_done = lambda: controls.lifecycle.end(VERDICT)  # a part's defect ends with its verdict
        elif source is not None:
            pipeline = Pipeline(source, backend, sinks, judge=judge)
            self.pipelines[camera_id] = pipeline
            if self.broker is not None:
                stats = lambda: {**pipeline.stats.snapshot(), "batching": backend.counters()}  # noqa: E731
                self.controls[camera_id] = attach_controls(pipeline, self._publisher(camera_id, camera, backend, stats))

    def _publisher(self, camera_id: str, camera: CameraConfig, backend: SharedBackend, stats):
        assert self.broker is not None
        publisher = open_publisher(self.broker, camera_id, self.config.topic_prefix, camera.spool, backend.manifest, stats,
                                   self.ha_prefix, self.commands_enabled, triggered=camera.mode == "triggered")  # fmt: skip
        self.publishers[camera_id] = publisher
        return publisher

    def _verdict_sink(self, camera_id: str, model_id: str):
        def publish(verdict: Verdict) -> None:
            if self.console:
                print(verdict.line(camera_id), flush=True)
            publisher = self.publishers.get(camera_id)
            if publisher is not None:
                publisher.send("verdict", verdict.payload(camera_id, model_id), f"verdict for part {verdict.part_id}")

        return publish

    def watched(self) -> list[WatchedCamera]:
        """Each camera as /metrics and /healthz read it: opened or down, free or triggered."""
        cameras = []
        for camera in self.config.cameras:
            cid = camera.camera_id or "cam"
            shared = self.backends[camera.model.resolve()]
            common = {"model_id": shared.manifest.model_id, "backend": shared.name, "publisher": self.publishers.get(cid),
                      "stopped": lambda cid=cid: self.down.get(cid) or self.failed.get(cid)}  # fmt: skip
            if cid in self.triggered:
                cam = self.triggered[cid]
                live = cam.source is None or cam.source.is_live
                stats = cam.frame_stats if cam.source is not None else None
                cameras.append(WatchedCamera(cid, "triggered", stats=stats, live=live, verdicts=cam.stats, **common))
            else:
                pipeline = self.pipelines.get(cid)
                live = pipeline is None or pipeline.source.is_live
                cameras.append(WatchedCamera(cid, "free", stats=pipeline.stats if pipeline else None, live=live, **common))
        return cameras

    # --- running ----------------------------------------------------------------------

    def run(self) -> None:
        threads = [threading.Thread(target=self._run_pipeline, args=(cid, p), name=f"camera-{cid}") for cid, p in self.pipelines.items()]
        threads += [threading.Thread(target=cam.run, name=f"camera-{cid}") for cid, cam in self.triggered.items()]
        for thread in threads:
            thread.start()
        if self.triggered:
            self._stop.wait()
        for thread in threads:
            thread.join()

    def _run_pipeline(self, camera_id: str, pipeline: Pipeline) -> None:
        try:
            summary = pipeline.run()
        except Exception as exc:  # noqa: BLE001 - one camera failing never stops the others
            self.failed[camera_id] = str(exc)
            log.error("camera %s stopped: %s; the other cameras go on", camera_id, exc)
            return
        log.info("camera %s: %s", camera_id, summary)

    def stop(self) -> None:
        """Graceful: no new triggers or frames; queued ones finish or get `error`. Safe in a signal handler."""
        self._stop.set()
        for pipeline in self.pipelines.values():
            pipeline.stop()
        for cam in self.triggered.values():
            cam.stop()

    def close(self) -> None:
        if self.triggers is not None:
            self.triggers.close()
            self.triggers = None
        if self.commands is not None:
            self.commands.close()
            self.commands = None
        for cam in self.triggered.values():
            cam.stop()
        for controls in self.controls.values():
            controls.lifecycle.close()  # a free camera's pipeline has closed it already; a triggered camera's has not
        close_all(self.publishers.values())
        self.publishers.clear()
        self._stack.close()
