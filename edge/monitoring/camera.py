"""What the monitoring reads of one camera: its running numbers, its kind of source, its broker link.

The runner (one camera) and the station (many) describe each camera once; /metrics
and /healthz read these objects when they are asked, so no number is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.sinks.mqtt import MqttPublisher
    from edge.station.triggered import VerdictStats
    from edge.monitoring.stats import PipelineStats


def _inspecting() -> str | None:
    return None


@dataclass
class WatchedCamera:
    camera_id: str
    mode: str  # free or triggered
    model_id: str
    backend: str  # the backend's name: "cpu (onnxruntime)", "tensorrt"...
    stats: PipelineStats | None  # None: the camera could not be opened
    live: bool = True  # a camera or stream, whose frames must keep coming; a file or folder need not
    publisher: MqttPublisher | None = None  # None: no broker
    verdicts: VerdictStats | None = None  # a triggered camera's OK / NOK / error counts
    stopped: Callable[[], str | None] = _inspecting  # why the camera no longer inspects, if it does not
