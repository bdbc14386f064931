"""Multi-instance event bus over PostgreSQL LISTEN/NOTIFY (docs/protocol/events.md §6).

Every backend event goes through `NOTIFY app_notification, '<payload>'`, and every server
instance (the publishing one included) dispatches what its dedicated LISTEN connection
receives to its local listeners: the local bus is fed only from LISTEN.

Payload: standard Base64 of `parsec.api.codec.packb({"__id__": <uuid4 hex>, "__signal__":
<event name>, "organization_id": <str>, **event.data})`. `__id__` makes every payload unique
(PostgreSQL folds identical notifications of one transaction into one).

An event that describes a write is published by the write itself, so that it exists if and
only if the write committed, at no extra round trip (a crash between the commit and a later
NOTIFY would lose it: a revocation that never closes the revoked user's connections):
* `notify_sql(event, computed={...})`: a `pg_notify(...)` SQL expression to embed in the write
  statement itself; the event may carry values computed by the statement (e.g. the checkpoint
  a vlob write allocates, `sql_bigint` / `sql_uuid` / `sql_text`). The storages use this.
* `publish_in(tx, event)`: queued in a `Transaction`, sent with its COMMIT (no extra round
  trip) and only if it commits.

`bus.publish(event)` is for the few events that are tied to no write (ping, claimer joined or
left, organization expired at handshake): fire and forget, NOTIFYed on the LISTEN session
itself (no pool connection involved), in publication order; lost if that session is down (the
server then drops its clients anyway). What waits to be sent is bounded by `outbox_bytes` (the
`event_outbox_bytes` limit): while the database is slow or stalled, further events are dropped
(one warning per episode).

Loss of the LISTEN connection: notifications may have been missed, so `on_connection_lost`
is called at once (the server drops its clients), then reconnection follows the database retry
policy (docs/protocol/server-config.md §4): `on_reconnected` on success, `on_gave_up` when the attempts are
exhausted (the server exits).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import psycopg2
from twisted.internet import defer
from twisted.logger import Logger

from parsec import limits as limits_module
from parsec.api import codec
from parsec.backend.bus import BackendEvent, Listener, ListenerSet
from parsec.limits import DEFAULT as DEFAULT_LIMITS
from parsec.storage.postgresql.connection import (
    DatabaseUnavailable,
    PgConnection,
    PreparedStatement,
    Transaction,
    error_summary,
)
from parsec.storage.postgresql.pool import PostgreSQLPool, connect_with_retry, run_detached

__all__ = [
    "CHANNEL",
    "EventDecodeError",
    "Notify",
    "PostgreSQLEventBus",
    "SqlValue",
    "decode_event",
    "encode_event",
    "notify_sql",
    "sql_bigint",
    "sql_text",
    "sql_uuid",
]

_log = Logger(namespace="parsec.storage.postgresql.events")

CHANNEL = "app_notification"
MAX_PAYLOAD = 7999  # PostgreSQL refuses NOTIFY payloads of 8000 bytes or more
_RESERVED = ("__id__", "__signal__", "organization_id")
_PUBLISH_BATCH = 100  # fire-and-forget events NOTIFYed per round trip, at most
# One statement per round trip: psycopg2 (asynchronous mode) leaves the session's own
# notifications raised by a multi-statement query unreported until the session reads something
# else. One event (the usual case: a `ping` is one) goes as a NOTIFY command, which PostgreSQL
# neither plans nor executes as a query: 18-21 us of its CPU against 56-64 us for the unnest
# form below unprepared, 42-58 prepared (`SELECT 1`: 15-16 us; /proc/<backend>/schedstat,
# 5,000 statements each on a session that LISTENs, as the bus's does). Its payload is a string
# literal, which psycopg2 quotes (base64 needs no escaping anyway).
_NOTIFY_ONE = f"NOTIFY {CHANNEL}, %s"
_NOTIFY_MANY = PreparedStatement(
    "SELECT pg_notify(%(channel)s, p) FROM unnest(%(payloads)s::text[]) WITH ORDINALITY AS t (p, i) ORDER BY i"
)


class EventDecodeError(ValueError):
    pass


# `__id__`: unique per publication, without a uuid4 (os.urandom) per event: a random prefix
# drawn once per process, then a counter (32 hex digits in all).
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count()


def _static_items(event: BackendEvent) -> dict[str, Any]:
    for key in event.data:
        if key in _RESERVED:
            raise ValueError(f"event field {key!r} is reserved")
    return {
        "__id__": f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFF_FFFF_FFFF_FFFF:016x}",
        "__signal__": event.name,
        "organization_id": event.organization_id,
        **event.data,
    }


def _fit(event: BackendEvent, items: dict[str, Any], extra: int) -> tuple[dict[str, Any], bytes]:
    """`items` and their msgpack form, with the bytes fields (certificates of internal events)
    dropped if the payload would be too big: an event must never make its write fail."""
    packed = codec.packb(items)
    raw_size = len(packed) + extra
    if (raw_size + 2) // 3 * 4 <= MAX_PAYLOAD:
        return items, packed
    stripped = {key: (None if isinstance(value, bytes) else value) for key, value in items.items()}
    _log.warn(
        "Event {name} too large for NOTIFY ({size} bytes): its binary fields are dropped",
        name=event.name, size=raw_size,
    )
    packed = codec.packb(stripped)
    if (len(packed) + extra + 2) // 3 * 4 > MAX_PAYLOAD:
        raise ValueError(f"event {event.name} does not fit in a NOTIFY payload")
    return stripped, packed


def _map_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x80 | count,))
    if count < 65536:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


def encode_event(event: BackendEvent) -> str:
    _, packed = _fit(event, _static_items(event), 0)
    return base64.b64encode(packed).decode("ascii")


def decode_event(payload: str) -> BackendEvent:
    try:
        raw = binascii.a2b_base64(payload)
    except (binascii.Error, ValueError) as exc:
        raise EventDecodeError(f"invalid base64: {exc}") from None
    try:
        # Written by an instance of this server, at most MAX_PAYLOAD bytes: not scanned.
        items = codec.unpackb(raw, scanned=False)
    except codec.DecodeError as exc:
        raise EventDecodeError(str(exc)) from None
    name = items.pop("__signal__", None)
    organization_id = items.pop("organization_id", None)
    items.pop("__id__", None)
    if not isinstance(name, str) or not isinstance(organization_id, str):
        raise EventDecodeError("missing __signal__ or organization_id")
    if not all(isinstance(key, str) for key in items):
        raise EventDecodeError("non-string field name")
    return BackendEvent(name=name, organization_id=organization_id, data=items)


@attrs.frozen
class SqlValue:
    """An event field computed by the SQL statement that publishes the event (`notify_sql`).

    `max_bytes` bounds the encoded size of a `text` value (for the NOTIFY payload limit)."""

    expression: str
    type: Literal["bigint", "uuid", "text"] = "bigint"
    max_bytes: int = 0


def sql_bigint(expression: str) -> SqlValue:
    return SqlValue(expression, "bigint")


def sql_uuid(expression: str) -> SqlValue:
    return SqlValue(expression, "uuid")


def sql_text(expression: str, max_bytes: int) -> SqlValue:
    return SqlValue(expression, "text", max_bytes)


# msgpack, assembled in SQL: int64 (0xd3 + 8 bytes), fixext 16 of codec.EXT_UUID (0xd8 0x02 +
# 16 bytes), str 32 (0xdb + 4-byte length + UTF-8 bytes); nil (0xc0) for NULL.
_SQL_ENCODERS = {
    "bigint": "'\\xd3'::bytea || int8send(({0})::bigint)",
    "uuid": "'\\xd802'::bytea || uuid_send(({0})::uuid)",
    "text": "'\\xdb'::bytea || int4send(octet_length(convert_to(({0})::text, 'UTF8')))"
    " || convert_to(({0})::text, 'UTF8')",
}
_SQL_SIZES = {"bigint": 9, "uuid": 18, "text": 5}


class Notify:
    """A NOTIFY embedded in a write statement: `sql` is the `pg_notify(...)` expression (fixed,
    so it can be written into the statement text once), `params(event)` its parameters.

    `computed` maps event fields to values of the statement (`sql_bigint("bump.checkpoint")`;
    a plain string is a bigint expression); they replace the event's fields of the same name
    (placeholders, so that the event is built by the same constructor everywhere). The payload
    is assembled by PostgreSQL: the static part packed here, each computed value appended in
    its msgpack form (NULL becomes nil). Merge the parameters into the statement's dict
    parameters (`prefix` keeps their names apart when a statement publishes several events).
    The expression publishes once per evaluation: evaluate it once per event, e.g.
    `(SELECT <expr> FROM <CTE of zero or one row>)` in the final SELECT, which also publishes
    nothing when that CTE wrote nothing. The payload travels as parameters, so the enclosing
    statement can be a PreparedStatement.
    """

    def __init__(self, prefix: str = "ev", computed: Mapping[str, str | SqlValue] | None = None) -> None:
        self.prefix = prefix
        self.computed = {
            key: value if isinstance(value, SqlValue) else sql_bigint(value)
            for key, value in (computed or {}).items()
        }
        for key in self.computed:
            if key in _RESERVED:
                raise ValueError(f"event field {key!r} is reserved")
        self._extra = sum(
            len(codec.packb(key)) + _SQL_SIZES[value.type] + value.max_bytes for key, value in self.computed.items()
        )
        parts = [f"%({prefix}_head)s::bytea"]
        for index, value in enumerate(self.computed.values()):
            encoded = _SQL_ENCODERS[value.type].format(value.expression)
            parts.append(f"%({prefix}_k{index})s::bytea || coalesce({encoded}, '\\xc0'::bytea)")
        # encode(..., 'base64') wraps lines every 76 characters: remove the newlines.
        self.sql = (
            f"pg_notify(%({prefix}_channel)s, "
            f"translate(encode({' || '.join(parts)}, 'base64'), E'\\n', ''))"
        )
        # The parameters that are the same for every event (packed once, not per write).
        self._constant_params: dict[str, Any] = {f"{prefix}_channel": CHANNEL}
        for index, key in enumerate(self.computed):
            self._constant_params[f"{prefix}_k{index}"] = codec.packb(key)

    def params(self, event: BackendEvent) -> dict[str, Any]:
        computed = self.computed
        static = BackendEvent(
            event.name, event.organization_id, {k: v for k, v in event.data.items() if k not in computed}
        )
        items, packed = _fit(static, _static_items(static), self._extra)
        # The static pairs as packed above, behind a map header counting the computed ones too.
        head = _map_header(len(items) + len(computed)) + packed[len(_map_header(len(items))) :]
        params = dict(self._constant_params)
        params[f"{self.prefix}_head"] = head
        return params


def notify_sql(
    event: BackendEvent, *, computed: Mapping[str, str | SqlValue] | None = None, prefix: str = "ev"
) -> tuple[str, dict[str, Any]]:
    """`Notify(prefix, computed)`'s expression and its parameters for `event`."""
    notify = Notify(prefix, computed)
    return notify.sql, notify.params(event)


class PostgreSQLEventBus:
    """EventBus over NOTIFY/LISTEN. `await start()` before use, `await stop()` at shutdown."""

    def __init__(
        self,
        pool: PostgreSQLPool,
        *,
        on_connection_lost: Callable[[DatabaseUnavailable], None] | None = None,
        on_reconnected: Callable[[], None] | None = None,
        on_gave_up: Callable[[DatabaseUnavailable], None] | None = None,
        max_connection_attempts: int | None = None,
        pause_before_retry: float | None = None,
        outbox_bytes: int = DEFAULT_LIMITS.event_outbox_bytes,
    ) -> None:
        self._pool = pool
        self._listeners = ListenerSet()
        self.on_connection_lost = on_connection_lost
        self.on_reconnected = on_reconnected
        self.on_gave_up = on_gave_up
        self.max_connection_attempts = (
            pool.max_connection_attempts if max_connection_attempts is None else max_connection_attempts
        )
        self.pause_before_retry = pool.pause_before_retry if pause_before_retry is None else pause_before_retry
        self._conn: PgConnection | None = None
        self._reconnecting: defer.Deferred[None] | None = None
        self._stopping = False
        # `publish`'s events waiting for the LISTEN session, bounded by `outbox_bytes`.
        self._unsent: list[str] = []
        self._unsent_size = 0  # bytes of the payloads in _unsent
        self.outbox_bytes = outbox_bytes
        self._dropped = 0  # events dropped since the queue was last below its bound
        self._sending: defer.Deferred[None] | None = None

    # --- EventBus protocol --------------------------------------------------------------------

    def connect(self, listener: Listener) -> None:
        self._listeners.connect(listener)

    def disconnect(self, listener: Listener) -> None:
        self._listeners.disconnect(listener)

    def publish(self, event: BackendEvent) -> None:
        """Fire and forget, for events tied to no write (see the module doc): NOTIFYed on the
        LISTEN session, in publication order."""
        if self._stopping or self._conn is None:
            _log.debug("Event {name} dropped: not listening", name=event.name)
            return
        try:
            payload = encode_event(event)
        except ValueError as exc:
            # Fire and forget must not fail its publisher (e.g. a `pinged` carrying a
            # multi-megabyte string): the event cannot travel through NOTIFY, drop it.
            _log.warn("Event {name} dropped: {error}", name=event.name, error=str(exc))
            return
        if self._unsent_size + len(payload) > self.outbox_bytes:
            limits_module.hit("event_outbox_bytes")
            if self._dropped == 0:
                _log.warn(
                    "Event outbox full ({size} bytes wait for the database): events dropped",
                    size=self._unsent_size,
                )
            self._dropped += 1
            return
        self._unsent.append(payload)
        self._unsent_size += len(payload)
        if self._sending is None:
            # Set before it starts: a statement may complete at once (its answer was already
            # there), running NOTIFY handlers that publish again before `run_detached` returns.
            starting: defer.Deferred[None] = defer.Deferred()
            self._sending = starting
            sending = run_detached(self._send_unsent)
            if self._sending is starting:  # still running (else it ended and reset it)
                self._sending = sending

    def publish_in(self, tx: Transaction, event: BackendEvent) -> None:
        """Publish when (and only if) `tx` commits, within its COMMIT round trip."""
        tx.notify(CHANNEL, encode_event(event))

    async def _send_unsent(self) -> None:
        # One statement at a time on the session: what is published meanwhile goes together
        # in the next round trip.
        try:
            while self._unsent and self._conn is not None:
                conn = self._conn
                batch = self._unsent[:_PUBLISH_BATCH]
                del self._unsent[:_PUBLISH_BATCH]
                self._unsent_size -= sum(len(payload) for payload in batch)
                if self._dropped and self._unsent_size <= self.outbox_bytes // 2:
                    _log.warn("Event outbox: {count} event(s) were dropped", count=self._dropped)
                    self._dropped = 0
                try:
                    if len(batch) == 1:
                        await conn.execute(_NOTIFY_ONE, batch)
                    else:
                        await conn.execute(_NOTIFY_MANY, {"channel": CHANNEL, "payloads": batch})
                except Exception as exc:
                    _log.warn("{count} event(s) lost: {error}", count=len(batch), error=error_summary(exc))
            if self._unsent:
                _log.warn("{count} event(s) lost: not listening", count=len(self._unsent))
                self._unsent.clear()
                self._unsent_size = 0
        finally:
            self._sending = None

    # --- LISTEN side --------------------------------------------------------------------------

    @property
    def listener_pid(self) -> int | None:
        """Backend PID of the LISTEN connection (None while disconnected)."""
        if self._conn is None:
            return None
        try:
            return self._conn.backend_pid
        except psycopg2.Error:  # closed, loss not processed yet
            return None

    @property
    def is_listening(self) -> bool:
        return self._conn is not None

    async def start(self) -> None:
        """Open the LISTEN connection under the start-up retry policy (DatabaseUnavailable)."""
        self._stopping = False
        await connect_with_retry(
            self._listen,
            max_attempts=self.max_connection_attempts,
            pause=self.pause_before_retry,
            reactor=self._pool.reactor,
        )

    async def _listen(self) -> None:
        conn = await self._pool.open_dedicated()
        conn.notify_handler = self._on_notify
        conn.on_lost = self._on_lost  # instead of the pool's: this one is not pooled
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        if self._stopping:
            conn.close()
            raise defer.CancelledError()
        self._conn = conn
        _log.debug("Listening on {channel} (backend pid {pid})", channel=CHANNEL, pid=conn.backend_pid)

    def _on_notify(self, notify: Any) -> None:
        if notify.channel != CHANNEL:
            return
        try:
            event = decode_event(notify.payload)
        except EventDecodeError as exc:
            _log.warn("Invalid event notification ignored: {error}", error=str(exc))
            return
        self._listeners.dispatch(event)

    def _on_lost(self, conn: PgConnection, reason: Any) -> None:
        if self._stopping or conn is not self._conn:
            return
        self._conn = None
        error = DatabaseUnavailable(f"LISTEN connection lost: {error_summary(getattr(reason, 'value', reason))}")
        _log.warn("Event feed interrupted ({error}): events may have been missed", error=str(error))
        # Reconnection first (it starts with a pause): the hook may stop the bus, cancelling it.
        if self.max_connection_attempts > 0:
            reconnecting = run_detached(lambda: self._reconnect(error))
            if not reconnecting.called:  # (it resets `_reconnecting` when it ends)
                self._reconnecting = reconnecting
        if self.on_connection_lost is not None:
            try:
                self.on_connection_lost(error)
            except Exception:
                _log.failure("on_connection_lost hook failed")
        if self.max_connection_attempts <= 0 and not self._stopping:
            self._give_up(error)

    async def _reconnect(self, error: DatabaseUnavailable) -> None:
        if self._stopping:
            return
        try:
            await connect_with_retry(
                self._listen,
                max_attempts=self.max_connection_attempts,
                pause=self.pause_before_retry,
                reactor=self._pool.reactor,
                lost=error,
            )
        except defer.CancelledError:
            return
        except DatabaseUnavailable as final:
            if not self._stopping:
                self._give_up(final)
            return
        finally:
            self._reconnecting = None
        _log.info("Event feed restored")
        if self.on_reconnected is not None:
            try:
                self.on_reconnected()
            except Exception:
                _log.failure("on_reconnected hook failed")

    def _give_up(self, error: DatabaseUnavailable) -> None:
        _log.error("Event feed lost for good: {error}", error=str(error))
        if self.on_gave_up is not None:
            try:
                self.on_gave_up(error)
            except Exception:
                _log.failure("on_gave_up hook failed")

    async def stop(self) -> None:
        """Send what `publish` queued, close the LISTEN connection. Idempotent."""
        self._stopping = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._sending is not None:
            await self._sending
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
