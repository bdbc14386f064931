"""An asynchronous PostgreSQL connection pool of `Session`s (psycopg2 in async mode, see
`parsec.storage.postgresql.connection`). It:

* opens `min_connections` at start (with the start-up retry policy of
  `--maximum-database-connection-attempts` / `--pause-before-retry-database-connection`),
  grows up to `max_connections` on demand, and hands connections to waiters in FIFO order;
* drops broken connections (and, after any connection loss, every idle connection opened
  before it: a lost connection usually means the database restarted) and reopens on demand,
  so the pool recovers by itself once the database is back;
* turns every connection-level failure into `DatabaseUnavailable` (one line, no secrets), so
  a request fails cleanly; SQL errors (e.g. `psycopg2.errors.UniqueViolation`) pass through;
* bounds a stalled database (README.rst, Limits): every session runs with PostgreSQL's
  `statement_timeout` and `lock_timeout`, a request waits at most `acquire_timeout` for a
  free connection and at most `max_waiters` requests wait at all. Each bound reached raises
  `DatabaseTimeout` (a `DatabaseUnavailable`): the request is answered with an error instead
  of hanging, and once the database answers again the pool serves again by itself.

Round trips. `fetch`/`fetchrow`/`fetchval`/`execute` on the pool run one statement in
autocommit mode: exactly one round trip. A `Transaction` sends its `BEGIN` together with its
first statement and its `COMMIT` together with the queued NOTIFYs, so a transaction of N
statements costs N + 1 round trips. Prefer one statement (CTEs, `INSERT ... RETURNING`,
`events.notify_sql`) over a transaction whenever the data allows. The session and transaction
classes, and `PreparedStatement`, are in `parsec.storage.postgresql.connection`.

Rule: never wait on the pool while holding a pool connection. With every connection held by
a request that waits for a second one, nothing is ever released and the server deadlocks
(the reference does this in `block_create`). `acquire` raises `PoolReentryError` when the
calling task already holds a connection of any pool; do the second piece of work after
releasing the first, or inside the same transaction. Work spawned fire-and-forget while
holding a connection must be started with `run_detached` (it inherits the mark otherwise).

Caveat: libpq resolves the host name of the DSN synchronously when a connection starts (a
blocking getaddrinfo on the reactor thread). Give an IP address, a unix socket directory, or
a name the local resolver answers at once (/etc/hosts).
"""

from __future__ import annotations

import contextvars
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from parsec import limits
from parsec.storage.postgresql.connection import (
    DatabaseTimeout,
    DatabaseUnavailable,
    Isolation,
    Params,
    PgConnection,
    PooledConnection,
    PreparedStatement,
    Query,
    Session,
    Transaction,
    error_summary,
    shield,
)

__all__ = [
    "ConnectionPool",
    "PoolClosedError",
    "PoolReentryError",
    "PostgreSQLPool",
    "connect_with_retry",
    "describe_dsn",
    "run_detached",
]

_log = Logger(namespace="parsec.storage.postgresql")

psycopg2.extras.register_uuid()  # uuid.UUID <-> uuid columns, process-wide


def _cast_bytes(value: str | bytes | None, cursor: Any) -> bytes | None:
    return None if value is None else bytes(psycopg2.BINARY(value, cursor))


# bytea as `bytes` (psycopg2 returns memoryview), registered on our connections only.
_BYTES = psycopg2.extensions.new_type(psycopg2.BINARY.values, "PARSEC_BYTES", _cast_bytes)
_BYTES_ARRAY = psycopg2.extensions.new_array_type(psycopg2.extensions.BINARYARRAY.values, "PARSEC_BYTES[]", _BYTES)

T = TypeVar("T")
C = TypeVar("C", bound=PooledConnection)

# Errors after which re-running the whole transaction may succeed.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    psycopg2.errors.SerializationFailure,
    psycopg2.errors.DeadlockDetected,
)


class PoolClosedError(DatabaseUnavailable):
    pass


class PoolReentryError(RuntimeError):
    """The task already holds a pool connection and asked for another one (deadlock hazard)."""


def describe_dsn(dsn: str) -> str:
    """`host:port/dbname` of a DSN, for log lines (never the user or the password)."""
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        return "<invalid DSN>"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def _milliseconds(seconds: float) -> int:
    """A PostgreSQL timeout setting (ms, 0 = none) for `seconds` (0 = none)."""
    if seconds <= 0:
        return 0
    return max(1, round(seconds * 1000))


def _connect_kwargs(
    dsn: str, application_name: str, statement_timeout: float = 0.0, lock_timeout: float = 0.0
) -> dict[str, str]:
    try:
        params: dict[str, str] = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        # The message of libpq may quote the DSN (and so a password): do not chain it.
        raise ValueError("invalid PostgreSQL URL") from None
    params.setdefault("application_name", application_name)
    # Sessions in UTC: timestamptz values come back with a +00:00 offset; ISO dates, UTF8 and
    # standard strings are what the text forms read and written by `PqConnection` assume
    # (the literals it writes are refused in a session where the last one is off). The
    # timeouts are session settings sent with the connection request: no extra round trip.
    settings = " -c TimeZone=UTC -c DateStyle=ISO -c standard_conforming_strings=on"
    params["client_encoding"] = "UTF8"
    if statement_timeout > 0:
        settings += f" -c statement_timeout={_milliseconds(statement_timeout)}"
    if lock_timeout > 0:
        settings += f" -c lock_timeout={_milliseconds(lock_timeout)}"
    params["options"] = (params.get("options", "") + settings).strip()
    return params


# --- which task holds a connection ------------------------------------------------------------

_held: contextvars.ContextVar[PooledConnection | None] = contextvars.ContextVar("parsec_pg_held", default=None)


def run_detached(make_coro: Callable[[], Coroutine[Any, Any, T]]) -> defer.Deferred[T]:
    """Start a fire-and-forget coroutine that may use the pool although the caller holds a
    connection (the caller must not wait for it while holding that connection)."""
    context = contextvars.copy_context()
    context.run(_held.set, None)
    return context.run(lambda: defer.ensureDeferred(make_coro()))


# --- retry policy -----------------------------------------------------------------------------


async def connect_with_retry(
    connect: Callable[[], Awaitable[T]],
    *,
    max_attempts: int,
    pause: float,
    reactor: Any,
    lost: DatabaseUnavailable | None = None,
) -> T:
    """Run `connect` under the retry policy of docs/protocol/server-config.md §4.

    At start-up (`lost` is None) `connect` is tried up to `max_attempts` times (at least once:
    0 means no retry). After a connection loss (`lost` given) up to `max_attempts` reconnections
    are tried (0: none, `lost` is raised). A pause of `pause` seconds separates attempts. Only
    `DatabaseUnavailable` is retried; the last one is raised.
    """
    attempt = 0
    if lost is not None:
        if max_attempts <= 0:
            raise lost
        _log.warn(
            "Database connection lost ({error}), retrying in {pause} seconds", error=str(lost), pause=pause
        )
        await task.deferLater(reactor, pause, lambda: None)
    while True:
        attempt += 1
        try:
            return await connect()
        except DatabaseUnavailable as exc:
            if attempt >= max_attempts:
                raise
            _log.warn(
                "Database connection lost ({error}), retrying in {pause} seconds", error=str(exc), pause=pause
            )
            await task.deferLater(reactor, pause, lambda: None)


# --- the pool ---------------------------------------------------------------------------------


class ConnectionPool(Generic[C]):
    """The pool's machinery, whatever the driver of its connections (see the module doc):
    `PostgreSQLPool` (psycopg2 sessions, for the metadata) and
    `parsec.storage.postgresql.binary.BinaryPool` (for block bytes)."""

    def __init__(
        self,
        dsn: str,
        *,
        min_connections: int = 5,
        max_connections: int = 7,
        max_connection_attempts: int = 10,
        pause_before_retry: float = 1.0,
        connect_timeout: float = 10.0,
        application_name: str = "parsec",
        statement_timeout: float = 0.0,
        lock_timeout: float = 0.0,
        acquire_timeout: float = 0.0,
        max_waiters: int | None = None,
        reactor: Any = None,
    ) -> None:
        """Timeouts in seconds, 0 for none; `max_waiters` None for no bound."""
        if not 0 <= min_connections <= max_connections or max_connections < 1:
            raise ValueError("need 0 <= min_connections <= max_connections and max_connections >= 1")
        if reactor is None:
            # The global reactor only when none is given: importing it installs the default one.
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._dsn = dsn
        self._kwargs = _connect_kwargs(dsn, application_name, statement_timeout, lock_timeout)
        self.description = describe_dsn(dsn)
        self.min_connections = min_connections
        self.max_connections = max_connections
        self.max_connection_attempts = max_connection_attempts
        self.pause_before_retry = pause_before_retry
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self.acquire_timeout = acquire_timeout
        self.max_waiters = max_waiters
        self.reactor = reactor
        self._idle: deque[C] = deque()
        self._in_use: set[C] = set()
        self._opening = 0
        self._waiters: deque[defer.Deferred[C]] = deque()
        self._generation = 0
        self._started = False
        self._closed = False
        self._start_d: defer.Deferred[None] | None = None
        self._drained: defer.Deferred[None] | None = None
        self._refill_call: Any = None  # IDelayedCall of a scheduled refill
        # Failures by kind, for the metrics: `connect` (a connection could not be opened),
        # `lost` (an open one was lost), `timeout` (no free connection in time, or too many
        # requests waiting for one).
        self.errors: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description}, size={self.size}/{self.max_connections})"

    @property
    def dsn(self) -> str:
        """The connection URL (may contain a password: never log it)."""
        return self._dsn

    @property
    def size(self) -> int:
        return len(self._idle) + len(self._in_use) + self._opening

    @property
    def stats(self) -> dict[str, int]:
        return {
            "idle": len(self._idle),
            "in_use": len(self._in_use),
            "opening": self._opening,
            "waiting": len(self._waiters),
        }

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open `min_connections` (at least one, to check the database), retrying per policy.
        Raises DatabaseUnavailable once the attempts are exhausted."""
        if self._closed:
            raise PoolClosedError("pool closed")
        self._start_d = defer.ensureDeferred(
            connect_with_retry(
                self._open_initial,
                max_attempts=self.max_connection_attempts,
                pause=self.pause_before_retry,
                reactor=self.reactor,
            )
        )
        try:
            await self._start_d
        except defer.CancelledError:
            raise PoolClosedError("pool closed during start-up") from None
        finally:
            self._start_d = None
        self._started = True

    async def _open_initial(self) -> None:
        count = max(self.min_connections, 1)
        self._opening += count
        try:
            results = await defer.DeferredList(
                [defer.ensureDeferred(self._open_raw()) for _ in range(count)], consumeErrors=True
            )
        finally:
            self._opening -= count
            self._check_drained()
        opened: list[C] = []
        failures: list[Failure] = []
        for _, value in results:
            (failures if isinstance(value, Failure) else opened).append(value)
        if failures or self._closed:
            for conn in opened:
                conn.close()
            if self._closed:
                raise PoolClosedError("pool closed")
            failures[0].raiseException()
        self._idle.extend(opened)

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new work, close idle connections, wait (up to `timeout` s) for the
        connections in use to come back, then close everything. Idempotent."""
        if self._closed:
            if self._drained is not None:
                await self._drained
            return
        self._closed = True
        if self._start_d is not None:
            self._start_d.cancel()
        if self._refill_call is not None and self._refill_call.active():
            self._refill_call.cancel()
        self._refill_call = None
        while self._waiters:
            self._waiters.popleft().errback(PoolClosedError("pool closed"))
        while self._idle:
            self._idle.popleft().close()
        if self._in_use or self._opening:
            self._drained = defer.Deferred()
            timer = self.reactor.callLater(timeout, self._force_close)
            await self._drained
            if timer.active():
                timer.cancel()

    def _force_close(self) -> None:
        for conn in list(self._in_use):
            conn.close()
        self._in_use.clear()
        self._check_drained()

    def _check_drained(self) -> None:
        if self._drained is not None and not self._drained.called and not self._in_use and not self._opening:
            self._drained.callback(None)

    # --- opening / discarding -------------------------------------------------------------------

    def _new_connection(self) -> tuple[C, defer.Deferred[None]]:
        """A new connection object, and the Deferred of its connection attempt."""
        raise NotImplementedError

    def _connected(self, conn: C) -> None:
        """`conn` is connected, and not used yet."""

    def _new_dedicated_connection(self) -> tuple[C, defer.Deferred[None]]:
        """`_new_connection`, for a connection outside the pool."""
        return self._new_connection()

    async def _open_raw(self, *, dedicated: bool = False) -> C:
        """A new connection (not registered anywhere). Raises DatabaseUnavailable."""
        conn, connecting = self._new_dedicated_connection() if dedicated else self._new_connection()
        timed_out = False

        def on_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            conn.close()

        timer = self.reactor.callLater(self.connect_timeout, on_timeout)
        try:
            await shield(connecting, conn.close)
        except defer.CancelledError:
            conn.close()
            raise
        except Exception as exc:
            conn.close()
            self.errors["connect"] += 1
            if timed_out:
                raise DatabaseUnavailable(
                    f"cannot connect to {self.description}: timed out after {self.connect_timeout} s"
                ) from None
            raise DatabaseUnavailable(f"cannot connect to {self.description}: {error_summary(exc)}") from exc
        finally:
            if timer.active():
                timer.cancel()
        self._connected(conn)
        conn.established = True
        conn.generation = self._generation
        return conn

    def _connection_lost(self, conn: C, reason: Failure) -> None:
        self.errors["lost"] += 1
        # Any loss usually means a database restart: retire every connection opened before it.
        if conn.generation == self._generation:
            self._generation += 1
            _log.info(
                "Database connection lost ({error}); dropping idle connections to {db}",
                error=error_summary(reason.value),
                db=self.description,
            )
            while self._idle:
                self._idle.popleft().close()
        if conn in self._idle:
            self._idle.remove(conn)
            conn.close()

    def _usable(self, conn: C) -> bool:
        return (
            not conn.broken
            and conn.generation == self._generation
            and conn.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        )

    def _schedule_refill(self) -> None:
        if self._refill_call is not None or self._closed or self.size >= self.min_connections:
            return
        self._refill_call = self.reactor.callLater(0, lambda: run_detached(self._refill))

    async def _refill(self) -> None:
        """Best effort, one attempt: back to `min_connections` (the next request retries)."""
        self._refill_call = None
        missing = min(self.min_connections, self.max_connections) - self.size
        for _ in range(max(missing, 0)):
            if self._closed or self.size >= self.min_connections:
                return
            self._opening += 1
            try:
                conn = await self._open_raw()
            except DatabaseUnavailable as exc:
                _log.debug("Pool refill failed: {error}", error=str(exc))
                return
            finally:
                self._opening -= 1
                self._check_drained()
            self._give_back(conn)

    # --- acquire / release --------------------------------------------------------------------

    async def acquire(self, *, nested_ok: bool = False) -> C:
        """A connection for exclusive use; give it back with `release`. Prefer `connection()`.

        `nested_ok=True` skips the re-entry check: only for fire-and-forget work that nobody
        holding a connection waits for.
        """
        if not nested_ok and _held.get() is not None:
            raise PoolReentryError(
                "this task already holds a database connection: waiting for another one can "
                "deadlock the pool; release it first or do the work in the same transaction"
            )
        if self._closed:
            raise PoolClosedError("pool closed")
        while self._idle:
            conn = self._idle.pop()  # most recently used first: warm, least likely stale
            if self._usable(conn):
                self._in_use.add(conn)
                return conn
            conn.close()
        if self.size < self.max_connections:
            return await self._open_for_use()
        return await self._wait_for_connection()

    async def _wait_for_connection(self) -> C:
        if self.max_waiters is not None and len(self._waiters) >= self.max_waiters:
            self.errors["timeout"] += 1
            limits.hit("db_max_waiters")
            raise DatabaseTimeout(
                f"database busy: {len(self._waiters)} requests already wait for a connection"
            )
        waiter: defer.Deferred[C] = defer.Deferred(self._cancel_waiter)
        self._waiters.append(waiter)
        if self.acquire_timeout <= 0:
            return await waiter

        def expire() -> None:
            if not waiter.called:
                self.errors["timeout"] += 1
                limits.hit("db_acquire_timeout")
                self._cancel_waiter(waiter)
                waiter.errback(
                    DatabaseTimeout(f"database busy: no connection free within {self.acquire_timeout:g} s")
                )

        timer = self.reactor.callLater(self.acquire_timeout, expire)
        try:
            return await waiter
        finally:
            if timer.active():
                timer.cancel()

    def _cancel_waiter(self, waiter: defer.Deferred[C]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass  # already served: the connection it gets after cancellation is given back

    async def _open_for_use(self) -> C:
        self._opening += 1
        try:
            conn = await self._open_raw()
        finally:
            self._opening -= 1
            self._check_drained()
        if self._closed:
            conn.close()
            self._check_drained()
            raise PoolClosedError("pool closed")
        self._in_use.add(conn)
        self._schedule_refill()
        return conn

    def release(self, conn: C) -> None:
        if conn not in self._in_use:
            if conn not in self._idle:  # e.g. force-closed by `close()`
                conn.close()
            return
        self._in_use.discard(conn)
        if self._closed or not self._usable(conn):
            conn.close()
            self._check_drained()
            self._serve_waiters()
            self._schedule_refill()
            return
        self._give_back(conn)

    def _give_back(self, conn: C) -> None:
        """Hand a healthy free connection to the first waiter, else park it."""
        if self._closed:
            conn.close()
            self._check_drained()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.called:
                continue
            self._in_use.add(conn)
            waiter.callback(conn)
            return
        self._idle.append(conn)

    def _serve_waiters(self) -> None:
        """After a connection was dropped: open replacements for waiting requests."""
        while self._waiters and not self._closed and self.size < self.max_connections:
            self._opening += 1
            self._start_open_for_waiter(self._waiters.popleft())

    def _start_open_for_waiter(self, waiter: defer.Deferred[C]) -> None:
        run_detached(lambda: self._open_for_waiter(waiter))

    async def _open_for_waiter(self, waiter: defer.Deferred[C]) -> None:
        try:
            conn = await self._open_raw()
        except DatabaseUnavailable as exc:
            if not waiter.called:
                waiter.errback(exc)
            return
        finally:
            self._opening -= 1
            self._check_drained()
        if waiter.called or self._closed:  # cancelled meanwhile
            self._give_back(conn)
            return
        self._in_use.add(conn)
        waiter.callback(conn)

    def connection(self, *, nested_ok: bool = False) -> Checkout[C]:
        """`async with pool.connection() as conn:` exclusive use of one session (autocommit)."""
        return Checkout(self, nested_ok)


class Checkout(Generic[C]):
    """`ConnectionPool.connection()`: a connection acquired on entry, released on exit, marked
    in `_held` meanwhile. A class rather than an `asynccontextmanager`: one per statement, the
    generator's frames and steps cost more than what it guards."""

    __slots__ = ("_conn", "_nested_ok", "_pool", "_token")

    def __init__(self, pool: ConnectionPool[C], nested_ok: bool) -> None:
        self._pool = pool
        self._nested_ok = nested_ok
        self._conn: C | None = None
        self._token: contextvars.Token[PooledConnection | None] | None = None

    async def __aenter__(self) -> C:
        conn = self._conn = await self._pool.acquire(nested_ok=self._nested_ok)
        self._token = _held.set(conn)
        return conn

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        conn, token = self._conn, self._token
        assert conn is not None and token is not None
        self._conn = self._token = None
        try:
            # Not knowing what was interrupted, never reuse a session left inside a transaction.
            if kind is not None and conn.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                conn.broken = True
        finally:
            _held.reset(token)
            self._pool.release(conn)


class PostgreSQLPool(ConnectionPool[PgConnection]):
    """The pool of sessions every storage runs on (`PqConnection`s; `open_dedicated`: psycopg2)."""

    def _new_connection(self) -> tuple[PgConnection, defer.Deferred[None]]:
        # Imported here: the binary module builds its own pool on this one.
        from parsec.storage.postgresql.binary import BinarySession, PqConnection, conninfo

        session = BinarySession(self.reactor)
        conn = PqConnection(session, self._generation, self._connection_lost)
        return conn, session.connect(conninfo(self._kwargs))

    def _new_dedicated_connection(self) -> tuple[PgConnection, defer.Deferred[None]]:
        # psycopg2 in asynchronous mode: its NOTIFYs are what the event bus's LISTEN reads.
        raw = Session(self.reactor)
        conn = PgConnection(raw, self._generation, self._connection_lost)
        return conn, raw.connect(**self._kwargs)

    def _connected(self, conn: PgConnection) -> None:
        if type(conn) is PgConnection:
            raw = conn._raw.raw
            psycopg2.extensions.register_type(_BYTES, raw)
            psycopg2.extensions.register_type(_BYTES_ARRAY, raw)

    async def open_dedicated(self) -> PgConnection:
        """A connection outside the pool (e.g. for LISTEN), one attempt; the caller closes it."""
        if self._closed:
            raise PoolClosedError("pool closed")
        return await self._open_raw(dedicated=True)

    # --- transactions -------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(
        self, *, isolation: Isolation | None = None, read_only: bool = False
    ) -> AsyncIterator[Transaction]:
        """`async with pool.transaction() as tx:` commits on normal exit, rolls back on error.
        No retry (the body cannot be re-run): use `run_transaction` for SERIALIZABLE work."""
        async with self.connection() as conn:
            tx = Transaction(conn, isolation, read_only)
            try:
                yield tx
            except BaseException:
                await tx._rollback()
                raise
            await tx._commit()

    async def run_transaction(
        self,
        fn: Callable[[Transaction], Awaitable[T]],
        *,
        name: str = "transaction",
        isolation: Isolation | None = None,
        read_only: bool = False,
        max_attempts: int = 5,
    ) -> T:
        """Run `await fn(tx)` in a transaction and commit; on a serialization failure or a
        deadlock, roll back and run `fn` again (same connection), up to `max_attempts` times.
        `fn` must therefore have no effect outside the database (use `tx.call_after_commit`)."""
        async with self.connection() as conn:
            attempt = 0
            while True:
                attempt += 1
                tx = Transaction(conn, isolation, read_only)
                try:
                    result = await fn(tx)
                except BaseException as exc:
                    await tx._rollback()
                    if isinstance(exc, RETRYABLE_ERRORS) and attempt < max_attempts and not conn.broken:
                        _log.debug(
                            "{name}: {error}, retrying ({attempt}/{max})",
                            name=name, error=type(exc).__name__, attempt=attempt, max=max_attempts,
                        )
                        continue
                    raise
                try:
                    await tx._commit()
                except RETRYABLE_ERRORS as exc:
                    await tx._rollback()
                    if attempt < max_attempts and not conn.broken:
                        _log.debug(
                            "{name}: {error} at commit, retrying ({attempt}/{max})",
                            name=name, error=type(exc).__name__, attempt=attempt, max=max_attempts,
                        )
                        continue
                    raise
                return result

    # --- single statements (one round trip each, autocommit) -----------------------------------

    async def fetch(self, sql: Query, params: Params = None) -> list[tuple[Any, ...]]:
        async with self.connection() as conn:
            return await conn.fetch(sql, params)

    async def fetchrow(self, sql: Query, params: Params = None) -> tuple[Any, ...] | None:
        async with self.connection() as conn:
            return await conn.fetchrow(sql, params)

    async def fetchval(self, sql: Query, params: Params = None) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(sql, params)

    async def execute(self, sql: Query, params: Params = None) -> int:
        async with self.connection() as conn:
            return await conn.execute(sql, params)

    async def fetchrow_batch(
        self, statements: Sequence[PreparedStatement], params: Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """`PgConnection.fetchrow_batch`: prepared statements in one round trip."""
        async with self.connection() as conn:
            return await conn.fetchrow_batch(statements, params)
