"""Prometheus metrics of one server, served on `--metrics-listen` (off by default).

Each `ParsecService` owns a `Metrics` with a `CollectorRegistry` of its own (several servers
run in one test process); without `--metrics-listen` it owns `NO_METRICS`, whose methods do
nothing, and nothing is measured. The text format is prometheus-client's, served by its
Twisted resource (`prometheus_client.twisted.MetricsResource`) at `GET /metrics` of a separate
listener, a child of the service tree (parsec.service).

Cost per command: two `perf_counter()` calls, one dict lookup, one counter increment and one
histogram observation on label children bound once per command and status (no label tuple
or dict built per request). Everything that is a state rather than an event (connections
open, database pool, limits hit) is read only when Prometheus scrapes.

The metrics (README.rst, "Metrics"):

* `parsec_connections_total{kind}`: connections closed, by what they were: `http`,
  `websocket` (no Parsec handshake), `authenticated`, `invited`, `anonymous`,
  `apiv1_anonymous`; `parsec_connections_open`, `parsec_connections_waiting` (accepted, not
  read yet: parsec.web.listener), `parsec_websockets_open{kind}` (`handshake` until it is done);
* `parsec_handshakes_total{result}`: `ok`, the refusal (`bad_identity`, `revoked_device`,
  `rvk_mismatch`, `organization_expired`, ...), `timeout`;
* `parsec_commands_total{command,status}` and `parsec_command_duration_seconds{command}` (a
  histogram; not for the commands that wait for someone else: `events_listen`, the invitation
  waits); `status` is the reply's, `cancelled` for a command abandoned without reply, `crashed`
  for an internal error; commands unknown to the server count as `command="-"`;
* `parsec_events_received_total{event}`: the events this server heard on its bus (with
  PostgreSQL: published by any instance); `parsec_events_delivered_total{event}`: events
  handed to a connection subscribed to them;
* `parsec_db_pool_connections{state}` (`in_use`, `idle`, `opening`), `parsec_db_pool_waiting`,
  `parsec_db_pool_errors_total{error}` (`connect`, `lost`, `timeout`: no free connection in
  time or too many waiting); the same as `parsec_db_block_pool_*` for the POSTGRESQL
  blockstore's own pool (the pools of every POSTGRESQL node of a RAID, summed);
* `parsec_blockstore_operations_total{backend,node,operation,result}` and
  `parsec_blockstore_operation_duration_seconds{backend,node,operation}`: `read`/`create` of
  the configured store (`node=""`) and of each RAID node (`node="0"`, ...); `result` is `ok`,
  `error` or `cancelled` (a RAID request no longer needed);
* `parsec_block_cache_reads_total{result}` (`hit`, `miss`), `parsec_block_cache_evictions_total`,
  `parsec_block_cache_bytes` and `parsec_block_cache_blocks`: the cache of block bytes
  (parsec.backend.block_cache; absent without one);
* `parsec_emails_total{result}` (`sent`, `bad_recipient`, `not_available`),
  `parsec_webhooks_total{result}` (`sent`, `failed`);
* `parsec_limits_hit_total{limit}`: how often each limit of parsec/limits.py was reached in
  this process (`parsec.limits.hit`);
* the process (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
  `process_open_fds`, ...).
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from twisted.internet.defer import CancelledError

from parsec import limits
from parsec.backend.storage import StorageError
from parsec.blockstore.base import BlockStore, MetadataBlockStore

# prometheus_client is imported only when metrics are on (about 50 ms of start-up).
if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.metrics import MetricWrapperBase

    from parsec.backend.block_cache import BlockCache
    from parsec.storage.postgresql.pool import ConnectionPool, PostgreSQLPool
    from parsec.web.access import Access
    from parsec.web.listener import Listener
    from parsec.web.websocket import ParsecWebSocketFactory

__all__ = ["NO_METRICS", "Metrics", "NoMetrics"]

# Seconds; a command's usual answer is a few milliseconds, a block up to a second.
COMMAND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BLOCKSTORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNKNOWN_COMMAND = "-"


class _Children:
    """The children of a labelled metric, bound once per label values and kept."""

    __slots__ = ("_bound", "_metric")

    def __init__(self, metric: MetricWrapperBase) -> None:
        self._metric = metric
        self._bound: dict[Any, Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._bound.get(values)
        if child is None:
            child = self._bound[values] = self._metric.labels(*values)
        return child


class CommandMetrics:
    """The children of one command: its latency histogram and its counter per status."""

    __slots__ = ("_count", "_name", "_seconds", "_statuses")

    def __init__(self, name: str, count: Counter, seconds: Histogram | None) -> None:
        self._name = name
        self._count = count
        self._seconds = seconds.labels(name) if seconds is not None else None
        self._statuses: dict[str, Any] = {}

    def done(self, status: str, seconds: float) -> None:
        child = self._statuses.get(status)
        if child is None:
            child = self._statuses[status] = self._count.labels(self._name, status)
        child.inc()
        if self._seconds is not None:
            self._seconds.observe(seconds)


class _NoCommand:
    def done(self, status: str, seconds: float) -> None:
        pass


class NoMetrics:
    """Metrics off (no `--metrics-listen`): every method does nothing."""

    enabled = False
    _no_command = _NoCommand()

    def command(self, name: str, long_poll: bool = False) -> CommandMetrics | _NoCommand:
        return self._no_command

    def handshake(self, result: str) -> None:
        pass

    def connection_closed(self, access: Access) -> None:
        pass

    def event_received(self, name: str) -> None:
        pass

    def event_delivered(self, name: str) -> None:
        pass

    def email(self, result: str) -> None:
        pass

    def webhook(self, sent: bool) -> None:
        pass

    def measure_blockstore(self, store: BlockStore) -> BlockStore:
        return store

    def watch_pool(self, pool: PostgreSQLPool) -> None:
        pass

    def watch_block_pools(self, pools: Sequence[ConnectionPool[Any]]) -> None:
        pass

    def watch_connections(self, listener: Listener, websockets: ParsecWebSocketFactory) -> None:
        pass

    def watch_block_cache(self, source: _CacheSource) -> None:
        pass


NO_METRICS = NoMetrics()


class Metrics(NoMetrics):
    """The metrics of one server (see the module docstring)."""

    enabled = True

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._connections = _Children(
            Counter("parsec_connections", "Connections closed, by kind", ["kind"], registry=registry)
        )
        self._handshakes = _Children(
            Counter("parsec_handshakes", "Parsec handshakes, by result", ["result"], registry=registry)
        )
        self._commands_count = Counter(
            "parsec_commands", "Commands answered, by command and status", ["command", "status"], registry=registry
        )
        self._commands_seconds = Histogram(
            "parsec_command_duration_seconds",
            "Time from request to reply, by command (not for the commands that wait for someone else)",
            ["command"],
            buckets=COMMAND_BUCKETS,
            registry=registry,
        )
        self._commands: dict[str, CommandMetrics] = {}
        self._events_received = _Children(
            Counter("parsec_events_received", "Events heard on the bus, by event", ["event"], registry=registry)
        )
        self._events_delivered = _Children(
            Counter(
                "parsec_events_delivered", "Events handed to subscribed connections, by event", ["event"],
                registry=registry,
            )  # fmt: skip
        )
        self._blockstore_count = Counter(
            "parsec_blockstore_operations",
            "Blockstore operations, by backend, RAID node, operation and result",
            ["backend", "node", "operation", "result"],
            registry=registry,
        )
        self._blockstore_seconds = Histogram(
            "parsec_blockstore_operation_duration_seconds",
            "Blockstore operation durations, by backend, RAID node and operation",
            ["backend", "node", "operation"],
            buckets=BLOCKSTORE_BUCKETS,
            registry=registry,
        )
        self._emails = _Children(Counter("parsec_emails", "Invitation e-mails, by result", ["result"], registry=registry))
        self._webhooks = _Children(
            Counter("parsec_webhooks", "Organization bootstrap webhooks, by result", ["result"], registry=registry)
        )
        registry.register(_LimitsCollector())
        ProcessCollector(registry=registry)

    # ---- events ----------------------------------------------------------------------------

    def command(self, name: str, long_poll: bool = False) -> CommandMetrics | _NoCommand:
        metrics = self._commands.get(name)
        if metrics is None:
            seconds = None if long_poll else self._commands_seconds
            metrics = self._commands[name] = CommandMetrics(name, self._commands_count, seconds)
        return metrics

    def handshake(self, result: str) -> None:
        self._handshakes(result).inc()

    def connection_closed(self, access: Access) -> None:
        if not access.websocket:
            kind = "http"
        elif access.kind == "-":
            kind = "websocket"
        else:
            kind = access.kind
        self._connections(kind).inc()

    def event_received(self, name: str) -> None:
        self._events_received(name).inc()

    def event_delivered(self, name: str) -> None:
        self._events_delivered(name).inc()

    def email(self, result: str) -> None:
        self._emails(result).inc()

    def webhook(self, sent: bool) -> None:
        self._webhooks("sent" if sent else "failed").inc()

    # ---- blockstore ------------------------------------------------------------------------

    def measure_blockstore(self, store: BlockStore) -> BlockStore:
        """`store` measured, and each node of a RAID too (`node` label: its index)."""
        nodes = getattr(store, "nodes", None)
        if nodes is not None:
            store.nodes = tuple(  # type: ignore[attr-defined]
                MeasuredBlockStore(node, self, _backend_name(node), str(index)) for index, node in enumerate(nodes)
            )
        if isinstance(store, MetadataBlockStore):
            return MeasuredMetadataBlockStore(store, self, _backend_name(store), "")
        return MeasuredBlockStore(store, self, _backend_name(store), "")

    def blockstore_operation(self, backend: str, node: str, operation: str) -> BlockStoreOperationMetrics:
        return BlockStoreOperationMetrics(self._blockstore_count, self._blockstore_seconds, backend, node, operation)

    # ---- states, read at scrape time -------------------------------------------------------

    def watch_pool(self, pool: PostgreSQLPool) -> None:
        self.registry.register(_PoolCollector([pool], "parsec_db_pool", "PostgreSQL pool"))

    def watch_block_pools(self, pools: Sequence[ConnectionPool[Any]]) -> None:
        self.registry.register(_PoolCollector(pools, "parsec_db_block_pool", "POSTGRESQL blockstore pool"))

    def watch_connections(self, listener: Listener, websockets: ParsecWebSocketFactory) -> None:
        self.registry.register(_ConnectionsCollector(listener, websockets))

    def watch_block_cache(self, source: _CacheSource) -> None:
        self.registry.register(_BlockCacheCollector(source))


def _backend_name(store: Any) -> str:
    raid = getattr(store, "raid_type", None)
    if raid is not None:
        return str(raid).lower()
    # By class name, base classes included (importing the S3 module costs botocore's start-up).
    for cls in type(store).__mro__:
        name = _BACKENDS.get(cls.__name__)
        if name is not None:
            return name
    return type(store).__name__


T = TypeVar("T")

_BACKENDS = {
    "MemoryBlockStore": "memory",
    "PostgreSQLBlockStore": "postgresql",
    "S3BlockStore": "s3",
    "SwiftBlockStore": "swift",
}


class BlockStoreOperationMetrics:
    """The children of one operation of one store: its results and its latency."""

    __slots__ = ("cancelled", "error", "ok", "seconds")

    def __init__(self, count: Counter, seconds: Histogram, backend: str, node: str, operation: str) -> None:
        self.ok = count.labels(backend, node, operation, "ok")
        self.error = count.labels(backend, node, operation, "error")
        self.cancelled = count.labels(backend, node, operation, "cancelled")
        self.seconds = seconds.labels(backend, node, operation)

    def succeeded(self, started: float) -> None:
        self.ok.inc()
        self.seconds.observe(time.perf_counter() - started)

    def failed(self, started: float) -> None:
        self.error.inc()
        self.seconds.observe(time.perf_counter() - started)

    async def measure(self, work: Awaitable[T], neutral: tuple[type[BaseException], ...] = ()) -> T:
        """Await `work`, counting its result (`neutral` exceptions count as nothing)."""
        started = time.perf_counter()
        try:
            result = await work
        except CancelledError:
            self.cancelled.inc()
            raise
        except neutral:
            raise
        except BaseException:
            self.failed(started)
            raise
        self.succeeded(started)
        return result


class MeasuredBlockStore:
    """A BlockStore whose reads and creates are counted and timed (result: ok, error, cancelled)."""

    def __init__(self, inner: BlockStore, metrics: Metrics, backend: str, node: str) -> None:
        self.inner = inner
        self._read = metrics.blockstore_operation(backend, node, "read")
        self._create = metrics.blockstore_operation(backend, node, "create")

    def __repr__(self) -> str:
        return repr(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # description, nodes, raid_type...

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes:
        return await self._read.measure(self.inner.read(organization_id, block_id))

    async def create(self, organization_id: str, block_id: uuid.UUID, block: bytes) -> None:
        await self._create.measure(self.inner.create(organization_id, block_id, block))

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def check(self) -> None:
        await self.inner.check()


class MeasuredMetadataBlockStore(MeasuredBlockStore):
    """A measured `MetadataBlockStore`: its combined operations count as its creates and reads
    (a refusal by the rules counts as neither, as when the bytes are elsewhere)."""

    def __init__(self, inner: BlockStore, metrics: Metrics, backend: str, node: str) -> None:
        super().__init__(inner, metrics, backend, node)
        assert isinstance(inner, MetadataBlockStore)
        self._combined = inner

    async def create_recorded(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        block_id: uuid.UUID,
        block: bytes,
        created_on: datetime,
        claim_seconds: float,
    ) -> None:
        await self._create.measure(
            self._combined.create_recorded(
                organization_id, author, realm_id, block_id, block, created_on, claim_seconds
            ),
            neutral=(StorageError,),
        )

    async def read_checked(self, organization_id: str, user_id: str, block_id: uuid.UUID) -> bytes:
        return await self._read.measure(
            self._combined.read_checked(organization_id, user_id, block_id), neutral=(StorageError,)
        )


# ---- collectors (read when Prometheus scrapes) ------------------------------------------------


class _LimitsCollector:
    def collect(self) -> Iterable[CounterMetricFamily]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "parsec_limits_hit", "Times a limit of parsec/limits.py was reached (this process)", labels=["limit"]
        )
        hits = limits.hits
        for limit in limits.TABLE:
            family.add_metric([limit.name], hits.get(limit.name, 0))
        yield family


class _PoolCollector:
    """The state of database pools, summed, as `<prefix>_connections{state}`, `<prefix>_waiting`
    and `<prefix>_errors_total{error}`."""

    def __init__(self, pools: Sequence[ConnectionPool[Any]], prefix: str, what: str) -> None:
        self._pools = tuple(pools)
        self._prefix = prefix
        self._what = what

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats: collections.Counter[str] = collections.Counter()
        errors: collections.Counter[str] = collections.Counter()
        for pool in self._pools:
            stats.update(pool.stats)
            errors.update(pool.errors)
        connections = GaugeMetricFamily(
            f"{self._prefix}_connections", f"{self._what} connections, by state", labels=["state"]
        )
        for state in ("in_use", "idle", "opening"):
            connections.add_metric([state], stats[state])
        yield connections
        yield GaugeMetricFamily(
            f"{self._prefix}_waiting", f"Requests waiting for a {self._what} connection", value=stats["waiting"]
        )
        family = CounterMetricFamily(f"{self._prefix}_errors", f"{self._what} errors, by error", labels=["error"])
        for error in ("connect", "lost", "timeout"):
            family.add_metric([error], errors[error])
        yield family


class _CacheSource(Protocol):
    @property
    def cache(self) -> BlockCache | None: ...


class _BlockCacheCollector:
    """The block cache of parsec.backend.block (none with the memory blockstore: nothing
    yielded)."""

    def __init__(self, source: _CacheSource) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cache = self._source.cache
        if cache is None:
            return
        reads = CounterMetricFamily("parsec_block_cache_reads", "Block reads, by cache result", labels=["result"])
        reads.add_metric(["hit"], cache.hits)
        reads.add_metric(["miss"], cache.misses)
        yield reads
        yield CounterMetricFamily(
            "parsec_block_cache_evictions", "Blocks evicted from the cache to make room", value=cache.evictions
        )
        yield GaugeMetricFamily(
            "parsec_block_cache_bytes", "Bytes counted for the blocks in the cache", value=cache.size
        )
        yield GaugeMetricFamily("parsec_block_cache_blocks", "Blocks in the cache", value=len(cache))


class _ConnectionsCollector:
    def __init__(self, listener: Listener, websockets: ParsecWebSocketFactory) -> None:
        self._listener = listener
        self._websockets = websockets

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(
            "parsec_connections_open", "Client connections open (HTTP and websocket)",
            value=len(self._listener.protocols),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "parsec_connections_waiting", "Connections accepted and not read yet (a burst)",
            value=self._listener.waiting,
        )  # fmt: skip
        kinds: dict[str, int] = {}
        for protocol in list(self._websockets.connections):
            kind = protocol.kind
            kinds[kind] = kinds.get(kind, 0) + 1
        family = GaugeMetricFamily("parsec_websockets_open", "Websockets open, by kind", labels=["kind"])
        for kind in ("handshake", "authenticated", "invited", "anonymous", "apiv1_anonymous"):
            family.add_metric([kind], kinds.pop(kind, 0))
        for kind, count in kinds.items():
            family.add_metric([kind], count)
        yield family


def metrics_resource(metrics: Metrics) -> Any:
    """The root resource of the metrics listener: `GET /metrics` (prometheus-client's)."""
    from prometheus_client.twisted import MetricsResource
    from twisted.web.resource import Resource

    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=metrics.registry))  # type: ignore[no-untyped-call]
    return root


