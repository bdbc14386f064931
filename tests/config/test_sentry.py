"""Sentry reporting: the observer's mapping (with a fake SDK), then end to end: a process
configured like `parsec backend run --sentry-dsn http://public@127.0.0.1:PORT/1` logs a failure
and a local twisted.web server playing Sentry receives the event envelope."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zlib
from contextlib import contextmanager
from typing import Any

import pytest_twisted
from twisted.internet import reactor, threads
from twisted.logger import Logger
from twisted.web import resource, server

from parsec.config import LogConfig
from parsec.logging import SentryLogObserver, _sentry_options

from .conftest import SUBPROCESS_TIMEOUT, clean_environ


class FakeScope:
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls

    def set_tag(self, name: str, value: Any) -> None:
        self.calls.append(("tag", (name, value)))

    def set_extra(self, name: str, value: Any) -> None:
        self.calls.append(("extra", (name, value)))

    def set_level(self, level: str) -> None:
        self.calls.append(("level", level))


class FakeSdk:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @contextmanager
    def new_scope(self) -> Any:
        yield FakeScope(self.calls)

    def add_breadcrumb(self, **kwargs: Any) -> None:
        self.calls.append(("breadcrumb", kwargs))

    def capture_message(self, message: str, level: str) -> None:
        self.calls.append(("message", (message, level)))

    def capture_exception(self, exc_info: Any) -> None:
        self.calls.append(("exception", exc_info))


def test_observer_mapping() -> None:
    sdk = FakeSdk()
    log = Logger(namespace="parsec.test", observer=SentryLogObserver(sdk))
    log.debug("ignored")
    log.info("crumb {n}", n=1, password="pw-1")
    log.error("bad {what}", what="thing", token="tok-2")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("boom")
    kinds = [kind for kind, _ in sdk.calls]
    assert kinds.count("breadcrumb") == 1 and kinds.count("message") == 1 and kinds.count("exception") == 1
    crumb = next(value for kind, value in sdk.calls if kind == "breadcrumb")
    assert crumb["message"] == "crumb 1" and crumb["category"] == "parsec.test" and crumb["level"] == "info"
    assert crumb["data"]["password"] == "<redacted>"
    assert ("message", ("bad thing", "error")) in sdk.calls
    assert ("extra", ("token", "<redacted>")) in sdk.calls
    exc_type, exc_value, _ = next(value for kind, value in sdk.calls if kind == "exception")
    assert exc_type is ZeroDivisionError and isinstance(exc_value, ZeroDivisionError)
    assert ("extra", ("log_message", "boom")) in sdk.calls
    assert ("level", "fatal") in sdk.calls  # Logger.failure logs at critical
    assert "pw-1" not in repr(sdk.calls) and "tok-2" not in repr(sdk.calls)


def test_broken_sdk_does_not_break_logging() -> None:
    class Broken:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("sdk down")

    Logger(namespace="parsec.test", observer=SentryLogObserver(Broken())).error("still fine")


class FakeSentry(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []

    def render_POST(self, request: server.Request) -> bytes:
        body = request.content.read()
        encoding = (request.getHeader("content-encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding == "br":
            import brotli  # only if sentry-sdk found brotli installed

            body = brotli.decompress(body)
        headers = {
            key.decode().lower(): value[0].decode()
            for key, value in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((request.path, headers, body))
        request.setHeader(b"content-type", b"application/json")
        return b"{}"


_CLIENT_SCRIPT = """
import sys
from twisted.logger import Logger
from parsec.config import LogConfig
from parsec.logging import setup_logging

# As `parsec backend run` does: the line writer (here CRITICAL only) plus the Sentry observer.
setup_logging(LogConfig(level="CRITICAL", sentry_dsn=sys.argv[1], sentry_environment="ci"))
log = Logger(namespace="parsec.sentrytest")
log.info("breadcrumb before the failure")


def fail() -> None:
    signing_key = "local-secret-42"  # a local variable of a failing frame: never sent
    {}[signing_key[:0] + "missing"]


try:
    fail()
except KeyError:
    log.failure("sentry test failure", administration_token="hunter2")

import sentry_sdk
# The transport sends from a background thread: wait until it has delivered everything.
sentry_sdk.flush(timeout=TIMEOUT)
sentry_sdk.get_client().close(timeout=TIMEOUT)
""".replace("TIMEOUT", str(SUBPROCESS_TIMEOUT // 2))


def _run_client(dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CLIENT_SCRIPT, dsn],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def _envelope_items(body: bytes) -> list[tuple[dict[str, Any], Any]]:
    """Sentry envelope: a header line, then (item header line, payload) pairs."""
    lines = body.split(b"\n")
    items = []
    index = 1
    while index + 1 < len(lines) and lines[index]:
        header = json.loads(lines[index])
        payload = lines[index + 1]
        items.append((header, json.loads(payload) if payload.startswith(b"{") else payload))
        index += 2
    return items


@pytest_twisted.ensureDeferred
async def test_failure_reaches_sentry() -> None:
    fake = FakeSentry()
    port = reactor.listenTCP(0, server.Site(fake), interface="127.0.0.1")
    try:
        dsn = f"http://public@127.0.0.1:{port.getHost().port}/1"
        # Blocking wait in a thread, so that this reactor keeps serving the fake Sentry.
        completed = await threads.deferToThread(_run_client, dsn)
    finally:
        await port.stopListening()
    assert completed.returncode == 0, completed.stderr
    assert "sentry test failure" in completed.stderr  # also written by the line observer

    events = []
    for path, headers, body in fake.requests:
        assert path == b"/api/1/envelope/"
        assert "sentry_key=public" in headers.get("x-sentry-auth", "")
        events.extend(payload for header, payload in _envelope_items(body) if header.get("type") == "event")
        assert b"hunter2" not in body and b"local-secret-42" not in body
    (event,) = events
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "KeyError"
    frames = exception["stacktrace"]["frames"]
    assert [frame["function"] for frame in frames][-1] == "fail"
    assert not any("vars" in frame for frame in frames)  # local variables are not collected
    assert event["environment"] == "ci"
    assert event["level"] == "fatal"
    assert event["extra"]["log_message"] == "sentry test failure"
    assert event["extra"]["administration_token"] == "<redacted>"
    assert event["tags"]["logger"] == "parsec.sentrytest"
    assert event["release"].startswith("parsec-twisted@")
    crumbs = [crumb.get("message") for crumb in event.get("breadcrumbs", {}).get("values", [])]
    assert "breadcrumb before the failure" in crumbs


def test_init_options_for_each_sdk_generation() -> None:
    # The installed SDK runs end to end above; both spellings are checked here whatever it is.
    config = LogConfig(sentry_dsn="http://public@127.0.0.1:1/1", sentry_environment="ci")
    for version in ("2.0.0", "2.76.0"):
        options = _sentry_options(config, version)
        assert options["include_local_variables"] is False and options["send_default_pii"] is False
        assert "data_collection" not in options
    for version in ("3.0.0", "4.1.0"):
        options = _sentry_options(config, version)
        assert options["data_collection"] == {"user_info": False, "stack_frame_variables": False}
        assert "include_local_variables" not in options and "send_default_pii" not in options
    assert options["auto_enabling_integrations"] is False and options["environment"] == "ci"
