"""Binary PostgreSQL sessions: the pool's metadata sessions, the blockstore's, and their pools.

psycopg2 has only the simple query protocol: a statement's parameters are written into its
text (a block as base64, which PostgreSQL's parser then scans and decodes; a prepared
statement's arguments as an `EXECUTE name(...)` command that PostgreSQL parses, transforms and
evaluates for every call), and results come back as text (a bytea as hex, twice its size).
The sessions here run on libpq's extended protocol through psycopg 3's low-level libpq binding
(`psycopg.pq`, its public wrapper module; psycopg 3's own connection classes, which need
asyncio, are not used):

* statements are prepared once per session at the protocol level and executed with
  parameters sent apart from the statement: `bytes` as binary (the block as it is), every
  other value as its text form;
* results come back binary: a bytea is its bytes, copied once out of libpq's result.

`PqConnection` is what `PostgreSQLPool` hands out for every storage: prepared statements as
above, any other statement through the simple protocol as before (see its doc), rows read by
psycopg 3's C loaders. PostgreSQL's CPU per `vlob_create`, one session, 3,000 in a row:
223-247 us through psycopg2's `EXECUTE`, 199-216 here; our server's instructions per request
(callgrind, 400 requests on 4 connections): `vlob_create` 706k -> 650k, `vlob_read`
539k -> 465k, `connect` 2,606k -> 2,431k (README.rst, Performance). The LISTEN session of the
event bus stays on psycopg2 (`parsec.storage.postgresql.connection.Session`, whose NOTIFY
handling it is).

Per 512 KiB block (benchmarks/pg_block_bytes.py; figures in benchmarks/README.rst): a read,
our CPU + PostgreSQL's, 1,167 + 1,500 us through psycopg2 against 361 + 1,000 here; a write,
PostgreSQL's CPU with 4 concurrent writers, 4,938-6,250 us (base64 literal) against
2,313-2,938.

`BinarySession` drives one libpq connection from the reactor (no thread), as
`parsec.storage.postgresql.connection.Session` does for psycopg2, on the same
`WatchedSocket`: the reactor watches a duplicate of libpq's socket (libpq may close or replace
its own), the socket stays registered for reading while connected (a dead session is noticed
while idle), for writing only while libpq has unsent bytes, and a result is always delivered
from the reactor's read callback. `BinaryPool` (the blockstore's) is a `ConnectionPool` of
them: the same bounds (acquire timeout, waiters, statement and lock timeouts, reconnection
after a loss) and the same rule (never wait for a connection while holding one, of any pool).
SQL errors are raised as psycopg2's exception classes (`psycopg2.errors.lookup` of the
SQLSTATE), so that callers handle one vocabulary.

psycopg is imported when the first session is opened (about 0.1 s of start-up).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from parsec.storage.postgresql.connection import (
    DatabaseUnavailable,
    Params,
    PgConnection,
    PooledConnection,
    PreparedStatement,
    Query,
    WatchedSocket,
    error_summary,
    render_statement,
    shield,
    timeout_of,
)
from parsec.storage.postgresql.pool import ConnectionPool, PostgreSQLPool

__all__ = ["BinaryConnection", "BinaryPool", "BinarySession", "PqConnection"]


_PQ: Any = None


def _pq() -> Any:
    """psycopg.pq, imported on first use (see the module doc)."""
    global _PQ
    if _PQ is None:
        from psycopg import pq

        _PQ = pq
    return _PQ


# --- values -----------------------------------------------------------------------------------


def _array_item(value: Any) -> str:
    if value is None:
        return "NULL"
    if type(value) is bytes:
        return '"\\\\x' + value.hex() + '"'  # "\\x..." in the array's text: a bytea's hex form
    text = value if type(value) is str else _text(value).decode("utf-8")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _utf8_param(text: str) -> bytes:
    # libpq reads a text parameter up to its first NUL: refused like psycopg2 refuses it.
    if "\x00" in text:
        raise ValueError("A string literal cannot contain NUL (0x00) characters.")
    return text.encode("utf-8")


def _text(value: Any) -> bytes:
    """A parameter's text form, as PostgreSQL reads it for the parameter's type."""
    kind = type(value)
    if kind is str:
        return _utf8_param(value)
    if kind is UUID:
        return value.hex.encode("ascii")  # type: ignore[no-any-return]  # PostgreSQL reads it without dashes
    if kind is int:
        return str(value).encode("ascii")
    if kind is datetime:
        return value.isoformat().encode("ascii")  # type: ignore[no-any-return]
    if kind is bool:
        return b"t" if value else b"f"
    if kind is list or kind is tuple:
        return _utf8_param("{" + ",".join([_array_item(item) for item in value]) + "}")
    if kind is float or kind is Decimal:
        return str(value).encode("ascii")
    raise TypeError(f"no text form for a {kind.__name__} parameter")


def encode_params(values: list[Any]) -> tuple[list[bytes | None], list[int]]:
    """Parameter values and formats: `bytes` (and memoryviews) binary, the rest as text."""
    encoded: list[bytes | None] = []
    formats: list[int] = []
    for value in values:
        kind = type(value)
        if kind is bytes:
            encoded.append(value)
            formats.append(1)
        elif kind is str:
            encoded.append(_utf8_param(value))
            formats.append(0)
        elif value is None:
            encoded.append(None)
            formats.append(0)
        elif isinstance(value, (bytearray, memoryview)):
            encoded.append(bytes(value))
            formats.append(1)
        else:
            encoded.append(_text(value))
            formats.append(0)
    return encoded, formats


def _sql_error(result: Any) -> Exception:
    """psycopg2's exception for an error result (its SQLSTATE's class)."""
    pq = _pq()
    message = (result.error_message or b"").decode("utf-8", "replace").strip() or "database error"
    code = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode("ascii", "replace")
    try:
        error_class: type[Exception] = psycopg2.errors.lookup(code)
    except KeyError:
        error_class = psycopg2.DatabaseError
    return error_class(message)


def conninfo(kwargs: Mapping[str, str]) -> bytes:
    """libpq's `key='value' ...` connection string of parsed DSN parameters."""
    parts = []
    for key, value in kwargs.items():
        quoted = str(value).replace("\\", "\\\\").replace("'", "\\'")
        parts.append(f"{key}='{quoted}'")
    return " ".join(parts).encode("utf-8")


# --- the session ------------------------------------------------------------------------------


@implementer(IReadDescriptor, IWriteDescriptor)
class BinarySession(WatchedSocket):
    """One libpq connection driven by the reactor (see the module doc). One cycle at a time
    (the connection attempt, or one statement); its Deferred fires with the statement's
    results (`PGresult`s) from the reactor, the session being back at rest."""

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.pgconn: Any = None
        self.owner: PooledConnection | None = None
        self._waiting: defer.Deferred[list[Any]] | None = None
        self._results: list[Any] = []
        self._connecting = False

    # IReadDescriptor / IWriteDescriptor

    def logPrefix(self) -> str:
        return "postgresql-binary"

    def doRead(self) -> None:
        if self._connecting:
            self._poll_connect()
        else:
            self._read()

    def doWrite(self) -> None:
        if self._connecting:
            self._poll_connect()
        else:
            self._flush()

    def connectionLost(self, reason: Failure) -> None:
        # Only if the reactor itself drops us (at its shutdown).
        self._reading = self._writing = False
        self._die(reason)

    # connecting

    def connect(self, info: bytes) -> defer.Deferred[None]:
        pq = _pq()
        try:
            self.pgconn = pq.PGconn.connect_start(info)
        except Exception:
            return defer.fail()
        if self.pgconn.status == pq.ConnStatus.BAD:
            error = psycopg2.OperationalError(self._libpq_error())
            self._shut(None)
            return defer.fail(error)
        self._connecting = True
        waiting: defer.Deferred[list[Any]] = defer.Deferred()
        self._waiting = waiting
        # libpq's rule: right after connect_start, behave as if the poll asked to write.
        if self._track_socket():
            self._want(read=False, write=True)
        else:
            self._die(Failure(psycopg2.OperationalError(self._libpq_error())))
        return waiting.addCallback(lambda _: None)

    def _poll_connect(self) -> None:
        pq = _pq()
        try:
            status = self.pgconn.connect_poll()
        except Exception as exc:
            self._connecting = False
            self._die(Failure(psycopg2.OperationalError(str(exc) or self._libpq_error())))
            return
        if status == pq.PollingStatus.FAILED or not self._track_socket():
            self._connecting = False
            self._die(Failure(psycopg2.OperationalError(self._libpq_error())))
            return
        if status == pq.PollingStatus.OK:
            self._connecting = False
            self._connected = True
            self.pgconn.nonblocking = 1
            self._want(read=True, write=False)
            self._finish([])
        elif status == pq.PollingStatus.READING:
            self._want(read=True, write=False)
        else:  # WRITING
            self._want(read=False, write=True)

    def _finish(self, results: list[Any]) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(results)

    def _libpq_error(self) -> str:
        message = b""
        if self.pgconn is not None:
            try:
                message = self.pgconn.error_message or b""
            except Exception:
                pass
        return message.decode("utf-8", "replace").strip() or "connection failed"

    # statements

    def send(self, start: Callable[[Any], None]) -> defer.Deferred[list[Any]]:
        """Send one statement (`start(pgconn)` queues it, e.g. `send_query_prepared`); the
        Deferred fires with its results. Raises at once if nothing could be sent."""
        if self._waiting is not None:
            raise RuntimeError("a statement is already running on this session")
        if not self._connected or self._gone:
            raise psycopg2.InterfaceError("connection closed")
        start(self.pgconn)
        self._results = []
        waiting: defer.Deferred[list[Any]] = defer.Deferred()
        self._waiting = waiting
        self._flush()
        return waiting

    def _flush(self) -> None:
        try:
            pending = self.pgconn.flush()
        except Exception as exc:
            self._die(Failure(psycopg2.OperationalError(str(exc))))
            return
        self._want(read=True, write=bool(pending))

    def _read(self) -> None:
        pgconn = self.pgconn
        if pgconn is None or self._gone:
            return
        try:
            pgconn.consume_input()
            if self._writing:  # libpq's rule for a send still in progress: flush again
                self._want(read=True, write=bool(pgconn.flush()))
            while pgconn.notifies() is not None:  # nobody LISTENs here: let them go
                pass
            if self._waiting is None:
                if pgconn.status != _pq().ConnStatus.OK:
                    raise psycopg2.OperationalError(self._libpq_error())
                return
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    results, self._results = self._results, []
                    self._finish(results)
                    return
                self._results.append(result)
        except Exception as exc:
            # While idle, anything readable is the server ending the session.
            self._die(Failure(psycopg2.OperationalError(str(exc).strip() or "connection lost")))
            return
        if pgconn.status != _pq().ConnStatus.OK:
            self._die(Failure(psycopg2.OperationalError(self._libpq_error())))

    def close(self) -> None:
        if not self._gone:
            self._shut(Failure(psycopg2.InterfaceError("connection closed")))

    # the socket

    def _track_socket(self) -> bool:
        """`_follow_socket` of libpq's current socket."""
        try:
            current = int(self.pgconn.socket)
        except Exception:
            current = -1
        return self._follow_socket(current)

    def _shut(self, reason: Failure | None) -> None:  # None: nothing to fail (a refused start)
        self._gone = True
        self._connected = False
        self._release_fd()
        if self.pgconn is not None:
            self.pgconn.finish()
        waiting, self._waiting = self._waiting, None
        if waiting is not None and reason is not None:
            waiting.errback(reason)


# --- the connection and the pool --------------------------------------------------------------


class _OnBinarySession:
    """What `BinaryConnection` and `PqConnection` share: a `BinarySession` under a pooled
    connection (`PooledConnection`'s attributes, set by the connection class)."""

    _session: BinarySession
    _closing: bool
    broken: bool
    round_trips: int
    _lost: Callable[[Failure], None]

    def _attach(self, session: BinarySession) -> None:
        self._session = session
        session.owner = self  # type: ignore[assignment]
        self._prepared: set[str] = set()
        from psycopg.adapt import Transformer

        self._loader = Transformer()

    async def _ensure_prepared(self, query: Query) -> None:
        """A statement is prepared once per session, at the protocol level (one extra round
        trip the first time it meets the session)."""
        if isinstance(query, PreparedStatement) and query.name not in self._prepared:
            name, body = query.name_bytes, query.body_bytes
            await self._exchange(lambda pgconn: pgconn.send_prepare(name, body))
            self._prepared.add(query.name)

    def _rows_of(self, result: Any) -> list[tuple[Any, ...]]:
        """A result's rows, read by psycopg 3's C loaders (text or binary alike) into the
        types psycopg2 gives: bytea -> bytes, uuid -> UUID, timestamptz -> aware UTC
        datetime, numeric -> Decimal, arrays -> lists."""
        count = result.ntuples
        if not count:
            return []
        loader = self._loader
        loader.set_pgresult(result)
        rows: list[tuple[Any, ...]] = loader.load_rows(0, count, tuple)
        loader.set_pgresult(None)
        return rows

    @property
    def transaction_status(self) -> int:
        pgconn = self._session.pgconn
        if pgconn is None or self._session._gone:
            return psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN
        return int(pgconn.transaction_status)

    def close(self) -> None:
        self._closing = True
        self.broken = True
        self._session.close()

    async def _exchange(self, start: Callable[[Any], None]) -> Any:
        """One message on the session (`start(pgconn)` queues it); the last of its results,
        SQL errors raised as psycopg2's, a lost connection as DatabaseUnavailable."""
        if self.broken:
            raise DatabaseUnavailable("database connection lost")
        self.round_trips += 1
        try:
            results = await shield(self._session.send(start), self.close)
        except defer.CancelledError:
            self.broken = True
            raise
        except Exception as exc:
            self.broken = True
            self._lost(Failure(exc))
            raise DatabaseUnavailable(f"database connection lost: {error_summary(exc)}") from exc
        fatal = _pq().ExecStatus.FATAL_ERROR
        last = None
        for result in results:
            if result.status == fatal:
                error = _sql_error(result)
                timeout = timeout_of(error)
                if timeout is not None:
                    raise timeout from error
                raise error
            last = result
        if last is None:
            raise psycopg2.DatabaseError("no result")
        return last


class BinaryConnection(_OnBinarySession, PooledConnection):
    """A pooled `BinarySession`: prepared statements only (each prepared once per session,
    one extra round trip the first time), one round trip per call."""

    def __init__(self, session: BinarySession, generation: int, on_lost: Callable[[Any, Failure], None]) -> None:
        PooledConnection.__init__(self, generation, on_lost)
        self._attach(session)

    async def _run(self, statement: PreparedStatement, params: Mapping[str, Any] | None) -> Any:
        if statement.name not in self._prepared:
            await self._ensure_prepared(statement)
        name = statement.name_bytes
        values, formats = encode_params(statement.bind(params))
        return await self._exchange(
            lambda pgconn: pgconn.send_query_prepared(name, values, formats, result_format=1)
        )

    async def fetchrow(self, statement: PreparedStatement, params: Mapping[str, Any] | None = None) -> tuple[Any, ...] | None:
        rows = self._rows_of(await self._run(statement, params))
        return rows[0] if rows else None

    async def execute(self, statement: PreparedStatement, params: Mapping[str, Any] | None = None) -> int:
        """Run a statement; return the number of rows it affected (-1 if not applicable)."""
        result = await self._run(statement, params)
        count = result.command_tuples
        return -1 if count is None else int(count)


class _Rows:
    """A statement's rows, read the way the storages read a psycopg2 cursor."""

    __slots__ = ("_next", "rowcount", "rows")

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount
        self._next = 0

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows = self.rows[self._next :]
        self._next = len(self.rows)
        return rows

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._next >= len(self.rows):
            return None
        self._next += 1
        return self.rows[self._next - 1]


class PqConnection(_OnBinarySession, PgConnection):
    """A pooled metadata session on libpq's extended protocol (`BinarySession`), with the API
    of `PgConnection` (whose psycopg2 session remains for LISTEN, `open_dedicated`).

    * A `PreparedStatement` is prepared once per session at the protocol level and executed
      with its parameters apart from its text (`bytes` binary, the rest as text) and a binary
      result: PostgreSQL neither parses the arguments nor the `EXECUTE` command that carries
      them, and a bytea comes back as its bytes.
    * Any other statement, and a prepared one that must go in the same message as the
      transaction's `BEGIN`, is sent as text through the simple protocol, its parameters
      written in as psycopg2 writes them (`render_statement`, `EXECUTE name(...)`): several
      statements may share one round trip, as before.
    * Rows are read by psycopg 3's C loaders, text or binary alike, into the same Python
      types as before (bytea -> bytes, uuid -> UUID, timestamptz -> aware UTC datetime,
      numeric -> Decimal, arrays -> lists).

    The session settings (`TimeZone=UTC`, `DateStyle=ISO`, `standard_conforming_strings=on`,
    UTF8) come with the connection request (`parsec.storage.postgresql.pool`)."""

    def __init__(self, session: BinarySession, generation: int, on_lost: Callable[[Any, Failure], None]) -> None:
        PooledConnection.__init__(self, generation, on_lost)
        self._attach(session)
        self.notify_handler = None  # pool sessions never LISTEN

    @property
    def backend_pid(self) -> int:
        return int(self._session.pgconn.backend_pid)

    async def _round_trip(self, text: str, start: Callable[[Any], None] | None = None) -> _Rows:
        """One message: `start(pgconn)` queues it, by default the simple query `text` (else
        `text` only names it: the statement's PREPARE or EXECUTE form). SQL errors are raised
        as psycopg2's; returns the rows of its last result."""
        if start is None:
            query = text.encode("utf-8")

            def start(pgconn: Any) -> None:
                pgconn.send_query(query)

        last = await self._exchange(start)
        affected = last.command_tuples
        return _Rows(self._rows_of(last), -1 if affected is None else int(affected))

    async def _execute(self, query: Query, params: Params, prefix: str = "") -> Any:
        if isinstance(query, PreparedStatement):
            if query.name not in self._prepared:
                await self._ensure_prepared(query)
            values = query.bind(params)
            if not prefix:
                encoded, formats = encode_params(values)
                name = query.name_bytes
                return await self._round_trip(
                    query.execute_sql, lambda pgconn: pgconn.send_query_prepared(name, encoded, formats, result_format=1)
                )
            return await self._round_trip(prefix + self._render(query.execute_sql, values or None))
        return await self._round_trip(prefix + self._render(query, params))

    async def _send(self, sql: str, params: Params) -> Any:
        return await self._round_trip(self._render(sql, params))

    def _render(self, sql: str, params: Params) -> str:
        """`render_statement`, in a session that reads its literals as they are written
        (libpq's view of the setting, which the server reports whenever it changes)."""
        if params is not None:
            pgconn = self._session.pgconn
            if pgconn is None or pgconn.parameter_status(b"standard_conforming_strings") != b"on":
                raise psycopg2.ProgrammingError(
                    "statement parameters need standard_conforming_strings = on in the session"
                )
        return render_statement(sql, params)


class BinaryPool(ConnectionPool[BinaryConnection]):
    """A pool of `BinarySession`s (see the module doc)."""

    @classmethod
    def like(cls, pool: PostgreSQLPool, max_connections: int) -> BinaryPool:
        """A pool on `pool`'s database, with its timeouts and bounds; its connections are
        opened on demand, up to `max_connections`."""
        return cls(
            pool.dsn,
            min_connections=0,
            max_connections=max_connections,
            max_connection_attempts=pool.max_connection_attempts,
            pause_before_retry=pool.pause_before_retry,
            connect_timeout=pool.connect_timeout,
            statement_timeout=pool.statement_timeout,
            lock_timeout=pool.lock_timeout,
            acquire_timeout=pool.acquire_timeout,
            max_waiters=pool.max_waiters,
            reactor=pool.reactor,
            application_name="parsec-blocks",
        )

    def _new_connection(self) -> tuple[BinaryConnection, defer.Deferred[None]]:
        session = BinarySession(self.reactor)
        conn = BinaryConnection(session, self._generation, self._connection_lost)
        return conn, session.connect(conninfo(self._kwargs))

    async def fetchrow(self, statement: PreparedStatement, params: Mapping[str, Any] | None = None) -> tuple[Any, ...] | None:
        async with self.connection() as conn:
            return await conn.fetchrow(statement, params)

    async def execute(self, statement: PreparedStatement, params: Mapping[str, Any] | None = None) -> int:
        async with self.connection() as conn:
            return await conn.execute(statement, params)
