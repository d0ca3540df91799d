"""Where the MQTT broker is and how to log in: one URL, parsed once, applied to any paho client."""

from __future__ import annotations

import ipaddress
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
# Seconds between paho's tries to reach a broker that is gone: the first after 1 s, doubling
# up to 5 s. After a broker restart the spool's backlog and the line's triggers flow again
# within 5 s, where paho's usual 30 to 120 s would hold a triggered camera's verdicts past
# their deadline; a handful of clients knocking every 5 s costs a broker nothing.
RECONNECT_DELAY_S = (1, 5)


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
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"

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


def redact(url: str) -> str:
    """The URL as messages show it: any password, whatever characters it holds, as ***.

    The password is everything between the first ':' after `scheme://` and the last '@'
    (unencoded '/', '@', '#'... included); a URL without '@' and with a port that is not a
    number (`mqtt://edge:s3cret`, the host forgotten) has that "port" masked too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostport = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        return f"{scheme}{sep}{user}{':***' if colon else ''}@{hostport}"
    host, colon, port = hostport.partition(":")
    if colon and "[" not in host and not port.rstrip("/").isdigit():
        return f"{scheme}{sep}{host}:***"
    return url


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
    from the environment instead of the command line (where `ps` shows it). In the URL
    the user name and password are percent-decoded; the password ends at the last '@'.
    IPv6 hosts go in brackets: `mqtt://[::1]:1883`. Every error is a BrokerError whose
    message never holds the password.
    """
    url = url.strip()
    if not url:
        raise BrokerError("the broker URL is empty; give mqtt://host[:port], or leave --broker out to run without MQTT")
    shown = redact(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in DEFAULT_PORTS:
        raise BrokerError(f"broker URL {shown!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    # Split the login off ourselves: urlsplit ends it at the first '/', '?' or '#', which a password may hold.
    userinfo, at, hostport = rest.rpartition("@")
    try:
        parts = urlsplit(f"{scheme}://{hostport}")
        host = parts.hostname
    except ValueError:  # an unclosed '[', a bracketed host that is no IP address
        raise BrokerError(f"broker URL {shown!r}: not a host[:port]; IPv6 addresses go in brackets: mqtt://[::1]:1883") from None
    try:
        port = parts.port
    except ValueError:
        raise BrokerError(f"broker URL {shown!r}: the port must be a number from 1 to 65535") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerError(f"broker URL {shown!r}: a broker URL has no path; topics are set separately")
    if port == 0:
        raise BrokerError(f"broker URL {shown!r}: the port must be a number from 1 to 65535")
    if not host:
        raise BrokerError(f"broker URL {shown!r}: no host name")
    if not _valid_host(host):
        raise BrokerError(f"broker URL {shown!r}: {host!r} is not a host name or IP address")

    tls = scheme == "mqtts"
    files = {name: Path(f) if f else None for name, f in (("ca", ca_file), ("cert", cert_file), ("key", key_file))}
    if not tls and any(files.values()):
        raise BrokerError(f"certificate files given for {shown!r}, which is not TLS; use mqtts://")
    for name, path in files.items():
        if path is not None and not path.is_file():
            raise BrokerError(f"{name} file {path} not found")
    if (files["cert"] is None) != (files["key"] is None):
        raise BrokerError("a client certificate needs both the certificate file and its key file")

    url_user, colon, url_password = userinfo.partition(":")
    # An empty value counts as none: a service file passes `--username ${VAR}` as "" when VAR is unset.
    user = username or unquote(url_user) or None
    secret = password or unquote(url_password) or None
    if secret is not None and user is None:
        raise BrokerError("a broker password was given without a user name")
    for what, text in (("user name", user), ("password", secret)):
        if text is not None and not _encodable(text):
            raise BrokerError(f"the broker {what} is not valid UTF-8 text")  # never shown: it may be the secret
    return BrokerConfig(
        host=host,
        port=port or DEFAULT_PORTS[scheme],
        tls=tls,
        username=user,
        password=secret,
        ca_file=files["ca"],
        cert_file=files["cert"],
        key_file=files["key"],
    )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _valid_host(host: str) -> bool:
    """An IP address, or a name (international ones too) the resolver can be asked about."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        ascii_name = host.encode("idna").decode("ascii")
    except UnicodeError:  # an empty label, a label over 63 characters, text that is no name
        return False
    return re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?", ascii_name) is not None


def connection_failed(config: BrokerConfig, exc: OSError) -> BrokerTlsFailed | BrokerUnreachable:
    """The error for a connect() that raised: a failed TLS handshake, or nothing reachable there."""
    if isinstance(exc, ssl.SSLError):
        return BrokerTlsFailed(f"TLS handshake with {config.url} failed: {exc}")
    if config.tls and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        # TCP was accepted, then the other side hung up on our TLS hello: a plain MQTT port.
        return BrokerTlsFailed(f"TLS handshake with {config.url} failed: {exc.strerror or exc} (is this port a TLS listener?)")
    if isinstance(exc, ConnectionRefusedError):
        return BrokerUnreachable(f"cannot reach broker {config.url}: connection refused (is the broker running, on this port?)")
    return BrokerUnreachable(f"cannot reach broker {config.url}: {exc.strerror or exc}")


def silent(config: BrokerConfig, timeout: float) -> BrokerSilent:
    return BrokerSilent(
        f"broker {config.url} accepted the connection but sent no answer within {timeout:g} s (no CONNACK); "
        f"is this port an MQTT listener{' (mqtt:// for a plain port)' if config.tls else ' (mqtts:// for a TLS port)'}?"
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
    except OSError as exc:
        raise connection_failed(config, exc) from None
    client.loop_start()
    try:
        if not answered.wait(timeout):
            raise silent(config, timeout)
        if answers[0].is_failure:
            raise refused(config, answers[0])
    except BrokerError:
        client.disconnect()
        client.loop_stop()
        raise
    return client
