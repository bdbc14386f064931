"""One PostgreSQL session (psycopg2 in async mode, driven by the reactor), and a transaction on it.

`PgConnection` is the API every storage uses: every method is one round trip. `PostgreSQLPool`
hands out its subclass `PqConnection` (libpq's extended protocol, parsec.storage.postgresql.
binary); `open_dedicated` returns a `PgConnection` on psycopg2, the LISTEN session of the event
bus. A `Transaction` sends its `BEGIN` together with its first statement and its `COMMIT`
together with the queued NOTIFYs. Connection-level failures become `DatabaseUnavailable` (one
line, no secrets); SQL errors pass through.

Prepared statements: wrap a hot statement once, at import time, in `PreparedStatement(sql)`
(named `%(name)s` placeholders) and pass it instead of the SQL text. Each connection prepares it
on first use (one extra round trip, once per connection); afterwards the server skips parsing
and planning (measured 2.2x faster on a six-CTE vlob write). PostgreSQL infers the parameter
types from the statement: add casts (`%(ts)s::timestamptz`) where the context does not say.

Rows are plain tuples; bytea comes back as `bytes`, uuid as `uuid.UUID`, timestamptz as aware
datetimes (sessions use UTC; the pool sets the session and, for psycopg2, registers the casts
when it opens a connection).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from parsec import limits

__all__ = [
    "DatabaseTimeout",
    "DatabaseUnavailable",
    "Isolation",
    "Params",
    "PgConnection",
    "PooledConnection",
    "PreparedStatement",
    "Query",
    "Transaction",
    "Session",
    "WatchedSocket",
    "error_summary",
    "shield",
    "timeout_of",
]

_log = Logger(namespace="parsec.storage.postgresql")

Params = Sequence[Any] | Mapping[str, Any] | None
Isolation = Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]
_ISOLATIONS = ("READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")


class DatabaseUnavailable(ConnectionError):
    """The database cannot be reached: connection refused or timed out, connection lost (e.g.
    the database restarted), pool closed. The message is one line and holds no secret."""


class DatabaseTimeout(DatabaseUnavailable):
    """The database did not answer in time (README.rst, Limits): a statement ran past
    `statement_timeout` or waited past `lock_timeout` (PostgreSQL cancelled it, the session is
    fine), no pool connection was free within the acquire timeout, or too many requests were
    already waiting for one. Handled as DatabaseUnavailable: the request gets an error answer."""


# PostgreSQL gave up on the statement: statement_timeout or a cancel request, lock_timeout.
_TIMEOUT_ERRORS: tuple[type[Exception], ...] = (
    psycopg2.errors.QueryCanceled,
    psycopg2.errors.LockNotAvailable,
)


def timeout_of(exc: BaseException) -> DatabaseTimeout | None:
    """The DatabaseTimeout a statement's error stands for (counted as its limit hit), or None.
    The session survives it (a transaction is left aborted: rolled back by its owner)."""
    if not isinstance(exc, _TIMEOUT_ERRORS):
        return None
    limits.hit("db_lock_timeout" if isinstance(exc, psycopg2.errors.LockNotAvailable) else "db_statement_timeout")
    return DatabaseTimeout(f"database did not answer in time: {error_summary(exc)}")


def error_summary(exc: BaseException | None) -> str:
    """The first line of an error (libpq adds hints on the next ones), spaces collapsed."""
    for line in str(exc).splitlines():
        if line.strip():
            return " ".join(line.split())
    return type(exc).__name__


# --- prepared statements ----------------------------------------------------------------------

_NAMED = re.compile(r"%\((\w+)\)s|%%|%")


class PreparedStatement:
    """A statement PREPAREd once per connection and then EXECUTEd (see the module doc)."""

    def __init__(self, sql: str) -> None:
        names: list[str] = []

        def placeholder(match: re.Match[str]) -> str:
            if match.group(0) == "%%":
                return "%"
            if match.group(1) is None:
                raise ValueError("PreparedStatement takes named placeholders only: %(name)s")
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        body = _NAMED.sub(placeholder, sql)
        self.sql = sql
        self.body = body  # with $1, $2... (what a protocol-level prepare takes)
        self.param_names = tuple(names)
        self.name = "parsec_" + hashlib.sha256(sql.encode("utf-8")).hexdigest()[:24]
        self.prepare_sql = f"PREPARE {self.name} AS {body}"
        self.name_bytes = self.name.encode("ascii")  # for libpq's protocol-level calls
        self.body_bytes = body.encode("utf-8")
        arguments = ", ".join(["%s"] * len(names))
        self.execute_sql = f"EXECUTE {self.name}({arguments})" if names else f"EXECUTE {self.name}"

    def __repr__(self) -> str:
        return f"PreparedStatement({self.name}, params={self.param_names})"

    def bind(self, params: Params) -> list[Any]:
        if not self.param_names:
            return []
        if not isinstance(params, Mapping):
            raise TypeError("a PreparedStatement takes its parameters as a mapping")
        return [params[name] for name in self.param_names]


Query = str | PreparedStatement


# --- the arguments of an EXECUTE ----------------------------------------------------------------
#
# psycopg2 adapts a parameter through its adaptation protocol: an adapter object per value,
# a lookup of its `prepare` method (an AttributeError raised and cleared for most types), a
# `getquoted()` call, a Python adapter for UUIDs; 30 us for the 13 arguments of a
# `vlob_create` where `execute_literals` takes 8 (timeit), and 176k of the server's 803k
# instructions per `vlob_create` were psycopg2's `execute`, 711k in all with this (callgrind,
# README.rst, Performance). The arguments of an EXECUTE are therefore written here, for the types the
# storages pass, exactly as psycopg2 writes them: each becomes the same value on the server
# (tests/postgresql/test_literals.py compares both on PostgreSQL). Strings are quoted for
# `standard_conforming_strings = on` (backslashes are literal); a session where it is off,
# or a value of any other type, goes through psycopg2.


class _Unsupported(Exception):
    pass


def _literal(value: Any) -> str:
    kind = type(value)
    if kind is str:
        text: str = value
        if "\x00" in text:
            # psycopg2's own refusal, raised before anything is sent.
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        return "'" + text.replace("'", "''") + "'"
    if kind is UUID:
        ident: UUID = value
        return "'" + ident.hex + "'::uuid"
    if kind is int:
        # A space before a minus sign, as psycopg2 writes it (`-` after `-` starts a comment).
        return str(value) if value >= 0 else " " + str(value)
    if value is None:
        return "NULL"
    if kind is bytes:
        data: bytes = value
        return "'\\x" + data.hex() + "'::bytea"
    if kind is bool:
        return "true" if value else "false"
    if kind is datetime:
        when: datetime = value
        return "'" + when.isoformat() + ("'::timestamp" if when.tzinfo is None else "'::timestamptz")
    if kind is list:
        if not value:
            return "'{}'"
        items = []
        for item in value:
            if type(item) is list:
                raise _Unsupported
            items.append(_literal(item))
        return "ARRAY[" + ",".join(items) + "]"
    raise _Unsupported


def execute_literals(values: Sequence[Any]) -> str | None:
    """The argument list of an EXECUTE (`'a',1,NULL`), or None when a value is of a type
    written by psycopg2 only. Valid only where `standard_conforming_strings` is on."""
    try:
        return ",".join([_literal(value) for value in values])
    except _Unsupported:
        return None


# psycopg2's client-side parameters: `%s` (a sequence) or `%(name)s` (a mapping), `%%` for a
# percent sign; without parameters the text is sent as it is.
_PLACEHOLDER = re.compile(r"%(?:\((\w+)\)s|s|%)?")


def _statement_literal(value: Any) -> str:
    """`_literal`, plus the other types a statement's text may be given (psycopg2's forms),
    for sessions that have no psycopg2 adaptation to fall back on."""
    try:
        return _literal(value)
    except _Unsupported:
        pass
    kind = type(value)
    if kind is tuple:  # `IN %s`
        if not value:
            raise ValueError("an empty tuple has no SQL form")
        return "(" + ",".join([_statement_literal(item) for item in value]) + ")"
    if kind is bytearray or kind is memoryview:
        return _literal(bytes(value))
    if kind is float:
        number: float = value
        if number != number or number in (float("inf"), float("-inf")):
            return "'" + repr(number).replace("inf", "Infinity").replace("nan", "NaN") + "'::float8"
        return repr(number)
    if kind is Decimal:
        return str(value) if value.is_finite() else "'NaN'::numeric"
    if kind is date:
        day: date = value
        return "'" + day.isoformat() + "'::date"
    raise TypeError(f"no SQL literal for a {kind.__name__} parameter")


def render_statement(sql: str, params: Params) -> str:
    """A statement's text with its parameters written in as literals, as psycopg2's
    `execute` composes it (valid only where `standard_conforming_strings` is on). Raises
    before anything is sent: a missing name (KeyError), a count mismatch or a value of
    another type (TypeError), a NUL in a string (ValueError)."""
    if params is None:
        return sql
    if isinstance(params, Mapping):
        named: Mapping[str, Any] = params

        def by_name(match: re.Match[str]) -> str:
            token = match.group(0)
            if token == "%%":
                return "%"
            if match.group(1) is None:
                raise (TypeError if token == "%s" else ValueError)(f"unsupported placeholder {token!r} with a mapping")
            return _statement_literal(named[match.group(1)])

        return _PLACEHOLDER.sub(by_name, sql)
    values = iter(params)

    def in_order(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "%%":
            return "%"
        if token != "%s":
            raise (TypeError if match.group(1) else ValueError)(f"unsupported placeholder {token!r} with a sequence")
        try:
            return _statement_literal(next(values))
        except StopIteration:
            raise TypeError("not enough parameters for the statement") from None

    text = _PLACEHOLDER.sub(in_order, sql)
    if next(values, _END) is not _END:
        raise TypeError("not all parameters were used by the statement")
    return text


_END = object()


# --- sessions ---------------------------------------------------------------------------------


class WatchedSocket:
    """What the reactor-driven sessions share (`Session`, and `BinarySession` of
    parsec.storage.postgresql.binary): the descriptor the reactor watches, its registration for
    reading and writing, and the end of the session.

    The reactor watches a duplicate of libpq's socket, not libpq's own descriptor: libpq
    closes its socket by itself (a dead connection, a connection attempt moving on to the
    next address), and a descriptor closed under the reactor's feet would make it fail on
    EBADF or, once the number is reused, watch another socket. Ours stays valid until we
    close it, after telling the reactor.
    """

    owner: Any  # the pooled connection told of a loss (`_lost`)

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._fd = -1  # our duplicate of libpq's socket, what the reactor watches
        self._libpq_fd = -1
        self._reading = False
        self._writing = False
        self._connected = False
        self._gone = False  # closed by us, or dead

    def fileno(self) -> int:
        return self._fd

    def _follow_socket(self, current: int) -> bool:
        """Follow libpq's socket `current` (-1: none): False once it is gone. While
        connecting, libpq may replace it (next address): the reactor then watches a
        duplicate of the new one."""
        if current < 0:
            self._release_fd()
            return False
        if self._fd >= 0 and (self._connected or current == self._libpq_fd and _same_file(current, self._fd)):
            return True
        self._release_fd()
        self._fd = os.dup(current)
        self._libpq_fd = current
        return True

    def _want(self, *, read: bool, write: bool) -> None:
        if read != self._reading:
            self._reading = read
            (self.reactor.addReader if read else self.reactor.removeReader)(self)
        if write != self._writing:
            self._writing = write
            (self.reactor.addWriter if write else self.reactor.removeWriter)(self)

    def _release_fd(self) -> None:
        if self._fd < 0:
            return
        self._want(read=False, write=False)
        os.close(self._fd)
        self._fd = self._libpq_fd = -1

    def _die(self, reason: Failure) -> None:
        """The connection is dead: as `_shut`, and the loss is reported (once)."""
        first = not self._gone
        self._shut(reason)
        if first and self.owner is not None:
            self.owner._lost(reason)

    def _shut(self, reason: Failure) -> None:
        """Forget the socket, close the connection, fail the cycle in progress."""
        raise NotImplementedError


def _same_file(a: int, b: int) -> bool:
    first, second = os.fstat(a), os.fstat(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


@implementer(IReadDescriptor, IWriteDescriptor)
class Session(WatchedSocket):
    """A psycopg2 connection in asynchronous mode, driven by the reactor (no threads).

    One poll cycle at a time (connecting, or one statement): `connect` and `execute` return a
    Deferred that fires once `poll()` says POLL_OK, from the reactor's read or write callback
    (or from the next reactor turn when the answer was already there: `_deliver`). Once
    connected the socket stays registered for reading (a NOTIFY may arrive at any time, and a
    dead connection must be noticed while idle); it is registered for writing only while
    libpq has bytes it could not send yet (a large statement).

    Written for this project instead of txpostgres, which adds and removes the socket from
    epoll around every statement and fires each result one reactor turn later through
    `callLater(0)`: 92-110 -> 29-38 us of CPU per `SELECT 1` round trip through the pool
    (README.rst, Performance). The session is back at rest before its Deferred fires, so a
    callback may send the next statement at once. The reactor watches a duplicate of libpq's
    socket (`WatchedSocket`).

    NOTIFYs go to `owner.notify_handler` synchronously, in arrival order, after each poll;
    those libpq read together with a statement's result are collected by one more (idle)
    `poll()` once the statement is done, on a session that has a handler.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.raw: Any = None  # the psycopg2 connection
        self.owner: PgConnection | None = None
        self._waiting: defer.Deferred[None] | None = None
        self._starting = False  # within `_start`'s own poll

    # IReadDescriptor / IWriteDescriptor

    def logPrefix(self) -> str:
        return "postgresql"

    def doRead(self) -> None:
        self._poll()

    def doWrite(self) -> None:
        self._poll()

    def connectionLost(self, reason: Failure) -> None:
        # Only if the reactor itself drops us (at its shutdown): we never return an error.
        self._reading = self._writing = False
        self._die(reason)

    # what PgConnection uses

    def connect(self, **kwargs: Any) -> defer.Deferred[None]:
        try:
            self.raw = psycopg2.connect(async_=True, **kwargs)
        except Exception:
            return defer.fail()
        return self._start()

    def execute(self, cursor: Any, sql: str, params: Params) -> defer.Deferred[None]:
        """Send one statement on `cursor` (raises at once if psycopg2 cannot compose it:
        nothing was sent); the Deferred fires when its results are in the cursor."""
        if self._waiting is not None:  # checked before anything is sent
            raise RuntimeError("a statement is already running on this session")
        cursor.execute(sql, params)
        return self._start()

    def close(self) -> None:
        """Close now; a statement in progress fails with InterfaceError."""
        if not self._gone:
            self._shut(Failure(psycopg2.InterfaceError("connection closed")))

    # the poll cycle

    def _start(self) -> defer.Deferred[None]:
        waiting = self._waiting = defer.Deferred()
        self._starting = True
        try:
            self._poll()
        finally:
            self._starting = False
        return waiting

    def _poll(self) -> None:
        """Advance the cycle, or read what arrives while idle (NOTIFYs, the end)."""
        raw = self.raw
        if raw is None or self._gone:
            return
        try:
            state = raw.poll()
        except Exception as exc:
            self._dispatch_notifies()
            # While idle, an error is the server ending the session (e.g. an administrator's
            # shutdown): never read again from a socket that keeps saying the same thing.
            if self._waiting is None or raw.closed or not self._socket_alive():
                self._die(Failure(exc))
                return
            # An SQL error (or a refused connection attempt): the cycle is over.
            self._want(read=self._connected, write=False)
            self._finish(Failure(exc))
            return
        if not self._socket_alive():
            self._die(Failure(psycopg2.OperationalError("connection closed by libpq")))
            return
        if state == psycopg2.extensions.POLL_OK:
            self._connected = True
            self._want(read=True, write=False)
            if self._waiting is not None and self.owner is not None and self.owner.notify_handler is not None:
                # NOTIFYs that came with the result wait in libpq: an idle poll() moves them.
                try:
                    raw.poll()
                except psycopg2.Error:
                    pass  # dead: the next read reports it
            # The session is at rest before any code of ours runs: a NOTIFY handler or the
            # statement's continuation may send the next statement.
            waiting, self._waiting = self._waiting, None
            self._dispatch_notifies()
            if waiting is not None:
                self._deliver(waiting, None)
        elif state == psycopg2.extensions.POLL_READ:
            self._want(read=True, write=False)
        elif state == psycopg2.extensions.POLL_WRITE:
            self._want(read=True, write=True)
        else:  # pragma: no cover - psycopg2 documents no other state
            self._die(Failure(psycopg2.OperationalError(f"unexpected poll() state {state}")))

    def _socket_alive(self) -> bool:
        """`_follow_socket` of libpq's current socket."""
        raw = self.raw
        try:
            current = -1 if raw.closed else int(raw.fileno())
        except psycopg2.Error:
            current = -1
        return self._follow_socket(current)

    def _shut(self, reason: Failure) -> None:
        self._gone = True
        self._release_fd()
        if self.raw is not None and not self.raw.closed:
            self.raw.close()
        self._finish(reason)

    def _finish(self, result: Failure | None) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._deliver(waiting, result)

    def _deliver(self, waiting: defer.Deferred[None], result: Failure | None) -> None:
        """Fire `waiting`; from the reactor if the answer came within `_start`, i.e. during
        the caller's own `execute`: its callbacks may release this connection to a waiting
        request whose statement may be answered at once too, and so on (under load the
        database often answers before our first poll, having taken the CPU from us): fired in
        place, such a chain would grow the stack by one request per statement. From the
        reactor, each starts afresh."""
        if self._starting:
            self.reactor.callLater(0, self._deliver_now, waiting, result)
        else:
            self._deliver_now(waiting, result)

    @staticmethod
    def _deliver_now(waiting: defer.Deferred[None], result: Failure | None) -> None:
        if result is None:
            waiting.callback(None)
        else:
            waiting.errback(result)

    def _dispatch_notifies(self) -> None:
        raw = self.raw
        if raw is None or not raw.notifies:
            return
        notifies = list(raw.notifies)
        del raw.notifies[:]
        handler = self.owner.notify_handler if self.owner is not None else None
        if handler is None:
            return
        for notify in notifies:
            try:
                handler(notify)
            except Exception:
                _log.failure("NOTIFY handler failed")


def shield(inner: defer.Deferred[Any], on_cancel: Callable[[], None]) -> defer.Deferred[Any]:
    """A Deferred following `inner`; cancelling it fails it with CancelledError and calls
    `on_cancel` (which closes the connection) instead of cancelling `inner` (txpostgres' own
    cancellation issues a blocking PQcancel and raises)."""
    cancelled = False

    def canceller(_: defer.Deferred[Any]) -> None:
        nonlocal cancelled
        cancelled = True
        on_cancel()

    outer: defer.Deferred[Any] = defer.Deferred(canceller)

    def forward(result: Any) -> None:
        if not cancelled and not outer.called:
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)
        return None  # consumed: a late failure after a cancellation is not "unhandled"

    inner.addBoth(forward)
    return outer


class PooledConnection:
    """What a pool (`parsec.storage.postgresql.pool.ConnectionPool`) needs of a connection,
    whatever its driver: `PgConnection` (psycopg2) or `BinaryConnection`
    (parsec.storage.postgresql.binary)."""

    def __init__(self, generation: int, on_lost: Callable[[Any, Failure], None]) -> None:
        self.generation = generation
        self.on_lost = on_lost  # called once when an established connection dies
        self.broken = False  # lost, or left in an unknown state: must not be reused
        self.established = False
        self._closing = False
        self._lost_reported = False
        self.round_trips = 0  # statements sent (each `execute` call is one round trip)

    @property
    def transaction_status(self) -> int:
        """libpq's local view (no round trip): PQTRANS_* (psycopg2's TRANSACTION_STATUS_*)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close now (in-flight statements fail). Idempotent; never reports a loss."""
        raise NotImplementedError

    def _lost(self, reason: Failure) -> None:
        self.broken = True
        if self._closing or self._lost_reported or not self.established:
            return
        self._lost_reported = True
        self.on_lost(self, reason)


class PgConnection(PooledConnection):
    """One PostgreSQL session: pooled (via `PostgreSQLPool.connection()`) or dedicated (LISTEN).

    Every method is one round trip. Outside a transaction each statement commits by itself.
    """

    def __init__(self, raw: Session, generation: int, on_lost: Callable[[Any, Failure], None]):
        super().__init__(generation, on_lost)
        self._raw = raw
        raw.owner = self
        self._prepared: set[str] = set()
        self.notify_handler: Callable[[Any], None] | None = None

    @property
    def backend_pid(self) -> int:
        return int(self._raw.raw.get_backend_pid())

    @property
    def transaction_status(self) -> int:
        """libpq's local view (no round trip): psycopg2.extensions.TRANSACTION_STATUS_*."""
        raw = self._raw.raw
        if raw is None or raw.closed:
            return psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN
        return int(raw.get_transaction_status())

    def close(self) -> None:
        self._closing = True
        self.broken = True
        self._raw.close()

    def _connection_failed(self, exc: BaseException) -> bool:
        raw = self._raw.raw
        return (
            raw is None
            or bool(raw.closed)
            or isinstance(exc, psycopg2.InterfaceError)
            # e.g. twisted ConnectionLost; but psycopg2 raises ValueError/TypeError while
            # composing the query (a str with a NUL character, an unadaptable value): nothing
            # was sent, the connection is fine.
            or not isinstance(exc, (psycopg2.Error, ValueError, TypeError))
        )

    async def _ensure_prepared(self, query: Query) -> None:
        if isinstance(query, PreparedStatement) and query.name not in self._prepared:
            await self._send(query.prepare_sql, None)
            self._prepared.add(query.name)

    async def _execute(self, query: Query, params: Params, prefix: str = "") -> Any:
        """One round trip (plus a PREPARE the first time a PreparedStatement meets this
        connection); `prefix` is prepended to the statement (e.g. "BEGIN; ")."""
        if isinstance(query, PreparedStatement):
            if query.name not in self._prepared:
                await self._ensure_prepared(query)
            values = query.bind(params)
            if values and self._raw.raw.get_parameter_status("standard_conforming_strings") == "on":
                literals = execute_literals(values)
                if literals is not None:
                    # No parameters: psycopg2 sends the text as it is.
                    return await self._send(f"{prefix}EXECUTE {query.name}({literals})", None)
            return await self._send(prefix + query.execute_sql, values)
        return await self._send(prefix + query, params)

    async def _send(self, sql: str, params: Params) -> Any:
        if self.broken:
            raise DatabaseUnavailable("database connection lost")
        self.round_trips += 1
        raw = self._raw.raw
        try:
            cursor = raw.cursor()  # raises InterfaceError if libpq knows it is closed
            await shield(self._raw.execute(cursor, sql, params), self.close)
        except defer.CancelledError:
            # Our caller gave up (the shield closed the session: its state is unknown).
            self.broken = True
            raise
        except Exception as exc:
            if self._connection_failed(exc):
                self.broken = True
                self._lost(Failure(exc))
                raise DatabaseUnavailable(f"database connection lost: {error_summary(exc)}") from exc
            timeout = timeout_of(exc)
            if timeout is not None:
                raise timeout from exc
            raise
        return cursor

    async def fetch(self, sql: Query, params: Params = None) -> list[tuple[Any, ...]]:
        cursor = await self._execute(sql, params)
        return list(cursor.fetchall())

    async def fetchrow(self, sql: Query, params: Params = None) -> tuple[Any, ...] | None:
        cursor = await self._execute(sql, params)
        row = cursor.fetchone()
        return tuple(row) if row is not None else None

    async def fetchval(self, sql: Query, params: Params = None) -> Any:
        row = await self.fetchrow(sql, params)
        return row[0] if row else None

    async def execute(self, sql: Query, params: Params = None) -> int:
        """Run a statement; return the number of rows it affected (-1 if not applicable)."""
        cursor = await self._execute(sql, params)
        return int(cursor.rowcount)

    async def fetchrow_batch(
        self, statements: Sequence[PreparedStatement], params: Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """Several prepared statements in one round trip (one implicit transaction: an error
        stops the batch and rolls it back); the first row of the last one. Each statement
        reads the writes of those before it."""
        for statement in statements:
            await self._ensure_prepared(statement)
        sql = "; ".join(statement.execute_sql for statement in statements)
        cursor = await self._send(sql, [value for statement in statements for value in statement.bind(params)])
        row = cursor.fetchone()
        return tuple(row) if row is not None else None


class Transaction:
    """Statements of one transaction (see `PostgreSQLPool.transaction`).

    `BEGIN` is sent with the first statement; queued NOTIFYs are sent with `COMMIT` (so they
    exist only if the transaction commits) and `call_after_commit` callbacks run after it.
    """

    def __init__(self, conn: PgConnection, isolation: Isolation | None, read_only: bool):
        begin = "BEGIN"
        if isolation is not None:
            if isolation not in _ISOLATIONS:
                raise ValueError(f"unknown isolation level {isolation!r}")
            begin += f" ISOLATION LEVEL {isolation}"
        if read_only:
            begin += " READ ONLY"
        self._begin: str | None = begin
        self.connection = conn
        self._notifies: list[tuple[str, str]] = []
        self._after_commit: list[Callable[[], None]] = []

    async def _run(self, sql: Query, params: Params) -> Any:
        # Prepare first: BEGIN must go with the statement that really is sent.
        await self.connection._ensure_prepared(sql)
        prefix = ""
        if self._begin is not None:
            prefix = f"{self._begin}; "
            self._begin = None
        return await self.connection._execute(sql, params, prefix)

    async def fetch(self, sql: Query, params: Params = None) -> list[tuple[Any, ...]]:
        cursor = await self._run(sql, params)
        return list(cursor.fetchall())

    async def fetchrow(self, sql: Query, params: Params = None) -> tuple[Any, ...] | None:
        cursor = await self._run(sql, params)
        row = cursor.fetchone()
        return tuple(row) if row is not None else None

    async def fetchval(self, sql: Query, params: Params = None) -> Any:
        row = await self.fetchrow(sql, params)
        return row[0] if row else None

    async def execute(self, sql: Query, params: Params = None) -> int:
        cursor = await self._run(sql, params)
        return int(cursor.rowcount)

    def notify(self, channel: str, payload: str) -> None:
        """NOTIFY at commit time (nothing is sent if the transaction rolls back)."""
        self._notifies.append((channel, payload))

    def call_after_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)

    async def _commit(self) -> None:
        statements = ["SELECT pg_notify(%s, %s)"] * len(self._notifies)
        params = [value for pair in self._notifies for value in pair]
        if self._begin is None:
            statements.append("COMMIT")
        if statements:
            sql = "; ".join(statements)
            try:
                await self.connection._send(sql, params or None)
            except DatabaseUnavailable:
                raise
            except BaseException:
                # A failing NOTIFY aborts the batch before COMMIT: the transaction is still open.
                await self._rollback()
                raise
        for callback in self._after_commit:
            try:
                callback()
            except Exception:
                _log.failure("after-commit callback failed")

    async def _rollback(self) -> None:
        conn = self.connection
        if conn.broken:
            return
        if conn.transaction_status in (
            psycopg2.extensions.TRANSACTION_STATUS_INTRANS,
            psycopg2.extensions.TRANSACTION_STATUS_INERROR,
        ):
            try:
                await conn._send("ROLLBACK", None)
            except Exception as exc:
                conn.broken = True  # unknown state: close it on release
                _log.warn("ROLLBACK failed: {error}", error=error_summary(exc))
