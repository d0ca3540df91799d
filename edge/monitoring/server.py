"""The monitoring endpoint: one small HTTP server per process, for all its cameras.

    /metrics   Prometheus metrics (edge/monitoring/metrics.py), text or OpenMetrics as asked
    /healthz   200 {"status": "ok", ...} or 503 {"status": "unhealthy", "problems": [...]}

It listens from the start of a run, before the model has loaded, so a port in use is an
error at once; until the cameras are inspecting /healthz answers 503 "starting" (a
container's health check gives it a start period). No password: it serves counts and
the health of the line, never images; bind it to the plant network on purpose
(`--metrics-host 0.0.0.0`) for a Prometheus on another machine.
"""

from __future__ import annotations

import json
import logging
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from prometheus_client.exposition import choose_encoder

from edge.http_serving import BackgroundHTTPServer, bind, serve_in_background
from edge.monitoring.camera import WatchedCamera
from edge.monitoring.health import DEFAULT_GRACE_S, check
from edge.monitoring.metrics import InspectorCollector, registry_for

DEFAULT_HOST = "127.0.0.1"

log = logging.getLogger(__name__)


class MonitoringError(ValueError):
    """The endpoint cannot listen (port in use, address not on this machine): a bad option, exit 2."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                encode, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(HTTPStatus.OK, encode(self.server.registry), content_type)
            elif path == "/healthz":
                health = check(self.server.collector.cameras, self.server.collector.grace_s)
                status = HTTPStatus.OK if health.healthy else HTTPStatus.SERVICE_UNAVAILABLE
                self._send(status, json.dumps(health.body()).encode() + b"\n", "application/json")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away
        except Exception:  # a bug in reading the numbers: the inspection goes on, the scrape says so
            log.exception("answering %s failed", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error: see the inspector's log\n", "text/plain; charset=utf-8")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass  # a scrape every 15 s is not worth a log line


class _Server(BackgroundHTTPServer):
    def __init__(self, address: tuple[str, int], collector: InspectorCollector):
        if ":" in address[0]:  # an IPv6 address such as :: or ::1
            self.address_family = socket.AF_INET6
        self.collector = collector
        self.registry = registry_for(collector)
        super().__init__(address, _Handler)


class MonitoringServer:
    """Serves /metrics and /healthz on a background thread until `close()`; `watch()` adds a camera."""

    def __init__(self, host: str | None, port: int, grace_s: float | None = None):
        """`host` None: DEFAULT_HOST; `grace_s` None: DEFAULT_GRACE_S."""
        host = DEFAULT_HOST if host is None else host
        grace_s = DEFAULT_GRACE_S if grace_s is None else grace_s
        if not 1 <= port <= 65535:
            raise MonitoringError(f"metrics port must be 1 to 65535, not {port}")
        if not grace_s > 0:
            raise MonitoringError(f"the health grace period must be more than 0 seconds, not {grace_s}")
        self.collector = InspectorCollector(grace_s)
        self._server = bind(lambda: _Server((host, port), self.collector), f"metrics on {host}:{port}", "--metrics-port", MonitoringError)
        self.host, self.port = host, port
        self._thread = serve_in_background(self._server, "monitoring")

    def watch(self, camera: WatchedCamera) -> None:
        self.collector.watch(camera)

    @property
    def url(self) -> str:
        """Where to point Prometheus: this machine's name when listening on every address."""
        host = socket.gethostname() if self.host in ("", "0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MonitoringServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
