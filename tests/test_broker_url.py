"""Broker URLs: what a user types on the command line, and the clear errors for what is wrong."""

from __future__ import annotations

import urllib.parse

import pytest

from edge.sinks.broker import BrokerError, parse_broker_url


@pytest.mark.parametrize(
    "url, host, port, tls",
    [
        ("mqtt://broker.local", "broker.local", 1883, False),
        ("mqtt://10.0.0.5:1884", "10.0.0.5", 1884, False),
        ("mqtts://broker.local", "broker.local", 8883, True),
        ("mqtts://broker.local:9883/", "broker.local", 9883, True),
    ],
)
def test_parses_host_port_and_tls(url, host, port, tls):
    config = parse_broker_url(url)
    assert (config.host, config.port, config.tls, config.username) == (host, port, tls, None)


def test_credentials_in_url_are_decoded_and_never_shown():
    config = parse_broker_url("mqtt://line%201:p%40ss@broker:1883")
    assert (config.username, config.password) == ("line 1", "p@ss")
    assert "p@ss" not in config.url and "p@ss" not in repr(config)


def test_explicit_credentials_win_over_the_url():
    config = parse_broker_url("mqtt://old:old@broker", username="edge", password="s3cret")
    assert (config.username, config.password) == ("edge", "s3cret")


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://broker", "expected mqtt://"),
        ("broker:1883", "expected mqtt://"),
        ("mqtt://broker:99999", "port must be a number"),
        ("mqtt://broker:abc", "port must be a number"),
        ("mqtt://broker:0", "port must be a number"),
        ("mqtt://", "no host name"),
        ("mqtt://:1883", "no host name"),
        ("mqtt://broker/riad", "no path"),
    ],
)
def test_bad_urls_raise_clear_errors(url, message):
    with pytest.raises(BrokerError, match=message):
        parse_broker_url(url)


def test_error_messages_hide_the_password():
    with pytest.raises(BrokerError) as error:
        parse_broker_url("mqtt://edge:topsecret@broker:70000")
    assert "topsecret" not in str(error.value)


def test_certificate_files_need_tls_and_must_exist(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    with pytest.raises(BrokerError, match="not TLS"):
        parse_broker_url("mqtt://broker", ca_file=ca)
    with pytest.raises(BrokerError, match="not found"):
        parse_broker_url("mqtts://broker", ca_file=tmp_path / "missing.pem")
    with pytest.raises(BrokerError, match="both"):
        parse_broker_url("mqtts://broker", cert_file=ca)
    assert parse_broker_url("mqtts://broker", ca_file=ca).ca_file == ca


def test_empty_credentials_count_as_none():
    # systemd passes `--username ${RIAD_MQTT_USERNAME}` as "" when the variable is empty.
    config = parse_broker_url("mqtt://broker", username="", password="")
    assert (config.username, config.password) == (None, None)
    config = parse_broker_url("mqtt://edge:s3cret@broker", username="", password="")
    assert (config.username, config.password) == ("edge", "s3cret")


def test_ipv6_hosts_in_brackets():
    config = parse_broker_url("mqtt://[::1]:1884")
    assert (config.host, config.port, config.url) == ("::1", 1884, "mqtt://[::1]:1884")
    assert parse_broker_url("mqtts://edge@[fe80::1]").url == "mqtts://edge@[fe80::1]:8883"


@pytest.mark.parametrize(
    "url, message",
    [
        ("mqtt://[::1", "IPv6 addresses go in brackets"),
        ("mqtt://[abc]", "IPv6 addresses go in brackets"),
        ("mqtt://[::1]:99999", "port must be a number"),
        ("", "the broker URL is empty"),
        ("   ", "the broker URL is empty"),
        ("mqtt://bro ker", "is not a host name"),
        ("mqtt://a..b", "is not a host name"),
        ("mqtt://a\x00b", "is not a host name"),
        ("mqtt://\udcff", "is not a host name"),  # undecodable bytes on the command line
    ],
)
def test_malformed_hosts_are_clear_errors(url, message):
    with pytest.raises(BrokerError, match=message):
        parse_broker_url(url)


# Every character that means something in a URL, in the password the line's IT handed out.
AWKWARD_PASSWORDS = ["pa/ss", "p@ss", "p@ss@word", "a:b:c", "x#y", "q?r", "[v6]", "100%", "%2F", "sp ace", "p/@:%#?[]&=+;,'\"\\x"]


@pytest.mark.parametrize("password", AWKWARD_PASSWORDS)
def test_any_password_in_the_url_is_taken_as_typed_and_never_shown(password):
    config = parse_broker_url(f"mqtt://edge:{password}@broker.local:1884")
    assert (config.host, config.port, config.username) == ("broker.local", 1884, "edge")
    # Percent-decoding applies to the URL's password (as in every URL); '%' alone stays '%'.
    assert config.password == urllib.parse.unquote(password)
    assert password not in config.url and password not in repr(config)


BROKEN_URLS = ["mqtt://edge:{}@broker:70000", "mqtt://edge:{}@broker/riad", "http://edge:{}@broker", "edge:{}@broker",
               "mqtt://edge:{}@[::1", "mqtt://edge:{}"]


@pytest.mark.parametrize(
    "password, broken",
    # The host forgotten and an '@' in the password: the password's end reads as a host, the URL is valid.
    [(p, b) for p in AWKWARD_PASSWORDS for b in BROKEN_URLS if not (b == "mqtt://edge:{}" and "@" in p)],
)
def test_error_messages_never_show_the_password(password, broken):
    with pytest.raises(BrokerError) as error:
        parse_broker_url(broken.format(password))
    assert password not in str(error.value)
