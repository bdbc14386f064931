"""Shared fixtures: a running server on loopback (memory storage by default) and a reactor-leak check."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor

from parsec.config import BackendAddr, BackendConfig, ListenConfig, ServerConfig

pytest_plugins: list[str] = []


@attrs.define
class RunningServer:
    service: Any
    port: int
    tls: bool = False

    @property
    def app(self) -> Any:
        return self.service.app

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


async def start_server(backend: BackendConfig | None = None, listen: ListenConfig | None = None) -> RunningServer:
    from parsec.service import ParsecService

    backend = backend or BackendConfig(backend_addr=BackendAddr("127.0.0.1", 6777, use_ssl=False))
    listen = listen or ListenConfig(host="127.0.0.1", port=0)
    service = ParsecService(ServerConfig(backend=backend, listen=listen), reactor=reactor)
    service.privilegedStartService()
    service.startService()
    port = (await service.listening_port()).getHost().port
    await service.ready
    return RunningServer(service, port, tls=bool(listen.ssl_certfile))


@pytest_twisted.async_yield_fixture
async def server_factory():
    started: list[RunningServer] = []

    async def factory(**kwargs: Any) -> RunningServer:
        server = await start_server(**kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        await server.service.stopService()


@pytest_twisted.async_yield_fixture
async def server(server_factory):
    yield await server_factory()


@pytest.fixture(autouse=True)
def logged_failures(request):
    """Fail the test when the server logged an unexpected failure (a traceback)."""
    from twisted.logger import LogLevel, globalLogPublisher

    failures: list[Any] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("log_level") == LogLevel.critical:
            failures.append(event)

    globalLogPublisher.addObserver(observer)
    yield failures
    globalLogPublisher.removeObserver(observer)
    if failures and not request.node.get_closest_marker("allow_logged_failures"):
        from twisted.logger import formatEvent

        texts = []
        for event in failures:
            text = formatEvent(event)
            if event.get("log_failure") is not None:
                text += "\n" + event["log_failure"].getTraceback()
            texts.append(text)
        pytest.fail("Server logged failures:\n" + "\n".join(texts), pytrace=False)
