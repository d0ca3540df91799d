"""A real MQTT broker on a free loopback port, for tests: mosquitto, or amqtt where mosquitto is missing.

The broker runs as a subprocess stopped by its PID, so a test can SIGKILL it like a crash
and start it again on the same port. conftest.py registers this module's fixtures for
every test.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from edge.local_broker import MOSQUITTO, LocalBroker, free_port  # noqa: F401 (free_port: used by tests)

USERS = {"edge": "s3cret"}  # the login the `broker_with_login` fixture accepts


class TestBroker(LocalBroker):
    """The product's throw-away broker, with the logins, TLS and persistence tests ask for."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(
        self, workdir: Path, users: dict[str, str] | None = None, persistence: bool = False, tls: bool = False
    ):
        workdir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.users = users
        if (users or persistence or tls) and not MOSQUITTO:
            pytest.skip("amqtt stands in for mosquitto without logins, persistence or TLS; install mosquitto")
        lines: list[str] = []
        if tls:
            lines += self._make_certificates(workdir)
        if users:
            passwd = workdir / "passwd"
            passwd.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        if persistence:
            # Saved after every change, so a SIGKILL keeps the subscriptions made before it.
            lines += [
                "persistence true",
                f"persistence_location {workdir}/",
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        super().__init__(workdir, lines)

    @property
    def url(self) -> str:
        # The test certificate is for "localhost"; TLS checks the name.
        return f"mqtts://localhost:{self.port}" if self.tls else f"mqtt://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.pem"

    @staticmethod
    def _make_certificates(workdir: Path) -> list[str]:
        """A throw-away CA and a server certificate for localhost, made with openssl."""
        ca_file = workdir / "ca.pem"
        ca_key, key, csr, cert = (workdir / n for n in ("ca.key", "server.key", "server.csr", "server.pem"))
        openssl = ["openssl"]
        subprocess.run(
            [*openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=riad test CA",
             "-keyout", ca_key, "-out", ca_file], check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [*openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key, "-out", csr],
            check=True, capture_output=True,
        )  # fmt: skip
        extensions = workdir / "san.cnf"
        extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        subprocess.run(
            [*openssl, "x509", "-req", "-in", csr, "-CA", ca_file, "-CAkey", ca_key, "-CAcreateserial",
             "-days", "2", "-extfile", extensions, "-out", cert], check=True, capture_output=True,
        )  # fmt: skip
        return [f"cafile {ca_file}", f"certfile {cert}", f"keyfile {key}"]


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


def _running(broker: TestBroker):
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def broker(tmp_path: Path):
    yield from _running(TestBroker(tmp_path / "broker"))


@pytest.fixture
def broker_with_login(tmp_path: Path):
    yield from _running(TestBroker(tmp_path / "broker-login", users=USERS))


@pytest.fixture
def tls_broker(tmp_path: Path):
    yield from _running(TestBroker(tmp_path / "broker-tls", tls=True))


@pytest.fixture
def persistent_broker(tmp_path: Path):
    yield from _running(TestBroker(tmp_path / "broker-persistent", persistence=True))


def frame_result(bottle_dir: Path, index: int = 0, defect: bool = True):
    """A FrameResult on a real bottle frame with a synthetic anomaly map (MQTT needs no model).

    A defective result has one hot square in its 64 x 64 map, above the 0.5 threshold.
    """
    import numpy as np

    from edge.method.preprocess import read_image
    from edge.method.regions import defect_boxes
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
        boxes=defect_boxes(amap, float(amap.max()), threshold, frame.shape),
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
