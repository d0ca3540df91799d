"""Is the inspector doing its job? The answer /healthz gives a container, a service manager, a load balancer.

Healthy means every camera is inspecting, for each camera:

- it has not stopped: it opened at the start and its inspection has not failed;
- a camera or stream (live) delivered a frame within the grace period. A triggered
  camera too: between parts it is still read all the time, so idle lines stay healthy;
- with a broker, the camera's MQTT connection has not been down for longer than the
  grace period (events wait in the spool meanwhile, but nobody hears of defects).

A video file or image folder is read as fast as the model goes and ends on its own,
so its frames are not timed: `riad-edge run` over a file ends (and its server with it)
when the file does. A run without a broker has nothing to check there. The grace
period counts from the start too: a camera or broker gets that long to come up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from edge.monitoring.camera import WatchedCamera

DEFAULT_GRACE_S = 60.0  # well beyond the longest reconnect wait of a camera or a broker (5 s)


@dataclass
class Health:
    healthy: bool
    problems: list[str]  # one line each, naming the camera
    cameras: dict[str, dict]

    def body(self) -> dict:
        """The JSON /healthz answers with."""
        return {"status": "ok" if self.healthy else "unhealthy", "problems": self.problems, "cameras": self.cameras}


def camera_problems(camera: WatchedCamera, grace_s: float, now: float) -> list[str]:
    stopped = camera.stopped()
    if stopped is not None or camera.stats is None:
        return [f"camera {camera.camera_id} is not inspecting: {stopped or 'not opened'}"]
    problems = []
    if camera.live:
        last = camera.stats.last_frame_at
        age = now - (last if last is not None else camera.stats.started_at)
        if age > grace_s:
            since = "" if last is not None else " (none since the start)"
            problems.append(f"camera {camera.camera_id}: no frame for {age:.0f} s{since}")
    publisher = camera.publisher
    if publisher is not None and publisher.disconnected_since is not None:
        away = now - publisher.disconnected_since
        if away > grace_s:
            why = publisher.broker_problem or "disconnected"
            problems.append(f"camera {camera.camera_id}: broker {publisher.broker.url} unusable for {away:.0f} s ({why})")
    return problems


def check(cameras: list[WatchedCamera], grace_s: float, now: float | None = None) -> Health:
    """The health of these cameras now; unhealthy while there is none yet (the inspector is starting)."""
    now = time.monotonic() if now is None else now
    if not cameras:
        return Health(False, ["starting: no camera inspecting yet"], {})
    problems: list[str] = []
    states = {}
    for camera in cameras:
        found = camera_problems(camera, grace_s, now)
        problems += found
        states[camera.camera_id] = _state(camera, now, healthy=not found)
    return Health(not problems, problems, states)


def _state(camera: WatchedCamera, now: float, healthy: bool) -> dict:
    last = camera.stats.last_frame_at if camera.stats is not None else None
    publisher = camera.publisher
    return {
        "healthy": healthy,
        "mode": camera.mode,
        "last_frame_age_s": None if last is None else round(now - last, 1),
        "mqtt": "off" if publisher is None else "connected" if publisher.disconnected_since is None else "disconnected",
    }
