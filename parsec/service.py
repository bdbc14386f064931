"""Assembly: configuration -> the service tree, started in order and stopped in reverse.

    ParsecService                      (AsyncMultiService: children awaited one after the other)
      ListenerService (--metrics-listen) Prometheus metrics (parsec.metrics), first up, last down
      StorageService                   memory, or PostgreSQL: pool + schema check
      EventFeedService                 PostgreSQL only: the LISTEN connection (events of every instance)
      BlockStoreService                start-up checks (bucket/container exists, RAID nodes)
      SendersService                   invitation e-mails and bootstrap webhook (sends in flight)
      WebDrainService                  at stop: websockets closed with 1001, HTTP requests finished
      ListenerService (one per --listen, or --host/--port)

Start-up: each listener binds in `privilegedStartService` (before twistd drops privileges; a
busy port fails start-up at once), then `startService` starts the children in order, each
awaited. Until every child has started, HTTP requests get 503 and websockets are refused (the
`Readiness` state, given to the site at construction); then systemd is told READY=1
(`Type=notify`). A child that fails to start stops the ones already started; the front end
turns the failure into one log line and exit status 1.

Stop (SIGTERM/SIGINT, see parsec.daemon; twistd and `task.react` wait for the Deferred):
readiness says "shutting down" and systemd STOPPING=1; then the children stop in reverse order:
the listeners stop accepting, the drain closes every websocket with 1001 (a request in
progress gets `SHUTDOWN_GRACE` seconds to finish and be answered) and waits for in-flight HTTP
requests (the same bound), the senders let their sends finish (bounded), then blockstore, event
feed and storage close.

PostgreSQL event feed (docs/protocol/server-config.md §4): the service is the feed watcher the
storage's bus is built with. When the LISTEN connection is lost, events may have been missed:
every websocket is closed (1001, as at shutdown) and requests get 503 until the bus listens
again; if it gives up reconnecting, `on_fatal` stops the process with status 1.

Reload (SIGHUP): `reload()` re-reads the TLS key and certificate chain of every TLS listener
(parsec.tls).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.server import Site

from parsec.allocator import tune_allocator
from parsec.backend.app import BackendApp
from parsec.backend.block import BlockComponent
from parsec.backend.bus import EventBus, MemoryEventBus
from parsec.backend.storage import Storage
from parsec.blockstore.base import BlockStore
from parsec.blockstore.factory import blockstore_pools, build_blockstore
from parsec.config import BackendConfig, ConfigError, ServerConfig
from parsec.daemon import SystemdNotifier, stop_reactor
from parsec.listen import ListenSpec, listen_specs, metrics_spec, split_endpoint
from parsec.metrics import NO_METRICS, Metrics, NoMetrics, metrics_resource
from parsec.readiness import Probe, Readiness, ReadyCheck
from parsec.storage.memory import build_memory_storage
from parsec.storage.postgresql.connection import DatabaseUnavailable
from parsec.storage.postgresql.events import PostgreSQLEventBus
from parsec.storage.postgresql.factory import build_postgresql_storage
from parsec.storage.postgresql.pool import PostgreSQLPool
from parsec.tls import ReloadableTLS
from parsec.web.admin import AdminResource
from parsec.web.anonymous import AnonymousResource
from parsec.web.drain import RequestTracker
from parsec.web.listener import EmfileWatch, check_file_limit
from parsec.web.site import ParsecSite, RootResource
from parsec.web.websocket import ParsecWebSocketFactory
from parsec.webhooks import send_bootstrap_webhook

__all__ = ["SHUTDOWN_GRACE", "AsyncMultiService", "ListenerService", "ParsecService", "make_service"]

_log = Logger(namespace="parsec.service")

# Seconds a request in progress gets to finish at shutdown (websocket command, HTTP request,
# e-mail or webhook being sent) before it is cancelled or its connection closed.
SHUTDOWN_GRACE = 5.0


def _default_reactor() -> Any:
    # The global reactor only when none is given: importing it installs the default one.
    from twisted.internet import reactor

    return reactor


# ---- the tree ----------------------------------------------------------------------------------


class AsyncMultiService(service.MultiService):
    """A MultiService whose children start one after the other, each awaited, in the order they
    were added, and stop in reverse order, each awaited (Buildbot's AsyncMultiService idea).

    `startService()` returns a Deferred that fails when a child fails to start; the children
    already started are then stopped. `stopService()` during the start cancels it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._started: list[service.IService] = []
        self._starting: defer.Deferred[None] | None = None

    def startService(self) -> defer.Deferred[None]:
        service.Service.startService(self)
        starting = defer.Deferred.fromCoroutine(self._start_children())
        if not starting.called:
            self._starting = starting
            starting.addBoth(self._start_over)
        return starting

    def _start_over(self, result: Any) -> Any:
        self._starting = None
        return result

    async def _start_children(self) -> None:
        try:
            for child in list(self):
                await defer.maybeDeferred(child.startService)
                self._started.append(child)
        except BaseException:
            await self._stop_children()
            self.running = 0
            raise

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._starting is not None:
            starting = self._starting
            starting.cancel()  # stops the children it started (see _start_children)
            try:
                await starting
            except Exception:
                pass
        await self._stop_children()

    async def _stop_children(self) -> None:
        while self._started:
            child = self._started.pop()
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                _log.failure("Error while stopping {service}", service=type(child).__name__)


class _AsyncService(service.Service):
    """A leaf whose start and stop are coroutines (`start`, `stop`)."""

    def startService(self) -> defer.Deferred[None]:
        super().startService()
        return defer.Deferred.fromCoroutine(self.start())

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self.stop())

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class StorageService(_AsyncService):
    def __init__(self, storage: Storage) -> None:
        super().__init__()
        self.storage = storage

    async def start(self) -> None:
        await self.storage.start()

    async def stop(self) -> None:
        await self.storage.stop()


class EventFeedService(_AsyncService):
    """The PostgreSQL LISTEN connection: events published by every instance."""

    def __init__(self, bus: PostgreSQLEventBus) -> None:
        super().__init__()
        self.bus = bus

    async def start(self) -> None:
        await self.bus.start()

    async def stop(self) -> None:
        await self.bus.stop()


class BlockStoreService(_AsyncService):
    def __init__(self, blockstore: BlockStore) -> None:
        super().__init__()
        self.blockstore = blockstore

    async def start(self) -> None:
        await self.blockstore.start()

    async def stop(self) -> None:
        await self.blockstore.stop()


class SendersService(_AsyncService):
    """Invitation e-mails and the organization bootstrap webhook.

    Start: load the SMTP trust root (`--email-ca-file`). Stop: sends still in flight get
    `grace` seconds, then are cancelled.
    """

    def __init__(self, config: BackendConfig, reactor: Any, grace: float, metrics: NoMetrics = NO_METRICS) -> None:
        super().__init__()
        self._config = config
        self._reactor = reactor
        self._grace = grace
        self._metrics = metrics
        self._trust_root: Any = None
        self._in_flight: set[defer.Deferred[Any]] = set()

    async def start(self) -> None:
        if self._config.email.ca_file is not None:
            # Not at the top: parsec.mail.delivery imports twisted.mail.smtp, which installs the
            # global reactor and resolves the local FQDN (blocking) when imported.
            from parsec.mail.delivery import load_trust_root

            self._trust_root = load_trust_root(self._config.email.ca_file)

    async def _tracked(self, deferred: defer.Deferred[Any]) -> Any:
        self._in_flight.add(deferred)
        try:
            return await deferred
        finally:
            self._in_flight.discard(deferred)

    async def send_email(self, **kwargs: Any) -> str:
        from parsec.mail.delivery import send_invitation_email  # see start()

        kwargs.setdefault("trust_root", self._trust_root)
        status: str = await self._tracked(defer.Deferred.fromCoroutine(send_invitation_email(**kwargs)))
        self._metrics.email("sent" if status == "SUCCESS" else status.lower())
        return status

    async def webhook(self, payload: dict[str, Any]) -> None:
        url = self._config.organization_bootstrap_webhook
        assert url is not None
        sent = await self._tracked(
            defer.Deferred.fromCoroutine(send_bootstrap_webhook(url, payload, reactor=self._reactor))
        )
        self._metrics.webhook(bool(sent))

    async def stop(self) -> None:
        if not self._in_flight:
            return
        pending = list(self._in_flight)
        done: defer.Deferred[Any] = defer.DeferredList(pending, consumeErrors=True)
        done.addTimeout(self._grace, self._reactor)
        try:
            await done
        except defer.TimeoutError:
            _log.warn("{count} e-mail/webhook send(s) cancelled at shutdown", count=len(self._in_flight))
            for deferred in list(self._in_flight):
                deferred.cancel()


class WebDrainService(_AsyncService):
    """At stop (after the listeners): close the websockets with 1001 and finish HTTP requests."""

    def __init__(
        self,
        ws_factory: ParsecWebSocketFactory,
        site: ParsecSite,
        requests: RequestTracker,
        reactor: Any,
        grace: float,
    ) -> None:
        super().__init__()
        self._ws_factory = ws_factory
        self._site = site
        self._requests = requests
        self._reactor = reactor
        self._grace = grace

    async def stop(self) -> None:
        self._site.listener.stop()  # its per-turn accept timer (parsec.web.listener)
        await defer.DeferredList(
            [
                defer.Deferred.fromCoroutine(self._ws_factory.close_all(grace=self._grace)),
                defer.Deferred.fromCoroutine(self._requests.drain(self._grace, self._reactor)),
            ],
            consumeErrors=True,
        )

    def close_websockets(self) -> None:
        """Close every websocket now (the event feed was lost), in the background."""
        closing = defer.Deferred.fromCoroutine(self._ws_factory.close_all(grace=self._grace))
        closing.addErrback(lambda failure: _log.failure("Closing the websockets failed", failure))


class ListenerService(service.Service):
    """One listening endpoint; public endpoint API only (`IStreamServerEndpoint.listen`).

    Binds in privilegedStartService, synchronously for the endpoints that can (TCP, UNIX,
    adopted systemd sockets): a bind error raises there, and start-up fails at once.
    """

    def __init__(self, spec: ListenSpec, site: IProtocolFactory, reactor: Any) -> None:
        super().__init__()
        self.spec = spec
        self.tls = ReloadableTLS(spec.tls) if spec.tls is not None else None
        self.factory: IProtocolFactory = (
            site if self.tls is None else TLSMemoryBIOFactory(self.tls, False, site)
        )
        self.endpoint = _server_endpoint(reactor, spec)
        self.port: IListeningPort | None = None
        self._binding: defer.Deferred[IListeningPort] | None = None

    def _listen(self) -> None:
        outcome: list[IListeningPort | Failure] = []
        binding = self.endpoint.listen(self.factory)
        binding.addBoth(outcome.append)
        if not outcome:
            # Not bound yet (an endpoint that binds asynchronously): startService waits.
            self._binding = defer.Deferred()
            binding.addCallback(lambda _: self._bound(outcome[0]))
            return
        self._bound(outcome[0], synchronous=True)

    def _bound(self, outcome: IListeningPort | Failure, synchronous: bool = False) -> None:
        waiting, self._binding = self._binding, None
        if isinstance(outcome, Failure):
            if synchronous:
                outcome.raiseException()
            assert waiting is not None
            waiting.errback(outcome)
            return
        self.port = outcome
        _log.info(
            "Listening on {endpoint} ({transport})", endpoint=self.spec.label, transport="TLS" if self.tls else "plain"
        )
        if waiting is not None:
            waiting.callback(outcome)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> defer.Deferred[Any] | None:
        super().startService()
        if self.port is None and self._binding is None:
            self._listen()  # privilegedStartService was not called (in-process use)
        return self._binding

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        return self.close()

    def close(self) -> defer.Deferred[None] | None:
        """Stop listening (idempotent): also for a port bound by a start-up that failed later."""
        port, self.port = self.port, None
        if port is None:
            return None
        stopped: defer.Deferred[None] = defer.maybeDeferred(port.stopListening)  # type: ignore[call-overload]
        return stopped


def _server_endpoint(reactor: Any, spec: ListenSpec) -> IStreamServerEndpoint:
    kind, named = split_endpoint(spec.endpoint)
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, spec.endpoint)
    except (IndexError, KeyError) as exc:
        if kind != "systemd":
            raise ConfigError(f"Invalid value for '--listen' ({spec.label}): {exc}") from None
        # Twisted's systemd parser looks the socket up in what systemd passed (read from the
        # environment once, when twisted.internet.endpoints is imported): none, or no such.
        which = f"a socket named {named['name']!r}" if "name" in named else f"socket #{named['index']}"
        raise ConfigError(
            f"Invalid value for '--listen' ({spec.label}): systemd passed no {which} "
            "(LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES; systemd-socket-activate sets the names "
            "only with --fdname)"
        ) from None
    except Exception as exc:  # the endpoint parsers raise ValueError, TypeError, ...
        raise ConfigError(f"Invalid value for '--listen' ({spec.label}): {exc}") from None
    return endpoint


# ---- the server --------------------------------------------------------------------------------


def _default_on_fatal(message: str) -> None:
    _log.critical("Stopping: {message}", message=message)
    stop_reactor(_default_reactor())


class ParsecService(AsyncMultiService):
    """The whole server (see the module docstring for the tree).

    `on_fatal(message)` is called when the server cannot go on (the event feed lost for good):
    the front end logs, reports and exits with status 1. `notifier` tells systemd about
    readiness, reload and stop; `on_serving()` is called once the tree has started.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        reactor: Any = None,
        on_fatal: Callable[[str], None] = _default_on_fatal,
        notifier: SystemdNotifier | None = None,
        shutdown_grace: float = SHUTDOWN_GRACE,
        on_serving: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor if reactor is not None else _default_reactor()
        self._on_fatal = on_fatal
        self._on_serving = on_serving
        self.notifier = notifier if notifier is not None else SystemdNotifier(None)
        self.readiness = Readiness()
        backend = config.backend
        # Measured only when served (--metrics-listen): otherwise nothing is counted.
        self.metrics: NoMetrics = Metrics() if config.listen.metrics is not None else NO_METRICS

        storage, bus, pool = self._build_storage(backend)
        blockstore = build_blockstore(
            backend.blockstore,
            reactor=self.reactor,
            pg_pool=pool,
            pg_connections=backend.limits.db_block_connections,
        )
        self.blockstore: BlockStore = self.metrics.measure_blockstore(blockstore)
        if pool is not None:
            self.metrics.watch_pool(pool)
            block_pools = blockstore_pools(blockstore)
            if block_pools:
                self.metrics.watch_block_pools(block_pools)
        self.senders = SendersService(backend, self.reactor, shutdown_grace, self.metrics)
        self.app = BackendApp(
            backend,
            storage,
            bus,
            self.blockstore,
            send_email=self.senders.send_email,
            webhook=self.senders.webhook if backend.organization_bootstrap_webhook else None,
            reactor=self.reactor,
            metrics=self.metrics,
        )
        limits = backend.limits
        self.ws_factory = ParsecWebSocketFactory(self.app, limits, self.reactor)
        self.http_requests = RequestTracker()
        probes = [Probe("blockstore", self.blockstore.check)]
        if pool is not None:
            probes.insert(0, Probe("PostgreSQL", _pool_probe(pool)))
        self.ready_check = ReadyCheck(self.readiness, probes, self.reactor)
        root = RootResource(
            self.app,
            self.ws_factory,
            AdminResource(self.app),
            AnonymousResource(self.app),
            readiness=self.readiness,
            ready_check=self.ready_check,
            requests=self.http_requests,
        )
        self.site = ParsecSite(
            root,
            debug=backend.debug,
            limits=limits,
            trusted_proxies=backend.trusted_proxies,
            reactor=self.reactor,
        )
        self.site.listener.metrics = self.metrics
        self.metrics.watch_connections(self.site.listener, self.ws_factory)
        self.metrics.watch_block_cache(self.app.component(BlockComponent))
        self._emfile_watch = EmfileWatch(self.reactor.seconds)
        self.drain = WebDrainService(self.ws_factory, self.site, self.http_requests, self.reactor, shutdown_grace)

        self.metrics_listener: ListenerService | None = None
        spec = metrics_spec(config.listen)
        if isinstance(self.metrics, Metrics) and spec is not None:
            site = Site(metrics_resource(self.metrics), reactor=self.reactor)
            site.noisy = False
            self.metrics_listener = ListenerService(spec, site, self.reactor)
            self.metrics_listener.setServiceParent(self)
        StorageService(storage).setServiceParent(self)
        if isinstance(bus, PostgreSQLEventBus):
            EventFeedService(bus).setServiceParent(self)
        BlockStoreService(self.blockstore).setServiceParent(self)
        self.senders.setServiceParent(self)
        self.drain.setServiceParent(self)
        self.listeners = [
            ListenerService(spec, self.site, self.reactor) for spec in listen_specs(config.listen)
        ]
        for listener in self.listeners:
            listener.setServiceParent(self)

    def _build_storage(self, backend: BackendConfig) -> tuple[Storage, EventBus, PostgreSQLPool | None]:
        if backend.db_type == "MOCKED":
            memory_bus = MemoryEventBus()  # the storage's writes publish on it
            return build_memory_storage(memory_bus), memory_bus, None
        storage, bus, resources = build_postgresql_storage(backend, reactor=self.reactor, feed=self)
        return storage, bus, resources.pool

    @property
    def storage(self) -> Storage:
        return self.app.storage

    def tls_listeners(self) -> Iterator[ReloadableTLS]:
        for listener in self.listeners:
            if listener.tls is not None:
                yield listener.tls

    # ---- life cycle ----------------------------------------------------------------------

    def startService(self) -> defer.Deferred[None]:
        # Connections are bounded by --max-connections; file descriptors must follow.
        check_file_limit(self.config.backend.limits)
        globalLogPublisher.addObserver(self._emfile_watch)
        starting = super().startService()
        starting.addCallback(lambda _: self._serving())
        return starting

    def _serving(self) -> None:
        if not self.running:
            return
        self.readiness.started()
        where = ", ".join(listener.spec.label for listener in self.listeners)
        _log.info("Parsec server ready, serving on {where}", where=where)
        self.notifier.ready(f"Serving on {where}")
        if self._on_serving is not None:
            self._on_serving()

    async def _stop_children(self) -> None:
        await super()._stop_children()
        # The listeners bind in privilegedStartService: a start-up that failed before them
        # (or was stopped) never started them, but their ports are open.
        for listener in [*self.listeners, self.metrics_listener]:
            if listener is not None:
                await defer.maybeDeferred(listener.close)

    def stopService(self) -> defer.Deferred[None]:
        globalLogPublisher.removeObserver(self._emfile_watch)
        self.readiness.stopping()
        self.notifier.stopping()
        _log.info("Stopping: closing the listeners and draining the connections")
        return super().stopService()

    def reload(self) -> None:
        """SIGHUP: re-read the TLS key and chain of every TLS listener (the log files are
        reopened by the signal handler itself)."""
        self.notifier.reloading()
        for tls in self.tls_listeners():
            tls.reload()
        self.notifier.ready("Serving (reloaded)")

    # ---- event feed (PostgreSQL): parsec.storage.postgresql.factory.EventFeedWatcher -----------

    def event_feed_lost(self, error: DatabaseUnavailable) -> None:
        self.readiness.event_feed_lost(str(error))
        if not self.running:
            return
        _log.warn(
            "Event feed lost ({error}): closing {count} websocket connection(s), refusing requests "
            "until it is restored",
            error=str(error),
            count=len(self.ws_factory.connections),
        )
        self.notifier.status("Event feed lost: refusing requests until the database is back")
        self.drain.close_websockets()

    def event_feed_restored(self) -> None:
        self.readiness.event_feed_restored()
        if not self.running:
            return
        _log.info("Event feed restored: serving again")
        self.notifier.status("Serving (event feed restored)")

    def event_feed_gave_up(self, error: DatabaseUnavailable) -> None:
        if not self.running:
            return
        self._on_fatal(f"Database connection lost for good ({error}): giving up")


def _pool_probe(pool: PostgreSQLPool) -> Callable[[], Any]:
    async def select_one() -> None:
        await pool.execute("SELECT 1")

    return select_one


def _freeze_startup_objects() -> None:
    """Everything built until the server is ready (modules, tables, the service tree) lives as
    long as the process: keep it out of the collector's full passes, which otherwise scan it
    at every collection and stall the reactor for tens of milliseconds under load."""
    gc.collect()
    gc.freeze()


def make_service(
    config: ServerConfig, *, reactor: Any = None, on_fatal: Callable[[str], None] = _default_on_fatal
) -> ParsecService:
    """The server of `config` for a front end (which handles signals, the start-up line and
    exit statuses); systemd is notified when `$NOTIFY_SOCKET` is set. Only in the front ends'
    process: the objects of the start-up are frozen out of the garbage collector once serving,
    and the C allocator keeps block-sized buffers (parsec.allocator)."""
    tune_allocator()
    return ParsecService(
        config,
        reactor=reactor,
        on_fatal=on_fatal,
        notifier=SystemdNotifier.from_environment(),
        on_serving=_freeze_startup_objects,
    )
