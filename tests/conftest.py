"""Shared fixtures: a running server on loopback, on every storage, and a reactor-leak check.

Storages. `server_storage` is parametrized: "memory" (`--db MOCKED`) and "postgresql" (a
session-wide throwaway cluster, tests/pg_cluster.py). Every test using `server`,
`server_factory` or `server_storage` (directly or through another fixture) runs once per
storage, with ids like `test_x[memory]` / `test_x[postgresql]`; the PostgreSQL runs carry
the `postgresql` marker (`-m "not postgresql"` runs the memory half only).

* PostgreSQL: a template database migrated once per session; each test gets a fresh copy
  (`CREATE DATABASE ... TEMPLATE`), shared by every server the test starts (several servers =
  several instances on one database), dropped after the test. Blocks go to the POSTGRESQL
  blockstore unless the test says `@pytest.mark.blockstore("MOCKED")`.
* `@pytest.mark.storage("memory")` (or "postgresql") keeps only that run of a test.
* `server_storage.backend_config(base)` turns any BackendConfig into the one of the storage
  under test (for tests that build servers or twistd command lines themselves);
  `server_storage.twistd_args()` gives the matching `twistd parsec` options.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.logger import Logger

from parsec.blockstore.config import MockedBlockStoreConfig, PostgreSQLBlockStoreConfig
from parsec.config import BackendAddr, BackendConfig, ListenConfig, ServerConfig

pytest_plugins: list[str] = []

STORAGES = ("memory", "postgresql")
_TEMPLATE_DATABASE = "parsec_wire_template"
_databases = itertools.count(1)
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


class DatabaseSupply:
    """Fresh copies of the migrated template, made ahead of need by a worker thread.

    The worker thread creates the next tests' databases (and drops the previous ones) while
    the current test runs, so a test never waits for `CREATE DATABASE`.
    """

    AHEAD = 2

    def __init__(self, cluster: Any) -> None:
        import queue
        import threading

        self.cluster = cluster
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        self._jobs: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="pg-database-supply", daemon=True)
        self._thread.start()
        for _ in range(self.AHEAD):
            self._jobs.put(("create", ""))

    def _work(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.cluster.dsn_for("postgres"), connect_timeout=10)
        conn.autocommit = True
        try:
            while (job := self._jobs.get()) is not None:
                action, name = job
                try:
                    with conn.cursor() as cursor:
                        if action == "create":
                            name = f"wire_{os.getpid()}_{next(_databases)}"
                            cursor.execute(
                                f'CREATE DATABASE "{name}" TEMPLATE "{_TEMPLATE_DATABASE}" STRATEGY FILE_COPY'
                            )
                            self._ready.put(name)
                        else:
                            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                except Exception as exc:
                    if action == "create":
                        self._ready.put(exc)
        finally:
            conn.close()

    def take(self) -> str:
        """A fresh database (its name); `give_back` it after the test."""
        self._jobs.put(("create", ""))
        item = self._ready.get(timeout=60)
        if isinstance(item, BaseException):
            raise item
        return item

    def give_back(self, name: str) -> None:
        self._jobs.put(("drop", name))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)


@pytest.fixture(scope="session")
def server_pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The cluster of the wire-level PostgreSQL runs, with a migrated template database."""
    from parsec.storage.postgresql.migrations import migrate_command
    from tests.pg_cluster import start_cluster

    base = fast_directory(tmp_path_factory, "server-postgresql")
    cluster = start_cluster(base)
    try:
        lines: list[str] = []
        dsn = cluster.create_database(_TEMPLATE_DATABASE)
        migrated = pytest_twisted.blockon(defer.ensureDeferred(migrate_command(dsn, False, lines.append)))
        assert migrated, lines
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def server_pg_databases(server_pg_cluster: Any) -> Iterator[DatabaseSupply]:
    supply = DatabaseSupply(server_pg_cluster)
    yield supply
    supply.close()


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
        supply: DatabaseSupply = self.request.getfixturevalue("server_pg_databases")
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
