"""Fixtures of the mail tests.

* `smtp_server_factory(**options)`: starts a real SMTP server (twisted.mail,
  see `smtp_server.SMTPTestServer`) on 127.0.0.1; stopped after the test,
  which fails if a client connection was left open.
* `pki`: a throwaway CA and a localhost / 127.0.0.1 server certificate.
* `closed_port`: a loopback port nobody listens on.
* `log_capture`: twisted.logger events emitted during the test.
* autouse `no_reactor_leftovers`: fails a test that leaves a delayed call, a
  socket or a listening port behind.

Nothing here imports twisted.mail at module level (it would install the
default reactor before pytest-twisted can install the requested one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

if TYPE_CHECKING:
    from .smtp_server import SMTPTestServer, ThrowawayPKI


@pytest.fixture(scope="session")
def pki() -> ThrowawayPKI:
    from .smtp_server import make_pki

    return make_pki()


@pytest_twisted.async_yield_fixture
async def smtp_server_factory(
    reactor: Any, pki: ThrowawayPKI
) -> AsyncIterator[Callable[..., defer.Deferred[SMTPTestServer]]]:
    from .smtp_server import SMTPTestServer

    servers: list[SMTPTestServer] = []

    def start(**kwargs: Any) -> defer.Deferred[SMTPTestServer]:
        server = SMTPTestServer(reactor, pki, **kwargs)
        servers.append(server)
        return defer.Deferred.fromCoroutine(server.start())

    yield start

    problems: list[str] = []
    for server in servers:
        problems += await server.stop()
    assert not problems, problems


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor




# ---------------------------------------------------------------------------
# Log capture (the reactor-clean check is tests/conftest.py's)
# ---------------------------------------------------------------------------


@attrs.define
class LogCapture:
    events: list[LogEvent] = attrs.field(factory=list)

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def from_namespace(self, namespace: str) -> list[LogEvent]:
        return [e for e in self.events if e.get("log_namespace") == namespace]

    def text(self) -> str:
        lines = []
        for event in self.events:
            lines.append(formatEvent(event))
            failure = event.get("log_failure")
            if failure is not None:
                lines.append(failure.getTraceback())
        return "\n".join(lines)


@pytest.fixture
def log_capture() -> Iterator[LogCapture]:
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        yield capture
    finally:
        globalLogPublisher.removeObserver(capture)
