"""The verdict per part: OK, NOK or error, with what the reject gate and the MES need.

Published on `<prefix>/<camera>/verdict`, QoS 1 through the spool, one per trigger.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from edge.sinks.mqtt import SCHEMA_VERSION, iso_utc
from edge.results import Box, FrameResult

OK, NOK, ERROR = "OK", "NOK", "error"


@dataclass
class Verdict:
    part_id: str | None
    verdict: str  # OK, NOK or error
    latency_s: float  # trigger received -> verdict decided
    trigger_epoch: float
    error: str | None = None
    score: float | None = None  # the worst inspected frame's; None when no frame was judged
    threshold: float | None = None
    boxes: list[Box] = field(default_factory=list)
    frames: int = 0  # frames judged
    frame_width: int | None = None
    frame_height: int | None = None

    @classmethod
    def from_results(cls, part_id: str, results: list[FrameResult], latency_s: float, trigger_epoch: float) -> Verdict:
        """NOK when any frame of the part is defective; score and boxes from the worst frame."""
        worst = max(results, key=lambda r: r.score)
        height, width = worst.frame.shape[:2]
        return cls(
            part_id=part_id,
            verdict=NOK if worst.is_defect else OK,
            latency_s=latency_s,
            trigger_epoch=trigger_epoch,
            score=float(worst.score),
            threshold=float(worst.threshold),
            boxes=list(worst.boxes),
            frames=len(results),
            frame_width=width,
            frame_height=height,
        )

    def payload(self, camera_id: str, model_id: str) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "camera_id": camera_id,
                "model_id": model_id,
                "part_id": self.part_id,
                "verdict": self.verdict,
                "error": self.error,
                "score": self.score,
                "threshold": self.threshold,
                "boxes": [b.as_dict() for b in self.boxes],
                "frames": self.frames,
                "frame_width": self.frame_width,
                "frame_height": self.frame_height,
                "latency_ms": round(self.latency_s * 1000.0, 1),
                "trigger_timestamp": iso_utc(self.trigger_epoch),
                "timestamp": iso_utc(now),
                "epoch": now,
            }
        ).encode()

    def line(self, camera_id: str) -> str:
        """One console line per verdict."""
        what = f"score {self.score:.4f} / {self.threshold:.4f}" if self.score is not None else ""
        why = f": {self.error}" if self.error else ""
        return f"VERDICT {camera_id} part {self.part_id} {self.verdict} {what} {self.latency_s * 1000:.0f} ms{why}".replace("  ", " ")
