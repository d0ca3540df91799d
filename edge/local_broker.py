"""A throw-away MQTT broker on a free loopback port, for the demo and the tests.

mosquitto where it is installed (Debian: `apt-get install mosquitto`), otherwise amqtt
(pure Python, `pip install amqtt`). Either runs as a child process, stopped by its PID,
so a test can also kill it like a crash and start it again on the same port.
A production line uses its own broker (deploy/mosquitto); this one is for trying things.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
)


class LocalBrokerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def amqtt_available() -> bool:
    try:
        import amqtt  # noqa: F401
    except ImportError:
        return False
    return True


class LocalBroker:
    """One broker process on 127.0.0.1; `url` stays the same across stop(), kill() and start().

    `mosquitto_lines` are extra mosquitto.conf lines (logins, TLS, persistence); with
    them the broker must be mosquitto.
    """

    def __init__(self, workdir: Path, mosquitto_lines: list[str] = ()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        if MOSQUITTO:
            self.kind = "mosquitto"
        elif mosquitto_lines:
            raise LocalBrokerError("this broker configuration needs mosquitto (apt-get install mosquitto)")
        elif amqtt_available():
            self.kind = "amqtt"
        else:
            raise LocalBrokerError("no MQTT broker here: install mosquitto (apt-get install mosquitto) or amqtt (pip install amqtt)")
        self.log = self.workdir / f"{self.kind}.log"
        self._command = self._configure(list(mosquitto_lines))

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _configure(self, extra: list[str]) -> list[str]:
        if self.kind == "mosquitto":
            lines = [
                f"listener {self.port} 127.0.0.1",
                # Run as root, mosquitto would switch to its own user and lose our files.
                f"user {getpass.getuser()}",
                *extra,
            ]
            if not any(line.startswith("allow_anonymous") for line in lines):
                lines.append("allow_anonymous true")
            if not any(line.startswith("persistence ") for line in lines):
                lines.append("persistence false")
            config = self.workdir / "mosquitto.conf"
            config.write_text("\n".join(lines) + "\n")
            return [MOSQUITTO, "-c", str(config)]
        config = self.workdir / "amqtt.yaml"
        config.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(config)]

    def start(self, timeout: float = 10.0) -> LocalBroker:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalBrokerError(f"{self.kind} exited at start: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise LocalBrokerError(f"{self.kind} did not listen on port {self.port} within {timeout} s")

    def _end(self, sig: int) -> None:
        if self.process is None:
            return
        end_process(self.process, sig)
        self.process = None

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """A crash: no goodbye to the clients, nothing saved."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def end_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send `sig` until `process` exits; subprocess.TimeoutExpired after `timeout` seconds.

    Sent again every half second: mosquitto 2.0 can miss a SIGTERM that lands just as it
    enters its event loop, and then sleeps until its next timer, 10 s later when idle.
    """
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(min(0.5, max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
