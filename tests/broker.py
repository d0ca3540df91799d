"""A real MQTT broker on a free loopback port, for tests: mosquitto, or amqtt where mosquitto is missing.

The broker runs as a subprocess stopped by its PID, so a test can SIGKILL it like a crash
and start it again on the same port. Use the fixtures with
`pytest_plugins = ["tests.broker"]` in a test module.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
)
USERS = {"edge": "s3cret"}  # the login the `broker_with_login` fixture accepts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestBroker:
    """One broker process; `url` stays the same across stop(), kill() and start()."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(
        self, workdir: Path, users: dict[str, str] | None = None, persistence: bool = False, tls: bool = False
    ):
        self.workdir = workdir
        self.port = free_port()
        self.users = users
        self.persistence = persistence
        self.tls = tls
        self.process: subprocess.Popen | None = None
        self.kind = "mosquitto" if MOSQUITTO else "amqtt"
        self.log = workdir / f"{self.kind}.log"
        self._command = self._configure()

    @property
    def url(self) -> str:
        # The test certificate is for "localhost"; TLS checks the name.
        return f"mqtts://localhost:{self.port}" if self.tls else f"mqtt://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.pem"

    def _make_certificates(self) -> list[str]:
        """A throw-away CA and a server certificate for localhost, made with openssl."""
        ca_key, key, csr, cert = (self.workdir / n for n in ("ca.key", "server.key", "server.csr", "server.pem"))
        openssl = ["openssl"]
        subprocess.run(
            [*openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=riad test CA",
             "-keyout", ca_key, "-out", self.ca_file], check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [*openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key, "-out", csr],
            check=True, capture_output=True,
        )  # fmt: skip
        extensions = self.workdir / "san.cnf"
        extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        subprocess.run(
            [*openssl, "x509", "-req", "-in", csr, "-CA", self.ca_file, "-CAkey", ca_key, "-CAcreateserial",
             "-days", "2", "-extfile", extensions, "-out", cert], check=True, capture_output=True,
        )  # fmt: skip
        return [f"cafile {self.ca_file}", f"certfile {cert}", f"keyfile {key}"]

    def _configure(self) -> list[str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.kind == "mosquitto":
            lines = [
                f"listener {self.port} 127.0.0.1",
                f"allow_anonymous {'false' if self.users else 'true'}",
                f"user {getpass.getuser()}",  # run as root, mosquitto would switch users and lose our files
            ]
            if self.tls:
                lines += self._make_certificates()
            if self.users:
                passwd = self.workdir / "passwd"
                passwd.touch(mode=0o600)
                for user, password in self.users.items():
                    subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
                lines.append(f"password_file {passwd}")
            if self.persistence:
                # Saved after every change, so a SIGKILL keeps the subscriptions made before it.
                lines += [
                    "persistence true",
                    f"persistence_location {self.workdir}/",
                    "autosave_on_changes true",
                    "autosave_interval 1",
                ]
            else:
                lines.append("persistence false")
            config = self.workdir / "mosquitto.conf"
            config.write_text("\n".join(lines) + "\n")
            return [MOSQUITTO, "-c", str(config)]
        if self.users or self.persistence or self.tls:
            pytest.skip("amqtt stands in for mosquitto without logins, persistence or TLS; install mosquitto")
        config = self.workdir / "amqtt.yaml"
        config.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(config)]

    def start(self, timeout: float = 10.0) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen on port {self.port} within {timeout} s")

    def _end(self, sig: int) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """A crash: no goodbye to the clients, nothing saved."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()


class Subscriber:
    """A paho client that records every message on `topics` (QoS 1) and reconnects by itself.

    With a `client_id` and `clean_session=False` the broker keeps its subscription and
    queues messages while it is away, as a dependable consumer (Node-RED, a MES bridge) would.
    """

    def __init__(self, broker: TestBroker, topics: list[str], client_id: str = "", clean_session: bool = True):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []  # topic, payload, retained
        self._topics = topics
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session, protocol=paho.MQTTv311
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in self._topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, bool(m.retain)))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("subscriber got no SUBACK within 10 s")

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _ in list(self.messages) if t == topic]

    def wait_for(self, condition, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path):
    b = TestBroker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def broker_with_login(tmp_path: Path):
    b = TestBroker(tmp_path / "broker-login", users=USERS)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def tls_broker(tmp_path: Path):
    b = TestBroker(tmp_path / "broker-tls", tls=True)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def persistent_broker(tmp_path: Path):
    b = TestBroker(tmp_path / "broker-persistent", persistence=True)
    b.start()
    yield b
    b.stop()


def frame_result(bottle_dir: Path, index: int = 0, defect: bool = True):
    """A FrameResult on a real bottle frame with a synthetic anomaly map (MQTT needs no model).

    A defective result has one hot square in its 64 x 64 map, above the 0.5 threshold.
    """
    import numpy as np

    from edge.preprocess import read_image
    from edge.regions import defect_boxes
    from edge.results import FrameResult

    folder = bottle_dir / "test" / ("broken_large" if defect else "good")
    frame = read_image(sorted(folder.glob("*.png"))[index % 5])
    amap = np.full((64, 64), 0.1, np.float32)
    if defect:
        amap[20:28, 30:40] = 0.8
    threshold = 0.5
    return FrameResult(
        frame_index=index,
        timestamp=time.time(),
        frame=frame,
        anomaly_map=amap,
        score=float(amap.max()),
        threshold=threshold,
        boxes=defect_boxes(amap, threshold, frame.shape),
    )


@pytest.fixture
def subscribe():
    """subscribe(broker, topics, client_id="", clean_session=True) -> a Subscriber, closed after the test."""
    made: list[Subscriber] = []

    def make(broker: TestBroker, topics: list[str], **kwargs) -> Subscriber:
        made.append(Subscriber(broker, topics, **kwargs))
        return made[-1]

    yield make
    for subscriber in made:
        subscriber.close()


@pytest.fixture
def make_result(bottle_dir: Path):
    """make_result(index=0, defect=True) -> frame_result on the bottle data."""
    return lambda index=0, defect=True: frame_result(bottle_dir, index, defect)
