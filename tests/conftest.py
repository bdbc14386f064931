"""Shared fixtures: a running server on loopback, on every storage; the PostgreSQL cluster of
the run; the reactor-clean check of every test.

PostgreSQL: ONE throwaway cluster for the whole run (tests/pg_cluster.py, started on first
use, in memory when possible), holding the migrated template database (tests/support.py):
* `fresh_pg_dsn`: a migrated database of the test's own (a copy of the template, made ahead of
  need); `empty_pg_dsn`: an empty one; `pg_dsn`: the migrated database shared by the
  storage-level tests (unique identifiers); `restartable_pg_cluster`: for a test that stops,
  kills or restarts the cluster (running again afterwards).

Reactor: `reactor_clean` (autouse) fails a test that leaves a timer pending or a connection or
listening port registered.

Storages. `server_storage` is parametrized: "memory" (`--db MOCKED`) and "postgresql" (the
cluster above). Every test using `server`,
`server_factory` or `server_storage` (directly or through another fixture) runs once per
storage, with ids like `test_x[memory]` / `test_x[postgresql]`; the PostgreSQL runs carry
the `postgresql` marker (`-m "not postgresql"` runs the memory half only).

* PostgreSQL: each test gets a fresh copy of the template, shared by every server the test
  starts (several servers = several instances on one database), dropped after the test.
  Blocks go to the POSTGRESQL
  blockstore unless the test says `@pytest.mark.blockstore("MOCKED")`.
* `@pytest.mark.storage("memory")` (or "postgresql") keeps only that run of a test.
* `server_storage.backend_config(base)` turns any BackendConfig into the one of the storage
  under test (for tests that build servers or twistd command lines themselves);
  `server_storage.twistd_args()` gives the matching `twistd parsec` options.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import Logger, globalLogPublisher

from parsec.blockstore.config import MockedBlockStoreConfig, PostgreSQLBlockStoreConfig
from parsec.config import BackendAddr, BackendConfig, ListenConfig, ServerConfig
from tests.pg_cluster import PgCluster, start_cluster
from tests.support import (
    SHARED_DATABASE,
    TEMPLATE_DATABASE,
    DatabaseSupply,
    free_port,
    migrate_template,
    new_name,
)

pytest_plugins: list[str] = []

STORAGES = ("memory", "postgresql")
_log = Logger()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "storage(name): run the test on this server storage only")
    config.addinivalue_line("markers", "blockstore(kind): blockstore of the PostgreSQL runs (default POSTGRESQL)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        storage = callspec.params.get("server_storage") if callspec is not None else None
        if storage is not None:
            marker = item.get_closest_marker("storage")
            if marker is not None and storage not in marker.args:
                dropped.append(item)
                continue
            if storage == "postgresql":
                item.add_marker(pytest.mark.postgresql)
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# ---- storages ----------------------------------------------------------------------------------


def fast_directory(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A new directory for a throwaway cluster, in memory (/dev/shm) when possible: on a disk,
    each `CREATE DATABASE` costs ~0.3 s, in memory ~0.02 s. World-readable, so that the
    server's account can reach it when the tests run as root."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(prefix=f"parsec-{name}-", dir=shm))
        path.chmod(0o755)
        return path
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """THE PostgreSQL cluster of the run (started on first use), with TEMPLATE_DATABASE (our
    schema, migrated once) and SHARED_DATABASE (a copy, for the storage-level tests)."""
    base = fast_directory(tmp_path_factory, "postgresql")
    cluster = start_cluster(base)
    try:
        migrate_template(cluster)
        cluster.create_database(SHARED_DATABASE, template=TEMPLATE_DATABASE)
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def restartable_pg_cluster(pg_cluster: PgCluster) -> Iterator[PgCluster]:
    """The cluster, for a test that stops, kills or restarts it: running before and after."""
    pg_cluster.start()
    yield pg_cluster
    pg_cluster.start()


@pytest.fixture(scope="session")
def pg_databases(pg_cluster: PgCluster) -> Iterator[DatabaseSupply]:
    supply = DatabaseSupply(pg_cluster)
    yield supply
    supply.close()


@pytest.fixture(scope="session")
def pg_dsn(pg_cluster: PgCluster) -> str:
    """SHARED_DATABASE: migrated, shared by the tests of the run (use unique identifiers)."""
    return pg_cluster.dsn_for(SHARED_DATABASE)


@pytest.fixture
def fresh_pg_dsn(pg_cluster: PgCluster, pg_databases: DatabaseSupply) -> Iterator[str]:
    """A database of the test's own, migrated (a copy of the template)."""
    pg_cluster.start()
    name = pg_databases.take()
    yield pg_cluster.dsn_for(name)
    pg_databases.give_back(name)


@pytest.fixture
def empty_pg_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """An empty database of the test's own (no schema: for the migration tests)."""
    pg_cluster.start()
    name = new_name("empty")
    dsn = pg_cluster.create_database(name)
    yield dsn
    pg_cluster.start()
    pg_cluster.drop_database(name)


@attrs.define(eq=False)
class StorageUnderTest:
    name: str  # "memory" | "postgresql"
    request: pytest.FixtureRequest
    blockstore: str = "POSTGRESQL"  # PostgreSQL runs only
    _database: str | None = None

    @property
    def is_postgresql(self) -> bool:
        return self.name == "postgresql"

    @property
    def supply(self) -> DatabaseSupply:
        supply: DatabaseSupply = self.request.getfixturevalue("pg_databases")
        return supply

    @property
    def cluster(self) -> Any:
        return self.supply.cluster

    @property
    def dsn(self) -> str:
        """The test's own database (taken on first use)."""
        assert self.is_postgresql
        if self._database is None:
            self._database = self.supply.take()
        return str(self.cluster.dsn_for(self._database))

    def backend_config(self, base: BackendConfig | None = None) -> BackendConfig:
        base = base or BackendConfig(backend_addr=BackendAddr("127.0.0.1", 6777, use_ssl=False))
        if not self.is_postgresql:
            return base
        blockstore = base.blockstore
        if isinstance(blockstore, MockedBlockStoreConfig) and self.blockstore == "POSTGRESQL":
            blockstore = PostgreSQLBlockStoreConfig()
        return attrs.evolve(
            base,
            db_url=self.dsn,
            db_min_connections=1,
            db_max_connections=5,
            db_max_connection_attempts=1,
            db_pause_before_retry=0.1,
            blockstore=blockstore,
        )

    def twistd_args(self) -> list[str]:
        """`--db`/`--blockstore` options of `twistd parsec` for this storage."""
        if not self.is_postgresql:
            return ["--db", "MOCKED", "--blockstore", "MOCKED"]
        return ["--db", self.dsn, "--blockstore", self.blockstore, "--db-min-connections", "1"]

    def cleanup(self) -> None:
        if self._database is not None:
            self.supply.give_back(self._database)
            self._database = None


@pytest.fixture(params=STORAGES)
def server_storage(request: pytest.FixtureRequest) -> Iterator[StorageUnderTest]:
    marker = request.node.get_closest_marker("blockstore")
    storage = StorageUnderTest(request.param, request, blockstore=marker.args[0] if marker else "POSTGRESQL")
    if storage.is_postgresql:
        storage.dsn  # noqa: B018 -- create the database now, outside the reactor's greenlet
    yield storage
    storage.cleanup()


# ---- servers -----------------------------------------------------------------------------------


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


async def start_server(
    backend: BackendConfig | None = None, listen: ListenConfig | None = None, **service_kwargs: Any
) -> RunningServer:
    from parsec.service import ParsecService

    backend = backend or BackendConfig(backend_addr=BackendAddr("127.0.0.1", 6777, use_ssl=False))
    listen = listen or ListenConfig(host="127.0.0.1", port=0)
    service = ParsecService(
        ServerConfig(backend=backend, listen=listen),
        reactor=reactor,
        # In-process: report, never stop the test run's reactor (start_server raises on a
        # start-up failure; a fatal error is logged as critical, which fails the test).
        on_fatal=lambda message: _log.critical("Fatal server error: {message}", message=message),
        **service_kwargs,
    )
    service.privilegedStartService()
    await service.startService()
    port = service.listeners[0].port.getHost().port
    return RunningServer(service, port, tls=listen.tls)


@pytest_twisted.async_yield_fixture
async def server_factory(server_storage: StorageUnderTest):
    started: list[RunningServer] = []

    async def factory(backend: BackendConfig | None = None, **kwargs: Any) -> RunningServer:
        server = await start_server(backend=server_storage.backend_config(backend), **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        if server.service.running:
            await server.service.stopService()


@pytest_twisted.async_yield_fixture
async def server(server_factory):
    yield await server_factory()


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port nobody listens on."""
    return free_port()


# ---- reactor hygiene -----------------------------------------------------------------------------


def _leftover_readers_writers(selectables: list[Any]) -> list[Any]:
    # The reactor adds its own wakers when it starts: not the test's.
    return [s for s in selectables if not type(s).__name__.endswith("Waker")]


def _describe(func: Any) -> str:
    """A timer's function; for Autobahn's batched timers (txaio), the functions they hold."""
    timer = getattr(func, "__self__", None)
    buckets = getattr(timer, "_buckets", None)
    if isinstance(buckets, dict):
        held = sorted(
            {
                # the lambda txaio wraps around (func, args, kwargs)
                repr(next((c.cell_contents for c in call._call.__closure__ if callable(c.cell_contents)), call))
                for _, calls in buckets.values()
                for call in calls
            }
        )
        return f"txaio batched timer holding {held}"
    return repr(func)


async def _settle() -> None:
    for _ in range(3):  # callLater(0) work scheduled by the teardown runs first
        await task.deferLater(reactor, 0, lambda: None)


@pytest.fixture(autouse=True)
def reactor_clean() -> Iterator[None]:
    """Every test leaves the reactor as it found it: no timer (DelayedCall) still pending, no
    connection or listening port still registered. pytest-twisted does not check this; a
    leftover is a leak (a pool not closed, a connection not closed, a timeout not cancelled).
    Autouse: set up first, torn down last (after the servers of the test have stopped)."""
    calls_before = set(reactor.getDelayedCalls())
    readers_before = set(reactor.getReaders())
    writers_before = set(reactor.getWriters())
    yield
    pytest_twisted.blockon(defer.ensureDeferred(_settle()))
    calls = [c for c in reactor.getDelayedCalls() if c.active() and c not in calls_before]
    readers = _leftover_readers_writers([r for r in reactor.getReaders() if r not in readers_before])
    writers = _leftover_readers_writers([w for w in reactor.getWriters() if w not in writers_before])
    leaked = [f"{_describe(call.func)} in {call.getTime() - reactor.seconds():.2f} s" for call in calls]
    for call in calls:
        call.cancel()  # do not let one leak fail the next tests too
    assert not leaked, f"timers left behind: {leaked}"
    assert not readers, f"connections or ports left open: {readers}"
    assert not writers, f"connections left writing: {writers}"


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
