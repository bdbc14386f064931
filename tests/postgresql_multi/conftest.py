"""Real `twistd parsec` processes on a throwaway PostgreSQL cluster (loopback only).

* `multi_cluster`: the run's cluster (tests/conftest.py), which tests here may stop and
  restart; it is running before and after each test.
* `database`: a fresh migrated database per test (its DSN); `empty_database`: an unmigrated one.
* `servers`: `await servers.start(dsn, *extra_args)` runs
  `twistd -n --pidfile= parsec --db <dsn> --blockstore POSTGRESQL --administration-token T
  --backend-addr parsec://127.0.0.1:P?no_ssl=true --email-host MOCKED --port P` and waits
  until it serves; every process is killed after the test. Their output goes to a file
  (`ServerProcess.output()`), never to a pipe nobody reads.
* `pg_pool`: `await pg_pool(dsn)` a started PostgreSQLPool for direct checks, closed after.

Waits are bounded polls (no timing assertion): a deadline only turns a hang into a failure.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor, task

from parsec.storage.postgresql.pool import PostgreSQLPool
from tests import httpclient
from tests.pg_cluster import PgCluster
from tests.support import free_port

BIN = Path(sys.executable).parent
ADMIN_TOKEN = "s3cr3t"  # the one tests/httpclient.py sends
TEMPLATE = "multi_template"
DEADLINE = 30.0

_count = iter(range(1, 1_000_000))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/postgresql_multi/" in item.nodeid:
            item.add_marker(pytest.mark.postgresql)


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = DEADLINE
) -> None:
    """Poll `predicate` (function or coroutine function) until true; fail after `timeout`."""
    deadline = reactor.seconds() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if reactor.seconds() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await sleep(0.05)


# ---- cluster and databases (the run's: tests/conftest.py) -------------------------------------


@pytest.fixture
def multi_cluster(restartable_pg_cluster: PgCluster) -> PgCluster:
    """The run's cluster, which these tests may stop and restart."""
    return restartable_pg_cluster


@pytest.fixture
def database(fresh_pg_dsn: str) -> str:
    """A migrated database of the test's own, shared by the servers the test starts."""
    return fresh_pg_dsn


@pytest.fixture
def empty_database(empty_pg_dsn: str) -> str:
    return empty_pg_dsn


@pytest_twisted.async_yield_fixture
async def pg_pool() -> Any:
    pools: list[PostgreSQLPool] = []

    async def open_pool(dsn: str) -> PostgreSQLPool:
        pool = PostgreSQLPool(dsn, min_connections=1, max_connections=2, max_connection_attempts=1)
        await pool.start()
        pools.append(pool)
        return pool

    yield open_pool
    for pool in pools:
        await pool.close()


# ---- server processes --------------------------------------------------------------------------


@attrs.define(eq=False)
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    args: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing is cleaned up."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    async def wait_exit(self, timeout: float = DEADLINE) -> int:
        await wait_until(lambda: not self.alive(), f"server on port {self.port} exits", timeout)
        return int(self.proc.returncode)

    async def serving(self) -> bool:
        """True once the storage is started (503 before, or while the event feed is down)."""
        try:
            rep = await httpclient.request(self.port, "GET", "/")
        except Exception:
            return False
        return rep.status == 200

    async def wait_serving(self, timeout: float = DEADLINE) -> None:
        async def check() -> bool:
            assert self.alive(), f"server exited ({self.proc.returncode}):\n{self.output()}"
            return await self.serving()

        await wait_until(check, f"server on port {self.port} serving", timeout)


class Servers:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[ServerProcess] = []

    def spawn(self, dsn: str, *extra: str, port: int | None = None) -> ServerProcess:
        """Start a server process (not waiting for it)."""
        port = port or free_port()
        args = [
            str(BIN / "twistd"), "-n", "--pidfile=", "parsec",
            "--db", dsn,
            "--blockstore", "POSTGRESQL",
            "--administration-token", ADMIN_TOKEN,
            "--backend-addr", f"parsec://127.0.0.1:{port}?no_ssl=true",
            "--email-host", "MOCKED",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--db-min-connections", "2",
            *extra,
        ]
        log_path = self.tmp_path / f"server-{port}-{len(self.started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, cwd=self.tmp_path, stdout=log, stderr=subprocess.STDOUT)
        server = ServerProcess(proc, port, log_path, args)
        self.started.append(server)
        return server

    async def start(self, dsn: str, *extra: str, port: int | None = None) -> ServerProcess:
        server = self.spawn(dsn, *extra, port=port)
        await server.wait_serving()
        return server

    def stop_all(self) -> None:
        for server in self.started:
            if server.alive():
                server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(timeout=30)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    procs = Servers(tmp_path)
    yield procs
    procs.stop_all()


async def connect(org: Any, server: Any, device_id: str) -> Any:
    """A connection of `device_id` (of the tests.orgs.Org `org`) to `server`."""
    previous, org.server = org.server, server
    try:
        return await org.connect(device_id)
    finally:
        org.server = previous
