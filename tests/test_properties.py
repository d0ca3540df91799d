"""Properties over generated strings: broker URLs, topic names and passwords never give a
traceback, and no message ever shows a password.

Hypothesis generates the strings, derandomized (the same examples on every run, so CI is
reproducible); a failure prints the smallest string that breaks the property. Turning the
password masking back to "up to the first '@'" fails here within seconds.
"""

from __future__ import annotations

import urllib.parse

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.sinks.broker import BrokerError, parse_broker_url, redact
from edge.sinks.topics import TopicError, check_names, topic_problem

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# Anything a command line or an environment file can hold: every Unicode class, surrogates
# (undecodable bytes in argv) and the characters that mean something in a URL.
URL_SPECIALS = ":/@%#?[]&=+;,'\" \\\x00\n"
any_char = st.characters(exclude_categories=()) | st.sampled_from(URL_SPECIALS)
any_text = st.text(any_char, max_size=40)

# The password is woven through with a letter no message of ours contains, so a password
# shown whole, half or in any piece of two characters or more is found.
MARK = "Ж"
passwords = st.lists(any_char, min_size=1, max_size=20).map(
    lambda chars: MARK + MARK.join(chars) + MARK
)


def leaks(message: str) -> bool:
    encoded = urllib.parse.quote(MARK)
    return MARK in message or encoded.lower() in message.lower()


@PROPERTY
@given(any_text)
def test_any_string_as_a_broker_url_parses_or_is_a_broker_error(url):
    try:
        config = parse_broker_url(url)
    except BrokerError as error:
        assert str(error)
        return
    assert config.host and 1 <= config.port <= 65535 and config.url.startswith(("mqtt://", "mqtts://"))


@PROPERTY
@given(password=passwords, before=any_text, after=any_text)
def test_a_password_in_the_url_is_never_in_a_message(password, before, after):
    encoded = urllib.parse.quote(password.encode("utf-8", "surrogatepass"), safe="")
    urls = [
        f"mqtt://edge:{password}@broker.local:1883",
        f"mqtt://edge:{password}@{after}",
        f"{before}://edge:{password}@{after}",
        f"edge:{password}@broker",
        f"mqtt://edge:{encoded}@{after}",
    ]
    if "@" not in password:  # the host forgotten; with an '@' in the password, its end reads as a host
        urls.append(f"mqtt://edge:{password}")
    for url in urls:
        assert not leaks(redact(url))
        try:
            config = parse_broker_url(url)
        except BrokerError as error:
            assert not leaks(str(error)), (url, str(error))
            continue
        assert not leaks(config.url) and not leaks(repr(config))


@PROPERTY
@given(password=passwords, url=any_text)
def test_a_password_from_an_option_or_the_environment_is_never_in_a_message(password, url):
    try:
        config = parse_broker_url(url, username="edge", password=password)
    except BrokerError as error:
        assert not leaks(str(error))
        return
    assert config.password == password and not leaks(config.url) and not leaks(repr(config))


@PROPERTY
@given(prefix=any_text, camera=any_text)
def test_any_names_are_accepted_as_valid_topics_or_refused_with_a_topic_error(prefix, camera):
    try:
        check_names(prefix, camera)
    except TopicError as error:
        assert str(error) and "\n" not in str(error)  # one line: names are shown quoted
        return
    for topic in (f"{prefix}/{camera}/available", f"{prefix}/{camera}/defect/{'0' * 36}/overlay"):
        assert topic_problem(topic) is None
        assert not any(c in topic for c in "+#\x00")
