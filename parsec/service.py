"""Assembly: configuration -> one MultiService (storage, event bus, blockstore, web site).

Start-up: the listening port is bound synchronously in privilegedStartService
(a busy port fails start-up at once), then storage and blockstore start
asynchronously; until they are ready, HTTP requests get 503 and websockets
are refused. A start-up failure is logged as one line and stops the process
with exit status 1.

Shutdown (SIGTERM/SIGINT): stop listening, close every websocket with 1001,
let in-flight HTTP requests finish (bounded), then stop the blockstore and the
storage. twistd waits for the Deferred returned by stopService.

PostgreSQL event feed (docs/protocol/server-config.md §4): when the storage's LISTEN connection
is lost, events may have been missed, so every websocket is closed (1001, as at
shutdown) and requests get 503 until the storage listens again; if it gives up
reconnecting, the process exits with status 1 after one `Error:` line.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service, strports
from twisted.internet import defer
from twisted.internet.endpoints import quoteStringArgument
from twisted.logger import Logger, globalLogPublisher

from parsec.backend.app import BackendApp
from parsec.backend.bus import MemoryEventBus
from parsec.blockstore.factory import build_blockstore
from parsec.config import ServerConfig
from parsec.options import startup_line
from parsec.storage.memory import build_memory_storage
from parsec.storage.postgresql.factory import build_postgresql_storage
from parsec.web.admin import AdminResource
from parsec.web.anonymous import AnonymousResource
from parsec.web.listener import EmfileWatch, check_file_limit
from parsec.web.site import ParsecSite, RootResource
from parsec.web.websocket import ParsecWebSocketFactory
from parsec.webhooks import send_bootstrap_webhook

_log = Logger()

SHUTDOWN_WEBSOCKET_TIMEOUT = 5.0


def endpoint_description(config: ServerConfig) -> str:
    listen = config.listen
    interface = quoteStringArgument(listen.host)
    if listen.ssl_keyfile or listen.ssl_certfile:
        key = listen.ssl_keyfile or listen.ssl_certfile
        cert = listen.ssl_certfile or listen.ssl_keyfile
        assert key is not None and cert is not None
        return (
            f"ssl:{listen.port}:interface={interface}"
            f":privateKey={quoteStringArgument(key)}:certKey={quoteStringArgument(cert)}"
        )
    return f"tcp:{listen.port}:interface={interface}"


class StartupError(Exception):
    pass


def _exit_after_shutdown(reactor: Any, code: int) -> None:
    def _exit() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    reactor.addSystemEventTrigger("after", "shutdown", _exit)
    if reactor.running:
        reactor.stop()


class ParsecService(service.MultiService):
    """The whole server. `ready` fires once storage and blockstore are started."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        reactor: Any = None,
        on_startup_failure: Callable[[str], None] | None = None,
        on_fatal_error: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            # The global reactor only when none is given: importing it installs the default one.
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._on_startup_failure = on_startup_failure or self._default_startup_failure
        self._on_fatal_error = on_fatal_error or self._default_fatal_error
        self._event_feed_down = False
        self.storage, self.bus, self._storage_resources = self._build_storage()
        if hasattr(self.storage, "on_listen_lost"):  # PostgreSQL: the event feed can be lost
            self.storage.on_listen_lost = self._event_feed_lost
            self.storage.on_listen_restored = self._event_feed_restored
            self.storage.on_listen_gave_up = self._event_feed_gave_up
        self.blockstore = self._build_blockstore()
        self._email_trust_root = self._load_email_trust_root()
        self.shutdown_grace = SHUTDOWN_WEBSOCKET_TIMEOUT
        self.app = BackendApp(
            config.backend,
            self.storage,
            self.bus,
            self.blockstore,
            send_email=self._send_email,
            webhook=self._webhook if config.backend.organization_bootstrap_webhook else None,
            reactor=reactor,
        )
        self.app.ready = False
        limits = config.backend.limits
        self.ws_factory = ParsecWebSocketFactory(self.app, limits, reactor)
        root = RootResource(self.app, self.ws_factory, AdminResource(self.app), AnonymousResource(self.app))
        self.site = ParsecSite(
            root,
            debug=config.backend.debug,
            limits=limits,
            trusted_proxies=config.backend.trusted_proxies,
            reactor=reactor,
        )
        self._emfile_watch = EmfileWatch(reactor.seconds)
        self.port_service = strports.service(endpoint_description(config), self.site, reactor=reactor)
        self.port_service.setServiceParent(self)

    # ---- building ------------------------------------------------------------------------

    def _build_storage(self) -> tuple[Any, Any, Any]:
        backend = self.config.backend
        if backend.db_type == "MOCKED":
            return build_memory_storage(), MemoryEventBus(), None
        return build_postgresql_storage(backend, reactor=self.reactor)

    def _build_blockstore(self) -> Any:
        pg_pool = getattr(self._storage_resources, "pool", None)
        return build_blockstore(self.config.backend.blockstore, reactor=self.reactor, pg_pool=pg_pool)

    def _load_email_trust_root(self) -> Any:
        ca_file = self.config.backend.email.ca_file
        if ca_file is None:
            return None  # the platform trust store
        # Not at the top: see _send_email.
        from parsec.mail.delivery import load_trust_root

        return load_trust_root(ca_file)

    async def _send_email(self, *args: Any, **kwargs: Any) -> str:
        # Not at the top: parsec.mail.delivery imports twisted.mail.smtp, which installs the
        # global reactor and resolves the local FQDN (blocking) when imported.
        from parsec.mail.delivery import send_invitation_email

        kwargs.setdefault("trust_root", self._email_trust_root)
        return await send_invitation_email(*args, **kwargs)

    async def _webhook(self, payload: dict[str, Any]) -> None:
        url = self.config.backend.organization_bootstrap_webhook
        assert url is not None
        await send_bootstrap_webhook(url, payload, reactor=self.reactor)

    async def listening_port(self) -> Any:
        """The IListeningPort once bound (useful with port 0)."""
        return await self.port_service._waitingForPort  # type: ignore[attr-defined]

    # ---- life cycle ----------------------------------------------------------------------

    def startService(self) -> None:
        # Connections are bounded by --max-connections; file descriptors must follow.
        check_file_limit(self.config.backend.limits)
        globalLogPublisher.addObserver(self._emfile_watch)
        super().startService()
        d = defer.ensureDeferred(self._start())
        d.addErrback(self._startup_failed)

    async def _start(self) -> None:
        await self.storage.start()
        await self.blockstore.start()
        self.app.ready = not self._event_feed_down
        _log.info("Parsec server ready")
        self.ready.callback(None)

    def _startup_failed(self, failure: Any) -> None:
        message = failure.getErrorMessage() or failure.type.__name__
        if self.config.backend.debug:
            _log.failure("Start-up failed", failure=failure)
        self.ready.errback(failure)
        self.ready.addErrback(lambda _: None)
        self._on_startup_failure(message)

    def _default_startup_failure(self, message: str) -> None:
        _log.critical("Start-up failed: {message}", message=message)
        print(f"Error: {message}", file=sys.stderr, flush=True)
        _exit_after_shutdown(self.reactor, 1)

    def _default_fatal_error(self, message: str) -> None:
        _log.critical("Stopping: {message}", message=message)
        print(f"Error: {message}", file=sys.stderr, flush=True)
        _exit_after_shutdown(self.reactor, 1)

    # ---- event feed (PostgreSQL) ---------------------------------------------------------

    def _event_feed_lost(self, error: Exception) -> None:
        if not self.running:
            return
        self._event_feed_down = True
        self.app.ready = False
        self.app.unavailable_reason = "database unavailable"
        _log.warn(
            "Event feed lost ({error}): closing {count} websocket connection(s), refusing requests "
            "until it is restored",
            error=str(error),
            count=len(self.ws_factory.connections),
        )
        defer.ensureDeferred(self.ws_factory.close_all(grace=self.shutdown_grace))

    def _event_feed_restored(self) -> None:
        if not self.running:
            return
        self._event_feed_down = False
        self.app.unavailable_reason = None
        self.app.ready = self.ready.called  # not before the start-up is over
        _log.info("Event feed restored: serving again")

    def _event_feed_gave_up(self, error: Exception) -> None:
        if not self.running:
            return
        self._on_fatal_error(f"Database connection lost for good ({error}): giving up")

    def stopService(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.running = False
        globalLogPublisher.removeObserver(self._emfile_watch)
        # 1. Stop accepting new connections.
        await defer.maybeDeferred(self.port_service.stopService)
        self.site.listener.stop()
        # 2. Close every websocket with 1001 (going away), bounded.
        await self.ws_factory.close_all(grace=self.shutdown_grace)
        # 3. Stop the stores, in reverse order of start.
        for stop in (self.blockstore.stop, self.storage.stop):
            try:
                await stop()
            except Exception:
                _log.failure("Error while stopping")


def install_clean_exit_signal_handlers(reactor: Any) -> None:
    """SIGTERM/SIGINT: stop gracefully and exit with status 0.

    Twisted's own handlers make twistd re-kill itself with the signal once stopped
    (exit status 143); a daemon that shut down cleanly should report success.
    """

    def handler(signum: int, frame: Any) -> None:
        _log.info("Received signal {signum}, shutting down", signum=signum)
        reactor.callFromThread(reactor.stop)

    def install() -> None:
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    reactor.callWhenRunning(install)


def _freeze_startup_objects(_: object) -> None:
    """Everything built until the server is ready (modules, tables, the service tree) lives as
    long as the process: keep it out of the collector's full passes, which otherwise scan it
    at every collection and stall the reactor for tens of milliseconds under load."""
    gc.collect()
    gc.freeze()


def make_service(config: ServerConfig, *, reactor: Any = None) -> ParsecService:
    if reactor is None:
        # The global reactor only when none is given: importing it installs the default one.
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    svc = ParsecService(config, reactor=reactor)
    svc.ready.addCallback(_freeze_startup_objects)
    install_clean_exit_signal_handlers(reactor)
    print(startup_line(config), flush=True)
    return svc
