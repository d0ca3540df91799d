"""The deployment files work: the systemd unit verifies, the compose file has its services,
and the shipped mosquitto.conf (and bridge.conf) run a real mosquitto with TLS and logins."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.local_broker import end_process
from tests.broker import MOSQUITTO, free_port

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
USER, PASSWORD = "line1", "s3cret-line"


def test_systemd_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (DEPLOY / "riad-edge.service").read_text()
    # verify insists that ExecStart's program exists; the venv exists only on the device.
    binary = "/opt/riad-edge/venv/bin/riad-edge"
    assert f"ExecStart={binary} run --camera ${{RIAD_CAMERA}} --engine ${{RIAD_ENGINE}} --broker" in unit
    copy = tmp_path / "riad-edge.service"
    copy.write_text(unit.replace(f"ExecStart={binary}", "ExecStart=/bin/true"))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""
    for setting in ("Restart=always", "After=network-online.target", "Wants=network-online.target", "User=riad",
                    "SupplementaryGroups=video", "EnvironmentFile=/etc/riad-edge/riad-edge.env"):
        assert setting in unit


def test_env_file_sets_every_variable_the_unit_uses():
    unit = (DEPLOY / "riad-edge.service").read_text()
    used = set(re.findall(r"\$\{?(RIAD_[A-Z_]+)", unit))
    env = dict(line.split("=", 1) for line in (DEPLOY / "riad-edge.env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert used <= set(env)
    assert "RIAD_MQTT_PASSWORD" in env  # read by riad-edge itself, never on the command line


def test_compose_file_has_the_line_services():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"mosquitto", "engine", "inspector"}
    inspector = services["inspector"]
    assert inspector["runtime"] == "nvidia" and services["engine"]["runtime"] == "nvidia"
    assert "/dev/video0:/dev/video0" in inspector["devices"]
    assert inspector["depends_on"]["engine"]["condition"] == "service_completed_successfully"
    assert inspector["command"][0] == "run"
    engine_build = services["engine"]["command"][0]
    assert "riad-trainer build-engine" in engine_build and "riad-edge doctor --model" in engine_build


def test_dockerfile_targets_jetpack_tensorrt_without_torch():
    dockerfile = (DEPLOY / "Dockerfile.jetson").read_text()
    assert "ARG L4T_TENSORRT=r10.3.0" in dockerfile
    # nvcc builds pycuda and the kernels in the -devel stage; the image itself is -runtime.
    build, image = dockerfile.split("FROM nvcr.io/nvidia/l4t-tensorrt:${L4T_TENSORRT}-runtime\n")
    assert "FROM nvcr.io/nvidia/l4t-tensorrt:${L4T_TENSORRT}-devel AS build" in build
    assert "riad-trainer build-kernels --arch sm_87 --out /kernels" in build
    assert "COPY --from=build /kernels /opt/riad-edge/kernels" in image and "ENV RIAD_KERNELS_DIR=/opt/riad-edge/kernels" in image
    assert "cuda/bin" not in image and "/wheels/pycuda-" in image
    assert "torch" not in dockerfile.replace("torch-free", "").replace("No torch", "")


def test_jetson_image_keeps_the_pip_opencv_out_and_checks_gstreamer(tmp_path):
    """The image must use JetPack's OpenCV (GStreamer): the Dockerfile's own sed, run on our
    pyproject.toml, leaves no OpenCV requirement and every other one."""
    import tomllib

    dockerfile = (DEPLOY / "Dockerfile.jetson").read_text()
    sed = re.search(r"^RUN sed -i '([^']+)' /src/pyproject.toml$", dockerfile, re.MULTILINE)
    assert sed, "the Dockerfile no longer strips the pip OpenCV from pyproject.toml"
    pyproject = DEPLOY.parent / "pyproject.toml"
    copy = shutil.copy(pyproject, tmp_path / "pyproject.toml")
    subprocess.run(["sed", "-i", sed.group(1), str(copy)], check=True)
    before = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    after = tomllib.loads(Path(copy).read_text())["project"]["dependencies"]
    assert [d for d in before if not d.startswith("opencv")] == after and len(after) == len(before) - 1
    assert "libopencv-python" in dockerfile and "numpy<2" in dockerfile
    assert "GStreamer:\\s+YES" in dockerfile  # the build fails on an OpenCV without GStreamer


# ---- mosquitto with the shipped configuration ------------------------------------------


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, made with the openssl CLI."""
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class ShippedMosquitto:
    """deploy/mosquitto/mosquitto.conf with its ports and paths moved into a temporary folder."""

    def __init__(self, folder: Path, conf_d: Path | None = None):
        folder.mkdir(parents=True)
        self.plain_port, self.tls_port = free_port(), free_port()
        self.cert, key = make_certificate(folder)
        passwd = folder / "passwd"
        passwd.touch(mode=0o600)
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), USER, PASSWORD], check=True)
        (folder / "data").mkdir()
        conf_d = conf_d or folder / "conf.d"
        conf_d.mkdir(exist_ok=True)
        replacements = {
            "listener 1883 127.0.0.1": f"listener {self.plain_port} 127.0.0.1",
            "listener 8883": f"listener {self.tls_port}",
            "/etc/mosquitto/passwd": str(passwd),
            "/etc/mosquitto/certs/server.crt": str(self.cert),
            "/etc/mosquitto/certs/server.key": str(key),
            "/var/lib/mosquitto/": f"{folder / 'data'}/",
            "/etc/mosquitto/conf.d": str(conf_d),
        }
        config = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
        for shipped, here in replacements.items():
            assert shipped in config, f"{shipped} is no longer in mosquitto.conf"
            config = config.replace(shipped, here)
        # As root, mosquitto would switch to user mosquitto and lose access to these files.
        config += f"user {os.environ.get('USER') or 'root'}\n"
        self.config = folder / "mosquitto.conf"
        self.config.write_text(config)
        self.log = folder / "mosquitto.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        for port in (self.plain_port, self.tls_port):
            wait_for_port(port, self.process, self.log)

    def stop(self) -> None:
        end_process(self.process)


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port}")


def connect(port: int, username: str | None, password: str | None, ca: Path | None = None) -> paho.ReasonCode:
    """The broker's answer to a login (raises ssl.SSLError when TLS fails)."""
    answered, answer = threading.Event(), []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    if username:
        client.username_pw_set(username, password)
    if ca:
        client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
    client.on_connect = lambda c, u, f, rc, p: (answer.append(rc), answered.set())
    client.connect("localhost" if ca else "127.0.0.1", port, keepalive=10)
    client.loop_start()
    try:
        assert answered.wait(10), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return answer[0]


@pytest.fixture
def shipped_mosquitto(tmp_path):
    if MOSQUITTO is None or shutil.which("mosquitto_passwd") is None or shutil.which("openssl") is None:
        pytest.skip("needs mosquitto, mosquitto_passwd and openssl")
    broker = ShippedMosquitto(tmp_path / "line")
    yield broker
    broker.stop()


def test_shipped_mosquitto_wants_tls_and_a_password(shipped_mosquitto):
    b = shipped_mosquitto
    assert not connect(b.tls_port, USER, PASSWORD, ca=b.cert).is_failure
    assert connect(b.tls_port, USER, "wrong", ca=b.cert).is_failure
    assert connect(b.tls_port, None, None, ca=b.cert).is_failure  # no anonymous clients
    with pytest.raises(ssl.SSLError):
        _untrusting_handshake(b.tls_port)
    # Loopback: plain MQTT, still with a password.
    assert not connect(b.plain_port, USER, PASSWORD).is_failure
    assert connect(b.plain_port, USER, "wrong").is_failure


def _untrusting_handshake(port: int) -> None:
    """A TLS client that does not trust the broker's certificate fails the handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")


def test_plain_listener_is_loopback_only(shipped_mosquitto):
    # This machine's address on its network (a UDP connect sends nothing).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            pytest.skip("no network interface besides loopback")
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("no network interface besides loopback")
    socket.create_connection((address, shipped_mosquitto.tls_port), timeout=2).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, shipped_mosquitto.plain_port), timeout=2)


def test_bridge_forwards_riad_topics_to_a_central_broker(tmp_path):
    if MOSQUITTO is None or shutil.which("mosquitto_passwd") is None or shutil.which("openssl") is None:
        pytest.skip("needs mosquitto, mosquitto_passwd and openssl")
    # The central broker: the same shipped configuration, in its own folder.
    central = ShippedMosquitto(tmp_path / "central")
    conf_d = tmp_path / "line-conf.d"
    conf_d.mkdir()
    bridge = (DEPLOY / "mosquitto" / "bridge.conf").read_text()
    for shipped, here in {
        "central-broker.plant.example:8883": f"localhost:{central.tls_port}",
        "/etc/mosquitto/certs/plant-ca.crt": str(central.cert),
        "remote_username line1-bridge": f"remote_username {USER}",
        "remote_password change-me": f"remote_password {PASSWORD}",
    }.items():
        assert shipped in bridge
        bridge = bridge.replace(shipped, here)
    (conf_d / "bridge.conf").write_text(bridge)
    line = ShippedMosquitto(tmp_path / "line", conf_d=conf_d)
    try:
        received: list[tuple[str, bytes]] = []
        subscribed = threading.Event()
        sub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        sub.username_pw_set(USER, PASSWORD)
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe("riad/#", qos=1)
        sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        sub.on_message = lambda c, u, m: received.append((m.topic, m.payload))
        sub.connect("127.0.0.1", central.plain_port)
        sub.loop_start()
        assert subscribed.wait(10)

        pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        pub.username_pw_set(USER, PASSWORD)
        pub.connect("127.0.0.1", line.plain_port)
        pub.loop_start()
        deadline = time.monotonic() + 15
        # The bridge connects on its own schedule; publish until its first message arrives.
        while not any(t == "riad/line1/defect" for t, _ in received) and time.monotonic() < deadline:
            pub.publish("riad/line1/defect", b'{"score": 0.9}', qos=1).wait_for_publish(5)
            pub.publish("other/topic", b"stays local", qos=1).wait_for_publish(5)
            time.sleep(0.3)
        pub.disconnect()
        pub.loop_stop()
        sub.disconnect()
        sub.loop_stop()
        assert ("riad/line1/defect", b'{"score": 0.9}') in received
        assert all(t.startswith("riad/") for t, _ in received)  # only riad/# crosses the bridge
        assert ("riad/bridges/line1/state", b"1") in received  # the bridge says it is connected
    finally:
        line.stop()
        central.stop()
