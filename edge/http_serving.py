"""What the live view and /metrics share: an HTTP server on its own thread that no stuck client can hold."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import TypeVar

CLIENT_TIMEOUT_S = 30  # a client that stops reading holds only its own thread, and only this long

Server = TypeVar("Server", bound=ThreadingHTTPServer)


class BackgroundHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address) -> None:
        request.settimeout(CLIENT_TIMEOUT_S)
        super().finish_request(request, client_address)


def bind(make: Callable[[], Server], what: str, another: str, error: type[Exception]) -> Server:
    """`make()`, the server bound to its address; a port in use or an address it cannot have is
    `error`, one line: "cannot serve <what>: ...", pointing at `another` (the option to change)."""
    try:
        return make()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise error(f"cannot serve {what}: the port is already in use; stop whatever uses it or choose another {another}") from None
        raise error(f"cannot serve {what}: {exc.strerror or exc}") from None


def serve_in_background(server: ThreadingHTTPServer, name: str) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return thread
