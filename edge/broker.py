"""Where the MQTT broker is and how to log in: one URL, parsed once, applied to any paho client."""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerError(Exception):
    """The broker cannot be used as configured: a bad URL, a refused login, a TLS failure."""


# What connect_client raises, one class per thing a user fixes differently.
class BrokerUnreachable(BrokerError):
    """Nothing accepted a connection at the broker's host and port."""


class BrokerTlsFailed(BrokerError):
    """The TLS handshake failed (certificate, CA, or a plain port)."""


class BrokerSilent(BrokerError):
    """A connection was accepted but no MQTT answer came (not an MQTT listener?)."""


class BrokerRefused(BrokerError):
    """The broker answered with a refusal: a bad login, or not authorised."""


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None  # None with TLS: the system's trusted CAs
    cert_file: Path | None = None  # client certificate, for brokers that require one
    key_file: Path | None = None

    @property
    def url(self) -> str:
        """The broker as a URL for messages and logs; never shows the password."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"

    def apply_to(self, client: paho.Client) -> None:
        """Credentials and TLS settings on a paho client, before it connects."""
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(
                ca_certs=str(self.ca_file) if self.ca_file else None,
                certfile=str(self.cert_file) if self.cert_file else None,
                keyfile=str(self.key_file) if self.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )


def parse_broker_url(
    url: str,
    username: str | None = None,
    password: str | None = None,
    ca_file: Path | str | None = None,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
) -> BrokerConfig:
    """`mqtt://[user[:pass]@]host[:port]` or `mqtts://...` (TLS) as a BrokerConfig.

    Explicit `username`/`password` win over those in the URL, so a password can come
    from the environment instead of the command line (where `ps` shows it).
    """
    parts = urlsplit(url.strip())
    url = re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", url)  # messages never show a password
    if parts.scheme not in DEFAULT_PORTS:
        raise BrokerError(f"broker URL {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerError(f"broker URL {url!r}: a broker URL has no path; topics are set separately")
    try:
        port = parts.port
    except ValueError:
        raise BrokerError(f"broker URL {url!r}: the port must be a number from 1 to 65535") from None
    if port == 0:
        raise BrokerError(f"broker URL {url!r}: the port must be a number from 1 to 65535")
    if not parts.hostname:
        raise BrokerError(f"broker URL {url!r}: no host name")

    tls = parts.scheme == "mqtts"
    files = {name: Path(f) if f else None for name, f in (("ca", ca_file), ("cert", cert_file), ("key", key_file))}
    if not tls and any(files.values()):
        raise BrokerError(f"certificate files given for {url!r}, which is not TLS; use mqtts://")
    for name, path in files.items():
        if path is not None and not path.is_file():
            raise BrokerError(f"{name} file {path} not found")
    if (files["cert"] is None) != (files["key"] is None):
        raise BrokerError("a client certificate needs both the certificate file and its key file")

    # An empty value counts as none: a service file passes `--username ${VAR}` as "" when VAR is unset.
    user = username or (unquote(parts.username) if parts.username else None)
    secret = password or (unquote(parts.password) if parts.password else None)
    if secret is not None and user is None:
        raise BrokerError("a broker password was given without a user name")
    return BrokerConfig(
        host=parts.hostname,
        port=port or DEFAULT_PORTS[parts.scheme],
        tls=tls,
        username=user,
        password=secret,
        ca_file=files["ca"],
        cert_file=files["cert"],
        key_file=files["key"],
    )


def refused(config: BrokerConfig, reason: object) -> BrokerRefused:
    """The error for a broker that answered CONNECT with a refusal (bad login, not authorised)."""
    who = f"user {config.username!r}" if config.username else "anonymous clients"
    return BrokerRefused(f"broker {config.url} refused the connection ({reason}); check that {who} may log in")


def connect_client(
    config: BrokerConfig,
    timeout: float,
    on_connected: Callable[[paho.Client], None] | None = None,
) -> paho.Client:
    """A client logged in to the broker, its network loop running; the caller disconnects it.

    For a person waiting on the answer (doctor, watch): fails fast with a BrokerError
    subclass. `on_connected` runs on every accepted connection, reconnections included
    (subscribe there). The inspector's publisher instead retries an absent broker.
    """
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.connect_timeout = timeout
    config.apply_to(client)
    answers: list = []
    answered = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure and on_connected is not None:
            on_connected(client)
        answers.append(reason_code)
        answered.set()

    client.on_connect = on_connect
    try:
        client.connect(config.host, config.port, keepalive=30)
    except ssl.SSLError as exc:
        raise BrokerTlsFailed(f"TLS handshake with {config.url} failed: {exc}") from None
    except OSError as exc:
        raise BrokerUnreachable(f"cannot reach broker {config.url}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        if not answered.wait(timeout):
            raise BrokerSilent(f"broker {config.url} accepted the connection but sent no answer within {timeout:g} s")
        if answers[0].is_failure:
            raise refused(config, answers[0])
    except BrokerError:
        client.disconnect()
        client.loop_stop()
        raise
    return client
